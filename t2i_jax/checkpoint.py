"""Orbax checkpoints of a run: resume training exactly, or restore parameters for sampling.

Layout: ``WORKDIR/checkpoints/<step>/`` holds two items,
  * ``state``: the TrainState pytree (``step``, ``params``, ``opt_state``) as an Orbax
    StandardSave (OCDBT/tensorstore arrays), and
  * ``meta``: JSON with the run's config, the epoch / step-within-epoch the checkpoint sits
    at, and the running train sums of the epoch in progress,
and Orbax keeps the last ``keep`` steps. Saves are synchronous: a checkpoint is complete on
disk before training goes on, and a save is short next to the steps between two saves.

Saves are atomic: Orbax writes ``<step>.orbax-checkpoint-tmp-*`` and renames it to ``<step>``
once complete, and only renamed steps count, so a crash or a full disk mid-save leaves the
previous checkpoints as they were. A step that is unreadable anyway (files truncated or
deleted later) is skipped with one warning line, and the step before it is restored.

Inference never builds an optimiser: ``restore_for_inference`` reads ``params`` alone out of
the ``state`` item (an Orbax partial restore) and the config out of ``meta``.
"""

from __future__ import annotations

import errno
import logging
import sys
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from t2i_jax import configs
from t2i_jax.errors import UserError

CHECKPOINT_DIR = "checkpoints"
STATE_ITEM = "state"
META_ITEM = "meta"


def checkpoint_dir(workdir: str | Path) -> Path:
  """Where the checkpoints of ``workdir`` live."""
  return Path(workdir).expanduser().absolute() / CHECKPOINT_DIR


class Checkpointer:
  """Saves and restores (TrainState, meta) pairs under ``WORKDIR/checkpoints``."""

  def __init__(self, workdir: str | Path, keep: int = 3):
    if keep < 1:
      raise UserError(f"keep_checkpoints must be at least 1, got {keep}.")
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        enable_async_checkpointing=False,
        create=True,
    )
    self.directory = checkpoint_dir(workdir)
    # Handlers named up front, so that item_metadata works before any save or restore.
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler(),
                       META_ITEM: ocp.JsonCheckpointHandler()})
    self._bad_steps: set[int] = set()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Writes ``state`` and ``meta`` as checkpoint ``step`` (a no-op if it already exists).

    A step found unreadable by ``restore`` is replaced, not kept. A failed write (a full
    disk) is a UserError; the checkpoints saved before it stay as they were.
    """
    if step in self._bad_steps:
      self._manager.delete(step)
      self._bad_steps.discard(step)
    if step in self._manager.all_steps():
      return
    try:
      self._manager.save(
          step,
          args=ocp.args.Composite(**{
              STATE_ITEM: ocp.args.StandardSave(state),
              META_ITEM: ocp.args.JsonSave(meta),
          }),
          force=True)
      self._manager.wait_until_finished()
    except OSError as e:
      self._manager.reload()
      last = self._manager.latest_step()
      what = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
      raise UserError(
          f"could not write checkpoint {step} in {self.directory}: {what}; the last "
          f"complete checkpoint is {'step ' + str(last) if last is not None else 'none'}. "
          "Free some space and rerun the same command to resume.") from e

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(state, meta) of ``step`` (default: the latest readable), shaped and placed like ``target``.

    A parameter whose saved shape differs from ``target`` is a UserError naming it.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)

    def read(s: int):
      _check_shapes(self._manager.item_metadata(s)[STATE_ITEM], abstract, self.directory, s)
      return self._manager.restore(
          s,
          args=ocp.args.Composite(**{
              STATE_ITEM: ocp.args.StandardRestore(abstract),
              META_ITEM: ocp.args.JsonRestore(),
          }))

    out, _ = self._read(read, step)
    return out[STATE_ITEM], dict(out[META_ITEM])

  def restore_meta(self, step: int | None = None) -> dict[str, Any]:
    """The JSON item of ``step`` (default: the latest readable) without touching the arrays."""
    out, _ = self._read(lambda s: self._manager.restore(
        s, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()})), step)
    return dict(out[META_ITEM])

  def _read(self, read, step: int | None):
    """``read(step)``, or with no step asked for, of the newest step that reads."""
    if step is not None:
      return read(step), step
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise UserError(f"No checkpoint in {self.directory}.")
    return _newest_readable(steps, read, self.directory, self._bad_steps)

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr)


def _newest_readable(steps, read, directory, bad: set[int] | None = None):
  """(read(step), step) for the first step of ``steps`` (newest first) that reads.

  An unreadable step (truncated or deleted files) gets one warning line and the next older
  one is tried; a UserError (a real mismatch) is raised as is.
  """
  for i, s in enumerate(steps):
    try:
      return read(s), s
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # Orbax raises many kinds
      if bad is not None:
        bad.add(s)
      if i + 1 == len(steps):
        raise UserError(f"no readable checkpoint in {directory}: step {s} is damaged "
                        f"({type(e).__name__}); start again in a new --workdir.") from e
      _warn(f"checkpoint {s} in {directory} is unreadable ({type(e).__name__}); "
            f"using checkpoint {steps[i + 1]} instead.")
  raise AssertionError("unreachable")


def _check_shapes(saved_tree: Any, abstract: Any, directory, step: int) -> None:
  """UserError naming each array whose saved shape differs from the one expected."""
  saved_tree = getattr(saved_tree, "tree", saved_tree)
  want_tree = _as_tree(abstract)
  if not isinstance(saved_tree, dict) or "params" not in saved_tree or "params" not in want_tree:
    return
  # The params alone: their paths read the same in Orbax metadata and in the target, and
  # the optimiser state has the shapes of the params.
  saved = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
           jax.tree_util.tree_leaves_with_path(saved_tree["params"]) if hasattr(v, "shape")}
  want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
          jax.tree_util.tree_leaves_with_path(want_tree["params"]) if hasattr(v, "shape")}
  diffs = [f"{k} {saved[k]} != {want[k]}" for k in want if k in saved and saved[k] != want[k]]
  missing = [k for k in want if k not in saved]
  if diffs or (missing and saved):
    parts = diffs[:4] + [f"{k} missing" for k in missing[:max(0, 4 - len(diffs))]]
    raise UserError(f"checkpoint {step} in {directory} was saved by another model or config: "
                    f"{'; '.join(parts)}; use a new --workdir, or the run's own config.")


def _as_tree(x: Any) -> Any:
  """A TrainState as the {step, params, opt_state} dict Orbax saved it as."""
  if hasattr(x, "params") and hasattr(x, "opt_state"):
    return {"step": x.step, "params": x.params, "opt_state": x.opt_state}
  return x if isinstance(x, dict) else {}


class _ReadOnlyNotice(logging.Filter):
  """Drops Orbax's "Given directory is read only" warning: our readers ask for read-only
  managers on purpose (sampling, evaluation, a first stage's params), so it is noise."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_ReadOnlyNotice())


def _reader(workdir: str | Path) -> ocp.CheckpointManager | None:
  """A read-only manager, or None when the folder holds no checkpoint folder at all."""
  directory = checkpoint_dir(workdir)
  if not directory.is_dir():
    return None
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  return ocp.CheckpointManager(
      directory, options=options,
      item_handlers={STATE_ITEM: ocp.PyTreeCheckpointHandler(),
                     META_ITEM: ocp.JsonCheckpointHandler()})


def latest_step(workdir: str | Path) -> int | None:
  """The newest complete checkpoint step in ``workdir``, or None."""
  manager = _reader(workdir)
  if manager is None:
    return None
  try:
    return manager.latest_step()
  finally:
    manager.close()


def restore_for_inference(
    workdir: str | Path, step: int | None = None
) -> tuple[ml_collections.ConfigDict, Any, int]:
  """(config, params, step) of a trained run, without optimiser state or training code.

  Params are restored onto the default device whatever device saved them.
  """
  manager = _reader(workdir)
  step_found = None if manager is None else manager.latest_step()
  if step_found is None:
    if manager is not None:
      manager.close()
    raise UserError(f"no checkpoint in {workdir}: train first with "
                    f"`python -m experiments.model1 --workdir {workdir}` (or another "
                    "experiment).")
  try:
    if step is not None and step not in manager.all_steps():
      raise UserError(f"No checkpoint at step {step} in {workdir}; available: "
                      f"{', '.join(map(str, manager.all_steps()))}.")
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def read(s: int):
      tree = manager.item_metadata(s)[STATE_ITEM]
      tree = getattr(tree, "tree", tree)
      # A run that keeps an EMA of its params samples with the EMA.
      key = "ema_params" if "ema_params" in tree else "params"
      target = {key: jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree[key])}
      return manager.restore(s, args=ocp.args.Composite(**{
          STATE_ITEM: ocp.args.PyTreeRestore(
              item=target, partial_restore=True,
              restore_args=ocp.checkpoint_utils.construct_restore_args(target)),
          META_ITEM: ocp.args.JsonRestore(),
      }))

    if step is None:
      out, step = _newest_readable(sorted(manager.all_steps(), reverse=True), read,
                                   checkpoint_dir(workdir))
    else:
      out = read(step)
  finally:
    manager.close()
  config = configs.from_json_dict(out[META_ITEM]["config"])
  tree = out[STATE_ITEM]
  return config, tree.get("ema_params", tree.get("params")), int(step)


FROZEN_DIR = "frozen"


def _this_process_only() -> ocp.options.MultiprocessingOptions:
  """Orbax options for a save or read by this process alone, with no barrier that would wait
  for the other processes of a multi-host run (only process 0 stores the frozen params)."""
  me = jax.process_index()
  return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me},
                                            barrier_sync_key_prefix=f"frozen_{me}")


def save_frozen(workdir: str | Path, frozen: Any) -> Path:
  """Stores a run's frozen params once, in WORKDIR/frozen (written whole or not at all)."""
  path = Path(workdir).expanduser().absolute() / FROZEN_DIR
  if path.exists():
    return path
  frozen = jax.device_get(frozen)  # host copies: Orbax refuses host-local arrays
  with ocp.StandardCheckpointer(multiprocessing_options=_this_process_only()) as saver:
    saver.save(path, frozen)  # Orbax writes a temporary folder and renames it when complete
    saver.wait_until_finished()
  return path


def load_frozen(workdir: str | Path) -> Any | None:
  """The frozen params stored by ``save_frozen``, or None when the run has none."""
  path = Path(workdir).expanduser().absolute() / FROZEN_DIR
  if not path.is_dir():
    return None
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  try:
    with ocp.StandardCheckpointer(multiprocessing_options=_this_process_only()) as reader:
      meta = reader.metadata(path)
      meta = getattr(meta, "item_metadata", meta)
      meta = getattr(meta, "tree", meta)
      target = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), meta)
      return reader.restore(path, target)
  except Exception as e:  # pylint: disable=broad-except  # Orbax raises many kinds
    raise UserError(f"the frozen params in {path} are unreadable ({type(e).__name__}); "
                    "delete that folder and rerun: they are copied again from the run's "
                    "--config.first_stage_workdir.") from e
