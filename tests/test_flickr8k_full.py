"""The whole Flickr8k at 128 px (squashed), named by $T2I_FLICKR8K_FULL_DIR (set by .ci/run).

Skipped where the folder is absent. The fast test reads the index and a spread of images;
the slow one prepares the whole corpus with `t2i prepare` and holds it to issue 12's
memory bound (peak RSS of the whole process tree below 2 GB).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from t2i_jax.data import flickr8k

PREPARE_RSS_LIMIT = 2 * 1024**3  # issue 12: preparing the full set stays below 2 GB


@pytest.fixture
def full(flickr8k_full_dir) -> flickr8k.Source:
  return flickr8k.open_source(flickr8k_full_dir)


@pytest.mark.integration
def test_full_corpus_index_counts_and_images(full):
  assert full.layout == "official_unzipped"
  present = full.image_names()
  assert len(present) == flickr8k.NUM_IMAGES
  for scheme, expected in flickr8k.SPLIT_PAIRS.items():
    assert flickr8k.count_pairs(full.pairs, scheme, full.split_lists, present) == expected
  assert flickr8k.count_images(full.pairs, "official", full.split_lists, present) == {
      "train": 6000, "dev": 1000, "test": 1000}
  # A spread of 40 images: each decodes as 128x128 RGB and preprocesses to 64x64x3 uint8.
  names = sorted(present)[::len(present) // 40][:40]
  for name in names:
    data = full.open_image_bytes(name)
    with Image.open(io.BytesIO(data)) as im:
      assert im.size == (128, 128) and im.mode == "RGB"
    for mode in flickr8k.IMAGE_MODES:
      img = flickr8k.preprocess(data, mode)
      assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.std() > 0


def _tree_rss(root: int) -> int:
  """Resident bytes of ``root`` and all its descendants, from /proc (Linux)."""
  children: dict[int, list[int]] = {}
  rss: dict[int, int] = {}
  for d in Path("/proc").iterdir():
    if not d.name.isdigit():
      continue
    try:
      stat = (d / "stat").read_text()
      ppid = int(stat.rsplit(")", 1)[1].split()[1])
      pages = int((d / "statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
      continue
    pid = int(d.name)
    children.setdefault(ppid, []).append(pid)
    rss[pid] = pages * os.sysconf("SC_PAGE_SIZE")
  total, todo = 0, [root]
  while todo:
    pid = todo.pop()
    total += rss.get(pid, 0)
    todo.extend(children.get(pid, []))
  return total


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc (Linux)")
def test_preparing_the_full_corpus_stays_below_2gb(flickr8k_full_dir, tmp_path):
  cmd = [sys.executable, "-m", "t2i_jax.cli", "prepare", "flickr8k", "--manual-dir",
         str(flickr8k_full_dir), "--data-dir", str(tmp_path / "data")]
  start = time.monotonic()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  peak = [0]
  done = threading.Event()

  def watch():
    while not done.is_set():
      peak[0] = max(peak[0], _tree_rss(proc.pid))
      done.wait(0.2)

  watcher = threading.Thread(target=watch, daemon=True)
  watcher.start()
  out, _ = proc.communicate(timeout=1800)
  done.set()
  watcher.join()
  elapsed = time.monotonic() - start
  assert proc.returncode == 0, out[-2000:]
  assert "train 32,364" in out and "test 8,091" in out, out[-2000:]
  assert "8,091 written" in out, out[-2000:]
  assert 0 < peak[0] < PREPARE_RSS_LIMIT, f"peak RSS {peak[0] / 2**20:.0f} MB"
  print("\n" + json.dumps({"prepare_full_seconds": round(elapsed, 1),
                           "peak_tree_rss_mb": round(peak[0] / 2**20)}))
