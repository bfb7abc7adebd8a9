"""Multi-host training for real: two processes on this machine, as two hosts would run it.

Each process sees 2 forced CPU devices and joins the other through ``jax.distributed`` (the
coordinator on 127.0.0.1, gloo collectives), so the run has 4 devices over 2 processes. They
run the README's two-terminal command, ``t2i train tiny.py --workdir W`` with
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, under an audit hook that
records which files each process opens for writing. The reference is one process with 4
forced devices. Failures at start (a missing process, different configs, a workdir that is
not shared) end every process with one ``error:`` line instead of a hang.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from t2i_jax import checkpoint

import tiny_runs

STEPS = 20
# A checkpoint at step 8, so that a SIGKILL after the first one lands mid-run; no sample
# grids (only a one-process run draws them).
RUN = {"max_steps": STEPS, "steps_per_scan": 4, "checkpoint_every_steps": 8,
       "log_every_steps": 4, "keep_checkpoints": 2, "eval_sample_captions": 0}
TIME_KEYS = {"time", "steps_per_s", "epoch_time_s", "eval_time_s"}
WAIT_S = 300  # per group of processes; a hang fails the test instead of blocking CI

# `t2i train ...` (sys.argv[1:]) under an audit hook: the absolute paths this process opened
# for writing go to $T2I_TEST_WRITTEN as JSON when it exits.
_TRAIN = textwrap.dedent("""
    import atexit, json, os, runpy, sys
    written = set()
    def hook(event, args):
      if event != "open" or not args or not isinstance(args[0], (str, bytes)):
        return
      mode, flags = args[1], args[2]
      if (mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)) or (
          isinstance(mode, str) and any(c in mode for c in "wax+")):
        written.add(os.path.abspath(os.fsdecode(args[0])))
    sys.addaudithook(hook)
    out = os.environ["T2I_TEST_WRITTEN"]
    atexit.register(lambda: open(out, "w").write(json.dumps(sorted(written))))
    sys.argv = ["t2i", *sys.argv[1:]]
    runpy.run_module("t2i_jax.cli", run_name="__main__")
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(base: Path, devices: int, **extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("JAX_") and k not in ("XLA_FLAGS", "T2I_DISTRIBUTED_TIMEOUT_S")}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
             T2I_CACHE_DIR=str(base / "cache"), T2I_DATA_DIR=str(base / "tfds"), **extra)
  return env


class Proc:
  """One training process, its output in files (no pipe to fill up)."""

  def __init__(self, base: Path, name: str, args: list[str], env: dict[str, str]):
    self.name, self.log = name, base / "logs" / f"{name}.txt"
    self.written_path = base / "logs" / f"{name}.written.json"
    self.log.parent.mkdir(parents=True, exist_ok=True)
    self.written_path.unlink(missing_ok=True)
    with self.log.open("w") as f:
      self.popen = subprocess.Popen(
          [sys.executable, "-c", _TRAIN, "train", *args], stdout=f, stderr=subprocess.STDOUT,
          env=dict(env, T2I_TEST_WRITTEN=str(self.written_path)), text=True)

  @property
  def output(self) -> str:
    return self.log.read_text()

  @property
  def last_line(self) -> str:
    lines = self.output.strip().splitlines()
    return lines[-1] if lines else ""

  @property
  def written(self) -> list[str]:
    return json.loads(self.written_path.read_text())


def _wait(procs: list[Proc], timeout: float = WAIT_S) -> list[Proc]:
  deadline = time.monotonic() + timeout
  while any(p.popen.poll() is None for p in procs):
    if time.monotonic() > deadline:
      for p in procs:
        if p.popen.poll() is None:
          p.popen.kill()
          p.popen.wait()
      tails = "\n".join(f"--- {p.name}:\n{p.output[-2000:]}" for p in procs)
      pytest.fail(f"processes still running after {timeout:.0f} s (a hang):\n{tails}")
    time.sleep(0.1)
  return procs


def _start_pair(base: Path, name: str, config: Path, workdirs: tuple[Path, Path],
                extra_args: tuple[tuple[str, ...], tuple[str, ...]] = ((), ()),
                **env_extra: str) -> list[Proc]:
  """Processes 0 and 1 of a two-process run, 2 forced devices each."""
  port = _free_port()
  return [Proc(base, f"{name}_p{i}", [str(config), "--workdir", str(workdirs[i]),
                                      *extra_args[i]],
               _env(base, 2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                    JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i), **env_extra))
          for i in range(2)]


def _assert_ok(procs: list[Proc]) -> None:
  for p in procs:
    assert p.popen.returncode == 0, f"{p.name} exited {p.popen.returncode}:\n{p.output[-3000:]}"


def _params(workdir: Path):
  _, params, step = checkpoint.restore_for_inference(workdir)
  return jax.tree.map(np.asarray, params), step


def _records(workdir: Path) -> list[dict]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(line).items() if k not in TIME_KEYS} for line in lines]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """A folder with the tiny run's config file and its data, prepared once."""
  from t2i_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  base = tmp_path_factory.mktemp("multihost")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("T2I_CACHE_DIR", str(base / "cache"))
    pipeline.ensure_prepared(tiny_runs.tiny_config(base / "tfds", **RUN))
  (base / "tiny.py").write_text(tiny_runs.tiny_config_file(base / "tfds", **RUN))
  return base


@pytest.fixture(scope="module")
def runs(base):
  """The two-process run and the 4-device one-process reference, side by side."""
  pair = _start_pair(base, "pair", base / "tiny.py", (base / "pair",) * 2)
  ref = Proc(base, "ref", [str(base / "tiny.py"), "--workdir", str(base / "ref")],
             _env(base, 4))
  t0 = time.monotonic()
  _assert_ok(_wait([*pair, ref]))
  return {"pair": pair, "ref": ref, "seconds": time.monotonic() - t0}


# ----------------------------------------------------------------------------- training


@pytest.mark.slow  # two training runs of two processes: ~2 min of CPU
def test_two_processes_train_as_one_process_with_four_devices(base, runs):
  pair, ref = _params(base / "pair"), _params(base / "ref")
  assert pair[1] == ref[1] == STEPS
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), pair[0],
                                       ref[0]))
  assert diffs and max(diffs) < 1e-5, max(diffs)
  info = json.loads((base / "pair" / "run.json").read_text())
  assert info["process_count"] == 2 and info["num_devices"] == 4
  assert "[Gloo]" in runs["pair"][0].output  # real cross-process collectives


@pytest.mark.slow  # two training runs of two processes: ~2 min of CPU
def test_only_process_0_writes_metrics_run_info_and_tensorboard(base, runs):
  workdir = str(base / "pair")
  p0, p1 = ([w for w in p.written if w.startswith(workdir + os.sep)] for p in runs["pair"])
  names = {os.path.relpath(w, workdir).split(os.sep)[0] for w in p0}
  assert {"metrics.jsonl", "run.json", "config.json", "tensorboard"} <= names
  # Process 1 writes nothing into the workdir but its part of each checkpoint and the
  # writability probe (its own file, named for its host and pid).
  top = {os.path.relpath(w, workdir).split(os.sep)[0] for w in p1}
  assert {".t2i_write_test" if n.startswith(".t2i_write_test.") else n for n in top} <= {
      "checkpoints", ".t2i_write_test"}, p1
  assert any("array_metadatas/process_1" in w for w in p1)
  assert len(list((base / "pair" / "tensorboard").glob("events.*"))) == 1
  assert "epoch 1/1 step 20" in runs["pair"][0].output
  assert "epoch 1/1" not in runs["pair"][1].output  # and prints no progress either
  # Every record once, as the one-process run logs them.
  pair, ref = _records(base / "pair"), _records(base / "ref")
  assert [(r["step"], r["split"], r["scope"]) for r in pair] == \
      [(r["step"], r["split"], r["scope"]) for r in ref]
  np.testing.assert_allclose([r["loss"] for r in pair], [r["loss"] for r in ref], rtol=1e-4)


@pytest.mark.slow  # two training runs of two processes: ~2 min of CPU
def test_both_processes_write_each_checkpoint(base, runs):
  steps = sorted(int(p.name) for p in (base / "pair" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps == [16, STEPS]
  for step in steps:
    state = base / "pair" / "checkpoints" / str(step) / "state"
    for i in range(2):
      assert (state / "array_metadatas" / f"process_{i}").is_file()
      assert any((state / f"ocdbt.process_{i}" / "d").iterdir()), f"process {i}, step {step}"


# ------------------------------------------------------------------ failures at start


def test_a_missing_process_is_named_after_a_short_timeout(base):
  """Only process 0, then only process 1, of a two-process run: one line each, no hang."""
  port0, port1 = _free_port(), _free_port()
  alone = [Proc(base, f"alone_p{i}", [str(base / "tiny.py"), "--workdir", str(base / "alone")],
                _env(base, 2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                     JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
                     T2I_DISTRIBUTED_TIMEOUT_S="4"))
           for i, port in ((0, port0), (1, port1))]
  _wait(alone, timeout=120)
  for p in alone:
    assert p.popen.returncode == 2, p.output[-2000:]
    assert "Traceback" not in p.output and "Check failure" not in p.output
  assert alone[0].last_line == (
      f"error: process 0 of 2 waited 4 s at the coordinator 127.0.0.1:{port0} and process 1 "
      "never joined; start it (JAX_PROCESS_ID) with the same JAX_COORDINATOR_ADDRESS, or "
      "raise T2I_DISTRIBUTED_TIMEOUT_S.")
  assert alone[1].last_line.startswith(
      f"error: process 1 of 2 waited 4 s at the coordinator 127.0.0.1:{port1} and process 0 "
      "(the coordinator) never joined;")


def test_processes_with_different_configs_stop_at_start(base):
  procs = _wait(_start_pair(base, "mismatch", base / "tiny.py", (base / "mismatch",) * 2,
                            extra_args=((), ("--config.learning_rate=0.5",))))
  for p in procs:
    assert p.popen.returncode == 2, p.output[-2000:]
    assert p.last_line.startswith("error: process 1 was started with another config than "
                                  "process 0 (learning_rate: "), p.last_line
    assert p.last_line.endswith(" vs 0.5); start every process with the same config file "
                                "and --config overrides."), p.last_line
  assert not (base / "mismatch" / "checkpoints").exists()


def test_a_workdir_the_processes_do_not_share_stops_at_start(base):
  procs = _wait(_start_pair(base, "unshared", base / "tiny.py",
                            (base / "unshared_a", base / "unshared_b")))
  for p in procs:
    assert p.popen.returncode == 2, p.output[-2000:]
    assert "is not shared: process(es) 1 do not see the file process 0 wrote" in p.last_line
  assert not list((base / "unshared_a").glob(".t2i_processes"))  # the token is cleaned up


# ------------------------------------------------------------------------ crash, resume


@pytest.mark.slow
def test_sigkilled_processes_resume_bitwise_identical(base, runs):
  workdir = base / "killed"
  procs = _start_pair(base, "killed", base / "tiny.py", (workdir,) * 2)
  deadline = time.monotonic() + WAIT_S
  while checkpoint.latest_step(workdir) is None:
    assert all(p.popen.poll() is None for p in procs), [p.output[-2000:] for p in procs]
    assert time.monotonic() < deadline, "no checkpoint in time"
    time.sleep(0.05)
  delay = random.Random().uniform(0.0, 0.5)  # mid-chunk, mid-save, mid-eval
  time.sleep(delay)
  for p in procs:
    p.popen.send_signal(signal.SIGKILL)
  _wait(procs)
  assert all(p.popen.returncode == -signal.SIGKILL for p in procs), \
      f"finished before the kill ({delay=:.2f})"
  killed_at = checkpoint.latest_step(workdir)
  assert killed_at is not None and killed_at < STEPS
  resumed = _wait(_start_pair(base, "resumed", base / "tiny.py", (workdir,) * 2))
  _assert_ok(resumed)
  (a, sa), (b, sb) = _params(base / "pair"), _params(workdir)
  assert sa == sb == STEPS
  same = jax.tree.leaves(jax.tree.map(np.array_equal, a, b))
  assert same and all(same), f"killed at step {killed_at}"
  assert _records(workdir) == _records(base / "pair"), f"killed at step {killed_at}"


# ------------------------------------------------------------ the two-stage flow family

_FLOW_CONFIG = """\
from t2i_jax import configs


def get_config():
  c = configs.flow_config()
  c.num_images = 40
  c.data_dir = {data_dir!r}
  c.max_caption_len = 8
  ae = {{"channels": (8,), "latent_channels": 4, "num_res": 1}}
  c.stage1.model_kwargs = {{"ae": ae}}
  c.stage2.model_kwargs = {{"ae": ae, "patch": 4, "width": 32, "depth": 1, "num_heads": 2,
                           "text_heads": 2, "text_layers": 1, "max_len": 8, "mlp_ratio": 2}}
  for s in (c.stage1, c.stage2):
    s.batch_size = 8
    s.max_steps = 4
    s.num_epochs = 1
    s.steps_per_scan = 1
    s.log_every_steps = 2
    s.checkpoint_every_steps = 2
    s.eval_batch_size = 4
    s.eval_sample_captions = 0
  return c
"""


@pytest.mark.slow
def test_flow_family_trains_both_stages_on_two_processes(base):
  config = base / "flow_tiny.py"
  config.write_text(_FLOW_CONFIG.format(data_dir=str(base / "tfds")))
  from t2i_jax import configs  # pylint: disable=import-outside-toplevel
  from t2i_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from t2i_jax.train import stages  # pylint: disable=import-outside-toplevel
  with pytest.MonkeyPatch.context() as mp:  # prepared once, not by three processes at once
    mp.setenv("T2I_CACHE_DIR", str(base / "cache"))
    pipeline.ensure_prepared(stages.stage_configs(configs.load_config_module(str(config)),
                                                  base / "flow_pair")[0][1])
  pair = _start_pair(base, "flow", config, (base / "flow_pair",) * 2)
  ref = Proc(base, "flow_ref", [str(config), "--workdir", str(base / "flow_ref")],
             _env(base, 4))
  _assert_ok(_wait([*pair, ref]))
  for stage in ("stage1", "stage2"):
    (a, sa), (b, sb) = _params(base / "flow_pair" / stage), _params(base / "flow_ref" / stage)
    assert sa == sb == 4
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b))
    assert diffs and max(diffs) < 1e-5, (stage, max(diffs))
    state = base / "flow_pair" / stage / "checkpoints" / "4" / "state"
    assert any((state / "ocdbt.process_1" / "d").iterdir()), stage


# ------------------------------------------------------------------------- the benchmark


@pytest.mark.slow
def test_bench_train_runs_its_rows_on_two_processes(capsys):
  from experiments import bench_train  # pylint: disable=import-outside-toplevel
  assert bench_train.main(["--config.quick=True", "--config.forced_devices=0",
                           "--config.processes=2", "--config.process_devices=1"]) == 0
  rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
  assert [(r["model"], r["batch_size"], r["devices"], r["processes"]) for r in rows] == [
      ("model1", 2, 1, 1), ("model1", 2, 2, 2)]
  assert all(r["samples_per_s"] > 0 and np.isfinite(r["loss"]) for r in rows)
