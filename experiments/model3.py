r"""Paper model 3: 50-unit encoder, 50-d latent, decoder dropout 0.2; learning rate 1e-3.

Run: python -m experiments.model3 --workdir runs/model3 --config.data_dir=DATA_DIR \
       --config.manual_dir=$T2I_FLICKR8K_DIR
"""

import sys

from t2i_jax import configs, train


def get_config():
  r"""Paper model 3 on Flickr8k: RMSprop lr 1e-3, batch 1, 15 epochs.

  Command:
    python -m experiments.model3 --workdir runs/model3 --config.data_dir=DATA_DIR \
        --config.manual_dir=$T2I_FLICKR8K_DIR
  (rerun the same command to resume; add e.g. --config.max_steps=1000 for a smoke run).

  Paper (accuracy / loss): 0.4781 / 0.0667 (train), 0.4555 / 0.0667 (test).
  Expected result (shared 1,003-image sample, paper split, README "Reproducing the
  paper"): 3 epochs: train loss 0.0649 / paper_accuracy 0.392, test 0.0644 / 0.348; plateau from epoch 2, mean image for every caption.
  Run time: 462-597 s per epoch on a loaded 2-core AMD EPYC VM, CPU only.
  Full corpus (Flickr8k at 128 px (squashed), paper split, 32,364 steps per epoch,
  --config.manual_dir=$T2I_FLICKR8K_FULL_DIR --config.num_epochs=10; README "The paper at
  full scale"): test loss 0.0646 every epoch, test MSE 0.04-0.09% above the mean training
  image's 0.06458 (it is the mean image); about 11 min per epoch on one core of the 2-core
  Intel Xeon VM (model 2 on the other), 1 h 54 min in all.
  """
  return configs.paper_config("model3", learning_rate=1e-3)


def main(argv):
  return train.main_from_module(get_config, argv)


if __name__ == "__main__":
  train.exit_process(main(sys.argv[1:]))
