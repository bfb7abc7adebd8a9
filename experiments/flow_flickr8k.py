r"""The two-stage latent flow model on Flickr8k, official split (no test image trained on).

Run: python -m experiments.flow_flickr8k --workdir runs/flow_flickr8k \
       --config.data_dir=DATA_DIR --config.manual_dir=$T2I_FLICKR8K_FULL_DIR
"""

import sys

from t2i_jax import configs, train


def get_config():
  r"""The model of experiments.flow_shapes on photos: stage 1 image VAE (MSE + KL) to a
  16x16x4 latent, stage 2 rectified flow with cross-attention to the caption's words,
  classifier-free guidance and an EMA.

  Command:
    python -m experiments.flow_flickr8k --workdir runs/flow_flickr8k \
        --config.data_dir=DATA_DIR --config.manual_dir=$T2I_FLICKR8K_FULL_DIR
    t2i evaluate --workdir runs/flow_flickr8k --baseline-workdir runs/model1 --num 1000
    t2i sample --workdir runs/flow_flickr8k "a dog runs on the grass" -n 8
  (rerun the first to resume, at either stage; --config.stage2.KEY=VALUE reaches one stage).

  Data: Flickr8k with the official Flickr_8k.{train,test}Images.txt split (full corpus:
  6,000 train images, 30,000 pairs; 1,000 test images), centre square crops at 64x64,
  GloVe 50d word sequences, stopwords kept, up to 32 words: the same prepared dataset as
  experiments.cvae_flickr8k.
  Stage 1: as experiments.flow_shapes (LatentAE, space-to-depth 4, one 128-channel
  residual block; MSE + 1e-4 x KL per latent dim; Adam 2e-3, batch 64), 1,500 steps.
  Stage 2: as experiments.flow_shapes (FlowDiT, 16 tokens of width 128, depth 4, two
  self-attention layers over the words, adaLN, cross-attention; logit-normal t; 10%
  caption dropout; AdamW 1e-3, batch 128, EMA 0.999) reading 32 words, 6,000 steps
  (about 26 passes over the 30,000 pairs); sampling Euler, 20 steps, guidance 3.

  Expected result (measured, Flickr8k at 128 px (squashed), seed 0; t2i evaluate on 1,000
  official test pairs, 3 seeds; EMA, Euler 20 steps, guidance 3): stage 1 test PSNR 25.6
  dB; R-precision 13.6% +- 1.9% (10 folds) against 9.3% for the real test images, 4.7% for
  the CVAE (6,000 steps) and 1.3% for the paper's model 1; FD_dual 2.29 (CVAE 3.63, model 1
  5.06, floor 0.44), KID_dual 0.0041 (CVAE 0.014); stage-2 test v_mse 1.31 at step 936,
  1.18 at 5,616, still falling. Samples carry the caption's scene and colours, no objects.
  Guidance 1 / 2 / 3 / 5: R-precision 5.1 / 10.3 / 13.6 / 15.4%, FD_dual 0.73 / 1.04 / 2.29 / 5.93.
  Run time: 1 h 34 min in all on the 2-core Intel Xeon VM while 2-3 other jobs shared it
  (preparing 81 s; stage 1 ~0.9 steps/s, stage 2 1.4-1.6 steps/s on cached latents, one
  step per jitted call: stage 2 now runs 4 per call, 1.26x the steps/s of one per call
  on the AMD EPYC VM, so expect it shorter; README "Results: built-in shapes (flow)");
  evaluation 3 min 16 s alone; sampling 53.8 images/s.
  """
  c = configs.flow_config("flickr8k")
  c.split_scheme = "official"
  c.image_mode = "center_crop"
  c.max_caption_len = 32
  c.stage2.model_kwargs.max_len = 32
  c.stage1.max_steps = 1500
  c.stage2.max_steps = 6000
  c.stage1.num_epochs = 100  # max_steps ends each stage
  c.stage2.num_epochs = 100
  c.stage1.eval_every_epochs = 1  # 469 steps per pass at batch 64
  c.stage2.eval_every_epochs = 4  # 234 steps per pass at batch 128: eval every ~940 steps
  return c


def main(argv):
  return train.main_from_module(get_config, argv)


if __name__ == "__main__":
  train.exit_process(main(sys.argv[1:]))
