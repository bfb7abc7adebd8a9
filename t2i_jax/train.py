"""Training and evaluation loop, after flax/examples (imagenet, vae).

Design points:
  * ``train_step`` is pure; the randomness of optimiser step ``s`` is
    ``fold_in(base_key, s)``, so it depends on (seed, step) only, never on how steps are
    grouped into jitted calls or where a run was interrupted.
  * ``train_chunk`` runs up to K steps in one jitted ``lax.scan`` (batch size 1, as in the
    paper, is dispatch-bound otherwise). Every call has the same shape [K, B, ...]: a short
    chunk (epoch end, resume point, end of run) is zero-padded and the padded steps' updates
    are discarded. One compiled program thus runs every step of a run, which is what makes
    a resumed run bitwise identical to an uninterrupted one. Chunks follow the global grid
    of multiples of K, so log and checkpoint steps that are multiples of K cut no chunk.
  * Data order is a pure function of (seed, epoch) (``pipeline.make_dataset``), and a resumed
    run restarts the epoch's order at the checkpoint's step-within-epoch.
  * Images stay uint8 on the host and become float32 / 255 inside the jitted functions.

Workdir layout (see ``train_and_evaluate``): config.json, run.json, metrics.jsonl,
tensorboard/, checkpoints/ (``t2i_jax.checkpoint``).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.metadata
import inspect
import json
import os
import platform
import shlex
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct
from flax.training import train_state

from t2i_jax import checkpoint as checkpoint_lib
from t2i_jax import configs
from t2i_jax import losses
from t2i_jax import models
from t2i_jax import optim
from t2i_jax import parallel
from t2i_jax.errors import UserError

Batch = Mapping[str, Any]
Metrics = dict[str, Any]

# Batch key of the per-example weights of a padded evaluation batch (1 real, 0 padding).
# 'mask' is taken: it is the caption mask in sequence mode.
EXAMPLE_MASK = "example_mask"

# Config keys that may change between a run and its resumption: they change how long the
# run goes, how it is logged or evaluated, or where the data lives, not what is trained.
RESUMABLE_KEYS = frozenset({
    "num_epochs", "max_steps", "checkpoint_every_steps", "keep_checkpoints",
    "log_every_steps", "eval_every_epochs", "eval_batch_size", "steps_per_scan",
    "sample_latent_eval", "obs_sigma", "data_dir", "manual_dir", "nonfinite",
    # Where the run executes, not what it computes (t2i_jax.parallel).
    "distributed", "data_on_device", "device_data_fraction", "device_data_budget_mb",
})

PRECISIONS = ("float32", "bfloat16")
DATA_ON_DEVICE = ("auto", "always", "never")


class TrainState(train_state.TrainState):
  """flax's TrainState plus the objective, so ``train_step(state, batch, rng)`` is complete.

  Pytree children are ``step``, ``params`` and ``opt_state`` (what checkpoints hold);
  ``apply_fn``, ``tx``, ``loss_fn`` and ``compute_dtype`` are static.
  """

  loss_fn: Callable[..., Any] = struct.field(pytree_node=False)
  # 'bfloat16': the forward/backward pass runs in bf16 on bf16 copies of the params, while
  # params, optimiser state, loss and gradients stay float32 (config.precision).
  compute_dtype: str = struct.field(pytree_node=False, default="float32")


class NonFiniteLossError(UserError):
  """The training loss became NaN or infinite."""


NONFINITE_MODES = ("stop", "skip")


class TrainingInterrupted(Exception):
  """SIGINT or SIGTERM arrived; a checkpoint of ``step`` was saved before raising this."""

  def __init__(self, signum: int, step: int):
    super().__init__(f"{signal.Signals(signum).name} at step {step}")
    self.signum = signum
    self.step = step


class _StopSignals:
  """Turns SIGINT / SIGTERM into a flag the loop checks between chunks.

  Saving from inside a handler could interleave with a save in progress; the loop saves at
  the next chunk boundary instead. A second signal interrupts at once (KeyboardInterrupt).
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.signum: int | None = None
    self._old: dict[int, Any] = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      raise KeyboardInterrupt
    self.signum = signum

  def __enter__(self) -> "_StopSignals":
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old)


@dataclasses.dataclass(frozen=True)
class ModelApply:
  """``model.apply`` as a value that is equal for equal modules.

  flax returns a new ``apply`` wrapper on every access; jit compares static pytree parts by
  equality, so with this a second run of the same model in one process (a sweep, the tests)
  reuses the compiled steps instead of compiling them again.
  """

  model: Any

  def __call__(self, *args, **kwargs):
    return self.model.apply(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class Objective:
  """``losses.compute_loss`` bound to the loss keys of a config; hashable for the same reason."""

  items: tuple[tuple[str, Any], ...]

  @classmethod
  def from_config(cls, config) -> "Objective":
    return cls(tuple(sorted(losses.loss_config(config).items())))

  def __call__(self, outputs, batch, mask=None, step=None):
    return losses.compute_loss(dict(self.items), outputs, batch, mask=mask, step=step)


@functools.lru_cache(maxsize=32)
def _optimizer(name: str, learning_rate: float, kwargs: tuple[tuple[str, Any], ...]):
  """One optax transformation per setting, so equal configs give equal (cache-hitting) states."""
  return optim.make_optimizer(name, learning_rate, **dict(kwargs))


def _image_to_float(image: jax.typing.ArrayLike) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]; float images pass through as float32."""
  image = jnp.asarray(image)
  if jnp.issubdtype(image.dtype, jnp.integer):
    return image.astype(jnp.float32) / 255.0
  return image.astype(jnp.float32)


def _as_dict(value) -> dict[str, Any]:
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  return dict(value or {})


def build_model(config: ml_collections.ConfigDict):
  """The flax module named by ``config.model`` with ``config.model_kwargs``."""
  return models.get_model(config.model, **_as_dict(config.get("model_kwargs")))


@functools.partial(jax.jit, static_argnums=0)
def _init_params(model, rngs, text, image):
  return model.init(rngs, text, image, train=False)["params"]


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array,
                       example_batch: Batch) -> TrainState:
  """Initialises the model on ``example_batch`` and the optimiser named by ``config``."""
  model = build_model(config)
  text = jnp.asarray(example_batch["text"][:1], jnp.float32)
  image = _image_to_float(example_batch["image"][:1])
  params_rng, sample_rng, dropout_rng = jax.random.split(rng, 3)
  params = _init_params(model, {"params": params_rng, "sample": sample_rng,
                                "dropout": dropout_rng}, text, image)
  tx = _optimizer(config.optimizer, float(config.learning_rate),
                  tuple(sorted(_as_dict(config.get("optimizer_kwargs")).items())))
  state = TrainState.create(apply_fn=ModelApply(model), params=params, tx=tx,
                            loss_fn=Objective.from_config(config),
                            compute_dtype=str(config.get("precision", "float32")))
  # Committed to the device, like a state restored from a checkpoint: jit keys its
  # executables on input placement, so fresh and resumed runs then share one compilation.
  return jax.device_put(state.replace(step=jnp.zeros((), jnp.int32)), jax.local_devices()[0])


def _cast_floats(tree, dtype):
  """Floating leaves of ``tree`` as ``dtype``; integer and bool leaves unchanged."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x,
      tree)


def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
  """One optimiser step on ``batch``; pure and jittable.

  ``rng`` is the run's base training key: this step uses ``fold_in(rng, state.step)``, so
  its randomness depends on the step number alone. ``batch['mask']`` (the caption mask of
  sequence mode), when present, reaches the model; ``state.step`` reaches the loss (KL
  warm-up).

  Returns:
    (new state, {'loss', 'mse', 'kl', 'paper_accuracy', ...}) as float32 scalars.
  """
  step_rng = jax.random.fold_in(rng, state.step)
  sample_rng, dropout_rng = jax.random.split(step_rng)
  image = _image_to_float(batch["image"])
  text = jnp.asarray(batch["text"], jnp.float32)
  target = dict(batch, image=image)
  compute = jnp.dtype(state.compute_dtype)

  def loss_fn(params):
    text_in, image_in = text, image
    if compute != jnp.float32:  # the casts sit inside the grad: gradients come back float32
      params, text_in, image_in = _cast_floats((params, text, image), compute)
    outputs = state.apply_fn({"params": params}, text_in, image_in, mask=batch.get("mask"),
                             train=True, sample_latent=True,
                             rngs={"sample": sample_rng, "dropout": dropout_rng})
    outputs = _cast_floats(outputs, jnp.float32)  # the loss is always computed in float32
    loss, metrics = state.loss_fn(outputs, target, step=state.step)
    return loss, (metrics, outputs["recon"])

  (_, (metrics, recon)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads)
  metrics = dict(metrics, paper_accuracy=losses.paper_accuracy(recon, image))
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


def device_table(table, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """The numeric columns of a pipeline.Table, replicated on every device of ``mesh``.

  Images stay uint8 and once per distinct image, as on the host; batches are gathered from
  these inside the jitted scan (``train_chunk_on_device``).
  """
  data = {"images": table.images, "image_index": table.image_index.astype(np.int32),
          "text": table.text}
  if table.mask is not None:
    data["mask"] = table.mask
  return parallel.replicate(data, mesh)


def table_nbytes(table) -> int:
  """Device bytes ``device_table`` needs per device."""
  return int(table.images.nbytes + table.image_index.nbytes + table.text.nbytes
             + (0 if table.mask is None else table.mask.nbytes))


def use_device_data(config, table) -> bool:
  """config.data_on_device: 'always', 'never', or 'auto' = fits the device memory budget.

  The budget is ``device_data_fraction`` of a device's memory where the device reports it
  (GPUs, TPUs), else ``device_data_budget_mb`` (CPU reports none).
  """
  mode = config.get("data_on_device", "auto")
  if mode != "auto":
    return mode == "always"
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    stats = {}
  limit = stats.get("bytes_limit")
  if limit:
    budget = float(config.get("device_data_fraction", 0.25)) * limit
  else:
    budget = float(config.get("device_data_budget_mb", 1024)) * 2**20
  return table_nbytes(table) <= budget


def _gather_batches(data: Mapping[str, jax.Array], index: jax.Array) -> dict[str, jax.Array]:
  """[K, B] pair indices -> the [K, B, ...] batches ``Table.pairs`` would give."""
  out = {"image": data["images"][data["image_index"][index]], "text": data["text"][index]}
  if "mask" in data:
    out["mask"] = data["mask"][index]
  return out


@functools.partial(jax.jit, static_argnames="skip_nonfinite")
def _train_chunk_on_device_jit(state, data, index, rng, num_steps, skip_nonfinite=False):
  return _train_chunk(state, _gather_batches(data, index), rng, num_steps, skip_nonfinite)


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


@functools.partial(jax.jit, static_argnames=("apply_fn", "objective", "sample_latent",
                                             "obs_sigma"))
def _eval_step(params, batch, rng, *, apply_fn, objective, sample_latent, obs_sigma):
  mask = batch.get(EXAMPLE_MASK)
  image = _image_to_float(batch["image"])
  text = jnp.asarray(batch["text"], jnp.float32)
  sample_rng, dropout_rng = jax.random.split(rng)
  outputs = apply_fn({"params": params}, text, image, mask=batch.get("mask"), train=False,
                     sample_latent=sample_latent,
                     rngs={"sample": sample_rng, "dropout": dropout_rng})
  recon = outputs["recon"]
  _, metrics = objective(outputs, dict(batch, image=image), mask=mask)
  metrics = dict(metrics)
  metrics["paper_accuracy"] = losses.paper_accuracy(recon, image, mask)
  metrics["psnr"] = losses.psnr(recon, image, mask)
  metrics.update(losses.negative_elbo(
      recon, image, outputs["mean"], outputs["logvar"], outputs.get("prior_mean", 0.0),
      outputs.get("prior_logvar", 0.0), obs_sigma=obs_sigma, mask=mask))
  return metrics


def make_eval_step(config: ml_collections.ConfigDict,
                   apply_fn: Callable[..., Any]) -> Callable[[Any, Batch, jax.Array], Metrics]:
  """A jitted ``eval_step(params, batch, rng) -> metrics`` for the model and loss of ``config``.

  Metrics are means over the examples where ``batch[EXAMPLE_MASK]`` is 1 (all when absent):
  loss, mse, kl, paper_accuracy, psnr, nelbo_nats, recon_nll_nats, kl_nats, bits_per_dim.
  z is sampled when ``config.sample_latent_eval`` (the paper), else the posterior mean.
  ``apply_fn`` should be hashable (``state.apply_fn`` is).
  """
  return functools.partial(
      _eval_step, apply_fn=apply_fn, objective=Objective.from_config(config),
      sample_latent=bool(config.get("sample_latent_eval", True)),
      obs_sigma=float(config.get("obs_sigma", losses.DEFAULT_OBS_SIGMA)))


def _pad_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """Zero-pads a batch to ``size`` examples and adds EXAMPLE_MASK (1 real, 0 padding)."""
  n = batch["image"].shape[0]
  out = {k: v if n == size else np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
         for k, v in batch.items()}
  out[EXAMPLE_MASK] = (np.arange(size) < n).astype(np.float32)
  return out


def evaluate(eval_step: Callable[..., Metrics], params: Any, table, *, batch_size: int,
             rng: jax.Array, progress: bool = True, desc: str = "eval",
             mesh: jax.sharding.Mesh | None = None) -> dict[str, float]:
  """Means of ``eval_step``'s metrics over every example of ``table``, each counted once.

  Batches have one fixed shape (one compilation): the last one is zero-padded and masked.
  With ``mesh``, the batch size is rounded up to a multiple of its devices and each batch
  is split over them like the training batches (every process reads the whole batch and
  contributes its slice). Adds 'num_examples'.
  """
  from t2i_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  n = len(table)
  size = max(1, min(batch_size, n))
  if mesh is not None:
    size = parallel.pad_to_multiple(size, mesh)
  ds = pipeline.make_dataset(table, batch_size=size, shuffle=False, drop_remainder=False)
  results = []
  for i, batch in enumerate(tqdm(ds.as_numpy_iterator(), total=-(-n // size), desc=desc,
                                 unit="batch", leave=False, disable=None if progress else True)):
    padded = _pad_batch(batch, size)
    if mesh is not None:
      padded = parallel.shard_local(parallel.process_slice(padded), mesh, chunked=False)
    results.append((eval_step(params, padded, jax.random.fold_in(rng, i)),
                    batch["image"].shape[0]))
  sums: dict[str, float] = {}
  count = 0
  for metrics, real in jax.device_get(results):
    count += real
    for k, v in metrics.items():
      sums[k] = sums.get(k, 0.0) + float(v) * real
  out = {k: v / count for k, v in sums.items()}
  out["num_examples"] = count
  return out


class _ChunkReader:
  """Regroups the pipeline's [<=K, B, ...] chunks into chunks of any requested length."""

  def __init__(self, iterator: Iterator[dict[str, np.ndarray]]):
    self._it = iterator
    self._buf: dict[str, np.ndarray] | None = None

  def take(self, k: int) -> dict[str, np.ndarray]:
    parts = []
    got = 0
    while got < k:
      if self._buf is None or self._buf["image"].shape[0] == 0:
        try:
          self._buf = next(self._it)
        except StopIteration:
          raise RuntimeError(f"the epoch's data ended {k - got} steps early") from None
      m = min(k - got, self._buf["image"].shape[0])
      parts.append({key: v[:m] for key, v in self._buf.items()})
      self._buf = {key: v[m:] for key, v in self._buf.items()}
      got += m
    if len(parts) == 1:
      return parts[0]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


class _IndexReader:
  """The on-device path's _ChunkReader: chunks of this process's [k, B_local] pair indices,
  cut from the same ``epoch_permutation`` the tf.data path reads."""

  def __init__(self, perm: np.ndarray, batch_size: int, start_step: int):
    count, index = jax.process_count(), jax.process_index()
    local = batch_size // count
    steps = len(perm) // batch_size
    grid = perm[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)
    self._index = grid[start_step:, index * local:(index + 1) * local]
    self._pos = 0

  def take(self, k: int) -> dict[str, np.ndarray]:
    out = self._index[self._pos:self._pos + k]
    if out.shape[0] < k:
      raise RuntimeError(f"the epoch's data ended {k - out.shape[0]} steps early")
    self._pos += k
    return {"index": out}


def _pad_chunk(chunk: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  k = next(iter(chunk.values())).shape[0]
  if k == size:
    return chunk
  return {key: np.concatenate([v, np.zeros((size - k,) + v.shape[1:], v.dtype)])
          for key, v in chunk.items()}


def _record_step(line: str) -> int | None:
  """The step of a metrics.jsonl line; None for a blank or torn (crash-truncated) line."""
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


class MetricsWriter:
  """Appends records to WORKDIR/metrics.jsonl and scalars to TensorBoard (tensorboardX).

  On (re)start, records after ``resume_step`` (work lost since the last checkpoint, which
  the run redoes) are dropped from metrics.jsonl and purged from TensorBoard, so every step
  is logged once.
  """

  def __init__(self, workdir: Path, resume_step: int):
    self.path = workdir / "metrics.jsonl"
    if self.path.exists():
      kept = [line for line in self.path.read_text().splitlines()
              if _record_step(line) is not None and _record_step(line) <= resume_step]
      self.path.write_text("".join(line + "\n" for line in kept))
    self._file = self.path.open("a")
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(logdir=str(workdir / "tensorboard"), purge_step=resume_step + 1)
    except ImportError:  # metrics.jsonl is the source of truth; TensorBoard is a convenience
      self._tb = None

  def write(self, *, split: str, step: int, epoch: int, scope: str,
            metrics: Mapping[str, Any]) -> None:
    record = {"step": int(step), "epoch": int(epoch), "split": split, "scope": scope}
    record.update({k: (float(v) if isinstance(v, (float, np.floating)) else v)
                   for k, v in metrics.items()})
    record["time"] = round(time.time(), 3)
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
          self._tb.add_scalar(f"{split}/{k}", float(v), int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()


class _NullWriter:
  """MetricsWriter of processes other than 0: multi-host runs log once."""

  def write(self, **_) -> None:
    pass

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def _versions() -> dict[str, str]:
  out = {"python": sys.version.split()[0]}
  for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorflow-cpu",
              "tensorflow", "tensorflow-datasets", "ml_collections", "t2i_jax"):
    try:
      out[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_run_info(workdir: Path, config, state: TrainState, info: dict[str, Any]) -> None:
  """run.json: what ran where; a resumed run appends a session instead of forgetting one."""
  devices = jax.devices()
  session = {"start_time": _now(), "start_step": info["start_step"], "host": socket.gethostname(),
             "backend": jax.default_backend(), "devices": [str(d) for d in devices],
             "argv": list(sys.argv)}
  path = workdir / "run.json"
  previous = json.loads(path.read_text()) if path.exists() else {}
  run = {
      "model": config.model,
      "param_count": int(sum(x.size for x in jax.tree.leaves(state.params))),
      "backend": jax.default_backend(),
      "devices": [str(d) for d in devices],
      "device_kind": devices[0].device_kind,
      "platform": platform.platform(),
      "host": socket.gethostname(),
      "cpu_count": os.cpu_count(),
      "versions": _versions(),
      "start_time": previous.get("start_time", session["start_time"]),
      **{k: v for k, v in info.items() if k != "start_step"},
      "sessions": previous.get("sessions", []) + [session],
  }
  path.write_text(json.dumps(run, indent=2) + "\n")


def _check_resumable(workdir: Path, saved: Mapping[str, Any], config) -> None:
  new = configs.to_json_dict(config)
  # A key added to base_config after the run was saved counts as its default.
  defaults = configs.to_json_dict(configs.base_config())
  diffs = [f"{k}: {saved.get(k, defaults.get(k))!r} -> {new.get(k)!r}"
           for k in sorted(set(saved) | set(new))
           if k not in RESUMABLE_KEYS and saved.get(k, defaults.get(k)) != new.get(k)]
  if diffs:
    raise UserError(f"{workdir} holds a run with another config ({'; '.join(diffs[:4])}); use "
                    "a new --workdir, or rerun with the run's settings to resume it.")


def on_nonfinite(step: int, epoch: int, checkpointer: checkpoint_lib.Checkpointer) -> None:
  """What the loop does when the loss stops being finite; for now: stop with one line."""
  last = checkpointer.latest_step()
  raise NonFiniteLossError(
      f"The training loss became non-finite at step {step} (epoch {epoch}); the last "
      f"checkpoint is {'step ' + str(last) if last is not None else 'none'}. Try a lower "
      "--config.learning_rate in a new --workdir.")


def _total_steps(config, steps_per_epoch: int) -> int:
  total = steps_per_epoch * int(config.num_epochs)
  if config.max_steps > 0:
    total = min(total, int(config.max_steps))
  return total


def _validate(config) -> None:
  if config.get("precision", "float32") not in PRECISIONS:
    raise UserError(f"--config.precision must be one of {', '.join(PRECISIONS)}, got "
                    f"{config.precision!r}.")
  if config.get("data_on_device", "auto") not in DATA_ON_DEVICE:
    raise UserError(f"--config.data_on_device must be one of {', '.join(DATA_ON_DEVICE)}, "
                    f"got {config.data_on_device!r}.")
  for key, low in (("batch_size", 1), ("steps_per_scan", 1), ("eval_batch_size", 1),
                   ("num_epochs", 0), ("max_steps", 0), ("checkpoint_every_steps", 0),
                   ("log_every_steps", 0), ("eval_every_epochs", 1), ("keep_checkpoints", 1)):
    if config[key] < low:
      raise UserError(f"--config.{key} must be at least {low}, got {config[key]}.")
  if config.get("nonfinite", "stop") not in NONFINITE_MODES:
    raise UserError(f"--config.nonfinite must be one of {', '.join(NONFINITE_MODES)}, got "
                    f"{config.nonfinite!r}.")
  if config.get("loss", "paper") not in losses.LOSSES:
    raise UserError(f"Unknown loss {config.loss!r}; choose one of: {', '.join(losses.LOSSES)}.")




def _fmt(metrics: Mapping[str, Any], keys: Sequence[str]) -> str:
  return " ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> TrainState:
  """Trains ``config``'s model, evaluating each epoch; resumes from ``workdir`` if possible.

  Writes into ``workdir``: config.json, run.json, metrics.jsonl (one JSON object per line:
  step, epoch (1-based), split 'train'/'test', scope 'steps'/'epoch'/'final', metrics),
  tensorboard/ and checkpoints/. Rerunning on the same workdir continues from the latest
  checkpoint with the same data order and randomness; a finished run is left alone.

  Returns:
    The final TrainState.
  """
  from t2i_jax.data import common, pipeline  # pylint: disable=import-outside-toplevel

  _validate(config)
  parallel.maybe_initialize_distributed(config)  # before anything touches a device
  workdir = Path(workdir).expanduser()
  common.host_only_tensorflow()
  builder = pipeline.ensure_prepared(config)
  train_table = pipeline.load_table(config, "train", builder)
  test_table = pipeline.load_table(config, "test", builder)
  spe = pipeline.steps_per_epoch(len(train_table), config.batch_size)
  if spe == 0:
    raise UserError(f"batch_size {config.batch_size} is larger than the training split "
                    f"({len(train_table)} pairs); lower --config.batch_size.")
  total = _total_steps(config, spe)

  _ensure_writable(workdir)
  with checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints) as checkpointer:
    return _train(config, workdir, checkpointer, train_table, test_table, spe, total)


def _ensure_writable(workdir: Path) -> None:
  """Creates ``workdir`` and proves it writable now, not at the first checkpoint."""
  probe = workdir / ".t2i_write_test"
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe.touch()
    probe.unlink()
  except OSError as e:
    raise UserError(f"cannot write to workdir {workdir} ({e.strerror or e}); pass a "
                    "--workdir you can write to.") from e


def _train(config, workdir: Path, checkpointer: checkpoint_lib.Checkpointer, train_table,
           test_table, spe: int, total: int) -> TrainState:
  """The body of ``train_and_evaluate`` once the data is loaded: init or resume, then loop."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  from t2i_jax.data import pipeline  # pylint: disable=import-outside-toplevel

  chunk_len = int(config.steps_per_scan)
  latest = checkpointer.latest_step()
  if latest is not None:  # the newest readable one: a damaged step is skipped with a warning
    _check_resumable(workdir, checkpointer.restore_meta().get("config", {}), config)

  # Data parallelism (t2i_jax.parallel): state and keys replicated, batches split over the
  # 'data' axis of all devices. One device is the same program on a 1-device mesh.
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  main = parallel.is_main_process()  # the only process that writes metrics and run info

  # Every random stream is a pure function of the seed (and the step, inside the steps).
  init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(config.seed), 3)
  state = parallel.replicate(
      create_train_state(config, init_rng, train_table.pairs(np.arange(1))), mesh)
  train_rng = parallel.replicate(train_rng, mesh)
  meta: dict[str, Any] = {}
  if latest is not None:
    state, meta = checkpointer.restore(state)  # placed like `state`: replicated
    latest = int(state.step)  # the newest readable step
    if latest >= total:
      if main:
        print(f"{workdir} already holds a finished run (step {latest} of {total}); "
              "nothing to do.")
      return state
  start = int(state.step)
  on_device = use_device_data(config, train_table)
  device_data = device_table(train_table, mesh) if on_device else None

  if main:
    (workdir / "config.json").write_text(
        json.dumps(configs.to_json_dict(config), indent=2, sort_keys=True) + "\n")
    _write_run_info(workdir, config, state, {
        "start_step": start, "train_pairs": len(train_table), "test_pairs": len(test_table),
        "steps_per_epoch": spe, "total_steps": total, "num_devices": int(mesh.devices.size),
        "process_count": jax.process_count(), "data_on_device": on_device})
  writer = MetricsWriter(workdir, start) if main else _NullWriter()
  eval_step = make_eval_step(config, state.apply_fn)

  def boundary(step: int) -> int:
    end = min(total, (step // spe + 1) * spe, (step // chunk_len + 1) * chunk_len)
    for every in (config.checkpoint_every_steps, config.log_every_steps):
      if every > 0:
        end = min(end, (step // every + 1) * every)
    return end

  names = ("loss", "mse", "kl", "paper_accuracy")
  epoch_sums = dict(meta.get("epoch_train_sums", {}))
  epoch_steps = int(meta.get("epoch_train_steps", 0))
  epoch_elapsed = float(meta.get("epoch_elapsed_s", 0.0))
  log_sums = dict(meta.get("log_train_sums", {}))
  log_steps = int(meta.get("log_train_steps", 0))
  log_t0 = time.perf_counter()
  skip = config.get("nonfinite", "stop") == "skip"
  skipped_total = int(meta.get("skipped_steps", 0))

  def process(pending) -> None:
    nonlocal epoch_steps, log_steps, log_sums, log_t0, skipped_total
    metrics, k, end = pending
    metrics = jax.device_get(metrics)
    if int(metrics["nonfinite_step"]) >= 0:
      bad = int(metrics["nonfinite_step"])
      on_nonfinite(bad, (bad - 1) // spe + 1, checkpointer)
    skipped = int(round(float(metrics.get("skipped_steps", 0.0))))
    skipped_total += skipped
    k -= skipped  # the means are over the steps kept
    for n in names:
      epoch_sums[n] = epoch_sums.get(n, 0.0) + float(metrics[n]) * k
      log_sums[n] = log_sums.get(n, 0.0) + float(metrics[n]) * k
    epoch_steps += k
    log_steps += k
    if config.log_every_steps > 0 and end % config.log_every_steps == 0:
      dt = time.perf_counter() - log_t0
      means = {n: log_sums.get(n, float("nan")) / max(log_steps, 1) for n in names}
      if skip:
        means["skipped_steps"] = skipped_total
      means["steps_per_s"] = log_steps / max(dt, 1e-9)
      writer.write(split="train", step=end, epoch=(end - 1) // spe + 1, scope="steps",
                   metrics=means)
      pbar.set_postfix(loss=f"{means['loss']:.4g}", refresh=False)
      log_sums, log_steps, log_t0 = {}, 0, time.perf_counter()

  def pause_log_clock(seconds: float) -> None:
    nonlocal log_t0
    log_t0 += seconds  # steps/s measures training, not evaluation or saving

  def save(step: int, elapsed: float) -> None:
    t0 = time.perf_counter()
    checkpointer.save(step, state, {
        "config": configs.to_json_dict(config), "step": step, "epoch": step // spe,
        "step_in_epoch": step % spe, "steps_per_epoch": spe, "total_steps": total,
        "epoch_train_sums": epoch_sums, "epoch_train_steps": epoch_steps,
        "epoch_elapsed_s": elapsed, "log_train_sums": log_sums, "log_train_steps": log_steps,
        "skipped_steps": skipped_total, "saved_at": _now()})
    pause_log_clock(time.perf_counter() - t0)

  def run_eval(step: int, epoch: int, scope: str) -> dict[str, float]:
    t0 = time.perf_counter()
    result = evaluate(eval_step, state.params, test_table, batch_size=config.eval_batch_size,
                      rng=jax.random.fold_in(eval_rng, step), desc=f"eval epoch {epoch}",
                      progress=main, mesh=mesh)
    result["eval_time_s"] = time.perf_counter() - t0
    writer.write(split="test", step=step, epoch=epoch, scope=scope, metrics=result)
    pause_log_clock(result["eval_time_s"])
    return result

  step = start
  pbar = tqdm(total=total, initial=start, unit="step", desc=f"train {config.model}",
              dynamic_ncols=True, mininterval=1.0, disable=None if main else True)
  stop = _StopSignals().__enter__()
  try:
    while step < total:
      epoch = step // spe  # 0-based
      epoch_end = min((epoch + 1) * spe, total)
      if on_device:  # the same order as tf.data's, as [k, B] indices gathered on device
        reader = _IndexReader(pipeline.epoch_permutation(len(train_table), config.seed, epoch),
                              config.batch_size, step - epoch * spe)
      else:  # each process reads its own slice of every global batch
        ds = pipeline.make_dataset(
            train_table, batch_size=config.batch_size, seed=config.seed, epoch=epoch,
            start_step=step - epoch * spe, chunk=chunk_len, process_index=jax.process_index(),
            process_count=jax.process_count())
        reader = _ChunkReader(ds.as_numpy_iterator())
      t_epoch = time.perf_counter()
      pending = None
      while step < epoch_end:
        end = boundary(step)
        batches = parallel.shard_local(_pad_chunk(reader.take(end - step), chunk_len), mesh)
        if on_device:
          state, metrics = train_chunk_on_device(state, device_data, batches["index"],
                                                 train_rng, end - step, skip_nonfinite=skip)
        else:
          state, metrics = train_chunk(state, batches, train_rng, end - step,
                                       skip_nonfinite=skip)
        if pending is not None:  # read the previous chunk's metrics while this one runs
          process(pending)
        pending = (metrics, end - step, end)
        pbar.update(end - step)
        step = end
        if (config.checkpoint_every_steps > 0 and step % config.checkpoint_every_steps == 0
            and step != epoch_end):
          process(pending)
          pending = None
          save(step, epoch_elapsed + time.perf_counter() - t_epoch)
        if stop.signum is not None and step != epoch_end:
          if pending is not None:
            process(pending)
          save(step, epoch_elapsed + time.perf_counter() - t_epoch)
          raise TrainingInterrupted(stop.signum, step)
      if pending is not None:
        process(pending)
      epoch_time = epoch_elapsed + time.perf_counter() - t_epoch
      full_epoch = step == (epoch + 1) * spe
      train_means = {n: epoch_sums.get(n, float("nan")) / max(epoch_steps, 1) for n in names}
      if skip:
        train_means["skipped_steps"] = skipped_total
      train_means["epoch_time_s"] = epoch_time
      scope = "epoch" if full_epoch else "final"
      writer.write(split="train", step=step, epoch=epoch + 1, scope=scope, metrics=train_means)
      test = None
      if not full_epoch or (epoch + 1) % config.eval_every_epochs == 0 or step == total:
        test = run_eval(step, epoch + 1, scope)
      if full_epoch:
        epoch_sums, epoch_steps, epoch_elapsed = {}, 0, 0.0
        save(step, 0.0)
      else:
        save(step, epoch_time)
      writer.flush()
      line = f"epoch {epoch + 1}/{config.num_epochs} step {step}: train {_fmt(train_means, names)}"
      if test is not None:
        line += (" | test " + _fmt(test, ("loss", "mse", "kl", "paper_accuracy", "psnr",
                                           "bits_per_dim")))
      if main:
        pbar.write(line + f" | {epoch_time:.1f}s")
      if stop.signum is not None and step < total:  # this epoch end was just saved
        raise TrainingInterrupted(stop.signum, step)
  finally:
    stop.__exit__()
    pbar.close()
    writer.close()
  return state


def _split_workdir(argv: Sequence[str]) -> tuple[str, list[str]]:
  rest, workdir = [], None
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg == "--workdir":
      if i + 1 >= len(argv):
        raise UserError("--workdir needs a folder: --workdir runs/NAME.")
      workdir = argv[i + 1]
      i += 2
      continue
    if arg.startswith("--workdir="):
      workdir = arg.split("=", 1)[1]
    else:
      rest.append(arg)
    i += 1
  if not workdir:
    raise UserError("--workdir is required: the folder for checkpoints and metrics "
                    "(rerun with the same one to resume).")
  return workdir, rest


def main_from_module(get_config: Callable[[], ml_collections.ConfigDict],
                     argv: Sequence[str]) -> int:
  """The ``main`` of every experiment module: ``--workdir W [--config.key=value ...]``.

  Returns the exit status: 0, 2 for a UserError (printed as one ``error:`` line), 128 +
  the signal number after SIGINT (130) or SIGTERM (143), which save a checkpoint first.
  """
  argv = list(argv)
  if any(a in ("-h", "--help") for a in argv):
    module = get_config.__module__
    if module == "__main__":
      spec = getattr(sys.modules["__main__"], "__spec__", None)
      module = spec.name if spec is not None else sys.argv[0]
    print(f"usage: python -m {module} --workdir DIR [--config.KEY=VALUE ...]\n")
    print(inspect.cleandoc(get_config.__doc__ or ""))
    print("\nconfig keys: " + ", ".join(sorted(get_config().keys())))
    return 0
  try:
    workdir, overrides = _split_workdir(argv)
    config = configs.apply_overrides(get_config(), overrides)
    train_and_evaluate(config, workdir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except TrainingInterrupted as e:
    print(f"interrupted by {e}, checkpoint saved; resume with the same command: "
          f"{_command_line()}", file=sys.stderr)
    return 128 + e.signum
  except KeyboardInterrupt:
    print("interrupted: rerun the same command to resume from the last checkpoint.",
          file=sys.stderr)
    return 130
  return 0


def _command_line() -> str:
  """This process's command as typed, for the resume hint."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  head = ["python", "-m", spec.name] if spec is not None else [Path(sys.argv[0]).name]
  return shlex.join(head + sys.argv[1:])


__all__ = [
    "EXAMPLE_MASK", "MetricsWriter", "NonFiniteLossError", "TrainState", "TrainingInterrupted",
    "build_model",
    "create_train_state", "evaluate", "main_from_module", "make_eval_step", "train_and_evaluate",
    "train_chunk", "train_step",
]
