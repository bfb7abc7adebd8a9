"""The in-loop judge (``config.judge_num``): at every in-loop eval, the run's samples for a
fixed set of captions, scored by the dataset's evaluator (shapes: the scene reader).

Why: the in-loop losses do not rank runs. Twice on flow_shapes, two stage-2 runs level on
test v_mse and caption_gain to two or three digits scored 3 to 10 points apart under ``t2i
evaluate`` (docs/flow_experiments.md). The judge puts the number that ranks them on the
run's curve, so a variant can be stopped early on it.

It scores the first ``judge_num`` pairs of each of the evaluator's splits (shapes: test and
compositional), one sample each, seed 0, with the run's own sampling options and its
evaluation params (the EMA where kept): the pairs and images of ``t2i evaluate --num N
--seeds 1``, so at the run's last step it gives that command's numbers. It only reads the
params: the training state, its keys and so the run's bits are the same with it or without.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from t2i_jax import evaluate, sample
from t2i_jax.data import pipeline
from t2i_jax.methods.base import Method

# The evaluator's entries that the loop prints (the rest go to metrics.jsonl / TensorBoard).
HEADLINES = ("all_stated_correct", "r_precision")


class Judge:
  """``judge(params, frozen) -> {split: {metric: value}}`` for one run's config."""

  def __init__(self, config: ml_collections.ConfigDict, method: Method):
    self.method = method
    self.evaluator = evaluate.evaluator_for(config.dataset)
    self.evaluator.setup(config)  # loads (or first trains) the scoring network
    self.options = sample.resolve_options(method, config, {})
    self.splits: list[tuple[str, Any, np.ndarray, np.ndarray]] = []
    for split in self.evaluator.splits:
      table = pipeline.load_table(config, split)
      idx, real = evaluate.scored_pairs(self.evaluator, table, int(config.judge_num))
      self.splits.append((split, table, idx, real))

  def __call__(self, params: Any, frozen: Any) -> dict[str, dict[str, float]]:
    out = {}
    for split, table, idx, real in self.splits:
      self.evaluator.begin_split(split, table, idx, real)
      images = sample.draw(self.method, params, frozen, table.text[idx], n=1, seed=0,
                           options=self.options)[:, 0]
      entries = self.evaluator.entries(split, "run", len(idx), [self.evaluator.score(images)])
      out[split] = {e["name"]: float(e["mean"]) for e in entries}
    return out


def summary(verdicts: dict[str, dict[str, float]]) -> str:
  """'test all_stated_correct 0.875 compositional ...' for the loop's epoch line."""
  parts = []
  for split, metrics in verdicts.items():
    shown = [f"{k} {metrics[k]:.3f}" for k in HEADLINES if k in metrics]
    parts.append(f"{split} {' '.join(shown)}" if shown else split)
  return " ".join(parts)


__all__ = ["HEADLINES", "Judge", "summary"]
