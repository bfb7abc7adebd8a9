"""The jitted training step, and K of them in one jitted loop.

  * ``train_step`` is pure; the randomness of optimiser step ``s`` is
    ``fold_in(base_key, s)``, so it depends on (seed, step) only, never on how steps are
    grouped into jitted calls or where a run was interrupted.
  * ``train_chunk`` runs up to K steps in one jitted ``lax.fori_loop`` (batch size 1, as in
    the paper, is dispatch-bound otherwise). Every call has the same shape [K, B, ...]: a
    short chunk (epoch end, resume point, end of run) is zero-padded, and the loop runs
    only its ``num_steps`` real steps (a dynamic trip count; the padding is never
    computed). One compiled program thus runs every step of a run, which is what makes a
    resumed run bitwise identical to an uninterrupted one.
  * Non-finite steps: 'stop' checks the loss at every step (free) and the params once per
    chunk (non-finite params are absorbing); when either is non-finite, the chunk is
    replayed with the per-step check of the params to name the first bad step exactly.
    'skip' checks the loss and the updated params at every step.
  * The family's ``method.loss`` is the only model-specific call: the metrics logged are
    whatever keys it returns.

Measured on the 2-core CPU VM (``experiments.bench_peers``, model 1 at batch 1): the
earlier ``lax.scan`` over all K steps with a ``jnp.where(active, new, old)`` over the state
made XLA copy the params and accumulators on every trip and ran at half the speed; a
per-step check of all params costs ~12% of a batch-1 step; ``paper_accuracy`` costs
nothing measurable."""

from __future__ import annotations

import functools
import os
from pathlib import Path
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
  if isinstance(batch, tuple):  # parts of one batch at their own caption lengths
    loss_fn = _parts_loss_fn(state, tuple(float_batch(b) for b in batch), step_rng)
  else:
    batch = float_batch(batch)

    def loss_fn(params):
      return state.method.loss(params, batch, step_rng, state.step, state.frozen)

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads)
  return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def _parts_loss_fn(state: TrainState, parts: tuple[Batch, ...], step_rng: jax.Array):
  """The loss of a batch given as parts (``split_rows``): the loss and each metric are the
  parts' means weighted by their rows, i.e. the means over the whole batch (a metric that
  is not a mean, e.g. a std, is the weighted mean of the parts'); each part draws its own
  randomness from ``step_rng``."""
  rows = [jax.tree.leaves(b)[0].shape[0] for b in parts]
  weights = [r / sum(rows) for r in rows]

  def loss_fn(params):
    outs = [state.method.loss(params, b, jax.random.fold_in(step_rng, i), state.step,
                              state.frozen) for i, b in enumerate(parts)]
    metrics = {k: sum(w * m[k] for w, (_, m) in zip(weights, outs)) for k in outs[0][1]}
    return sum(w * loss for w, (loss, _) in zip(weights, outs)), metrics

  return loss_fn


def split_rows(batches: Batch, long_rows: int, short_len: int,
               mesh: jax.sharding.Mesh) -> tuple[Batch, Batch]:
  """[K, B, ...] batches laid out by ``pipeline.length_split_grid`` -> (the long part:
  each shard's first long_rows / num_devices rows at full caption length, the short part:
  the other rows with captions cut to ``short_len`` words). Each part takes the same rows
  of every shard and is constrained to the batch's sharding, so both stay split over the
  devices as the batch is, with no rows moved between them (tests/test_parallel.py)."""
  num_devices = mesh.devices.size
  per_shard = long_rows // num_devices
  sharded = parallel.batch_sharding(mesh)  # P(None, 'data'): axis 1 over the devices

  def part(x, lo, hi):
    k, b = x.shape[:2]
    x = jax.lax.with_sharding_constraint(
        x.reshape(k, num_devices, b // num_devices, *x.shape[2:]), sharded)[:, :, lo:hi]
    return jax.lax.with_sharding_constraint(x.reshape(k, -1, *x.shape[3:]), sharded)

  long = {key: part(x, 0, per_shard) for key, x in batches.items()}
  short = {key: part(x, per_shard, None) for key, x in batches.items()}
  short["text"], short["mask"] = short["text"][:, :, :short_len], short["mask"][:, :, :short_len]
  return long, short


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _checked_step(state: TrainState, batch: Batch, rng: jax.Array,
                  exact: bool) -> tuple[TrainState, Metrics, jax.Array]:
  """``train_step`` and whether it stayed finite: its loss, and with ``exact`` also every
  updated param (a NaN/Inf gradient shows up there, so this covers both; it costs a pass
  over the params, which at batch 1 is ~12% of the step)."""
  new_state, metrics = train_step(state, batch, rng)
  ok = jnp.isfinite(metrics["loss"])
  if exact:
    ok = ok & _all_finite(new_state.params)
  return new_state, metrics, ok


def _keep_if(ok: jax.Array, new_state: TrainState, state: TrainState) -> TrainState:
  """``new_state`` where ``ok``, else ``state`` with the step still counted ('skip')."""
  kept = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
  return kept.replace(step=new_state.step)


def _batch_at(batches: Batch, i: jax.Array) -> Batch:
  return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), batches)


def _first_nonfinite_step(state: TrainState, batches: Batch, rng: jax.Array,
                          num_steps: jax.Array) -> jax.Array:
  """Replays the chunk from ``state`` with the exact per-step check, up to the first step
  whose loss or updated params are non-finite; its 1-based step, or -1."""

  def cond(carry):
    i, _, bad = carry
    return (i < num_steps) & (bad < 0)

  def body(carry):
    i, state, _ = carry
    state, _, ok = _checked_step(state, _batch_at(batches, i), rng, exact=True)
    return i + 1, state, jnp.where(ok, jnp.int32(-1), state.step)

  return jax.lax.while_loop(cond, body, (jnp.int32(0), state, jnp.int32(-1)))[2]


def _single_step_chunk(state, batches, rng, num_steps, skip_nonfinite):
  """A chunk of one step (K = 1), without any loop: XLA:CPU runs a conv net's training step
  ~10x slower inside a while loop (even a one-trip one) than outside one, so conv models
  train on CPU with steps_per_scan=1. (A transformer goes the other way: the flow model's
  step runs ~20% faster inside the loop, so its stage 2 uses 4; ``configs.flow_config``.)
  ``num_steps`` 0 (padding) keeps the state."""
  active = num_steps > 0
  new_state, metrics, ok = _checked_step(state, jax.tree.map(lambda x: x[0], batches), rng,
                                         exact=True)
  means = {k: jnp.where(active & ok if skip_nonfinite else active, v, 0.0)
           for k, v in metrics.items()}
  if skip_nonfinite:
    new_state = _keep_if(ok, new_state, state)
    means["skipped_steps"] = (active & ~ok).astype(jnp.float32)
    bad_step = jnp.int32(-1)
  else:
    bad_step = jnp.where(active & ~ok, new_state.step, jnp.int32(-1))
  # A select fuses into the update kernels, whereas lax.cond would sync a GPU host.
  state = jax.tree.map(lambda new, old: jnp.where(active, new, old), new_state, state)
  means["nonfinite_step"] = bad_step
  return state, means


def _train_chunk(state: TrainState, batches: Batch, rng: jax.Array,
                 num_steps: jax.typing.ArrayLike | None = None,
                 skip_nonfinite: bool = False) -> tuple[TrainState, Metrics]:
  chunk = jax.tree.leaves(batches)[0].shape[0]
  if num_steps is None:
    num_steps = chunk
  num_steps = jnp.clip(jnp.asarray(num_steps, jnp.int32), 0, chunk)
  if chunk == 1:
    return _single_step_chunk(state, batches, rng, num_steps, skip_nonfinite)

  # A while loop of exactly num_steps trips: no padded step is computed, and the state is
  # never selected against its old value (a select over the carried state makes XLA copy
  # every param and accumulator on every trip: 2x the time of a batch-1 step).
  metric_shapes = jax.eval_shape(lambda s, b: train_step(s, b, rng)[1], state,
                                 _batch_at(batches, jnp.int32(0)))
  sums = {k: jnp.zeros((), jnp.float32) for k in metric_shapes}

  def body(i, carry):
    state, bad_step, skipped, sums = carry
    # 'stop' checks only the loss per step (free); the params are checked once, after the
    # loop. 'skip' must decide at every step, so it checks the updated params too.
    new_state, metrics, ok = _checked_step(state, _batch_at(batches, i), rng,
                                           exact=skip_nonfinite)
    if skip_nonfinite:  # the step counts, its update is thrown away
      new_state = _keep_if(ok, new_state, state)
      metrics = {k: jnp.where(ok, v, 0.0) for k, v in metrics.items()}
      skipped = skipped + (~ok).astype(jnp.float32)
    else:
      bad_step = jnp.where((bad_step < 0) & ~ok, new_state.step, bad_step)
    sums = {k: sums[k] + metrics[k] for k in sums}
    return new_state, bad_step, skipped, sums

  start = state
  state, bad_step, skipped, sums = jax.lax.fori_loop(
      0, num_steps, body, (state, jnp.int32(-1), jnp.float32(0.0), sums))
  if not skip_nonfinite:
    # Non-finite params are absorbing (p + update stays NaN/Inf), so one check after the
    # loop sees any step that broke them. A loss names its step, but broken params may
    # show in the loss only a step later, or never; so whenever either shows, the chunk is
    # replayed from its start with the exact per-step check, to name the first step whose
    # loss or params went non-finite. The same compiled program; it runs only on the way
    # to a NaN stop.
    flagged = (bad_step >= 0) | ~_all_finite(state.params)
    first = jax.lax.cond(flagged, lambda: _first_nonfinite_step(start, batches, rng, num_steps),
                         lambda: jnp.int32(-1))
    # (Should the replay not reproduce it, the loss's step, else the chunk's last step.)
    last = jnp.where(bad_step >= 0, bad_step, start.step + num_steps)
    bad_step = jnp.where(flagged, jnp.where(first >= 0, first, last), jnp.int32(-1))
  kept = jnp.maximum(num_steps.astype(jnp.float32) - skipped, 1.0)
  means = {k: v / kept for k, v in sums.items()}
  if skip_nonfinite:  # means over the steps kept; skipped_steps as a count
    means["skipped_steps"] = skipped
  means["nonfinite_step"] = bad_step
  return state, means


# XLA:CPU's default copy insertion keeps a copy of every carried param inside the loop
# body (it cannot order the backward pass's last read of a weight before the update that
# overwrites it); its region analysis proves the copy unneeded. Model 1 at batch 1 (a
# memory-bound step): 1.19x faster in an interleaved probe on a shared CPU, 7.9 -> 5.0
# ms/step in experiments.bench_peers on the idle VM; the same bits (README, Benchmarks).
_CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


@functools.cache
def _jit_for_backend(fn, static_argnames=("skip_nonfinite",)):
  """``fn`` jitted with ``_CPU_COMPILER_OPTIONS`` where the default backend is the CPU.

  Decided at the first call, not at import: asking for the backend initialises it, which
  must wait until the process has set its devices (the CLI's host device count)."""
  options = _CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
  return jax.jit(fn, static_argnames=static_argnames, compiler_options=options)


def _train_chunk_jit(*args, **kwargs):
  return _jit_for_backend(_train_chunk)(*args, **kwargs)


def train_chunk(state: TrainState, batches: Batch, rng: jax.Array,
                num_steps: int | None = None,
                skip_nonfinite: bool = False) -> tuple[TrainState, Metrics]:
  """K optimiser steps over ``batches`` [K, B, ...] in one jitted loop.

  Step ``i`` uses ``fold_in(rng, state.step)`` like ``train_step``, so K=1 and K=8 chunks
  give the same result. Only the first ``num_steps`` (default K) batches are trained on;
  the rest is padding that is never computed, so chunks of any length share one compiled
  program. With ``skip_nonfinite`` a step whose loss or updated params are NaN/Inf keeps
  the old params and optimiser state (the step still counts) and is counted in
  'skipped_steps'.

  Returns:
    (state, metrics averaged over the steps run, plus 'nonfinite_step': the 1-based step
    whose loss or updated params were first non-finite, or -1).
  """
  if num_steps is None:
    num_steps = jax.tree.leaves(batches)[0].shape[0]
  # Always an int32 array, so every call of a run (and of a test) hits one compilation.
  return _train_chunk_jit(state, batches, rng, np.int32(num_steps),
                          skip_nonfinite=bool(skip_nonfinite))


# ----------------------------------------------------------- the on-device data path


def device_table(table: pipeline.Table, mesh: jax.sharding.Mesh,
                 features: Any = None) -> dict[str, jax.Array]:
  """The numeric columns of a pipeline.Table, replicated on every device of ``mesh``.

  Images stay uint8 and once per distinct image, as on the host; batches are gathered from
  these inside the jitted loop (``train_chunk_on_device``) by ``pipeline.gather_pairs``.
  ``features`` (``Method.image_features`` of ``table.images``) replace the images.
  """
  columns = pipeline.pair_columns(table)
  if features is not None:
    del columns["images"]
    columns["features"] = features
  return parallel.replicate(columns, mesh)


def host_memory_bytes() -> int | None:
  """The host's physical memory, or the cgroup (container) limit where that is lower; None
  where neither can be read."""
  sizes = []
  try:
    sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
  except (AttributeError, ValueError, OSError):
    pass
  for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    try:
      text = Path(path).read_text().strip()
    except OSError:
      continue
    if text.isdigit() and int(text) < 2**60:  # 'max' or a huge number: no limit
      sizes.append(int(text))
  return min(sizes) if sizes else None


def device_data_budget(config) -> tuple[float, str]:
  """The bytes of train table that 'auto' puts on each device, and where that figure comes
  from: ``device_data_fraction`` of the device's memory where the device reports it (GPUs,
  TPUs); on the CPU, ``device_data_budget_mb`` where it is > 0, else the same fraction of
  the host's memory (the CPU device's memory is the host's), split over the process's
  devices: each holds its own copy, and forced CPU devices share the one memory."""
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    stats = {}
  fraction = float(config.device_data_fraction)
  if stats.get("bytes_limit"):
    return (fraction * stats["bytes_limit"],
            f"device_data_fraction {fraction:g} of the device's memory")
  if float(config.device_data_budget_mb) > 0:
    return float(config.device_data_budget_mb) * 2**20, "device_data_budget_mb"
  host = host_memory_bytes()
  if host is None:
    return 1024.0 * 2**20, "1 GiB: the host's memory could not be read"
  devices = jax.local_device_count()
  return (fraction * host / devices, f"device_data_fraction {fraction:g} of the host's memory"
          + (f" over {devices} devices" if devices > 1 else ""))


def device_data_decision(config, table: pipeline.Table) -> tuple[bool, str]:
  """(keep the train table on the devices?, one line saying why) for config.data_on_device:
  'always', 'never', or 'auto' = the table fits ``device_data_budget``."""
  if config.data_on_device != "auto":
    return config.data_on_device == "always", f"data_on_device={config.data_on_device}"
  budget, source = device_data_budget(config)
  nbytes = sum(v.nbytes for v in pipeline.pair_columns(table).values())
  mb = lambda n: f"{n / 2**20:,.0f} MB"
  always = "--config.data_on_device=always keeps the table on the device"
  # Every process joins (a barrier): hosts of one run can differ in memory, and processes
  # that chose different data paths would hang in the run's first collective.
  over = parallel.processes_without(nbytes <= budget)
  if nbytes > budget:
    return False, (f"the train table ({mb(nbytes)}) is over the on-device budget "
                   f"({mb(budget)}, {source}): batches come from tf.data on the host, and a "
                   "family with frozen image features (the flow model) encodes every batch "
                   f"again; {always}")
  if over:  # hosts with less memory: every process must run the same step
    return False, (f"the train table ({mb(nbytes)}) fits this process's on-device budget "
                   f"({mb(budget)}, {source}) but not that of process(es) "
                   f"{', '.join(map(str, over))}, and all processes must take one path: "
                   f"batches come from tf.data on the host; {always}")
  return True, (f"the train table ({mb(nbytes)}) fits the on-device budget ({mb(budget)}, "
                f"{source})")


def use_device_data(config, table: pipeline.Table) -> bool:
  """config.data_on_device: 'always', 'never', or 'auto' (``device_data_decision``)."""
  return device_data_decision(config, table)[0]


def _train_chunk_on_device(state, data, index, rng, num_steps, skip_nonfinite=False,
                           split=None):
  batches = pipeline.gather_pairs(data, index)
  if split is not None:
    batches = split_rows(batches, *split)
  return _train_chunk(state, batches, rng, num_steps, skip_nonfinite)


def _train_chunk_on_device_jit(*args, **kwargs):
  return _jit_for_backend(_train_chunk_on_device, ("skip_nonfinite", "split"))(*args, **kwargs)


def train_chunk_on_device(state: TrainState, data: Mapping[str, jax.Array], index: jax.Array,
                          rng: jax.Array, num_steps: int | None = None,
                          skip_nonfinite: bool = False,
                          split: tuple[int, int, jax.sharding.Mesh] | None = None,
                          ) -> tuple[TrainState, Metrics]:
  """``train_chunk`` on batches gathered on device: ``data`` from ``device_table``, ``index``
  the [K, B] int32 pair indices of the chunk (the only per-chunk host-to-device transfer).
  ``split`` = (long_rows, short_len, the training mesh), for an index laid out by
  ``pipeline.length_split_grid``: each step runs on the two parts of ``split_rows``.
  """
  if num_steps is None:
    num_steps = index.shape[0]
  return _train_chunk_on_device_jit(state, data, index, rng, np.int32(num_steps),
                                    skip_nonfinite=bool(skip_nonfinite),
                                    split=split)


__all__ = ["device_data_budget", "device_data_decision", "device_table", "host_memory_bytes",
           "train_chunk", "train_chunk_on_device", "train_step", "use_device_data"]
