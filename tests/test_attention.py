"""The fused-projection attention is flax's MultiHeadDotProductAttention: same params, same outputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2i_jax.models import attention


def _inputs(seed=0, b=3, n=5, t=7, width=16):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(k1, (b, n, width))
  words = jax.random.normal(k2, (b, t, width))
  word_mask = jnp.arange(t)[None] < jax.random.randint(k3, (b, 1), 1, t + 1)
  return x, words, word_mask


@pytest.mark.parametrize("cross", [False, True])
def test_same_params_and_outputs_as_flax(cross):
  x, words, word_mask = _inputs()
  ref = nn.MultiHeadDotProductAttention(num_heads=4)
  ours = attention.Attention(num_heads=4)
  if cross:
    args, mask = (x, words), nn.make_attention_mask(jnp.ones(x.shape[:2], bool), word_mask)
  else:
    args, mask = (x, x), nn.make_attention_mask(word_mask[:, :5], word_mask[:, :5])
  p_ref = ref.init(jax.random.key(1), *args, mask=mask)
  p_ours = ours.init(jax.random.key(1), *args, mask=mask)
  assert jax.tree.structure(p_ref) == jax.tree.structure(p_ours)
  for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_ours)):
    np.testing.assert_array_equal(a, b)  # the same init, bit for bit
  # Trained-looking params (non-zero biases), both directions of the swap.
  p = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), p_ref)
  np.testing.assert_allclose(ours.apply(p, *args, mask=mask), ref.apply(p, *args, mask=mask), rtol=1e-5, atol=1e-5)
  g_ref = jax.grad(lambda q: jnp.sum(ref.apply(q, *args, mask=mask) ** 2))(p)
  g_ours = jax.grad(lambda q: jnp.sum(ours.apply(q, *args, mask=mask) ** 2))(p)
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_ours)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_masked_words_never_leak():
  x, words, word_mask = _inputs(seed=3)
  mask = nn.make_attention_mask(jnp.ones(x.shape[:2], bool), word_mask)
  model = attention.Attention(num_heads=2)
  params = model.init(jax.random.key(0), x, words, mask=mask)
  noisy = jnp.where(word_mask[..., None], words, 1e3 * jnp.ones_like(words))
  np.testing.assert_allclose(model.apply(params, x, noisy, mask=mask),
                             model.apply(params, x, words, mask=mask), rtol=1e-6, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params():
  x, words, word_mask = _inputs()
  model = attention.Attention(num_heads=4, dtype=jnp.bfloat16)
  params = model.init(jax.random.key(0), x, words)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
  assert model.apply(params, x, words).dtype == jnp.bfloat16


def test_width_not_divisible_by_heads_is_one_clear_error():
  x, _, _ = _inputs(width=10)
  with pytest.raises(ValueError, match="not a multiple of num_heads"):
    attention.Attention(num_heads=4).init(jax.random.key(0), x)
