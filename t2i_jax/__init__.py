"""t2i_jax: text-to-image generation in JAX, from GloVe-conditioned VAEs onwards."""

__version__ = "0.1.0"
