"""``train_and_evaluate``: set a run up (or resume it), then one flat loop over chunks.

After flax/examples (imagenet) and big_vision: one loop, with periodic log, eval and
checkpoint checks at chunk ends. Data order is a pure function of (seed, epoch)
(``pipeline.make_dataset``), chunks follow the global grid of multiples of
``steps_per_scan`` (and of the log and checkpoint periods), and a resumed run restarts the
epoch's order at the checkpoint's step, so a resumed run is bitwise an uninterrupted one.

Workdir layout: config.json, run.json, metrics.jsonl, tensorboard/, samples/,
checkpoints/ (``t2i_jax.checkpoint``), frozen/ (frozen params, once) and .lock.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import ml_collections
import numpy as np

from t2i_jax import checkpoint as checkpoint_lib
from t2i_jax import configs, methods, parallel, workdir_lock
from t2i_jax.data import common, pipeline
from t2i_jax.errors import UserError
from t2i_jax.train import in_loop_eval, judge as judge_lib, step as step_lib, writers
from t2i_jax.train.signals import StopSignals, TrainingInterrupted
from t2i_jax.train.state import TrainState, create_train_state

# Config keys that may change between a run and its resumption: they change how long the
# run goes, how it is logged or evaluated, or where the data lives, not what is trained.
RESUMABLE_KEYS = frozenset({
    "num_epochs", "max_steps", "checkpoint_every_steps", "checkpoint_every_epochs",
    "keep_checkpoints",
    "log_every_steps", "eval_every_epochs", "eval_batch_size", "steps_per_scan",
    "sample_latent_eval", "obs_sigma", "data_dir", "manual_dir", "nonfinite",
    "eval_sample_captions", "sample_steps", "sample_guidance", "sample_solver",
    "sample_guidance_interval", "sample_time_shift",
    "sample_temperature", "first_stage_workdir", "judge_num",
    # Where the run executes, not what it computes (t2i_jax.parallel).
    "distributed", "data_on_device", "device_data_fraction", "device_data_budget_mb",
    "cpu_devices", "train_devices",
})

PRECISIONS = ("float32", "bfloat16")
LR_SCHEDULES = ("constant", "cosine", "wsd")
DATA_ON_DEVICE = ("auto", "always", "never")
NONFINITE_MODES = ("stop", "skip")


class NonFiniteLossError(UserError):
  """The training loss became NaN or infinite."""


@dataclasses.dataclass
class Tally:
  """Running sums of whatever metrics the family's loss returns, and the steps they cover."""

  sums: dict[str, float] = dataclasses.field(default_factory=dict)
  steps: int = 0

  def add(self, metrics: Mapping[str, Any], steps: int) -> None:
    for k, v in metrics.items():
      self.sums[k] = self.sums.get(k, 0.0) + float(v) * steps
    self.steps += steps

  def means(self) -> dict[str, float]:
    return {k: v / max(self.steps, 1) for k, v in self.sums.items()}


@dataclasses.dataclass
class CheckpointMeta:
  """The JSON item of every checkpoint: written by ``save`` and read by ``_resume`` only."""

  config: dict[str, Any]
  step: int
  steps_per_epoch: int
  total_steps: int
  epoch_train: Tally
  epoch_elapsed_s: float
  log_train: Tally
  skipped_steps: int
  saved_at: str = ""

  def to_json(self) -> dict[str, Any]:
    return {"config": self.config, "step": self.step, "epoch": self.step // self.steps_per_epoch,
            "step_in_epoch": self.step % self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "epoch_train_sums": self.epoch_train.sums,
            "epoch_train_steps": self.epoch_train.steps, "epoch_elapsed_s": self.epoch_elapsed_s,
            "log_train_sums": self.log_train.sums, "log_train_steps": self.log_train.steps,
            "skipped_steps": self.skipped_steps, "saved_at": writers.now()}

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> "CheckpointMeta":
    return cls(config=dict(data.get("config", {})), step=int(data["step"]),
               steps_per_epoch=int(data["steps_per_epoch"]),
               total_steps=int(data["total_steps"]),
               epoch_train=Tally(dict(data["epoch_train_sums"]), int(data["epoch_train_steps"])),
               epoch_elapsed_s=float(data["epoch_elapsed_s"]),
               log_train=Tally(dict(data["log_train_sums"]), int(data["log_train_steps"])),
               skipped_steps=int(data["skipped_steps"]), saved_at=str(data.get("saved_at", "")))


def validate(config: ml_collections.ConfigDict) -> None:
  """One-line errors for settings the trainer cannot run, before any data is loaded."""
  if config.split_caption_len and not (
      config.caption_mode == "sequence" and 0 < config.split_caption_len < config.max_caption_len
      and 0 < config.split_long_rows < config.batch_size):
    raise UserError(f"--config.split_caption_len={config.split_caption_len} needs "
                    f"caption_mode=sequence, 0 < split_caption_len < max_caption_len "
                    f"({config.max_caption_len}) and 0 < split_long_rows "
                    f"({config.split_long_rows}) < batch_size ({config.batch_size}); or 0 "
                    "for no split.")
  for key, allowed in (("precision", PRECISIONS), ("data_on_device", DATA_ON_DEVICE),
                       ("nonfinite", NONFINITE_MODES), ("lr_schedule", LR_SCHEDULES)):
    if config[key] not in allowed:
      raise UserError(f"--config.{key} must be one of {', '.join(allowed)}, got "
                      f"{config[key]!r}.")
  for key, low in (("batch_size", 1), ("steps_per_scan", 1), ("eval_batch_size", 1),
                   ("num_epochs", 0), ("max_steps", 0), ("checkpoint_every_steps", 0),
                   ("log_every_steps", 0), ("eval_every_epochs", 1),
                   ("checkpoint_every_epochs", 1), ("keep_checkpoints", 1),
                   ("eval_sample_captions", 0), ("judge_num", 0), ("cpu_devices", 0),
                   ("train_devices", 0)):
    if config[key] < low:
      raise UserError(f"--config.{key} must be at least {low}, got {config[key]}.")
  if config.lr_schedule == "cosine" and config.lr_decay_steps <= config.warmup_steps:
    raise UserError(f"--config.lr_schedule=cosine needs --config.lr_decay_steps (the step it "
                    f"ends at, usually max_steps) above warmup_steps ({config.warmup_steps}), "
                    f"got {config.lr_decay_steps}.")
  if config.lr_schedule == "wsd" and not (
      config.warmup_steps <= config.lr_decay_start < config.lr_decay_steps):
    raise UserError(f"--config.lr_schedule=wsd needs warmup_steps <= --config.lr_decay_start "
                    f"< --config.lr_decay_steps (the steps its linear decay starts and ends "
                    f"at), got {config.warmup_steps}, {config.lr_decay_start}, "
                    f"{config.lr_decay_steps}.")
  if not 0.0 <= float(config.lr_final_fraction) <= 1.0:
    raise UserError("--config.lr_final_fraction must be in [0, 1], got "
                    f"{config.lr_final_fraction}.")
  # A run extended past a decay to 0 would train on at rate 0 (and decoupled weight decay
  # scales with the rate too): hours that change nothing.
  if (config.lr_schedule != "constant" and float(config.lr_final_fraction) == 0.0
      and config.max_steps > config.lr_decay_steps):
    raise UserError(f"--config.max_steps ({config.max_steps}) runs past the step where the "
                    f"{config.lr_schedule} schedule brings the rate to 0 (--config."
                    f"lr_decay_steps, {config.lr_decay_steps}): the steps after it would "
                    "change nothing. For a longer run, move lr_decay_steps (and lr_decay_start)"
                    " with max_steps in a new --workdir, or set --config.lr_final_fraction "
                    "above 0.")
  if not 0.0 <= float(config.ema_decay) < 1.0:
    raise UserError(f"--config.ema_decay must be in [0, 1) (0 = off), got {config.ema_decay}.")
  cls = methods.method_class(config.model)  # an unknown model fails here, in one line
  if config.judge_num and not cls.GENERATES:
    raise UserError(f"--config.judge_num scores samples, and model {config.model!r} draws "
                    "nothing from captions; set it to 0 (or on a two-stage run's stage2).")


def on_nonfinite(step: int, epoch: int, checkpointer: checkpoint_lib.Checkpointer) -> None:
  """What the loop does when the loss stops being finite: stop with one line."""
  last = checkpointer.latest_step()
  raise NonFiniteLossError(
      f"The training loss became non-finite at step {step} (epoch {epoch}); the last "
      f"checkpoint is {'step ' + str(last) if last is not None else 'none'}. Try a lower "
      "--config.learning_rate in a new --workdir.")


def ensure_writable(workdir: Path) -> None:
  """Creates ``workdir`` and proves it writable now, not at the first checkpoint.

  The probe file is this process's own: the processes of a multi-host run share one
  workdir, and with one shared name a process could delete another's probe before that
  one did (ENOENT, reported as an unwritable workdir).
  """
  probe = workdir / f".t2i_write_test.{socket.gethostname()}.{os.getpid()}"
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe.touch()
    probe.unlink(missing_ok=True)
  except OSError as e:
    raise UserError(f"cannot write to workdir {workdir} ({e.strerror or e}); pass a "
                    "--workdir you can write to.") from e


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


class _ChunkReader:
  """Regroups the pipeline's [<=K, B, ...] chunks into chunks of any requested length."""

  def __init__(self, iterator: Iterator[dict[str, np.ndarray]]):
    self._it = iterator
    self._buf: dict[str, np.ndarray] | None = None

  def take(self, k: int) -> dict[str, np.ndarray]:
    parts, got = [], 0
    while got < k:
      if self._buf is None or next(iter(self._buf.values())).shape[0] == 0:
        try:
          self._buf = next(self._it)
        except StopIteration:
          raise RuntimeError(f"the epoch's data ended {k - got} steps early") from None
      m = min(k - got, next(iter(self._buf.values())).shape[0])
      parts.append({key: v[:m] for key, v in self._buf.items()})
      self._buf = {key: v[m:] for key, v in self._buf.items()}
      got += m
    if len(parts) == 1:
      return parts[0]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _epoch_reader(config, table: pipeline.Table, step: int, spe: int, on_device: bool,
                  num_devices: int):
  """This process's chunks of the epoch holding ``step``, from ``step`` on."""
  epoch = step // spe
  perm = pipeline.epoch_permutation(len(table), config.seed, epoch)
  if on_device:  # the same order as tf.data's, as [k, B_local] indices gathered on device
    local = config.batch_size // jax.process_count()
    grid = perm[:spe * config.batch_size].reshape(spe, config.batch_size).astype(np.int32)
    if config.split_caption_len:  # the same batches, each laid out for its two parts
      grid = pipeline.length_split_grid(grid, table.mask.sum(axis=1), config.split_caption_len,
                                        config.split_long_rows, num_devices)
    start = jax.process_index() * local
    index = grid[step - epoch * spe:, start:start + local]
    return _ChunkReader(iter([{"index": index}]))
  ds = pipeline.make_dataset(
      table, batch_size=config.batch_size, seed=config.seed, epoch=epoch,
      start_step=step - epoch * spe, chunk=int(config.steps_per_scan),
      process_index=jax.process_index(), process_count=jax.process_count())
  return _ChunkReader(ds.as_numpy_iterator())


def _next_boundary(config, step: int, spe: int, total: int) -> int:
  """The end of the chunk starting at ``step``: no chunk crosses an epoch end or a multiple
  of steps_per_scan, log_every_steps or checkpoint_every_steps."""
  end = min(total, (step // spe + 1) * spe)
  for every in (config.steps_per_scan, config.checkpoint_every_steps, config.log_every_steps):
    if every > 0:
      end = min(end, (step // every + 1) * every)
  return end


def _load_or_store_frozen(workdir: Path, method, config, main: bool):
  """The run's frozen params: read from WORKDIR/frozen when stored, else from the method
  (e.g. a first stage in another workdir) and stored there once, so a resumed run and its
  samples use exactly the params it was trained against."""
  stored = checkpoint_lib.load_frozen(workdir)
  if stored is not None:
    return stored
  frozen = method.load_frozen(config)
  if frozen is not None and main:
    checkpoint_lib.save_frozen(workdir, frozen)
  return frozen


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> TrainState:
  """Trains ``config``'s model, evaluating each epoch; resumes from ``workdir`` if possible.

  Writes into ``workdir``: config.json, run.json, metrics.jsonl (one JSON object per line:
  step, epoch (1-based), split 'train'/'test', scope 'steps'/'epoch'/'final', metrics),
  tensorboard/, samples/ and checkpoints/. Rerunning on the same workdir continues from the
  latest checkpoint with the same data order and randomness; a finished run is left alone.
  """
  validate(config)
  parallel.maybe_use_cpu_devices(config)  # these two before anything touches a device
  parallel.maybe_initialize_distributed(config)
  parallel.check_same_run(config, workdir)  # processes: one config, one shared workdir
  workdir = Path(workdir).expanduser()
  common.host_only_tensorflow()
  builder = pipeline.ensure_prepared(config)
  train_table = pipeline.load_table(config, "train", builder)
  test_table = pipeline.load_table(config, "test", builder)
  spe = pipeline.steps_per_epoch(len(train_table), config.batch_size)
  if spe == 0:
    raise UserError(f"batch_size {config.batch_size} is larger than the training split "
                    f"({len(train_table)} pairs); lower --config.batch_size.")
  total = spe * int(config.num_epochs)
  if config.max_steps > 0:
    total = min(total, int(config.max_steps))
  ensure_writable(workdir)
  main = parallel.is_main_process()  # the only process that writes metrics and run info
  with workdir_lock.hold(workdir, is_main=main), \
       checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints) as checkpointer:
    return _train(config, workdir, checkpointer, train_table, test_table, spe, total, main)


def _train(config, workdir: Path, checkpointer: checkpoint_lib.Checkpointer,
           train_table: pipeline.Table, test_table: pipeline.Table, spe: int, total: int,
           main: bool) -> TrainState:
  """Init or resume, then the loop."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  latest = checkpointer.latest_step()
  saved = None
  if latest is not None:  # the newest readable one: a damaged step is skipped with a warning
    saved = CheckpointMeta.from_json(checkpointer.restore_meta())
    _check_resumable(workdir, saved.config, config)

  # Data parallelism (t2i_jax.parallel): state and keys replicated, batches split over the
  # 'data' axis of all devices. One device is the same program on a 1-device mesh.
  if config.train_devices and (jax.process_count() > 1
                               or config.train_devices > jax.device_count()):
    raise UserError(f"--config.train_devices={config.train_devices}: a single process has "
                    f"{jax.device_count()} device(s) here and {jax.process_count()} "
                    "process(es) run; give at most that many in one process, or 0 for all.")
  mesh = parallel.make_mesh(jax.devices()[:config.train_devices or None])
  parallel.check_batch_size(config.batch_size, mesh)
  method = methods.get(config)
  frozen = _load_or_store_frozen(workdir, method, config, main)
  on_device, why = step_lib.device_data_decision(config, train_table)
  if main and config.data_on_device == "auto" and not on_device:
    print(f"data: {why}.")
  # The layout of a batch in two parts (short captions padded less); it reaches every chunk.
  caption_split = None
  if config.split_caption_len:
    if not on_device:
      raise UserError(f"--config.split_caption_len needs the train table on the device ({why}); "
                      "set --config.data_on_device=always or --config.split_caption_len=0.")
    if config.split_long_rows % mesh.devices.size:
      raise UserError(f"--config.split_long_rows={config.split_long_rows} must be a multiple "
                      f"of the {mesh.devices.size} devices.")
    caption_split = (config.split_long_rows, config.split_caption_len, mesh)
  # Every random stream is a pure function of the seed (and the step, inside the steps).
  init_rng, train_rng, _ = in_loop_eval.run_rngs(config.seed)
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as encoder:
    # A family may read the images only through frozen params: they are encoded once, on a
    # second thread while the params' init compiles on this one (about 3 s each for the
    # quickstart's stage 2; the same values as encoding after it).
    finished = saved is not None and saved.step >= total  # nothing to encode for
    features = (encoder.submit(method.image_features, frozen, train_table.images)
                if on_device and not finished else None)
    state = parallel.replicate(create_train_state(
        config, init_rng, train_table.pairs(np.arange(1)), frozen=frozen, method=method), mesh)
    features = None if features is None else features.result()
  train_rng = parallel.replicate(train_rng, mesh)
  if latest is not None:
    tree, _ = checkpointer.restore(state.checkpoint_tree())  # placed like `state`
    state = state.with_checkpoint_tree(tree)
    if int(state.step) >= total:
      if main:
        print(f"{workdir} already holds a finished run (step {int(state.step)} of {total}); "
              "nothing to do.")
      return state
    if int(state.step) != saved.step:  # the newest checkpoint was unreadable: use its own meta
      saved = CheckpointMeta.from_json(checkpointer.restore_meta(int(state.step)))
  step = int(state.step)
  device_data = None
  if on_device:
    # Not encoded above: a family without features (None again, at once), or a run whose
    # meta said finished but whose newest checkpoint proved unreadable.
    if features is None:
      features = method.image_features(frozen, train_table.images)
    device_data = step_lib.device_table(train_table, mesh, features)
  if main:
    (workdir / "config.json").write_text(
        json.dumps(configs.to_json_dict(config), indent=2, sort_keys=True) + "\n")
    writers.write_run_info(workdir, config.model, sum(x.size for x in jax.tree.leaves(
        state.params)), {"start_step": step, "train_pairs": len(train_table),
                         "test_pairs": len(test_table), "steps_per_epoch": spe,
                         "total_steps": total, "num_devices": int(mesh.devices.size),
                         "process_count": jax.process_count(), "data_on_device": on_device,
                         "image_features": None if features is None else list(features.shape)})
  writer = writers.MetricsWriter(workdir, step) if main else writers.NullWriter()
  eval_step = in_loop_eval.make_eval_step(config, state.frozen, method=method)
  judge = _make_judge(config, method, main)
  skip = config.nonfinite == "skip"
  meta = saved or CheckpointMeta(configs.to_json_dict(config), step, spe, total, Tally(), 0.0,
                                 Tally(), 0)
  epoch_tally, log_tally, skipped_total = meta.epoch_train, meta.log_train, meta.skipped_steps
  log_t0, elapsed_before, t_epoch, reader, pending = time.perf_counter(), meta.epoch_elapsed_s, 0.0, None, None

  def tally(pending) -> None:  # the metrics of a finished chunk, read while the next one runs
    nonlocal skipped_total, log_tally, log_t0
    metrics, k, end = jax.device_get(pending)
    bad = int(metrics.pop("nonfinite_step"))
    if bad >= 0:
      on_nonfinite(bad, (bad - 1) // spe + 1, checkpointer)
    skipped = int(round(float(metrics.pop("skipped_steps", 0.0))))
    skipped_total += skipped
    epoch_tally.add(metrics, k - skipped)  # the means are over the steps kept
    log_tally.add(metrics, k - skipped)
    if config.log_every_steps > 0 and end % config.log_every_steps == 0:
      means = dict(log_tally.means(), steps_per_s=log_tally.steps / max(
          time.perf_counter() - log_t0, 1e-9), **({"skipped_steps": skipped_total} if skip else {}))
      writer.write(split="train", step=end, epoch=(end - 1) // spe + 1, scope="steps",
                   metrics=means)
      pbar.set_postfix(loss=f"{means.get('loss', float('nan')):.4g}", refresh=False)
      log_tally, log_t0 = Tally(), time.perf_counter()

  def save(at: int, epoch_elapsed: float) -> None:
    nonlocal log_t0
    t0 = time.perf_counter()
    checkpointer.save(at, state.checkpoint_tree(), CheckpointMeta(
        configs.to_json_dict(config), at, spe, total, epoch_tally, epoch_elapsed, log_tally,
        skipped_total).to_json())
    log_t0 += time.perf_counter() - t0  # steps/s measures training, not saving

  pbar = tqdm(total=total, initial=step, unit="step", desc=f"train {config.model}",
              dynamic_ncols=True, mininterval=1.0, disable=None if main else True)
  with StopSignals() as stop:
    try:
      while step < total:
        if reader is None:  # an epoch starts (or resumes)
          reader = _epoch_reader(config, train_table, step, spe, on_device,
                                 int(mesh.devices.size))
          t_epoch = time.perf_counter()
        end = _next_boundary(config, step, spe, total)
        chunk = parallel.shard_local(pipeline.pad_leading(reader.take(end - step),
                                                          int(config.steps_per_scan)), mesh)
        if on_device:
          state, metrics = step_lib.train_chunk_on_device(state, device_data, chunk["index"],
                                                          train_rng, end - step, skip,
                                                          caption_split)
        else:
          state, metrics = step_lib.train_chunk(state, chunk, train_rng, end - step, skip)
        if pending is not None:
          tally(pending)
        pending, step = (metrics, end - step, end), end
        pbar.update(pending[1])
        epoch_end = step % spe == 0 or step == total
        due_save = config.checkpoint_every_steps > 0 and step % config.checkpoint_every_steps == 0
        if not (epoch_end or due_save or stop.signum is not None):
          continue
        tally(pending)
        pending = None
        epoch_time = elapsed_before + time.perf_counter() - t_epoch
        if not epoch_end:  # a periodic checkpoint, or a signal mid-epoch
          save(step, epoch_time)
          if stop.signum is not None:
            raise TrainingInterrupted(stop.signum, step)
          continue
        epoch, full_epoch = (step - 1) // spe + 1, step % spe == 0
        scope = "epoch" if full_epoch else "final"
        train_means = dict(epoch_tally.means(), epoch_time_s=epoch_time,
                           **({"skipped_steps": skipped_total} if skip else {}))
        writer.write(split="train", step=step, epoch=epoch, scope=scope, metrics=train_means)
        line = f"epoch {epoch}/{config.num_epochs} step {step}: train {_fmt(train_means)}"
        if not full_epoch or epoch % config.eval_every_epochs == 0 or step == total:
          t0 = time.perf_counter()
          line += _evaluate_at(config, method, state, eval_step, judge, test_table, writer,
                               workdir, mesh, main, step, epoch, scope)
          log_t0 += time.perf_counter() - t0  # steps/s measures training, not evaluating
        if full_epoch:
          epoch_tally, elapsed_before, reader = Tally(), 0.0, None
        if (not full_epoch or epoch % config.checkpoint_every_epochs == 0 or step == total
            or due_save or stop.signum is not None):
          save(step, 0.0 if full_epoch else epoch_time)
        writer.flush()
        if main:
          pbar.write(line + f" | {epoch_time:.1f}s")
        if stop.signum is not None and step < total:  # this epoch end was just saved
          raise TrainingInterrupted(stop.signum, step)
    finally:
      pbar.close()
      writer.close()
  return state


_SHOWN = ("loss", "mse", "kl", "paper_accuracy", "psnr", "bits_per_dim")


def _evaluate_at(config, method, state: TrainState, eval_step, judge, test_table: pipeline.Table,
                 writer, workdir: Path, mesh, main: bool, step: int, epoch: int,
                 scope: str) -> str:
  """An epoch end's evaluation: test metrics, the sample grid and the judge (if any), all
  written at ``step``; returns the text for the epoch's log line.

  A function of its own so that its names (the judge's splits, its verdicts) cannot shadow
  the loop's: in one function they once overwrote the caption split's layout."""
  t0 = time.perf_counter()
  test = in_loop_eval.evaluate(eval_step, state.eval_params, test_table,
                               batch_size=config.eval_batch_size,
                               rng=in_loop_eval.eval_key(config.seed, step),
                               desc=f"eval epoch {epoch}", progress=main, mesh=mesh)
  _log_samples(config, method, state, test_table, writer, workdir, step, main)
  verdicts = None
  if judge is not None:
    t1 = time.perf_counter()
    verdicts = judge(jax.device_get(state.eval_params), jax.device_get(state.frozen))
    test["judge_time_s"] = time.perf_counter() - t1
    for split, verdict in verdicts.items():
      writer.write(split=f"judge_{split}", step=step, epoch=epoch, scope=scope, metrics=verdict)
  test["eval_time_s"] = time.perf_counter() - t0
  writer.write(split="test", step=step, epoch=epoch, scope=scope, metrics=test)
  text = " | test " + _fmt(test)
  if verdicts is not None:
    text += " | judge " + judge_lib.summary(verdicts)
  return text


def _make_judge(config, method, main: bool):
  """The in-loop judge when ``config.judge_num`` asks for one (t2i_jax.train.judge)."""
  if not config.judge_num:
    return None
  if jax.process_count() > 1:  # sampling is host-local; t2i evaluate scores the run after
    if main:
      print("judge: off in a multi-process run; score the run with t2i evaluate.")
    return None
  return judge_lib.Judge(config, method)


def _fmt(metrics: Mapping[str, Any]) -> str:
  keys = [k for k in _SHOWN if k in metrics] or sorted(metrics)[:4]
  return " ".join(f"{k} {metrics[k]:.4g}" for k in keys)


def _log_samples(config, method, state: TrainState, table: pipeline.Table, writer, workdir: Path,
                 step: int, main: bool) -> None:
  """A grid of samples for the first test captions, to samples/ and TensorBoard."""
  num = min(int(config.eval_sample_captions), len(table))
  if not (num and main and method.GENERATES and jax.process_count() == 1):
    return
  from t2i_jax import sample  # pylint: disable=import-outside-toplevel
  params = jax.device_get(state.eval_params)
  frozen = jax.device_get(state.frozen)
  images = sample.draw(method, params, frozen, table.text[:num], n=4, seed=0,
                       options=method.default_options(config))
  path = workdir / "samples" / f"eval_{step}.png"
  sample.save_grid(images, [str(c) for c in table.captions[:num]], path)
  writer.write_image("samples", np.asarray(sample.load_png(path)), step)


__all__ = ["CheckpointMeta", "NonFiniteLossError", "RESUMABLE_KEYS", "Tally", "on_nonfinite",
           "train_and_evaluate", "validate"]
