"""The paper's models 1-3 (SEED.md): caption vector -> Gaussian latent -> 64x64 image.

Trained on the paper's loss (``losses.paper_loss``: MSE + kl_weight * the KL as a mean over
latent dims); the model lives in ``t2i_jax.models.paper``.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import ml_collections

from t2i_jax import losses
from t2i_jax.methods.vae import GaussianVAEMethod

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class PaperVAEMethod(GaussianVAEMethod):
  """Models 1-3: the text-only VAE of the paper, with its loss."""

  kl_weight: float

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "PaperVAEMethod":
    return cls(**cls.common_fields(config), kl_weight=float(config.kl_weight))

  def objective(self, outputs: Mapping[str, Array], image: Array,
                step: Array | None) -> tuple[Array, dict[str, Array]]:
    del step
    return losses.paper_loss(outputs["recon"], image, outputs["mean"], outputs["logvar"],
                             kl_weight=self.kl_weight)


__all__ = ["PaperVAEMethod"]
