"""Benchmark: prepare time and peak memory, then tf.data batches per second.

Command (shared Flickr8k sample, as in the README table):
  python -m experiments.bench_pipeline --config.dataset=flickr8k \
      --config.manual_dir=$T2I_FLICKR8K_DIR --config.data_dir=DATA_DIR
Or the built-in shapes set (default, 20,000 images):
  python -m experiments.bench_pipeline --config.data_dir=DATA_DIR

It prepares into ``data_dir`` (delete it to time a cold prepare; an already prepared set is
reported with prepare_seconds 0), loads the train split, and times ``epochs`` passes of the
pipeline at each batch size. The last line printed is JSON.
Measured: see get_config() and the README's benchmark tables.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """A cold prepare of one dataset, then tf.data batches per second at each batch size.

  Command: python -m experiments.bench_pipeline --config.data_dir=DATA_DIR (the built-in
  shapes; a new or empty DATA_DIR for a cold prepare).
  Measured (2-core AMD EPYC VM, alone, 2026-12-07, stop 50; README "Benchmarks"): shapes,
  20,000 images, 100,000 pairs prepared in 27.9 s (peak RSS of all processes 1.0 GB);
  batch 1 6,375 examples/s, in [256, 1] chunks 289,772, batch 64 209,605, batch 1024
  333,553; 37 s for the command. The shared Flickr8k sample (--config.dataset=flickr8k
  --config.manual_dir=$T2I_FLICKR8K_DIR): 5,015 pairs in 7.4 s, 11 s for the command.
  Before each image's PNG was encoded once (2026-12-04, idle): 86.9 s and 12.4 s.
  """
  return ml_collections.ConfigDict({
      "dataset": "shapes",
      "data_dir": "",
      "manual_dir": "",
      "image_mode": "paper",
      "split_scheme": "paper",
      "glove": "",
      "caption_mode": "sum",
      "max_caption_len": 32,
      "remove_stopwords": True,
      "caption_dtype": "float32",
      "num_images": 20000,
      "shapes_seed": 0,
      # (batch size, steps per chunk): chunk > 0 delivers [chunk, batch] blocks, as the
      # trainer's lax.scan consumes them; (1, 256) is the paper's batch-1 protocol.
      "batch_sizes": (1, 1, 64, 1024),
      "chunks": (0, 256, 0, 0),
      "max_batches": 20000,  # per batch size: caps the batch-1 pass
      # Flickr8k only: prepare a full-size stand-in (all 8,091 captioned names, each a
      # symlink to one of the images present), to measure the full corpus's time and memory
      # from a partial copy.
      "full_size_standin": False,
      "seed": 0,
  })


def make_standin(manual_dir: str, out: Path) -> Path:
  """A full-size Flickr8k folder: every captioned image name links to a present image."""
  from t2i_jax.data import flickr8k  # pylint: disable=import-outside-toplevel
  src = flickr8k.open_source(manual_dir)
  if src.layout != "official_unzipped":
    raise SystemExit("full_size_standin needs the unzipped official layout")
  present = sorted(src.image_names())
  images = out / "Flicker8k_Dataset"
  images.mkdir(parents=True, exist_ok=True)
  img_dir = Path(manual_dir) / "Flicker8k_Dataset"
  for i, name in enumerate(n for n in src.captioned_images() if n not in flickr8k.KNOWN_ABSENT):
    link = images / name
    if not link.exists():
      link.symlink_to((img_dir / present[i % len(present)]).resolve())
  text = out / "Flickr8k_text"
  if not text.exists():
    text.symlink_to((Path(manual_dir) / "Flickr8k_text").resolve())
  return out


def run(config) -> dict:
  from t2i_jax import bench  # pylint: disable=import-outside-toplevel
  from t2i_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  if config.dataset == "flickr8k" and config.full_size_standin:
    base = Path(config.data_dir or tempfile.gettempdir())
    config.manual_dir = str(make_standin(config.manual_dir, base / "flickr8k_standin"))
  builder = pipeline.get_builder(config)
  was_prepared = builder.is_prepared()
  t0 = time.perf_counter()
  with bench.TreePeakRSS() as tree:
    pipeline.ensure_prepared(config, builder)
  prep_s = 0.0 if was_prepared else time.perf_counter() - t0
  prep_mem = bench.peak_rss_mb()
  t0 = time.perf_counter()
  table = pipeline.load_table(config, "train", builder)
  load_s = time.perf_counter() - t0
  rows = []
  for bs, chunk in zip(config.batch_sizes, config.chunks):
    ds = pipeline.make_dataset(table, batch_size=bs, seed=config.seed, epoch=0, chunk=chunk)
    n = 0
    t0 = time.perf_counter()
    for i, batch in enumerate(ds.as_numpy_iterator()):
      n += batch["image"].shape[0] * (batch["image"].shape[1] if chunk else 1)
      if i + 1 >= config.max_batches:
        break
    dt = time.perf_counter() - t0
    rows.append({"batch_size": bs, "chunk": chunk, "examples": n, "seconds": round(dt, 3),
                 "examples_per_s": round(n / dt, 1)})
    print(f"batch {bs:5d} chunk {chunk:4d}: {n:7d} examples in {dt:6.2f} s = {n / dt:10.1f} examples/s")
  result = {
      "machine": bench.machine(), "dataset": builder.name, "config": builder.builder_config.name,
      "train_pairs": len(table), "distinct_images": int(table.images.shape[0]),
      "prepare_seconds": round(prep_s, 1), "already_prepared": was_prepared,
      "prepare_peak_rss_mb": prep_mem["peak_rss_mb"],
      "prepare_peak_tree_rss_mb": round(tree.peak_mb, 1),
      "load_seconds": round(load_s, 2), "rows": rows, **{
          f"final_{k}": v for k, v in bench.peak_rss_mb().items()},
  }
  return result


def main(argv: list[str]) -> int:
  from t2i_jax import bench  # pylint: disable=import-outside-toplevel
  return bench.main(get_config, run, argv)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
