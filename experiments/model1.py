r"""Paper model 1: 100-unit encoder, 150-d latent, no dropout; learning rate 1e-2.

Run: python -m experiments.model1 --workdir runs/model1 --config.data_dir=DATA_DIR \
       --config.manual_dir=$T2I_FLICKR8K_DIR
"""

import sys

from t2i_jax import configs, train


def get_config():
  r"""Paper model 1 on Flickr8k: RMSprop lr 1e-2, batch 1, 15 epochs.

  Command:
    python -m experiments.model1 --workdir runs/model1 --config.data_dir=DATA_DIR \
        --config.manual_dir=$T2I_FLICKR8K_DIR
  (rerun the same command to resume; add e.g. --config.max_steps=1000 for a smoke run).

  Paper (accuracy / loss): 0.4477 / 0.0684 (train), 0.4961 / 0.0679 (test).
  Expected result (shared 1,003-image sample, paper split, README "Reproducing the
  paper"): 5 epochs: train loss 0.0657 / paper_accuracy 0.375, test 0.0650 / 0.343; the loss plateaus from epoch 2 and every caption decodes to the same mean image (posterior collapse).
  Run time: 205-341 s per epoch (4,012 batch-1 steps) on a loaded 2-core AMD EPYC VM, CPU only.
  Full corpus (Flickr8k at 128 px (squashed), paper split, 32,364 steps per epoch;
  README "The paper at full scale"): test loss 0.0651-0.0655 over
  epochs 1-10, test MSE 0.8-1.5% above the mean training image's 0.06458 (collapse);
  about 5 min per epoch on the idle 2-core Intel Xeon VM, 13-30 min when shared.
  """
  return configs.paper_config("model1", learning_rate=1e-2)


def main(argv):
  return train.main_from_module(get_config, argv)


if __name__ == "__main__":
  train.exit_process(main(sys.argv[1:]))
