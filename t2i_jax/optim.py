"""Optimisers, chosen by name; the default reproduces the paper's Keras RMSprop exactly."""

from __future__ import annotations

from typing import Any

import jax
import optax
from optax.contrib import MuonDimensionNumbers, muon

from t2i_jax.errors import UserError


def keras_rmsprop(
    learning_rate: optax.ScalarOrSchedule, rho: float = 0.9, eps: float = 1e-7
) -> optax.GradientTransformation:
  """RMSprop as the paper's tf.keras (TF 2.x ``optimizer_v2``, no momentum) computed it.

  v_0 = 0;  v_t = rho * v_{t-1} + (1 - rho) * g_t^2;  update = -lr * g_t / (sqrt(v_t) + eps).

  This is ``optax.rmsprop`` with ``eps_in_sqrt=False`` (optax's default puts eps inside
  the square root, which differs a lot once sqrt(v) is near eps), ``initial_scale=0``, no
  bias correction, no centering and no momentum; it is used directly with those arguments.
  Note that Keras 3 changed this and divides by sqrt(v + eps) instead; the paper predates
  it.
  """
  return optax.rmsprop(
      learning_rate,
      decay=rho,
      eps=eps,
      initial_scale=0.0,
      eps_in_sqrt=False,
      centered=False,
      momentum=None,
      bias_correction=False,
  )


def muon_dimensions(params: Any) -> Any:
  """Which params Muon orthogonalises, and along which axes; None sends a leaf to AdamW.

  Every Dense kernel (2-D: inputs x outputs), flax attention's 3-D kernels (query, key
  and value are [features, heads, head_dim], heads x head_dim the output; ``out`` is
  [heads, head_dim, features]) and 2-D conv kernels, [kh, kw, in, out] flattened to
  (kh * kw * in) x out as in Keller Jordan's Muon. Biases, norms and embeddings go to AdamW.
  """
  def spec(path, leaf):
    names = [str(getattr(k, "key", k)) for k in path]
    if names[-1] != "kernel" or leaf.ndim not in (2, 3, 4):
      return None
    if leaf.ndim == 2:
      return MuonDimensionNumbers(0, 1)
    if leaf.ndim == 4:
      return MuonDimensionNumbers((0, 1, 2), 3)
    if names[-2] == "out":
      return MuonDimensionNumbers((0, 1), 2)
    return MuonDimensionNumbers(0, (1, 2))
  return jax.tree_util.tree_map_with_path(spec, params)


def make_muon(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
              weight_decay: float = 1e-4, consistent_rms: float = 0.2,
              matrix_lr_scale: float = 1.0, **kwargs: Any) -> optax.GradientTransformation:
  """Muon (optax.contrib) on the weight matrices, AdamW (b1, b2) on the other params.

  ``consistent_rms=0.2`` scales each orthogonalised update to AdamW's typical RMS
  (Moonlight, Liu et al. 2025), so the AdamW learning rate and weight decay carry over
  unchanged; ``b1`` / ``b2`` name the AdamW half as they do for 'adamw'.
  ``matrix_lr_scale`` multiplies the Muon half's rate (warm-up and schedule included;
  optax scales its weight decay by the rate, so the matrices' decay too) and leaves the
  AdamW half at ``learning_rate``: orthogonalised updates often tolerate a higher rate
  than the embeddings and norms do.
  """
  adam_lr = None
  if matrix_lr_scale != 1.0:
    adam_lr = learning_rate
    if callable(learning_rate):
      schedule = learning_rate
      learning_rate = lambda step: matrix_lr_scale * schedule(step)
    else:
      learning_rate = matrix_lr_scale * learning_rate
  return muon(learning_rate, weight_decay=weight_decay, adam_b1=b1, adam_b2=b2,
              adam_weight_decay=weight_decay, consistent_rms=consistent_rms,
              adam_learning_rate=adam_lr, muon_weight_dimension_numbers=muon_dimensions,
              **kwargs)


# The optimisers by name; each takes (learning_rate, **config.optimizer_kwargs).
_BUILDERS = {"rmsprop": keras_rmsprop, "adam": optax.adam, "adamw": optax.adamw,
             "muon": make_muon}
OPTIMIZERS = tuple(_BUILDERS)


def make_optimizer(
    name: str = "rmsprop", learning_rate: optax.ScalarOrSchedule = 1e-3, **kwargs: Any
) -> optax.GradientTransformation:
  """Builds an optimiser by name: 'rmsprop' (Keras-matching, the paper's), 'adam', 'adamw'
  or 'muon' (``make_muon``).

  ``kwargs`` go to the builder: ``keras_rmsprop`` (rho, eps), ``optax.adam`` /
  ``optax.adamw`` (b1, b2, eps, ...) or ``make_muon`` (b1, b2, weight_decay, ...).
  """
  if name not in _BUILDERS:
    raise UserError(f"Unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}.")
  try:
    return _BUILDERS[name](learning_rate, **kwargs)
  except TypeError as e:  # a misspelt or foreign key in config.optimizer_kwargs
    raise UserError(f"optimizer_kwargs {sorted(kwargs)} do not fit optimizer {name!r} ({e}); "
                    "fix the --config.optimizer_kwargs.KEY override, or set the optimizer's "
                    "own keys whole: --config.optimizer_kwargs=\"{'b2': 0.99}\" (under "
                    "config.stage2 for a two-stage run).") from e
