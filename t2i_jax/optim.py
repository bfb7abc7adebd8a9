"""Optimisers, chosen by name; the default reproduces the paper's Keras RMSprop exactly."""

from __future__ import annotations

from typing import Any

import optax

from t2i_jax.errors import UserError


def keras_rmsprop(
    learning_rate: optax.ScalarOrSchedule, rho: float = 0.9, eps: float = 1e-7
) -> optax.GradientTransformation:
  """RMSprop as the paper's tf.keras (TF 2.x ``optimizer_v2``, no momentum) computed it.

  v_0 = 0;  v_t = rho * v_{t-1} + (1 - rho) * g_t^2;  update = -lr * g_t / (sqrt(v_t) + eps).

  This is ``optax.rmsprop`` with ``eps_in_sqrt=False`` (optax's default puts eps inside
  the square root, which differs a lot once sqrt(v) is near eps), ``initial_scale=0``, no
  bias correction, no centering and no momentum; it is used directly with those arguments.
  Note that Keras 3 changed this and divides by sqrt(v + eps) instead; the paper predates
  it.
  """
  return optax.rmsprop(
      learning_rate,
      decay=rho,
      eps=eps,
      initial_scale=0.0,
      eps_in_sqrt=False,
      centered=False,
      momentum=None,
      bias_correction=False,
  )


OPTIMIZERS = ("rmsprop", "adam", "adamw")


def make_optimizer(
    name: str = "rmsprop", learning_rate: optax.ScalarOrSchedule = 1e-3, **kwargs: Any
) -> optax.GradientTransformation:
  """Builds an optimiser by name: 'rmsprop' (Keras-matching, the paper's) or 'adam'.

  ``kwargs`` go to ``keras_rmsprop`` (rho, eps) or ``optax.adam`` (b1, b2, eps, ...).
  """
  if name == "rmsprop":
    return keras_rmsprop(learning_rate, **kwargs)
  if name == "adam":
    return optax.adam(learning_rate, **kwargs)
  if name == "adamw":
    return optax.adamw(learning_rate, **kwargs)
  raise UserError(f"Unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}.")
