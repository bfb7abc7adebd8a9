"""Losses and metrics against hand computations in numpy."""

import math

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from t2i_jax import losses


def _example(batch=3, latent=150, seed=0):
  rng = np.random.default_rng(seed)
  recon = rng.uniform(size=(batch, 64, 64, 3)).astype(np.float32)
  target = rng.uniform(size=(batch, 64, 64, 3)).astype(np.float32)
  mean = rng.normal(size=(batch, latent)).astype(np.float32)
  logvar = (0.5 * rng.normal(size=(batch, latent))).astype(np.float32)
  return recon, target, mean, logvar


def _paper_loss_numpy(recon, target, mean, logvar):
  r, t, m, lv = (np.asarray(a, np.float64) for a in (recon, target, mean, logvar))
  mse = np.mean((r - t) ** 2)
  kl = -0.5 * np.mean(1 + lv - m**2 - np.exp(lv))
  return mse + kl, mse, kl


class PaperLossTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_numpy(self):
    recon, target, mean, logvar = _example()
    loss, aux = self.variant(losses.paper_loss)(recon, target, mean, logvar)
    want, want_mse, want_kl = _paper_loss_numpy(recon, target, mean, logvar)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(aux["mse"], want_mse, rtol=1e-5)
    np.testing.assert_allclose(aux["kl"], want_kl, rtol=1e-5)
    np.testing.assert_allclose(aux["loss"], loss)

  @chex.variants(with_jit=True, without_jit=True)
  def test_mask_ignores_padding(self):
    recon, target, mean, logvar = _example(batch=4)
    mask = np.array([1, 1, 0, 1], np.float32)
    loss, _ = self.variant(losses.paper_loss)(recon, target, mean, logvar, mask=mask)
    keep = mask.astype(bool)
    want, _, _ = _paper_loss_numpy(recon[keep], target[keep], mean[keep], logvar[keep])
    np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_gaussian_kl_matches_closed_form():
  _, _, mq, lq = _example(batch=2, latent=7, seed=1)
  _, _, mp, lp = _example(batch=2, latent=7, seed=2)
  got = losses.gaussian_kl(mq, lq, mp, lp)
  vq, vp = np.exp(lq.astype(np.float64)), np.exp(lp.astype(np.float64))
  want = 0.5 * np.sum(np.log(vp / vq) + (vq + (mq - mp) ** 2) / vp - 1, axis=-1)
  assert got.shape == (2,)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_gaussian_kl_zero_when_q_equals_p():
  _, _, m, lv = _example(batch=2, latent=9)
  np.testing.assert_allclose(losses.gaussian_kl(m, lv, m, lv), 0.0, atol=1e-6)
  np.testing.assert_allclose(losses.gaussian_kl(np.zeros((2, 9)), np.zeros((2, 9))), 0.0)


def test_posterior_kl_uses_declared_prior():
  _, _, m, lv = _example(batch=2, latent=5)
  np.testing.assert_allclose(losses.posterior_kl({"mean": m, "logvar": lv}),
                             losses.gaussian_kl(m, lv), rtol=1e-6)
  out = {"mean": m, "logvar": lv, "prior_mean": m, "prior_logvar": lv}
  np.testing.assert_allclose(losses.posterior_kl(out), 0.0, atol=1e-6)


@pytest.mark.parametrize("latent, ratio", [(150, 81.92), (50, 245.76)])
def test_mean_form_kl_weight_in_sum_form(latent, ratio):
  # paper_loss * 12288 = SSE + (12288 / L) * KL_sum: the effective KL weight of SEED.md.
  recon, target, mean, logvar = _example(latent=latent)
  loss, aux = losses.paper_loss(recon, target, mean, logvar)
  kl_sum = float(np.mean(losses.gaussian_kl(mean, logvar)))
  sse = float(np.mean(np.sum((recon - target).reshape(3, -1) ** 2, -1)))
  assert 64 * 64 * 3 / latent == pytest.approx(ratio)
  np.testing.assert_allclose(aux["kl"] * latent, kl_sum, rtol=1e-5)
  np.testing.assert_allclose(float(loss) * 12288, sse + ratio * kl_sum, rtol=1e-5)


def test_negative_elbo_matches_numpy():
  recon, target, mean, logvar = _example(latent=20)
  sigma = 0.1
  out = losses.negative_elbo(recon, target, mean, logvar, obs_sigma=sigma)
  r, t = recon.astype(np.float64), target.astype(np.float64)
  # Gaussian log density, written independently of the implementation.
  log_px = (-0.5 * ((t - r) / sigma) ** 2 - np.log(sigma * np.sqrt(2 * np.pi)))
  nll = -log_px.reshape(3, -1).sum(-1)
  lv, m = logvar.astype(np.float64), mean.astype(np.float64)
  kl = -0.5 * np.sum(1 + lv - m**2 - np.exp(lv), axis=-1)
  np.testing.assert_allclose(out["recon_nll_nats"], nll.mean(), rtol=1e-5)
  np.testing.assert_allclose(out["kl_nats"], kl.mean(), rtol=1e-5)
  np.testing.assert_allclose(out["nelbo_nats"], (nll + kl).mean(), rtol=1e-5)
  np.testing.assert_allclose(out["bits_per_dim"],
                             (nll + kl).mean() / (12288 * math.log(2)), rtol=1e-5)


def test_negative_elbo_perfect_recon_is_the_normaliser():
  recon, _, mean, _ = _example(latent=4)
  out = losses.negative_elbo(recon, recon, np.zeros_like(mean), np.zeros_like(mean),
                             obs_sigma=1.0)
  # Only the log-normaliser remains: 0.5 * log(2 pi) nats per dim.
  np.testing.assert_allclose(out["nelbo_nats"], 12288 * 0.5 * math.log(2 * math.pi),
                             rtol=1e-6)
  np.testing.assert_allclose(out["bits_per_dim"], 0.5 * math.log2(2 * math.pi), rtol=1e-6)


def test_paper_accuracy_constructed():
  target = np.zeros((2, 64, 64, 3), np.float32)
  target[..., 1] = 1.0  # every pixel's argmax is G
  pred = np.zeros_like(target)
  pred[0, ..., 1] = 0.9  # image 0: all correct
  pred[1, :16, :, 2] = 0.9  # image 1: a quarter of the rows say B ...
  pred[1, 16:, :, 1] = 0.9  # ... the rest say G
  np.testing.assert_allclose(losses.paper_accuracy(pred, target), (1.0 + 0.75) / 2)
  np.testing.assert_allclose(losses.paper_accuracy(pred, target, mask=[0, 1]), 0.75)
  np.testing.assert_allclose(losses.paper_accuracy(target, target), 1.0)


def test_paper_accuracy_black_pixels_count_as_red():
  # Ties go to channel 0 (as Keras argmax): a black target matches any R-dominant guess.
  target = np.zeros((1, 64, 64, 3), np.float32)
  pred = np.zeros_like(target)
  pred[..., 0] = 0.3
  np.testing.assert_allclose(losses.paper_accuracy(pred, target), 1.0)


class PsnrTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_psnr(self):
    target = np.full((2, 64, 64, 3), 0.5, np.float32)
    recon = target.copy()
    recon[0] += 0.1  # mse 0.01 -> 20 dB
    recon[1] += 0.01  # mse 1e-4 -> 40 dB
    np.testing.assert_allclose(self.variant(losses.psnr)(recon, target), 30.0, rtol=1e-4)

  @chex.variants(with_jit=True, without_jit=True)
  def test_identical_images_are_finite(self):
    x = np.random.default_rng(0).uniform(size=(2, 64, 64, 3)).astype(np.float32)
    got = self.variant(losses.psnr)(x, x)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, 100.0, rtol=1e-6)


def test_loss_is_float32_for_bfloat16_inputs():
  recon, target, mean, logvar = _example()
  loss, _ = losses.paper_loss(jnp.asarray(recon, jnp.bfloat16), target, mean, logvar)
  assert loss.dtype == jnp.float32
