"""Losses and metrics: the one place that defines what every model is trained and scored on.

* ``paper_loss``: the paper's objective, MSE (a mean) + KL (a mean over latent dims), which
  in the usual sum form weights the KL by 12288 / latent_dim (81.92 for 150 latent dims,
  245.76 for 50), one cause of the paper's posterior collapse.
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


def _per_example_mean(x: Array) -> Array:
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
  mean_q, logvar_q = _f32(mean_q), _f32(logvar_q)
  mean_p, logvar_p = _f32(mean_p), _f32(logvar_p)
  chex.assert_equal_shape([mean_q, logvar_q])
  kl = 0.5 * (logvar_p - logvar_q
              + (jnp.exp(logvar_q) + jnp.square(mean_q - mean_p)) * jnp.exp(-logvar_p)
              - 1.0)
  return jnp.sum(kl, axis=-1)


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
  mse = _batch_mean(_per_example_mean(jnp.square(recon - target)), mask)
  kl_per_example = gaussian_kl(mean, logvar) / mean.shape[-1]  # mean over latent dims
  kl = _batch_mean(kl_per_example, mask)
  loss = mse + kl_weight * kl
  return loss, {"loss": loss, "mse": mse, "kl": kl}


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
  return _batch_mean(_per_example_mean(_f32(hits)), mask)


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
  mse = jnp.maximum(_per_example_mean(jnp.square(recon - target)), mse_floor)
  return _batch_mean(-10.0 * jnp.log10(mse), mask)


LOSSES = ("paper",)
# The config keys ``compute_loss`` may read (plus any key starting with "loss_"); the trainer
# passes only these, so that runs differing in anything else share compiled steps.
LOSS_CONFIG_KEYS = ("loss", "kl_weight")


def loss_config(config) -> dict:
  """The part of ``config`` that ``compute_loss`` depends on, as a plain dict."""
  return {k: config[k] for k in config.keys()
          if k in LOSS_CONFIG_KEYS or str(k).startswith("loss_")}


def compute_loss(
    config, outputs: Mapping[str, Array], batch: Mapping[str, Array],
    mask: ArrayLike | None = None,
) -> tuple[Array, dict[str, Array]]:
  """The training objective named by ``config.loss``: the one switch the trainer uses.

  ``config`` is a ConfigDict or dict (only LOSS_CONFIG_KEYS and "loss_*" keys are read).
  ``batch['image']`` must already be float in [0, 1]. Returns (loss, metrics) with at
  least 'loss', 'mse' and 'kl' (scalars), so logs stay comparable across objectives.
  """
  name = config.get("loss", "paper")
  if name == "paper":
    return paper_loss(outputs["recon"], batch["image"], outputs["mean"], outputs["logvar"],
                      kl_weight=config.get("kl_weight", 1.0), mask=mask)
  from t2i_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  raise UserError(f"Unknown loss {name!r}; choose one of: {', '.join(LOSSES)}.")
