"""Benchmark: images per second of a trained run's sampler, at each sampling setting.

Command (the README's sampling speeds):
  python -m experiments.bench_sample --config.workdir=runs/flow_shapes

It loads the run's latest checkpoint (a two-stage folder samples from its final stage) and,
for the run's own setting and every setting of the sweep (``guidance`` at the run's steps,
``steps`` at the run's guidance), draws ``num_images`` images once (compilation included:
``first_s``), then ``rounds`` more times with other seeds; the best of those is the
throughput. Captions are ``captions`` repeated, so the number is about the sampler, not the
text. The last line printed is JSON.
"""

from __future__ import annotations

import sys
import time

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  r"""Sampling speed of a finished run, per (guidance, steps).

  Command:
    python -m experiments.bench_sample --config.workdir=runs/flow_shapes
  (a family without guidance or steps, such as the CVAE: add --config.guidance='()'
  --config.steps='()' to time its own setting alone).

  On several devices each draw's rows split over them (sample.draw): the quickstart's run
  of stop 51 at its own setting (--config.guidance='()' --config.steps='()'; Euler 10
  shifted steps, guidance 4; idle 2-core AMD EPYC VM, 2026-12-07 12:57 UTC): 376 images/s
  on one device, 750 with JAX_NUM_CPU_DEVICES=2.
  Measured (idle 2-core AMD EPYC VM, 2026-12-06 02:30 UTC; the experiments.flow_shapes
  default's cold-timed run of stop 38, width 160, step 6,800; 2.8 min in all, peak RSS
  1.0 GB): Euler 20 steps 50.4 images/s at guidance 7, 87.7 at 1; at guidance 7, 212
  images/s with 4 steps, 33.2 with 32.
  Earlier (idle 2-core AMD EPYC VM, 2026-12-05; the then default's run at width 128, step
  8,000; 1.8 min in all, peak RSS 1.0 GB): Euler 20 steps 81.2 images/s at guidance 7,
  142.6 at 1; at guidance 7, 304 images/s with 4 steps, 51.0 with 32.
  Earlier (idle 2-core AMD EPYC VM, 2026-12-04; the experiments.flow_shapes run at
  t_mean 0, step 7,000: the default's sampling work, t_mean only moves training's t; 3.1 min in all, peak RSS 1.0 GB): Euler 20 steps 54.9 images/s at guidance 7,
  107.7 at 1; at guidance 7, 199 images/s with 4 steps, 38.0 with 32.
  Earlier (idle 2-core Intel Xeon VM, 2026-12-03; the previous 60-minute experiments.flow_shapes
  run, step 7,000; 256 images per draw, best of 3; 3.1 min in all, peak RSS 1.1 GB):
  Euler 20 steps 56.3 images/s at guidance 3, 57.3 at 7, 85.8 at 1 (one pass per step);
  at guidance 3, 249 images/s with 4 steps, 35.7 with 32; the first (compiling) draw of
  each setting 5-11 s. Every row: the README's sweep table.
  """
  return ml_collections.ConfigDict({
      "workdir": "",  # the training run (or two-stage folder) to sample from; required
      "guidance": (1.0, 2.0, 4.0, 7.0),  # each at the run's own steps
      "steps": (4, 8, 16, 32),  # each at the run's own guidance
      "num_images": 256,  # per timed draw
      "rounds": 3,  # timed draws per setting, after the first (compiling) one
      "captions": ("a red circle above a blue square",
                   "a big green triangle in the top left corner",
                   "a small white cross at the bottom on a gray background",
                   "a purple diamond to the left of an orange circle"),
  })


def settings(defaults: dict, config) -> list[dict]:
  """The run's own options first, then the sweep's; each option set once."""
  rows = [dict(defaults)]
  rows += [dict(defaults, guidance=float(g)) for g in config.guidance]
  rows += [dict(defaults, steps=int(s)) for s in config.steps]
  unique = []
  for row in rows:
    if row not in unique:
      unique.append(row)
  return unique


def run(config) -> dict:
  from t2i_jax import bench, sample  # pylint: disable=import-outside-toplevel
  from t2i_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  if not config.workdir:
    raise UserError("pass the run to sample from: --config.workdir=WORKDIR.")
  if config.num_images < 1 or config.rounds < 1 or not config.captions:
    raise UserError("num_images and rounds must be at least 1, and captions not empty.")
  gen = sample.load_generator(config.workdir)
  defaults = gen.default_options()
  text = sample.encode_captions(gen, list(config.captions))
  per_caption = -(-config.num_images // len(text))
  rows = []
  t_all = time.perf_counter()
  for options in settings(defaults, config):
    checked = sample.resolve_options(gen.method, gen.config, options)
    times = []
    for seed in range(config.rounds + 1):
      t0 = time.perf_counter()
      images = sample.generate_from_tensors(gen, text, per_caption, seed, **checked)
      times.append(time.perf_counter() - t0)
    count = images.shape[0] * images.shape[1]
    row = dict(options=checked, images=count, first_s=round(times[0], 3),
               best_s=round(min(times[1:]), 4), images_per_s=round(count / min(times[1:]), 1))
    label = ", ".join(f"{k}={v}" for k, v in sorted(checked.items()))
    print(f"{label:40s} {row['images_per_s']:9.1f} images/s "
          f"(first draw with compilation {row['first_s']:.1f} s)", flush=True)
    rows.append(row)
  return dict(bench="bench_sample", workdir=str(gen.workdir), step=gen.step,
              model=gen.config.model, rows=rows, seconds=round(time.perf_counter() - t_all, 1),
              machine=bench.machine(), **bench.peak_rss_mb())


def main(argv):
  from t2i_jax import bench  # pylint: disable=import-outside-toplevel
  return bench.main(get_config, run, argv)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
