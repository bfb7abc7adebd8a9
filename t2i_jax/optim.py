"""Optimisers, chosen by name; the default reproduces the paper's Keras RMSprop exactly."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers, MuonState, muon

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


# flax's MultiHeadDotProductAttention names its input projections so (3-D DenseGeneral kernels).
_ATTENTION_PROJECTIONS = ("query", "key", "value")


def muon_dimensions(params: Any) -> Any:
  """Which params Muon orthogonalises, and along which axes; None sends a leaf to AdamW.

  Every Dense kernel (2-D: inputs x outputs), flax attention's 3-D kernels (query, key
  and value are [features, heads, head_dim], heads x head_dim the output; ``out`` is
  [heads, head_dim, features]) and conv kernels, [kh, kw, in, out] (or a 1-D conv's [k, in,
  out]) flattened to (kh * kw * in) x out as in Keller Jordan's Muon. Biases, norms and
  embeddings go to AdamW.
  """
  def spec(path, leaf):
    names = [str(getattr(k, "key", k)) for k in path]
    if names[-1] != "kernel" or leaf.ndim not in (2, 3, 4):
      return None
    if leaf.ndim == 2:
      return MuonDimensionNumbers(0, 1)
    if leaf.ndim == 3 and len(names) > 1 and names[-2] in _ATTENTION_PROJECTIONS:
      return MuonDimensionNumbers(0, (1, 2))
    # ``out`` of attention, and any other conv: the last axis is the output.
    return MuonDimensionNumbers(tuple(range(leaf.ndim - 1)), leaf.ndim - 1)
  return jax.tree_util.tree_map_with_path(spec, params)


# optax.contrib.muon's default quintic Newton-Schulz coefficients (Keller Jordan's).
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def _matrix_axes(ndim: int, spec: MuonDimensionNumbers) -> tuple[tuple[int, ...], ...]:
  """The (reduction, output) axes of a Muon leaf, made non-negative."""
  as_tuple = lambda a: (a,) if isinstance(a, int) else tuple(a)
  return tuple(tuple(a % ndim for a in as_tuple(axes))
               for axes in (spec.reduction_axis, spec.output_axis))


def _as_matrices(x: jax.Array, spec: MuonDimensionNumbers):
  """x as a [1, rows, cols] stack with rows <= cols (as optax orients it), and the undo."""
  red, out = _matrix_axes(x.ndim, spec)
  perm = red + out
  shape = (1, math.prod(x.shape[a] for a in red), math.prod(x.shape[a] for a in out))
  transposed = shape[1] > shape[2]
  m = x.transpose(perm).reshape(shape)
  if transposed:
    m = jnp.swapaxes(m, 1, 2)
  permuted_shape, inverse = tuple(x.shape[a] for a in perm), tuple(np.argsort(perm).tolist())

  def undo(m):
    if transposed:
      m = jnp.swapaxes(m, 1, 2)
    return m.reshape(permuted_shape).transpose(inverse)
  return m, undo, tuple(sorted(shape[1:]))


def _is_spec(x: Any) -> bool:
  return x is None or isinstance(x, MuonDimensionNumbers)


def scale_by_batched_muon(beta: float = 0.95, ns_steps: int = 5, eps: float = 1e-8
                          ) -> optax.GradientTransformation:
  """``optax.contrib.scale_by_muon`` (Nesterov, Frobenius pre-scaling, its default
  coefficients) with the same state, but one Newton-Schulz chain per distinct matrix shape.

  Why: optax runs one chain of 15 small dots per matrix; a DiT has dozens of same-shape
  kernels, and on CPU the per-dot overhead dominates. Stacking them into one batched
  matmul per shape nearly halves the update's time (flow_shapes' stage 2: 49.5 against
  88.4 ms) and the math is the same: equal to optax's up to float rounding
  (tests/test_optim.py). Every leaf must be one of ``muon_dimensions``' matrices:
  ``make_muon`` sends the others to AdamW.
  """
  def init_fn(params):
    return MuonState(count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params),
                     ns_coeffs=jnp.asarray(_NS_COEFFS))

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, beta, 1)
    count = optax.safe_increment(state.count)
    mu_hat = jax.tree.map(lambda m, g: beta * m + (1 - beta) * g,
                          optax.tree.bias_correction(mu, beta, optax.safe_increment(count)),
                          optax.tree.bias_correction(updates, beta, count))
    leaves, treedef = jax.tree_util.tree_flatten(mu_hat)
    specs = jax.tree_util.tree_leaves(muon_dimensions(mu_hat), is_leaf=_is_spec)
    groups: dict[tuple[int, int], list[int]] = {}
    stacks, undos = [], []
    for i, (leaf, spec) in enumerate(zip(leaves, specs, strict=True)):
      m, undo, shape = _as_matrices(leaf, spec)
      stacks.append(m)
      undos.append(undo)
      groups.setdefault(shape, []).append(i)
    a_, b_, c_ = (state.ns_coeffs[k] for k in range(3))
    result = [None] * len(leaves)
    for members in groups.values():
      x = jnp.concatenate([stacks[i] for i in members])
      x = x / (jnp.linalg.norm(x, axis=(1, 2), keepdims=True) + eps)
      for _ in range(ns_steps):
        gram = x @ jnp.swapaxes(x, 1, 2)
        x = a_ * x + (b_ * gram + c_ * gram @ gram) @ x
      for j, i in enumerate(members):
        result[i] = undos[i](x[j:j + 1])
    return (jax.tree_util.tree_unflatten(treedef, result),
            MuonState(count=count, mu=mu, ns_coeffs=state.ns_coeffs))
  return optax.GradientTransformation(init_fn, update_fn)


def _scale_to_consistent_rms(rms: float) -> optax.GradientTransformation:
  """Each orthogonalised update times sqrt(max(fan_in, fan_out)) * rms, as optax's muon."""
  def update_fn(updates, state, params=None):
    del params
    def scale(u, spec):
      fan_in, fan_out = (math.prod(u.shape[a] for a in axes)
                         for axes in _matrix_axes(u.ndim, spec))
      return math.sqrt(max(fan_in, fan_out)) * rms * u
    return jax.tree.map(scale, updates, muon_dimensions(updates)), state
  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def make_muon(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
              weight_decay: float = 1e-4, consistent_rms: float = 0.2,
              matrix_lr_scale: float = 1.0, batched_newton_schulz: bool = False,
              **kwargs: Any) -> optax.GradientTransformation:
  """Muon (optax.contrib) on the weight matrices, AdamW (b1, b2) on the other params.

  ``consistent_rms=0.2`` scales each orthogonalised update to AdamW's typical RMS
  (Moonlight, Liu et al. 2025), so the AdamW learning rate and weight decay carry over
  unchanged; ``b1`` / ``b2`` name the AdamW half as they do for 'adamw'.
  ``matrix_lr_scale`` multiplies the Muon half's rate (warm-up and schedule included;
  optax scales its weight decay by the rate, so the matrices' decay too) and leaves the
  AdamW half at ``learning_rate``: orthogonalised updates often tolerate a higher rate
  than the embeddings and norms do.
  ``batched_newton_schulz`` swaps optax's per-matrix orthogonalisation for
  ``scale_by_batched_muon`` (the same math and state tree, one chain per matrix shape;
  1.07x the steps/s of flow_shapes' stage 2); ``kwargs`` are then its beta, ns_steps
  and eps, else optax muon's own.
  """
  adam_lr = None
  if matrix_lr_scale != 1.0:
    adam_lr = learning_rate
    if callable(learning_rate):
      schedule = learning_rate
      learning_rate = lambda step: matrix_lr_scale * schedule(step)
    else:
      learning_rate = matrix_lr_scale * learning_rate
  if not batched_newton_schulz:
    return muon(learning_rate, weight_decay=weight_decay, adam_b1=b1, adam_b2=b2,
                adam_weight_decay=weight_decay, consistent_rms=consistent_rms,
                adam_learning_rate=adam_lr, muon_weight_dimension_numbers=muon_dimensions,
                **kwargs)
  # The same partition and chain as optax.contrib.muon builds, so checkpoints and the
  # state tree are interchangeable between the two.
  labels = lambda params: jax.tree.map(lambda spec: "adam" if spec is None else "muon",
                                       muon_dimensions(params), is_leaf=_is_spec)
  return optax.partition(
      {"muon": optax.chain(scale_by_batched_muon(**kwargs),
                           _scale_to_consistent_rms(consistent_rms),
                           optax.add_decayed_weights(weight_decay),
                           optax.scale_by_learning_rate(learning_rate)),
       "adam": optax.adamw(learning_rate if adam_lr is None else adam_lr, b1=b1, b2=b2,
                           eps=kwargs.get("eps", 1e-8), weight_decay=weight_decay,
                           nesterov=True)},
      labels)


# The optimisers by name; each takes (learning_rate, **config.optimizer_kwargs).
_BUILDERS = {"rmsprop": keras_rmsprop, "adam": optax.adam, "adamw": optax.adamw,
             "muon": make_muon}
OPTIMIZERS = tuple(_BUILDERS)


def make_optimizer(
    name: str = "rmsprop", learning_rate: optax.ScalarOrSchedule = 1e-3, **kwargs: Any
) -> optax.GradientTransformation:
  """Builds an optimiser by name: 'rmsprop' (Keras-matching, the paper's), 'adam', 'adamw'
  or 'muon' (``make_muon``).

  ``kwargs`` go to the builder: ``keras_rmsprop`` (rho, eps), ``optax.adam`` /
  ``optax.adamw`` (b1, b2, eps, ...) or ``make_muon`` (b1, b2, weight_decay, ...).
  """
  if name not in _BUILDERS:
    raise UserError(f"Unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}.")
  try:
    return _BUILDERS[name](learning_rate, **kwargs)
  except TypeError as e:  # a misspelt or foreign key in config.optimizer_kwargs
    raise UserError(f"optimizer_kwargs {sorted(kwargs)} do not fit optimizer {name!r} ({e}); "
                    "fix the --config.optimizer_kwargs.KEY override, or set the optimizer's "
                    "own keys whole: --config.optimizer_kwargs=\"{'b2': 0.99}\" (under "
                    "config.stage2 for a two-stage run).") from e
