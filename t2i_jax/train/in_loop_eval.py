"""The in-loop evaluation: the method's per-example metrics, averaged over a whole split.

Batches have one fixed shape (one compilation): the last one is zero-padded, and
``EXAMPLE_MASK`` marks the real examples, so every example counts exactly once and
padding never does (after big_vision's ``_mask``-weighted means).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t2i_jax import methods, parallel
from t2i_jax.data import pipeline
from t2i_jax.methods.base import Method
from t2i_jax.train.state import float_batch

Metrics = dict[str, Any]

# Batch key of the per-example weights of a padded evaluation batch (1 real, 0 padding).
# 'mask' is taken: it is the caption mask in sequence mode.
EXAMPLE_MASK = "example_mask"


@functools.partial(jax.jit, static_argnames="method")
def _eval_step(params, frozen, batch, rng, *, method: Method) -> Metrics:
  weights = batch.get(EXAMPLE_MASK)
  batch = float_batch({k: v for k, v in batch.items() if k != EXAMPLE_MASK})
  per_example = method.eval_metrics(params, batch, rng, frozen)
  if weights is None:
    return {k: jnp.mean(v) for k, v in per_example.items()}
  weights = jnp.asarray(weights, jnp.float32)
  total = jnp.maximum(jnp.sum(weights), 1.0)
  return {k: jnp.sum(jnp.asarray(v, jnp.float32) * weights) / total
          for k, v in per_example.items()}


def run_rngs(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(init, train, eval) keys of a run: every random stream is a pure function of the seed.

  The in-loop evaluation at step ``s`` uses ``eval_key(seed, s)``, so ``t2i loss`` recomputes
  a run's last in-loop numbers exactly.
  """
  init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(seed), 3)
  return init_rng, train_rng, eval_rng


def eval_key(seed: int, step: int) -> jax.Array:
  """The key of the in-loop evaluation at ``step`` (the training loop's and ``t2i loss``'s)."""
  return jax.random.fold_in(run_rngs(seed)[2], step)


def make_eval_step(config: ml_collections.ConfigDict, frozen: Any = None, *,
                   method: Method | None = None) -> Callable[[Any, Any, jax.Array], Metrics]:
  """A jitted ``eval_step(params, batch, rng) -> metrics``: the means of the family's
  ``eval_metrics`` over the examples where ``batch[EXAMPLE_MASK]`` is 1 (all when absent)."""
  method = methods.get(config) if method is None else method
  return lambda params, batch, rng: _eval_step(params, frozen, batch, rng, method=method)


def evaluate(eval_step: Callable[..., Metrics], params: Any, table: pipeline.Table, *,
             batch_size: int, rng: jax.Array, progress: bool = True, desc: str = "eval",
             mesh: jax.sharding.Mesh | None = None) -> dict[str, float]:
  """Means of ``eval_step``'s metrics over every example of ``table``, each counted once.

  With ``mesh``, the batch size is rounded up to a multiple of its devices and each batch
  is split over them like the training batches (every process reads the whole batch and
  contributes its slice). Adds 'num_examples'.
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  n = len(table)
  size = max(1, min(batch_size, n))
  if mesh is not None:
    size = parallel.pad_to_multiple(size, mesh)
  ds = pipeline.make_dataset(table, batch_size=size, shuffle=False, drop_remainder=False)
  results = []
  for i, batch in enumerate(tqdm(ds.as_numpy_iterator(), total=-(-n // size), desc=desc,
                                 unit="batch", leave=False, disable=None if progress else True)):
    real = batch["image"].shape[0]
    padded = pipeline.pad_leading(batch, size)
    padded[EXAMPLE_MASK] = (np.arange(size) < real).astype(np.float32)
    if mesh is not None:
      padded = parallel.shard_local(parallel.process_slice(padded), mesh, chunked=False)
    results.append((eval_step(params, padded, jax.random.fold_in(rng, i)), real))
  sums: dict[str, float] = {}
  count = 0
  for metrics, real in jax.device_get(results):
    count += real
    for k, v in metrics.items():
      sums[k] = sums.get(k, 0.0) + float(v) * real
  out = {k: v / count for k, v in sums.items()}
  out["num_examples"] = count
  return out


__all__ = ["EXAMPLE_MASK", "evaluate", "make_eval_step"]
