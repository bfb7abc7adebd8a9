"""Shapes evaluation: caption-satisfaction scoring and the evaluator of ``t2i evaluate``.

A caption's stated record (``t2i_jax.data.shapes``) is checked against attributes in the
layout of ``shapes.scene_attributes``: the ground truth, or what the scene reader
(``evals.scene_reader``) reads off a generated image. ``caption_is_satisfied`` is the strict
verdict, ``caption_checks`` the per-attribute one, ``shapes_scores`` pools them over a set.
``ShapesEvaluator`` plugs them into ``t2i_jax.evaluate``'s skeleton.
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping

import numpy as np

from t2i_jax.data import shapes as S
from t2i_jax.evaluate import entry
from t2i_jax.data.shapes import STATED_BG, STATED_COUNT, STATED_REL

STATED_GROUPS = ("background", "count", "shape", "colour", "size", "cell", "relation")

# ---------------------------------------------------------------------- caption checks


def _as_attrs(attrs: Mapping[str, np.ndarray] | S.Scene) -> dict[str, np.ndarray]:
  if isinstance(attrs, S.Scene):
    return S.scene_attributes(attrs)
  return {k: np.asarray(v) for k, v in attrs.items()}


def _field_checks(attrs: Mapping[str, np.ndarray], mention: np.ndarray,
                  cell: int) -> dict[str, bool]:
  """Which stated fields of ``mention`` hold for the object predicted in ``cell``."""
  present = bool(attrs["present"][cell])
  out = {}
  for f, key in enumerate(("shape", "colour", "size")):
    if mention[f] >= 0:
      out[key] = present and int(attrs[key][cell]) == int(mention[f])
  if mention[3] >= 0:
    out["cell"] = present and cell == int(mention[3])
  return out


def _candidates(attrs: Mapping[str, np.ndarray], mention: np.ndarray) -> list[int]:
  cells = range(S.NUM_CELLS) if mention[3] < 0 else [int(mention[3])]
  return [c for c in cells
          if attrs["present"][c] and all(_field_checks(attrs, mention, c).values())]


def caption_is_satisfied(attrs_pred: Mapping[str, np.ndarray] | S.Scene,
                         stated: np.ndarray) -> bool:
  """True when every attribute the caption states holds in ``attrs_pred``.

  ``attrs_pred`` has the layout of ``shapes.scene_attributes`` (or is a ``Scene``). Mentions
  must map to distinct present cells matching all their stated fields, with the relation holding.
  """
  attrs = _as_attrs(attrs_pred)
  s = np.asarray(stated).reshape(-1)
  if s[STATED_BG] >= 0 and int(attrs["background"]) != int(s[STATED_BG]):
    return False
  if s[STATED_COUNT] >= 0 and int(np.sum(attrs["present"] > 0)) != int(s[STATED_COUNT]):
    return False
  mentions = S.stated_mentions(s)
  for cells in itertools.product(*(_candidates(attrs, m) for m in mentions)):
    if len(set(cells)) != len(cells):
      continue
    if s[STATED_REL] >= 0 and int(s[STATED_REL]) not in S.relations_between(*cells[:2]):
      continue
    return True
  return False


def caption_checks(attrs_pred: Mapping[str, np.ndarray] | S.Scene,
                   stated: np.ndarray) -> dict[str, bool]:
  """Per-attribute verdicts for one caption, for partial credit; keys only for stated items.

  ``background``, ``count``: as stated. ``obj{k}_{shape,colour,size,cell}``: judged on the
  object of the stated cell if mention k names one, else on the present object matching
  most of its stated fields (ties: lowest cell). ``relation``: holds between those two
  objects. ``all``: ``caption_is_satisfied`` (stricter than the conjunction of the rest
  only in that it searches every assignment).
  """
  attrs = _as_attrs(attrs_pred)
  s = np.asarray(stated).reshape(-1)
  out: dict[str, bool] = {}
  if s[STATED_BG] >= 0:
    out["background"] = int(attrs["background"]) == int(s[STATED_BG])
  if s[STATED_COUNT] >= 0:
    out["count"] = int(np.sum(attrs["present"] > 0)) == int(s[STATED_COUNT])
  chosen: list[int | None] = []
  for k, m in enumerate(S.stated_mentions(s)):
    if m[3] >= 0:
      cell = int(m[3])
    else:
      present = [c for c in range(S.NUM_CELLS) if attrs["present"][c]]
      cell = max(present, key=lambda c: (sum(_field_checks(attrs, m, c).values()), -c),
                 default=None)
    chosen.append(cell if cell is not None and attrs["present"][cell] else None)
    for key in ("shape", "colour", "size", "cell"):
      if m[("shape", "colour", "size", "cell").index(key)] >= 0:
        out[f"obj{k}_{key}"] = (cell is not None and
                                _field_checks(attrs, m, cell).get(key, False))
  if s[STATED_REL] >= 0:
    a, b = (chosen + [None, None])[:2]
    out["relation"] = (a is not None and b is not None and a != b and
                       int(s[STATED_REL]) in S.relations_between(a, b))
  out["all"] = caption_is_satisfied(attrs, s)
  return out


def attribute_accuracy(attrs_pred: Mapping[str, np.ndarray] | S.Scene,
                       attrs_true: Mapping[str, np.ndarray] | S.Scene) -> dict[str, float]:
  """Scene-level scores: presence over all 9 cells; shape/colour/size over true objects.

  An attribute of a true object counts as wrong if the reader finds the cell empty.
  ``exact`` is 1.0 only if the whole predicted scene (and background) is right.
  """
  p, t = _as_attrs(attrs_pred), _as_attrs(attrs_true)
  occupied = t["present"] > 0
  out = {"present": float(np.mean((p["present"] > 0) == occupied)),
         "background": float(int(p["background"]) == int(t["background"]))}
  for key in ("shape", "colour", "size"):
    ok = (p[key] == t[key]) & (p["present"] > 0)
    out[key] = float(np.mean(ok[occupied])) if occupied.any() else 1.0
  exact = out["present"] == 1.0 and out["background"] == 1.0 and all(
      out[k] == 1.0 for k in ("shape", "colour", "size"))
  out["exact"] = float(exact)
  return out


def shapes_scores(pred: Mapping[str, np.ndarray], stated: np.ndarray
                  ) -> dict[str, tuple[int, int]]:
  """(correct, stated) per attribute group, and ``all_stated_correct`` over captions.

  ``pred`` is a batched reader prediction, row i read off the image made for caption i.
  Mentions are pooled: ``shape`` counts obj0_shape and obj1_shape verdicts together.
  """
  from t2i_jax.evals.scene_reader import attributes_at  # pylint: disable=import-outside-toplevel
  counts = {g: [0, 0] for g in STATED_GROUPS}
  satisfied = 0
  for i in range(len(stated)):
    checks = caption_checks(attributes_at(pred, i), stated[i])
    satisfied += int(checks.pop("all"))
    for key, ok in checks.items():
      group = key.split("_", 1)[1] if key.startswith("obj") else key
      counts[group][0] += int(ok)
      counts[group][1] += 1
  out = {g: (c, t) for g, (c, t) in counts.items()}
  out["all_stated_correct"] = (satisfied, len(stated))
  return out


# ---------------------------------------------------------------------------- evaluator


# open_cell_diversity: samples per caption, and how many cell-open captions are drawn.
SPREAD_SAMPLES = 8
SPREAD_CAPTIONS = 200


class ShapesEvaluator:
  """Scene-reader metrics on the test and compositional splits (see ``t2i_jax.evaluate``).

  ``reader`` replaces the cached scene reader (tests pass tiny or oracle ones).
  """

  dataset = "shapes"
  splits = ("test", "compositional")

  def __init__(self, reader=None, progress: bool = True):
    self.reader = reader
    self.progress = progress
    self.stated = None
    self._real = None  # (the split's real images, what the reader read off them)

  def setup(self, config) -> list[dict[str, Any]]:
    """Loads (or trains) the reader; its held-out accuracy, as entries."""
    del config
    from t2i_jax.evals import scene_reader  # pylint: disable=import-outside-toplevel
    self.reader = self.reader or scene_reader.get_scene_reader(progress=self.progress)
    held = self.reader.meta.get("heldout_accuracy", {})
    return [entry(f"reader_accuracy/{attr}", "reader_heldout", "scene_reader",
                  self.reader.meta.get("heldout_images", 0), [held[attr]])
            for attr in scene_reader.ATTRIBUTES if attr in held]

  def eligible(self, table) -> np.ndarray:
    """Every pair of a split may be scored."""
    return np.arange(len(table))

  def begin_split(self, split: str, table, idx: np.ndarray, real: np.ndarray
                  ) -> list[dict[str, Any]]:
    """Keeps the captions' stated records; the reader's accuracy on the real images."""
    from t2i_jax.evals import scene_reader  # pylint: disable=import-outside-toplevel
    self.stated = table.extras["stated"][idx]
    truth = {k: table.extras[f"attr_{k}"][idx] for k in scene_reader.ATTRIBUTES}
    self._real = (real, self.reader.predict(real))
    acc = scene_reader.pooled_accuracy(self._real[1], truth)
    return [entry(f"reader_accuracy/{attr}", split, "real", len(idx), [acc[attr]])
            for attr in scene_reader.ATTRIBUTES]

  def score(self, images: np.ndarray) -> dict[str, tuple[int, int]]:
    """One seed's images: ``shapes_scores`` of what the reader reads off them (the split's
    real images, scored as a source too, are read once)."""
    if self._real is not None and images is self._real[0]:
      return shapes_scores(self._real[1], self.stated)
    return shapes_scores(self.reader.predict(images), self.stated)

  def entries(self, split: str, model: str, n: int, per_seed: list[dict[str, tuple[int, int]]]
              ) -> list[dict[str, Any]]:
    """Per attribute group (stated at least once) and all_stated_correct: mean over seeds."""
    del n  # each group counts its own stated items
    values: dict[str, list[float]] = {}
    totals: dict[str, int] = {}
    for scores in per_seed:
      for key, (correct, total) in scores.items():
        if total:
          values.setdefault(key, []).append(correct / total)
          totals[key] = total
    return [entry(key if key == "all_stated_correct" else f"stated_accuracy/{key}", split,
                  model, totals[key], v) for key, v in values.items()]

  def spread(self, split: str, model: str, draw) -> list[dict[str, Any]]:
    """open_cell_diversity: of the scored captions that state no cell, the share whose
    SPREAD_SAMPLES samples put objects in at least two different sets of cells.

    A model that averages the open choices draws the same (blurred) layout every time and
    scores near 0; one that samples a layout per draw scores near 1.
    """
    rows = np.array([i for i, stated in enumerate(self.stated)
                     if all(m[3] < 0 for m in S.stated_mentions(stated))][:SPREAD_CAPTIONS],
                    np.int64)
    if rows.size == 0:
      return []
    images = draw(rows, SPREAD_SAMPLES)
    present = self.reader.predict(images.reshape((-1,) + images.shape[2:]))["present"]
    present = np.asarray(present).reshape(rows.size, SPREAD_SAMPLES, -1)
    varied = [len({tuple(p) for p in present[r]}) >= 2 for r in range(rows.size)]
    return [entry("open_cell_diversity", split, model, rows.size, [float(np.mean(varied))],
                  seeds=1, samples_per_caption=SPREAD_SAMPLES)]

  def meta(self) -> dict[str, Any]:
    return {"scene_reader": {k: self.reader.meta.get(k) for k in (
        "key", "cache_dir", "heldout_accuracy", "heldout_images", "train_s", "total_s",
        "cpu_s")}}


__all__ = ["STATED_GROUPS", "ShapesEvaluator", "attribute_accuracy", "caption_checks",
           "caption_is_satisfied", "shapes_scores"]
