"""Reliability of training: crashes, signals, damaged checkpoints, NaNs, determinism.

The runs are tiny (40 shapes images, the tiny VAE of test_train.py, K=4 chunks) so that
real subprocesses can be killed mid-run and resumed within CI time. A module-scoped
reference run, trained in-process through `t2i train`, is the uninterrupted baseline.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from t2i_jax import checkpoint, cli, configs, train
from t2i_jax.errors import UserError

import tiny_runs

STEPS = 88  # 4 epochs of 22 steps: long enough to be killed after its first checkpoint
FIRST_CHECKPOINT = 8
TIME_KEYS = {"time", "steps_per_s", "epoch_time_s", "eval_time_s"}



@pytest.fixture(scope="module")
def ref(tmp_path_factory):
  """The config file and an uninterrupted in-process run of it."""
  base = tmp_path_factory.mktemp("reliability")
  with pytest.MonkeyPatch.context() as mp:  # what conftest sets, for a module-scoped fixture
    mp.setenv("T2I_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    mp.setenv("T2I_DATA_DIR", str(tmp_path_factory.getbasetemp() / "tfds"))
    config_path = base / "tiny.py"
    config_path.write_text(tiny_runs.tiny_config_file(
        base / "tfds", num_epochs=4, steps_per_scan=4, checkpoint_every_steps=FIRST_CHECKPOINT,
        log_every_steps=4, keep_checkpoints=2))
    workdir = base / "ref"
    assert cli.main(["train", str(config_path), "--workdir", str(workdir)]) == 0
    yield {"config_path": config_path, "workdir": workdir, "base": base}


def _params(workdir: Path):
  _, params, step = checkpoint.restore_for_inference(workdir)
  return params, step


def _assert_same_params(a: Path, b: Path) -> None:
  pa, sa = _params(a)
  pb, sb = _params(b)
  assert sa == sb == STEPS
  same = jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(x, y), pa, pb))
  assert same and all(same)


def _records(workdir: Path) -> list[dict]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(line).items() if k not in TIME_KEYS} for line in lines]


def _command(ref, workdir: Path) -> list[str]:
  return [sys.executable, "-m", "t2i_jax.cli", "train", str(ref["config_path"]),
          "--workdir", str(workdir)]


def _start(ref, workdir: Path) -> subprocess.Popen:
  """Training in a subprocess, returned once its first checkpoint is complete."""
  proc = subprocess.Popen(_command(ref, workdir), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=dict(os.environ))
  deadline = time.monotonic() + 120
  while checkpoint.latest_step(workdir) is None:
    assert proc.poll() is None, proc.communicate()
    assert time.monotonic() < deadline, "no checkpoint after 120 s"
    time.sleep(0.05)
  return proc


# ------------------------------------------------------------------- crash and resume


def test_sigkilled_run_resumes_bitwise_identical(ref, tmp_path):
  workdir = tmp_path / "killed"
  proc = _start(ref, workdir)
  delay = random.Random().uniform(0.0, 0.4)  # anywhere: mid-chunk, mid-save, mid-eval
  time.sleep(delay)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL, f"finished before the kill ({delay=:.2f})"
  killed_at = checkpoint.latest_step(workdir)
  assert killed_at is not None and killed_at < STEPS
  done = subprocess.run(_command(ref, workdir), capture_output=True, text=True,
                        env=dict(os.environ), check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  _assert_same_params(ref["workdir"], workdir)
  assert _records(workdir) == _records(ref["workdir"]), f"killed at step {killed_at}"


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_says_how_to_resume(ref, tmp_path, sig, status):
  workdir = tmp_path / "signalled"
  proc = _start(ref, workdir)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == status, err[-2000:]
  assert "Traceback" not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith(f"interrupted by {sig.name} at step "), last
  assert "resume with the same command:" in last and f"--workdir {workdir}" in last
  step = int(last.split(" at step ")[1].split(",")[0])
  assert checkpoint.latest_step(workdir) == step  # saved where it stopped, not before
  if sig == signal.SIGTERM:  # and the rerun ends where an uninterrupted run does
    done = subprocess.run(_command(ref, workdir), capture_output=True, text=True,
                          env=dict(os.environ), check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_same_params(ref["workdir"], workdir)


# ------------------------------------------------------------------ damaged checkpoints


def _damage(step_dir: Path, how: str) -> None:
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
  assert files
  for p in files:
    if how == "truncate":
      data = p.read_bytes()
      p.write_bytes(data[:len(data) // 2])
    else:
      p.unlink()


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_unreadable_latest_checkpoint_falls_back_to_the_previous(ref, tmp_path, capsys, how):
  workdir = tmp_path / "damaged"
  shutil.copytree(ref["workdir"], workdir)
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps[-1] == STEPS and len(steps) == 2
  _damage(workdir / "checkpoints" / str(STEPS), how)
  capsys.readouterr()

  _, _, step = checkpoint.restore_for_inference(workdir)
  assert step == steps[-2]
  warnings = capsys.readouterr().err.strip().splitlines()
  assert len(warnings) == 1 and warnings[0].startswith(f"warning: checkpoint {STEPS} in ")
  assert f"using checkpoint {steps[-2]} instead" in warnings[0]

  # Training resumes from the previous one, replaces the damaged step, ends as the reference.
  assert cli.main(["train", str(ref["config_path"]), "--workdir", str(workdir)]) == 0
  assert f"warning: checkpoint {STEPS}" in capsys.readouterr().err
  _assert_same_params(ref["workdir"], workdir)


def test_no_readable_checkpoint_is_a_user_error(ref, tmp_path):
  workdir = tmp_path / "all_damaged"
  shutil.copytree(ref["workdir"], workdir)
  for p in (workdir / "checkpoints").iterdir():
    if p.name.isdigit():
      _damage(p, "delete")
  with pytest.raises(UserError, match="no readable checkpoint"):
    checkpoint.restore_for_inference(workdir)


def test_a_save_that_fails_leaves_the_previous_checkpoints_complete(ref, tmp_path, monkeypatch,
                                                                    capsys):
  """Disk full mid-save: Orbax's tmp-dir-and-rename keeps the half-written step invisible."""
  import errno  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "full_disk"
  real = ocp.JsonCheckpointHandler._save_fn  # pylint: disable=protected-access
  calls = {"n": 0}

  def full(self, item, directory):  # the write of the meta item (after the arrays')
    calls["n"] += 1
    if calls["n"] > 1:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, item, directory)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", full)
  assert cli.main(["train", str(ref["config_path"]), "--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  line = err.strip().splitlines()[-1]
  assert line.startswith(f"error: could not write checkpoint {2 * FIRST_CHECKPOINT} ")
  assert f"the disk is full; the last complete checkpoint is step {FIRST_CHECKPOINT}" in line
  assert checkpoint.latest_step(workdir) == FIRST_CHECKPOINT
  assert checkpoint.restore_for_inference(workdir)[2] == FIRST_CHECKPOINT
  monkeypatch.undo()  # space freed: the same command finishes the run exactly
  assert cli.main(["train", str(ref["config_path"]), "--workdir", str(workdir)]) == 0
  _assert_same_params(ref["workdir"], workdir)


# ------------------------------------------------------------------------- mismatches


def test_checkpoint_of_another_model_names_the_differing_params(ref, tmp_path):
  config, _, _ = checkpoint.restore_for_inference(ref["workdir"])
  batch = {"image": np.zeros((1, 64, 64, 3), np.uint8), "text": np.zeros((1, 50), np.float32)}
  other = config.copy_and_resolve_references()
  other.model_kwargs.latent_dim = 6
  target = train.create_train_state(other, jax.random.key(0), batch)
  with checkpoint.Checkpointer(ref["workdir"]) as ckpt:
    with pytest.raises(UserError, match=rf"checkpoint {STEPS} .* another model or config: "
                                        r".*\['z_mean'\]\['bias'\] \(4,\) != \(6,\)"):
      ckpt.restore(target)


# ----------------------------------------------------------------------- numerical faults


def test_nonfinite_stop_names_the_step_and_the_last_checkpoint(ref, tmp_path, capsys):
  workdir = tmp_path / "nan"
  assert cli.main(["train", str(ref["config_path"]), "--workdir", str(workdir),
                   "--config.learning_rate=1e30"]) == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  line = err.strip().splitlines()[-1]
  assert line.startswith("error: The training loss became non-finite at step "), line
  assert "the last checkpoint is " in line


def test_nonfinite_skip_discards_the_update_and_counts_it(ref, tmp_path):
  config, _, _ = checkpoint.restore_for_inference(ref["workdir"])
  rng = np.random.default_rng(0)
  batches = {"image": rng.integers(0, 256, (4, 8, 64, 64, 3), dtype=np.uint8),
             "text": rng.normal(size=(4, 8, 50)).astype(np.float32)}
  state = train.create_train_state(config, jax.random.key(1),
                                   jax.tree.map(lambda x: x[0], batches))
  bad = dict(batches, text=batches["text"].copy())
  bad["text"][3] = np.inf  # the last step of the chunk
  kept, _ = train.train_chunk(state, batches, jax.random.key(2), 3, skip_nonfinite=True)
  skipped, m = train.train_chunk(state, bad, jax.random.key(2), skip_nonfinite=True)
  assert int(skipped.step) == 4 and float(m["skipped_steps"]) == 1.0
  assert int(m["nonfinite_step"]) == -1 and np.isfinite(float(m["loss"]))
  same = jax.tree.leaves(jax.tree.map(np.array_equal, skipped.params, kept.params))
  assert all(same)
  _, m_stop = train.train_chunk(state, bad, jax.random.key(2))
  assert int(m_stop["nonfinite_step"]) == 4


def test_nonfinite_skip_run_finishes_and_logs_skipped_steps(ref, tmp_path):
  workdir = tmp_path / "skip"
  assert cli.main(["train", str(ref["config_path"]), "--workdir", str(workdir),
                   "--config.learning_rate=1e30", "--config.nonfinite=skip",
                   "--config.max_steps=12"]) == 0
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  steps = [r for r in records if r["split"] == "train"]
  assert steps and steps[-1]["skipped_steps"] > 0
  _, params, step = checkpoint.restore_for_inference(workdir)
  assert step == 12 and all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_unknown_nonfinite_mode_is_refused(ref, tmp_path, capsys):
  assert cli.main(["train", str(ref["config_path"]), "--workdir", str(tmp_path / "w"),
                   "--config.nonfinite=ignore"]) == 2
  assert "--config.nonfinite must be one of stop, skip" in capsys.readouterr().err


# ---------------------------------------------------------------------------- determinism


def test_same_seed_and_config_give_the_same_metrics(ref, tmp_path):
  workdir = tmp_path / "again"
  assert cli.main(["train", str(ref["config_path"]), "--workdir", str(workdir)]) == 0
  assert _records(workdir) == _records(ref["workdir"])
  _assert_same_params(ref["workdir"], workdir)
  assert configs.to_json_dict(checkpoint.restore_for_inference(workdir)[0]) == \
      configs.to_json_dict(checkpoint.restore_for_inference(ref["workdir"])[0])
