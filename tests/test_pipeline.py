"""The tf.data pipeline over a prepared (tiny) shapes dataset."""

import os

import chex
import ml_collections
import numpy as np
import pytest

from t2i_jax.data import integrity, pipeline, prepare
from t2i_jax.errors import UserError


def _config(data_dir, **kw):
  c = ml_collections.ConfigDict({
      "dataset": "shapes", "data_dir": str(data_dir), "num_images": 60, "shapes_seed": 3,
      "caption_mode": "sequence", "max_caption_len": 12, "remove_stopwords": False,
      "caption_dtype": "float16", "glove": ""})
  c.update(kw)
  return c


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  cfg = _config(tmp_path_factory.mktemp("tfds"))
  summary = prepare.prepare(pipeline.get_builder(cfg), quiet=True)
  return cfg, summary


def test_prepare_summary_and_noop(prepared, capsys):
  cfg, summary = prepared
  assert summary["pairs_per_split"] == {"compositional": 15, "test": 15, "train": 270}
  assert summary["oov_rate"] == 0.0 and summary["tokens"] > 0
  again = prepare.prepare(pipeline.get_builder(cfg))
  assert "Already prepared" in capsys.readouterr().out
  assert again["pairs_per_split"] == summary["pairs_per_split"]


def test_preparing_says_preparing_not_downloading_and_drops_tfds_not_prepared_warning(
    tmp_path, capsys, caplog):
  cfg = _config(tmp_path, num_images=30, shapes_seed=11)
  prepare.prepare(pipeline.get_builder(cfg), quiet=True)
  out = capsys.readouterr().out
  assert "Preparing shapes/" in out and str(tmp_path) in out
  assert "Downloading" not in out and "downloaded" not in out
  assert not [r for r in caplog.records if "Variant folder" in r.getMessage()]
  # Only that one TFDS warning goes: the filter lets its other absl warnings through.
  from absl import logging as absl_logging
  absl_logging.warning("Variant folder %s has invalid version %s", "x", "y")
  assert [r for r in caplog.records if "invalid version" in r.getMessage()]


def test_table_dedupes_images(prepared):
  cfg, _ = prepared
  t = pipeline.load_table(cfg, "train")
  assert len(t) == 270 and t.images.shape == (54, 64, 64, 3)
  assert t.images.dtype == np.uint8 and t.text.shape == (270, 12, 50)
  # each image has its 5 captions, with indices 0..4
  for i in range(len(t.image_ids)):
    assert sorted(t.caption_index[t.image_index == i].tolist()) == [0, 1, 2, 3, 4]
  assert {"stated", "attr_present", "attr_background"} <= set(t.extras)


def test_stored_images_are_the_rendered_ones(prepared):
  """Each image is stored once as PNG (common.png_bytes) and reads back bit for bit."""
  from t2i_jax.data import shapes  # pylint: disable=import-outside-toplevel
  cfg, _ = prepared
  t = pipeline.load_table(cfg, "train")
  rendered = {e["image_id"]: e["image"] for e in shapes.generate_split(
      "train", num_images=60, seed=3)}
  assert sorted(rendered) == sorted(t.image_ids)
  for i, name in enumerate(t.image_ids):
    np.testing.assert_array_equal(t.images[i], rendered[name])


def test_a_table_is_read_once_per_process_until_its_files_change(prepared):
  """One run reads a split several times (each stage, the evaluation): the first read is
  shared, read-only, and a shard rewritten since is read again."""
  cfg, _ = prepared
  first = pipeline.load_table(cfg, "test")
  assert pipeline.load_table(cfg, "test") is first
  with pytest.raises(ValueError):
    first.images[0, 0, 0, 0] = 1
  with pytest.raises(ValueError):
    first.text[0] = 0.0
  path, _ = integrity.split_shards(pipeline.get_builder(cfg), "test")[0]
  st = path.stat()
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
  again = pipeline.load_table(cfg, "test")
  assert again is not first
  np.testing.assert_array_equal(again.text, first.text)
  np.testing.assert_array_equal(again.images, first.images)


def test_png_bytes_refuses_what_is_not_a_stored_image():
  from t2i_jax.data import common  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="uint8"):
    common.png_bytes(np.zeros((64, 64, 3), np.float32))
  with pytest.raises(ValueError, match="64, 64, 3"):
    common.png_bytes(np.zeros((32, 32, 3), np.uint8))
  once = common.PngOnce()
  a = np.full((64, 64, 3), 7, np.uint8)
  assert once("x", a) is once("x", a)  # the same image's pairs share one encoding
  assert once("y", a + 1) != once("x", a)


def _batches(table, **kw):
  return list(pipeline.iterate(table, **kw))


def test_batches_shapes_dtypes_and_determinism(prepared):
  cfg, _ = prepared
  t = pipeline.load_table(cfg, "train")
  a = _batches(t, batch_size=16, seed=1, epoch=0)
  assert len(a) == 270 // 16
  for b in a:
    chex.assert_shape(b["image"], (16, 64, 64, 3))
    chex.assert_type(b["image"], np.uint8)
    chex.assert_shape(b["text"], (16, 12, 50))
    chex.assert_type(b["text"], np.float32)
    chex.assert_shape(b["mask"], (16, 12))
  b2 = _batches(t, batch_size=16, seed=1, epoch=0)
  for x, y in zip(a, b2):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["text"], y["text"])
  other_epoch = _batches(t, batch_size=16, seed=1, epoch=1)
  other_seed = _batches(t, batch_size=16, seed=2, epoch=0)
  assert not np.array_equal(a[0]["text"], other_epoch[0]["text"])
  assert not np.array_equal(a[0]["text"], other_seed[0]["text"])


def test_start_step_resumes_exact_order(prepared):
  cfg, _ = prepared
  t = pipeline.load_table(cfg, "train")
  full = _batches(t, batch_size=8, seed=5, epoch=2)
  tail = _batches(t, batch_size=8, seed=5, epoch=2, start_step=7)
  assert len(tail) == len(full) - 7
  for x, y in zip(full[7:], tail):
    np.testing.assert_array_equal(x["text"], y["text"])
    np.testing.assert_array_equal(x["image"], y["image"])


def test_epoch_is_a_permutation_and_remainder(prepared):
  cfg, _ = prepared
  t = pipeline.load_table(cfg, "test")  # 15 pairs
  kept = _batches(t, batch_size=4, seed=0, shuffle=False, drop_remainder=False)
  assert [len(b["text"]) for b in kept] == [4, 4, 4, 3]
  np.testing.assert_array_equal(np.concatenate([b["text"] for b in kept]), t.text)
  perm = pipeline.epoch_permutation(len(t), seed=0, epoch=0)
  assert sorted(perm.tolist()) == list(range(len(t)))


def test_chunks_for_scan(prepared):
  cfg, _ = prepared
  t = pipeline.load_table(cfg, "train")
  chunks = _batches(t, batch_size=10, seed=0, chunk=4)
  assert [c["image"].shape[:2] for c in chunks] == [(4, 10)] * 6 + [(3, 10)]
  flat = _batches(t, batch_size=10, seed=0)
  np.testing.assert_array_equal(np.concatenate([c["text"] for c in chunks]),
                                np.stack([b["text"] for b in flat]))


def test_as_jax(prepared):
  import jax
  cfg, _ = prepared
  t = pipeline.load_table(cfg, "test")
  b = next(pipeline.iterate(t, batch_size=5, as_jax=True))
  assert isinstance(b["image"], jax.Array)


def test_interrupted_prepare_is_not_complete(tmp_path, monkeypatch):
  from t2i_jax.data import shapes
  cfg = _config(tmp_path, num_images=30, shapes_seed=9)
  real = shapes._render_chunk
  calls = {"n": 0}

  def dying(args):
    calls["n"] += 1
    if calls["n"] > 1:
      raise KeyboardInterrupt
    return real(args)

  monkeypatch.setattr(shapes, "_render_chunk", dying)
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare(pipeline.get_builder(cfg), quiet=True)
  assert not pipeline.get_builder(cfg).is_prepared()
  monkeypatch.setattr(shapes, "_render_chunk", real)
  s = prepare.prepare(pipeline.get_builder(cfg), quiet=True)
  assert sum(s["pairs_per_split"].values()) == 150


def test_length_split_grid_keeps_each_batch_and_puts_its_long_captions_first_in_each_shard():
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 25, 1003)
  grid = pipeline.epoch_permutation(1003, 1, 2)[:31 * 32].reshape(31, 32)
  long_count = (lengths[grid] > 16).sum(axis=1)
  out = pipeline.length_split_grid(grid, lengths, short_len=16, long_rows=24, num_devices=2)
  assert long_count.max() <= 24  # no batch overflows at this long_rows
  for before, after in zip(grid, out):  # the same batches, rows rearranged
    assert sorted(before.tolist()) == sorted(after.tolist())
  shards = out.reshape(31, 2, 16)  # [steps, devices, rows per device]
  assert (lengths[shards[:, :, 12:]] <= 16).all()  # each shard's first 12 rows: the long part
  assert not np.array_equal(out, grid)
  # Too few long rows for a batch: its excess swaps with short captions of other batches.
  tight = pipeline.length_split_grid(grid, lengths, short_len=16, long_rows=14, num_devices=2)
  assert sorted(tight.ravel().tolist()) == sorted(grid.ravel().tolist())  # no pair lost
  assert (lengths[tight.reshape(31, 2, 16)[:, :, 7:]] <= 16).all()
  moved = sum(sorted(a.tolist()) != sorted(b.tolist()) for a, b in zip(grid, tight))
  assert 0 < moved < 31
  np.testing.assert_array_equal(
      tight, pipeline.length_split_grid(grid, lengths, 16, 14, 2))  # a pure function
  with pytest.raises(UserError, match="raise split_long_rows to at least"):
    pipeline.length_split_grid(grid, lengths, short_len=16, long_rows=4, num_devices=2)
