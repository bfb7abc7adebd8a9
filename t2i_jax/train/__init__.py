"""The generic trainer: one family-agnostic loop over the method protocol.

  * ``state``: TrainState (params, optimiser state, optional EMA, optional frozen params);
  * ``step``: the pure jitted step and K steps in one ``lax.scan``;
  * ``in_loop_eval``: masked fixed-shape evaluation of the method's per-example metrics;
  * ``loop``: ``train_and_evaluate``, the flat loop, checkpoint metadata;
  * ``writers``: metrics.jsonl, TensorBoard, run.json;
  * ``stages``: multi-stage runs (a first stage, then a model in its latent);
  * ``signals``: SIGINT / SIGTERM -> checkpoint and exit;
  * ``cli``: ``main_from_module``, the command line of experiment modules.
"""

from t2i_jax.train.cli import exit_process, main_from_module, run_main, split_workdir
from t2i_jax.train.in_loop_eval import EXAMPLE_MASK, evaluate, make_eval_step
from t2i_jax.train.loop import (CheckpointMeta, NonFiniteLossError, on_nonfinite,
                                train_and_evaluate)
from t2i_jax.train.signals import TrainingInterrupted
from t2i_jax.train.stages import resolve_run_dir, train_stages
from t2i_jax.train.state import TrainState, create_train_state
from t2i_jax.train.step import (device_table, train_chunk, train_chunk_on_device, train_step,
                                use_device_data)
from t2i_jax.train.writers import MetricsWriter

__all__ = [
    "CheckpointMeta", "EXAMPLE_MASK", "MetricsWriter", "NonFiniteLossError", "TrainState",
    "TrainingInterrupted", "create_train_state", "device_table", "evaluate", "exit_process",
    "main_from_module", "make_eval_step", "on_nonfinite", "resolve_run_dir", "run_main",
    "split_workdir", "train_stages",
    "train_and_evaluate", "train_chunk", "train_chunk_on_device", "train_step",
    "use_device_data",
]
