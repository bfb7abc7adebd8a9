"""Tests for `t2i evaluate`: metric functions, the scene reader, the dual encoder, end to end.

Nothing here trains the full scene reader or dual encoder: readers are tiny (a few steps),
or an oracle that looks images up in the dataset's ground truth, which is what makes the
end-to-end checks exact. The full-accuracy check is marked slow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from t2i_jax import cli, evaluate, sample, train
from t2i_jax.data import pipeline, shapes
from t2i_jax.errors import UserError
from t2i_jax.evals import dual_encoder, scene_reader
from t2i_jax.evals import shapes as shapes_eval

import flickr8k_fixtures as fx
import tiny_runs

def tiny_train_config(data_dir, **changes):
  """test_train.py's tiny shapes run (40 images, tiny VAE, batch 8), one epoch."""
  return tiny_runs.tiny_config(data_dir, **changes)


# 64 steps of a tiny reader: enough to learn backgrounds and presence, not shapes.
TINY_READER = scene_reader.ReaderConfig(num_train=512, num_eval=64, epochs=4, batch_size=32,
                                        warmup_steps=4, widths=(8, 16, 32), patch_hidden=16)
# The user's cache, read before conftest points T2I_CACHE_DIR at a temporary folder.
USER_CACHE = os.environ.get("T2I_CACHE_DIR") or str(Path.home() / ".cache" / "t2i_jax")
TINY_DUAL = dual_encoder.DualConfig(widths=(4, 8, 16), text_hidden=16, embed_dim=8,
                                    batch_size=8, min_steps=3, max_steps=3)


# ---------------------------------------------------------------------- metric functions


def _truth(examples) -> dict[str, np.ndarray]:
  return scene_reader.stack_attributes([ex["attributes"] for ex in examples])


def test_real_scenes_satisfy_every_stated_attribute():
  examples = list(shapes.generate_split("compositional", num_images=400, stop=12))
  truth = _truth(examples)
  # One image per caption, as evaluate scores them.
  stated = np.concatenate([ex["stated"] for ex in examples])
  pred = {k: np.repeat(v, shapes.CAPTIONS_PER_IMAGE, axis=0) for k, v in truth.items()}
  scores = shapes_eval.shapes_scores(pred, stated)
  assert scores["all_stated_correct"] == (len(stated), len(stated))
  for group in shapes_eval.STATED_GROUPS:
    correct, total = scores[group]
    assert correct == total
  assert scores["shape"][1] >= len(stated) and scores["colour"][1] >= len(stated)
  # An empty scene satisfies no caption (every caption mentions an object).
  empty = {k: np.full_like(v, -1) if k != "present" else np.zeros_like(v)
           for k, v in pred.items()}
  assert shapes_eval.shapes_scores(empty, stated)["all_stated_correct"][0] == 0


def test_a_splits_real_images_are_read_once():
  """begin_split reads the real images for the reader's accuracy; scoring them as the
  'real' source reuses that read, and any other array (even equal) is read anew."""
  examples = list(shapes.generate_split("compositional", num_images=400, stop=6))
  truth = _truth(examples)
  reads = []

  class CountingReader:  # reads every image as its true scene, and counts the reads
    meta = {}

    def predict(self, images):
      reads.append(len(images))
      return {k: v[:len(images)] for k, v in truth.items()}

  table = dataclasses.make_dataclass("T", ["extras"])({
      "stated": np.stack([ex["stated"][0] for ex in examples]),
      **{f"attr_{k}": v for k, v in truth.items()}})
  real = np.stack([ex["image"] for ex in examples])
  evaluator = shapes_eval.ShapesEvaluator(reader=CountingReader())
  idx = np.arange(len(examples))
  entries = evaluator.begin_split("compositional", table, idx, real)
  assert reads == [6] and all(e["mean"] == 1.0 for e in entries)
  assert evaluator.score(real)["all_stated_correct"] == (6, 6) and reads == [6]
  assert evaluator.score(real.copy())["all_stated_correct"] == (6, 6) and reads == [6, 6]


def test_pooled_accuracy_agrees_with_attribute_accuracy():
  examples = list(shapes.generate_split("test", num_images=400, stop=10))
  truth = _truth(examples)
  rng = np.random.default_rng(0)
  pred = {k: v.copy() for k, v in truth.items()}
  pred["colour"][pred["present"] > 0] = rng.integers(0, 8, (pred["present"] > 0).sum())
  pred["present"][3, :] = 0  # a reader that misses everything in one image
  for k in ("shape", "colour", "size"):
    pred[k][3, :] = -1
  for i in range(len(examples)):
    one = scene_reader.pooled_accuracy({k: v[i:i + 1] for k, v in pred.items()},
                                       {k: v[i:i + 1] for k, v in truth.items()})
    ref = shapes_eval.attribute_accuracy(scene_reader.attributes_at(pred, i),
                                    scene_reader.attributes_at(truth, i))
    assert one == pytest.approx(ref)
  assert scene_reader.pooled_accuracy(truth, truth) == {k: 1.0 for k in (
      "present", "background", "shape", "colour", "size", "exact")}


def test_r_precision_identical_embeddings_is_one_and_random_is_chance():
  rng = np.random.default_rng(0)
  n = 3000
  groups = np.arange(n) // 2  # two captions per image, never each other's distractors
  cand = evaluate.r_precision_candidates(groups)
  assert cand.shape == (n, 100) and (cand[:, 0] == np.arange(n)).all()
  assert (groups[cand[:, 1:]] != groups[:, None]).all()
  assert all(len(set(row)) == 100 for row in cand[:50])
  text = rng.normal(size=(n, 16))
  hits = evaluate.r_precision_hits(text, text, cand)
  assert hits.all()
  f = evaluate.folds(hits)
  assert f.shape == (10,) and (f == 1.0).all()
  random_hits = evaluate.r_precision_hits(rng.normal(size=(n, 16)), text, cand)
  assert 0.002 < random_hits.mean() < 0.02  # chance is 1%
  assert evaluate.folds(random_hits).mean() == pytest.approx(random_hits.mean())
  # Small sets use every other image's caption as a distractor.
  assert evaluate.r_precision_candidates(np.array([0, 0, 1, 2])).shape == (4, 3)
  with pytest.raises(UserError, match="two different images"):
    evaluate.r_precision_candidates(np.zeros(3))


def test_frechet_distance():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(2000, 8))
  assert evaluate.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
  b = rng.normal(size=(2000, 8))
  same = evaluate.frechet_distance(a, b)
  shift = np.zeros(8)
  shift[0] = 3.0
  shifted = evaluate.frechet_distance(a, b + shift)
  assert same < 0.2 and shifted == pytest.approx(9.0 + same, abs=0.5)
  scaled = evaluate.frechet_distance(a, 2 * b)  # Tr(I + 4I - 2*2I) = 8
  assert scaled == pytest.approx(8.0, rel=0.1)
  # Fewer samples than dimensions: singular covariances still give a finite number.
  assert np.isfinite(evaluate.frechet_distance(a[:5], b[:5]))


def test_kid_is_an_unbiased_mmd_estimate():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(6, 3)), rng.normal(size=(5, 3))
  k = lambda u, v: (u @ v / 3 + 1) ** 3
  kxx = np.mean([k(x[i], x[j]) for i in range(6) for j in range(6) if i != j])
  kyy = np.mean([k(y[i], y[j]) for i in range(5) for j in range(5) if i != j])
  kxy = np.mean([k(x[i], y[j]) for i in range(6) for j in range(5)])
  assert evaluate.mmd2_unbiased(x, y) == pytest.approx(kxx + kyy - 2 * kxy)
  # Same distribution: the estimates scatter around zero (negative ones included).
  draws = [evaluate.mmd2_unbiased(rng.normal(size=(50, 4)), rng.normal(size=(50, 4)))
           for _ in range(200)]
  assert abs(np.mean(draws)) < 3 * np.std(draws) / np.sqrt(len(draws))
  assert min(draws) < 0
  assert evaluate.kid(rng.normal(size=(300, 4)), rng.normal(size=(300, 4)) + 1.0) > 0.5
  big = rng.normal(size=(400, 4))
  assert abs(evaluate.kid(big, rng.normal(size=(400, 4)), subset_size=100)) < 0.05


def test_caption_vectors_and_nearest_captions():
  text = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
  mask = np.array([[True, True, False], [True, False, False]])
  np.testing.assert_allclose(evaluate.caption_vectors(text, mask), [[1, 2], [6, 7]])
  flat = np.ones((2, 5), np.float32)
  assert evaluate.caption_vectors(flat, None) is not None
  pool = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  # Cosine, not distance: the long vector along x is nearest to pool row 0.
  np.testing.assert_array_equal(evaluate.nearest_captions(
      np.array([[10.0, 0.1], [0.0, -1.0], [-0.1, 3.0]]), pool), [0, 0, 1])


def test_entries_and_table():
  e = evaluate.entry("all_stated_correct", "test", "cvae", 1000, [0.5, 0.6, 0.7])
  assert {k: e[k] for k in ("name", "split", "model", "n", "seeds")} == {
      "name": "all_stated_correct", "split": "test", "model": "cvae", "n": 1000, "seeds": 3}
  assert e["mean"] == pytest.approx(0.6) and e["std"] == pytest.approx(0.1)
  assert evaluate.entry("x", "test", "real", 5, [1.0])["std"] == 0.0
  table = evaluate.format_table([e])
  assert "all_stated_correct" in table and "0.6000" in table


def test_pivot_puts_models_side_by_side():
  rs = [evaluate.entry("all_stated_correct", "test", "cvae", 100, [0.5, 0.7]),
        evaluate.entry("all_stated_correct", "test", "real", 100, [1.0]),
        evaluate.entry("r_precision", "test", "real", 100, [0.2], std_over="folds", std=0.05),
        evaluate.entry("reader_accuracy/shape", "test", "real", 100, [1.0])]
  lines = evaluate.format_pivot(rs).splitlines()
  assert lines[0].split() == ["split", "metric", "n", "cvae", "real"]
  assert lines[1].split() == ["test", "all_stated_correct", "100", "0.600", "±", "0.141",
                              "1.000"]  # one seed: no spread; a model without a row: "-"
  assert lines[2].split() == ["test", "r_precision", "100", "-", "0.200", "±", "0.050"]
  assert len(lines) == 3  # the reader's self-check is not a model's score
  md = evaluate.format_pivot(rs, markdown=True, names=["r_precision"]).splitlines()
  assert md[0] == "| split | metric | n | real |" and md[1] == "|---|---|---:|---:|"
  assert md[2] == "| test | r_precision | 100 | 0.200 ± 0.050 |"


# ---------------------------------------------------------------------------- the reader


def test_cell_crops_cover_their_cells():
  rows, cols = np.meshgrid(np.arange(64.0), np.arange(64.0), indexing="ij")
  x = np.stack([rows, cols], axis=-1)[None]  # each pixel holds its own coordinates
  crops = np.asarray(scene_reader.cell_crops(x))
  assert crops.shape == (1, 9, scene_reader.CROP, scene_reader.CROP, 2)
  for cell in range(9):
    r, c = divmod(cell, 3)
    for axis, k in ((0, r), (1, c)):
      lo, hi = int(np.floor(k * 64 / 3)), int(np.ceil((k + 1) * 64 / 3))  # pixels it touches
      seen = set(crops[0, cell, ..., axis].ravel().astype(int))
      assert set(range(lo, hi)) <= seen  # the whole cell...
      assert min(seen) >= lo - 2 and max(seen) <= hi + 1  # ...and at most 2 px around it


def test_object_patches_centre_the_object():
  object_patches = jax.jit(scene_reader.object_patches)
  for cell, shape in ((4, "cross"), (0, "triangle"), (8, "circle")):
    scene = shapes.Scene("gray", (shapes.Obj(shape, "red", "small", cell),))
    for seed in range(3):  # the renderer jitters the position inside the cell
      image = shapes.render(scene, np.random.default_rng(seed))[None] / 255.0
      patches = np.asarray(object_patches(image))
      assert patches.shape == (1, 9, scene_reader.PATCH, scene_reader.PATCH, 4)
      fg = np.maximum(patches[0, cell, ..., 3] - scene_reader.FG_THRESHOLD, 0)
      mid = scene_reader.PATCH // 2
      for axis in (0, 1):
        profile = fg.sum(axis=1 - axis)
        centre = (profile * np.arange(len(profile))).sum() / profile.sum()
        assert abs(centre - mid) <= 1.0
      # The whole object is inside the window; empty cells hold background only.
      assert fg.sum() == pytest.approx(np.maximum(
          np.linalg.norm(image[0] - np.array([95, 95, 95]) / 255, axis=-1)
          - scene_reader.FG_THRESHOLD, 0).sum(), rel=1e-4)
      other = (cell + 1) % 9
      assert patches[0, other, ..., 3].max() < 1e-3


def test_blur_and_augment():
  blur = jax.jit(scene_reader.gaussian_blur)  # one compilation, not one per primitive
  key = jax.random.key(0, impl="rbg")  # as training uses: fast to compile
  x = jax.random.uniform(key, (3, 64, 64, 3))
  np.testing.assert_allclose(blur(x, np.zeros(3)), x, atol=1e-6)
  blurred = blur(x, np.array([0.5, 1.0, 1.5]))
  assert float(blurred[2].std()) < float(blurred[1].std()) < float(blurred[0].std()) < float(
      x.std())
  const = np.full((3, 64, 64, 3), 0.3, np.float32)
  np.testing.assert_allclose(blur(const, np.array([1.2, 0.0, 2.0])), const, atol=1e-6)
  aug = jax.jit(scene_reader.augment, static_argnums=2)(key, x, scene_reader.ReaderConfig())
  assert aug.shape == x.shape and float(aug.min()) >= 0 and float(aug.max()) <= 1
  assert not np.allclose(aug, x)


def test_reader_renders_come_from_their_own_seed_namespace():
  images, attrs = scene_reader.render_set(1, 6)
  again, _ = scene_reader.render_set(1, 6)
  np.testing.assert_array_equal(images, again)
  data = [ex["image"] for ex in shapes.generate_split("train", num_images=400, stop=50)]
  digests = {hashlib.sha1(im.tobytes()).hexdigest() for im in data}
  assert not digests & {hashlib.sha1(im.tobytes()).hexdigest() for im in images}
  assert attrs["present"].shape == (6, 9) and attrs["background"].shape == (6,)
  held, held_attrs = scene_reader.render_set(2, 20, dataset_like=True)
  assert set(held_attrs["present"].sum(1)) <= {1, 2}


@pytest.fixture(scope="module")
def tiny_reader(tmp_path_factory):
  """TINY_READER trained once into a private cache: (reader, cache root)."""
  root = tmp_path_factory.mktemp("reader_cache")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("T2I_CACHE_DIR", str(root))
    yield scene_reader.get_scene_reader(cfg=TINY_READER, progress=False), root


@pytest.mark.slow  # moved to CI's slow pass: the default run stays near 8 min
def test_reader_trains_caches_and_reloads(tiny_reader, monkeypatch):
  reader, root = tiny_reader
  monkeypatch.setenv("T2I_CACHE_DIR", str(root))
  directory = scene_reader.cache_dir(TINY_READER)
  assert directory.parent == root / "scene_reader"
  assert sorted(p.name for p in directory.iterdir()) == ["meta.json", "params.npz"]
  meta = json.loads((directory / "meta.json").read_text())
  assert set(meta["heldout_accuracy"]) == {"present", "shape", "colour", "size", "background",
                                           "exact"}
  assert meta["key"] == TINY_READER.key() and meta["steps"] == 64
  np.load(directory / "params.npz", allow_pickle=False).close()  # arrays only, no pickle

  def refuse(*a, **k):
    raise AssertionError("trained again instead of loading the cache")

  monkeypatch.setattr(scene_reader, "train_scene_reader", refuse)
  again = scene_reader.get_scene_reader(cfg=TINY_READER)
  assert jax.tree.all(jax.tree.map(np.array_equal, again.params, reader.params))
  # Another config is another key; without training allowed, a one-line UserError.
  other = dataclasses.replace(TINY_READER, epochs=2)
  assert other.key() != TINY_READER.key()
  with pytest.raises(UserError, match="no trained scene reader"):
    scene_reader.get_scene_reader(train_if_missing=False, cfg=other)


def test_one_image_broadcast_over_a_batch_is_read_once(tiny_reader, monkeypatch):
  """The mean-image baseline's batch (one image, a zero stride) costs one read, and reads
  as its copies do."""
  reader, _ = tiny_reader
  images, _ = scene_reader.render_set(2, 2, seed=6, dataset_like=True)
  many = np.broadcast_to(images[1], (300, 64, 64, 3))
  rows, apply = [], scene_reader.aux_net.apply_batched
  monkeypatch.setattr(scene_reader.aux_net, "apply_batched",
                      lambda fn, params, x, size: rows.append(len(x)) or apply(fn, params, x, size))
  pred = reader.predict(many)
  assert rows == [1]
  copies = reader.predict(np.ascontiguousarray(many))
  assert rows == [1, 300]
  assert pred.keys() == copies.keys()
  for key, value in copies.items():
    np.testing.assert_array_equal(pred[key], value)


def test_spread_samples_start_with_the_seeds_images(monkeypatch):
  """open_cell_diversity's samples of a caption begin with the images its seeds already
  drew; only the rest are drawn, at SPREAD_SEED."""
  calls = []

  def fake_draw(method, params, frozen, text, *, n, seed, options):
    del method, params, frozen, options
    calls.append((len(text), n, seed))
    out = np.zeros((len(text), n, 64, 64, 3), np.uint8)
    out[..., 0, 0, 0] = text[:, :1]  # which caption
    out[..., 0, 0, 1] = seed % 251  # which seed
    out[..., 0, 0, 2] = np.arange(n)  # which sample of the call
    return out

  monkeypatch.setattr(sample, "draw", fake_draw)
  gen = dataclasses.make_dataclass("Gen", ["method", "params", "frozen"])(None, None, None)
  text = np.arange(10, dtype=np.float32)[:, None]
  rows = np.array([2, 5])
  fresh = evaluate._model_source("flow", gen, text, {})
  assert fresh.draw(rows, 8).shape == (2, 8, 64, 64, 3) and calls == [(2, 8, evaluate.SPREAD_SEED)]
  source = evaluate._model_source("flow", gen, text, {})
  seeds = [source.images(seed) for seed in range(3)]
  calls.clear()
  got = source.draw(rows, 8)
  assert calls == [(2, 5, evaluate.SPREAD_SEED)]
  np.testing.assert_array_equal(got[:, :3], np.stack([s[rows] for s in seeds], axis=1))
  np.testing.assert_array_equal(got[:, 3:, 0, 0, 1], evaluate.SPREAD_SEED % 251)
  np.testing.assert_array_equal(got[:, :, 0, 0, 0], [[2] * 8, [5] * 8])
  calls.clear()
  assert source.draw(rows, 2).shape == (2, 2, 64, 64, 3) and calls == []


@pytest.mark.slow  # moved to CI's slow pass: the default run stays near 8 min
def test_brief_training_reads_backgrounds_and_presence(tiny_reader):
  reader, _ = tiny_reader
  images, truth = scene_reader.render_set(2, 200, seed=5, dataset_like=True)
  pred = reader.predict(images)
  assert pred["present"].shape == (200, 9) and pred["background"].shape == (200,)
  assert ((pred["shape"] == -1) == (pred["present"] == 0)).all()
  acc = scene_reader.pooled_accuracy(pred, truth)
  assert acc["background"] > 0.9 and acc["present"] > 0.9, acc


@pytest.mark.slow
def test_full_reader_reads_clean_renders(monkeypatch):
  """Trains (or loads from the user's cache) the real reader: >= 99% per attribute."""
  monkeypatch.setenv("T2I_CACHE_DIR", USER_CACHE)
  reader = scene_reader.get_scene_reader()
  images, truth = scene_reader.render_set(2, 1000, seed=1, dataset_like=True)
  acc = scene_reader.pooled_accuracy(reader.predict(images), truth)
  for attr in scene_reader.ATTRIBUTES:
    assert acc[attr] >= 0.99, (attr, acc)


# ------------------------------------------------------------------------- end to end


class OracleReader:
  """Reads an image by looking it up among the dataset's images (unknown: an empty scene).

  With it the real test images must satisfy all their captions, which checks that images,
  captions and stated records stay aligned through evaluate.
  """

  def __init__(self, config):
    self.lookup = {}
    for split in shapes.SPLITS:
      table = pipeline.load_table(config, split)
      for pair in range(len(table)):
        key = table.images[table.image_index[pair]].tobytes()
        self.lookup[key] = {k: table.extras[f"attr_{k}"][pair]
                            for k in scene_reader.ATTRIBUTES}
    self.meta = {"heldout_accuracy": {k: 1.0 for k in scene_reader.ATTRIBUTES},
                 "heldout_images": 1}

  def predict(self, images):
    empty = {"present": np.zeros(9, np.int32), "shape": np.full(9, -1, np.int32),
             "colour": np.full(9, -1, np.int32), "size": np.full(9, -1, np.int32),
             "background": np.int32(-1)}
    rows = [self.lookup.get(np.asarray(im).tobytes(), empty) for im in images]
    return scene_reader.stack_attributes(rows)


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
  """The tiny shapes run of test_train.py (40 images), trained for one epoch."""
  base = tmp_path_factory.getbasetemp()
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("T2I_CACHE_DIR", str(base / "cache"))
    mp.setenv("T2I_DATA_DIR", str(base / "tfds"))
    config = tiny_train_config(base / "train_tfds")
    workdir = base / "eval_shapes_run"
    train.train_and_evaluate(config, workdir)
    yield {"workdir": workdir, "config": config}


@pytest.mark.slow  # moved to CI's slow pass: the default run stays near 8 min
def test_shapes_evaluation_end_to_end(shapes_run, tmp_path):
  out = tmp_path / "results.json"
  oracle = OracleReader(shapes_run["config"])
  report = evaluate.evaluate_run(shapes_run["workdir"], out=out, num=8, seeds=2,
                                 baseline_workdir=[shapes_run["workdir"]] * 2,
                                 reader=oracle, progress=False)
  saved = json.loads(out.read_text())
  assert saved["baseline_workdirs"] == [str(shapes_run["workdir"])] * 2
  assert saved["results"] == report["results"] and saved["dataset"] == "shapes"
  results = saved["results"]
  for r in results:
    assert {"name", "split", "model", "n", "mean", "std", "seeds"} <= set(r)
  by = {(r["name"], r["split"], r["model"]): r for r in results}
  models = {r["model"] for r in results if r["split"] == "test"}
  # Two baselines of the same model as the run: each gets its own name.
  assert models == {"model1", "baseline_model1", "baseline1_model1", "mean_image",
                    "retrieval", "real"}
  for split in ("test", "compositional"):
    real = by[("all_stated_correct", split, "real")]
    assert real["mean"] == 1.0 and real["n"] == 8 and real["seeds"] == 1
    assert by[("reader_accuracy/shape", split, "real")]["mean"] == 1.0
    gen = by[("all_stated_correct", split, "model1")]
    assert gen["seeds"] == 2 and gen["n"] == 8
    # Same model, same seeds, same captions: the baseline path gives the same numbers.
    assert by[("all_stated_correct", split, "baseline_model1")]["mean"] == gen["mean"]
    # Retrieval returns training images: the oracle reads them exactly, so whatever they
    # satisfy is the caption-similarity of the retrieved training caption.
    assert 0.0 <= by[("all_stated_correct", split, "retrieval")]["mean"] <= 1.0
    assert by[("stated_accuracy/shape", split, "real")]["n"] >= 8
  assert by[("all_stated_correct", "test", "mean_image")]["mean"] == 0.0
  for split in ("test", "compositional"):
    png = shapes_run["workdir"] / "eval" / f"shapes_{split}.png"
    # real, 2 samples each of the run and its two baselines, mean, retrieval
    g = sample.grid_layout(8, 9, col_labels=True)
    assert Image.open(png).size == (g["width"], g["height"])


@pytest.mark.slow  # moved to CI's slow pass: the default run stays near 8 min
def test_evaluate_command(shapes_run, tiny_reader, monkeypatch, capsys):
  monkeypatch.setattr(scene_reader, "get_scene_reader", lambda **kw: tiny_reader[0])
  assert cli.main(["evaluate", "--workdir", str(shapes_run["workdir"]), "--num", "4",
                   "--seeds", "1"]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  path = shapes_run["workdir"] / "eval" / "results.json"
  assert out[-1] == str(path)
  assert out[0].split() == ["split", "metric", "n", "model1", "mean_image", "retrieval", "real"]
  report = json.loads(path.read_text())
  assert report["options"] == {"sample_latent": True}  # model1 has no other sampling option
  assert {r["n"] for r in report["results"] if r["name"] == "all_stated_correct"} == {4}
  assert cli.main(["evaluate", "--workdir", str(shapes_run["workdir"]), "--num", "4",
                   "--seeds", "1", "--long"]) == 0
  assert capsys.readouterr().out.split()[:3] == ["split", "model", "name"]
  assert cli.main(["evaluate", "--workdir", str(shapes_run["workdir"]), "--seeds", "0"]) == 2
  assert "--seeds must be at least 1" in capsys.readouterr().err


@pytest.mark.slow  # moved to CI's slow pass: the default run stays near 8 min
def test_dual_encoder_trains_on_tiny_data_and_embeds():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
  params, meta = dual_encoder.train_dual_encoder(
      images, np.repeat(np.arange(6), 2), rng.normal(size=(12, 50)).astype(np.float32),
      TINY_DUAL, progress=False)
  assert meta["steps"] == 3 and meta["batch_size"] == 6 and np.isfinite(meta["final_loss"])
  enc = dual_encoder.DualEncoder(params, TINY_DUAL)
  feats, emb = enc.embed_images(images[:5])
  assert feats.shape == (5, 16) and emb.shape == (5, 8)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
  text = enc.embed_captions(["a dog runs on the grass", "two people ride bikes"])
  assert text.shape == (2, 8)
  # Matching pairs score lower InfoNCE loss than shuffled ones.
  a = jax.random.normal(jax.random.key(1), (8, 4))
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  assert dual_encoder.info_nce(a, a, np.log(10.0)) < dual_encoder.info_nce(a, a[::-1],
                                                                            np.log(10.0))


def test_judge_study_trains_on_a_subset_and_scores_test_and_train(tmp_path, capsys):
  from experiments import judge_flickr8k  # pylint: disable=import-outside-toplevel
  root = fx.make_official_unzipped(tmp_path / "corpus")
  tiny = ["--config.dual.widths=4,8,16", "--config.dual.text_hidden=16",
          "--config.dual.embed_dim=8", "--config.dual.batch_size=8",
          "--config.dual.min_steps=3", "--config.dual.max_steps=3"]
  base = [f"--config.data_dir={tmp_path / 'tfds'}", f"--config.manual_dir={root}"]
  assert judge_flickr8k.main(base + tiny + ["--config.train_images=2"]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  # Two of the fixture's three readable official train images, five captions each.
  assert (out["train_images"], out["train_pairs"], out["steps"]) == (2, 10, 3)
  assert out["dual"]["widths"] == [4, 8, 16] and "cores" in out["machine"]
  for side in ("test", "train"):
    assert 0.0 <= out[f"{side}_r_precision"] <= 1.0 and out[f"{side}_fold_std"] >= 0.0
  assert judge_flickr8k.main(base + tiny + ["--config.train_images=99"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: --config.train_images=99") and "\n" not in err


@pytest.mark.slow  # moved to CI's slow pass: the default run stays near 8 min
def test_flickr8k_evaluation_end_to_end(tmp_path, monkeypatch):
  root = fx.make_official_unzipped(tmp_path / "corpus")
  config = tiny_train_config(tmp_path / "tfds", dataset="flickr8k", manual_dir=str(root))
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, workdir)

  seen = {}

  def untrained(images, image_index, text, cfg, progress):
    """What get_dual_encoder trains on, and initial parameters (training is tested above)."""
    seen.update(images=len(images), pairs=len(image_index), dim=text.shape[1])
    net = dual_encoder.DualEncoderNet(cfg)
    params = net.init(jax.random.key(0), images[:1] / 255.0, text[:1])["params"]
    return params, {"steps": 0}

  monkeypatch.setattr(dual_encoder, "train_dual_encoder", untrained)
  dual = dual_encoder.get_dual_encoder(config, cfg=TINY_DUAL, progress=False)
  # The fixture's official train split: three readable images, five captions each.
  assert seen == {"images": 3, "pairs": 15, "dim": 50}
  assert dual.meta["data"]["train_images"] == 3 and dual.meta["steps"] == 0
  assert dual_encoder.get_dual_encoder(config, cfg=TINY_DUAL).meta == dual.meta  # cached
  report = evaluate.evaluate_run(workdir, num=None, seeds=2, dual=dual, progress=False)
  by = {(r["name"], r["model"]): r for r in report["results"]}
  assert {m for _, m in by} == {"model1", "mean_image", "retrieval", "real"}
  # The paper split tests caption #4; only the two readable official test images count.
  assert by[("r_precision", "real")]["n"] == 2 and by[("r_precision", "real")]["distractors"] == 1
  assert by[("r_precision", "model1")]["seeds"] == 2
  assert by[("r_precision", "model1")]["std_over"] == "folds"
  assert "captions #0-3 of the test images" in by[("r_precision", "retrieval")]["note"]
  for model in ("model1", "mean_image", "retrieval", "real"):
    assert np.isfinite(by[("FD_dual", model)]["mean"]) and ("KID_dual", model) in by
  assert "FID" not in json.dumps(report["results"])
  assert (workdir / "eval" / "flickr8k_test.png").is_file()

  # A baseline of another split scheme (the paper's, as for model 1): its test table holds
  # only caption #4, so its inputs come from the captions themselves, in its own encoding.
  official = tmp_path / "official"
  train.train_and_evaluate(tiny_train_config(tmp_path / "tfds", dataset="flickr8k",
                                             manual_dir=str(root), split_scheme="official"),
                           official)
  report = evaluate.evaluate_run(official, num=None, seeds=1, dual=dual, progress=False,
                                 baseline_workdir=workdir)
  by = {(r["name"], r["model"]): r for r in report["results"]}
  assert by[("r_precision", "baseline_model1")]["n"] == by[("r_precision", "model1")]["n"] > 2
