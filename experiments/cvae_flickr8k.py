r"""CVAE on Flickr8k with the official image split, so that no test image is trained on.

Run: python -m experiments.cvae_flickr8k --workdir runs/cvae_flickr8k \
       --config.data_dir=DATA_DIR --config.manual_dir=$T2I_FLICKR8K_DIR
"""

import sys

from experiments import cvae_shapes
from t2i_jax import configs, train


def get_config():
  r"""CVAE (4.1M parameters) on Flickr8k, official split, centre crops, Adam 1e-3, batch 64.

  Command:
    python -m experiments.cvae_flickr8k --workdir runs/cvae_flickr8k \
        --config.data_dir=DATA_DIR --config.manual_dir=$T2I_FLICKR8K_DIR
  (rerun the same command to resume; on a GPU add --config.steps_per_scan=16).

  Data: Flickr8k with the official Flickr_8k.{train,test}Images.txt split (6,000 train
  images, 30,000 pairs; 1,000 test images), unlike the paper's caption-#4 split whose test
  images are all training targets. Images: centre square crop, 64x64. Captions: GloVe 50d
  word sequences, stopwords kept, up to 32 words.
  Model and loss: as experiments.cvae_shapes (the CVAE defaults, 'cvae' loss with
  kl_weight 0.5 and 1,000 warm-up steps), reading up to 32 words.
  Steps: 30 epochs of 468 = 14,040.

  Expected result: not measured (no run yet). Photographs carry far more than a caption
  states, so expect blurry images whose colours and layout follow the caption loosely;
  compare runs by the test negative ELBO (bits_per_dim, sigma 0.1) and PSNR.
  Run time: ESTIMATE, about 4 h on the 2-core CPU (~1.05 s per step at batch 64, from the
  shapes step benchmark, x 14,040 steps); minutes on a GPU.
  """
  c = configs.cvae_config("flickr8k")
  c.split_scheme = "official"
  c.image_mode = "center_crop"
  c.max_caption_len = 32
  # The same small CVAE and hybrid term as experiments.cvae_shapes, reading 32 words.
  shapes_config = cvae_shapes.get_config()
  c.model_kwargs = dict(shapes_config.model_kwargs.to_dict(), max_len=32)
  c.gsnn_weight = shapes_config.gsnn_weight
  c.batch_size = 32
  c.num_epochs = 30
  c.log_every_steps = 500
  c.checkpoint_every_steps = 1000
  return c


def main(argv):
  return train.main_from_module(get_config, argv)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
