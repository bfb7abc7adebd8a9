"""The method protocol: everything specific to one model family, behind five calls.

After vdm's ``Experiment`` (a generic trainer calling ``loss_fn`` / ``sample_fn``): the
trainer, the in-loop eval, checkpoints, ``t2i sample``, ``t2i compare`` and ``t2i evaluate``
call only these methods, so a new family is one module plus one ``register`` line (which a
test file or a user's script may call too, without editing the library).

A method is a frozen dataclass built from a config (``from_config``): equal configs give
equal, hashable methods, so jitted steps that take it as a static argument compile once per
setting and are reused across runs in one process (a sweep, the tests).

Batches reaching a method are already float: ``batch['image']`` float32 [B, 64, 64, 3] in
[0, 1], ``batch['text']`` float32 [B, D] (sum/mean captions) or [B, T, D] (sequence mode),
and ``batch['mask']`` [B, T] in sequence mode (absent otherwise). ``frozen`` is the pytree of
parameters the optimiser never touches (a first stage from another run), or None.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import jax
import ml_collections

Array = jax.Array
Batch = Mapping[str, Any]
Params = Any


@dataclasses.dataclass(frozen=True)
class Method:
  """Base class of a model family; subclasses are frozen dataclasses built by ``from_config``."""

  # Options that ``generate`` takes, with the config key holding each one's default:
  # e.g. {"guidance": "sample_guidance", "steps": "sample_steps"}. t2i sample/evaluate
  # expose exactly these (and nothing else) for this family.
  SAMPLE_OPTIONS: ClassVar[Mapping[str, str]] = {}
  # False for families that cannot draw an image from a caption (a first-stage autoencoder).
  GENERATES: ClassVar[bool] = True

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Method":
    raise NotImplementedError

  def init(self, rng: Array, batch: Batch, frozen: Params | None = None) -> Params:
    """Fresh trainable params, shaped from ``batch`` (one example is enough)."""
    raise NotImplementedError

  def loss(self, params: Params, batch: Batch, rng: Array, step: Array,
           frozen: Params | None = None) -> tuple[Array, dict[str, Array]]:
    """(scalar training loss, {name: scalar metric}); the trainer logs every key returned."""
    raise NotImplementedError

  def eval_metrics(self, params: Params, batch: Batch, rng: Array,
                   frozen: Params | None = None) -> dict[str, Array]:
    """{name: [B] per-example values}; the in-loop eval averages them over real examples."""
    raise NotImplementedError

  def generate(self, params: Params, text: Array, mask: Array | None, keys: Array,
               frozen: Params | None = None, **options: Any) -> Array:
    """Caption tensors [B, ...] -> float images [B, 64, 64, 3] in [0, 1].

    ``keys`` holds one PRNG key per row: row b's randomness comes from ``keys[b]`` alone, so
    a grid extends without changing what is already in it. ``options`` are the keys of
    SAMPLE_OPTIONS, already checked by ``check_options``.
    """
    raise NotImplementedError

  def reconstruct(self, params: Params, images: Array, frozen: Params | None = None) -> Array:
    """Float images [B, 64, 64, 3] -> their reconstructions, for families that encode
    images (a first stage): ``t2i evaluate`` scores these where a family draws nothing."""
    raise NotImplementedError(f"{type(self).__name__} does not reconstruct images")

  def image_features(self, frozen: Params | None, images: Array) -> Array | None:
    """What the training loss reads of each distinct image, computed once, or None.

    A family whose loss sees the images only through frozen params (the flow model: the
    stage-1 latent) returns those features of ``images`` (uint8 [N, 64, 64, 3]); where the
    train table lives on the devices, the trainer keeps the features there in place of the
    images, and ``loss`` finds them as batch['features'] (no image in the batch). The
    frozen encoder then runs once per image per run instead of once per example per step.
    None (the default): the loss reads batch['image'].
    """
    del frozen, images
    return None

  def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` validated and converted (raise UserError with one line when wrong)."""
    return dict(options)

  def load_frozen(self, config: ml_collections.ConfigDict) -> Params | None:
    """The frozen params this run needs, or None: by default {'params': ...} of the run in
    ``config.first_stage_workdir`` (its EMA when it kept one) when that is set.

    The trainer calls this once, stores the result in WORKDIR/frozen and restores it from
    there on resume, so a run never silently picks up a retrained first stage.
    """
    if not config.first_stage_workdir:
      return None
    from t2i_jax import checkpoint  # pylint: disable=import-outside-toplevel
    _, params, _ = checkpoint.restore_for_inference(config.first_stage_workdir)
    return {"params": params}

  def default_options(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The run's own sampling options: the config values named by SAMPLE_OPTIONS."""
    return {name: config[key] for name, key in self.SAMPLE_OPTIONS.items()}


__all__ = ["Batch", "Method", "Params"]
