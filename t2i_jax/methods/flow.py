"""Stage 2 of the latent flow family: text-conditioned rectified flow in a frozen VAE latent.

Convention (that of SD3 / "rectified flow"; t = 0 is data, t = 1 is noise):

  x_t = (1 - t) * x0 + t * eps,   eps ~ N(0, I),   target velocity v = dx_t/dt = eps - x0.

``x0`` is the stage-1 posterior mean of ``batch['image']`` (frozen params) divided by
``latent_scale``, so the flow sees a latent of unit standard deviation. t is logit-normal
(sigmoid of N(t_mean, t_std)), which spends the steps on the middle of the path where the
layout is decided. Loss: mean squared error of the velocity. Captions are swapped for the
model's learned null caption with probability ``config.cfg_drop_rate``.

Two optional changes to the objective, both aimed at following the caption sooner (off by
default; each measured in docs/flow_experiments.md):

- ``config.contrastive_weight`` = lambda > 0: contrastive flow matching (Stoica et al.
  2025, "Delta-FM"): each captioned example's loss also *rewards* distance from another
  example's target (the batch rolled by one), ``|v - u|^2 - lambda |v - u_other|^2``, so
  the flows of different captions are pushed apart.
- ``config.model_guidance`` = w in [0, 1): model guidance (Tang et al. 2025, "Diffusion
  models without classifier-free guidance"): captioned examples regress onto
  ``u + w * sg(v(c) - v(null))``, the model's own guidance direction without a gradient
  (one more forward pass per step, with the null caption). Its fixed point is the guided
  field at scale 1 / (1 - w), so such a model is sampled with a lower guidance.

Sampling integrates from t = 1 (noise) to t = 0 with Euler or Heun on a uniform grid of
``steps`` steps, with classifier-free guidance

  v = v_null + g * (v_cond - v_null)  ==  v_cond + (g - 1) * (v_cond - v_null),

computed in the second form. For g == 1 given as a Python number the null pass is skipped
altogether, so the result is *exactly* the conditional model's (bitwise). With a guidance
interval (lo, hi) only the steps whose t lies in [lo, hi] are guided; the others take the
conditional velocity alone and skip the null pass (Kynkaanniemi et al. 2024, "Applying
guidance in a limited interval"); (0, 1), the default, guides every step.

Latent scale: ``model_kwargs.latent_scale`` > 0 fixes it; 0 (the default) measures it in
``load_frozen``: the standard deviation of the stage-1 posterior means of the first 1,000
training pairs of the stage-1 run's dataset (deterministic, so a resumed run gets the same
value). It travels in the frozen pytree: ``{"params": stage-1 params, "latent_scale": []}``.

Settings (``config.model_kwargs``): ``FlowDiT`` fields (patch, width, depth, num_heads,
mlp_ratio, text_layers, text_heads, text_width, shared_adaln, joint_attention, joint_blocks,
out_conv, max_len, pos_init) at the top level, the stage-1 architecture under ``ae`` (as
``t2i_jax.methods.latent_ae`` reads it), plus ``latent_scale``, ``t_mean``, ``t_std``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar, Mapping

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t2i_jax.errors import UserError
from t2i_jax.losses import per_example_mean
from t2i_jax.methods.base import Batch, Method, Params
from t2i_jax.methods.latent_ae import ae_kwargs, build_ae, init_key
from t2i_jax.models import flow_dit as flow_dit_lib
from t2i_jax.models import latent_ae as latent_ae_lib

Array = jax.Array

SOLVERS = ("euler", "heun")
_DIT_FIELDS = ("patch", "width", "depth", "num_heads", "mlp_ratio", "text_layers",
               "text_heads", "text_width", "shared_adaln", "joint_attention", "joint_blocks",
               "out_conv", "max_len", "pos_init")
_OWN_FIELDS = ("ae", "latent_scale", "t_mean", "t_std")
# Training pairs whose stage-1 latents set the measured latent scale.
_SCALE_PAIRS = 1000


def ema_update(ema: Params, params: Params, decay: float) -> Params:
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf (the trainer owns the real one)."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def _caption(batch: Batch) -> tuple[Array, Array | None]:
  return batch["text"], batch.get("mask")


def _in_batches(fn, images, size: int = 250) -> np.ndarray:
  """``fn`` over ``images`` in batches of ``size`` (one compiled shape but the last),
  concatenated as a numpy array: whole datasets through a frozen encoder."""
  return np.concatenate([np.asarray(fn(jnp.asarray(images[i:i + size])))
                         for i in range(0, max(len(images), 1), size)])


@dataclasses.dataclass(frozen=True)
class FlowMethod(Method):
  """Rectified flow over a frozen stage-1 latent; see the module docstring."""

  SAMPLE_OPTIONS: ClassVar[Mapping[str, str]] = {
      "steps": "sample_steps", "guidance": "sample_guidance", "solver": "sample_solver",
      "guidance_interval": "sample_guidance_interval", "time_shift": "sample_time_shift"}
  GENERATES: ClassVar[bool] = True

  model: flow_dit_lib.FlowDiT = flow_dit_lib.FlowDiT()
  ae: latent_ae_lib.LatentAE = latent_ae_lib.LatentAE()
  cfg_drop_rate: float = 0.1
  latent_scale: float = 0.0  # 0: measured in load_frozen
  t_mean: float = 0.0
  t_std: float = 1.0
  contrastive_weight: float = 0.0
  model_guidance: float = 0.0

  # ------------------------------------------------------------------------ building

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "FlowMethod":
    kw = config.model_kwargs
    kw = dict(kw.to_dict() if isinstance(kw, ml_collections.ConfigDict) else kw)
    unknown = sorted(set(kw) - set(_DIT_FIELDS) - set(_OWN_FIELDS))
    if unknown:
      raise UserError(f"Unknown flow model_kwargs {', '.join(unknown)}; known: "
                      f"{', '.join(_DIT_FIELDS + _OWN_FIELDS)}.")
    ae = build_ae(ae_kwargs(config, nested_only=True))
    dit_kw = {k: kw[k] for k in _DIT_FIELDS if k in kw}
    try:
      model = flow_dit_lib.flow_dit(latent_shape=ae.latent_shape, **dit_kw)
    except (TypeError, ValueError) as e:
      raise UserError(f"Bad flow model_kwargs: {e}.") from None
    h, w, _ = ae.latent_shape
    if h % model.patch or w % model.patch:
      raise UserError(f"model_kwargs.patch={model.patch} does not divide the stage-1 latent "
                      f"{h}x{w}.")
    if not 0 <= model.joint_blocks <= model.depth:
      raise UserError(f"model_kwargs.joint_blocks={model.joint_blocks} is not in [0, depth="
                      f"{model.depth}].")
    if model.width % model.num_heads or model.width % model.text_heads:
      raise UserError(f"model_kwargs.width={model.width} is not a multiple of num_heads="
                      f"{model.num_heads} and text_heads={model.text_heads}.")
    if model.pos_init not in ("normal", "sincos"):
      raise UserError(f"model_kwargs.pos_init must be 'normal' or 'sincos', not "
                      f"{model.pos_init!r}.")
    if model.pos_init == "sincos" and (model.width % 4 or (model.text_width or model.width) % 2):
      raise UserError(f"model_kwargs.pos_init='sincos' needs a width divisible by 4 and an even "
                      f"text width, not {model.width} / {model.text_width or model.width}.")
    rate = float(config.cfg_drop_rate)
    if not 0.0 <= rate < 1.0:
      raise UserError(f"cfg_drop_rate must be in [0, 1), got {rate}.")
    lam = float(config.contrastive_weight)
    if not (math.isfinite(lam) and 0.0 <= lam < 1.0):
      raise UserError(f"contrastive_weight must be in [0, 1), got {lam}.")
    w = float(config.model_guidance)
    if not (math.isfinite(w) and 0.0 <= w < 1.0):
      raise UserError(f"model_guidance must be in [0, 1) (guidance 1 / (1 - w) is learned), "
                      f"got {w}.")
    scale = float(kw.get("latent_scale", 0.0))
    if not (math.isfinite(scale) and scale >= 0):
      raise UserError(f"model_kwargs.latent_scale must be >= 0 (0 = measure), got {scale}.")
    return cls(model=model, ae=ae, cfg_drop_rate=rate, latent_scale=scale,
               t_mean=float(kw.get("t_mean", 0.0)), t_std=float(kw.get("t_std", 1.0)),
               contrastive_weight=lam, model_guidance=w)

  # -------------------------------------------------------------------- frozen stage 1

  def load_frozen(self, config: ml_collections.ConfigDict) -> Params:
    """{"params": stage-1 params, "latent_scale": float32 []} from config.first_stage_workdir."""
    from t2i_jax import checkpoint  # pylint: disable=import-outside-toplevel
    workdir = str(config.first_stage_workdir or "")
    if not workdir:
      raise UserError("config.first_stage_workdir is empty: the flow model needs a trained "
                      "stage 1; train it with `python -m experiments.flow_shapes --workdir W` "
                      "(both stages) or name a latent_ae run's workdir.")
    if checkpoint.latest_step(workdir) is None:
      raise UserError(f"no stage-1 checkpoint in {workdir}: train the latent autoencoder "
                      f"first (`python -m experiments.flow_shapes --workdir W` trains both "
                      f"stages) or point --config.first_stage_workdir at a latent_ae run.")
    ae_config, params, _ = checkpoint.restore_for_inference(workdir)
    frozen = self.frozen_from_params(params, workdir)
    if self.latent_scale > 0:
      return {**frozen, "latent_scale": jnp.float32(self.latent_scale)}
    images = _first_images(ae_config, _SCALE_PAIRS)
    return {**frozen, "latent_scale": self.measure_latent_scale(params, images)}

  def frozen_from_params(self, params: Params, where: str = "the stage-1 params") -> Params:
    """Checks ``params`` against this method's stage-1 architecture; {"params": params}."""
    want = jax.eval_shape(self.ae.init, jax.random.key(0),
                          jnp.zeros((1,) + tuple(self.ae.image_shape)))["params"]
    got = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), params)
    want = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), want)
    if got != want:
      raise UserError(f"the stage-1 params in {where} do not match model_kwargs.ae "
                      f"{self.ae_settings()}; give the flow config the stage-1 run's "
                      "model_kwargs as model_kwargs.ae.")
    return {"params": params}

  def ae_settings(self) -> dict[str, Any]:
    return {"latent_channels": self.ae.latent_channels, "channels": tuple(self.ae.channels),
            "num_res": self.ae.num_res, "patch": self.ae.patch}

  def measure_latent_scale(self, ae_params: Params, images: Array) -> Array:
    """Standard deviation of the stage-1 posterior means of ``images`` (float [N, 64, 64, 3])."""
    means = _in_batches(lambda x: self._encode_fn(ae_params, x)[0], images)
    std = float(np.std(means.astype(np.float64)))
    return jnp.float32(max(std, 1e-6))

  @functools.partial(jax.jit, static_argnums=0)
  def _encode_fn(self, ae_params, images):
    return self.ae.apply({"params": ae_params}, images, method=self.ae.encode)

  def _frozen(self, frozen: Params | None) -> tuple[Params, Array]:
    if frozen is None or "params" not in frozen:
      raise ValueError("the flow method needs frozen={'params': stage-1 params, "
                       "'latent_scale': []} (FlowMethod.load_frozen).")
    return frozen["params"], frozen["latent_scale"]

  def encode_latent(self, frozen: Params, image: Array) -> Array:
    """Images [B, 64, 64, 3] in [0, 1] -> normalised latents x0 (stage-1 mean / scale)."""
    ae_params, scale = self._frozen(frozen)
    mean, _ = self.ae.apply({"params": ae_params}, image, method=self.ae.encode)
    return jax.lax.stop_gradient(mean / scale)

  def image_features(self, frozen: Params | None, images: Array) -> Array:
    """The normalised stage-1 latents of uint8 ``images`` [N, 64, 64, 3]: numpy float32
    [N, *latent_shape], encoded in batches of 250 by the same ``encode_latent`` as a step
    (the encoder would otherwise run again on every example of every step: over half of
    a step's FLOPs at batch 128)."""
    chex.assert_rank(images, 4)
    # numpy, like the table's other columns: the trainer places them (on every process).
    return _in_batches(lambda x: self._latents_fn(frozen, x), images)

  @functools.partial(jax.jit, static_argnums=0)
  def _latents_fn(self, frozen, images):
    from t2i_jax.train.state import image_to_float  # pylint: disable=import-outside-toplevel
    return self.encode_latent(frozen, image_to_float(images))

  def decode_latent(self, frozen: Params, x: Array) -> Array:
    ae_params, scale = self._frozen(frozen)
    image = self.ae.apply({"params": ae_params}, x * scale, method=self.ae.decode)
    return jnp.clip(image, 0.0, 1.0)

  # ------------------------------------------------------------------------ training

  def init(self, rng: Array, batch: Batch, frozen: Params | None = None) -> Params:
    del frozen
    text, mask = _caption(batch)
    text, mask = text[:1], None if mask is None else mask[:1]
    x = jnp.zeros((1,) + tuple(self.model.latent_shape), jnp.float32)
    t = jnp.zeros((1,), jnp.float32)
    drop = jnp.zeros((1,), bool)
    return jax.jit(self.model.init)({"params": init_key(rng)}, x, t, text, mask, drop)["params"]

  def sample_t(self, rng: Array, batch: int) -> Array:
    return jax.nn.sigmoid(self.t_mean + self.t_std * jax.random.normal(rng, (batch,)))

  def _per_example_loss(self, params, x0, text, mask, rng, drop_rate, objective=False):
    """Per example: the velocity MSE, t and the dropped-caption flags; with ``objective``
    also the training objective (the MSE unless contrastive_weight / model_guidance)."""
    b = x0.shape[0]
    k_t, k_n, k_d = jax.random.split(rng, 3)
    t = self.sample_t(k_t, b)
    noise = jax.random.normal(k_n, x0.shape, x0.dtype)
    tt = t[:, None, None, None]
    xt = (1.0 - tt) * x0 + tt * noise
    drop = jax.random.uniform(k_d, (b,)) < drop_rate
    v = self.model.apply({"params": params}, xt, t, text, mask, drop)
    target = noise - x0
    mse = per_example_mean(jnp.square(v - target))
    if not objective:
      return mse, t, drop
    captioned = (~drop).astype(v.dtype)
    obj = mse
    if self.model_guidance > 0:
      v_null = self.model.apply({"params": params}, xt, t, text, mask, jnp.ones_like(drop))
      direction = jax.lax.stop_gradient(v - v_null) * captioned[:, None, None, None]
      obj = per_example_mean(jnp.square(v - target - self.model_guidance * direction))
    if self.contrastive_weight > 0:
      other = jnp.roll(target, 1, axis=0)  # another example's target, as Delta-FM's code
      obj = obj - self.contrastive_weight * captioned * per_example_mean(jnp.square(v - other))
    return mse, t, drop, obj

  def loss(self, params: Params, batch: Batch, rng: Array, step: Array,
           frozen: Params | None = None) -> tuple[Array, dict[str, Array]]:
    del step
    text, mask = _caption(batch)
    # The latents of the batch: precomputed once per image (``image_features``, where the
    # trainer keeps the table on the devices) or encoded here.
    x0 = (batch["features"] if "features" in batch
          else self.encode_latent(frozen, batch["image"]))
    chex.assert_rank(x0, 4)
    chex.assert_equal_shape_prefix([x0, text], 1)
    per, t, drop, obj = self._per_example_loss(params, x0, text, mask, rng,
                                               self.cfg_drop_rate, objective=True)
    loss, v_mse = jnp.mean(obj), jnp.mean(per)
    mid = (t > 0.25) & (t < 0.75)
    return loss, {"loss": loss, "v_mse": v_mse,
                  "v_mse_mid": jnp.sum(per * mid) / jnp.maximum(jnp.sum(mid), 1),
                  "caption_drop": jnp.mean(drop.astype(jnp.float32)),
                  "latent_std": jnp.std(x0)}

  def eval_metrics(self, params: Params, batch: Batch, rng: Array,
                   frozen: Params | None = None) -> dict[str, Array]:
    """Per example: the velocity MSE at a random logit-normal t with the caption ('v_mse')
    and, at the same t and noise, with the null caption ('v_mse_null').

    Their difference, 'caption_gain', is what the caption tells the model. v_mse alone can
    fall while captions are followed worse (a better image prior hides a weaker text path:
    measured, README), so the gain is the in-loop number to watch for caption following.
    """
    text, mask = _caption(batch)
    x0 = self.encode_latent(frozen, batch["image"])
    per, _, _ = self._per_example_loss(params, x0, text, mask, rng, 0.0)
    per_null, _, _ = self._per_example_loss(params, x0, text, mask, rng, 1.0)
    return {"v_mse": per, "v_mse_null": per_null, "caption_gain": per_null - per}

  # ------------------------------------------------------------------------ sampling

  def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(self.SAMPLE_OPTIONS))
    if unknown:
      raise UserError(f"Unknown sampling option(s) {', '.join(unknown)} for the flow model; "
                      f"use {', '.join(self.SAMPLE_OPTIONS)}.")
    out = dict(options)
    if "steps" in out:
      out["steps"] = _int_option("steps", out["steps"])
      if out["steps"] < 1:
        raise UserError(f"--steps must be at least 1, got {out['steps']}.")
    if "guidance" in out:
      out["guidance"] = _number_option("--guidance", out["guidance"], "a finite number >= 0",
                                       lambda g: g >= 0)
    if "solver" in out:
      s = str(out["solver"]).strip().lower()
      if s not in SOLVERS:
        raise UserError(f"Unknown --solver {out['solver']!r}; use one of {', '.join(SOLVERS)}.")
      out["solver"] = s
    if "guidance_interval" in out:
      out["guidance_interval"] = _interval_option(out["guidance_interval"])
    if "time_shift" in out:
      out["time_shift"] = _number_option("--time-shift", out["time_shift"],
                                         "a finite number > 0 (1 = uniform steps)",
                                         lambda s: s > 0)
    return out

  def guided_velocity(self, params: Params, x: Array, t: Array, cond: tuple, null: tuple,
                      guidance: Any) -> Array:
    """v_cond + (g - 1) (v_cond - v_null); for a Python g == 1 only the conditional pass."""
    v_c = self.model.apply({"params": params}, x, t, *cond, method=self.model.velocity)
    if isinstance(guidance, (int, float)) and float(guidance) == 1.0:
      return v_c
    v_u = self.model.apply({"params": params}, x, t, *null, method=self.model.velocity)
    return v_c + (guidance - 1.0) * (v_c - v_u)

  def initial_noise(self, keys: Array) -> Array:
    """Row b's starting noise from keys[b] alone: [B, *latent_shape]."""
    shape = tuple(self.model.latent_shape)
    return jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys)

  def sample_latents(self, params: Params, text: Array, mask: Array | None, keys: Array,
                     steps: int = 20, guidance: Any = 3.0, solver: str = "euler",
                     guidance_interval: tuple[float, float] = (0.0, 1.0),
                     time_shift: float = 1.0) -> Array:
    """Normalised latents x0 [B, *latent_shape] integrated from t = 1 to t = 0.

    The solver's grid is t_i = s u / (1 + (s - 1) u) at u = 1 - i / steps (SD3's time
    shift, Esser et al. 2024): s = ``time_shift`` > 1 spends more steps near the noise end,
    where the layout is chosen, s < 1 near the image; s = 1 is the uniform grid.
    """
    if solver not in SOLVERS:
      raise ValueError(f"unknown solver {solver!r}")
    b = text.shape[0]
    x = self.initial_noise(keys)
    chex.assert_shape(x, (b,) + tuple(self.model.latent_shape))
    cond = self.model.apply({"params": params}, text, mask, method=self.model.encode_text)
    null = self.model.apply({"params": params}, b, 1, method=self.model.null_text)
    velocity = functools.partial(self.guided_velocity, params, cond=cond, null=null)
    guided = functools.partial(velocity, guidance=guidance)
    lo, hi = (float(v) for v in guidance_interval)
    if lo <= 0.0 and hi >= 1.0:
      vel = guided
    else:
      conditional = functools.partial(velocity, guidance=1.0)  # the null pass skipped

      def vel(x, tb):  # every row shares t: one branch for the whole batch
        return jax.lax.cond((tb[0] >= lo) & (tb[0] <= hi), guided, conditional, x, tb)
    shift = float(time_shift)

    def grid(i):  # t at the solver's i-th point, and the step to the next
      if shift == 1.0:
        return 1.0 - i / steps, -1.0 / steps
      u, u_next = 1.0 - i / steps, 1.0 - (i + 1) / steps
      t, t_next = (shift * v / (1.0 + (shift - 1.0) * v) for v in (u, u_next))
      return t, t_next - t

    def body(i, x):
      t, dt = grid(i)
      tb = jnp.full((b,), t, jnp.float32)
      v = vel(x, tb)
      if solver == "euler":
        return x + dt * v
      x_pred = x + dt * v
      v2 = vel(x_pred, jnp.full((b,), t + dt, jnp.float32))
      return x + dt * 0.5 * (v + v2)

    return jax.lax.fori_loop(0, steps, body, x)

  @functools.partial(jax.jit, static_argnums=0,
                     static_argnames=("steps", "guidance", "solver", "guidance_interval",
                                      "time_shift"))
  def _generate_static(self, params, text, mask, keys, frozen, steps, guidance, solver,
                       guidance_interval, time_shift):
    x = self.sample_latents(params, text, mask, keys, steps, guidance, solver,
                            guidance_interval, time_shift)
    return self.decode_latent(frozen, x)

  @functools.partial(jax.jit, static_argnums=0,
                     static_argnames=("steps", "solver", "guidance_interval", "time_shift"))
  def _generate_traced(self, params, text, mask, keys, frozen, guidance, steps, solver,
                       guidance_interval, time_shift):
    x = self.sample_latents(params, text, mask, keys, steps, guidance, solver,
                            guidance_interval, time_shift)
    return self.decode_latent(frozen, x)

  def generate(self, params: Params, text: Array, mask: Array | None, keys: Array,
               frozen: Params | None = None, *, steps: int = 20, guidance: Any = 3.0,
               solver: str = "euler",
               guidance_interval: tuple[float, float] = (0.0, 1.0),
               time_shift: float = 1.0) -> Array:
    """Captions [B, T, D] (+ mask [B, T]) -> images [B, 64, 64, 3] float32 in [0, 1].

    Jitted inside (one compilation per steps / solver, and per guidance value when it is a
    Python number); also traceable under a caller's jit, guidance then static or traced.
    """
    chex.assert_axis_dimension(keys, 0, text.shape[0])
    if mask is not None:
      chex.assert_shape(mask, text.shape[:2])
    steps, solver = int(steps), str(solver)
    interval = tuple(float(v) for v in guidance_interval)
    if isinstance(guidance, (int, float)):
      return self._generate_static(params, text, mask, keys, frozen, steps=steps,
                                   guidance=float(guidance), solver=solver,
                                   guidance_interval=interval, time_shift=float(time_shift))
    return self._generate_traced(params, text, mask, keys, frozen, guidance, steps=steps,
                                 solver=solver, guidance_interval=interval,
                                 time_shift=float(time_shift))


def _number_option(flag: str, value: Any, requirement: str, ok) -> float:
  """``value`` as a float for which ``ok`` holds, else one line naming ``flag``."""
  try:
    number = float(value)
  except (TypeError, ValueError):
    number = math.nan
  if not math.isfinite(number) or not ok(number):
    raise UserError(f"{flag} must be {requirement}, got {value!r}.")
  return number


def _interval_option(value: Any) -> tuple[float, float]:
  """'lo,hi', or a pair of numbers, with 0 <= lo <= hi <= 1 -> (lo, hi)."""
  parts = value.replace(",", " ").split() if isinstance(value, str) else value
  bad = UserError(f"--guidance-interval must be two numbers LO,HI with 0 <= LO <= HI <= 1 "
                  f"(t = 1 is noise; 0,1 guides every step), got {value!r}.")
  try:
    lo, hi = (float(v) for v in parts)
  except (TypeError, ValueError):
    raise bad from None
  if not 0.0 <= lo <= hi <= 1.0:
    raise bad
  return lo, hi


def _int_option(name: str, value: Any) -> int:
  if isinstance(value, bool):
    raise UserError(f"--{name} must be a whole number, got {value!r}.")
  if isinstance(value, (int, np.integer)):
    return int(value)
  try:
    f = float(value)
  except (TypeError, ValueError):
    raise UserError(f"--{name} must be a whole number, got {value!r}.") from None
  if not math.isfinite(f) or not f.is_integer():
    raise UserError(f"--{name} must be a whole number, got {value!r}.")
  return int(f)


def _first_images(config: ml_collections.ConfigDict, num_images: int) -> np.ndarray:
  """The first ``num_images`` distinct training images of ``config``'s dataset, float [0, 1].

  Read through the one data path (``pipeline.load_table``), for the latent scale.
  """
  from t2i_jax.data import common, pipeline  # pylint: disable=import-outside-toplevel
  common.host_only_tensorflow()
  table = pipeline.load_table(config, "train")
  return table.images[:num_images].astype(np.float32) / 255.0


__all__ = ["FlowMethod", "SOLVERS", "ema_update"]
