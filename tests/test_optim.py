"""keras_rmsprop must reproduce the paper's Keras RMSprop update exactly."""

import numpy as np
import optax
import pytest
import jax.numpy as jnp

from t2i_jax import optim
from t2i_jax.errors import UserError


def _keras_rmsprop_numpy(w, grads, lr, rho=0.9, eps=1e-7):
  """tf.keras optimizer_v2 RMSprop (no momentum), in float64."""
  w = np.asarray(w, np.float64).copy()
  v = np.zeros_like(w)
  for g in grads:
    g = np.asarray(g, np.float64)
    v = rho * v + (1.0 - rho) * g * g
    w = w - lr * g / (np.sqrt(v) + eps)
  return w


def _run_optax(tx, w, grads):
  params = {"w": jnp.asarray(w)}
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
  return np.asarray(params["w"])


def _grads(n, scales):
  rng = np.random.default_rng(0)
  w = rng.normal(size=(4, 3)).astype(np.float32)
  grads = [(rng.normal(size=(4, 3)) * s).astype(np.float32) for s in scales]
  return w, grads[:n]


@pytest.mark.parametrize("num_steps", [1, 3])
@pytest.mark.parametrize("lr", [1e-2, 1e-3])
def test_keras_rmsprop_matches_keras_formula(num_steps, lr):
  # Mixed scales: 1e-6 makes sqrt(v) comparable to eps, where eps placement matters.
  w, grads = _grads(num_steps, scales=(0.7, 1e-6, 3.0))
  expected = _keras_rmsprop_numpy(w, grads, lr)
  got = _run_optax(optim.keras_rmsprop(lr), w, grads)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
  assert not np.allclose(got, w)  # the updates were not trivial


def test_first_step_is_lr_over_sqrt_one_minus_rho():
  # v_1 = 0.1 g^2, so the first update is lr * sign(g) / sqrt(0.1) (eps negligible here).
  w, grads = _grads(1, scales=(0.5,))
  got = _run_optax(optim.keras_rmsprop(1e-3), w, grads)
  np.testing.assert_allclose(w - got, 1e-3 * np.sign(grads[0]) / np.sqrt(0.1), rtol=1e-4)


def test_optax_default_eps_placement_differs():
  # Why eps_in_sqrt=False is needed: with tiny gradients optax's default disagrees.
  w, grads = _grads(1, scales=(1e-6,))
  expected = _keras_rmsprop_numpy(w, grads, 1e-3)
  default = _run_optax(optax.rmsprop(1e-3, decay=0.9, eps=1e-7), w, grads)
  assert np.max(np.abs(default - expected)) > 1e-4


def test_make_optimizer():
  w, grads = _grads(3, scales=(0.7, 1e-6, 3.0))
  np.testing.assert_allclose(
      _run_optax(optim.make_optimizer("rmsprop", 1e-3), w, grads),
      _keras_rmsprop_numpy(w, grads, 1e-3), atol=1e-6)
  np.testing.assert_allclose(
      _run_optax(optim.make_optimizer("adam", 1e-3), w, grads),
      _run_optax(optax.adam(1e-3), w, grads), atol=0)
  with pytest.raises(UserError, match="Unknown optimizer"):
    optim.make_optimizer("sgd", 1e-3)
