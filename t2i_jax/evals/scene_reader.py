"""A scene reader for captioned shapes: a small CNN that reads a 64x64 image back.

Why: captions of the shapes set are checkable (``evals.shapes.caption_is_satisfied``), but only on
attributes read off the *generated* image. This module trains a classifier on procedural
renders from a seed namespace of its own (never the dataset's scenes) and predicts, per cell
of the 3x3 grid, whether it holds an object and that object's shape, colour and size, plus
the background. Blur, noise and brightness/contrast augmentation let it read the soft,
noisy images a generator produces; it must still be >= 99% right on clean renders.

Architecture: per cell, a small CNN over the cell's crop plus a dense layer over a window
centred on the cell's object (see ``object_patches``), weights shared across cells.

The trained parameters are cached as ``params.npz`` + ``meta.json`` (no pickle) under
``$T2I_CACHE_DIR/scene_reader/<key>`` (default ``~/.cache/t2i_jax/scene_reader/<key>``),
where ``<key>`` hashes VERSION and every field of ``ReaderConfig``: change either and a new
reader is trained; otherwise ``get_scene_reader`` loads the cached one. Training, batched
inference and the cache go through ``evals.aux_net``, as the dual encoder's do.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2i_jax.data import shapes
from t2i_jax.errors import UserError
from t2i_jax.evals import aux_net

VERSION = "scene_reader_v2"
# First entropy word of every render here; the dataset's scenes use [seed, split, index],
# three words, so these four-word streams never coincide with them.
_NAMESPACE = 0x5CE4E2EAD
_TRAIN_STREAM, _EVAL_STREAM = 1, 2
_NUM_SHAPES, _NUM_COLOURS, _NUM_SIZES = len(shapes.SHAPES), len(shapes.COLOURS), len(shapes.SIZES)
_PER_CELL = 2 + _NUM_SHAPES + _NUM_COLOURS + _NUM_SIZES
ATTRIBUTES = ("present", "shape", "colour", "size", "background")


@dataclasses.dataclass(frozen=True)
class ReaderConfig:
  """Everything that determines a trained reader; all of it goes into the cache key."""

  num_train: int = 20000  # procedural renders, generated up front
  num_eval: int = 2000  # held-out clean renders for the reported accuracy
  epochs: int = 3
  batch_size: int = 128
  learning_rate: float = 5e-3
  warmup_steps: int = 100
  widths: tuple[int, int, int] = (48, 96, 256)  # stage-1, stage-2 channels; hidden units
  patch_hidden: int = 128  # units reading the object-centred patch
  # Augmentation: gaussian blur sigma ~ U(0, max) on a share of images; additive noise
  # std ~ U(0, max); brightness shift ~ U(-b, b); contrast factor ~ U(1 - c, 1 + c).
  blur_prob: float = 0.6
  max_blur_sigma: float = 2.0
  max_noise_std: float = 0.06
  brightness: float = 0.08
  contrast: float = 0.15
  # Objects per training scene (0..3): wider than the dataset's 1-2 so that a generated
  # image with a missing or an extra blob is read as what it shows.
  object_count_probs: tuple[float, float, float, float] = (0.05, 0.4, 0.45, 0.1)
  seed: int = 0

  def key(self) -> str:
    blob = json.dumps({"version": VERSION, **dataclasses.asdict(self)}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def cache_dir(cfg: ReaderConfig) -> Path:
  return aux_net.cache_root() / "scene_reader" / cfg.key()


# --------------------------------------------------------------------------------- model


class SliceConv(nn.Module):
  """A convolution as shifted slices + one matmul.

  Why: XLA:CPU runs the gradient of ``lax.conv`` about 10x slower than a matmul of the
  same size; slicing and concatenating patches keeps training on CPU matmul-bound.
  """

  features: int
  window: int
  stride: int
  pad: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _, h, w, _ = x.shape
    p, k, s = self.pad, self.window, self.stride
    if p:
      x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    cols = [x[:, dy:dy + s * (ho - 1) + 1:s, dx:dx + s * (wo - 1) + 1:s]
            for dy in range(k) for dx in range(k)]
    return nn.Dense(self.features)(jnp.concatenate(cols, axis=-1))


class PatchCNN(nn.Module):
  """64x64 image in [0, 1] -> a feature vector: two strided stages and a dense layer.

  Stage 1 reads overlapping 6x6 windows every 4 pixels (16x16 map), stage 2 3x3 windows of
  that every 2 (8x8 map); the dense layer sees the whole 8x8 map. The dual encoder's image
  tower.
  """

  widths: tuple[int, int, int] = (48, 96, 256)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x - 0.5
    x = nn.relu(SliceConv(self.widths[0], window=6, stride=4, pad=1)(x))
    x = nn.relu(SliceConv(self.widths[1], window=3, stride=2, pad=1)(x))
    x = x.reshape(x.shape[0], -1)
    return nn.relu(nn.Dense(self.widths[2])(x))


CROP = 24  # cell crops: each 21.3 px cell plus about a pixel of margin on every side
_CROP_STARTS = (0, 21, 42)  # in the image padded by one pixel on every side
PATCH = 14  # object-centred window: a small object (<= 11 px) and a margin
FG_THRESHOLD = 0.15  # colour distance from the background above which a pixel is "object"


def cell_crops(x: jax.Array) -> jax.Array:
  """[B, 64, 64, C] -> [B, 9, 24, 24, C], cell-major (cell = 3 * row + col)."""
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  crops = [x[:, r:r + CROP, c:c + CROP] for r in _CROP_STARTS for c in _CROP_STARTS]
  return jnp.stack(crops, axis=1)


def background_colour(x: jax.Array) -> jax.Array:
  """[B, H, W, 3] -> [B, 1, 1, 3]: the median colour of every 4th pixel in each direction.

  Objects cover well under half of any scene, so the median is the background; the 16x16
  subsample keeps the sort cheap.
  """
  b = x.shape[0]
  return jnp.median(x[:, ::4, ::4].reshape(b, -1, x.shape[-1]), axis=1)[:, None, None, :]


def object_patches(x: jax.Array) -> jax.Array:
  """[B, 64, 64, 3] in [0, 1] -> [B, 9, PATCH, PATCH, 4] windows centred on each cell's object.

  Channels: RGB - 0.5 and the distance from the background colour. The centre is the
  centroid of the pixels that differ from the background by more than FG_THRESHOLD (the
  crop centre for an empty cell), counted inside the cell only. Why: small shapes (9-11 px) sit anywhere in their cell;
  centring them makes their silhouette position-free, which a dense layer then learns in a
  hundred steps instead of thousands.
  """
  b = x.shape[0]
  fg = jnp.sqrt(jnp.sum((x - background_colour(x)) ** 2, axis=-1, keepdims=True) + 1e-8)
  crops = cell_crops(jnp.concatenate([x - 0.5, fg], axis=-1))
  crops = jax.lax.stop_gradient(crops.reshape((b * shapes.NUM_CELLS, CROP, CROP, 4)))
  # Only the cell's own pixels place the window: a neighbour's edge in the crop's rim does not.
  inside = np.zeros((CROP, CROP), np.float32)
  inside[2:CROP - 2, 2:CROP - 2] = 1.0
  w = jax.nn.relu(crops[..., 3] - FG_THRESHOLD) * inside
  total = w.sum((1, 2))
  pos = jnp.arange(CROP, dtype=jnp.float32)
  mid = (CROP - 1) / 2
  cy = jnp.where(total > 1e-3, (w.sum(2) * pos).sum(1) / (total + 1e-6), mid)
  cx = jnp.where(total > 1e-3, (w.sum(1) * pos).sum(1) / (total + 1e-6), mid)
  half = PATCH // 2
  padded = jnp.pad(crops, ((0, 0), (half, half), (half, half), (0, 0)))
  oy = jnp.clip(jnp.round(cy).astype(jnp.int32), 0, CROP - 1)
  ox = jnp.clip(jnp.round(cx).astype(jnp.int32), 0, CROP - 1)
  patches = jax.vmap(lambda im, a, c: jax.lax.dynamic_slice(im, (a, c, 0), (PATCH, PATCH, 4)))(
      padded, oy, ox)
  return patches.reshape((b, shapes.NUM_CELLS, PATCH, PATCH, 4))


class SceneReaderNet(nn.Module):
  """Logits per cell (present, shape, colour, size) and for the background.

  Two views of every cell, both with weights shared across the nine cells (so each image
  gives nine examples of "what is in a cell"): a small CNN over the cell's crop, and a
  dense layer over the object-centred patch (``object_patches``), which is what reads
  small shapes. The background head reads the crop features averaged over cells.
  """

  widths: tuple[int, int, int] = (48, 96, 256)
  patch_hidden: int = 128

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    b, n = x.shape[0], shapes.NUM_CELLS
    crops = cell_crops(x - 0.5).reshape((b * n, CROP, CROP, x.shape[-1]))
    h = nn.relu(SliceConv(self.widths[0], window=6, stride=4, pad=1)(crops))  # 6x6
    h = nn.relu(SliceConv(self.widths[1], window=3, stride=2, pad=1)(h))  # 3x3
    patch = nn.relu(nn.Dense(self.patch_hidden)(object_patches(x).reshape(b, n, -1)))
    h = jnp.concatenate([h.reshape(b, n, -1), patch], axis=-1)
    h = nn.relu(nn.Dense(self.widths[2])(h))
    cells = nn.Dense(_PER_CELL)(h)
    ends = np.cumsum([2, _NUM_SHAPES, _NUM_COLOURS, _NUM_SIZES])
    present, shape, colour, size = jnp.split(cells, ends[:-1], axis=-1)
    return {"present": present, "shape": shape, "colour": colour, "size": size,
            "background": nn.Dense(len(shapes.BACKGROUNDS))(h.mean(axis=1))}


# ---------------------------------------------------------------------------------- data


def _reader_scene(rng: np.random.Generator, probs) -> shapes.Scene:
  """0-3 objects in distinct cells, every colour-shape pair possible (held-out ones too)."""
  num = int(rng.choice(len(probs), p=np.asarray(probs) / np.sum(probs)))
  cells = rng.choice(shapes.NUM_CELLS, size=num, replace=False)
  objects = tuple(
      shapes.Obj(shape=shapes.SHAPES[int(rng.integers(_NUM_SHAPES))],
                 colour=shapes.COLOURS[int(rng.integers(_NUM_COLOURS))],
                 size=shapes.SIZES[int(rng.integers(_NUM_SIZES))], cell=int(c))
      for c in cells)
  return shapes.Scene(background=shapes.BACKGROUNDS[int(rng.integers(len(shapes.BACKGROUNDS)))],
                      objects=objects)


def stack_attributes(attrs: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """A list of ``scene_attributes`` dicts -> one dict of stacked arrays."""
  return {k: np.stack([np.asarray(a[k]) for a in attrs]).astype(np.int32)
          for k in ATTRIBUTES}


def render_set(stream: int, num: int, seed: int = 0, probs=None, dataset_like: bool = False,
               progress: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """``num`` renders of this module's seed namespace: uint8 images and stacked attributes.

  ``dataset_like`` draws scenes as the dataset does (``shapes.sample_scene``, alternating
  the test and compositional rules), for the held-out accuracy.
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  probs = probs or ReaderConfig.object_count_probs
  images = np.empty((num, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3), np.uint8)
  attrs = []
  for i in tqdm(range(num), desc="scene reader renders", unit="img", disable=not progress,
                mininterval=2.0):
    rng = np.random.default_rng([_NAMESPACE, int(seed), stream, i])
    if dataset_like:
      scene = shapes.sample_scene(rng, "compositional" if i % 2 else "test")
    else:
      scene = _reader_scene(rng, probs)
    images[i] = shapes.render(scene, rng)
    attrs.append(shapes.scene_attributes(scene))
  return images, stack_attributes(attrs)


def _blur_taps(sigma: jax.Array, radius: int = 4) -> jax.Array:
  """[B] sigmas -> [B, 2r+1] normalised gaussian taps (sigma ~0 gives the identity)."""
  t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  s = jnp.maximum(sigma, 1e-3)[:, None]
  w = jnp.exp(-0.5 * (t[None] / s) ** 2)
  return w / w.sum(-1, keepdims=True)


def gaussian_blur(x: jax.Array, sigma: jax.Array, radius: int = 4) -> jax.Array:
  """Separable per-image blur of [B, H, W, C] with edge padding; cheap shifted sums."""
  taps = _blur_taps(sigma, radius)
  n = 2 * radius + 1
  h, w = x.shape[1], x.shape[2]
  xp = jnp.pad(x, ((0, 0), (radius, radius), (0, 0), (0, 0)), mode="edge")
  x = sum(taps[:, k, None, None, None] * xp[:, k:k + h] for k in range(n))
  xp = jnp.pad(x, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode="edge")
  return sum(taps[:, k, None, None, None] * xp[:, :, k:k + w] for k in range(n))


def augment(key: jax.Array, x: jax.Array, cfg: ReaderConfig) -> jax.Array:
  """Blur, contrast, brightness and noise on float images in [0, 1].

  All per-image draws come from one uniform call (two random calls in all: each one is
  seconds of XLA:CPU compile time).
  """
  b = x.shape[0]
  k_draws, k_noise = jax.random.split(key)
  u = jax.random.uniform(k_draws, (5, b))
  sigma = jnp.where(u[0] < cfg.blur_prob, u[1] * cfg.max_blur_sigma, 0.0)
  x = gaussian_blur(x, sigma)
  per_image = lambda v: v[:, None, None, None]
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  x = (x - mean) * per_image(1 + cfg.contrast * (2 * u[2] - 1)) + mean
  x = x + per_image(cfg.brightness * (2 * u[3] - 1))
  x = x + per_image(u[4] * cfg.max_noise_std) * jax.random.normal(k_noise, x.shape)
  return jnp.clip(x, 0.0, 1.0)


# ------------------------------------------------------------------------------ training


def reader_loss(logits: Mapping[str, jax.Array], attrs: Mapping[str, jax.Array]) -> jax.Array:
  """Presence and background cross-entropy, plus shape/colour/size where a cell is full."""
  import optax  # pylint: disable=import-outside-toplevel
  ce = optax.softmax_cross_entropy_with_integer_labels
  present = attrs["present"]
  occupied = (present > 0).astype(jnp.float32)
  loss = ce(logits["present"], present).mean() + ce(logits["background"],
                                                     attrs["background"]).mean()
  denom = jnp.maximum(occupied.sum(), 1.0)
  for key in ("shape", "colour", "size"):
    labels = jnp.maximum(attrs[key], 0)  # -1 (empty) is masked out below
    loss += (ce(logits[key], labels) * occupied).sum() / denom
  return loss


def _to_float(images) -> jax.Array:
  return jnp.asarray(images, jnp.float32) / 255.0


def train_scene_reader(cfg: ReaderConfig = ReaderConfig(), progress: bool = True
                       ) -> tuple[Any, dict[str, Any]]:
  """Trains a reader from scratch: (params, meta with held-out accuracy and timings)."""
  import optax  # pylint: disable=import-outside-toplevel
  t0, cpu0 = time.time(), time.process_time()
  images, attrs = render_set(_TRAIN_STREAM, cfg.num_train, cfg.seed,
                             probs=cfg.object_count_probs, progress=progress)
  render_s = time.time() - t0
  net = SceneReaderNet(cfg.widths, cfg.patch_hidden)
  # RngBitGenerator keys: XLA:CPU compiles a threefry normal of a whole batch of images in
  # seconds, this in a fraction of one.
  key = jax.random.key(cfg.seed, impl="rbg")
  params = net.init(key, jnp.zeros((1, 64, 64, 3)))["params"]
  steps_per_epoch = max(1, cfg.num_train // cfg.batch_size)
  total = steps_per_epoch * cfg.epochs
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, min(cfg.warmup_steps, max(total // 2, 1)), total)

  def batches():
    """Every epoch a fresh permutation, cut into sorted batches: (images, attrs)."""
    rng = np.random.default_rng([_NAMESPACE, cfg.seed, 3])
    for _ in range(cfg.epochs):
      perm = rng.permutation(cfg.num_train)
      for s in range(steps_per_epoch):
        idx = np.sort(perm[s * cfg.batch_size:(s + 1) * cfg.batch_size])
        yield images[idx], {k: v[idx] for k, v in attrs.items()}

  t1 = time.time()
  params, losses = aux_net.train(
      params, optax.adam(schedule),
      lambda p, batch: reader_loss(net.apply({"params": p}, batch[0]), batch[1]), batches(),
      prepare=lambda batch, k: (augment(k, _to_float(batch[0]), cfg), batch[1]),
      num_steps=total, key=key, log_every=20, desc="scene reader training",
      progress=progress)
  train_s = time.time() - t1
  reader = SceneReader(params=params, cfg=cfg)
  held_images, held_attrs = render_set(_EVAL_STREAM, cfg.num_eval, cfg.seed, dataset_like=True)
  accuracy = pooled_accuracy(reader.predict(held_images), held_attrs)
  meta = {"version": VERSION, "key": cfg.key(), "config": dataclasses.asdict(cfg),
          "heldout_accuracy": accuracy, "heldout_images": cfg.num_eval,
          "final_loss": losses[-1][1], "steps": total, "render_s": round(render_s, 1),
          "train_s": round(train_s, 1), "total_s": round(time.time() - t0, 1),
          "cpu_s": round(time.process_time() - cpu0, 1), "cpu_count": os.cpu_count(),
          "backend": jax.default_backend()}
  return reader.params, meta


# ----------------------------------------------------------------------------- inference


def pooled_accuracy(pred: Mapping[str, np.ndarray], true: Mapping[str, np.ndarray]
                    ) -> dict[str, float]:
  """Per-attribute accuracy pooled over a set, as ``evals.shapes.attribute_accuracy`` scores one.

  present: over all cells; shape/colour/size: over the true objects (a missed object
  counts as wrong); background and exact (whole scene right): over images.
  """
  p = {k: np.asarray(v) for k, v in pred.items()}
  t = {k: np.asarray(v) for k, v in true.items()}
  occupied = t["present"] > 0
  found = p["present"] > 0
  out = {"present": float(np.mean(found == occupied)),
         "background": float(np.mean(p["background"] == t["background"]))}
  exact = np.all(found == occupied, axis=1) & (p["background"] == t["background"])
  for key in ("shape", "colour", "size"):
    ok = (p[key] == t[key]) & found
    out[key] = float(ok[occupied].mean()) if occupied.any() else 1.0
    exact &= np.all(ok | ~occupied, axis=1)
  out["exact"] = float(np.mean(exact))
  return out


def attributes_at(pred: Mapping[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
  """Image ``i`` of a batched prediction, as the dict ``caption_is_satisfied`` takes."""
  return {k: np.asarray(v[i]) for k, v in pred.items()}


@functools.lru_cache(maxsize=4)
def _predict_fn(widths: tuple[int, int, int], patch_hidden: int):
  net = SceneReaderNet(widths, patch_hidden)

  @jax.jit
  def fn(params, images):
    logits = net.apply({"params": params}, _to_float(images))
    out = {k: jnp.argmax(v, -1).astype(jnp.int32) for k, v in logits.items()}
    present = out["present"] > 0
    for k in ("shape", "colour", "size"):
      out[k] = jnp.where(present, out[k], -1)
    return out

  return fn


@dataclasses.dataclass
class SceneReader:
  """Trained parameters and the config that built them."""

  params: Any
  cfg: ReaderConfig
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def predict(self, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """uint8 images [N, 64, 64, 3] -> ``scene_attributes`` layout, stacked over N.

    Batches are padded to ``batch_size``, so any N compiles once. One image broadcast
    over N (a zero leading stride, as the mean-image baseline's) is read once.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (64, 64, 3):
      raise ValueError(f"images must be [N, 64, 64, 3], got {images.shape}")
    if len(images) > 1 and images.strides[0] == 0:
      one = self.predict(images[:1], batch_size)
      return {k: np.repeat(v, len(images), axis=0) for k, v in one.items()}
    parts = aux_net.apply_batched(_predict_fn(tuple(self.cfg.widths), self.cfg.patch_hidden),
                                  self.params, images, batch_size)
    if not parts:
      return {"present": np.zeros((0, shapes.NUM_CELLS), np.int32),
              **{k: np.zeros((0, shapes.NUM_CELLS), np.int32) for k in ("shape", "colour",
                                                                        "size")},
              "background": np.zeros((0,), np.int32)}
    return {k: np.concatenate([p[k] for p in parts]) for k in ATTRIBUTES}


def get_scene_reader(train_if_missing: bool = True, cfg: ReaderConfig = ReaderConfig(),
                     progress: bool = True) -> SceneReader:
  """The cached reader for ``cfg``; trains and caches it first if there is none."""
  directory = cache_dir(cfg)
  cached = aux_net.load_params(directory)
  if cached is not None:
    return SceneReader(params=cached[0], cfg=cfg, meta=cached[1])
  if not train_if_missing:
    raise UserError(f"no trained scene reader in {directory}; run `t2i evaluate` once "
                    "(it trains one in a few minutes) or call get_scene_reader().")
  params, meta = train_scene_reader(cfg, progress=progress)
  aux_net.save_params(directory, params, {**meta, "cache_dir": str(directory)})
  params, meta = aux_net.load_params(directory)
  return SceneReader(params=params, cfg=cfg, meta=meta)


__all__ = [
    "ReaderConfig", "SceneReader", "SceneReaderNet", "attributes_at", "augment", "cache_dir",
    "gaussian_blur", "get_scene_reader", "pooled_accuracy", "render_set", "train_scene_reader",
]
