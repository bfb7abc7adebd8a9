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

import hashlib
import json
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from t2i_jax.errors import UserError

DATA_AXIS = "data"

# Set by a launcher that starts one process per host (see the README): all three together
# mean "initialise jax.distributed", as config.distributed=True does.
_ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
TIMEOUT_ENV = "T2I_DISTRIBUTED_TIMEOUT_S"  # how long a process waits for the others at start
DEFAULT_TIMEOUT_S = 300  # JAX's own default initialization_timeout


def maybe_use_cpu_devices(config=None) -> int:
  """Splits a CPU host into ``config.cpu_devices`` XLA devices (0: JAX's default, one).

  XLA:CPU parallelises inside an op (a large matmul or convolution) over the cores, not
  across ops; with several host devices, the data-parallel mesh gives each its slice of the
  batch, and they run side by side. It pays where the ops are many and small: on the 2-core
  VM, the quickstart's stage 1 (convolutions at batch 64) steps 1.5x as fast on 2 devices
  and 1.8x on 4, its stage 2 (a small transformer at batch 128) level on 2 and 0.75x on 4.
  Numbers change in the last bits (the batch's reductions run in another order), so a
  run's device count is part of what makes it reproducible. Accelerators are unaffected.

  Must run before anything touches a JAX device; where JAX has already started with another
  count (a notebook, a test), it says so in one line and goes on. Returns the count asked for.
  """
  n = int(config.get("cpu_devices", 0) or 0) if config is not None else 0
  if n <= 0 or jax.config.jax_num_cpu_devices == n:
    return n
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:  # the backends are up: the count is fixed for this process
    have = len(jax.devices("cpu"))
    if have != n:
      print(f"note: cpu_devices={n} not applied: JAX already runs {have} CPU device(s) in "
            "this process; it takes effect when set before any JAX computation (as the "
            "experiment modules do).")
  return n


def maybe_initialize_distributed(config=None) -> bool:
  """Calls ``jax.distributed.initialize()`` when the config or the environment asks.

  ``config.distributed`` True: initialise, with the coordinator / process count / process id
  from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID when set, else JAX's
  cluster auto-detection (SLURM, Open MPI, TPU pods, ...). Without it, the three variables
  together also trigger it. Must run before anything touches a JAX device; a second call is
  a no-op. Returns whether jax.distributed is (now) initialised.

  On CPU, several processes need real cross-process collectives: ``gloo`` is selected
  (``jax_cpu_collectives_implementation``) unless one is set already. A process that has
  not connected all the others within $T2I_DISTRIBUTED_TIMEOUT_S seconds (default 300)
  stops with one ``error:`` line naming the coordinator and the missing process, instead
  of JAX's own abort (its connect cannot be interrupted, so this exits with status 2).
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
  timeout = distributed_timeout_s()
  if kwargs.get("num_processes", 2) > 1:
    _use_cpu_collectives()
  done, failure = threading.Event(), []

  def connect() -> None:
    try:  # JAX's own deadline later than ours: ours reports first, in one line
      jax.distributed.initialize(**kwargs, initialization_timeout=timeout + 60)
    except (RuntimeError, ValueError) as e:
      failure.append(e)
    finally:
      done.set()

  threading.Thread(target=connect, name="t2i-distributed-init", daemon=True).start()
  if not done.wait(timeout):
    print(f"error: {_missing_message(kwargs, timeout)}", file=sys.stderr, flush=True)
    os._exit(2)  # pylint: disable=protected-access
  if failure:
    raise UserError(f"jax.distributed.initialize failed ({failure[0]}); set "
                    "JAX_COORDINATOR_ADDRESS=HOST:PORT, JAX_NUM_PROCESSES and JAX_PROCESS_ID "
                    "on every host, or run under a cluster manager JAX detects (SLURM, "
                    "Open MPI).") from None
  return True


def distributed_timeout_s() -> int:
  """Seconds a process waits for all the others at start ($T2I_DISTRIBUTED_TIMEOUT_S)."""
  raw = os.environ.get(TIMEOUT_ENV, "")
  try:
    value = int(float(raw)) if raw.strip() else DEFAULT_TIMEOUT_S
  except ValueError:
    raise UserError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds.") from None
  if value < 1:
    raise UserError(f"{TIMEOUT_ENV} must be at least 1 second, got {raw!r}.")
  return value


def _use_cpu_collectives() -> None:
  """gloo for cross-process collectives on CPU (JAX's default is none in older versions);
  it only concerns the CPU backend, so GPU and TPU runs are unaffected."""
  try:
    current = jax.config.jax_cpu_collectives_implementation
  except AttributeError:
    return
  if current in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def _missing_message(kwargs: dict[str, Any], timeout: int) -> str:
  """The one line of a start that timed out: who waits, for whom, at which coordinator."""
  address = kwargs.get("coordinator_address") or "the auto-detected coordinator"
  count, me = kwargs.get("num_processes"), kwargs.get("process_id")
  if count is None or me is None:
    missing = "some process"
  elif me != 0 and not _reachable(address):
    missing = "process 0 (the coordinator)"
  else:
    others = [i for i in range(count) if i not in (me, 0)] if me != 0 else list(range(1, count))
    missing = (f"process {others[0]}" if len(others) == 1 else
               f"at least one of processes {', '.join(map(str, others))}")
  return (f"process {me} of {count} waited {timeout} s at the coordinator {address} and "
          f"{missing} never joined; start it (JAX_PROCESS_ID) with the same "
          f"JAX_COORDINATOR_ADDRESS, or raise {TIMEOUT_ENV}.")


def _reachable(address: str) -> bool:
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
      return True
  except (OSError, ValueError):
    return False


# Keys that may differ between the processes of one run: where each host finds its data.
_PER_HOST_KEYS = frozenset({"data_dir", "manual_dir", "distributed"})
_TOKEN_NAME = ".t2i_processes"


def config_fingerprint(config) -> str:
  """SHA-256 of the config as JSON, less the keys each host may set for itself."""
  from t2i_jax import configs  # pylint: disable=import-outside-toplevel
  data = {k: v for k, v in configs.to_json_dict(config).items() if k not in _PER_HOST_KEYS}
  return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def check_same_run(config, workdir) -> None:
  """With several processes: the same config and one shared workdir, or a UserError on all.

  Compares a hash of each process's config (two small all-gathers; on a mismatch the
  differing keys are named) and proves the workdir shared: process 0 writes a random token
  into it, and every process must read that token back after a barrier. Every process
  reaches the same verdict, so none is left waiting in a collective. A no-op on one process.
  """
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return
  from t2i_jax import configs  # pylint: disable=import-outside-toplevel
  me = jax.process_index()
  workdir = Path(workdir).expanduser().absolute()
  token_path = workdir / _TOKEN_NAME
  token = np.zeros(2, np.int32)
  if me == 0:
    token = np.frombuffer(os.urandom(8), np.int32).copy()
    try:
      workdir.mkdir(parents=True, exist_ok=True)
      token_path.write_text(" ".join(map(str, token.tolist())))
    except OSError:
      token[:] = 0  # the others cannot see it; ensure_writable names the problem later
  digest = np.frombuffer(bytes.fromhex(config_fingerprint(config))[:16], np.int32)
  text = json.dumps(configs.to_json_dict(config), sort_keys=True).encode()
  mine = np.concatenate([digest, token, np.int32([len(text)])]).astype(np.int32)
  every = np.asarray(multihost_utils.process_allgather(mine))  # [processes, 7]; a barrier
  other = [p for p in range(len(every)) if not np.array_equal(every[p, :4], every[0, :4])]
  if other:  # every process sees the same table, so all take this branch together
    size = int(every[:, 6].max())
    padded = np.frombuffer(text.ljust(size), np.uint8)
    texts = np.asarray(multihost_utils.process_allgather(padded))
    first, theirs = (json.loads(bytes(texts[p]).decode()) for p in (0, other[0]))
    diffs = [f"{k}: {first.get(k)!r} vs {theirs.get(k)!r}"
             for k in sorted(set(first) | set(theirs))
             if k not in _PER_HOST_KEYS and first.get(k) != theirs.get(k)]
    raise UserError(
        f"process {other[0]} was started with another config than process 0 "
        f"({'; '.join(diffs[:4]) or 'same keys, different values'}); start every process "
        "with the same config file and --config overrides.")
  seen = False
  try:
    seen = token_path.read_text().split() == [str(x) for x in every[0, 4:6].tolist()]
  except (OSError, ValueError):
    pass
  blind = processes_without(seen)
  if me == 0:
    token_path.unlink(missing_ok=True)
  if blind:
    raise UserError(
        f"the workdir {workdir} is not shared: process(es) {', '.join(map(str, blind))} do not see the "
        "file process 0 wrote into it; give every process the same --workdir on storage all "
        "hosts see (e.g. NFS).")


def processes_without(flag: bool) -> list[int]:
  """The indices of the processes whose ``flag`` is False: one small all-gather, so every
  process must call it (a barrier) and all get the same list. [] or [this process] alone."""
  if jax.process_count() == 1:
    return [] if flag else [jax.process_index()]
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  every = np.asarray(multihost_utils.process_allgather(np.int32([flag]))).reshape(-1)
  return [p for p, ok in enumerate(every) if not ok]


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all devices of all processes) named 'data'."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def local_rows(batch_size: int) -> tuple[int, Callable[[Any], Any], Callable[[Any], Any]]:
  """How a process-local inference loop splits its rows over this process's devices.

  Returns (batch size rounded up to a multiple of the local device count, place params
  replicated, place a [B, ...] batch split along B). With one local device the batch
  size is unchanged and both placements are the identity: jit places the inputs. Only
  this process's devices take part, so each host of a multi-host run samples alone.
  """
  devices = jax.local_devices()
  if len(devices) == 1:
    return batch_size, lambda tree: tree, lambda tree: tree
  mesh = make_mesh(devices)
  rows, whole = batch_sharding(mesh, chunked=False), replicated(mesh)
  return (pad_to_multiple(batch_size, mesh), lambda tree: jax.device_put(tree, whole),
          lambda tree: jax.device_put(tree, rows))


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
    "DATA_AXIS", "TIMEOUT_ENV", "batch_sharding", "check_batch_size", "check_same_run",
    "config_fingerprint", "distributed_timeout_s", "is_main_process", "make_mesh",
    "maybe_initialize_distributed", "maybe_use_cpu_devices", "pad_to_multiple",
    "process_slice", "replicate", "replicated", "shard_local",
]
