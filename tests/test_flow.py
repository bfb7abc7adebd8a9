"""Tests for the latent flow family: stage-1 VAE and stage-2 rectified flow (tiny sizes).

Both methods are built from a config as the trainer builds them; one module-scoped init
per method keeps compilation short.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from t2i_jax import configs
from t2i_jax.errors import UserError
from t2i_jax.methods.flow import FlowMethod
from t2i_jax.methods.latent_ae import LatentAEMethod, halve

B, T, D = 4, 8, 50
TINY = {"ae": {"channels": (8,), "latent_channels": 4, "num_res": 1},
        "patch": 4, "width": 32, "depth": 1, "num_heads": 2, "text_heads": 2,
        "text_layers": 1, "max_len": T, "mlp_ratio": 2}


def _config(**overrides):
  c = configs.base_config()
  c.model_kwargs = ml_collections.ConfigDict(TINY)
  c.kl_weight = 1e-3
  c.cfg_drop_rate = 0.1
  for k, v in overrides.items():
    c[k] = v
  return c


def _batch(seed=0, batch=B):
  rng = np.random.default_rng(seed)
  text = rng.normal(size=(batch, T, D)).astype(np.float32)
  mask = np.zeros((batch, T), bool)
  for b, n in enumerate([5, 2, 8, 3, 1, 6][:batch]):
    mask[b, :n] = True
  text[~mask] = 0.0
  # Smooth images (a coloured square on a background), so a tiny VAE can fit them.
  image = np.zeros((batch, 64, 64, 3), np.float32)
  for b in range(batch):
    image[b] = rng.uniform(0, 0.4, size=3)
    y, x = rng.integers(0, 40, size=2)
    image[b, y:y + 20, x:x + 20] = rng.uniform(0.5, 1.0, size=3)
  return {"image": jnp.asarray(image), "text": jnp.asarray(text), "mask": jnp.asarray(mask)}


@pytest.fixture(scope="module")
def ae_setup():
  method = LatentAEMethod.from_config(_config())
  params = method.init(jax.random.key(0), _batch())
  return method, params


@pytest.fixture(scope="module")
def flow_setup(ae_setup):
  ae_method, ae_params = ae_setup
  method = FlowMethod.from_config(_config())
  params = method.init(jax.random.key(1), _batch())
  frozen = method.frozen_from_params(ae_params)
  frozen["latent_scale"] = method.measure_latent_scale(ae_params, _batch()["image"])
  # Random (non-zero) output layers: the zero-initialised gates would hide the caption.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  params = jax.tree.unflatten(treedef, [
      p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])
  return method, params, frozen


def _finite_tree(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def _train(method, params, batch, frozen, steps=30, lr=3e-3):
  """Adam on one fixed batch: (losses, first step's (metrics, grads))."""
  opt = optax.adam(lr)

  @jax.jit
  def step(params, state, rng):
    (loss, metrics), grads = jax.value_and_grad(method.loss, has_aux=True)(
        params, batch, rng, jnp.int32(0), frozen)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss, metrics, grads

  state = opt.init(params)
  losses, first = [], None
  for i in range(steps):
    params, state, loss, metrics, grads = step(params, state, jax.random.key(100 + i))
    losses.append(float(loss))
    if first is None:
      first = (metrics, grads)
  return losses, first


@pytest.fixture(scope="module")
def ae_trained(ae_setup):
  method, params = ae_setup
  return _train(method, params, _batch(), None)


@pytest.fixture(scope="module")
def flow_trained(flow_setup):
  method, params, frozen = flow_setup
  return _train(method, params, _batch(), frozen)


# ------------------------------------------------------------------------------ stage 1


def test_methods_are_hashable_and_equal_per_config():
  assert LatentAEMethod.from_config(_config()) == LatentAEMethod.from_config(_config())
  assert hash(FlowMethod.from_config(_config())) == hash(FlowMethod.from_config(_config()))
  assert not LatentAEMethod.GENERATES and FlowMethod.GENERATES
  assert FlowMethod.SAMPLE_OPTIONS == {"steps": "sample_steps", "guidance": "sample_guidance",
                                       "solver": "sample_solver",
                                       "guidance_interval": "sample_guidance_interval",
                                       "time_shift": "sample_time_shift"}


def test_latent_ae_loss_metrics_and_grads(ae_setup, ae_trained):
  method, params = ae_setup
  batch = _batch()
  assert method.model.latent_shape == (16, 16, 4)

  @jax.jit
  def roundtrip(params, image):
    mean, logvar = method.encode(params, image)
    return mean, logvar, method.decode(params, mean), method.eval_metrics(
        params, {"image": image}, jax.random.key(0))

  mean, logvar, image, ev = roundtrip(params, batch["image"])
  chex.assert_shape([mean, logvar], (B, 16, 16, 4))
  chex.assert_shape(image, (B, 64, 64, 3))
  assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
  assert set(ev) == {"psnr", "mse", "kl"}
  chex.assert_shape(list(ev.values()), (B,))
  losses, (metrics, grads) = ae_trained
  assert np.isfinite(losses[0])
  assert {"loss", "mse", "kl", "psnr"} <= set(metrics)
  np.testing.assert_allclose(float(metrics["loss"]),
                             float(metrics["mse"]) + 1e-3 * float(metrics["kl"]), rtol=1e-5)
  assert _finite_tree(grads)


@pytest.mark.slow  # an option off by default: CI's slow pass keeps the default run near 8 min
def test_latent_ae_scale_equivariance_term(ae_setup):
  """equivariance_weight adds w * MSE(decode(halve(z)), halve(image)): EQ-VAE's scale term."""
  method, params = ae_setup
  batch = _batch()
  x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
  np.testing.assert_allclose(halve(x)[1, 1, 2], jnp.mean(x[1, 2:4, 4:6], axis=(0, 1)))
  mean, _ = method.encode(params, batch["image"])
  chex.assert_shape(method.decode(params, halve(mean)), (B, 32, 32, 3))
  eq_method = dataclasses.replace(method, equivariance_weight=0.5)
  rng = jax.random.key(3)
  loss0, metrics0 = method.loss(params, batch, rng, jnp.int32(0))
  (loss1, metrics1), grads = jax.value_and_grad(eq_method.loss, has_aux=True)(
      params, batch, rng, jnp.int32(0))
  assert "equivariance_mse" not in metrics0 and float(metrics1["equivariance_mse"]) > 0
  np.testing.assert_allclose(float(loss1),
                             float(loss0) + 0.5 * float(metrics1["equivariance_mse"]), rtol=1e-5)
  assert _finite_tree(grads)
  assert LatentAEMethod.from_config(_config(equivariance_weight=0.5)) == eq_method
  with pytest.raises(UserError, match="equivariance_weight"):
    LatentAEMethod.from_config(_config(equivariance_weight=-1.0))


def test_latent_ae_loss_decreases(ae_trained):
  losses, _ = ae_trained
  assert losses[-1] < 0.5 * losses[0], losses


def test_latent_ae_generates_nothing(ae_setup):
  method, params = ae_setup
  with pytest.raises(UserError):
    method.generate(params, _batch()["text"], None, jax.random.split(jax.random.key(0), B))


# ------------------------------------------------------------------------------ stage 2


def test_flow_loss_shapes_and_grads(flow_setup, flow_trained):
  method, params, frozen = flow_setup
  assert method.model.num_tokens == 16
  losses, (metrics, grads) = flow_trained
  assert np.isfinite(losses[0])
  assert {"loss", "v_mse", "caption_drop", "latent_std"} <= set(metrics)
  assert _finite_tree(grads)
  # The latent scale was measured on this batch: the normalised latent has std 1.
  np.testing.assert_allclose(float(metrics["latent_std"]), 1.0, rtol=1e-4)
  ev = jax.jit(method.eval_metrics)(params, _batch(), jax.random.key(0), frozen)
  chex.assert_shape([ev["v_mse"], ev["v_mse_null"], ev["caption_gain"]], (B,))
  assert np.all(np.isfinite(np.asarray(ev["v_mse"])))


@pytest.mark.slow  # an option off by default: CI's slow pass keeps the default run near 8 min
def test_conv_head_starts_at_zero_velocity_and_trains(flow_setup):
  _, _, frozen = flow_setup
  method = FlowMethod.from_config(_config(model_kwargs=ml_collections.ConfigDict(
      dict(TINY, out_conv=8))))
  params = method.init(jax.random.key(1), _batch())
  # The head's convs exist only when asked for: default checkpoints keep their tree.
  assert {"out_conv1", "out_conv2"} <= set(params)
  default = FlowMethod.from_config(_config()).init(jax.random.key(1), _batch())
  assert not {"out_conv1", "out_conv2"} & set(default)
  chex.assert_shape(params["out_conv2"]["kernel"], (3, 3, 8, 4))
  x = method.initial_noise(jax.random.split(jax.random.key(2), B))
  v = method.model.apply({"params": params}, x, jnp.full((B,), 0.5), _batch()["text"],
                         _batch()["mask"])
  chex.assert_shape(v, x.shape)
  np.testing.assert_array_equal(np.asarray(v), 0.0)  # zero-initialised last conv
  losses, (_, grads) = _train(method, params, _batch(), frozen)
  assert float(jnp.abs(grads["out_conv2"]["kernel"]).max()) > 0
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


@pytest.mark.slow  # options off by default: CI's slow pass keeps the default run near 8 min
def test_contrastive_and_model_guidance_objectives(flow_setup):
  """contrastive_weight subtracts lambda * |v - other row's target|^2 for captioned rows;
  model_guidance shifts their target by w * sg(v(c) - v(null)); v_mse stays the MSE."""
  method, params, frozen = flow_setup
  batch, rng = _batch(), jax.random.key(3)
  x0 = method.encode_latent(frozen, batch["image"])
  # The pieces the objectives are built from, at the loss's own t, noise and drops.
  k_t, k_n, k_d = jax.random.split(rng, 3)
  t = method.sample_t(k_t, B)
  noise = jax.random.normal(k_n, x0.shape)
  xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
  drop = jax.random.uniform(k_d, (B,)) < method.cfg_drop_rate
  apply = functools.partial(method.model.apply, {"params": params}, xt, t, batch["text"],
                            batch["mask"])
  v, v_null = apply(drop), apply(jnp.ones((B,), bool))
  target = noise - x0
  rows = lambda x: np.mean(np.asarray(x).reshape(B, -1), axis=-1)
  keep = ~np.asarray(drop)
  mse = rows(jnp.square(v - target))

  def loss_and_grads(**kw):
    m = dataclasses.replace(method, **kw)
    (loss, metrics), grads = jax.jit(jax.value_and_grad(m.loss, has_aux=True))(
        params, batch, rng, 0, frozen)
    np.testing.assert_allclose(float(metrics["v_mse"]), mse.mean(), rtol=1e-5)
    return float(loss), grads

  plain, g_plain = loss_and_grads()
  np.testing.assert_allclose(plain, mse.mean(), rtol=1e-5)
  lam = 0.25
  want = mse - lam * keep * rows(jnp.square(v - jnp.roll(target, 1, axis=0)))
  np.testing.assert_allclose(loss_and_grads(contrastive_weight=lam)[0], want.mean(),
                             rtol=1e-5)
  w = 0.5
  shifted = target + w * (v - v_null) * keep[:, None, None, None]
  mg, g_mg = loss_and_grads(model_guidance=w)
  np.testing.assert_allclose(mg, rows(jnp.square(v - shifted)).mean(), rtol=1e-5)
  # The guidance direction carries no gradient: the gradient is that of the MSE to the
  # shifted target, not of |(1 - w) v + w v_null - target|^2.
  fixed = jax.lax.stop_gradient(shifted)
  g_want = jax.grad(lambda p: jnp.mean(jnp.square(method.model.apply(
      {"params": p}, xt, t, batch["text"], batch["mask"], drop) - fixed)))(params)
  chex.assert_trees_all_close(g_mg, g_want, rtol=1e-4, atol=1e-6)
  assert not np.allclose(np.asarray(g_mg["out"]["kernel"]),
                         np.asarray(g_plain["out"]["kernel"]))
  for bad in ({"contrastive_weight": 1.0}, {"model_guidance": -0.1},
              {"model_guidance": float("nan")}):
    with pytest.raises(UserError, match=next(iter(bad))):
      FlowMethod.from_config(_config(**bad))
  assert FlowMethod.from_config(_config(contrastive_weight=lam, model_guidance=w)) == (
      dataclasses.replace(FlowMethod.from_config(_config()), contrastive_weight=lam,
                          model_guidance=w))


def test_caption_gain_is_what_the_caption_changes(flow_setup):
  """v_mse_null sees the null caption only (the same for any caption), v_mse the caption;
  caption_gain is their difference, at the same t and noise."""
  method, params, frozen = flow_setup  # random output layers: the caption matters
  batch = _batch()
  other = dict(batch, text=jnp.roll(batch["text"], 1, axis=0),
               mask=jnp.roll(batch["mask"], 1, axis=0))
  ev_fn = jax.jit(method.eval_metrics)
  ev = ev_fn(params, batch, jax.random.key(0), frozen)
  ev_other = ev_fn(params, other, jax.random.key(0), frozen)
  np.testing.assert_allclose(np.asarray(ev["caption_gain"]),
                             np.asarray(ev["v_mse_null"]) - np.asarray(ev["v_mse"]), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(ev["v_mse_null"]), np.asarray(ev_other["v_mse_null"]),
                             rtol=1e-6)
  assert not np.allclose(np.asarray(ev["v_mse"]), np.asarray(ev_other["v_mse"]))
  assert np.any(np.abs(np.asarray(ev["caption_gain"])) > 1e-6)
  # At init the zero output layer gives v = 0 with or without the caption: no gain.
  at_init = ev_fn(method.init(jax.random.key(1), batch), batch, jax.random.key(0), frozen)
  np.testing.assert_array_equal(np.asarray(at_init["caption_gain"]), 0.0)


def test_cached_latents_give_the_same_loss_and_grads(flow_setup):
  """image_features (what the trainer keeps on the device for this family) holds the
  latents a step would encode, and the loss on them equals the loss on the images."""
  method, params, frozen = flow_setup
  batch = _batch()
  images = np.round(np.asarray(batch["image"]) * 255).astype(np.uint8)
  feats = method.image_features(frozen, images)
  chex.assert_shape(feats, (B,) + tuple(method.model.latent_shape))
  assert feats.dtype == np.float32
  as_float = jnp.asarray(images, jnp.float32) / 255.0
  np.testing.assert_allclose(np.asarray(feats),
                             np.asarray(method.encode_latent(frozen, as_float)), atol=1e-5)
  from_images = dict(batch, image=as_float)
  from_feats = {"features": feats, "text": batch["text"], "mask": batch["mask"]}
  grad_fn = jax.jit(jax.value_and_grad(
      lambda p, b: method.loss(p, b, jax.random.key(3), jnp.int32(0), frozen), has_aux=True))
  (la, _), ga = grad_fn(params, from_images)
  (lb, _), gb = grad_fn(params, from_feats)
  np.testing.assert_allclose(float(la), float(lb), rtol=1e-5)
  chex.assert_trees_all_close(ga, gb, rtol=1e-4, atol=1e-6)
  # The base protocol: a family without features returns None (the loss reads images).
  assert LatentAEMethod.from_config(_config()).image_features(frozen, images) is None


def test_flow_loss_decreases(flow_trained):
  losses, _ = flow_trained
  # The loss is noisy (a fresh t and noise every step): compare averages of 5 steps.
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_guidance_one_is_exactly_the_conditional_model(flow_setup):
  method, params, frozen = flow_setup
  batch = _batch()
  keys = jax.random.split(jax.random.key(3), B)
  steps = 3
  got = method.generate(params, batch["text"], batch["mask"], keys, frozen, steps=steps,
                        guidance=1.0, solver="euler")

  @jax.jit
  def direct(params, text, mask, keys, frozen):  # the conditional model alone, no CFG code
    x = method.initial_noise(keys)
    for i in range(steps):
      t = jnp.full((B,), 1.0 - i / steps, jnp.float32)
      x = x + (-1.0 / steps) * method.model.apply({"params": params}, x, t, text, mask)
    return method.decode_latent(frozen, x)

  want = direct(params, batch["text"], batch["mask"], keys, frozen)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  # The guided velocity at g = 1 is bitwise the conditional one.
  x = method.initial_noise(keys)
  t = jnp.full((B,), 0.5, jnp.float32)

  @jax.jit
  def velocities(params, x, t, text, mask, g):
    cond = method.model.apply({"params": params}, text, mask, method=method.model.encode_text)
    null = method.model.apply({"params": params}, B, 1, method=method.model.null_text)
    v_c = method.model.apply({"params": params}, x, t, *cond, method=method.model.velocity)
    return (method.guided_velocity(params, x, t, cond, null, 1.0), v_c,
            method.guided_velocity(params, x, t, cond, null, g))

  v_g, v_c, v_traced = velocities(params, x, t, batch["text"], batch["mask"], jnp.float32(1))
  np.testing.assert_array_equal(np.asarray(v_g), np.asarray(v_c))
  # A traced guidance of 1 goes through the CFG formula, which then adds exactly zero.
  np.testing.assert_allclose(np.asarray(v_traced), np.asarray(v_c), rtol=0, atol=1e-7)
  _, _, v_3 = velocities(params, x, t, batch["text"], batch["mask"], jnp.float32(3))
  assert not np.allclose(np.asarray(v_3), np.asarray(v_c))


def test_guidance_interval_guides_only_its_steps(flow_setup):
  method, params, frozen = flow_setup
  solver = "heun"  # its second evaluation at t + dt is checked against the interval too
  batch = _batch()
  keys = jax.random.split(jax.random.key(4), B)
  gen = lambda g, interval: np.asarray(method.generate(
      params, batch["text"], batch["mask"], keys, frozen, steps=4, guidance=g, solver=solver,
      guidance_interval=interval))
  every = gen(3.0, (0.0, 1.0))
  np.testing.assert_array_equal(gen(3.0, (0.0, 1.0)), np.asarray(method.generate(
      params, batch["text"], batch["mask"], keys, frozen, steps=4, guidance=3.0,
      solver=solver)))
  # An interval that holds none of the grid's t (1, .75, .5, .25 and Heun's 0) leaves the
  # conditional model alone, exactly; one that holds some of them lies in between.
  np.testing.assert_allclose(gen(3.0, (0.3, 0.4)), gen(1.0, (0.0, 1.0)), rtol=0, atol=1e-6)
  part = gen(3.0, (0.6, 1.0))
  assert not np.allclose(part, every, atol=1e-4) and not np.allclose(part, gen(1.0, (0, 1)),
                                                                        atol=1e-4)


def test_time_shift_moves_the_solver_grid(flow_setup):
  method, params, _ = flow_setup
  batch = _batch()
  keys = jax.random.split(jax.random.key(6), B)
  latents = lambda guidance=2.0, **kw: np.asarray(method.sample_latents(
      params, batch["text"], batch["mask"], keys, steps=4, guidance=guidance, **kw))
  uniform = latents()
  np.testing.assert_array_equal(latents(time_shift=1.0), uniform)  # 1: the same program
  assert not np.allclose(latents(time_shift=3.0), uniform, atol=1e-4)
  assert np.all(np.isfinite(latents(time_shift=0.5)))
  # A guidance interval sees the grid's t. Shift 3 turns the uniform u = 1, .75, .5, .25
  # into t = 1, .9, .75, .5: (0.85, 0.95) holds .9 there and none of the uniform t, so it
  # guides one step of the shifted grid and none of the uniform one; (0.3, 0.4) holds none.
  conditional = lambda s: latents(guidance=1.0, time_shift=s)
  np.testing.assert_array_equal(latents(guidance_interval=(0.85, 0.95)), conditional(1.0))
  assert not np.allclose(latents(guidance_interval=(0.85, 0.95), time_shift=3.0),
                         conditional(3.0), atol=1e-4)
  np.testing.assert_array_equal(latents(guidance_interval=(0.3, 0.4), time_shift=3.0),
                                conditional(3.0))


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_generate_shape_dtype_range(flow_setup, solver):
  method, params, frozen = flow_setup
  batch = _batch()
  keys = jax.random.split(jax.random.key(5), B)
  out = method.generate(params, batch["text"], batch["mask"], keys, frozen, steps=2,
                        guidance=2.0, solver=solver)
  assert out.shape == (B, 64, 64, 3) and out.dtype == jnp.float32
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  assert np.all(np.isfinite(np.asarray(out)))


def test_rows_depend_only_on_their_own_key(flow_setup):
  method, params, frozen = flow_setup
  batch = _batch()
  keys = jax.random.split(jax.random.key(9), B)
  a = method.generate(params, batch["text"], batch["mask"], keys, frozen, steps=2, guidance=2.0)
  other = keys.at[1:].set(jax.random.split(jax.random.key(10), B - 1))
  b = method.generate(params, batch["text"], batch["mask"], other, frozen, steps=2,
                      guidance=2.0)
  np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), atol=1e-6)
  assert not np.allclose(np.asarray(a[1]), np.asarray(b[1]))
  # A row also does not depend on the other rows' captions.
  text2 = batch["text"].at[2].set(batch["text"][3])
  c = method.generate(params, text2, batch["mask"], keys, frozen, steps=2, guidance=2.0)
  np.testing.assert_allclose(np.asarray(a[0]), np.asarray(c[0]), atol=1e-6)


def test_word_order_matters(flow_setup):
  method, params, frozen = flow_setup
  batch = _batch()
  text, mask = batch["text"], batch["mask"]
  swapped = text.at[:, [0, 1]].set(text[:, [1, 0]])  # rows 0-3 have >= 2 words
  x = method.initial_noise(jax.random.split(jax.random.key(11), B))
  t = jnp.full((B,), 0.5, jnp.float32)
  apply = jax.jit(lambda p, txt: method.model.apply({"params": p}, x, t, txt, mask))
  v, v_swapped = apply(params, text), apply(params, swapped)
  diff = np.abs(np.asarray(v - v_swapped)).reshape(B, -1).max(axis=1)
  assert np.all(diff > 1e-4), diff


def test_dropped_caption_ignores_the_caption(flow_setup):
  method, params, _ = flow_setup
  batch = _batch()
  x = method.initial_noise(jax.random.split(jax.random.key(12), B))
  t = jnp.full((B,), 0.3, jnp.float32)
  drop = jnp.ones((B,), bool)
  apply = jax.jit(lambda txt: method.model.apply({"params": params}, x, t, txt,
                                                 batch["mask"], drop))
  np.testing.assert_allclose(np.asarray(apply(batch["text"])),
                             np.asarray(apply(jnp.flip(batch["text"], 0))), atol=1e-6)


def test_sincos_pos_init_starts_both_tables_at_distinct_sincos_rows():
  from t2i_jax.models import words  # pylint: disable=import-outside-toplevel
  method = FlowMethod.from_config(_config(model_kwargs=ml_collections.ConfigDict(
      dict(TINY, pos_init="sincos"))))
  params = method.init(jax.random.key(2), _batch())
  tokens, word_pos = params["pos_embedding"], params["word_encoder"]["pos_embedding"]
  np.testing.assert_array_equal(np.asarray(tokens), words.sincos_2d(4, 4, 32))
  np.testing.assert_array_equal(np.asarray(word_pos), words.sincos_1d(np.arange(T), 32))
  # Row-major, as patchify orders the tokens: token 5 is row 1, column 1; 4 is row 1, col 0.
  half = 16
  np.testing.assert_array_equal(tokens[5, :half], tokens[4, :half])
  np.testing.assert_array_equal(tokens[5, half:], tokens[1, half:])
  for table in (tokens, word_pos):  # every position distinct, at the features' scale
    d = np.linalg.norm(np.asarray(table)[:, None] - np.asarray(table)[None], axis=-1)
    assert d[~np.eye(len(d), dtype=bool)].min() > 0.05
  default = FlowMethod.from_config(_config()).init(jax.random.key(2), _batch())
  assert float(jnp.std(default["pos_embedding"])) < 0.05  # 'normal': std 0.02
  for bad in ({"pos_init": "sinus"}, {"pos_init": "sincos", "width": 30, "num_heads": 2}):
    with pytest.raises(UserError, match="pos_init"):
      FlowMethod.from_config(_config(model_kwargs=ml_collections.ConfigDict(dict(TINY, **bad))))


@pytest.mark.slow  # an option off by default: CI's slow pass keeps the default run near 8 min
def test_a_narrower_word_encoder_feeds_the_wider_dit(flow_setup):
  """text_width < width: the words stay narrow, the pooled caption and the DiT do not."""
  method = FlowMethod.from_config(_config(model_kwargs=ml_collections.ConfigDict(
      dict(TINY, text_width=16))))
  params = method.init(jax.random.key(2), _batch())
  enc = params["word_encoder"]
  assert enc["embed"]["kernel"].shape == (D, 16)
  assert enc["pool_out"]["kernel"].shape == (16, 32)
  assert params["null_word"].shape == (16,)
  assert params["block0"]["cross_attn"]["key"]["kernel"].shape[0] == 16
  # Open the zero-initialised gates (as flow_setup does), so the caption reaches v.
  params = jax.tree.map(lambda p: p + 0.05, params)
  batch = _batch()
  x = method.initial_noise(jax.random.split(jax.random.key(13), B))
  t = jnp.full((B,), 0.5, jnp.float32)
  drop = jnp.array([True, False, True, False])
  v = method.model.apply({"params": params}, x, t, batch["text"], batch["mask"], drop)
  chex.assert_shape(v, x.shape)
  assert _finite_tree(v)
  grads = jax.grad(lambda p: method.loss(p, batch, jax.random.key(3), jnp.int32(0),
                                         flow_setup[2])[0])(params)
  assert _finite_tree(grads)
  assert float(jnp.abs(grads["word_encoder"]["embed"]["kernel"]).max()) > 0


@pytest.mark.slow  # an option off by default: CI's slow pass keeps the default run near 8 min
def test_shared_adaln_is_one_dense_plus_a_table_per_block(flow_setup):
  method = FlowMethod.from_config(_config(model_kwargs=ml_collections.ConfigDict(
      dict(TINY, shared_adaln=True, depth=2))))
  params = method.init(jax.random.key(4), _batch())
  assert params["adaLN"]["kernel"].shape == (32, 9 * 32)
  for i in range(2):
    assert "adaLN" not in params[f"block{i}"]
    assert params[f"block{i}"]["adaLN_table"].shape == (9 * 32,)
  batch = _batch()
  x = method.initial_noise(jax.random.split(jax.random.key(14), B))
  t = jnp.full((B,), 0.5, jnp.float32)
  v = method.model.apply({"params": params}, x, t, batch["text"], batch["mask"])
  np.testing.assert_array_equal(np.asarray(v), 0.0)  # zero gates and output layer at init
  params = dict(params, out={"kernel": params["out"]["kernel"] + 0.05,
                             "bias": params["out"]["bias"]})
  grads = jax.grad(lambda p: method.loss(p, batch, jax.random.key(5), jnp.int32(0),
                                         flow_setup[2])[0])(params)
  assert _finite_tree(grads)
  # The gates open through both the shared Dense and each block's own offset.
  assert float(jnp.abs(grads["adaLN"]["kernel"]).max()) > 0
  assert float(jnp.abs(grads["block1"]["adaLN_table"]).max()) > 0


@pytest.mark.slow  # an option off by default: CI's slow pass keeps the default run near 8 min
def test_joint_attention_reads_the_words_in_order_and_never_the_padding(flow_setup):
  method = FlowMethod.from_config(_config(model_kwargs=ml_collections.ConfigDict(
      dict(TINY, joint_attention=True, depth=2))))
  params = method.init(jax.random.key(4), _batch())
  block = params["block1"]
  assert "cross_attn" not in block and "self_attn" not in block
  assert set(block["joint_attn"]) == {"query", "key", "value", "word_key", "word_value", "out"}
  assert block["adaLN"]["kernel"].shape == (32, 6 * 32)  # no cross-attention modulations
  batch = _batch()
  x = method.initial_noise(jax.random.split(jax.random.key(14), B))
  t = jnp.full((B,), 0.5, jnp.float32)
  v = method.model.apply({"params": params}, x, t, batch["text"], batch["mask"])
  np.testing.assert_array_equal(np.asarray(v), 0.0)  # zero gates and output layer at init
  leaves, treedef = jax.tree.flatten(params)  # random gates, so the words reach the output
  keys = jax.random.split(jax.random.key(8), len(leaves))
  params = jax.tree.unflatten(treedef, [
      p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])

  def velocity(text):
    return np.asarray(method.model.apply({"params": params}, x, t, text, batch["mask"]))

  base = velocity(batch["text"])
  padded = jnp.where(batch["mask"][..., None], batch["text"], 3.0)  # garbage in the padding
  np.testing.assert_allclose(velocity(padded), base, rtol=1e-5, atol=1e-6)
  swapped = batch["text"].at[0, :2].set(batch["text"][0, 1::-1])  # two words swapped
  assert not np.allclose(velocity(swapped)[0], base[0], atol=1e-4)
  np.testing.assert_allclose(velocity(swapped)[1:], base[1:], rtol=1e-5, atol=1e-6)
  grads = jax.grad(lambda p: method.loss(p, batch, jax.random.key(5), jnp.int32(0),
                                         flow_setup[2])[0])(params)
  assert _finite_tree(grads)
  assert float(jnp.abs(grads["block0"]["joint_attn"]["word_key"]["kernel"]).max()) > 0


@pytest.mark.slow  # an option off by default
def test_joint_blocks_makes_only_the_first_blocks_joint(flow_setup):
  kw = dict(TINY, depth=3, joint_blocks=2)
  method = FlowMethod.from_config(_config(model_kwargs=ml_collections.ConfigDict(kw)))
  params = method.init(jax.random.key(4), _batch())
  assert [("joint_attn" in params[f"block{i}"], "cross_attn" in params[f"block{i}"])
          for i in range(3)] == [(True, False), (True, False), (False, True)]
  grads = jax.grad(lambda p: method.loss(p, _batch(), jax.random.key(5), jnp.int32(0),
                                         flow_setup[2])[0])(params)
  assert _finite_tree(grads)
  # With adaLN-single, a joint block's table holds its 6 modulations, a cross block's 9;
  # the shared Dense makes 9 while any block is a cross block, 6 when none is.
  for blocks, shared_out in ((2, 9), (3, 6)):
    shared = FlowMethod.from_config(_config(model_kwargs=ml_collections.ConfigDict(
        dict(kw, joint_blocks=blocks, shared_adaln=True)))).init(jax.random.key(4), _batch())
    assert shared["adaLN"]["kernel"].shape[-1] == shared_out * 32
    assert [shared[f"block{i}"]["adaLN_table"].shape[0] // 32 for i in range(3)] == (
        [6, 6, 9] if blocks == 2 else [6, 6, 6])
  for bad in (-1, 4):
    with pytest.raises(UserError, match="joint_blocks"):
      FlowMethod.from_config(_config(model_kwargs=ml_collections.ConfigDict(
          dict(kw, joint_blocks=bad))))


@pytest.mark.parametrize("options", [
    {"steps": 0}, {"steps": -3}, {"steps": 2.5}, {"steps": "many"}, {"steps": True},
    {"guidance": float("nan")}, {"guidance": float("inf")}, {"guidance": -1.0},
    {"guidance": "strong"}, {"solver": "rk4"}, {"temperature": 1.0},
    {"guidance_interval": "0.5"}, {"guidance_interval": "0.8,0.2"},
    {"guidance_interval": "0,2"}, {"guidance_interval": "a,b"}, {"guidance_interval": 0.5},
    {"guidance_interval": (0.1, float("nan"))}, {"time_shift": 0}, {"time_shift": -2.0},
    {"time_shift": float("inf")}, {"time_shift": "steep"},
])
def test_check_options_rejects_bad_values(options):
  method = FlowMethod.from_config(_config())
  with pytest.raises(UserError) as e:
    method.check_options(options)
  assert "\n" not in str(e.value) and str(e.value)


def test_check_options_converts_good_values():
  method = FlowMethod.from_config(_config())
  out = method.check_options({"steps": "8", "guidance": "2", "solver": "Heun"})
  assert out == {"steps": 8, "guidance": 2.0, "solver": "heun"}
  assert method.check_options({"steps": 4.0})["steps"] == 4
  assert method.check_options({"guidance_interval": " 0.2, 1"})["guidance_interval"] == (0.2, 1.0)
  assert method.check_options({"guidance_interval": [0, 0.5]})["guidance_interval"] == (0.0, 0.5)
  assert method.check_options({"time_shift": "3"})["time_shift"] == 3.0
  assert method.default_options(_config()) == {"steps": 20, "guidance": 3.0, "solver": "euler",
                                               "guidance_interval": (0.0, 1.0),
                                               "time_shift": 1.0}


def test_load_frozen_without_checkpoint_is_a_user_error(tmp_path):
  method = FlowMethod.from_config(_config(first_stage_workdir=str(tmp_path / "nothing")))
  with pytest.raises(UserError) as e:
    method.load_frozen(_config(first_stage_workdir=str(tmp_path / "nothing")))
  assert "\n" not in str(e.value) and "experiments.flow_shapes" in str(e.value)
  with pytest.raises(UserError):
    method.load_frozen(_config(first_stage_workdir=""))


def test_bad_model_kwargs_are_user_errors():
  with pytest.raises(UserError):
    FlowMethod.from_config(_config(model_kwargs=ml_collections.ConfigDict({"widht": 3})))
  with pytest.raises(UserError):
    FlowMethod.from_config(_config(model_kwargs=ml_collections.ConfigDict({"patch": 3})))
  with pytest.raises(UserError):
    LatentAEMethod.from_config(_config(model_kwargs=ml_collections.ConfigDict(
        {"ae": {"chanels": (8,)}})))


def test_frozen_params_must_match_the_stage1_settings(ae_setup):
  _, ae_params = ae_setup
  other = dict(TINY, ae={"channels": (16,)})
  method = FlowMethod.from_config(_config(model_kwargs=ml_collections.ConfigDict(other)))
  with pytest.raises(UserError):
    method.frozen_from_params(ae_params)


def test_flow_experiments_read_every_caption_word():
  """The word encoder's positional table covers the captions each experiment stores, the
  two stages see one dataset (flow_flickr8k shares cvae_flickr8k's prepared data) and
  stage 2 is built for the autoencoder stage 1 trains."""
  from experiments import cvae_flickr8k, flow_flickr8k, flow_shapes, quickstart
  from t2i_jax.train import stages  # pylint: disable=import-outside-toplevel
  for module in (flow_shapes, quickstart, flow_flickr8k):
    c = module.get_config()
    resolved = {name: stage for name, stage, _ in stages.stage_configs(c, "w")}
    assert resolved["stage2"].model_kwargs.max_len >= c.max_caption_len
    # stage 2 builds: FlowMethod's own checks (whole heads, among others) pass, so the
    # quickstart's narrower width cannot inherit flow_shapes' 5 heads
    FlowMethod.from_config(resolved["stage2"])
    for stage in resolved.values():
      assert stage.max_caption_len == c.max_caption_len
    # stage 2 reads stage 1's params: one autoencoder architecture for both stages
    assert (resolved["stage2"].model_kwargs.ae.to_dict()
            == resolved["stage1"].model_kwargs.ae.to_dict())
  c, cv = flow_flickr8k.get_config(), cvae_flickr8k.get_config()
  for key in ("dataset", "split_scheme", "image_mode", "caption_mode", "max_caption_len",
              "remove_stopwords"):
    assert c[key] == cv[key], key
  assert (c.split_scheme, c.image_mode) == ("official", "center_crop")


def test_a_bad_stage2_setting_fails_before_stage1_trains(tmp_path):
  """flow_shapes run on past its rate's decay to 0: one line before any data or stage-1
  work, not after stage 1's minutes."""
  from experiments import flow_shapes  # pylint: disable=import-outside-toplevel
  from t2i_jax import train  # pylint: disable=import-outside-toplevel
  c = flow_shapes.get_config()
  c.stage2.max_steps = c.stage2.lr_decay_steps + 1000
  with pytest.raises(UserError, match="runs past the step where the wsd schedule") as e:
    train.train_stages(c, tmp_path / "w")
  assert "\n" not in str(e.value)
  assert not (tmp_path / "w").exists()


def test_the_judge_is_refused_where_nothing_is_sampled_or_num_is_negative(tmp_path):
  """--config.judge_num on a first stage, or below 0: one line before any data is read."""
  from experiments import flow_shapes  # pylint: disable=import-outside-toplevel
  from t2i_jax import train  # pylint: disable=import-outside-toplevel
  for stage, value, words in (("stage1", 8, "draws nothing from captions"),
                              ("stage2", -1, "judge_num must be at least 0")):
    c = flow_shapes.get_config()
    c[stage].judge_num = value
    with pytest.raises(UserError, match=words) as e:
      train.train_stages(c, tmp_path / stage)
    assert "\n" not in str(e.value)
    assert not (tmp_path / stage).exists()
