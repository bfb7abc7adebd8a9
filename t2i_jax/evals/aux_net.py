"""What the scene reader and the dual encoder share: training, batched inference, caching.

Both are small networks trained once per config on CPU and cached as ``params.npz`` +
``meta.json`` (no pickle) under ``$T2I_CACHE_DIR/<name>/<key>``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def cache_root() -> Path:
  """``$T2I_CACHE_DIR`` or ``~/.cache/t2i_jax`` (the GloVe cache's root too)."""
  return Path(os.environ.get("T2I_CACHE_DIR") or Path.home() / ".cache" / "t2i_jax")


def train(params: Any, tx, loss_fn: Callable[[Any, Any], jax.Array], batches: Iterable[Any],
          *, num_steps: int, key: jax.Array,
          prepare: Callable[[Any, jax.Array], Any] = lambda batch, key: batch,
          log_every: int = 50, desc: str = "training", progress: bool = True
          ) -> tuple[Any, list[tuple[int, float]]]:
  """``num_steps`` optax steps on ``batches``: (params, [(step, loss)] every ``log_every``).

  Step s draws its randomness from ``fold_in(key, s)``: ``prepare(batch, key)`` (the data
  augmentation, outside the gradient) turns a batch of host arrays into the inputs of
  ``loss_fn(params, inputs)``. The last step's loss is always logged.
  """
  import optax  # pylint: disable=import-outside-toplevel
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batch, key):
    inputs = prepare(batch, key)
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  with tqdm(total=num_steps, desc=desc, unit="step", disable=not progress,
            mininterval=2.0) as bar:
    for s, batch in zip(range(num_steps), batches):
      params, opt_state, loss = step(params, opt_state, batch, jax.random.fold_in(key, s))
      bar.update(1)
      if s % log_every == 0 or s == num_steps - 1:
        losses.append((s, float(loss)))
        bar.set_postfix(loss=f"{losses[-1][1]:.4f}")
  return jax.device_get(params), losses


def apply_batched(fn: Callable[[Any, np.ndarray], Any], params: Any, x: np.ndarray,
                  batch_size: int) -> list[Any]:
  """``fn(params, chunk)`` over zero-padded chunks of ``batch_size`` rows (one compilation
  for any N), as host arrays cut back to the real rows; one output per chunk."""
  outs = []
  for start in range(0, len(x), batch_size):
    chunk = x[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    out = jax.device_get(fn(params, chunk))
    outs.append(jax.tree.map(lambda a, n=len(chunk) - pad: np.asarray(a)[:n], out))
  return outs


def save_params(directory: Path, params: Any, meta: Mapping[str, Any]) -> Path:
  """Writes params.npz + meta.json into ``directory`` atomically (a rename at the end).

  A folder that another process completed first is kept.
  """
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  directory = Path(directory)
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  np.savez(tmp / "params.npz", **{k: np.asarray(v) for k, v in flat.items()})
  (tmp / "meta.json").write_text(json.dumps(dict(meta), indent=2, sort_keys=True))
  try:
    os.replace(tmp, directory)
  except OSError:
    shutil.rmtree(tmp, ignore_errors=True)
  return directory


def load_params(directory: Path) -> tuple[Any, dict[str, Any]] | None:
  """(params, meta) of a folder written by ``save_params``, or None if it is incomplete.

  The npz is opened with ``allow_pickle=False``: a cache file can hold arrays only.
  """
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  directory = Path(directory)
  if not ((directory / "params.npz").is_file() and (directory / "meta.json").is_file()):
    return None
  with np.load(directory / "params.npz", allow_pickle=False) as data:
    flat = {k: jnp.asarray(data[k]) for k in data.files}
  return traverse_util.unflatten_dict(flat, sep="/"), json.loads(
      (directory / "meta.json").read_text())


__all__ = ["apply_batched", "cache_root", "load_params", "save_params", "train"]
