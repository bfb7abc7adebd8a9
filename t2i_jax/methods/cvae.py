"""The caption-following conditional VAE (Sohn et al. 2015) with a learned prior p(z | text).

Trained on ``losses.cvae_loss`` (MSE + beta * KL(q || p) per data dim, KL warm-up, free
bits, optional hybrid term); the model lives in ``t2i_jax.models.cvae``. Sampling draws
z from the prior, scaled by a temperature.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import ml_collections

from t2i_jax import losses
from t2i_jax.methods.vae import GaussianVAEMethod, check_temperature

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CVAEMethod(GaussianVAEMethod):
  """The CVAE family: the 'cvae' objective and a prior temperature at sampling."""

  kl_weight: float
  kl_warmup_steps: int
  free_bits: float
  gsnn_weight: float

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "CVAEMethod":
    return cls(**cls.common_fields(config), kl_weight=float(config.kl_weight),
               kl_warmup_steps=int(config.kl_warmup_steps), free_bits=float(config.free_bits),
               gsnn_weight=float(config.gsnn_weight))

  def objective(self, outputs: Mapping[str, Array], image: Array,
                step: Array | None) -> tuple[Array, dict[str, Array]]:
    return losses.cvae_loss(
        outputs["recon"], image, outputs["mean"], outputs["logvar"], outputs["prior_mean"],
        outputs["prior_logvar"], kl_weight=self.kl_weight, kl_warmup_steps=self.kl_warmup_steps,
        free_bits=self.free_bits, step=step, recon_prior=outputs.get("recon_prior"),
        gsnn_weight=self.gsnn_weight)

  def default_options(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
    return {"sample_latent": True, "temperature": float(config.sample_temperature)}

  def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
    options = super().check_options(options)
    options["temperature"] = check_temperature(options.get("temperature", 1.0))
    return options


__all__ = ["CVAEMethod"]
