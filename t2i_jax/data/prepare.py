"""Runs a TFDS builder once and prints the summary a user needs.

Preparing is idempotent: TFDS writes into an ``incomplete.*`` folder and renames it only
when every split is written, so an interrupted run (even by SIGKILL) is never mistaken for a
complete one, and running again on a complete output is a no-op that reprints the stored
summary. Leftovers of killed runs are removed by the next one, under a lock
(``CONFIG_DIR/.prepare.lock``) that makes a second prepare of the same dataset wait.

``force`` rebuilds a prepared (or damaged) dataset into a temporary folder next to it and
swaps it in only once complete: the old output stays usable until that moment.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from t2i_jax import workdir_lock
from t2i_jax.errors import UserError

LOCK_NAME = ".prepare.lock"
REBUILD_PREFIX = ".rebuild-"  # the temporary folder of a --force rebuild
INCOMPLETE_PREFIX = "incomplete."  # TFDS's temporary folder of a version being written


def summary(builder) -> dict[str, Any]:
  """The prepare summary, read back from the dataset's stored metadata."""
  info = builder.info
  meta = dict(info.metadata or {})
  return {
      "dataset": builder.name,
      "config": builder.builder_config.name,
      "path": str(builder.data_path),
      "pairs_per_split": {k: int(v.num_examples) for k, v in sorted(info.splits.items())},
      **meta,
  }


def format_summary(s: dict[str, Any]) -> str:
  lines = [f"{s['dataset']}/{s['config']} at {s['path']}",
           "  pairs per split: " + ", ".join(f"{k} {v:,}" for k, v in s["pairs_per_split"].items())]
  for key in ("paper_split", "official_split"):
    if key in s:
      lines.append(f"  {key.replace('_', ' ')}: " + ", ".join(f"{k} {v:,}" for k, v in s[key].items()))
  if "images_present" in s:
    lines.append(f"  images: {s['images_present']:,} written; {s.get('images_missing', 0):,} named by "
                 f"captions but absent; {s.get('images_corrupt', 0):,} corrupt or refused"
                 + (f" (listed in {s['log']})" if s.get("log") else ""))
  if "oov_rate" in s:
    lines.append(f"  GloVe {s.get('glove', '')}: {s.get('embedding_dim', '?')}d, OOV rate "
                 f"{100 * s['oov_rate']:.2f}% of {s.get('tokens', 0):,} tokens; "
                 f"{s.get('empty_captions', 0)} captions empty after cleaning, "
                 f"{s.get('all_oov_captions', 0)} entirely out of vocabulary")
  if "note" in s:
    lines.append(f"  note: {s['note']}")
  return "\n".join(lines)


def reload(builder, data_dir=None):
  """A fresh builder of the same dataset and config (reading what is on disk now)."""
  return type(builder)(config=builder.builder_config.name,
                       data_dir=str(data_dir or builder.data_dir_root))


def _leftovers(config_dir: Path) -> list[Path]:
  """Folders of prepares that were killed: TFDS's incomplete.* and our .rebuild-*."""
  return [p for p in (config_dir.iterdir() if config_dir.is_dir() else ())
          if p.is_dir() and p.name.startswith((INCOMPLETE_PREFIX, REBUILD_PREFIX))]


def _remove_leftovers(config_dir: Path) -> None:
  """Removes them; only while holding the prepare lock (no prepare is writing them)."""
  for p in _leftovers(config_dir):
    shutil.rmtree(p, ignore_errors=True)


def _tidy(config_dir: Path) -> None:
  """Removes leftovers next to a prepared dataset if no other prepare is running now."""
  if not _leftovers(config_dir):
    return
  lock = workdir_lock.FileLock(config_dir / LOCK_NAME)
  try:
    lock.acquire()
  except (workdir_lock.FileLock.Busy, OSError):
    return  # being written (e.g. a --force rebuild), or a read-only data dir
  try:
    _remove_leftovers(config_dir)
  finally:
    lock.release()


def _exchange(a: Path, b: Path) -> bool:
  """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.renameat2
  except (OSError, AttributeError):
    return False
  at_fdcwd, rename_exchange = -100, 2
  return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap_in(new: Path, dest: Path) -> None:
  """Puts the complete folder ``new`` at ``dest``; what was at ``dest`` ends up at ``new``."""
  if not dest.exists():
    os.rename(new, dest)
  elif not _exchange(new, dest):
    old = new.with_name(new.name + ".old")
    os.rename(dest, old)  # the only moment without a dataset at dest: between two renames
    os.rename(new, dest)
    os.rename(old, new)


def _relocate_strings(value, old: str, new: str):
  if isinstance(value, str):
    return value.replace(old, new)
  if isinstance(value, dict):
    return {k: _relocate_strings(v, old, new) for k, v in value.items()}
  if isinstance(value, list):
    return [_relocate_strings(v, old, new) for v in value]
  return value


def _generate(builder, manual_dir: str | None) -> None:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  tfds.disable_progress_bar()  # the builders show one tqdm bar of their own
  dl_config = tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  try:
    builder.download_and_prepare(download_config=dl_config)
  except OSError as e:
    if getattr(e, "errno", None) == 28:
      raise UserError(f"Disk full while writing {builder.data_dir}; nothing was marked complete. "
                      "Free space and run the same command again.") from None
    raise


def _rebuild(builder, manual_dir: str | None):
  """Builds into CONFIG_DIR/.rebuild-PID/ and swaps the result in once it is complete."""
  dest = Path(builder.data_dir)
  config_dir = dest.parent
  tmp_root = config_dir / f"{REBUILD_PREFIX}{os.getpid()}"
  shutil.rmtree(tmp_root, ignore_errors=True)
  try:
    fresh = reload(builder, tmp_root)
    _generate(fresh, manual_dir)
    new = Path(fresh.data_dir)
    tmp_config_dir = new.parent
    # Side files the builder wrote next to its version folder (Flickr8k's prepare_log.tsv)
    # and the paths to them in its metadata: from the temporary folder to the real one.
    meta = new / "metadata.json"
    if meta.exists():
      data = json.loads(meta.read_text(encoding="utf-8"))
      fixed = _relocate_strings(data, str(tmp_config_dir), str(config_dir))
      if fixed != data:
        tmp = meta.with_name("metadata.json.tmp")
        tmp.write_text(json.dumps(fixed), encoding="utf-8")
        os.replace(tmp, meta)
    for p in tmp_config_dir.iterdir():
      if p.is_file():
        os.replace(p, config_dir / p.name)
    _swap_in(new, dest)
  finally:
    shutil.rmtree(tmp_root, ignore_errors=True)  # the old version, after the swap


def prepare(builder, manual_dir: str | None = None, quiet: bool = False,
            force: bool = False) -> dict[str, Any]:
  """Prepares ``builder`` if needed (always with ``force``); returns (and prints) the summary."""
  if builder.is_prepared() and not force:
    _tidy(Path(builder.data_dir).parent)
    s = summary(builder)
    if not quiet:
      print("Already prepared (nothing to do).")
      print(format_summary(s))
    return s
  start = time.time()
  dest = Path(builder.data_dir)
  try:
    dest.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"Cannot create the data folder {builder.data_dir}: {e.strerror}; "
                    "pass a writable --data-dir.") from None
  with workdir_lock.hold_waiting(dest.parent / LOCK_NAME, f"preparing {dest}"):
    _remove_leftovers(dest.parent)
    if builder.is_prepared() and not force:  # another process prepared it while we waited
      return prepare(reload(builder), manual_dir=manual_dir, quiet=quiet)
    if force or dest.exists():  # a folder that exists but is not prepared is damaged
      _rebuild(builder, manual_dir)
      builder = reload(builder)
    else:
      _generate(builder, manual_dir)
  s = summary(builder)
  s["seconds"] = round(time.time() - start, 1)
  if not quiet:
    print(format_summary(s))
    print(f"  prepared in {s['seconds']:.1f} s")
    print(json.dumps({k: v for k, v in s.items() if not isinstance(v, dict)}))
  return s
