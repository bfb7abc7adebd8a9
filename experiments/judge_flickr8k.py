r"""How good can the Flickr8k judge (the dual encoder of t2i evaluate) get on this data?

Trains ``t2i_jax.evals.dual_encoder`` on the first ``train_images`` official train images
(a fixed random order) and scores the real images' R-precision (R@1 among 1 true + 99
random captions, as t2i evaluate does) on official *test* pairs and on pairs of its own
*train* images. The gap between the two says whether the judge is short of data or of
capacity; a run per size (``--config.train_images``) gives the learning curve.

Run: python -m experiments.judge_flickr8k --config.data_dir=DATA_DIR \
       --config.manual_dir=$T2I_FLICKR8K_FULL_DIR [--config.train_images=1500] \
       [--config.dual.max_steps=3000 ...]
The last line is JSON. Nothing is cached: t2i evaluate keeps its own cached judge.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import ml_collections
import numpy as np

from t2i_jax import configs, evaluate
from t2i_jax.errors import UserError


def get_config():
  r"""The judge of t2i evaluate (DualConfig defaults) on N official train images.

  Command:
    python -m experiments.judge_flickr8k --config.data_dir=DATA_DIR \
        --config.manual_dir=$T2I_FLICKR8K_FULL_DIR --config.train_images=N
  for N in 750, 1500, 3000, 0 (= all 6,000). Data: Flickr8k at 128 px (squashed), official
  split, centre crops at 64x64 (the prepared dataset of experiments.flow_flickr8k and
  cvae_flickr8k). Scored: 1,000 test pairs (the pairs t2i evaluate --num 1000 scores) and
  1,000 pairs of the training images; std over 10 folds.

  Measured (2-core Intel Xeon VM, 2026-12-03; README "The judge: how far it can go on this
  data"), with --config.dual.min_steps=1500 --config.dual.max_steps=1500: real test
  R-precision 4.3 / 5.5 / 8.0 / 9.3% (+- 2.5%) for 750 / 1,500 / 3,000 / 6,000 images,
  own-train 99.6 / 93.7 / 72.0 / 37.1%; batch 512 for 375 steps (the same passes) 8.6%.
  Run time: about 100 s of training on all 6,000 images on the idle VM (13-15 min shared).
  """
  c = ml_collections.ConfigDict()
  data = configs.flow_config("flickr8k")
  for key in configs.DATA_KEYS:
    c[key] = data[key]
  c.split_scheme = "official"
  c.image_mode = "center_crop"
  c.max_caption_len = 32
  c.train_images = 0  # 0 = every official train image (6,000 in the full corpus)
  c.num_pairs = 1000  # scored pairs per side (test, train)
  from t2i_jax.evals import dual_encoder  # pylint: disable=import-outside-toplevel
  c.dual = ml_collections.ConfigDict(dataclasses.asdict(dual_encoder.DualConfig()))
  return c


def _subset_table(table, num_images: int):
  """(images, image_index, captions) of the first ``num_images`` images of a fixed order."""
  order = np.random.default_rng([evaluate.SELECT_SEED, 0x7A1]).permutation(len(table.images))
  keep = np.sort(order[:num_images] if num_images else order)
  remap = np.full(len(table.images), -1, np.int64)
  remap[keep] = np.arange(len(keep))
  pairs = np.flatnonzero(remap[table.image_index] >= 0)
  return table.images[keep], remap[table.image_index[pairs]], table.captions[pairs]


def r_precision(dual, images: np.ndarray, image_index: np.ndarray, captions: np.ndarray,
                num: int) -> tuple[float, float]:
  """Real images' R-precision over ``num`` pairs (t2i evaluate's selection): mean, fold std."""
  idx = evaluate._subset(len(image_index), num)  # pylint: disable=protected-access
  candidates = evaluate.r_precision_candidates(image_index[idx])
  _, img = dual.embed_images(images[image_index[idx]])
  hits = evaluate.r_precision_hits(img, dual.embed_captions(captions[idx]), candidates)
  fold = evaluate.folds(hits)
  return float(hits.mean()), float(fold.std())


def run(config) -> dict:
  # pylint: disable=import-outside-toplevel
  from t2i_jax import bench
  from t2i_jax.data import pipeline
  from t2i_jax.evals import dual_encoder
  dual_kwargs = {k: (tuple(v) if isinstance(v, (list, tuple)) else v)
                 for k, v in config.dual.to_dict().items()}
  cfg = dual_encoder.DualConfig(**dual_kwargs)
  train = pipeline.load_table(config, "train")
  test = pipeline.load_table(config, "test")
  if config.train_images < 0 or config.train_images > len(train.images):
    raise UserError(f"--config.train_images={config.train_images}: choose 0 (all) to "
                    f"{len(train.images)}.")
  images, image_index, captions = _subset_table(train, config.train_images)
  t0 = time.perf_counter()
  params, meta = dual_encoder.train_dual_encoder(
      images, image_index, dual_encoder.caption_vectors(captions), cfg)
  dual = dual_encoder.DualEncoder(params=params, cfg=cfg, meta=meta)
  train_s = time.perf_counter() - t0
  test_rp, test_std = r_precision(dual, test.images, test.image_index, test.captions,
                                  config.num_pairs)
  train_rp, train_std = r_precision(dual, images, image_index, captions, config.num_pairs)
  return {"train_images": int(len(images)), "train_pairs": int(len(image_index)),
          "steps": meta["steps"], "passes": round(meta["steps"] * meta["batch_size"]
                                                  / len(images), 1),
          "final_loss": round(float(meta["final_loss"]), 3),
          "test_r_precision": round(test_rp, 4), "test_fold_std": round(test_std, 4),
          "train_r_precision": round(train_rp, 4), "train_fold_std": round(train_std, 4),
          "train_s": round(train_s, 1), "dual": dataclasses.asdict(cfg),
          "machine": bench.machine()}


def report(config) -> dict:
  """``run`` and a one-line summary before bench.main prints the machine and the JSON."""
  out = run(config)
  print(f"judge on {out['train_images']:,} train images ({out['train_pairs']:,} pairs), "
        f"{out['steps']} steps ({out['passes']} passes), {out['train_s']:.0f} s: real "
        f"R-precision test {out['test_r_precision']:.3f} +- {out['test_fold_std']:.3f}, "
        f"train {out['train_r_precision']:.3f} +- {out['train_fold_std']:.3f}")
  return out


def main(argv) -> int:
  from t2i_jax import bench  # pylint: disable=import-outside-toplevel
  return bench.main(get_config, report, argv)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
