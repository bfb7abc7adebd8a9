"""The word transformer both caption-reading families share (CVAE and flow).

``contextual_words`` embeds GloVe word vectors, adds learned positions (so "a red circle
above a blue square" differs from its reverse) and runs pre-LN self-attention blocks in
which padding never attends or is attended to. It is a function called from inside a
caller's ``nn.compact`` method, not a module of its own: the layers it makes belong to the
caller, under the same names as before it was shared, so saved checkpoints still load.
Each family keeps its own MLP shape (``mlp``) and pooling.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def sincos_1d(positions: np.ndarray, dim: int) -> np.ndarray:
  """Transformer sin-cos features [len(positions), dim] (sines then cosines), in [-1, 1]."""
  if dim % 2:
    raise ValueError(f"a sin-cos position table needs an even width, not {dim}")
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim // 2))
  angles = np.asarray(positions, np.float64)[:, None] * omega[None]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def sincos_2d(height: int, width: int, dim: int) -> np.ndarray:
  """2D sin-cos table [height * width, dim] (MAE / DiT): half the features code the row,
  half the column, row-major as ``flow_dit.patchify`` orders its tokens."""
  if dim % 4:
    raise ValueError(f"a 2D sin-cos position table needs a width divisible by 4, not {dim}")
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  return np.concatenate([sincos_1d(rows.ravel(), dim // 2), sincos_1d(cols.ravel(), dim // 2)],
                        axis=1)


def position_init(kind: str, table: Callable[[], np.ndarray]) -> Callable[..., Array]:
  """A learned position table's initialiser: 'normal' (std 0.02) or 'sincos' (``table()``).

  'sincos' starts every position distinct at the scale of the content features (norm
  sqrt(dim / 2) against 0.02 sqrt(dim)), so attention can tell positions apart from the
  first step instead of waiting for the table to grow; the table stays learned.
  """
  if kind == "normal":
    return nn.initializers.normal(0.02)
  if kind == "sincos":
    def init(key, shape, dtype=jnp.float32):
      del key
      value = jnp.asarray(table(), dtype)
      if value.shape != tuple(shape):
        raise ValueError(f"sin-cos table {value.shape} does not match {tuple(shape)}")
      return value
    return init
  raise ValueError(f"pos_init must be 'normal' or 'sincos', not {kind!r}")


def contextual_words(module: nn.Module, text: Array, mask: Array, *, width: int,
                     num_layers: int, num_heads: int, max_len: int, dtype: Any,
                     mlp: Callable[[int, Array], Array], pos_init: str = "normal") -> Array:
  """GloVe words [B, T, D] + bool mask [B, T] -> contextual words [B, T, width] (final LN).

  ``mlp(i, x)`` is block ``i``'s MLP (the caller names its layers); ``module`` owns the
  positional table, initialised as ``pos_init`` says (``position_init``). Raises
  ValueError when T exceeds ``max_len``.
  """
  t = text.shape[1]
  if t > max_len:
    raise ValueError(f"caption length {t} exceeds the text encoder's max_len {max_len}; "
                     "raise model_kwargs.max_len")
  # LayerNorm first: a summed-GloVe input grows with caption length.
  x = nn.Dense(width, dtype=dtype, name="embed")(
      nn.LayerNorm(dtype=dtype, name="embed_norm")(text))
  pos = module.param("pos_embedding",
                     position_init(pos_init, lambda: sincos_1d(np.arange(max_len), width)),
                     (max_len, width))
  x = x + pos[None, :t].astype(x.dtype)
  attn_mask = nn.make_attention_mask(mask, mask)
  for i in range(num_layers):
    y = nn.LayerNorm(dtype=dtype, name=f"ln_attn{i}")(x)
    y = nn.MultiHeadDotProductAttention(num_heads=num_heads, dtype=dtype,
                                        name=f"attn{i}")(y, y, mask=attn_mask)
    x = x + y
    x = x + mlp(i, nn.LayerNorm(dtype=dtype, name=f"ln_mlp{i}")(x))
  return nn.LayerNorm(dtype=dtype, name="ln_out")(x)
