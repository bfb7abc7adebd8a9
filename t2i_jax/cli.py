"""The ``t2i`` command: prepare data, train, sample, compare, plot, evaluate.

Every user-facing failure is a :class:`t2i_jax.errors.UserError`; ``main`` prints its one
line as ``error: ...`` and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from t2i_jax.errors import UserError


def _cmd_prepare(args) -> None:
  import ml_collections  # pylint: disable=import-outside-toplevel
  from t2i_jax.data import pipeline, prepare  # pylint: disable=import-outside-toplevel
  cfg = ml_collections.ConfigDict({
      "dataset": args.dataset, "data_dir": args.data_dir or "", "glove": args.glove or "",
      "caption_mode": args.caption_mode, "max_caption_len": args.max_len,
      "remove_stopwords": (not args.keep_stopwords) if args.keep_stopwords is not None
                          else args.caption_mode != "sequence",
      "caption_dtype": args.caption_dtype,
  })
  manual_dir = None
  if args.dataset == "flickr8k":
    if not args.manual_dir:
      raise UserError("t2i prepare flickr8k needs --manual-dir DIR: the folder holding the "
                      "Flickr8k images and captions (unzipped, the two zips, or Kaggle layout).")
    cfg.image_mode = args.image_mode
    manual_dir = args.manual_dir
    from t2i_jax.data import flickr8k  # pylint: disable=import-outside-toplevel
    flickr8k.open_source(manual_dir)  # fail fast, in one line, on a wrong folder
    flickr8k.PREPARE_OPTIONS.update(strict=args.strict, num_workers=args.workers)
  else:
    cfg.num_images = args.num_images
    cfg.shapes_seed = args.seed
  builder = pipeline.get_builder(cfg)
  prepare.prepare(builder, manual_dir=manual_dir)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="t2i", description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest="command", required=True)

  pp = sub.add_parser("prepare", help="build a TFDS dataset of images + GloVe caption tensors")
  pp.add_argument("dataset", choices=["flickr8k", "shapes"])
  pp.add_argument("--data-dir", help="TFDS data folder (default: $T2I_DATA_DIR or "
                  "~/tensorflow_datasets)")
  pp.add_argument("--manual-dir", help="flickr8k: folder with the images and captions")
  pp.add_argument("--glove", help="path to a GloVe .txt file (default: built-in GloVe 6B 50d)")
  pp.add_argument("--caption-mode", default="sum", choices=["sum", "mean", "sequence"])
  pp.add_argument("--max-len", type=int, default=32, help="sequence mode: words kept")
  pp.add_argument("--keep-stopwords", action=argparse.BooleanOptionalAction, default=None,
                  help="keep stopwords (default: kept for sequence mode, removed otherwise)")
  pp.add_argument("--caption-dtype", default="float32", choices=["float32", "float16"])
  pp.add_argument("--image-mode", default="paper", choices=["paper", "center_crop"])
  pp.add_argument("--strict", action="store_true",
                  help="flickr8k: a missing or corrupt image is an error, not a skip")
  pp.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
  pp.add_argument("--num-images", type=int, default=20000, help="shapes: images in all")
  pp.add_argument("--seed", type=int, default=0, help="shapes: generator seed")
  pp.set_defaults(func=_cmd_prepare)
  return p


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  parser = build_parser()
  args, rest = parser.parse_known_args(argv)
  args.rest = rest
  if rest and not getattr(args, "accepts_rest", False):
    parser.error(f"unrecognized arguments: {' '.join(rest)}")
  try:
    args.func(args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted: nothing was marked complete; run the same command again to resume.",
          file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
