"""The ``t2i`` command: prepare data, train, sample, compare, plot, evaluate, loss.

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
    source = flickr8k.open_source(manual_dir)  # fail fast, in one line, on a wrong folder
    if args.strict:
      flickr8k.check_complete(source)
    flickr8k.PREPARE_OPTIONS.update(strict=args.strict, num_workers=args.workers)
  elif args.dataset == "folder":
    if not args.manual_dir:
      raise UserError("t2i prepare folder needs --manual-dir DIR: a folder with images/ and "
                      "captions.csv (or captions.jsonl).")
    from t2i_jax.data import folder  # pylint: disable=import-outside-toplevel
    cfg.image_mode = args.image_mode
    cfg.manual_dir = manual_dir = args.manual_dir
    cfg.folder_test_fraction = folder.check_test_fraction(args.test_fraction)
    folder.open_folder(manual_dir)  # fail fast, in one line, on a wrong folder
    folder.PREPARE_OPTIONS.update(strict=args.strict, num_workers=args.workers)
  else:
    cfg.num_images = args.num_images
    cfg.shapes_seed = args.seed
  builder = pipeline.get_builder(cfg)
  prepare.prepare(builder, manual_dir=manual_dir, force=args.force)


def _cmd_train(args) -> int:
  from t2i_jax import configs, train  # pylint: disable=import-outside-toplevel
  config = configs.load_config_module(args.config)
  return train.main_from_module(lambda: config, ["--workdir", args.workdir, *args.rest])


def _cmd_sample(args) -> None:
  from t2i_jax import sample  # pylint: disable=import-outside-toplevel
  n = args.n if args.n is not None else (1 if args.mean else 8)
  print(sample.sample_grid(args.workdir, args.captions, n=n, seed=args.seed, out=args.out,
                           npz=args.npz, sample_latent=False if args.mean else None,
                           step=args.step, **_sample_options(args)))


def _cmd_compare(args) -> None:
  from t2i_jax import sample  # pylint: disable=import-outside-toplevel
  path, ref = sample.compare_grid(args.workdir, num=args.num, n=args.n, seed=args.seed,
                                  out=args.out, data_dir=args.data_dir, step=args.step)
  print(f"the mean training image on all {ref['test_pairs']:,} test pairs (the collapse "
        f"reference): MSE {ref['mse']:.5f}, paper_accuracy {ref['paper_accuracy']:.3f}")
  print(path)


def _cmd_plot(args) -> None:
  from t2i_jax import plots  # pylint: disable=import-outside-toplevel
  print(plots.plot_curves(args.workdir, out=args.out))


def _cmd_evaluate(args) -> None:
  from t2i_jax import evaluate  # pylint: disable=import-outside-toplevel
  report = evaluate.evaluate_run(args.workdir, out=args.out, num=args.num, seeds=args.seeds,
                                 baseline_workdir=args.baseline_workdir,
                                 data_dir=args.data_dir, step=args.step,
                                 **_sample_options(args))
  if args.long:
    print(evaluate.format_table(report["results"]))
  else:
    print(evaluate.format_pivot(report["results"], markdown=args.markdown))
  print(report["path"])


def _cmd_loss(args) -> None:
  from t2i_jax import evaluate  # pylint: disable=import-outside-toplevel
  report = evaluate.loss_metrics(args.workdir, split=args.split, data_dir=args.data_dir,
                                 batch_size=args.batch_size, out=args.out, step=args.step)
  print(f"{report['workdir']} step {report['step']}, {report['split']} split "
        f"({int(report['metrics']['num_examples']):,} pairs):")
  for name, value in report["metrics"].items():
    if name != "num_examples":
      print(f"  {name} {value:.6g}")
  print(report["path"])


def _add_sample_options(parser: argparse.ArgumentParser) -> None:
  """The sampling options of every family; each run accepts those its family takes."""
  parser.add_argument("--temperature", type=float, default=None,
                      help="CVAE: scale of the prior's std when sampling z (default: the "
                      "run's config.sample_temperature)")
  parser.add_argument("--guidance", type=float, default=None,
                      help="flow: classifier-free guidance scale, 1 = the conditional model "
                      "(default: the run's config.sample_guidance)")
  parser.add_argument("--steps", type=int, default=None,
                      help="flow: ODE solver steps (default: the run's config.sample_steps)")
  parser.add_argument("--solver", default=None, help="flow: euler or heun (default: the "
                      "run's config.sample_solver)")
  parser.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                      help="flow: guide only the steps with LO <= t <= HI (t = 1 is noise), "
                      "the conditional model alone elsewhere; 0,1 = every step (default: "
                      "the run's config.sample_guidance_interval)")
  parser.add_argument("--time-shift", type=float, default=None, metavar="S",
                      help="flow: the solver's time grid t = S u / (1 + (S - 1) u) on uniform "
                      "u; S > 1 puts more steps near the noise end, 1 = uniform (default: "
                      "the run's config.sample_time_shift)")


def _sample_options(args) -> dict:
  return {"temperature": args.temperature, "guidance": args.guidance, "steps": args.steps,
          "solver": args.solver, "guidance_interval": args.guidance_interval,
          "time_shift": args.time_shift}


def _add_step(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--step", type=int, default=None,
                      help="a kept checkpoint's step (default: the latest; a wrong one lists "
                      "those kept)")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="t2i", description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest="command", required=True)

  pp = sub.add_parser("prepare", help="build a TFDS dataset of images + GloVe caption tensors")
  pp.add_argument("dataset", choices=["flickr8k", "shapes", "folder"],
                  help="folder: your own images/ + captions.csv or captions.jsonl")
  pp.add_argument("--data-dir", help="TFDS data folder (default: $T2I_DATA_DIR or "
                  "~/tensorflow_datasets)")
  pp.add_argument("--manual-dir", help="flickr8k, folder: folder with the images and captions")
  pp.add_argument("--glove", help="path to a GloVe .txt file (default: built-in GloVe 6B 50d)")
  pp.add_argument("--caption-mode", default="sum", choices=["sum", "mean", "sequence"])
  pp.add_argument("--max-len", type=int, default=32, help="sequence mode: words kept")
  pp.add_argument("--keep-stopwords", action=argparse.BooleanOptionalAction, default=None,
                  help="keep stopwords (default: kept for sequence mode, removed otherwise)")
  pp.add_argument("--caption-dtype", default="float32", choices=["float32", "float16"])
  pp.add_argument("--image-mode", default="paper", choices=["paper", "center_crop"])
  pp.add_argument("--strict", action="store_true",
                  help="flickr8k, folder: a missing or corrupt image is an error, not a skip")
  pp.add_argument("--test-fraction", type=float, default=0.05,
                  help="folder: share of the images in test, by a hash of each image's path "
                  "(config key folder_test_fraction)")
  pp.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
  pp.add_argument("--num-images", type=int, default=20000, help="shapes: images in all")
  pp.add_argument("--seed", type=int, default=0, help="shapes: generator seed")
  pp.add_argument("--force", action="store_true",
                  help="rebuild even if prepared (e.g. when damaged); the old output is "
                  "replaced only once the new one is complete")
  pp.set_defaults(func=_cmd_prepare)

  pt = sub.add_parser("train", help="train the experiment of a config file (resumes W)",
                      description="Trains get_config() of CONFIG with --config.KEY=VALUE "
                      "overrides; rerun the same command to resume.")
  pt.add_argument("config", help="a .py file with get_config(), or a module such as "
                  "experiments.model1")
  pt.add_argument("--workdir", required=True, help="folder for checkpoints and metrics")
  pt.set_defaults(func=_cmd_train, accepts_rest=True)

  ps = sub.add_parser("sample", help="a PNG grid of generated images for your captions")
  ps.add_argument("--workdir", required=True, help="a training run's folder")
  _add_step(ps)
  ps.add_argument("captions", nargs="+", help="captions in quotes, one grid row each")
  ps.add_argument("-n", type=int, default=None, help="images per caption (default 8; "
                  "1 with --mean)")
  ps.add_argument("--seed", type=int, default=0)
  _add_sample_options(ps)
  ps.add_argument("--out", help="PNG path (default: WORKDIR/samples/sample_<step>.png)")
  ps.add_argument("--npz", help="also write the images as uint8 [captions, n, 64, 64, 3] "
                  "with the captions to this .npz file")
  ps.add_argument("--mean", action="store_true",
                  help="decode the posterior mean instead of sampling z")
  ps.set_defaults(func=_cmd_sample, intermixed=ps)  # captions before or after the options

  pc = sub.add_parser("compare", help="test images beside samples from their captions")
  pc.add_argument("--workdir", required=True, help="a training run's folder")
  _add_step(pc)
  pc.add_argument("--num", type=int, default=8, help="test pairs (rows)")
  pc.add_argument("-n", "--n", dest="n", type=int, default=4, help="samples per pair")
  pc.add_argument("--seed", type=int, default=0, help="picks the pairs and the samples")
  pc.add_argument("--out", help="PNG path (default: WORKDIR/samples/compare_<step>.png)")
  pc.add_argument("--data-dir", help="where the run's dataset is prepared, if not where the "
                  "run's config says")
  pc.set_defaults(func=_cmd_compare)

  pl = sub.add_parser("plot", help="loss and accuracy curves per epoch as a PNG")
  pl.add_argument("--workdir", required=True, help="a training run's folder")
  pl.add_argument("--out", help="PNG path (default: WORKDIR/plots/curves.png)")
  pl.set_defaults(func=_cmd_plot)

  pe = sub.add_parser("evaluate", help="caption-following and quality metrics vs baselines",
                      description="Shapes: a scene reader checks every stated attribute; "
                      "Flickr8k: R-precision, FD_dual and KID_dual in a dual encoder's space. "
                      "Trains and caches the reader / encoder on first use.")
  pe.add_argument("--workdir", required=True, help="a training run's folder")
  _add_step(pe)
  pe.add_argument("--out", help="JSON path (default: WORKDIR/eval/results.json)")
  pe.add_argument("--num", type=int, default=1000, help="test pairs scored per split")
  pe.add_argument("--seeds", type=int, default=3, help="generation seeds (mean and std)")
  _add_sample_options(pe)
  pe.add_argument("--markdown", action="store_true", help="print the table as Markdown")
  pe.add_argument("--long", action="store_true",
                  help="print one line per result (with reader checks) instead of the table")
  pe.add_argument("--baseline-workdir", action="append",
                  help="another run (e.g. a paper model) to score beside it; repeat the flag "
                  "for several (e.g. the CVAE and model 1)")
  pe.add_argument("--data-dir", help="where the run's dataset is prepared, if not where the "
                  "run's config says")
  pe.set_defaults(func=_cmd_evaluate)

  pm = sub.add_parser("loss", help="the in-loop metrics (loss; flow: v_mse, caption_gain) "
                      "of a run's latest params over a split",
                      description="The family's in-loop evaluation over a whole split, on the "
                      "latest checkpoint (its EMA if kept), with the training loop's key: the "
                      "test split at the run's eval_batch_size gives its last in-loop numbers.")
  pm.add_argument("--workdir", required=True, help="a training run's folder")
  _add_step(pm)
  pm.add_argument("--split", default="test", help="train, test, compositional (shapes) or "
                  "dev (Flickr8k, official split)")
  pm.add_argument("--batch-size", type=int, help="evaluation batch (default: the run's "
                  "eval_batch_size; others change the per-batch noise)")
  pm.add_argument("--out", help="JSON path (default: WORKDIR/eval/loss_SPLIT.json)")
  pm.add_argument("--data-dir", help="where the run's dataset is prepared, if not where the "
                  "run's config says")
  pm.set_defaults(func=_cmd_loss)
  return p


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  parser = build_parser()
  args, rest = parser.parse_known_args(argv)
  if getattr(args, "intermixed", None) is not None:
    args, rest = args.intermixed.parse_intermixed_args(argv[1:]), []
  args.rest = rest
  if rest and not getattr(args, "accepts_rest", False):
    parser.error(f"unrecognized arguments: {' '.join(rest)}")
  try:
    status = args.func(args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted: nothing was marked complete; run the same command again to resume.",
          file=sys.stderr)
    return 130
  return status or 0


if __name__ == "__main__":
  sys.exit(main())
