"""The jitted training step, and K of them in one ``lax.scan``.

  * ``train_step`` is pure; the randomness of optimiser step ``s`` is
    ``fold_in(base_key, s)``, so it depends on (seed, step) only, never on how steps are
    grouped into jitted calls or where a run was interrupted.
  * ``train_chunk`` runs up to K steps in one jitted ``lax.scan`` (batch size 1, as in the
    paper, is dispatch-bound otherwise). Every call has the same shape [K, B, ...]: a short
    chunk (epoch end, resume point, end of run) is zero-padded and the padded steps' updates
    are discarded. One compiled program thus runs every step of a run, which is what makes
    a resumed run bitwise identical to an uninterrupted one.
  * The family's ``method.loss`` is the only model-specific call: the metrics logged are
    whatever keys it returns.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from t2i_jax import parallel
from t2i_jax.data import pipeline
from t2i_jax.train.state import TrainState, float_batch

Batch = Mapping[str, Any]
Metrics = dict[str, Any]


def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
  """One optimiser step on ``batch``; pure and jittable.

  ``rng`` is the run's base training key: this step uses ``fold_in(rng, state.step)``.
  Returns (new state, the method's metrics as float32 scalars).
  """
  step_rng = jax.random.fold_in(rng, state.step)
  batch = float_batch(batch)

  def loss_fn(params):
    return state.method.loss(params, batch, step_rng, state.step, state.frozen)

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads)
  return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _train_chunk(state: TrainState, batches: Batch, rng: jax.Array,
                 num_steps: jax.typing.ArrayLike | None = None,
                 skip_nonfinite: bool = False) -> tuple[TrainState, Metrics]:
  chunk = jax.tree.leaves(batches)[0].shape[0]
  if num_steps is None:
    num_steps = chunk
  num_steps = jnp.asarray(num_steps, jnp.int32)

  def body(carry, xs):
    state, bad_step = carry
    index, batch = xs
    active = index < num_steps
    new_state, metrics = train_step(state, batch, rng)
    # A NaN/Inf gradient shows up in the updated params, so checking them covers both.
    nonfinite = active & ~(jnp.isfinite(metrics["loss"]) & _all_finite(new_state.params))
    if skip_nonfinite:  # 'skip': the step counts, its update is thrown away
      new_state = jax.tree.map(lambda new, old: jnp.where(nonfinite, old, new),
                               new_state, state).replace(step=new_state.step)
      metrics = dict(metrics, skipped_steps=nonfinite.astype(jnp.float32))
      metrics = {k: jnp.where(nonfinite, 0.0, v) if k != "skipped_steps" else v
                 for k, v in metrics.items()}
      nonfinite = jnp.zeros((), bool)
    # A padding step is computed and thrown away. A select fuses into the update kernels
    # for free, whereas lax.cond would sync the GPU host on every step of the scan.
    state = jax.tree.map(lambda new, old: jnp.where(active, new, old), new_state, state)
    bad_step = jnp.where((bad_step < 0) & nonfinite, state.step, bad_step)
    return (state, bad_step), metrics

  xs = (jnp.arange(chunk, dtype=jnp.int32), batches)
  if chunk == 1:
    # No loop at all: XLA:CPU runs a conv net's training step ~10x slower inside a while
    # loop (even a one-trip or unrolled scan) than outside one, so conv models train on
    # CPU with steps_per_scan=1.
    (state, bad_step), metrics = body((state, jnp.int32(-1)), jax.tree.map(lambda x: x[0], xs))
    per_step = jax.tree.map(lambda x: x[None], metrics)
  else:
    (state, bad_step), per_step = jax.lax.scan(body, (state, jnp.int32(-1)), xs)
  active = jnp.arange(chunk) < num_steps
  denom = jnp.maximum(num_steps, 1).astype(jnp.float32)
  means = {k: jnp.sum(jnp.where(active, v, 0.0)) / denom for k, v in per_step.items()}
  if skip_nonfinite:  # means over the steps kept; skipped_steps as a count
    skipped = jnp.sum(jnp.where(active, per_step["skipped_steps"], 0.0))
    kept = jnp.maximum(num_steps.astype(jnp.float32) - skipped, 1.0)
    means = {k: v * denom / kept for k, v in means.items()}
    means["skipped_steps"] = skipped
  means["nonfinite_step"] = bad_step
  return state, means


_train_chunk_jit = jax.jit(_train_chunk, static_argnames="skip_nonfinite")


def train_chunk(state: TrainState, batches: Batch, rng: jax.Array,
                num_steps: int | None = None,
                skip_nonfinite: bool = False) -> tuple[TrainState, Metrics]:
  """K optimiser steps over ``batches`` [K, B, ...] in one jitted lax.scan.

  Step ``i`` uses ``fold_in(rng, state.step)`` like ``train_step``, so K=1 and K=8 chunks
  give the same result. Only the first ``num_steps`` (default K) batches count; the rest is
  padding whose updates are discarded, so chunks of any length share one compiled program.
  With ``skip_nonfinite`` a step whose loss or updated params are NaN/Inf keeps the old
  params and optimiser state (the step still counts) and is counted in 'skipped_steps'.

  Returns:
    (state, metrics averaged over the steps run, plus 'nonfinite_step': the 1-based step
    whose loss was first non-finite, or -1).
  """
  if num_steps is None:
    num_steps = jax.tree.leaves(batches)[0].shape[0]
  # Always an int32 array, so every call of a run (and of a test) hits one compilation.
  return _train_chunk_jit(state, batches, rng, np.int32(num_steps),
                          skip_nonfinite=bool(skip_nonfinite))


# ----------------------------------------------------------- the on-device data path


def device_table(table: pipeline.Table, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """The numeric columns of a pipeline.Table, replicated on every device of ``mesh``.

  Images stay uint8 and once per distinct image, as on the host; batches are gathered from
  these inside the jitted scan (``train_chunk_on_device``) by ``pipeline.gather_pairs``.
  """
  return parallel.replicate(pipeline.pair_columns(table), mesh)


def use_device_data(config, table: pipeline.Table) -> bool:
  """config.data_on_device: 'always', 'never', or 'auto' = fits the device memory budget.

  The budget is ``device_data_fraction`` of a device's memory where the device reports it
  (GPUs, TPUs), else ``device_data_budget_mb`` (CPU reports none).
  """
  if config.data_on_device != "auto":
    return config.data_on_device == "always"
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    stats = {}
  limit = stats.get("bytes_limit")
  if limit:
    budget = float(config.device_data_fraction) * limit
  else:
    budget = float(config.device_data_budget_mb) * 2**20
  nbytes = sum(v.nbytes for v in pipeline.pair_columns(table).values())
  return nbytes <= budget


@functools.partial(jax.jit, static_argnames="skip_nonfinite")
def _train_chunk_on_device_jit(state, data, index, rng, num_steps, skip_nonfinite=False):
  return _train_chunk(state, pipeline.gather_pairs(data, index), rng, num_steps,
                      skip_nonfinite)


def train_chunk_on_device(state: TrainState, data: Mapping[str, jax.Array], index: jax.Array,
                          rng: jax.Array, num_steps: int | None = None,
                          skip_nonfinite: bool = False) -> tuple[TrainState, Metrics]:
  """``train_chunk`` on batches gathered on device: ``data`` from ``device_table``, ``index``
  the [K, B] int32 pair indices of the chunk (the only per-chunk host-to-device transfer).
  """
  if num_steps is None:
    num_steps = index.shape[0]
  return _train_chunk_on_device_jit(state, data, index, rng, np.int32(num_steps),
                                    skip_nonfinite=bool(skip_nonfinite))


__all__ = ["device_table", "train_chunk", "train_chunk_on_device", "train_step",
           "use_device_data"]
