"""A contrastive image-text dual encoder for Flickr8k metrics (no Inception offline).

Why: R-precision (AttnGAN) needs a shared image-text space, and Fréchet distance / KID need
an image feature space; with no internet there is no Inception or CLIP, so this module
trains a small one on the official Flickr8k *train* split (never on test images):

* image tower: ``evals.scene_reader.PatchCNN`` on 64x64 images -> FEATURES (the space of
  ``FD_dual`` / ``KID_dual``) -> a linear projection to the joint space;
* text tower: the masked mean of GloVe 6B 50d vectors of the caption (stopwords removed)
  -> an MLP -> the joint space. It reads the raw caption itself, so its scores do not
  depend on a run's caption mode;
* symmetric InfoNCE with a learned temperature, one caption per image per batch (so no
  batch holds two captions of one image as each other's negatives).

Parameters are cached like the scene reader's, under
``$T2I_CACHE_DIR/dual_encoder/<key>`` (default ``~/.cache/t2i_jax/dual_encoder/<key>``),
keyed by VERSION, ``DualConfig`` and the training data (image mode and the official train
image ids).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t2i_jax.errors import UserError
from t2i_jax.evals import aux_net, scene_reader

VERSION = "dual_encoder_v1"


@dataclasses.dataclass(frozen=True)
class DualConfig:
  """Everything but the data that determines a trained dual encoder."""

  widths: tuple[int, int, int] = (48, 96, 256)  # image tower (PatchCNN)
  text_hidden: int = 256
  embed_dim: int = 64
  batch_size: int = 128
  # Passes over the train images, within [min_steps, max_steps]. On the shared sample (754
  # train images) 160 passes gave test R@1 5.0% on real images against 3.5% for 40. On the
  # full corpus (6,000 train images, Flickr8k at 128 px) the cap's 1,500 steps (32 passes)
  # gave 9.9% +- 2.5%, and 7,500 steps (160 passes) 8.8% +- 2.3%: it overfits. At 1,500
  # steps, 750 / 1,500 / 3,000 / 6,000 train images gave 4.3 / 5.5 / 8.0 / 9.3%: it is
  # short of data (experiments.judge_flickr8k; README, "the judge").
  epochs: float = 160.0
  min_steps: int = 200
  max_steps: int = 1500
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4
  init_temperature: float = 0.07
  max_shift: int = 4  # random translation (pixels, with edge padding) and horizontal flips
  seed: int = 0

  def num_steps(self, num_images: int) -> int:
    steps = int(round(self.epochs * num_images / self.batch_size))
    return int(np.clip(steps, self.min_steps, self.max_steps))


def official_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with the official Flickr8k split: train/dev/test by image."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.split_scheme = "official"
  return out


def data_key(image_ids: Sequence[str], num_pairs: int, image_mode: str,
             dataset: str = "flickr8k") -> dict[str, Any]:
  """What identifies the training data in the cache key (not where it is stored)."""
  digest = hashlib.sha1("\n".join(sorted(map(str, image_ids))).encode()).hexdigest()[:16]
  return {"dataset": dataset, "image_mode": image_mode, "train_images": len(image_ids),
          "train_pairs": int(num_pairs), "train_ids_sha1": digest}


def cache_dir(cfg: DualConfig, data: dict[str, Any]) -> Path:
  blob = json.dumps({"version": VERSION, **dataclasses.asdict(cfg), **data}, sort_keys=True)
  return aux_net.cache_root() / "dual_encoder" / hashlib.sha1(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------- model


class DualEncoderNet(nn.Module):
  """Image and text towers; ``logit_scale`` is the learned inverse temperature (log)."""

  cfg: DualConfig

  def setup(self):
    self.image_tower = scene_reader.PatchCNN(self.cfg.widths)
    self.image_proj = nn.Dense(self.cfg.embed_dim)
    self.text_hidden = nn.Dense(self.cfg.text_hidden)
    self.text_proj = nn.Dense(self.cfg.embed_dim)
    self.logit_scale = self.param(
        "logit_scale", lambda _: jnp.asarray(np.log(1.0 / self.cfg.init_temperature),
                                             jnp.float32))

  def image_features(self, images: jax.Array) -> jax.Array:
    """float images in [0, 1] -> the FD/KID feature space."""
    return self.image_tower(images)

  def embed_images(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    feats = self.image_features(images)
    return feats, _normalize(self.image_proj(feats))

  def embed_text(self, text: jax.Array) -> jax.Array:
    return _normalize(self.text_proj(nn.relu(self.text_hidden(text))))

  def __call__(self, images: jax.Array, text: jax.Array):
    _, img = self.embed_images(images)
    return img, self.embed_text(text), self.logit_scale


def _normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def info_nce(img: jax.Array, txt: jax.Array, logit_scale: jax.Array) -> jax.Array:
  """Symmetric InfoNCE: row i of each side matches row i of the other."""
  import optax  # pylint: disable=import-outside-toplevel
  scale = jnp.exp(jnp.minimum(logit_scale, np.log(100.0)))
  logits = scale * img @ txt.T
  labels = jnp.arange(img.shape[0])
  ce = optax.softmax_cross_entropy_with_integer_labels
  return 0.5 * (ce(logits, labels).mean() + ce(logits.T, labels).mean())


def caption_vectors(captions: Sequence[str]) -> np.ndarray:
  """Raw captions -> [N, 50] mean GloVe 6B 50d vectors of their cleaned, stopword-free words."""
  from t2i_jax import glove as glove_lib  # pylint: disable=import-outside-toplevel
  g = glove_lib.load(None)
  if not len(captions):
    return np.zeros((0, g.dim), np.float32)
  return np.stack([g.encode(str(c), mode="mean", remove_stopwords=True).vector
                   for c in captions]).astype(np.float32)


def _shift_flip(key: jax.Array, x: jax.Array, max_shift: int) -> jax.Array:
  """Random translation by up to ``max_shift`` pixels (edge padded) and horizontal flips."""
  b, h, w, _ = x.shape
  k1, k2 = jax.random.split(key)
  offs = jax.random.randint(k1, (b, 2), 0, 2 * max_shift + 1)
  xp = jnp.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
  x = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, 3)))(xp, offs)
  flip = jax.random.bernoulli(k2, 0.5, (b, 1, 1, 1))
  return jnp.where(flip, x[:, :, ::-1], x)


# ------------------------------------------------------------------------------ training


def train_dual_encoder(images: np.ndarray, image_index: np.ndarray, text: np.ndarray,
                       cfg: DualConfig = DualConfig(), progress: bool = True
                       ) -> tuple[Any, dict[str, Any]]:
  """Trains on pairs (images[image_index[i]], text[i]); returns (params, meta).

  Each step takes ``batch_size`` distinct images (a fresh permutation per pass) and one of
  each image's captions at random.
  """
  import optax  # pylint: disable=import-outside-toplevel
  num_images = len(images)
  by_image = [[] for _ in range(num_images)]
  for pair, im in enumerate(np.asarray(image_index)):
    by_image[int(im)].append(pair)
  usable = np.array([i for i in range(num_images) if by_image[i]])
  batch = min(cfg.batch_size, len(usable))
  if batch < 2:
    raise UserError("the dual encoder needs at least two captioned training images.")
  total = cfg.num_steps(len(usable))
  net = DualEncoderNet(cfg)
  key = jax.random.key(cfg.seed)
  params = net.init(key, jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, text.shape[-1])))["params"]
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate,
                                                min(100, total // 4 + 1), total)

  def batches():
    """``batch`` distinct images per step and one of each one's captions: (images, text)."""
    rng = np.random.default_rng([cfg.seed, 0xD0A1])
    order, pos = rng.permutation(usable), 0
    while True:
      if pos + batch > len(order):
        order, pos = rng.permutation(usable), 0
      ims = order[pos:pos + batch]
      pos += batch
      pairs = np.array([by_image[i][int(rng.integers(len(by_image[i])))] for i in ims])
      yield images[ims], text[pairs]

  t0 = time.time()
  params, losses = aux_net.train(
      params, optax.adamw(schedule, weight_decay=cfg.weight_decay),
      lambda p, b: info_nce(*net.apply({"params": p}, *b)), batches(),
      prepare=lambda b, k: (_shift_flip(k, jnp.asarray(b[0], jnp.float32) / 255.0,
                                        cfg.max_shift), b[1]),
      num_steps=total, key=key, log_every=50, desc="dual encoder training", progress=progress)
  meta = {"version": VERSION, "config": dataclasses.asdict(cfg), "steps": total,
          "batch_size": batch, "train_images": int(len(usable)),
          "train_pairs": int(len(image_index)), "losses": losses,
          "final_loss": losses[-1][1], "train_s": round(time.time() - t0, 1),
          "temperature": float(1.0 / np.exp(min(float(params["logit_scale"]),
                                                np.log(100.0)))),
          "backend": jax.default_backend()}
  return params, meta


# ----------------------------------------------------------------------------- inference


@functools.lru_cache(maxsize=4)
def _image_fn(cfg: DualConfig):
  net = DualEncoderNet(cfg)
  return jax.jit(lambda p, x: net.apply({"params": p}, jnp.asarray(x, jnp.float32) / 255.0,
                                        method="embed_images"))


@functools.lru_cache(maxsize=4)
def _text_fn(cfg: DualConfig):
  net = DualEncoderNet(cfg)
  return jax.jit(lambda p, t: net.apply({"params": p}, t, method="embed_text"))


@dataclasses.dataclass
class DualEncoder:
  """Trained parameters, the config that built them and the training meta."""

  params: Any
  cfg: DualConfig
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def embed_images(self, images: np.ndarray, batch_size: int = 256
                   ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 64, 64, 3] -> (features [N, F] for FD/KID, unit embeddings [N, E])."""
    images = np.asarray(images)
    outs = aux_net.apply_batched(_image_fn(self.cfg), self.params, images, batch_size)
    if not outs:
      return (np.zeros((0, self.cfg.widths[2]), np.float32),
              np.zeros((0, self.cfg.embed_dim), np.float32))
    return (np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs]))

  def embed_captions(self, captions: Sequence[str], batch_size: int = 1024) -> np.ndarray:
    """Raw caption strings -> unit embeddings [N, E]."""
    vecs = caption_vectors(list(captions))
    outs = aux_net.apply_batched(_text_fn(self.cfg), self.params, vecs, batch_size)
    return (np.concatenate(outs) if outs else np.zeros((0, self.cfg.embed_dim), np.float32))


def get_dual_encoder(config: ml_collections.ConfigDict, train_if_missing: bool = True,
                     cfg: DualConfig = DualConfig(), progress: bool = True,
                     table=None) -> DualEncoder:
  """The cached dual encoder for the official train split of ``config``'s Flickr8k (for a
  captioned folder, ``t2i_jax.data.folder``: its train split).

  ``table`` (the official train split, as ``pipeline.load_table`` returns it) saves a
  second read when the caller has it.
  """
  from t2i_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  if config.dataset not in ("flickr8k", "folder"):
    raise UserError("the dual encoder is for Flickr8k and captioned-folder runs; shapes runs "
                    "use the scene reader.")
  if table is None:
    table = pipeline.load_table(official_config(config), "train")
  data = data_key(table.image_ids, len(table), config.image_mode, config.dataset)
  directory = cache_dir(cfg, data)
  cached = aux_net.load_params(directory)
  if cached is None:
    if not train_if_missing:
      raise UserError(f"no trained dual encoder in {directory}; run `t2i evaluate` once "
                      "(it trains one) or call get_dual_encoder().")
    params, meta = train_dual_encoder(table.images, table.image_index,
                                      caption_vectors(table.captions), cfg, progress)
    aux_net.save_params(directory, params,
                        {**meta, "data": data, "cache_dir": str(directory)})
    cached = aux_net.load_params(directory)
  params, meta = cached
  return DualEncoder(params=params, cfg=cfg, meta=meta)


__all__ = ["DualConfig", "DualEncoder", "DualEncoderNet", "caption_vectors", "get_dual_encoder",
           "info_nce", "official_config", "train_dual_encoder"]
