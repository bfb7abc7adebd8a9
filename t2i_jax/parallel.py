"""Data parallelism with ``jax.sharding``: one mesh axis, 'data', over every device.

The jitted training step is the single-device one; only where its inputs live changes:
the TrainState (params, optimiser state) and the PRNG key are replicated on every device,
and each [K, B, ...] chunk of batches is split along B. XLA then inserts the gradient
all-reduce itself. With several processes (hosts), every process reads its own contiguous
slice of each global batch (``pipeline.make_dataset(process_index=..., process_count=...)``)
and ``jax.make_array_from_process_local_data`` assembles the global array, so no host ever
holds another host's examples.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from t2i_jax.errors import UserError

DATA_AXIS = "data"

# Set by a launcher that starts one process per host (see the README): all three together
# mean "initialise jax.distributed", as config.distributed=True does.
_ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def maybe_initialize_distributed(config=None) -> bool:
  """Calls ``jax.distributed.initialize()`` when the config or the environment asks.

  ``config.distributed`` True: initialise, with the coordinator / process count / process id
  from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID when set, else JAX's
  cluster auto-detection (SLURM, Open MPI, TPU pods, ...). Without it, the three variables
  together also trigger it. Must run before anything touches a JAX device; a second call is
  a no-op. Returns whether jax.distributed is (now) initialised.
  """
  from jax._src import distributed as _dist  # pylint: disable=import-outside-toplevel
  if getattr(_dist.global_state, "client", None) is not None:
    return True
  wanted = bool(config is not None and config.distributed)
  env = {k: os.environ.get(k) for k in _ENV_VARS}
  from_env = all(env.values())
  if not (wanted or from_env):
    return False
  kwargs: dict[str, Any] = {}
  if from_env:
    kwargs = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"],
              "num_processes": int(env["JAX_NUM_PROCESSES"]),
              "process_id": int(env["JAX_PROCESS_ID"])}
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:
    raise UserError(f"jax.distributed.initialize failed ({e}); set JAX_COORDINATOR_ADDRESS="
                    "HOST:PORT, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every host, or run "
                    "under a cluster manager JAX detects (SLURM, Open MPI).") from None
  return True


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all devices of all processes) named 'data'."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Params, optimiser state, keys: a full copy on every device."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, chunked: bool = True) -> NamedSharding:
  """[K, B, ...] chunks (``chunked``) or [B, ...] batches, split along B."""
  return NamedSharding(mesh, P(None, DATA_AXIS) if chunked else P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
  """The global batch must split evenly over the devices (and thus over the processes)."""
  n = mesh.devices.size
  if batch_size % n:
    lower, upper = batch_size // n * n, -(-batch_size // n) * n
    hint = f"{lower} or {upper}" if lower else f"{upper}"
    raise UserError(f"--config.{name}={batch_size} does not split over {n} devices; use a "
                    f"multiple of {n} (e.g. {hint}), or fewer devices "
                    "(CUDA_VISIBLE_DEVICES).")


def pad_to_multiple(size: int, mesh: Mesh) -> int:
  """The smallest multiple of the device count that is at least ``size``."""
  n = mesh.devices.size
  return -(-size // n) * n


def _replicate_leaf(x, sharding: NamedSharding):
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(_replicate_leaf(jax.random.key_data(x), sharding),
                                    impl=jax.random.key_impl(x))
  host = np.asarray(jax.device_get(x))
  # From host data on every process: works when some devices belong to other processes.
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
  """``tree`` (identical on every process) as arrays replicated over ``mesh``."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: _replicate_leaf(x, sharding), tree)


def shard_local(tree: Any, mesh: Mesh, chunked: bool = True) -> Any:
  """This process's slice of a global batch / chunk -> global arrays split along B.

  Each process passes its own [K, B / process_count, ...] slice (what ``make_dataset`` with
  process_index / process_count yields); the global B is the local one times the count.
  """
  sharding = batch_sharding(mesh, chunked)
  axis = 1 if chunked else 0
  count = jax.process_count()

  def put(x):
    x = np.asarray(x)
    shape = list(x.shape)
    shape[axis] *= count
    return jax.make_array_from_process_local_data(sharding, x, tuple(shape))

  return jax.tree.map(put, tree)


def process_slice(tree: Any, axis: int = 0) -> Any:
  """This process's contiguous slice of a global batch every process holds whole."""
  index, count = jax.process_index(), jax.process_count()
  if count == 1:
    return tree

  def take(x):
    x = np.asarray(x)
    size = x.shape[axis] // count
    return np.take(x, np.arange(index * size, (index + 1) * size), axis=axis)

  return jax.tree.map(take, tree)


def is_main_process() -> bool:
  """Only process 0 writes metrics, run info and progress bars."""
  return jax.process_index() == 0


__all__ = [
    "DATA_AXIS", "batch_sharding", "check_batch_size", "is_main_process", "make_mesh",
    "maybe_initialize_distributed", "pad_to_multiple", "process_slice", "replicate",
    "replicated", "shard_local",
]
