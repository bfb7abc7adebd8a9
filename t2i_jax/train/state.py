"""The training state: params, optimiser state, an optional EMA, optional frozen params.

``TrainState`` is a pytree whose children are what a run carries from step to step; its
static parts are the optax transformation, the family's method (``t2i_jax.methods``) and
the EMA decay. Equal configs build equal static parts, so a second run of the same setting
in one process (a sweep, the tests) reuses the compiled steps.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from t2i_jax import methods, optim
from t2i_jax.methods.base import Method

Batch = Mapping[str, Any]


class TrainState(struct.PyTreeNode):
  """step, params, opt_state, ema_params (None when off) and frozen (None or a pytree).

  ``frozen`` (a first stage from another run) reaches the method's every call but never the
  optimiser; checkpoints store it once, beside the run, not at every step.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any = None
  frozen: Any = None
  tx: optax.GradientTransformation = struct.field(pytree_node=False, default=None)
  method: Method = struct.field(pytree_node=False, default=None)
  ema_decay: float = struct.field(pytree_node=False, default=0.0)

  def apply_gradients(self, grads) -> "TrainState":
    """One optimiser update of ``params`` (and of the EMA, when on)."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    ema = self.ema_params
    if ema is not None:
      # Warmed up (as in tf.train.ExponentialMovingAverage's num_updates): the decay grows
      # as (1 + n) / (10 + n) to ema_decay, so a short run's EMA is not its init.
      n = (self.step + 1).astype(jnp.float32)
      decay = jnp.minimum(jnp.float32(self.ema_decay), (1.0 + n) / (10.0 + n))
      ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state, ema_params=ema)

  @property
  def eval_params(self):
    """The params evaluation and sampling use: the EMA when the run keeps one."""
    return self.params if self.ema_params is None else self.ema_params

  def checkpoint_tree(self) -> dict[str, Any]:
    """What a checkpoint holds: everything but the frozen params and the static parts."""
    tree = {"step": self.step, "params": self.params, "opt_state": self.opt_state}
    if self.ema_params is not None:
      tree["ema_params"] = self.ema_params
    return tree

  def with_checkpoint_tree(self, tree: Mapping[str, Any]) -> "TrainState":
    return self.replace(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"],
                        ema_params=tree.get("ema_params"))


@functools.lru_cache(maxsize=32)
def _optimizer(name: str, learning_rate: float, kwargs: tuple[tuple[str, Any], ...],
               warmup_steps: int, grad_clip_norm: float, schedule: str, decay_steps: int,
               final_fraction: float, decay_start: int):
  """One optax transformation per setting, so equal configs give equal (cache-hitting) states."""
  lr = learning_rate
  if schedule == "cosine":  # linear warm-up, cosine to lr * final_fraction, then constant
    lr = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, decay_steps,
                                            end_value=learning_rate * final_fraction)
  elif schedule == "wsd":  # linear warm-up, constant, linear to lr * final_fraction, constant
    lr = optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, warmup_steps),
         optax.constant_schedule(learning_rate),
         optax.linear_schedule(learning_rate, learning_rate * final_fraction,
                               decay_steps - decay_start)],
        [warmup_steps, decay_start])
  elif warmup_steps > 0:  # linear from 0 to the learning rate, then constant
    lr = optax.warmup_constant_schedule(0.0, learning_rate, warmup_steps)
  tx = optim.make_optimizer(name, lr, **dict(kwargs))
  if grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx


def optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimiser of ``config``: its name and kwargs, learning-rate schedule, gradient clip."""
  kwargs = config.optimizer_kwargs
  kwargs = kwargs.to_dict() if isinstance(kwargs, ml_collections.ConfigDict) else dict(kwargs)
  return _optimizer(config.optimizer, float(config.learning_rate), tuple(sorted(kwargs.items())),
                    int(config.warmup_steps), float(config.grad_clip_norm),
                    str(config.lr_schedule), int(config.lr_decay_steps),
                    float(config.lr_final_fraction), int(config.lr_decay_start))


def image_to_float(image: jax.typing.ArrayLike) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]; float images pass through as float32."""
  image = jnp.asarray(image)
  if jnp.issubdtype(image.dtype, jnp.integer):
    return image.astype(jnp.float32) / 255.0
  return image.astype(jnp.float32)


def float_batch(batch: Batch) -> dict[str, Any]:
  """The batch a method sees: images float32 in [0, 1], captions float32.

  Images stay uint8 on the host and in transfers; this runs inside the jitted functions.
  A batch of precomputed image features (``Method.image_features``) has no image.
  """
  out = dict(batch, text=jnp.asarray(batch["text"], jnp.float32))
  if "image" in batch:
    out["image"] = image_to_float(batch["image"])
  return out


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array,
                       example_batch: Batch, *, frozen: Any = None,
                       method: Method | None = None) -> TrainState:
  """Initialises the family's params on ``example_batch`` and the optimiser of ``config``.

  ``frozen`` are the run's frozen params (``method.load_frozen(config)`` when not given).
  """
  method = methods.get(config) if method is None else method
  if frozen is None:
    frozen = method.load_frozen(config)
  batch = float_batch(jax.tree.map(lambda x: np.asarray(x)[:1], dict(example_batch)))
  params = method.init(rng, batch, frozen)
  tx = optimizer(config)
  ema_decay = float(config.ema_decay)
  # One compiled init for the whole optimiser state: called eagerly, each zeros_like of a
  # new shape compiles on its own (about 20 of them, 0.75 s of a quickstart start-up).
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=jax.jit(tx.init)(params),
                     ema_params=params if ema_decay > 0 else None, frozen=frozen, tx=tx,
                     method=method, ema_decay=ema_decay)
  # Committed to the device, like a state restored from a checkpoint: jit keys its
  # executables on input placement, so fresh and resumed runs then share one compilation.
  return jax.device_put(state, jax.local_devices()[0])


__all__ = ["TrainState", "create_train_state", "float_batch", "image_to_float", "optimizer"]
