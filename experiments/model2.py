r"""Paper model 2: model 1's architecture (100-unit encoder, 150-d latent); learning rate 1e-3.

Run: python -m experiments.model2 --workdir runs/model2 --config.data_dir=DATA_DIR \
       --config.manual_dir=$T2I_FLICKR8K_DIR
"""

import sys

from t2i_jax import configs, train


def get_config():
  r"""Paper model 2 on Flickr8k: RMSprop lr 1e-3, batch 1, 15 epochs.

  Command:
    python -m experiments.model2 --workdir runs/model2 --config.data_dir=DATA_DIR \
        --config.manual_dir=$T2I_FLICKR8K_DIR
  (rerun the same command to resume; add e.g. --config.max_steps=1000 for a smoke run).

  Paper (accuracy / loss): 0.4758 / 0.0667 (train), 0.4691 / 0.0667 (test).
  Expected result (shared 1,003-image sample, paper split, README "Reproducing the
  paper"): 3 epochs: train loss 0.0642 / paper_accuracy 0.390, test 0.0641 / 0.360; plateau from epoch 2, mean image for every caption.
  Run time: 289-384 s per epoch on a loaded 2-core AMD EPYC VM, CPU only.
  Full corpus (Flickr8k at 128 px (squashed), paper split, 32,364 steps per epoch,
  --config.manual_dir=$T2I_FLICKR8K_FULL_DIR --config.num_epochs=14; README "The paper at
  full scale"): test loss 0.0646-0.0648 every epoch, test MSE 0.08-0.27% above the mean
  training image's 0.06458 (collapse); about 11 min per epoch on one core of the 2-core
  Intel Xeon VM (model 3 on the other), about 5 min alone on both cores.
  """
  return configs.paper_config("model2", learning_rate=1e-3)


def main(argv):
  return train.main_from_module(get_config, argv)


if __name__ == "__main__":
  train.exit_process(main(sys.argv[1:]))
