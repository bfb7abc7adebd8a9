"""keras_rmsprop must reproduce the paper's Keras RMSprop update exactly."""

import numpy as np
import optax
import pytest
import jax
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
  # adamw's b2 is Muon's adam_b2 inside optax; here 'b2' reaches both, a typo neither.
  optim.make_optimizer("muon", 1e-3, b2=0.99)
  for name in ("adamw", "muon"):
    with pytest.raises(UserError, match=f"do not fit optimizer '{name}'.*optimizer_kwargs"):
      optim.make_optimizer(name, 1e-3, b3=0.99)


def test_muon_orthogonalises_the_weight_matrices_and_leaves_the_rest_to_adamw():
  """Muon's first update of a kernel has near-equal singular values (the gradient's span
  a factor 100); 3-D attention kernels are matrices over (in) x (heads, head_dim) and
  (heads, head_dim) x (out), conv kernels (kh * kw * in) x out (1-D: (k * in) x out); biases and embeddings
  get AdamW's update."""
  rng = np.random.default_rng(0)
  params = {"fc": {"kernel": jnp.zeros((8, 6)), "bias": jnp.zeros((6,))},
            "attn": {"query": {"kernel": jnp.zeros((8, 2, 3))},
                     "out": {"kernel": jnp.zeros((2, 3, 8))}},
            "conv": {"kernel": jnp.zeros((3, 3, 2, 4)), "bias": jnp.zeros((4,))},
            "conv1d": {"kernel": jnp.zeros((3, 2, 4))},
            "pos_embedding": jnp.zeros((4, 8))}
  dims = optim.muon_dimensions(params)
  assert dims["fc"]["kernel"] == optim.MuonDimensionNumbers(0, 1)
  assert dims["attn"]["query"]["kernel"] == optim.MuonDimensionNumbers(0, (1, 2))
  assert dims["attn"]["out"]["kernel"] == optim.MuonDimensionNumbers((0, 1), 2)
  assert dims["conv"]["kernel"] == optim.MuonDimensionNumbers((0, 1, 2), 3)
  # A 1-D conv's [k, in, out] is not an attention kernel: (k * in) x out.
  assert dims["conv1d"]["kernel"] == optim.MuonDimensionNumbers((0, 1), 2)
  assert dims["fc"]["bias"] is None and dims["conv"]["bias"] is None
  assert dims["pos_embedding"] is None
  u, _, vt = np.linalg.svd(rng.normal(size=(8, 6)), full_matrices=False)
  grad_fc = (u * np.array([100.0, 30, 10, 3, 1, 1])) @ vt  # singular values 100 .. 1
  grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
  grads["fc"]["kernel"] = jnp.asarray(grad_fc, jnp.float32)
  tx = optim.make_optimizer("muon", 1e-2, b2=0.99)
  updates, _ = tx.update(grads, tx.init(params), params)
  s_grad = np.linalg.svd(grad_fc, compute_uv=False)
  s_upd = np.linalg.svd(np.asarray(updates["fc"]["kernel"]), compute_uv=False)
  assert s_grad[0] / s_grad[-1] == pytest.approx(100.0, rel=1e-3)
  assert s_upd[0] / s_upd[-1] < 2.0  # Newton-Schulz: all directions move about as much
  # The 3-D and conv kernels are orthogonalised as the matrices they act as.
  for kernel, shape in ((updates["attn"]["query"]["kernel"], (8, 6)),
                        (updates["attn"]["out"]["kernel"], (6, 8)),
                        (updates["conv"]["kernel"], (18, 4))):
    s_kernel = np.linalg.svd(np.asarray(kernel).reshape(shape), compute_uv=False)
    assert s_kernel[0] / s_kernel[-1] < 2.0
  # The other leaves get exactly (Nesterov) AdamW's update, with the same b2.
  adamw = optax.adamw(1e-2, b2=0.99, weight_decay=1e-4, nesterov=True)
  rest = {"bias": params["fc"]["bias"], "pos": params["pos_embedding"]}
  expected, _ = adamw.update({"bias": grads["fc"]["bias"], "pos": grads["pos_embedding"]},
                             adamw.init(rest), rest)
  np.testing.assert_allclose(updates["fc"]["bias"], expected["bias"], rtol=1e-6)
  np.testing.assert_allclose(updates["pos_embedding"], expected["pos"], rtol=1e-6)


def test_muon_matrix_lr_scale_moves_only_the_matrices_with_the_schedule():
  """matrix_lr_scale=3 triples the kernels' updates at every step of a warm-up schedule
  and leaves the AdamW half's updates exactly as at scale 1."""
  rng = np.random.default_rng(1)
  params = {"fc": {"kernel": jnp.zeros((8, 6)), "bias": jnp.zeros((6,))}}
  schedule = optax.linear_schedule(0.0, 1e-2, 4)
  plain, scaled = (optim.make_optimizer("muon", schedule, matrix_lr_scale=k) for k in (1.0, 3.0))
  s_plain, s_scaled = plain.init(params), scaled.init(params)
  for _ in range(3):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    u_plain, s_plain = plain.update(grads, s_plain, params)
    u_scaled, s_scaled = scaled.update(grads, s_scaled, params)
    np.testing.assert_allclose(u_scaled["fc"]["kernel"], 3.0 * u_plain["fc"]["kernel"],
                               rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(u_scaled["fc"]["bias"], u_plain["fc"]["bias"])
  assert float(jnp.abs(u_plain["fc"]["kernel"]).max()) > 0  # past the warm-up's zero


def test_batched_muon_matches_optax_muon_with_the_same_state_tree():
  """batched_newton_schulz=True stacks same-shape matrices into one Newton-Schulz chain:
  over 4 steps its updates equal optax's per-matrix Muon up to float rounding, the AdamW
  half exactly, and the state trees match, so a checkpoint of either restores into the
  other."""
  rng = np.random.default_rng(2)
  params = {"a": {"kernel": jnp.zeros((8, 6)), "bias": jnp.zeros((6,))},
            "b": {"kernel": jnp.zeros((6, 8))},  # transposed: shares the (6, 8) chain
            "c": {"kernel": jnp.zeros((8, 6))},
            "attn": {"query": {"kernel": jnp.zeros((8, 2, 3))},
                     "out": {"kernel": jnp.zeros((2, 3, 8))}},
            "conv": {"kernel": jnp.zeros((3, 3, 2, 4))},
            "embed": jnp.zeros((5, 8))}
  schedule = optax.linear_schedule(1e-3, 1e-2, 3)
  txs = [optim.make_optimizer("muon", schedule, b2=0.99, matrix_lr_scale=3.0,
                              batched_newton_schulz=batched) for batched in (False, True)]
  states = [tx.init(params) for tx in txs]
  assert jax.tree.structure(states[0]) == jax.tree.structure(states[1])
  for _ in range(4):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    (u_optax, states[0]), (u_batched, states[1]) = (
        tx.update(grads, s, params) for tx, s in zip(txs, states))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                 u_optax, u_batched)
    np.testing.assert_array_equal(u_optax["a"]["bias"], u_batched["a"]["bias"])
    np.testing.assert_array_equal(u_optax["embed"], u_batched["embed"])
  assert float(jnp.abs(u_batched["b"]["kernel"]).max()) > 1e-3
  with pytest.raises(UserError, match="do not fit optimizer 'muon'"):
    optim.make_optimizer("muon", 1e-3, batched_newton_schulz=True, nesterov=False)


def _step_sizes(config, num_steps):
  """|update| per step for a constant gradient under Adam: exactly the learning rate then."""
  from t2i_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  tx = state_lib.optimizer(config)
  params = {"w": jnp.ones((3,))}
  opt_state = tx.init(params)
  sizes = []
  for _ in range(num_steps):
    updates, opt_state = tx.update({"w": jnp.full((3,), 0.5)}, opt_state, params)
    sizes.append(float(jnp.abs(updates["w"][0])))
  return np.array(sizes)


def _adam_config(**kw):
  from t2i_jax import configs  # pylint: disable=import-outside-toplevel
  c = configs.base_config()
  c.optimizer, c.learning_rate, c.warmup_steps = "adam", 1e-2, 2
  c.optimizer_kwargs = {"eps": 0.0}
  c.update(kw)
  return c


def test_cosine_schedule_warms_up_decays_to_the_final_fraction_then_holds():
  sizes = _step_sizes(_adam_config(lr_schedule="cosine", lr_decay_steps=10,
                                   lr_final_fraction=0.1), 13)
  np.testing.assert_allclose(sizes[:3], [0.0, 5e-3, 1e-2], rtol=1e-4)  # linear warm-up
  mid = 1e-3 + 0.5 * (1e-2 - 1e-3) * (1 + np.cos(np.pi * 4 / 8))  # step 6 of 2..10
  np.testing.assert_allclose(sizes[6], mid, rtol=1e-4)
  assert np.all(np.diff(sizes[2:11]) < 0)  # strictly down after the warm-up
  np.testing.assert_allclose(sizes[10:], 1e-3, rtol=1e-4)  # lr * final_fraction, held


def test_wsd_schedule_warms_up_holds_then_decays_linearly_to_the_final_fraction():
  sizes = _step_sizes(_adam_config(lr_schedule="wsd", lr_decay_start=5, lr_decay_steps=9,
                                   lr_final_fraction=0.2), 12)
  np.testing.assert_allclose(sizes[:5], [0.0, 5e-3, 1e-2, 1e-2, 1e-2], rtol=1e-4)
  np.testing.assert_allclose(sizes[5:10], [1e-2, 8e-3, 6e-3, 4e-3, 2e-3], rtol=1e-4)
  np.testing.assert_allclose(sizes[10:], 2e-3, rtol=1e-4)  # lr * final_fraction, held


def test_constant_schedule_is_the_default():
  sizes = _step_sizes(_adam_config(), 6)
  np.testing.assert_allclose(sizes, [0.0, 5e-3, 1e-2, 1e-2, 1e-2, 1e-2], rtol=1e-4)


@pytest.mark.parametrize("kw, match", [
    ({"lr_schedule": "linear"}, "lr_schedule must be one of constant, cosine, wsd"),
    ({"lr_schedule": "wsd", "lr_decay_steps": 9}, "wsd needs warmup_steps <="),
    ({"lr_schedule": "wsd", "lr_decay_start": 9, "lr_decay_steps": 9}, "wsd needs"),
    ({"lr_schedule": "cosine"}, "needs --config.lr_decay_steps"),
    ({"lr_schedule": "cosine", "lr_decay_steps": 2}, "needs --config.lr_decay_steps"),
    ({"lr_final_fraction": 1.5}, "lr_final_fraction must be in"),
    ({"lr_schedule": "wsd", "lr_decay_start": 5, "lr_decay_steps": 9, "max_steps": 10},
     r"max_steps \(10\) runs past .* wsd schedule brings the rate to 0"),
    ({"lr_schedule": "cosine", "lr_decay_steps": 9, "max_steps": 12}, "runs past"),
])
def test_bad_schedule_settings_get_one_line(kw, match):
  from t2i_jax.train import loop  # pylint: disable=import-outside-toplevel
  with pytest.raises(UserError, match=match):
    loop.validate(_adam_config(**kw))


def test_a_run_may_end_at_its_decay_or_hold_a_final_fraction_past_it():
  from t2i_jax.train import loop  # pylint: disable=import-outside-toplevel
  loop.validate(_adam_config(lr_schedule="wsd", lr_decay_start=5, lr_decay_steps=9,
                             max_steps=9))
  loop.validate(_adam_config(lr_schedule="wsd", lr_decay_start=5, lr_decay_steps=9,
                             max_steps=12, lr_final_fraction=0.1))
