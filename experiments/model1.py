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
  Expected result: TBD: filled in by the results run.
  Run time: TBD: filled in by the results run.
  """
  return configs.paper_config("model1", learning_rate=1e-2)


def main(argv):
  return train.main_from_module(get_config, argv)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
