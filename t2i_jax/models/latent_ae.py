"""Stage 1 of the latent flow model: a convolutional VAE, 64x64x3 image <-> spatial latent.

Why space-to-depth first: on XLA:CPU a conv at 64x64 or 32x32 costs ~6x more per step than
the same network run at 16x16 (docs/CPU_NOTES.md). The encoder therefore folds each 4x4
pixel block into channels (64x64x3 -> 16x16x48) before its first conv, and the decoder ends
with the inverse shuffle (``depth_to_space``), so no conv ever runs above 16x16.

  * encoder: image in [0, 1] -> [-1, 1] -> space_to_depth(patch) -> 3x3 conv ``channels[0]``
    -> ``num_res`` residual blocks per level, a stride-2 conv between levels (one per extra
    entry of ``channels``) -> 3x3 conv to 2 * latent_channels -> (mean, logvar).
  * decoder: the mirror: 3x3 conv -> residual blocks, sub-pixel 2x upsampling between
    levels -> 3x3 conv to patch^2 * 3 -> depth_to_space(patch) -> sigmoid.

With the defaults (patch 4, one level) the latent is 16x16x``latent_channels``; with
``channels=(128, 256)`` it is 8x8. ``latent_shape`` says which. Pure: no batch statistics,
no dropout, the only randomness is the reparameterisation key the caller passes.
"""

from __future__ import annotations

from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from t2i_jax.models.cvae import depth_to_space, soft_clip

Array = jax.Array

IMAGE_SHAPE = (64, 64, 3)


def space_to_depth(x: Array, block: int) -> Array:
  """[B, H, W, C] -> [B, H / block, W / block, C * block^2]; inverse of ``depth_to_space``."""
  b, h, w, c = x.shape
  if h % block or w % block:
    raise ValueError(f"space_to_depth: {h}x{w} is not a multiple of {block}")
  x = x.reshape(b, h // block, block, w // block, block, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // block, w // block, block * block * c)


class ResBlock(nn.Module):
  """x + conv(silu(conv(silu(x)))); the second conv starts at zero (block = identity)."""

  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = nn.Conv(self.channels, (3, 3), padding="SAME", dtype=self.dtype, name="conv0")(
        nn.silu(x))
    h = nn.Conv(self.channels, (3, 3), padding="SAME", dtype=self.dtype,
                kernel_init=nn.initializers.zeros, name="conv1")(nn.silu(h))
    return x + h


class LatentAE(nn.Module):
  """Image VAE with a spatial latent; see the module docstring.

  Attributes:
    latent_channels: Channels of the latent.
    channels: Conv width per level; level 0 runs at 64 / patch pixels, each further level
      halves the resolution (so len(channels) - 1 stride-2 steps).
    num_res: Residual blocks per level (each two 3x3 convs).
    patch: Space-to-depth factor of the first step (4: 64 -> 16).
  """

  latent_channels: int = 4
  channels: Sequence[int] = (128,)
  num_res: int = 1
  patch: int = 4
  image_shape: tuple[int, int, int] = IMAGE_SHAPE
  dtype: Any = jnp.float32

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    side = self.image_shape[0] // self.patch // 2 ** (len(self.channels) - 1)
    return (side, side, self.latent_channels)

  def setup(self):
    chans = tuple(self.channels)
    conv = lambda c, name, **kw: nn.Conv(c, (3, 3), padding="SAME", dtype=self.dtype,
                                         name=name, **kw)
    self.enc_in = conv(chans[0], "enc_in")
    self.enc_blocks = [[ResBlock(c, self.dtype, name=f"enc_res{i}_{j}")
                        for j in range(self.num_res)] for i, c in enumerate(chans)]
    self.enc_down = [nn.Conv(c, (3, 3), strides=(2, 2), padding="SAME", dtype=self.dtype,
                             name=f"enc_down{i}") for i, c in enumerate(chans[1:])]
    self.enc_out = conv(2 * self.latent_channels, "enc_out")
    self.dec_in = conv(chans[-1], "dec_in")
    rev = chans[::-1]
    self.dec_blocks = [[ResBlock(c, self.dtype, name=f"dec_res{i}_{j}")
                        for j in range(self.num_res)] for i, c in enumerate(rev)]
    self.dec_up = [conv(4 * c, f"dec_up{i}") for i, c in enumerate(rev[1:])]
    self.dec_out = conv(self.patch * self.patch * self.image_shape[-1], "dec_out")

  def encode(self, image: Array) -> tuple[Array, Array]:
    """Image [B, 64, 64, 3] in [0, 1] -> (mean, logvar), each [B, *latent_shape], float32."""
    chex.assert_shape(image, (None,) + tuple(self.image_shape))
    h = space_to_depth(image.astype(self.dtype) * 2.0 - 1.0, self.patch)
    h = self.enc_in(h)
    for i, blocks in enumerate(self.enc_blocks):
      if i:
        h = self.enc_down[i - 1](nn.silu(h))
      for block in blocks:
        h = block(h)
    stats = self.enc_out(nn.silu(h)).astype(jnp.float32)
    mean, logvar = jnp.split(stats, 2, axis=-1)
    return mean, soft_clip(logvar, 10.0)

  def decode(self, z: Array) -> Array:
    """Latent [B, *latent_shape] -> image [B, 64, 64, 3] in [0, 1] (a sigmoid).

    Fully convolutional: a latent of another size [B, h, w, C] decodes to [B, h * f, w * f,
    3] (f = 64 / latent side), as the scale-equivariance loss of stage 1 needs.
    """
    chex.assert_rank(z, 4)
    chex.assert_axis_dimension(z, -1, self.latent_shape[-1])
    h = self.dec_in(z.astype(self.dtype))
    for i, blocks in enumerate(self.dec_blocks):
      if i:
        h = depth_to_space(self.dec_up[i - 1](nn.silu(h)))
      for block in blocks:
        h = block(h)
    x = depth_to_space(self.dec_out(nn.silu(h)), self.patch)
    return nn.sigmoid(x.astype(jnp.float32))

  def __call__(self, image: Array, rng: Array | None = None) -> dict[str, Array]:
    """Encode, sample z = mean + std * eps (the mean when ``rng`` is None), decode."""
    mean, logvar = self.encode(image)
    if rng is None:
      z = mean
    else:
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
    return {"recon": self.decode(z), "mean": mean, "logvar": logvar, "z": z}


def latent_ae(**overrides: Any) -> LatentAE:
  """A LatentAE with its defaults; ``overrides`` change any attribute (lists -> tuples)."""
  if "channels" in overrides:
    overrides["channels"] = tuple(int(c) for c in overrides["channels"])
  return LatentAE(**overrides)


__all__ = ["LatentAE", "ResBlock", "latent_ae", "space_to_depth"]
