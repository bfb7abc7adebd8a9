"""Stage 1 of the latent flow family: an image VAE (``t2i_jax.models.latent_ae``).

It learns the spatial latent that stage 2 (``t2i_jax.methods.flow``) generates in, from
images alone (captions are ignored), with the paper's kind of objective:

  loss = mean per-pixel squared error + kl_weight * KL

where KL is that of the posterior N(mean, exp(logvar)) to N(0, I) **averaged over latent
dimensions** (nats per dimension), so ``config.kl_weight`` weighs one pixel's error against
one latent dimension's KL, whatever the image and latent sizes. A small weight (~1e-4 to
1e-3) keeps reconstructions sharp and the latent tame; see the experiment modules for the
values used. ``config.equivariance_weight`` > 0 adds EQ-VAE's scale-equivariance term
(``LatentAEMethod.equivariance_mse``; off by default).

Settings: ``config.model_kwargs.ae`` (a dict of ``LatentAE`` fields) when it exists, else
the top level of ``config.model_kwargs``. The flow family reads ``model_kwargs.ae`` for
its frozen first stage, so one config can name both stages' architectures.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import chex
import jax
import jax.numpy as jnp
import ml_collections

from t2i_jax import losses
from t2i_jax.errors import UserError
from t2i_jax.methods.base import Batch, Method, Params
from t2i_jax.models import latent_ae as latent_ae_lib

Array = jax.Array

_AE_FIELDS = ("latent_channels", "channels", "num_res", "patch")


def ae_kwargs(config: ml_collections.ConfigDict, nested_only: bool = False) -> dict[str, Any]:
  """The stage-1 settings of ``config``: model_kwargs.ae, else (unless ``nested_only``) the top.

  Unknown keys raise a one-line UserError (a typo must not silently train the default).
  """
  kwargs = config.model_kwargs
  if "ae" in kwargs:
    source = kwargs["ae"]
  elif nested_only:
    return {}
  else:
    source = kwargs
  out = dict(source.to_dict() if isinstance(source, ml_collections.ConfigDict) else source)
  unknown = sorted(set(out) - set(_AE_FIELDS))
  if unknown:
    raise UserError(f"Unknown stage-1 (latent_ae) model_kwargs {', '.join(unknown)}; "
                    f"known: {', '.join(_AE_FIELDS)}.")
  return out


def build_ae(kwargs: Mapping[str, Any]) -> latent_ae_lib.LatentAE:
  try:
    return latent_ae_lib.latent_ae(**dict(kwargs))
  except (TypeError, ValueError) as e:
    raise UserError(f"Bad stage-1 (latent_ae) model_kwargs: {e}.") from None


def mean_kl_per_dim(mean: Array, logvar: Array) -> Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, averaged over its dimensions: [B]."""
  return losses.per_example_mean(losses.gaussian_kl_per_dim(mean, logvar))


def init_key(rng: Array) -> Array:
  """An 'rbg' key drawn from ``rng`` for parameter init: same key -> same params.

  Why: on XLA:CPU every threefry draw of a flax init compiles to its own loop, so a conv
  net's init took ~14 s to compile with threefry against ~2 s with rbg.
  """
  return jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl="rbg")


@dataclasses.dataclass(frozen=True)
class LatentAEMethod(Method):
  """Image VAE with a spatial latent; trained on images alone."""

  GENERATES: ClassVar[bool] = False
  SAMPLE_OPTIONS: ClassVar[Mapping[str, str]] = {}

  model: latent_ae_lib.LatentAE = latent_ae_lib.LatentAE()
  kl_weight: float = 1e-4
  equivariance_weight: float = 0.0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "LatentAEMethod":
    weight = float(config.equivariance_weight)
    if not weight >= 0:
      raise UserError(f"equivariance_weight must be >= 0, got {weight}.")
    return cls(model=build_ae(ae_kwargs(config)), kl_weight=float(config.kl_weight),
               equivariance_weight=weight)

  def init(self, rng: Array, batch: Batch, frozen: Params | None = None) -> Params:
    del frozen
    image = jnp.zeros((1,) + tuple(self.model.image_shape), jnp.float32)
    chex.assert_shape(batch["image"], (None,) + tuple(self.model.image_shape))
    return jax.jit(self.model.init)({"params": init_key(rng)}, image)["params"]

  def _forward(self, params: Params, image: Array, rng: Array | None):
    out = self.model.apply({"params": params}, image, rng)
    mse = losses.per_example_mean(jnp.square(out["recon"] - image.astype(jnp.float32)))
    kl = mean_kl_per_dim(out["mean"], out["logvar"])
    return out, mse, kl

  def loss(self, params: Params, batch: Batch, rng: Array, step: Array,
           frozen: Params | None = None) -> tuple[Array, dict[str, Array]]:
    del step, frozen
    image = batch["image"]
    chex.assert_shape(image, (None,) + tuple(self.model.image_shape))
    out, mse, kl = self._forward(params, image, rng)
    loss = jnp.mean(mse) + self.kl_weight * jnp.mean(kl)
    metrics = {"mse": jnp.mean(mse), "kl": jnp.mean(kl),
               "psnr": jnp.mean(losses.psnr_from_mse(mse)), "latent_std": jnp.std(out["mean"])}
    if self.equivariance_weight > 0:
      eq = self.equivariance_mse(params, out["z"], image)
      loss = loss + self.equivariance_weight * eq
      metrics["equivariance_mse"] = eq
    return loss, {"loss": loss, **metrics}

  def equivariance_mse(self, params: Params, z: Array, image: Array) -> Array:
    """Mean squared error of decode(halve(z)) against halve(image), halve = 2x2 average pool.

    EQ-VAE's scale equivariance (Kouzelis et al. 2025): the decoder must draw a half-size
    latent as the half-size image, so the latent's layout follows the image's and carries
    less high-frequency detail that only the decoder can read, which latent diffusion
    models learn faster in.
    """
    recon = self.decode(params, halve(z))
    return jnp.mean(jnp.square(recon - halve(image.astype(jnp.float32))))

  def eval_metrics(self, params: Params, batch: Batch, rng: Array,
                   frozen: Params | None = None) -> dict[str, Array]:
    """Per example, reconstructing from the posterior mean (deterministic): psnr, mse, kl."""
    del rng, frozen
    _, mse, kl = self._forward(params, batch["image"], None)
    return {"psnr": losses.psnr_from_mse(mse), "mse": mse, "kl": kl}

  def encode(self, params: Params, image: Array) -> tuple[Array, Array]:
    return self.model.apply({"params": params}, image, method=self.model.encode)

  def decode(self, params: Params, z: Array) -> Array:
    return self.model.apply({"params": params}, z, method=self.model.decode)

  def reconstruct(self, params: Params, images: Array, frozen: Params | None = None) -> Array:
    """Decodes the posterior mean of ``images``: what stage 2 can at best reproduce."""
    del frozen
    return self.model.apply({"params": params}, images, None)["recon"]

  def generate(self, params, text, mask, keys, frozen=None, **options):
    raise UserError("latent_ae is a first stage (an image autoencoder): it draws no image "
                    "from a caption; sample from the flow run trained on top of it.")


def halve(x: Array) -> Array:
  """[B, H, W, C] -> [B, H / 2, W / 2, C]: the mean of each 2x2 block."""
  b, h, w, c = x.shape
  return jnp.mean(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


__all__ = ["LatentAEMethod", "ae_kwargs", "build_ae", "halve", "init_key", "mean_kl_per_dim"]
