"""Benchmark: training throughput of the jitted, data-parallel step, per model and batch.

Command:
  python -m experiments.bench_train                      # all rows, here and on 4 CPU devices
  python -m experiments.bench_train --config.quick=True  # a few steps (the project test)
  python -m experiments.bench_train --config.forced_devices=0   # this machine's devices only
  python -m experiments.bench_train --config.processes=2   # + the rows on 2 local processes

Each row times ``train.train_chunk`` (one jitted lax.scan of ``steps_per_scan`` optimiser
steps) on the mesh of all devices, as ``train_and_evaluate`` runs it: state replicated,
chunk split along the batch. The data is SYNTHETIC random uint8 images and caption
tensors of the real shapes (64x64x3; a 50-d GloVe sum for the paper models, 24 x 50 word
vectors + mask for the CVAE), placed on the devices once, so the numbers measure the step
itself (as with data_on_device), not the input pipeline (see bench_pipeline). One epoch is
extrapolated to the 32,364 training pairs of the paper's Flickr8k split. With
``forced_devices`` > 0 the same rows run again in a subprocess on that many forced CPU
devices (XLA_FLAGS=--xla_force_host_platform_device_count); rows whose batch does not
split over the devices are skipped. With ``processes`` > 1 the rows run once more on that
many local processes joined by ``jax.distributed`` (coordinator on 127.0.0.1, gloo CPU
collectives), ``process_devices`` forced CPU devices each, every process feeding its slice
of each batch: the multi-host program end to end. Those rows test the program, not speed
(the processes share this machine's cores). The last line printed is JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import ml_collections

EPOCH_PAIRS = 32364  # Flickr8k paper split, train
_ROWS_ENV = "T2I_BENCH_TRAIN_ROWS"  # the parent's rows, for the forced-device subprocess


def get_config() -> ml_collections.ConfigDict:
  """The rows of the README's training table, on 1 device and on 4 forced CPU devices.

  Command: python -m experiments.bench_train
  Measured (idle 2-core AMD EPYC VM, 2026-12-04; README "Benchmarks", "Training"): model 1
  at batch 1 91.7 samples/s (10.9 ms/step; a paper-protocol epoch 353 s), batch 64 1,373,
  batch 1024 2,157; the CVAE 173 (batch 64) and 151 (batch 256); on 4 forced devices
  model 1 386 / 2,020 and the CVAE 334 / 238. Run time 2.7 min, peak RSS 1.9 GB.
  """
  return ml_collections.ConfigDict({
      # (model, batch size, steps per jitted scan). 'cvae' is the model and loss of
      # experiments.cvae_shapes; one step per call, since XLA:CPU runs its conv gradients
      # ~10x slower inside a scan (on a GPU, try --config.rows with 8).
      "rows": (("model1", 1, 256), ("model1", 64, 16), ("model1", 1024, 4),
               ("cvae", 64, 1), ("cvae", 256, 1)),
      "min_steps_timed": 8,  # rows with short chunks get more timed calls
      "repeats": 3,  # timed calls per row, after one warm-up (compilation) call
      "precision": "float32",
      "model_kwargs": "",  # a dict literal applied to every row's model ('' = defaults)
      "forced_devices": 4,  # > 0: also run the rows on this many forced CPU devices
      "processes": 0,  # > 1: also run the rows on this many local processes (jax.distributed)
      "process_devices": 2,  # forced CPU devices per process, with processes > 1
      "quick": False,  # a few steps of small rows: keeps this module from rotting (tests)
      "child": False,  # internal: this process is the forced-device subprocess
      "seed": 0,
  })


def _quick(config) -> None:
  config.rows = (("model1", 2, 2),)
  config.min_steps_timed = 1
  config.model_kwargs = str({"hidden_dim": 8, "latent_dim": 4, "decoder_dims": (8, 16)})
  config.repeats = 1


def _model_config(model: str, batch: int, chunk: int, precision: str, model_kwargs: str = ""):
  import ast  # pylint: disable=import-outside-toplevel
  from t2i_jax import configs  # pylint: disable=import-outside-toplevel
  if model == "cvae":
    from experiments import cvae_shapes  # pylint: disable=import-outside-toplevel
    c = cvae_shapes.get_config()
  else:
    c = configs.base_config()
  if model_kwargs:
    c.model_kwargs = ml_collections.ConfigDict({**c.model_kwargs.to_dict(),
                                                **ast.literal_eval(model_kwargs)})
  c.model = model
  c.batch_size = batch
  c.steps_per_scan = chunk
  c.precision = precision
  return c


def _synthetic_chunk(config, rng):
  import numpy as np  # pylint: disable=import-outside-toplevel
  k, b = config.steps_per_scan, config.batch_size
  chunk = {"image": rng.integers(0, 256, (k, b, 64, 64, 3), dtype=np.uint8)}
  if config.caption_mode == "sequence":
    t = config.max_caption_len
    chunk["text"] = rng.standard_normal((k, b, t, 50), dtype=np.float32)
    lengths = rng.integers(3, t + 1, (k, b, 1))
    chunk["mask"] = np.arange(t)[None, None, :] < lengths
  else:
    chunk["text"] = rng.standard_normal((k, b, 50), dtype=np.float32)
  return chunk


def _device_memory() -> dict[str, float] | None:
  import jax  # pylint: disable=import-outside-toplevel
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if not stats:
    return None
  return {k: round(stats[k] / 2**20, 1) for k in ("peak_bytes_in_use", "bytes_in_use",
                                                  "bytes_limit") if k in stats}


def run_rows(config) -> list[dict]:
  """Times every row on the mesh of all devices of this process."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from t2i_jax import bench, models, parallel, train  # pylint: disable=import-outside-toplevel
  mesh = parallel.make_mesh()
  n_dev = mesh.devices.size
  main = parallel.is_main_process()
  rng = np.random.default_rng(config.seed)
  rows = []
  for model, batch, chunk in config.rows:
    row = {"model": model, "batch_size": batch, "steps_per_scan": chunk, "devices": n_dev,
           "processes": jax.process_count(),
           "device_kind": jax.devices()[0].device_kind, "precision": config.precision}
    if model not in models.available_models():
      rows.append({**row, "skipped": f"model {model!r} is not registered"})
      continue
    if batch % n_dev:
      rows.append({**row, "skipped": f"batch {batch} does not split over {n_dev} devices"})
      continue
    c = _model_config(model, batch, chunk, config.precision, config.model_kwargs)
    host = _synthetic_chunk(c, rng)
    init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
    state = parallel.replicate(train.create_train_state(
        c, init_rng, {k: v[0] for k, v in host.items()}), mesh)
    train_rng = parallel.replicate(train_rng, mesh)
    batches = parallel.shard_local(parallel.process_slice(host, axis=1), mesh)  # this
    # process's slice of every batch, as the trainer feeds it
    t0 = time.perf_counter()
    state, metrics = train.train_chunk(state, batches, train_rng)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    repeats = max(config.repeats, -(-config.min_steps_timed // chunk))
    t0 = time.perf_counter()
    for _ in range(repeats):
      state, metrics = train.train_chunk(state, batches, train_rng)
    jax.block_until_ready(metrics)
    dt = time.perf_counter() - t0
    steps = chunk * repeats
    ms = 1000 * dt / steps
    row.update({
        "param_count": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "first_call_s": round(compile_s, 2), "steps_timed": steps,
        "ms_per_step": round(ms, 3), "samples_per_s": round(batch * steps / dt, 1),
        "epoch_s": round(EPOCH_PAIRS // batch * ms / 1000, 1),
        "loss": float(metrics["loss"]), **bench.peak_rss_mb()})
    mem = _device_memory()
    if mem:
      row["device_memory_mb"] = mem
    rows.append(row)
    if main:
      where = f"x{n_dev} dev" + (f" / {jax.process_count()} processes"
                                 if jax.process_count() > 1 else "")
      print(f"{model:7s} batch {batch:5d} {where}: {row['samples_per_s']:10.1f} samples/s "
            f"{ms:9.3f} ms/step  epoch {row['epoch_s']:8.1f} s  (first call "
            f"{compile_s:.1f} s)", flush=True)
  return rows


def _forced_rows(config) -> list[dict]:
  """The same rows in a subprocess that sees ``forced_devices`` CPU devices."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      os.environ.get("XLA_FLAGS", "") +
      f" --xla_force_host_platform_device_count={config.forced_devices}").strip())
  env[_ROWS_ENV] = json.dumps(config.rows)
  args = [sys.executable, "-m", "experiments.bench_train", "--config.child=True",
          f"--config.repeats={config.repeats}", f"--config.precision={config.precision}",
          f"--config.min_steps_timed={config.min_steps_timed}",
          f"--config.seed={config.seed}", f"--config.model_kwargs={config.model_kwargs}"]
  proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"forced-device subprocess failed:\n{proc.stderr[-3000:]}")
  for line in proc.stdout.splitlines():
    if not line.startswith("{"):
      print(line)
  return json.loads(proc.stdout.strip().splitlines()[-1])["rows"]


def _process_rows(config) -> list[dict]:
  """The same rows on ``processes`` local processes: process 0's rows (global devices)."""
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  args = [sys.executable, "-m", "experiments.bench_train", "--config.child=True",
          f"--config.repeats={config.repeats}", f"--config.precision={config.precision}",
          f"--config.min_steps_timed={config.min_steps_timed}",
          f"--config.seed={config.seed}", f"--config.model_kwargs={config.model_kwargs}"]
  procs = []
  for i in range(config.processes):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES=str(config.processes), JAX_PROCESS_ID=str(i),
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                          f"device_count={config.process_devices}").strip())
    env[_ROWS_ENV] = json.dumps(config.rows)
    procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = [p.communicate() for p in procs]
  for i, (p, (_, err)) in enumerate(zip(procs, outs)):
    if p.returncode != 0:
      raise RuntimeError(f"process {i} of {config.processes} failed:\n{err[-3000:]}")
  out = outs[0][0]
  for line in out.splitlines():
    if not line.startswith("{") and not line.startswith("machine:"):
      print(line)
  return json.loads(out.strip().splitlines()[-1])["rows"]


def run(config) -> dict:
  from t2i_jax import bench, parallel  # pylint: disable=import-outside-toplevel
  if config.child:  # one of several processes when the launcher set JAX_COORDINATOR_ADDRESS...
    parallel.maybe_initialize_distributed()
  if config.child and os.environ.get(_ROWS_ENV):
    config.rows = tuple(tuple(r) for r in json.loads(os.environ[_ROWS_ENV]))
  elif config.quick:
    _quick(config)
  config.rows = tuple((str(m), int(b), int(k)) for m, b, k in config.rows)
  rows = run_rows(config)
  if config.forced_devices > 0 and not config.child:
    rows += _forced_rows(config)
  if config.processes > 1 and not config.child:
    rows += _process_rows(config)
  return {"machine": bench.machine(), "data": "synthetic random, real shapes",
          "epoch_pairs": EPOCH_PAIRS, "rows": rows, **{
              f"final_{k}": v for k, v in bench.peak_rss_mb().items()}}


def main(argv: list[str]) -> int:
  from t2i_jax import bench  # pylint: disable=import-outside-toplevel
  return bench.main(get_config, run, argv)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
