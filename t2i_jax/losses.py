"""Losses and metrics: the one place that defines what every model is trained and scored on.

* ``paper_loss``: the paper's objective, MSE (a mean) + KL (a mean over latent dims), which
  in the usual sum form weights the KL by 12288 / latent_dim (81.92 for 150 latent dims,
  245.76 for 50), one cause of the paper's posterior collapse.
* ``cvae_loss``: the CVAE's objective, MSE + beta * KL(q || learned prior) in per-dimension
  (ELBO-like) units, with KL warm-up and free bits.
* ``negative_elbo``: the standard sum-form negative ELBO of a Gaussian decoder with a fixed
  observation scale, in nats per image and bits per dimension: the honest comparison
  across models.
* ``gaussian_kl`` / ``posterior_kl``: KL(q || p) summed over latent dims, with an optional
  learned prior (CVAE).
* ``paper_accuracy`` (the number the paper reports; not an image-quality measure) and
  ``psnr``.

Every reduction over the batch takes an optional ``mask`` [B] (1 for real examples, 0 for
padding), so that a fixed-shape jitted evaluation can pad its last batch. All arithmetic is
done in float32 whatever the model's compute dtype.
"""

from __future__ import annotations

import math
from typing import Mapping

import chex
import jax
import jax.numpy as jnp

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

# Observation scale of the Gaussian decoder in ``negative_elbo`` on [0, 1] pixels.
DEFAULT_OBS_SIGMA = 0.1
# PSNR clips the per-image MSE from below so identical images give a finite 100 dB.
PSNR_MSE_FLOOR = 1e-10


def _f32(x: ArrayLike) -> Array:
  return jnp.asarray(x, jnp.float32)


def _batch_mean(values: Array, mask: ArrayLike | None) -> Array:
  """Mean of per-example values [B], over the examples where ``mask`` is nonzero."""
  chex.assert_rank(values, 1)
  if mask is None:
    return jnp.mean(values)
  mask = _f32(mask)
  chex.assert_equal_shape([values, mask])
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def per_example_mean(x: Array) -> Array:
  """Mean over all non-batch axes: [B, ...] -> [B]."""
  return jnp.mean(x.reshape(x.shape[0], -1), axis=-1)


def _per_example_sum(x: Array) -> Array:
  """Sum over all non-batch axes: [B, ...] -> [B]."""
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def gaussian_kl(
    mean_q: ArrayLike,
    logvar_q: ArrayLike,
    mean_p: ArrayLike = 0.0,
    logvar_p: ArrayLike = 0.0,
) -> Array:
  """KL(N(mean_q, exp(logvar_q)) || N(mean_p, exp(logvar_p))), summed over the last axis.

  Diagonal Gaussians; the prior defaults to N(0, I) and broadcasts (a learned prior
  passes arrays shaped like ``mean_q``). Returns [B] in nats.
  """
  return jnp.sum(gaussian_kl_per_dim(mean_q, logvar_q, mean_p, logvar_p), axis=-1)


def gaussian_kl_per_dim(
    mean_q: ArrayLike,
    logvar_q: ArrayLike,
    mean_p: ArrayLike = 0.0,
    logvar_p: ArrayLike = 0.0,
) -> Array:
  """The terms of ``gaussian_kl`` before the sum: [B, L] nats, one per latent dim."""
  mean_q, logvar_q = _f32(mean_q), _f32(logvar_q)
  mean_p, logvar_p = _f32(mean_p), _f32(logvar_p)
  chex.assert_equal_shape([mean_q, logvar_q])
  kl = 0.5 * (logvar_p - logvar_q
              + (jnp.exp(logvar_q) + jnp.square(mean_q - mean_p)) * jnp.exp(-logvar_p)
              - 1.0)
  return jnp.broadcast_to(kl, mean_q.shape)


def posterior_kl(outputs: Mapping[str, Array]) -> Array:
  """Per-example KL [B] from a model's outputs dict, with the prior it declares.

  Uses 'prior_mean' / 'prior_logvar' when the model returns them, else N(0, I), so the
  trainer needs no model-specific code.
  """
  return gaussian_kl(outputs["mean"], outputs["logvar"],
                     outputs.get("prior_mean", 0.0), outputs.get("prior_logvar", 0.0))


def paper_loss(
    recon: ArrayLike,
    target: ArrayLike,
    mean: ArrayLike,
    logvar: ArrayLike,
    *,
    kl_weight: float = 1.0,
    mask: ArrayLike | None = None,
) -> tuple[Array, dict[str, Array]]:
  """The paper's loss: MSE + kl_weight * KL, both as means (SEED.md, "Loss").

  MSE is the mean over all 64x64x3 values and the batch; KL is
  -0.5 * mean over latent dims and batch of (1 + logvar - mean^2 - exp(logvar)).
  Keras averaged per-example (mse + kl) over the batch, which is the same number.

  Args:
    recon: Decoder output [B, H, W, C].
    target: Target images [B, H, W, C] in [0, 1].
    mean: Posterior means [B, L].
    logvar: Posterior log-variances [B, L].
    kl_weight: Weight on the mean-form KL; 1 in the paper.
    mask: Optional [B] example weights (padding = 0).

  Returns:
    (loss, {'mse', 'kl', 'loss'}), all scalars.
  """
  recon, target = _f32(recon), _f32(target)
  mean, logvar = _f32(mean), _f32(logvar)
  chex.assert_equal_shape([recon, target])
  chex.assert_equal_shape([mean, logvar])
  chex.assert_equal_shape_prefix([recon, mean], 1)
  mse = _batch_mean(per_example_mean(jnp.square(recon - target)), mask)
  kl_per_example = gaussian_kl(mean, logvar) / mean.shape[-1]  # mean over latent dims
  kl = _batch_mean(kl_per_example, mask)
  loss = mse + kl_weight * kl
  return loss, {"loss": loss, "mse": mse, "kl": kl}


def kl_beta(step: ArrayLike | None, kl_weight: float, warmup_steps: int) -> Array:
  """KL weight at optimiser ``step``: linear from 0 to ``kl_weight`` over ``warmup_steps``.

  ``step`` None (evaluation) or ``warmup_steps`` <= 0 give the full ``kl_weight``, so eval
  losses compare across the run. Traceable in every argument (jit-safe).
  """
  kl_weight = _f32(kl_weight)
  if step is None:
    return kl_weight
  warmup = _f32(warmup_steps)
  frac = jnp.where(warmup > 0, jnp.minimum(_f32(step) / jnp.maximum(warmup, 1.0), 1.0), 1.0)
  return kl_weight * frac


def cvae_loss(
    recon: ArrayLike,
    target: ArrayLike,
    mean: ArrayLike,
    logvar: ArrayLike,
    prior_mean: ArrayLike = 0.0,
    prior_logvar: ArrayLike = 0.0,
    *,
    kl_weight: float = 0.02,
    kl_warmup_steps: int = 0,
    free_bits: float = 0.0,
    step: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    recon_prior: ArrayLike | None = None,
    gsnn_weight: float = 0.0,
) -> tuple[Array, dict[str, Array]]:
  """CVAE objective: MSE + beta * KL(q(z | x, y) || p(z | y)) / (H*W*C), per data dim.

  Normalisation: both terms are per image dimension. MSE is the mean over H*W*C values
  (as in ``paper_loss``); the KL is summed over latent dims, in nats, and divided by H*W*C.
  Multiplied by H*W*C / (2 sigma^2), this loss is the sum-form Gaussian negative ELBO with
  observation scale sigma = sqrt(beta / 2) (up to a constant), so ``kl_weight`` *is* a
  choice of decoder noise: 0.02 <-> sigma 0.1 (the ``negative_elbo`` default), 0.08 <->
  sigma 0.2. Why not the paper's KL mean over latent dims: that makes the KL weight grow
  with H*W*C / latent_dim (82x at 150 dims), which collapsed the paper's posterior; here
  the weight does not depend on the latent size, and the loss stays on the MSE's scale, so
  learning rates carry over from the paper models.

  Warm-up: beta = ``kl_weight`` * min(1, step / ``kl_warmup_steps``) (``kl_beta``), so the
  decoder learns to use z before the KL pulls it to the prior (Bowman et al. 2016).
  Free bits (Kingma et al. 2016): the KL of each latent dim, averaged over the batch, is
  replaced by max(KL_d, ``free_bits``): dims under ``free_bits`` nats cost a constant and get
  no gradient toward the prior, so the model keeps that much information per dim.
  Hybrid (Sohn et al. 2015, eq. 8): ``gsnn_weight`` * MSE(decode(z ~ p(z | y)), x) is added.
  The CVAE term alone trains the decoder on posterior samples only; generation decodes
  prior samples, and where the prior misses the posterior's region ("prior holes") the
  sample ignores the caption. This term trains that very path.

  Args:
    recon: Decoder output [B, H, W, C].
    target: Target images [B, H, W, C] in [0, 1].
    mean, logvar: Posterior q(z | image, text) [B, L].
    prior_mean, prior_logvar: Prior p(z | text) [B, L]; N(0, I) by default.
    kl_weight: Final beta (after warm-up).
    kl_warmup_steps: Steps of the linear warm-up; 0 disables it.
    free_bits: Nats per latent dim below which the KL is not penalised; 0 disables it.
    step: Optimiser step (``state.step``) for the warm-up; None means warm-up finished.
    mask: Optional [B] example weights (padding = 0).
    recon_prior: Decoded prior samples [B, H, W, C] (``CVAE(gsnn=True)``), for the hybrid.
    gsnn_weight: Weight of the hybrid term; > 0 needs ``recon_prior``.

  Returns:
    (loss, metrics) with scalars 'loss', 'mse', 'kl' (KL(q || p) in nats per image, before
    free bits), 'kl_free_bits' (the KL term after free bits, nats per image), 'beta',
    'active_dims' (latent dims whose batch-mean KL exceeds 0.01 nats), and with
    ``recon_prior``, 'mse_prior' (the MSE of the prior path).
  """
  recon, target = _f32(recon), _f32(target)
  chex.assert_equal_shape([recon, target])
  chex.assert_equal_shape_prefix([recon, _f32(mean)], 1)
  num_dims = math.prod(recon.shape[1:])
  mse = _batch_mean(per_example_mean(jnp.square(recon - target)), mask)
  kl_dims = gaussian_kl_per_dim(mean, logvar, prior_mean, prior_logvar)  # [B, L]
  if mask is None:
    kl_per_dim = jnp.mean(kl_dims, axis=0)  # [L]
  else:
    w = _f32(mask)
    kl_per_dim = jnp.sum(kl_dims * w[:, None], axis=0) / jnp.maximum(jnp.sum(w), 1.0)
  kl = jnp.sum(kl_per_dim)
  # max(KL_d, 0) = KL_d, so free_bits 0 is the plain KL (and traced values work under jit).
  kl_term = jnp.sum(jnp.maximum(kl_per_dim, _f32(free_bits)))
  beta = kl_beta(step, kl_weight, kl_warmup_steps)
  loss = mse + beta * kl_term / num_dims
  metrics = {"kl": kl, "kl_free_bits": kl_term, "beta": beta,
             "active_dims": jnp.sum(_f32(kl_per_dim > 0.01))}
  if gsnn_weight and recon_prior is None:
    raise ValueError("gsnn_weight > 0 needs the decoded prior sample: build the model with "
                     "model_kwargs.gsnn=True")
  if recon_prior is not None:
    recon_prior = _f32(recon_prior)
    chex.assert_equal_shape([recon_prior, target])
    mse_prior = _batch_mean(per_example_mean(jnp.square(recon_prior - target)), mask)
    loss = loss + _f32(gsnn_weight) * mse_prior
    metrics["mse_prior"] = mse_prior
  return loss, {"loss": loss, "mse": mse, **metrics}


def negative_elbo(
    recon: ArrayLike,
    target: ArrayLike,
    mean: ArrayLike,
    logvar: ArrayLike,
    prior_mean: ArrayLike = 0.0,
    prior_logvar: ArrayLike = 0.0,
    *,
    obs_sigma: float = DEFAULT_OBS_SIGMA,
    mask: ArrayLike | None = None,
) -> dict[str, Array]:
  """Sum-form negative ELBO of a Gaussian decoder N(x; recon, obs_sigma^2 I).

  -ELBO = sum_pixels [0.5 * ((x - recon) / sigma)^2 + log(sigma) + 0.5 * log(2 pi)]
          + KL(q(z|.) || p(z)),
  in nats per image, averaged over the batch. bits/dim = nats / (H*W*C * ln 2).

  Observation scale: ``obs_sigma`` is fixed (default 0.1 on [0, 1] pixels, i.e. a
  decoder that claims about +-0.1 accuracy) rather than fitted, so that numbers compare
  across models, runs and training objectives; report it with the results. The ELBO is a
  bound for that decoder whatever loss the model was trained with (a sigma fitted to the
  model's MSE would give a tighter bound). The density is continuous on [0, 1]-scaled
  pixels, so bits/dim can be negative; it is not the discrete 8-bit bits/dim of the
  likelihood literature (under uniform dequantisation that would be about this + 8).

  Args:
    recon: Decoder means [B, H, W, C].
    target: Images [B, H, W, C] in [0, 1].
    mean, logvar: Posterior [B, L].
    prior_mean, prior_logvar: Prior; N(0, I) by default, arrays [B, L] for a learned one.
    obs_sigma: Fixed decoder standard deviation.
    mask: Optional [B] example weights (padding = 0).

  Returns:
    Dict of scalars: 'nelbo_nats', 'recon_nll_nats', 'kl_nats' (per image) and
    'bits_per_dim'.
  """
  recon, target = _f32(recon), _f32(target)
  chex.assert_equal_shape([recon, target])
  num_dims = math.prod(recon.shape[1:])
  sq = _per_example_sum(jnp.square(recon - target))
  recon_nll = (0.5 * sq / obs_sigma**2
               + num_dims * (math.log(obs_sigma) + 0.5 * math.log(2.0 * math.pi)))
  kl = gaussian_kl(mean, logvar, prior_mean, prior_logvar)
  chex.assert_equal_shape([recon_nll, kl])
  nelbo = _batch_mean(recon_nll + kl, mask)
  return {
      "nelbo_nats": nelbo,
      "recon_nll_nats": _batch_mean(recon_nll, mask),
      "kl_nats": _batch_mean(kl, mask),
      "bits_per_dim": nelbo / (num_dims * math.log(2.0)),
  }


def paper_accuracy(
    recon: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None
) -> Array:
  """Keras categorical accuracy over the channel axis: the paper's "accuracy".

  Per pixel: argmax over R, G, B of the prediction equals that of the target (ties go to
  the first channel, so black letterbox pixels count as "R"), averaged over pixels and
  batch. Reported for comparison with the paper only; it does not measure image quality.
  """
  recon, target = jnp.asarray(recon), jnp.asarray(target)
  chex.assert_equal_shape([recon, target])
  chex.assert_rank(recon, 4)
  hits = jnp.argmax(recon, axis=-1) == jnp.argmax(target, axis=-1)
  return _batch_mean(per_example_mean(_f32(hits)), mask)


def psnr(
    recon: ArrayLike,
    target: ArrayLike,
    mask: ArrayLike | None = None,
    mse_floor: float = PSNR_MSE_FLOOR,
) -> Array:
  """Per-image PSNR (peak 1, images in [0, 1]) averaged over the batch, in dB.

  The per-image MSE is clipped below at ``mse_floor`` so an exact reconstruction gives a
  finite 10*log10(1/mse_floor) (100 dB by default) instead of inf, which would poison the
  average.
  """
  recon, target = _f32(recon), _f32(target)
  chex.assert_equal_shape([recon, target])
  return _batch_mean(psnr_from_mse(per_example_mean(jnp.square(recon - target)), mse_floor),
                     mask)


def psnr_from_mse(mse: ArrayLike, mse_floor: float = PSNR_MSE_FLOOR) -> Array:
  """PSNR in dB (peak 1) of each image from its mean squared error, floored as ``psnr``."""
  return -10.0 * jnp.log10(jnp.maximum(_f32(mse), mse_floor))
