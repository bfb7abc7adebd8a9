"""The paper's three text-conditioned VAEs (SEED.md, "Models"), as pure flax.linen modules.

Each model maps a caption vector ``[B, D]`` (the sum of GloVe vectors; ``D`` is inferred
at init) to a 64x64x3 image through a dense encoder, a Gaussian latent and a dense decoder:

  * model 1 and model 2: Dense(100, relu) -> z_mean, z_log_var = Dense(150), Dense(150)
    -> Dense(300, relu) -> Dense(600, sigmoid) -> Dense(12288, sigmoid) -> 64x64x3.
    They differ only in the learning rate (1e-2 vs 1e-3), which is the trainer's business.
  * model 3: Dense(50, relu) -> Dense(50), Dense(50) -> Dense(300, relu) -> Dropout(0.2)
    -> Dense(600, sigmoid) -> Dropout(0.2) -> Dense(12288, sigmoid).

Kernels are glorot_uniform and biases zero, as Keras initialises them, so that the paper
experiments start from the same distribution. With D = 50 the parameter counts are
7,646,388 (models 1, 2) and 7,588,638 (model 3), exactly the paper's.

The interface every model in ``t2i_jax.models`` shares (the trainer relies on it)::

    outputs = model.apply({'params': p}, text, image_or_None, mask=mask_or_None,
                          train=bool, rngs={'sample': k1, 'dropout': k2})

returns a dict with
  * ``recon``  [B, 64, 64, 3] in [0, 1] (sigmoid output),
  * ``mean``, ``logvar`` [B, latent_dim]: the posterior q(z | ...) used for the KL,
  * ``z`` [B, latent_dim]: the latent that was decoded.
A model with a learned prior adds ``prior_mean`` and ``prior_logvar``; when they are absent
the prior is N(0, I) (see ``t2i_jax.losses.posterior_kl``).

``mask`` is the [B, T] caption mask of sequence mode (None otherwise); models that read one
caption vector ignore it.

The paper's encoder sees only the caption, so the paper models accept the image argument
(and check its shape) but ignore it; it exists so that the trainer's call is uniform with
models whose encoder reads the image (the CVAE).

The paper samples z at training, evaluation and generation alike; that is the default here
too. ``sample_latent=False`` decodes the posterior mean instead and needs no 'sample' rng.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

IMAGE_SHAPE = (64, 64, 3)

# The paper's learning rates (SEED.md); the architecture of models 1 and 2 is identical.
PAPER_LEARNING_RATE = {"model1": 1e-2, "model2": 1e-3, "model3": 1e-3}

# Keras Dense defaults: glorot_uniform kernel, zero bias.
_KerasDense = functools.partial(
    nn.Dense,
    kernel_init=nn.initializers.glorot_uniform(),
    bias_init=nn.initializers.zeros,
)


def reparameterize(mean: Array, logvar: Array, rng: chex.PRNGKey) -> Array:
  """z = mu + exp(0.5 * logvar) * eps, eps ~ N(0, I): a differentiable sample of q."""
  eps = jax.random.normal(rng, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps


class PaperVAE(nn.Module):
  """Dense text -> latent -> image VAE of the paper; see the module docstring.

  Attributes:
    hidden_dim: Width of the single encoder layer (100 for models 1-2, 50 for model 3).
    latent_dim: Size of z (150 for models 1-2, 50 for model 3).
    decoder_dims: Widths of the decoder's hidden layers (300 relu, 600 sigmoid).
    dropout_rate: Dropout after each decoder hidden layer; 0 disables it (models 1-2).
    image_shape: Output image shape; the last decoder layer has prod(image_shape) units.
    dtype: Computation dtype (parameters stay float32).
  """

  hidden_dim: int = 100
  latent_dim: int = 150
  decoder_dims: tuple[int, int] = (300, 600)
  dropout_rate: float = 0.0
  image_shape: tuple[int, int, int] = IMAGE_SHAPE
  dtype: Any = jnp.float32

  def setup(self):
    dense = functools.partial(_KerasDense, dtype=self.dtype)
    self.encoder_hidden = dense(self.hidden_dim, name="encoder_hidden")
    self.z_mean = dense(self.latent_dim, name="z_mean")
    self.z_log_var = dense(self.latent_dim, name="z_log_var")
    self.decoder_hidden1 = dense(self.decoder_dims[0], name="decoder_hidden1")
    self.decoder_hidden2 = dense(self.decoder_dims[1], name="decoder_hidden2")
    self.decoder_out = dense(math.prod(self.image_shape), name="decoder_out")
    self.dropout = nn.Dropout(rate=self.dropout_rate)

  def encode(self, text: Array) -> tuple[Array, Array]:
    """Caption vector [B, D] -> (mean, logvar), each [B, latent_dim]."""
    chex.assert_rank(text, 2)
    h = nn.relu(self.encoder_hidden(text))
    mean = self.z_mean(h)
    logvar = self.z_log_var(h)
    chex.assert_shape([mean, logvar], (text.shape[0], self.latent_dim))
    return mean, logvar

  def decode(self, z: Array, train: bool = False) -> Array:
    """Latent [B, latent_dim] -> image [B, 64, 64, 3] in [0, 1].

    Dropout (model 3) is active only when ``train`` and then needs the 'dropout' rng.
    """
    chex.assert_shape(z, (None, self.latent_dim))
    h = nn.relu(self.decoder_hidden1(z))
    if self.dropout_rate > 0:
      h = self.dropout(h, deterministic=not train)
    h = nn.sigmoid(self.decoder_hidden2(h))
    if self.dropout_rate > 0:
      h = self.dropout(h, deterministic=not train)
    x = nn.sigmoid(self.decoder_out(h))
    x = x.reshape((z.shape[0],) + tuple(self.image_shape))
    return x

  def __call__(
      self,
      text: Array,
      image: Array | None = None,
      *,
      mask: Array | None = None,
      train: bool = False,
      sample_latent: bool = True,
  ) -> dict[str, Array]:
    """Full VAE pass; ``image`` and ``mask`` are accepted for interface uniformity, ignored.

    Args:
      text: Caption vectors [B, D].
      image: Target images [B, 64, 64, 3] or None; unused (the encoder sees only text).
      mask: Caption mask of sequence mode, or None; unused (the input is one vector).
      train: Enables decoder dropout (model 3).
      sample_latent: Decode a sample of q(z | text) (the paper, needs rng 'sample'), or
        its mean when False.

    Returns:
      Dict with 'recon' [B, 64, 64, 3], 'mean', 'logvar' and 'z' [B, latent_dim].
    """
    del mask
    chex.assert_rank(text, 2)
    if image is not None:
      chex.assert_shape(image, (text.shape[0],) + tuple(self.image_shape))
    mean, logvar = self.encode(text)
    z = reparameterize(mean, logvar, self.make_rng("sample")) if sample_latent else mean
    recon = self.decode(z, train=train)
    chex.assert_shape(recon, (text.shape[0],) + tuple(self.image_shape))
    return {"recon": recon, "mean": mean, "logvar": logvar, "z": z}

  def generate(
      self, text: Array, rng: chex.PRNGKey | None = None, sample_latent: bool = True, *,
      mask: Array | None = None
  ) -> Array:
    """Caption vectors [B, D] -> images [B, 64, 64, 3], dropout off (Keras ``predict``).

    The paper samples z here too; ``rng`` is then required. With ``sample_latent=False``
    the posterior mean is decoded and ``rng`` is ignored. ``mask`` is ignored (uniformity).
    """
    del mask
    mean, logvar = self.encode(text)
    if sample_latent:
      if rng is None:
        raise ValueError("generate(sample_latent=True) needs an explicit rng key.")
      z = reparameterize(mean, logvar, rng)
    else:
      z = mean
    return self.decode(z, train=False)


def model1(**overrides: Any) -> PaperVAE:
  """Paper model 1 (learning rate 1e-2): 100-unit encoder, 150-d latent."""
  return PaperVAE(**{"hidden_dim": 100, "latent_dim": 150, "dropout_rate": 0.0,
                     **overrides})


def model2(**overrides: Any) -> PaperVAE:
  """Paper model 2 (learning rate 1e-3): the same architecture as model 1."""
  return PaperVAE(**{"hidden_dim": 100, "latent_dim": 150, "dropout_rate": 0.0,
                     **overrides})


def model3(**overrides: Any) -> PaperVAE:
  """Paper model 3 (learning rate 1e-3): 50-unit encoder, 50-d latent, decoder dropout 0.2."""
  return PaperVAE(**{"hidden_dim": 50, "latent_dim": 50, "dropout_rate": 0.2,
                     **overrides})
