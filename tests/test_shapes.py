"""Tests for the captioned-shapes dataset: determinism, rendering, captions, splits."""

from __future__ import annotations

import hashlib
import itertools
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from t2i_jax import glove
from t2i_jax import text as text_lib
from t2i_jax.data import shapes as S
from t2i_jax.evals import shapes as shapes_eval

_FAST = settings(max_examples=40, deadline=None)
_REL_WORDS = re.compile(r"\b(left of|right of|above|over|below|under|beneath|underneath)\b")
_REL_IDS = {"left of": 0, "right of": 1, "above": 2, "over": 2, "below": 3, "under": 3,
            "beneath": 3, "underneath": 3}


def _scenes(split: str, n: int, seed: int = 0):
  return [S.sample_scene(S.scene_rng(seed, split, i), split) for i in range(n)]


def _examples(split: str, n: int, seed: int = 0):
  return list(S.generate_split(split, num_images=100 * n, seed=seed, stop=n))


# ------------------------------------------------------------------------------ splits


@given(st.integers(0, 10**7))
def test_split_sizes_sum_to_num_images(n):
  sizes = S.split_sizes(n)
  assert set(sizes) == set(S.SPLITS)
  assert sum(sizes.values()) == n
  assert min(sizes.values()) >= 0
  assert sizes["test"] == sizes["compositional"] <= sizes["train"]


def test_default_split_sizes():
  assert S.split_sizes(20000) == {"train": 18000, "test": 1000, "compositional": 1000}


def test_generate_split_respects_split_size_and_range():
  assert len(list(S.generate_split("test", num_images=200))) == 10
  ids = [e["image_id"] for e in S.generate_split("train", num_images=200, start=3, stop=6)]
  assert ids == ["shapes_train_000003", "shapes_train_000004", "shapes_train_000005"]
  with pytest.raises(ValueError):
    next(S.generate_split("validation"))


def test_held_out_pairs_cover_every_colour_and_shape_in_training():
  frac = len(S.HELD_OUT) / (len(S.SHAPES) * len(S.COLOURS))
  assert 0.15 <= frac <= 0.20
  seen = [p for p in itertools.product(S.SHAPES, S.COLOURS) if p not in S.HELD_OUT]
  assert {s for s, _ in seen} == set(S.SHAPES)
  assert {c for _, c in seen} == set(S.COLOURS)


@pytest.mark.parametrize("split", ["train", "test"])
def test_held_out_pairs_never_in_train_or_test(split):
  pairs = {(o.shape, o.colour) for sc in _scenes(split, 3000) for o in sc.objects}
  assert not pairs & set(S.HELD_OUT)
  assert len(pairs) == len(S.SHAPES) * len(S.COLOURS) - len(S.HELD_OUT)  # all others seen


def test_compositional_scenes_always_contain_a_held_out_pair():
  scenes = _scenes("compositional", 2000)
  for sc in scenes:
    assert any((o.shape, o.colour) in S.HELD_OUT for o in sc.objects), sc
  used = {(o.shape, o.colour) for sc in scenes for o in sc.objects}
  assert set(S.HELD_OUT) <= used


# ------------------------------------------------------------------------- determinism


def _digest(examples) -> str:
  h = hashlib.sha256()
  for e in examples:
    h.update(e["image"].tobytes())
    h.update("|".join(e["captions"]).encode())
    h.update(e["stated"].tobytes())
  return h.hexdigest()


@_FAST
@given(st.integers(0, 2**32 - 1), st.sampled_from(S.SPLITS), st.integers(0, 900))
def test_scene_is_pure_function_of_seed_split_index(seed, split, i):
  a = next(S.generate_split(split, 20000, seed=seed, start=i, stop=i + 1))
  b = next(S.generate_split(split, 20000, seed=seed, start=i, stop=i + 1))
  assert a["image"].tobytes() == b["image"].tobytes()
  assert a["captions"] == b["captions"]
  np.testing.assert_array_equal(a["stated"], b["stated"])
  assert a["scene"] == b["scene"]


def test_resumed_generation_matches_one_pass():
  whole = list(S.generate_split("train", 2000, seed=3, stop=20))
  parts = (list(S.generate_split("train", 2000, seed=3, stop=7)) +
           list(S.generate_split("train", 2000, seed=3, start=7, stop=20)))
  assert _digest(whole) == _digest(parts)


def test_different_seed_or_split_differs():
  base = _examples("train", 20, seed=0)
  other_seed = _examples("train", 20, seed=1)
  other_split = _examples("test", 20, seed=0)
  assert _digest(base) != _digest(other_seed)
  assert sum(a["image"].tobytes() != b["image"].tobytes()
             for a, b in zip(base, other_seed)) >= 15
  assert sum(a["image"].tobytes() != b["image"].tobytes()
             for a, b in zip(base, other_split)) >= 15


def test_identical_across_processes():
  code = ("from t2i_jax.data import shapes as S; import hashlib\n"
          "h = hashlib.sha256()\n"
          "for e in S.generate_split('compositional', 2000, seed=7, stop=10):\n"
          "  h.update(e['image'].tobytes()); h.update('|'.join(e['captions']).encode())\n"
          "  h.update(e['stated'].tobytes())\n"
          "print(h.hexdigest())\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True).stdout.strip()
  assert out == _digest(S.generate_split("compositional", 2000, seed=7, stop=10))


# --------------------------------------------------------------------------- rendering


@_FAST
@given(st.integers(0, 2**31), st.sampled_from(S.SPLITS))
def test_image_shape_dtype_and_attributes_match_scene(seed, split):
  e = next(S.generate_split(split, 20000, seed=seed, stop=1))
  assert e["image"].shape == (64, 64, 3) and e["image"].dtype == np.uint8
  scene, attrs = e["scene"], e["attributes"]
  assert set(attrs) == {"present", "shape", "colour", "size", "background"}
  for key in ("present", "shape", "colour", "size"):
    assert attrs[key].shape == (9,) and attrs[key].dtype == np.int32
  assert attrs["background"].shape == ()
  assert S.BACKGROUNDS[int(attrs["background"])] == scene.background
  assert int(attrs["present"].sum()) == len(scene.objects) in (1, 2)
  cells = {o.cell for o in scene.objects}
  assert len(cells) == len(scene.objects)  # never two objects in one cell
  for o in scene.objects:
    assert S.SHAPES[attrs["shape"][o.cell]] == o.shape
    assert S.COLOURS[attrs["colour"][o.cell]] == o.colour
    assert S.SIZES[attrs["size"][o.cell]] == o.size
  for c in set(range(9)) - cells:
    assert attrs["present"][c] == 0
    assert attrs["shape"][c] == attrs["colour"][c] == attrs["size"][c] == -1


def test_render_is_anti_aliased():
  scene = S.Scene("black", (S.Obj("circle", "red", "big", 4),))
  img = S.render(scene)
  colours = {tuple(p) for p in img.reshape(-1, 3)}
  assert len(colours) > 2
  blends = colours - {S.COLOUR_RGB["red"], S.BACKGROUND_RGB["black"]}
  assert blends  # edge pixels mix object and background
  for p in blends:  # ... and lie between them, channel by channel
    lo = np.minimum(S.COLOUR_RGB["red"], S.BACKGROUND_RGB["black"])
    hi = np.maximum(S.COLOUR_RGB["red"], S.BACKGROUND_RGB["black"])
    assert np.all((np.array(p) >= lo) & (np.array(p) <= hi))


def test_objects_stay_inside_their_cells_and_are_visible():
  for sc in _scenes("train", 150) + _scenes("compositional", 50):
    img = S.render(sc).astype(int)
    bg = np.array(S.BACKGROUND_RGB[sc.background])
    changed = np.any(img != bg, axis=-1)
    allowed = np.zeros((64, 64), bool)
    for o in sc.objects:
      row, col = divmod(o.cell, 3)
      y0, y1 = int(np.floor(row * 64 / 3)), int(np.ceil((row + 1) * 64 / 3))
      x0, x1 = int(np.floor(col * 64 / 3)), int(np.ceil((col + 1) * 64 / 3))
      allowed[y0:y1, x0:x1] = True
      patch = img[y0:y1, x0:x1]
      solid = np.all(patch == np.array(S.COLOUR_RGB[o.colour]), axis=-1).sum()
      assert solid >= (15 if o.size == "small" else 100), (sc, o, solid)
    assert not np.any(changed & ~allowed), sc


def test_sizes_are_told_apart_by_area():
  areas = {"small": [], "big": []}
  for sc in _scenes("train", 300):
    img = S.render(sc)
    for o in sc.objects:
      row, col = divmod(o.cell, 3)
      patch = img[row * 21:row * 21 + 22, col * 21:col * 21 + 22].astype(int)
      areas[o.size].append(np.any(patch != S.BACKGROUND_RGB[sc.background], -1).sum())
  assert max(areas["small"]) < min(areas["big"])


def test_object_colours_contrast_with_every_background():
  for c, b in itertools.product(S.COLOUR_RGB.values(), S.BACKGROUND_RGB.values()):
    assert np.linalg.norm(np.subtract(c, b)) > 120, (c, b)
  assert set(S.COLOUR_RGB) == set(S.COLOURS) and set(S.BACKGROUND_RGB) == set(S.BACKGROUNDS)


# ---------------------------------------------------------------------------- captions


@pytest.fixture(scope="module")
def caption_examples():
  return (_examples("train", 200) + _examples("test", 50, seed=1) +
          _examples("compositional", 50, seed=2))


def test_every_caption_word_is_in_glove(caption_examples):
  vocab = glove.load()
  names = S.SHAPES + S.COLOURS + S.SIZES + S.BACKGROUNDS + S.CELLS + S.RELATIONS
  words = {w for n in names for w in n.split()}
  for e in caption_examples:
    for c in e["captions"]:
      words |= set(text_lib.clean_caption(c, remove_stopwords=False).split())
  assert len(words) > 50
  assert sorted(w for w in words if w not in vocab) == []


def test_five_captions_with_records(caption_examples):
  for e in caption_examples:
    assert len(e["captions"]) == 5 and all(e["captions"])
    assert e["stated"].shape == (5, S.STATED_LEN) and e["stated"].dtype == np.int32
    assert len(set(e["captions"])) == 5


def test_every_caption_is_true_of_its_scene(caption_examples):
  for e in caption_examples:
    for c, s in zip(e["captions"], e["stated"]):
      assert shapes_eval.caption_is_satisfied(e["attributes"], s), (c, S.decode_stated(s))
      assert shapes_eval.caption_is_satisfied(e["scene"], s)
      assert all(shapes_eval.caption_checks(e["attributes"], s).values()), c


def test_caption_text_matches_its_stated_record(caption_examples):
  size_words = {w for ws in S._SIZE_WORDS.values() for w in ws}
  for e in caption_examples:
    for c, s in zip(e["captions"], e["stated"]):
      d = S.decode_stated(s)
      words = set(c.split())
      assert ("background" in words) == (d["background"] is not None), c
      if d["background"] is not None:
        assert set(S._BG_WORDS[d["background"]]) & words, c
      assert bool(words & size_words) == any(m["size"] for m in d["mentions"]), c
      assert 1 <= len(d["mentions"]) <= len(e["scene"].objects)
      for m in d["mentions"]:
        assert m["colour"] in words, c
        assert any(w in c for w in S._SHAPE_WORDS[m["shape"]]), c
        if m["cell"] is not None:
          assert any(p in c for p in S._CELL_PHRASES[S.CELLS.index(m["cell"])]), c
      if d["count"] is not None:
        assert {"single", "two"} & words, c


def test_relational_captions_only_for_pairs_and_true_to_geometry(caption_examples):
  n_relational = 0
  for e in caption_examples:
    scene = e["scene"]
    rel_ids = [int(s[2]) for s in e["stated"]]
    if len(scene.objects) == 1:
      assert rel_ids == [-1] * 5
      assert not any(_REL_WORDS.search(c) for c in e["captions"])
      continue
    assert sum(r >= 0 for r in rel_ids) >= 2
    for c, s in zip(e["captions"], e["stated"]):
      found = _REL_WORDS.findall(c)
      if s[2] < 0:
        assert not found, c
        continue
      n_relational += 1
      assert len(found) == 1 and _REL_IDS[found[0]] == s[2], c
      # Find the two described objects independently and check the geometry.
      cells = []
      for m in (s[3:7], s[7:11]):
        match = [o for o in scene.objects
                 if S.SHAPES.index(o.shape) == m[0] and S.COLOURS.index(o.colour) == m[1]]
        assert len(match) == 1, c
        cells.append(divmod(match[0].cell, 3))
      (ra, ca), (rb, cb) = cells
      truth = {0: ca < cb, 1: ca > cb, 2: ra < rb, 3: ra > rb}[int(s[2])]
      assert truth, (c, scene)
  assert n_relational > 100


# -------------------------------------------------------------------------- evaluation


def _stated(bg=-1, count=-1, rel=-1, m0=(-1,) * 4, m1=(-1,) * 4) -> np.ndarray:
  return np.array([bg, count, rel, *m0, *m1], np.int32)


_SCENE = S.Scene("navy", (S.Obj("circle", "red", "big", 0), S.Obj("square", "blue", "small", 8)))
_CIRCLE = (S.SHAPES.index("circle"), S.COLOURS.index("red"), -1, -1)
_SQUARE = (S.SHAPES.index("square"), S.COLOURS.index("blue"), -1, -1)


@pytest.mark.parametrize("rel,ok", [(0, True), (1, False), (2, True), (3, False)])
def test_relation_semantics(rel, ok):
  assert shapes_eval.caption_is_satisfied(_SCENE, _stated(rel=rel, m0=_CIRCLE, m1=_SQUARE)) is ok
  assert shapes_eval.caption_checks(_SCENE, _stated(rel=rel, m0=_CIRCLE,
                                                    m1=_SQUARE))["relation"] is ok


def test_wrong_attributes_fail_their_captions():
  attrs = S.scene_attributes(_SCENE)
  assert shapes_eval.caption_is_satisfied(attrs, _stated(bg=2, count=2, m0=(*_CIRCLE[:2], 1, 0)))
  assert not shapes_eval.caption_is_satisfied(attrs, _stated(bg=0, m0=_CIRCLE))  # background
  assert not shapes_eval.caption_is_satisfied(attrs, _stated(count=1, m0=_CIRCLE))  # count
  assert not shapes_eval.caption_is_satisfied(attrs, _stated(m0=(*_CIRCLE[:2], 0, -1)))  # size
  assert not shapes_eval.caption_is_satisfied(attrs, _stated(m0=(*_CIRCLE[:3], 4)))  # cell
  # Two mentions need two distinct objects.
  assert not shapes_eval.caption_is_satisfied(attrs, _stated(m0=_CIRCLE, m1=_CIRCLE))
  checks = shapes_eval.caption_checks(attrs, _stated(m0=(*_CIRCLE[:2], 0, 0)))
  assert checks == {"obj0_shape": True, "obj0_colour": True, "obj0_size": False,
                    "obj0_cell": True, "all": False}


@_FAST
@given(st.integers(0, 2**31), st.integers(0, 4), st.integers(1, 7))
def test_perturbed_prediction_breaks_stated_colour(seed, k, shift):
  e = next(S.generate_split("train", 20000, seed=seed, stop=1))
  s = e["stated"][k]
  attrs = {key: v.copy() for key, v in e["attributes"].items()}
  m0 = s[3:7]
  cell = int(m0[3]) if m0[3] >= 0 else next(
      o.cell for o in e["scene"].objects
      if S.SHAPES.index(o.shape) == m0[0] and S.COLOURS.index(o.colour) == m0[1])
  attrs["colour"][cell] = (attrs["colour"][cell] + shift) % len(S.COLOURS)
  assert not shapes_eval.caption_is_satisfied(attrs, s), e["captions"][k]
  attrs = {key: v.copy() for key, v in e["attributes"].items()}
  attrs["present"][cell] = 0
  attrs["shape"][cell] = attrs["colour"][cell] = attrs["size"][cell] = -1
  assert not shapes_eval.caption_is_satisfied(attrs, s)


def test_attribute_accuracy():
  truth = S.scene_attributes(_SCENE)
  assert shapes_eval.attribute_accuracy(truth, _SCENE) == {
      "present": 1.0, "background": 1.0, "shape": 1.0, "colour": 1.0, "size": 1.0,
      "exact": 1.0}
  pred = {k: v.copy() for k, v in truth.items()}
  pred["colour"][0] = S.COLOURS.index("green")
  pred["present"][8] = 0
  pred["shape"][8] = pred["colour"][8] = pred["size"][8] = -1
  acc = shapes_eval.attribute_accuracy(pred, truth)
  assert acc["present"] == pytest.approx(8 / 9)
  assert acc["colour"] == 0.0 and acc["shape"] == 0.5 and acc["exact"] == 0.0
