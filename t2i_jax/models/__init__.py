"""Model registry: one name -> one flax module factory, so configs and the CLI name models.

Every registered model follows the interface documented in ``t2i_jax.models.paper``:
``model.apply({'params': p}, text, image_or_None, mask=caption_mask_or_None, train=bool,
rngs={'sample': k, 'dropout': k2})`` returns a dict with 'recon', 'mean', 'logvar', 'z'
(plus 'prior_mean', 'prior_logvar' for models with a learned prior). ``mask`` is the
[B, T] caption mask of sequence mode; models that read a caption vector ignore it.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn

from t2i_jax.errors import UserError
from t2i_jax.models import cvae, paper

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {
    "model1": paper.model1,
    "model2": paper.model2,
    "model3": paper.model3,
    "cvae": cvae.cvae,
}


def register_model(name: str, factory: ModelFactory) -> None:
  """Adds a model under ``name``; refuses to silently replace an existing one."""
  if name in _REGISTRY and _REGISTRY[name] is not factory:
    raise ValueError(f"model {name!r} is already registered")
  _REGISTRY[name] = factory


def available_models() -> list[str]:
  """Registered model names, sorted."""
  return sorted(_REGISTRY)


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """Builds the model registered as ``name``; ``kwargs`` override its defaults."""
  try:
    factory = _REGISTRY[name]
  except KeyError:
    raise UserError(f"Unknown model {name!r}; choose one of: "
                    f"{', '.join(available_models())}.") from None
  return factory(**kwargs)


__all__ = ["available_models", "cvae", "get_model", "register_model", "paper"]
