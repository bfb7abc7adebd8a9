"""Orbax checkpoints of a run: resume training exactly, or restore parameters for sampling.

Layout: ``WORKDIR/checkpoints/<step>/`` holds two items,
  * ``state``: the TrainState pytree (``step``, ``params``, ``opt_state``) as an Orbax
    StandardSave (OCDBT/tensorstore arrays), and
  * ``meta``: JSON with the run's config, the epoch / step-within-epoch the checkpoint sits
    at, and the running train sums of the epoch in progress,
and Orbax keeps the last ``keep`` steps. Saves are synchronous: a checkpoint is complete on
disk before training goes on, and a save is short next to the steps between two saves.

Inference never builds an optimiser: ``restore_for_inference`` reads ``params`` alone out of
the ``state`` item (an Orbax partial restore) and the config out of ``meta``.
"""

from __future__ import annotations

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
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=(STATE_ITEM, META_ITEM))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Writes ``state`` and ``meta`` as checkpoint ``step`` (a no-op if it already exists)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(
        step,
        args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(state),
            META_ITEM: ocp.args.JsonSave(meta),
        }),
        force=True)
    self._manager.wait_until_finished()

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(state, meta) of ``step`` (default: the latest), shaped and placed like ``target``."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f"No checkpoint in {self.directory}.")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    out = self._manager.restore(
        step,
        args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardRestore(abstract),
            META_ITEM: ocp.args.JsonRestore(),
        }))
    return out[STATE_ITEM], dict(out[META_ITEM])

  def restore_meta(self, step: int | None = None) -> dict[str, Any]:
    """The JSON item of ``step`` (default: the latest) without touching the arrays."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f"No checkpoint in {self.directory}.")
    out = self._manager.restore(
        step, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()}))
    return dict(out[META_ITEM])

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


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
    if step is None:
      step = step_found
    elif step not in manager.all_steps():
      raise UserError(f"No checkpoint at step {step} in {workdir}; available: "
                      f"{', '.join(map(str, manager.all_steps()))}.")
    tree = manager.item_metadata(step)[STATE_ITEM]
    tree = getattr(tree, "tree", tree)
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {"params": jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree["params"])}
    out = manager.restore(step, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.PyTreeRestore(
            item=target, partial_restore=True,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target)),
        META_ITEM: ocp.args.JsonRestore(),
    }))
  finally:
    manager.close()
  config = configs.from_json_dict(out[META_ITEM]["config"])
  return config, out[STATE_ITEM]["params"], int(step)
