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

Array = jax.Array


def contextual_words(module: nn.Module, text: Array, mask: Array, *, width: int,
                     num_layers: int, num_heads: int, max_len: int, dtype: Any,
                     mlp: Callable[[int, Array], Array]) -> Array:
  """GloVe words [B, T, D] + bool mask [B, T] -> contextual words [B, T, width] (final LN).

  ``mlp(i, x)`` is block ``i``'s MLP (the caller names its layers); ``module`` owns the
  positional table. Raises ValueError when T exceeds ``max_len``.
  """
  t = text.shape[1]
  if t > max_len:
    raise ValueError(f"caption length {t} exceeds the text encoder's max_len {max_len}; "
                     "raise model_kwargs.max_len")
  # LayerNorm first: a summed-GloVe input grows with caption length.
  x = nn.Dense(width, dtype=dtype, name="embed")(
      nn.LayerNorm(dtype=dtype, name="embed_norm")(text))
  pos = module.param("pos_embedding", nn.initializers.normal(0.02), (max_len, width))
  x = x + pos[None, :t].astype(x.dtype)
  attn_mask = nn.make_attention_mask(mask, mask)
  for i in range(num_layers):
    y = nn.LayerNorm(dtype=dtype, name=f"ln_attn{i}")(x)
    y = nn.MultiHeadDotProductAttention(num_heads=num_heads, dtype=dtype,
                                        name=f"attn{i}")(y, y, mask=attn_mask)
    x = x + y
    x = x + mlp(i, nn.LayerNorm(dtype=dtype, name=f"ln_mlp{i}")(x))
  return nn.LayerNorm(dtype=dtype, name="ln_out")(x)
