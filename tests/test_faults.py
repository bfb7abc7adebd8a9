"""Faults users meet: two runs on one workdir, a damaged prepared dataset, a killed prepare.

* The workdir lock is tested with real processes (``python -c`` children holding
  ``workdir_lock.hold``), since a second training run is a second process.
* A tiny prepared shapes set (40 images) is damaged three ways (truncated shard, a flipped
  byte inside a record, a deleted shard): loading it is one line naming the dataset folder,
  the file and the rebuild command, and ``t2i prepare --force`` rebuilds it.
* ``t2i prepare`` (shapes, and flickr8k on the tiny fixture corpus) is SIGKILLed at seeded
  random moments; after each kill the dataset is either not prepared or complete and equal,
  record by record, to an uninterrupted prepare, and a rerun always ends equal to it. The
  default run tries a few kill points; ``T2I_KILL_POINTS=N`` runs the slow test with N per
  dataset.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest

import flickr8k_fixtures as fx
from t2i_jax import cli, configs, workdir_lock
from t2i_jax.data import pipeline, prepare
from t2i_jax.errors import UserError

HOST = socket.gethostname()


def _one_error_line(err: str) -> str:
  assert "Traceback" not in err, err[-3000:]
  lines = [line for line in err.splitlines() if line.strip()]
  assert lines and lines[-1].startswith("error: "), err[-3000:]
  return lines[-1]


# ----------------------------------------------------------------------- workdir lock

_HOLD = """
import sys, time
from t2i_jax import workdir_lock
from t2i_jax.errors import UserError
try:
  with workdir_lock.hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
except UserError as e:
  print(f"error: {e}", file=sys.stderr)
  sys.exit(2)
"""


def _holder(workdir: Path, seconds: float = 120) -> subprocess.Popen:
  proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(workdir), str(seconds)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held", proc.communicate()
  return proc


def _try_hold(workdir: Path) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", _HOLD, str(workdir), "0"], capture_output=True,
                        text=True, timeout=60, check=False)


def test_a_second_process_on_a_workdir_stops_at_once_naming_the_holder(tmp_path):
  workdir = tmp_path / "run"
  holder = _holder(workdir)
  try:
    t0 = time.monotonic()
    second = _try_hold(workdir)
    assert second.returncode == 2 and "held" not in second.stdout
    line = _one_error_line(second.stderr)
    assert line.startswith(f"error: {workdir} is in use by a training run (pid {holder.pid} "
                           f"on host {HOST}, started "), line
    assert line.endswith("wait for it to finish or stop it, or use another --workdir."), line
    assert time.monotonic() - t0 < 30
    # In this process too, and a non-main process of a multi-host run never takes it.
    with pytest.raises(UserError, match=f"pid {holder.pid} on host {HOST}"):
      with workdir_lock.hold(workdir):
        pass
    with workdir_lock.hold(workdir, is_main=False) as path:
      assert path is None
    record = json.loads((workdir / workdir_lock.LOCK_NAME).read_text())
    assert record["pid"] == holder.pid and record["host"] == HOST
  finally:
    holder.kill()
    holder.communicate()


def test_readers_do_not_take_the_lock(tmp_path, capsys):
  """`t2i sample` on a workdir being trained reads it: here it finds no checkpoint yet."""
  workdir = tmp_path / "run"
  holder = _holder(workdir)
  try:
    assert cli.main(["sample", "--workdir", str(workdir), "red circle"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no checkpoint" in line and "in use" not in line
  finally:
    holder.kill()
    holder.communicate()
  import inspect  # pylint: disable=import-outside-toplevel
  from t2i_jax import evaluate, sample  # pylint: disable=import-outside-toplevel
  for module in (sample, evaluate):
    assert "workdir_lock" not in inspect.getsource(module)


def test_lock_of_a_killed_run_is_taken_over_with_one_warning(tmp_path):
  workdir = tmp_path / "run"
  holder = _holder(workdir)
  holder.send_signal(signal.SIGKILL)
  holder.communicate()
  assert (workdir / workdir_lock.LOCK_NAME).exists()  # SIGKILL: nobody removed it
  after = _try_hold(workdir)
  assert after.returncode == 0 and after.stdout.strip() == "held", after.stderr
  lines = [line for line in after.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("warning: "), after.stderr
  assert f"pid {holder.pid} on host {HOST}" in lines[0] and "taking the lock over" in lines[0]
  assert not (workdir / workdir_lock.LOCK_NAME).exists()  # released on a clean exit


def test_lock_without_flock_decides_by_pid_and_host(tmp_path, monkeypatch, capsys):
  """On a filesystem without flock the record decides: only a gone process here is stale."""
  def no_flock(fd, op):
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(workdir_lock.fcntl, "flock", no_flock)
  workdir = tmp_path / "run"
  workdir.mkdir()
  lock = workdir / workdir_lock.LOCK_NAME
  dead = subprocess.Popen(["true"])  # a pid that has exited
  dead.wait()
  cases = [({"pid": os.getppid(), "host": HOST}, "in use"),  # alive, here
           ({"pid": dead.pid, "host": "elsewhere"}, "in use"),  # can't tell: refuse
           ({"pid": dead.pid, "host": HOST}, "stale")]
  for record, expect in cases:
    lock.write_text(json.dumps({**record, "started": "2025-01-01 00:00:00"}))
    if expect == "in use":
      with pytest.raises(UserError, match=f"pid {record['pid']} on host {record['host']}"):
        with workdir_lock.hold(workdir):
          pass
    else:
      with workdir_lock.hold(workdir):
        with workdir_lock.hold(workdir):  # re-entrant in one process
          assert json.loads(lock.read_text())["pid"] == os.getpid()
      err = capsys.readouterr().err.strip().splitlines()
      assert len(err) == 1 and err[0].startswith("warning: ") and str(dead.pid) in err[0]
      assert not lock.exists()


# ---------------------------------------------------------------- prepared datasets

SHAPES_ARGS = ["--num-images", "40", "--seed", "1"]


def _config(**values) -> ml_collections.ConfigDict:
  c = configs.base_config()
  for k, v in values.items():
    c[k] = v
  return c


def _shapes_config(data_dir: Path) -> ml_collections.ConfigDict:
  return _config(dataset="shapes", data_dir=str(data_dir), num_images=40, shapes_seed=1)


def _flickr_config(data_dir: Path, manual_dir: Path) -> ml_collections.ConfigDict:
  return _config(dataset="flickr8k", data_dir=str(data_dir), manual_dir=str(manual_dir),
                 image_mode="paper", split_scheme="paper")


def _records(builder) -> dict:
  """Every record of every split, parsed (a proto's map order is not fixed), plus metadata."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = {}
  for split, info in sorted(builder.info.splits.items()):
    raw = tf.data.TFRecordDataset([str(f) for f in info.filepaths])
    out[split] = [tf.train.Example.FromString(r) for r in raw.as_numpy_iterator()]
    assert len(out[split]) == info.num_examples
  meta = json.loads((Path(builder.data_dir) / "metadata.json").read_text())
  return {"splits": out, "metadata": json.loads(
      json.dumps(meta).replace(str(builder.data_dir_root), "DATA_DIR"))}


def _tables(config) -> dict:
  """The tensors and images training sees, per role."""
  out = {}
  for role in ("train", "test"):
    t = pipeline.load_table(config, role)
    out[role] = (t.images, t.image_index, t.text, t.caption_index, t.captions, t.image_ids)
  return out


def _assert_same_tables(a: dict, b: dict) -> None:
  assert a.keys() == b.keys()
  for role in a:
    for x, y in zip(a[role], b[role]):
      np.testing.assert_array_equal(x, y)


def _assert_same(builder, ref) -> None:
  got = _records(builder)
  assert got["metadata"] == ref["metadata"]
  assert got["splits"].keys() == ref["splits"].keys()
  for split in ref["splits"]:
    assert len(got["splits"][split]) == len(ref["splits"][split]), split
    for i, (x, y) in enumerate(zip(got["splits"][split], ref["splits"][split])):
      assert x == y, f"{split} record {i} differs"


@pytest.fixture(scope="module")
def shapes_ref(tmp_path_factory):
  """An uninterrupted `t2i prepare shapes` of 40 images: records, tables, writing time."""
  base = tmp_path_factory.mktemp("faults_shapes")
  with pytest.MonkeyPatch.context() as mp:  # what conftest sets, for a module-scoped fixture
    mp.setenv("T2I_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    config = _shapes_config(base / "tfds")
    argv = ["prepare", "shapes", *SHAPES_ARGS, "--data-dir", str(base / "tfds")]
    yield _reference(argv, config)


def _copy_ref(ref, tmp_path: Path):
  data_dir = tmp_path / "tfds"
  shutil.copytree(ref["data_dir"], data_dir)
  config = _shapes_config(data_dir)
  return config, pipeline.get_builder(config)


def _record_spans(path: Path) -> list[tuple[int, int]]:
  """(start, end) of each record's payload in a TFRecord file (8-byte length, 4-byte CRC)."""
  data, spans, pos = path.read_bytes(), [], 0
  while pos < len(data):
    n = int.from_bytes(data[pos:pos + 8], "little")
    spans.append((pos + 12, pos + 12 + n))
    pos += 12 + n + 4
  return spans


def _damage(path: Path, how: str) -> None:
  spans = _record_spans(path)
  data = bytearray(path.read_bytes())
  if how == "truncated":  # mid-record
    path.write_bytes(bytes(data[:len(data) * 2 // 3]))
  elif how == "truncated at a record boundary":  # no read error: records silently missing
    path.write_bytes(bytes(data[:spans[len(spans) // 2][1] + 4]))
  elif how == "flipped byte":
    start, end = spans[len(spans) // 3]
    data[(start + end) // 2] ^= 0x20
    path.write_bytes(bytes(data))
  else:
    path.unlink()


@pytest.mark.parametrize("how, says", [
    ("truncated", "is truncated"),
    ("truncated at a record boundary", "holds 91 records where dataset_info.json says 180"),
    ("flipped byte", "has a corrupted record"),
    ("deleted", "is missing"),
])
def test_damaged_shard_is_one_line_with_the_rebuild_command(shapes_ref, tmp_path, capsys, how,
                                                            says):
  config, builder = _copy_ref(shapes_ref, tmp_path)
  shard = Path(str(builder.info.splits["train"].filepaths[0]))
  _damage(shard, how)
  with pytest.raises(UserError) as e:
    pipeline.load_table(config, "train")
  line = str(e.value)
  assert "\n" not in line
  assert line.startswith(f"The prepared dataset {builder.data_dir} is damaged: {shard.name} "
                         f"{says}"), line
  command = f"t2i prepare shapes --force --num-images 40 --seed 1 --data-dir {config.data_dir}"
  assert line.endswith(f"Rebuild it with `{command}`."), line
  pipeline.load_table(config, "test")  # the other splits are intact
  if how == "flipped byte":  # the command given rebuilds it
    assert cli.main(command.split()[1:]) == 0
    capsys.readouterr()
    _assert_same(pipeline.get_builder(config), shapes_ref["records"])
    _assert_same_tables(_tables(config), shapes_ref["tables"])


def test_force_keeps_the_old_output_usable_until_the_new_one_is_complete(shapes_ref, tmp_path,
                                                                        monkeypatch, capsys):
  config, builder = _copy_ref(shapes_ref, tmp_path)
  real_swap, seen = prepare._swap_in, {}  # pylint: disable=protected-access

  def checking_swap(new, dest):
    seen["old"] = _tables(config)  # the old one, still in place and whole
    assert (new / "dataset_info.json").exists() and dest == Path(builder.data_dir)
    real_swap(new, dest)

  monkeypatch.setattr(prepare, "_swap_in", checking_swap)
  argv = ["prepare", "shapes", *SHAPES_ARGS, "--data-dir", str(config.data_dir), "--force"]
  assert cli.main(argv) == 0
  assert "Already prepared" not in capsys.readouterr().out
  _assert_same_tables(seen["old"], shapes_ref["tables"])
  _assert_same(pipeline.get_builder(config), shapes_ref["records"])
  assert sorted(p.name for p in Path(builder.data_dir).parent.iterdir()) == ["1.0.0"]

  # A rebuild that fails (disk full) leaves the old output as it was.
  def full(builder, manual_dir):
    raise UserError("Disk full while writing; nothing was marked complete.")

  monkeypatch.setattr(prepare, "_generate", full)
  assert cli.main(argv) == 2
  assert "Disk full" in _one_error_line(capsys.readouterr().err)
  _assert_same(pipeline.get_builder(config), shapes_ref["records"])
  assert sorted(p.name for p in Path(builder.data_dir).parent.iterdir()) == ["1.0.0"]


def test_a_folder_without_dataset_info_is_rebuilt_not_reused(shapes_ref, tmp_path, capsys):
  config, builder = _copy_ref(shapes_ref, tmp_path)
  (Path(builder.data_dir) / "dataset_info.json").unlink()
  assert not pipeline.get_builder(config).is_prepared()
  assert cli.main(["prepare", "shapes", *SHAPES_ARGS, "--data-dir", str(config.data_dir)]) == 0
  capsys.readouterr()
  _assert_same(pipeline.get_builder(config), shapes_ref["records"])


# ------------------------------------------------------------------- killed prepares


def _paths(config) -> tuple[Path, Path]:
  """The prepare lock and the version folder of the dataset of ``config``."""
  builder = pipeline.get_builder(config)
  return Path(builder.data_dir).parent / prepare.LOCK_NAME, Path(builder.data_dir)


def _incomplete(config_dir: Path) -> set[Path]:
  """TFDS's folders of versions being written: a prepare's, or a --force rebuild's."""
  for _ in range(100):
    try:
      return set(config_dir.glob(prepare.INCOMPLETE_PREFIX + "*")) | set(
          config_dir.glob(f"{prepare.REBUILD_PREFIX}*/*/*/{prepare.INCOMPLETE_PREFIX}*"))
    except FileNotFoundError:  # a folder removed while we list it: look again
      time.sleep(0.001)
  raise AssertionError(f"cannot list {config_dir}")


def _kill(argv: list[str], config, log: Path, delay: float | None,
          trigger: str = "start") -> tuple[bool, dict]:
  """Runs `t2i ARGV` in a new process group and SIGKILLs it ``delay`` s (None: never) after
  ``trigger``: "start", when it has made its own incomplete.* folder (what comes before is
  imports), or "shard", when the first TFRecord file appears
  in that folder (TFDS generates in memory, then writes every file within a fraction of a
  second and renames the folder). Returns whether the kill landed while it ran, and the
  seconds from each trigger to the rename that completes the dataset.
  """
  _, version = _paths(config)
  old, new, t = _incomplete(version.parent), set(), {}  # leftovers of earlier kills
  with open(log, "w") as out:
    proc = subprocess.Popen([sys.executable, "-m", "t2i_jax.cli", *argv], stdout=out,
                            stderr=out, start_new_session=True)
  deadline = time.monotonic() + 180
  while proc.poll() is None:
    now = time.monotonic()
    assert now < deadline, "the prepare did not finish in 180 s"
    new = new or _incomplete(version.parent) - old
    if new and "start" not in t:
      t["start"] = now
    if new and "shard" not in t and any(any(q.glob("*.tfrecord*")) for q in new):
      t["shard"] = now
    if delay is not None and trigger in t and now - t[trigger] >= delay:
      break
    if new and "done" not in t and (version / "dataset_info.json").exists():
      t["done"] = now
    time.sleep(0.002)
  killed = proc.poll() is None
  try:
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 of the prepare and any worker it has
  except ProcessLookupError:
    pass
  proc.wait()
  if not killed:
    assert proc.returncode == 0, log.read_text()[-3000:]
  done = t.get("done", time.monotonic())
  return killed, {k: done - v for k, v in t.items() if k != "done"}


def _reference(argv: list[str], config) -> dict:
  """An uninterrupted `t2i ARGV` (in this process): its records, tables and writing time."""
  import tensorflow  # pylint: disable=import-outside-toplevel,unused-import
  import tensorflow_datasets  # pylint: disable=import-outside-toplevel,unused-import
  t0 = time.monotonic()
  assert cli.main(argv) == 0
  seconds = time.monotonic() - t0
  return {"config": config, "data_dir": Path(config.data_dir), "argv": argv,
          "records": _records(pipeline.get_builder(config)), "tables": _tables(config),
          "seconds": seconds}


def _kill_points(argv: list[str], config, ref, tmp_path: Path, points: int, seed: int,
                 force_every: int = 0, calibrate: bool = False) -> dict:
  """``points`` seeded random SIGKILLs of `t2i ARGV`, each checked, then a finishing rerun.

  Kill points alternate between two triggers (see ``_kill``): "shard", uniformly within
  1.5 times the time from the first TFRecord file to the rename (0.2 s, or measured), and
  "start", uniformly within 1.15 times the time from the incomplete.* folder to the rename
  (the in-process reference's plus 0.5 s, or measured). ``calibrate`` measures both on an
  uninterrupted run of the command first.
  """
  rng = random.Random(seed)
  data_dir = Path(config.data_dir)
  stats = {"tried": 0, "killed": 0, "killed_while_writing": 0, "force": 0, "shard": 0,
           "start": 0}
  window = {"start": ref["seconds"] + 0.5, "shard": 0.2 / 1.5}
  if calibrate:
    killed, window = _kill(argv, config, tmp_path / "calibrate.log", None)
    assert not killed and window.keys() == {"start", "shard"}, window
    _assert_same(pipeline.get_builder(config), ref["records"])
    shutil.rmtree(data_dir)
  for i in range(points):
    force = bool(force_every) and i % force_every == force_every - 1
    if force and not pipeline.get_builder(config).is_prepared():
      assert cli.main(argv) == 0
    trigger = "shard" if i % 2 == 0 else "start"
    scale = 1.5 if trigger == "shard" else 1.15
    delay = rng.uniform(0.0, scale * window[trigger])
    stats[trigger] += 1
    killed, _ = _kill(argv + (["--force"] if force else []), config, tmp_path / f"kill{i}.log",
                      delay, trigger)
    stats["tried"] += 1
    stats["killed"] += killed
    stats["force"] += force
    builder = pipeline.get_builder(config)
    if builder.is_prepared():
      _assert_same(builder, ref["records"])
      if force:
        stats["killed_while_writing"] += killed and delay < window[trigger]
      else:
        shutil.rmtree(data_dir)
    else:
      assert not force, f"--force killed after {delay:.2f} s lost the old dataset"
      stats["killed_while_writing"] += 1
      assert not Path(builder.data_dir).exists(), f"partial version folder after {delay:.2f} s"
  assert cli.main(argv) == 0  # the same command again finishes it
  builder = pipeline.get_builder(config)
  _assert_same(builder, ref["records"])
  _assert_same_tables(_tables(config), ref["tables"])
  leftovers = [p.name for p in Path(builder.data_dir).parent.iterdir()
               if p.name.startswith((prepare.INCOMPLETE_PREFIX, prepare.REBUILD_PREFIX))]
  assert not leftovers
  print(f"{argv[1]} kill points: {stats} (from start / first shard to complete: "
        f"{window['start']:.2f} s / {window['shard']:.2f} s)")
  return stats


@pytest.fixture(scope="module")
def flickr_ref(tmp_path_factory):
  """An uninterrupted `t2i prepare flickr8k` of the fixture corpus."""
  base = tmp_path_factory.mktemp("faults_flickr8k")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("T2I_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    src = fx.make_official_unzipped(base / "src")
    argv = ["prepare", "flickr8k", "--manual-dir", str(src), "--workers", "1",
            "--data-dir", str(base / "tfds")]
    yield {**_reference(argv, _flickr_config(base / "tfds", src)), "src": src}


def _shapes_kills(shapes_ref, tmp_path, points, seed, force_every, calibrate=False):
  data_dir = tmp_path / "tfds"
  argv = ["prepare", "shapes", *SHAPES_ARGS, "--data-dir", str(data_dir)]
  return _kill_points(argv, _shapes_config(data_dir), shapes_ref, tmp_path, points, seed,
                      force_every, calibrate)


def _flickr_kills(flickr_ref, tmp_path, points, seed, calibrate=False):
  data_dir = tmp_path / "tfds"
  argv = ["prepare", "flickr8k", "--manual-dir", str(flickr_ref["src"]), "--workers", "1",
          "--data-dir", str(data_dir)]
  return _kill_points(argv, _flickr_config(data_dir, flickr_ref["src"]), flickr_ref,
                      tmp_path, points, seed, calibrate=calibrate)


def test_killed_shapes_prepare_reruns_to_the_same_records(shapes_ref, tmp_path, capsys):
  stats = _shapes_kills(shapes_ref, tmp_path, points=2, seed=14, force_every=2)
  assert stats["tried"] == 2


def test_killed_flickr8k_prepare_reruns_to_the_same_records(flickr_ref, tmp_path, capsys):
  stats = _flickr_kills(flickr_ref, tmp_path, points=2, seed=14)
  assert stats["tried"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["shapes", "flickr8k"])
def test_many_kill_points(dataset, request, tmp_path):
  """T2I_KILL_POINTS=N (default 2): N seeded kill points per dataset (every third one of
  shapes with --force); prints how many landed while writing."""
  points = max(1, int(os.environ.get("T2I_KILL_POINTS", "2")))
  if dataset == "shapes":
    stats = _shapes_kills(request.getfixturevalue("shapes_ref"), tmp_path, points, 1400, 3,
                          calibrate=True)
  else:
    stats = _flickr_kills(request.getfixturevalue("flickr_ref"), tmp_path, points, 1400,
                          calibrate=True)
  assert stats["tried"] == points


def test_force_rebuilds_flickr8k_with_its_log_in_place(flickr_ref, tmp_path, capsys):
  """The rebuilt dataset's metadata names its prepare log where it ends up, not the
  temporary folder it was written in."""
  data_dir = tmp_path / "tfds"
  shutil.copytree(flickr_ref["data_dir"], data_dir)
  config = _flickr_config(data_dir, flickr_ref["src"])
  assert cli.main(["prepare", "flickr8k", "--manual-dir", str(flickr_ref["src"]), "--workers",
                   "1", "--data-dir", str(data_dir), "--force"]) == 0
  capsys.readouterr()
  builder = pipeline.get_builder(config)
  _assert_same(builder, flickr_ref["records"])
  log = Path(builder.info.metadata["log"])
  assert log.parent == Path(builder.data_dir).parent and log.is_file()
  assert sorted(p.name for p in log.parent.iterdir()) == ["1.0.0", "prepare_log.tsv"]
