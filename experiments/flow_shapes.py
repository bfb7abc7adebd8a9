r"""The two-stage latent flow model on the full captioned-shapes set (about an hour on CPU).

Run: python -m experiments.flow_shapes --workdir runs/flow_shapes
"""

import sys

from t2i_jax import configs, train


def get_config():
  r"""Stage 1: image VAE (MSE + KL) -> 16x16x4 latent; stage 2: rectified flow with
  cross-attention to the words, classifier-free guidance and an EMA, on 20,000 shapes images.

  Command:
    python -m experiments.flow_shapes --workdir runs/flow_shapes
    t2i evaluate --workdir runs/flow_shapes --baseline-workdir runs/cvae_shapes
    t2i sample --workdir runs/flow_shapes --steps 20 "a red circle above a blue square"
    t2i plot --workdir runs/flow_shapes/stage2
  (rerun the first to resume, at either stage; overrides reach one stage with
  --config.stage2.KEY=VALUE and both with a top-level data key such as --config.num_images).

  Data: shapes, 20,000 images (18,000 train / 1,000 test / 1,000 compositional images,
  5 captions each), GloVe 50d word sequences, stopwords kept, <= 24 words.
  Stage 1: LatentAE (space-to-depth 4 to 128 channels, no residual block), 16x16x4 latent,
  loss MSE + 1e-4 x KL per latent dim, Muon on the conv kernels and AdamW on the biases
  (2e-3, 100 warm-up steps), batch 64, 1,000 steps.
  Stage 2: FlowDiT, 16 tokens (patch 4) of width 160 (5 heads), depth 4, one
  self-attention layer over the words, adaLN on time + pooled caption, cross-attention to
  the words; t = sigmoid(N(0.5, 1)) (t = 1 is noise), 10% caption dropout; Muon on the
  weight matrices (3e-3: matrix_lr_scale 3; Newton-Schulz batched per matrix shape) and
  AdamW on the rest (1e-3, AdamW's b2 0.99), 200 warm-up steps, constant to step 5,000,
  then linearly to 0 at 6,800 (lr_schedule wsd), clip 1, batch 128, 4 steps per jitted
  call, 6,800 steps, EMA 0.999 (warmed up); sampling Euler, 20 steps, guidance 7. The
  in-loop judge (judge_num 256) scores 256 captions per split at each eval, as
  `t2i evaluate --num 256 --seeds 1`.

  Expected result (measured, seed 0, 2-core AMD EPYC VM; t2i evaluate, 1,000 captions per
  split, 3 seeds; EMA, Euler 20 steps, guidance 7): stage 1 test PSNR 34.6 dB, its
  reconstructions read back with every stated attribute right in 98.6% of test images
  (shape 99.0%, the lowest attribute). Stage 2 at step 6,800: all stated right 88.9% +-
  0.7% test, 88.3% +- 0.6% compositional, relations 90.1% (91.2%), shapes 94%, counts 99%;
  in-loop test v_mse 0.137, caption_gain 0.082. Targets (95% / 80% / relations 90%): test
  missed by 6 points, compositional met, relations met barely (+-2.1 over seeds). With
  --config.seed=1 (both stages; stop 56): 85.1% / 83.2% / relations 85.2%, so the training
  seed alone moves these by 4-5 points, and relations miss with it. The
  judge's curve (test / compositional): 23% / 19% at step 703, 56% / 47% at 2,812, 79% /
  79% at 4,921, 85% / 90% at 6,800, still climbing: steps bind.
  Run time: this command, cold (fresh T2I_DATA_DIR), uninterrupted, /usr/bin/time: 51.9
  min on the idle VM before the judge (2026-12-05, stop 38: preparing 97.3 s, stage 1
  224.3 s, stage 2 about 46.5 min at 2.5-2.65 steps/s; peak RSS 4.5 GB); with the judge
  62.3 min at a slow hour of the VM (2026-12-06, stop 42: preparing 128 s, stage 1 268.7
  s, 1.20x stop 38's; the scene reader trained once, about 75 s; the judge 122 s in all;
  peak RSS 4.7 GB), about 55 min at stop 38's hour. judge_num 0 trains the same bits.
  Sampling (stop 40; README): guidance 1 / 2 / 4 / 7 give 65.1% / 83.1% / 89.6% / 88.9%
  on test; Euler 4 / 8 / 16 / 20 / 32 steps 63.6% / 84.7% / 87.7% / 88.9% / 89.5%;
  experiments.bench_sample: 50.4 images/s at the default, 87.7 at guidance 1.

  Every variant tried against this default (width 96 to 192, depth, heads, text width
  and layers, adaLN-single, joint attention in all blocks or the first two, Muon's rate
  and iterations, schedules, the t distribution, batches, twice the images, stage-1
  variants, sampler options, autoguidance, the EMA), each with its command, data,
  machine, result and time, is in docs/flow_experiments.md; the comments below give the
  measurement behind each setting.
  """
  c = configs.flow_config("shapes")
  c.num_images = 20000
  # No residual block in the autoencoder (flow_config keeps one, for Flickr8k): stage 1 is
  # 7.6x faster on the AMD VM (307 s against 2,324 s for 1,000 steps) and stage 2 follows
  # captions as well in its latent (docs/flow_experiments.md).
  for stage in (c.stage1, c.stage2):  # stage 2 decodes with stage 1's frozen params
    stage.model_kwargs.ae.num_res = 0
  # t ~ sigmoid(N(0.5, 1)), towards the noise end (t = 1 is noise), where the layout is
  # chosen: at 7,000 steps 45.9% / 39.8% / relations 35% all stated right against 42.4% /
  # 36.2% / 30% at t_mean 0 (docs/flow_experiments.md). A wider t_std (1.4) learnt the
  # relations sooner and the shapes later, behind on the judge at steps 4,218 and 4,921.
  c.stage2.model_kwargs.t_mean = 0.5
  # One self-attention layer over the words, not flow_config's two: better per step on
  # shapes (at step 5,000, 46.0% / 41.8% / relations 39% all stated right against 41.5% /
  # 35.2% / 32%) and a slightly cheaper step (docs/flow_experiments.md).
  # None at all is worse: 40.1% / 32.2% / 32% at step 5,000, and no faster.
  c.stage2.model_kwargs.text_layers = 1
  # The in-loop judge (t2i_jax.train.judge): at each eval, 256 captions per split sampled and
  # read by the scene reader, as `t2i evaluate --num 256 --seeds 1`; the losses do not rank
  # stage-2 variants (two runs level on v_mse and caption_gain scored 3-10 points apart).
  c.stage2.judge_num = 256
  # 2,000 stage-1 steps (shapes read back at 96.0% against 94.1%) give the default's stage 2
  # nothing: 73.9% / 75.9% / relations 81% against 76.2% / 76.7% / 84% (docs/flow_experiments.md).
  c.stage1.max_steps = 1000
  # flow_config's KL weight (1e-4) stays: 1e-3, a smoother latent, read shapes back at
  # 97.6% and its stage 2 led the judge to step 3,515, then ended at 85.8% / 85.8% /
  # relations 87% all stated right (3.1 / 2.5 / 2.7 points behind; inside the training
  # seed's spread, stop 56); EQ-VAE's scale-equivariance term (equivariance_weight 1) put
  # stage 2 13 points behind at 3,515 (docs/flow_experiments.md).
  # Muon on stage 1's conv kernels too (flattened to (3 * 3 * in) x out; AdamW, at Adam's
  # 2e-3, on the biases): at the same 1,000 steps and time per step, test PSNR 34.6 dB
  # against Adam's 29.8, shapes read back at 99.0% test / 99.9% compositional against 94.1%
  # / 96.7% (docs/flow_experiments.md). Cooled over its last 300 steps (lr_schedule wsd):
  # 35.6 dB, shapes 98.9% / 99.9%, the same read: the rate stays constant.
  c.stage1.optimizer = "muon"
  # Muon on the weight matrices (AdamW on the rest; optim.make_muon, at AdamW's rate and
  # decay): far more per step, at 1.33x AdamW's time per step in a real run (3.51 against
  # 4.68 steps/s; the same alone in an isolated step). At 7,000 steps, 69.2% / 66.4% /
  # relations 76% all stated right against AdamW's 66.4% / 62.2% / 75% at 9,000
  # (docs/flow_experiments.md).
  c.stage2.optimizer = "muon"
  # The Muon half at 3x the rate (3e-3; AdamW's half stays at 1e-3): at 7,000 steps
  # 76.2% / 76.7% / relations 84% all stated right against 69.2% / 66.4% / 76% at 1x (and
  # 75.4% / 73.3% / 82% at 1x and 9,000 steps); 8x is too high (in-loop test v_mse 0.127
  # and caption_gain 0.051 at step 4,921 against 0.113 / 0.066 at 3x; stopped there), and
  # so are 5x and 4x: ahead to step 2,109, behind from 2,812 on (docs/flow_experiments.md);
  # at width 160 with the cool-down, 4x ends at 84.5% / 78.7% against 3x's 88.9% / 88.3%.
  c.stage2.optimizer_kwargs.matrix_lr_scale = 3.0
  # At width 128 (stop 36): 10,000 steps, the rate cooled linearly to 0 over the last 2,600, with
  # Muon's Newton-Schulz batched per matrix shape (optim.scale_by_batched_muon: the same
  # math, 1.07x the steps/s here): 86.8% / 86.0% / relations 84% all stated right in 54.6
  # min cold (stop 36's timed run), against 85.6% / 83.8% / 84% for 9,500 steps cooled
  # from 7,000 with optax's Muon (the default of stop 35, 55.4 min) and 82.7% / 80.5% / 82%
  # for 8,000 cooled from 6,000 (stop 34; with Adam's stage 1 80.3% / 80.1% / 87%, and
  # 79.0% / 79.1% / 85% at the constant rate; docs/flow_experiments.md). Scaled to the
  # slowest hour seen on the 2-core VM (2026-12-04) it would take about 64 min: over the
  # hour (docs/flow_experiments.md).
  c.stage2.optimizer_kwargs.batched_newton_schulz = True
  # Width 160 (5 heads of 32) for 6,800 steps, cooled from 5,000 (the same 26%): 1.5x the
  # time per step of width 128, so the same stage-2 time as its 10,000, and 88.9% / 88.3%
  # / relations 90% all stated right against 86.8% / 86.0% / 84% (stop 37). Width 96 for
  # 17,000 steps in that time: 79.3% / 77.4% / 81% (docs/flow_experiments.md).
  c.stage2.model_kwargs.width = 160
  c.stage2.model_kwargs.num_heads = 5
  # The quickstart's speed-ups here (stop 55: stage 1 on 2 host devices, 110 s against
  # 224 s; stage 2 on one with short captions padded to 16 words, split_caption_len) let
  # 7,600 steps run in about 46 min cold, but ended at 83.6% / 83.9% / relations 78% all
  # stated right, 12 points behind on relations (docs/flow_experiments.md): not kept.
  # Without the padding (stop 56: --config.stage1.cpu_devices=2 --config.stage2.cpu_devices=2
  # --config.stage2.train_devices=1, 7,600 steps cooled from 5,600): 89.3% / 89.5% /
  # relations 90.1% in 53.6 min cold with the judge, level with this default. This default
  # with --config.seed=1 scores 85.1% / 83.2% / relations 85.2%: both gaps are inside the
  # training seed's spread (docs/flow_experiments.md).
  c.stage2.max_steps = 6800
  c.stage2.lr_schedule = "wsd"
  c.stage2.lr_decay_start = 5000
  c.stage2.lr_decay_steps = 6800
  c.stage1.num_epochs = 100  # max_steps ends each stage
  c.stage2.num_epochs = 100
  # Guidance 7, not flow_config's 3: swept at the finished 7,000-step run
  # (docs/flow_experiments.md), all stated right rises 27% (g 1), 40% (2), 45% (3), 46%
  # (4), 49% (7), 47% (10).
  c.stage2.sample_guidance = 7.0
  # Learning rates: constant after the warm-up in stage 1; stage 2's only cools at its end
  # (above). A cosine to 0 was measured worse in both
  # stages: stage 1 test PSNR 32.9 dB against 34.2 dB at 1,000 steps; stage 2 at 8,000
  # steps 37.1% all stated right (test velocity MSE 0.162 at its end, the constant rate's
  # 0.144 at 7,000). At this budget the runs are short of steps, not noisy at the end.
  # A higher constant rate (2e-3) lowered v_mse (0.134) but followed captions far worse
  # (23.0% all stated right; caption_gain 0.029 against 0.042); half of it (5e-4) is as
  # bad (44.0% / 37.2% / relations 34% at 9,000 steps), and 1.4e-3 loses the relations
  # (63.7% / 61.5% / relations 46%): 1e-3 stays. Under AdamW a linear cool-down over
  # the last 30% (lr_schedule=wsd) gave 64.9% / 59.9% / 75%: nothing on top of the EMA;
  # under Muon at 3x the last 2,000 steps' cool-down gains 1.3 / 1.0 / 2 points (above).
  # Batch 128: batch 256 for the same examples and time gives 49.2% / 44.1% / 36%.
  return c


def main(argv):
  return train.main_from_module(get_config, argv)


if __name__ == "__main__":
  train.exit_process(main(sys.argv[1:]))
