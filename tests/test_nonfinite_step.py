"""The chunk's non-finite check names the first bad step, whether the loss or the params
showed it first (train/step.py checks the loss per step and the params once per chunk)."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from t2i_jax import configs, train
from tiny_runs import TINY_VAE


def _state(learning_rate: float, k: int = 6):
  c = configs.base_config()
  c.model_kwargs = dict(TINY_VAE)
  c.learning_rate = learning_rate
  rng = np.random.default_rng(0)
  batches = {"image": rng.integers(0, 256, (k, 2, 64, 64, 3), dtype=np.uint8),
             "text": rng.normal(size=(k, 2, 50)).astype(np.float32)}
  state = train.create_train_state(c, jax.random.key(1), jax.tree.map(lambda x: x[0], batches))
  return state, batches


def _exact_step_by_step(state, batches, rng) -> int:
  """The first step whose loss or params are non-finite, one K=1 chunk at a time."""
  for i in range(batches["text"].shape[0]):
    state, m = train.train_chunk(state, jax.tree.map(lambda x: x[i:i + 1], batches), rng)
    if int(m["nonfinite_step"]) >= 0:
      return int(m["nonfinite_step"])
  return -1


@pytest.mark.parametrize("learning_rate", [math.inf, 1e30])
def test_params_broken_under_a_finite_loss_name_their_step(learning_rate):
  state, batches = _state(learning_rate)
  rng = jax.random.key(2)
  want = _exact_step_by_step(state, batches, rng)
  assert want >= 1
  _, m = train.train_chunk(state, batches, rng)
  assert int(m["nonfinite_step"]) == want
  _, m = train.train_chunk(state, batches, rng, 4)  # a short chunk: padding is not replayed
  assert int(m["nonfinite_step"]) == (want if want <= 4 else -1)


def test_a_nan_caption_names_its_step_and_finite_chunks_name_none():
  state, batches = _state(1e-3)
  rng = jax.random.key(2)
  _, m = train.train_chunk(state, batches, rng)
  assert int(m["nonfinite_step"]) == -1
  bad = dict(batches, text=batches["text"].copy())
  bad["text"][2] = np.nan
  _, m = train.train_chunk(state, bad, rng)
  assert int(m["nonfinite_step"]) == 3
  _, m = train.train_chunk(state, bad, rng, 2)  # the bad batch is padding here
  assert int(m["nonfinite_step"]) == -1
