"""Experiment configs: one module per experiment, each runnable with ``python -m``.

Every module defines ``get_config()`` (``t2i_jax.configs.base_config()`` or
``paper_config()`` with the experiment's changes; its docstring gives the command, the
expected result and the run time) and ``main(argv)``, which is
``t2i_jax.train.main_from_module``. Shared code lives in ``t2i_jax``, not here, so that the
modules import the same way whether ``experiments`` is a regular or a namespace package.
"""
