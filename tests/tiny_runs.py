"""The tiny shapes run that several test modules train: 40 images, a tiny VAE, batch 8.

One template, so the modules agree on it and a full-suite run reuses compiled steps (equal
shapes compile once). ``tiny_config`` gives the ConfigDict; ``tiny_config_file`` the same
config as a config-module source, for tests that go through ``t2i train CONFIG_FILE``.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from t2i_jax import configs

TINY_VAE = {"hidden_dim": 8, "latent_dim": 4, "decoder_dims": (8, 16)}
_TEMPLATE = {
    "dataset": "shapes", "num_images": 40, "model_kwargs": TINY_VAE, "batch_size": 8,
    "num_epochs": 1, "steps_per_scan": 8, "checkpoint_every_steps": 0, "log_every_steps": 0,
    "eval_batch_size": 4,
}


def _values(data_dir, changes: dict[str, Any]) -> dict[str, Any]:
  return {**_TEMPLATE, "data_dir": str(data_dir), **changes}


def tiny_config(data_dir, **changes) -> ml_collections.ConfigDict:
  """``configs.base_config()`` with the tiny run's values, then ``changes``."""
  c = configs.base_config()
  for k, v in _values(data_dir, changes).items():
    c[k] = v
  return c


def tiny_config_file(data_dir, **changes) -> str:
  """The source of a config module whose ``get_config()`` is ``tiny_config(...)``."""
  lines = [f"  c.{k} = {v!r}" for k, v in _values(data_dir, changes).items()]
  return "\n".join(["from t2i_jax import configs", "", "", "def get_config():",
                    "  c = configs.base_config()", *lines, "  return c", ""])
