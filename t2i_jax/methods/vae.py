"""What the Gaussian-latent VAE families share: the model call, per-example eval, generation.

The paper's models 1-3 (``paper_vae``) and the CVAE (``cvae``) differ only in their model
and their training objective; everything else is here. Their flax modules follow the
interface of ``t2i_jax.models``: ``apply(text, image, mask=, train=, sample_latent=)``
returns 'recon', 'mean', 'logvar', 'z' (plus 'prior_mean' / 'prior_logvar' for a learned
prior), and ``generate(text, rng, sample_latent, mask=, ...)`` draws images.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from t2i_jax import losses, models
from t2i_jax.errors import UserError
from t2i_jax.methods.base import Batch, Method, Params

Array = jax.Array


def cast_floats(tree, dtype):
  """Floating leaves of ``tree`` as ``dtype``; integer and bool leaves unchanged."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x,
      tree)


def model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  kwargs = config.model_kwargs
  return kwargs.to_dict() if isinstance(kwargs, ml_collections.ConfigDict) else dict(kwargs)


@functools.partial(jax.jit, static_argnums=0)
def _init_params(model: nn.Module, rngs, text, image):
  return model.init(rngs, text, image, train=False)["params"]


def per_example(fn, *arrays):
  """``fn`` of batch-level reductions, applied to each example alone: [B, ...] -> {name: [B]}.

  Every batch mean of a single example is that example's value, so the masked mean of the
  result over a batch is the batch-level metric; this is how the in-loop eval gets
  per-example values out of the losses module without a second copy of its formulas.
  """
  return jax.vmap(lambda *xs: fn(*[jax.tree.map(lambda a: a[None], x) for x in xs]))(*arrays)


@dataclasses.dataclass(frozen=True)
class GaussianVAEMethod(Method):
  """A VAE with a Gaussian latent: subclasses give ``objective`` and the sampling options."""

  model: nn.Module
  compute_dtype: str
  sample_latent_eval: bool
  obs_sigma: float

  @classmethod
  def common_fields(cls, config: ml_collections.ConfigDict) -> dict[str, Any]:
    return {"model": models.get_model(config.model, **model_kwargs(config)),
            "compute_dtype": str(config.precision),
            "sample_latent_eval": bool(config.sample_latent_eval),
            "obs_sigma": float(config.obs_sigma)}

  def objective(self, outputs: Mapping[str, Array], image: Array,
                step: Array | None) -> tuple[Array, dict[str, Array]]:
    """(loss, metrics) of the model's outputs against ``image``; ``step`` None at eval."""
    raise NotImplementedError

  # ---------------------------------------------------------------- the protocol

  def init(self, rng: Array, batch: Batch, frozen: Params | None = None) -> Params:
    del frozen
    text = jnp.asarray(batch["text"][:1], jnp.float32)
    params_rng, sample_rng, dropout_rng = jax.random.split(rng, 3)
    return _init_params(self.model, {"params": params_rng, "sample": sample_rng,
                                     "dropout": dropout_rng}, text, batch["image"][:1])

  def apply(self, params: Params, batch: Batch, rng: Array, *, train: bool,
            sample_latent: bool, compute_dtype: str = "float32") -> dict[str, Array]:
    """The model's outputs on ``batch`` as float32; ``compute_dtype`` 'bfloat16' runs the
    pass on bf16 copies of params and inputs (the casts sit inside any grad, so gradients
    come back float32)."""
    sample_rng, dropout_rng = jax.random.split(rng)
    text = jnp.asarray(batch["text"], jnp.float32)
    image = batch["image"]
    compute = jnp.dtype(compute_dtype)
    if compute != jnp.float32:
      params, text, image = cast_floats((params, text, image), compute)
    outputs = self.model.apply({"params": params}, text, image, mask=batch.get("mask"),
                               train=train, sample_latent=sample_latent,
                               rngs={"sample": sample_rng, "dropout": dropout_rng})
    return cast_floats(outputs, jnp.float32)

  def loss(self, params: Params, batch: Batch, rng: Array, step: Array,
           frozen: Params | None = None) -> tuple[Array, dict[str, Array]]:
    del frozen
    outputs = self.apply(params, batch, rng, train=True, sample_latent=True,
                         compute_dtype=self.compute_dtype)
    loss, metrics = self.objective(outputs, batch["image"], step)
    return loss, dict(metrics, paper_accuracy=losses.paper_accuracy(outputs["recon"],
                                                                    batch["image"]))

  def eval_metrics(self, params: Params, batch: Batch, rng: Array,
                   frozen: Params | None = None) -> dict[str, Array]:
    """Per example: the objective's metrics (full KL weight), paper_accuracy, psnr and the
    sum-form negative ELBO with ``obs_sigma`` (nelbo_nats, recon_nll_nats, kl_nats,
    bits_per_dim). z is sampled when ``sample_latent_eval`` (the paper), else the mean."""
    del frozen
    outputs = self.apply(params, batch, rng, train=False, sample_latent=self.sample_latent_eval)

    def one(out, image):
      _, metrics = self.objective(out, image, None)
      metrics = dict(metrics)
      metrics["paper_accuracy"] = losses.paper_accuracy(out["recon"], image)
      metrics["psnr"] = losses.psnr(out["recon"], image)
      metrics.update(losses.negative_elbo(
          out["recon"], image, out["mean"], out["logvar"], out.get("prior_mean", 0.0),
          out.get("prior_logvar", 0.0), obs_sigma=self.obs_sigma))
      return metrics

    return per_example(one, outputs, batch["image"])

  def default_options(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
    del config
    return {"sample_latent": True}

  def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
    options = dict(options)
    options["sample_latent"] = bool(options.get("sample_latent", True))
    return options

  def generate(self, params: Params, text: Array, mask: Array | None, keys: Array,
               frozen: Params | None = None, **options: Any) -> Array:
    """Row b decodes a latent drawn with ``keys[b]`` (the posterior mean with
    ``sample_latent=False``); the model's ``generate`` sees one row at a time."""
    del frozen
    sample_latent = options.pop("sample_latent", True)

    def one(row, row_mask, key):
      kwargs = dict(options) if row_mask is None else dict(options, mask=row_mask[None])
      return self.model.apply({"params": params}, row[None], key, sample_latent,
                              method="generate", **kwargs)[0]

    if mask is None:
      return jax.vmap(lambda row, key: one(row, None, key))(text, keys)
    return jax.vmap(one)(text, mask, keys)


def check_temperature(value: Any) -> float:
  """A sampling temperature as a float >= 0, or a one-line UserError."""
  try:
    temperature = float(value)
  except (TypeError, ValueError):
    temperature = math.nan
  if not math.isfinite(temperature) or temperature < 0:
    raise UserError(f"the sampling temperature must be a number >= 0, got {value}.")
  return temperature


__all__ = ["GaussianVAEMethod", "cast_floats", "check_temperature", "model_kwargs",
           "per_example"]
