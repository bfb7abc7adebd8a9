"""The paper's models 1-3: exact sizes, Keras init, sampling and dropout semantics."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2i_jax import losses
from t2i_jax.errors import UserError
from t2i_jax.models import available_models, get_model, paper

PAPER_PARAMS = {"model1": 7_646_388, "model2": 7_646_388, "model3": 7_588_638}
LATENT = {"model1": 150, "model2": 150, "model3": 50}
B, D = 4, 50


def _count(params):
  return sum(x.size for x in jax.tree.leaves(params))


def _param_shapes(model, dim=D):
  """Parameter shapes without computing anything (fast even for 7.6M parameters)."""
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, dim)))["params"]


@functools.lru_cache(maxsize=None)
def _init(name):
  model = get_model(name)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, D)))["params"]
  return model, params


def _text(seed=1):
  return np.random.default_rng(seed).normal(size=(B, D)).astype(np.float32)


def _rngs(sample=2, dropout=3):
  return {"sample": jax.random.key(sample), "dropout": jax.random.key(dropout)}


def test_registry():
  assert {"model1", "model2", "model3"} <= set(available_models())
  with pytest.raises(UserError, match="Unknown model"):
    get_model("model9")


@pytest.mark.parametrize("name", ["model1", "model2", "model3"])
def test_param_count_is_the_papers(name):
  model = get_model(name)
  assert model.latent_dim == LATENT[name]
  # By the formula: encoder D->H, H->L twice, decoder L->300->600->12288, all with biases.
  h, l = model.hidden_dim, model.latent_dim
  formula = ((D + 1) * h + 2 * (h + 1) * l + (l + 1) * 300 + 301 * 600
             + 601 * 12288)
  assert formula == PAPER_PARAMS[name]
  assert _count(_param_shapes(model)) == PAPER_PARAMS[name]


def test_real_init_has_the_papers_count():
  assert _count(_init("model3")[1]) == PAPER_PARAMS["model3"]


def test_input_dim_is_inferred():
  shapes = _param_shapes(get_model("model1"), dim=300)
  assert shapes["encoder_hidden"]["kernel"].shape == (300, 100)


def test_keras_init():
  _, params = _init("model3")  # all paper models share PaperVAE and its initialisers
  for layer in params.values():
    np.testing.assert_array_equal(layer["bias"], 0.0)
    fan_in, fan_out = layer["kernel"].shape
    limit = math.sqrt(6.0 / (fan_in + fan_out))  # glorot_uniform bound
    k = np.asarray(layer["kernel"])
    assert np.abs(k).max() <= limit
    if k.size > 10_000:  # uniform(-a, a) has std a / sqrt(3)
      np.testing.assert_allclose(k.std(), limit / math.sqrt(3), rtol=0.05)


class ForwardTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_forward_shapes_dtypes_range(self):
    model, params = _init("model3")  # the variant with dropout

    @self.variant
    def fwd(p, text, rngs):
      return model.apply({"params": p}, text, None, train=True, rngs=rngs)

    out = fwd(params, _text(), _rngs())
    chex.assert_shape(out["recon"], (B, 64, 64, 3))
    chex.assert_shape([out["mean"], out["logvar"], out["z"]], (B, 50))
    chex.assert_type([out["recon"], out["mean"], out["logvar"], out["z"]], jnp.float32)
    recon = np.asarray(out["recon"])
    assert recon.min() >= 0.0 and recon.max() <= 1.0
    chex.assert_tree_all_finite(out)

  def test_loss_gradients_reach_every_parameter(self):
    model, params = _init("model3")
    image = np.random.default_rng(5).uniform(size=(B, 64, 64, 3)).astype(np.float32)

    @jax.jit
    def grads(p):
      def loss_fn(p):
        out = model.apply({"params": p}, _text(), image, train=True, rngs=_rngs())
        return losses.paper_loss(out["recon"], image, out["mean"], out["logvar"])[0]
      return jax.grad(loss_fn)(p)

    g = grads(params)
    for path, leaf in jax.tree_util.tree_leaves_with_path(g):
      assert np.abs(np.asarray(leaf)).max() > 0, path


def test_model1_forward_traced():
  """Model 1 traced without compute: its shapes, and train=True needs no dropout rng."""
  model = get_model("model1")
  rngs = {"sample": jax.random.key(0)}
  out = jax.eval_shape(
      lambda p, t: model.apply({"params": p}, t, None, train=True, rngs=rngs),
      _param_shapes(model), _text())
  assert out["recon"].shape == (B, 64, 64, 3) and out["recon"].dtype == jnp.float32
  for key in ("mean", "logvar", "z"):
    assert out[key].shape == (B, 150)


def test_deterministic_given_rng_and_different_across_rngs():
  model, params = _init("model3")
  apply = functools.partial(model.apply, {"params": params}, _text(), None, train=False)
  a, b = apply(rngs=_rngs(sample=7)), apply(rngs=_rngs(sample=7))
  np.testing.assert_array_equal(a["recon"], b["recon"])
  c = apply(rngs=_rngs(sample=8))
  assert not np.allclose(a["z"], c["z"])
  assert not np.allclose(a["recon"], c["recon"])
  # z is a reparameterised sample of the returned posterior: eps looks like N(0, 1).
  eps = (np.asarray(a["z"]) - a["mean"]) * np.exp(-0.5 * np.asarray(a["logvar"]))
  assert abs(eps.mean()) < 0.25 and abs(eps.std() - 1) < 0.25


def test_mean_decoding_at_eval_ignores_rngs():
  model, params = _init("model3")
  apply = functools.partial(model.apply, {"params": params}, _text(), None, train=False,
                            sample_latent=False)
  a = apply(rngs=_rngs(sample=1, dropout=1))
  b = apply(rngs=_rngs(sample=2, dropout=2))
  c = apply()  # needs no rng at all
  np.testing.assert_array_equal(a["recon"], b["recon"])
  np.testing.assert_array_equal(a["recon"], c["recon"])
  np.testing.assert_array_equal(a["z"], a["mean"])


def test_dropout_only_in_training_for_model3():
  model, params = _init("model3")
  apply = functools.partial(model.apply, {"params": params}, _text(), None,
                            sample_latent=False)
  t1 = apply(train=True, rngs=_rngs(dropout=1))
  t2 = apply(train=True, rngs=_rngs(dropout=2))
  assert not np.allclose(t1["recon"], t2["recon"])
  e = apply(train=False)
  assert not np.allclose(t1["recon"], e["recon"])
  # Models 1-2 have none (test_model1_forward_traced: train=True needs no dropout rng).
  assert get_model("model1").dropout_rate == 0 and get_model("model2").dropout_rate == 0


def test_image_argument_is_ignored():
  model, params = _init("model3")
  image = np.random.default_rng(9).uniform(size=(B, 64, 64, 3)).astype(np.float32)
  a = model.apply({"params": params}, _text(), image, train=False, rngs=_rngs())
  b = model.apply({"params": params}, _text(), None, train=False, rngs=_rngs())
  np.testing.assert_array_equal(a["recon"], b["recon"])
  with pytest.raises(AssertionError):
    model.apply({"params": params}, _text(), image[:, :32], rngs=_rngs())


def test_encode_decode_generate_methods():
  model, params = _init("model3")
  v = {"params": params}
  text = _text()
  mean, logvar = model.apply(v, text, method=model.encode)
  chex.assert_shape([mean, logvar], (B, 50))
  img = model.apply(v, mean, method=model.decode)
  full = model.apply(v, text, None, sample_latent=False)
  np.testing.assert_allclose(img, full["recon"], rtol=1e-6)
  g_mean = model.apply(v, text, sample_latent=False, method=model.generate)
  np.testing.assert_allclose(g_mean, img, rtol=1e-6)
  g1 = model.apply(v, text, jax.random.key(1), method=model.generate)
  g1b = model.apply(v, text, jax.random.key(1), method=model.generate)
  g2 = model.apply(v, text, jax.random.key(2), method=model.generate)
  chex.assert_shape(g1, (B, 64, 64, 3))
  np.testing.assert_array_equal(g1, g1b)
  assert not np.allclose(g1, g2)
  with pytest.raises(ValueError, match="rng"):
    model.apply(v, text, method=model.generate)


def test_paper_learning_rates():
  assert paper.PAPER_LEARNING_RATE == {"model1": 1e-2, "model2": 1e-3, "model3": 1e-3}
