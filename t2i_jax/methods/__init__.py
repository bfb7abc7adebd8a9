"""Model families behind one protocol (``base.Method``), and the registry that names them.

``config.model`` names the family's model (``model1``, ``cvae``, ``flow``, ...); ``get(config)``
builds its method. A family defined outside the library (a test file, a user's script)
calls ``register`` and is then trained, checkpointed, sampled and evaluated by the same
generic code.
"""

from __future__ import annotations

from typing import Type

import ml_collections

from t2i_jax.errors import UserError
from t2i_jax.methods import base, cvae, flow, latent_ae, paper_vae
from t2i_jax.methods.base import Method

_REGISTRY: dict[str, Type[Method]] = {}


def register(model: str, method: Type[Method]) -> None:
  """Names ``method`` as the family of ``config.model == model``; refuses to replace another."""
  if _REGISTRY.get(model, method) is not method:
    raise ValueError(f"model {model!r} is already registered to {_REGISTRY[model].__name__}")
  _REGISTRY[model] = method


def available() -> list[str]:
  """Registered model names, sorted."""
  return sorted(_REGISTRY)


def method_class(model: str) -> Type[Method]:
  try:
    return _REGISTRY[model]
  except KeyError:
    raise UserError(f"Unknown model {model!r}; choose one of: {', '.join(available())}.") from None


def get(config: ml_collections.ConfigDict) -> Method:
  """The method of ``config.model``, built from ``config``."""
  return method_class(config.model).from_config(config)


for _name in ("model1", "model2", "model3"):
  register(_name, paper_vae.PaperVAEMethod)
register("cvae", cvae.CVAEMethod)
register("latent_ae", latent_ae.LatentAEMethod)
register("flow", flow.FlowMethod)


__all__ = ["Method", "available", "base", "get", "method_class", "register"]
