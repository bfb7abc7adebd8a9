"""`t2i prepare flickr8k`: the TFDS builder over every layout, and the shared real sample."""

from __future__ import annotations

import json

import chex
import ml_collections
import numpy as np
import pytest

import flickr8k_fixtures as fx
from t2i_jax import cli
from t2i_jax.data import pipeline


def _config(data_dir, manual_dir="", **kw):
  c = ml_collections.ConfigDict({
      "dataset": "flickr8k", "data_dir": str(data_dir), "manual_dir": str(manual_dir),
      "image_mode": "paper", "split_scheme": "paper", "glove": "", "caption_mode": "sum",
      "max_caption_len": 32, "remove_stopwords": True, "caption_dtype": "float32"})
  c.update(kw)
  return c


def _last_json(out: str) -> dict:
  return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])


@pytest.mark.parametrize("layout", sorted(fx.LAYOUT_BUILDERS))
def test_prepare_every_layout(layout, tmp_path, capsys):
  root = fx.LAYOUT_BUILDERS[layout](tmp_path / "src")
  rc = cli.main(["prepare", "flickr8k", "--manual-dir", str(root), "--data-dir",
                 str(tmp_path / "tfds"), "--workers", "1"])
  out = capsys.readouterr().out
  assert rc == 0, out
  s = _last_json(out)
  assert s["images_present"] == len(fx.VALID)
  assert s["images_corrupt"] == len(fx.BAD)
  assert s["images_missing"] >= len(fx.MISSING)
  log = (tmp_path / "tfds").rglob("prepare_log.tsv")
  text = next(log).read_text()
  for name in fx.BAD + fx.MISSING:
    assert name in text
  cfg = _config(tmp_path / "tfds")
  train, test = pipeline.load_table(cfg, "train"), pipeline.load_table(cfg, "test")
  assert len(test) == len(fx.VALID) and len(train) == 4 * len(fx.VALID)
  assert set(test.caption_index.tolist()) == {4}
  chex.assert_shape(train.images, (len(fx.VALID), 64, 64, 3))
  chex.assert_type(train.images, np.uint8)
  chex.assert_shape(train.text, (len(train), 50))
  # running it again is a no-op
  assert cli.main(["prepare", "flickr8k", "--manual-dir", str(root), "--data-dir",
                   str(tmp_path / "tfds")]) == 0
  assert "Already prepared" in capsys.readouterr().out


def test_official_split_never_trains_on_test_images(tmp_path, capsys):
  root = fx.make_official_unzipped(tmp_path / "src")
  assert cli.main(["prepare", "flickr8k", "--manual-dir", str(root), "--data-dir",
                   str(tmp_path / "tfds"), "--workers", "1", "--caption-mode", "sequence",
                   "--max-len", "8", "--glove", str(fx.write_glove(tmp_path / "g.txt"))]) == 0
  capsys.readouterr()
  cfg = _config(tmp_path / "tfds", split_scheme="official", caption_mode="sequence",
                max_caption_len=8, remove_stopwords=False, glove=str(tmp_path / "g.txt"))
  train, test = pipeline.load_table(cfg, "train"), pipeline.load_table(cfg, "test")
  assert not set(train.image_ids) & set(test.image_ids)
  chex.assert_shape(train.text, (len(train), 8, 4))
  assert train.mask is not None and train.mask.dtype == bool


def test_strict_and_wrong_folder(tmp_path, capsys):
  root = fx.make_official_unzipped(tmp_path / "src")
  rc = cli.main(["prepare", "flickr8k", "--manual-dir", str(root), "--data-dir",
                 str(tmp_path / "tfds"), "--workers", "1", "--strict"])
  err = capsys.readouterr().err
  assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
  assert not pipeline.get_builder(_config(tmp_path / "tfds")).is_prepared()
  (tmp_path / "empty").mkdir()
  for bad in (tmp_path / "nope", tmp_path / "empty"):
    rc = cli.main(["prepare", "flickr8k", "--manual-dir", str(bad), "--data-dir",
                   str(tmp_path / "tfds")])
    err = capsys.readouterr().err
    assert rc == 2 and "Flicker8k_Dataset" in err and err.count("\n") == 1


def test_training_requires_prepare_or_manual_dir(tmp_path):
  from t2i_jax.errors import UserError
  with pytest.raises(UserError, match="t2i prepare flickr8k"):
    pipeline.ensure_prepared(_config(tmp_path / "tfds"))


@pytest.mark.integration
def test_shared_sample_counts(flickr8k_dir, tmp_path, capsys):
  rc = cli.main(["prepare", "flickr8k", "--manual-dir", str(flickr8k_dir), "--data-dir",
                 str(tmp_path / "tfds")])
  out = capsys.readouterr().out
  assert rc == 0
  s = _last_json(out)
  assert s["images_present"] == 1003 and s["images_corrupt"] == 0
  assert s["images_missing"] == 7089  # 7,088 absent from the sample + the release's own
  assert "partial copy" in s["note"]
  assert "official split: train 3,770, dev 575, test 625" in out
  assert "paper split: train 4,012, test 1,003" in out
  assert 0 < s["oov_rate"] < 0.02
  cfg = _config(tmp_path / "tfds")
  assert len(pipeline.load_table(cfg, "train")) == 4012
  test = pipeline.load_table(cfg, "test")
  assert len(test) == 1003 and test.images.shape == (1003, 64, 64, 3)
  # paper mode letterboxes landscape photos: black rows at the top and bottom
  assert (test.images[:, 0].max(axis=(1, 2)) == 0).mean() > 0.5
