"""Shared test setup: quiet TF, a private data/cache dir, the shared Flickr8k folders if set."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_GCE_CHECK", "true")


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path_factory, monkeypatch):
  """Keeps every test's GloVe cache and default data dir out of the user's home."""
  monkeypatch.setenv("T2I_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
  monkeypatch.setenv("T2I_DATA_DIR", str(tmp_path_factory.getbasetemp() / "tfds"))


def _shared_folder(var: str) -> Path:
  """The folder named by environment variable ``var``; skip when unset, fail when wrong."""
  d = os.environ.get(var)
  if not d:
    pytest.skip(f"{var} is not set")
  p = Path(d)
  if not p.is_dir():
    pytest.fail(f"{var}={d} is not a folder")
  return p


@pytest.fixture
def flickr8k_dir():
  """The real partial Flickr8k named by $T2I_FLICKR8K_DIR (set by .ci/run), else skip."""
  return _shared_folder("T2I_FLICKR8K_DIR")


@pytest.fixture
def flickr8k_full_dir():
  """All 8,091 Flickr8k images at 128 px, named by $T2I_FLICKR8K_FULL_DIR (set by .ci/run
  where the shared full-corpus folder exists), else skip."""
  return _shared_folder("T2I_FLICKR8K_FULL_DIR")
