"""Flickr8k evaluation: R-precision, FD and KID in the dual encoder's spaces.

``Flickr8kEvaluator`` plugs the dual encoder (``evals.dual_encoder``, trained on the
official train split) into ``t2i_jax.evaluate``'s skeleton. Scored pairs are those of the
run's test split whose image is in the official test split, so the dual encoder never
trained on an evaluated image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t2i_jax import evaluate
from t2i_jax.errors import UserError


class Flickr8kEvaluator:
  """Dual-encoder metrics on the official test images (see ``t2i_jax.evaluate``).

  ``dual`` replaces the cached dual encoder (tests pass tiny ones).
  """

  dataset = "flickr8k"
  splits = ("test",)

  def __init__(self, dual=None, progress: bool = True):
    self.dual = dual
    self.progress = progress
    self.official = None
    self.pool_size = 0
    self.leaky = ""
    self.text_emb = self.candidates = self.real_feats = self.dev_feats = None

  def setup(self, config) -> list[dict[str, Any]]:
    """Loads (or trains) the dual encoder on the official train split."""
    from t2i_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    from t2i_jax.evals import dual_encoder  # pylint: disable=import-outside-toplevel
    self.official = dual_encoder.official_config(config)
    if self.dual is None:
      self.dual = dual_encoder.get_dual_encoder(
          self.official, table=pipeline.load_table(self.official, "train"),
          progress=self.progress)
    # Retrieval returns official-train images, on which the dual encoder itself trained
    # with their captions: it matches them to their (and so to similar) captions better
    # than any unseen image, so retrieval's R-precision is inflated, even above the real
    # test images. The paper split also trains on captions #0-3 of every image, test ones
    # included: retrieval (like any model that memorises) can then return the test image.
    self.leaky = ("retrieved images are the dual encoder's own training images: "
                  "R-precision inflated")
    if config.dataset == "flickr8k" and config.split_scheme == "paper":
      self.leaky += "; the retrieval pool holds captions #0-3 of the test images (paper split)"
    return []

  def eligible(self, table) -> np.ndarray:
    """The pairs whose image is in the official test split."""
    from t2i_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    test_ids = set(pipeline.load_table(self.official, "test").image_ids.tolist())
    in_test = np.array([i in test_ids for i in table.image_ids[table.image_index]])
    pool = np.flatnonzero(in_test)
    if len(pool) == 0:
      raise UserError("no pair of the run's test split has an image in the official test "
                      "split.")
    self.pool_size = len(pool)
    return pool

  def begin_split(self, split: str, table, idx: np.ndarray, real: np.ndarray
                  ) -> list[dict[str, Any]]:
    """Caption embeddings, R-precision candidates, the real images' features and the
    floor of FD/KID: as many dev-split images (never trained on by the dual encoder, never
    scored) against the same test images."""
    del split
    from t2i_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    self.text_emb = self.dual.embed_captions(table.captions[idx])
    self.candidates = evaluate.r_precision_candidates(table.image_ids[table.image_index[idx]])
    self.real_feats, _ = self.dual.embed_images(real)
    try:
      dev = pipeline.load_table(self.official, "dev")
      pick = np.random.default_rng([evaluate.SELECT_SEED, 0xDE5]).choice(
          len(dev), size=min(len(dev), len(idx)), replace=False)
      self.dev_feats, _ = self.dual.embed_images(dev.images[dev.image_index[pick]])
    except UserError:
      self.dev_feats = None
    return []

  def score(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One seed's images: (dual-encoder features, R-precision hits)."""
    feats, emb = self.dual.embed_images(images)
    return feats, evaluate.r_precision_hits(emb, self.text_emb, self.candidates)

  def entries(self, split: str, model: str, n: int,
              per_seed: list[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    """r_precision (std over folds), FD_dual and KID_dual against the real test images."""
    fold_scores, rp_seed, fds, kids = [], [], [], []
    for feats, hits in per_seed:
      fold_scores.append(evaluate.folds(hits))
      rp_seed.append(hits.mean())
      if model == "real":
        feats = self.dev_feats
      if feats is not None and len(feats) >= 2:
        fds.append(evaluate.frechet_distance(feats, self.real_feats))
        kids.append(evaluate.kid(feats, self.real_feats))
    fold_mean = np.mean(fold_scores, axis=0)
    note = {"note": self.leaky} if model == "retrieval" else {}
    out = [evaluate.entry(
        "r_precision", split, model, n, rp_seed, std_over="folds", std=float(fold_mean.std()),
        folds=len(fold_mean), distractors=self.candidates.shape[1] - 1,
        seed_std=float(np.std(rp_seed, ddof=1)) if len(rp_seed) > 1 else 0.0, **note)]
    if model == "real":
      note = {"note": "dev-split images against the test images: the floor at this n"}
    if fds:
      out.append(evaluate.entry("FD_dual", split, model, n, fds, **note))
      out.append(evaluate.entry("KID_dual", split, model, n, kids, **note))
    return out

  def meta(self) -> dict[str, Any]:
    return {"dual_encoder": {k: self.dual.meta.get(k) for k in (
        "cache_dir", "data", "steps", "train_s", "final_loss", "temperature")},
            "test_pairs_available": int(self.pool_size)}


class FolderEvaluator(Flickr8kEvaluator):
  """The same metrics for a captioned folder (``t2i_jax.data.folder``): the dual encoder
  trains on its train split and its whole test split is scored. It has no dev split, so the
  real images get no FD/KID floor."""

  dataset = "folder"


__all__ = ["Flickr8kEvaluator", "FolderEvaluator"]
