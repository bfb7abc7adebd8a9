"""Trained run -> images: restore, encode captions as training did, generate, draw grids.

Nothing here builds an optimiser or imports the trainer: ``load_generator`` reads the
parameters and the config of the latest checkpoint (``checkpoint.restore_for_inference``)
and rebuilds the model and the caption encoder from that config alone, so a caption is
cleaned and embedded exactly as the training captions were.

Randomness: sample ``j`` of caption ``i`` decodes with ``fold_in(fold_in(key(seed), i), j)``,
so a grid is a pure function of (checkpoint, captions, seed), and asking for more samples
or more captions extends a grid without changing what was already in it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t2i_jax import checkpoint as checkpoint_lib
from t2i_jax import methods, parallel
from t2i_jax.data import common, pipeline
from t2i_jax.errors import UserError

TILE = 128  # 64x64 images are upscaled 2x (nearest) so that they stay readable
PAD = 4  # gap between tiles, and the outer margin
LABEL_WIDTH = 240  # row-label column, left of the images
LABEL_LINES = 7  # wrapped caption lines kept per row; longer captions end with "..."
HEADER = 20  # column-label band above the first row, when there are column labels
FONT_SIZE = 13
_MESSAGE_CHARS = 60  # how much of a caption an error or warning quotes


def _cut(text: str, limit: int) -> str:
  flat = " ".join(str(text).split())
  return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def short(caption: str, limit: int = _MESSAGE_CHARS) -> str:
  """``caption`` on one line, cut to ``limit`` characters, quoted: for one-line messages."""
  return repr(_cut(caption, limit))


@dataclasses.dataclass
class Generator:
  """What sampling needs from a trained run; build it with ``load_generator``."""

  workdir: Path
  config: ml_collections.ConfigDict
  params: Any  # the EMA of the params when the run keeps one
  step: int
  method: methods.Method
  spec: common.CaptionSpec
  glove: Any  # t2i_jax.glove.Glove
  frozen: Any = None  # the run's frozen params (a first stage), if any

  def default_options(self) -> dict[str, Any]:
    """The run's own sampling options (e.g. its config.sample_temperature or guidance)."""
    return self.method.default_options(self.config)


def load_generator(workdir: str | Path, generating: bool = True,
                   step: int | None = None) -> Generator:
  """The latest checkpoint of ``workdir`` (or the one at ``step``) with its method, caption
  spec and GloVe vectors.

  ``generating`` False also loads runs of families that draw nothing from captions (a first
  stage), for ``reconstruct``.
  """
  path = Path(workdir).expanduser()
  if not path.exists():
    raise UserError(f"workdir {workdir} does not exist; pass the --workdir of a training run.")
  if not path.is_dir():
    raise UserError(f"workdir {workdir} is not a folder; pass the --workdir of a training run.")
  from t2i_jax.train import stages  # pylint: disable=import-outside-toplevel
  path = stages.resolve_run_dir(path)  # a multi-stage run samples from its final stage
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # Orbax notes that a read-only reader is read-only
  try:
    config, params, step = checkpoint_lib.restore_for_inference(path, step)
    frozen = checkpoint_lib.load_frozen(path)
  finally:
    absl_logger.setLevel(level)
  method = methods.get(config)
  if generating and not method.GENERATES:
    raise UserError(f"the run in {workdir} ({config.model}) does not draw images from "
                    "captions; sample from a run of a text-to-image model.")
  spec = pipeline.caption_spec(config)
  glove = spec.load_glove()
  if method.GENERATES:
    _check_text_dim(method, params, frozen, spec, glove, path)
  return Generator(workdir=path, config=config, params=params, step=step, method=method,
                   spec=spec, glove=glove, frozen=frozen)


def _check_text_dim(method, params, frozen, spec, glove, workdir) -> None:
  """Fails in one line when the GloVe file's dimension is not the one the run trained on.

  The GloVe file is found by path at sampling time and may have changed since training; a
  shape trace (no compute) of one generation tells before any caption is encoded.
  """
  shape = (1, spec.max_len, glove.dim) if spec.mode == "sequence" else (1, glove.dim)
  try:
    jax.eval_shape(
        lambda p, f, t: method.generate(p, t, None, jax.random.split(jax.random.key(0), 1), f),
        params, frozen, jax.ShapeDtypeStruct(shape, jnp.float32))
  except (flax.errors.ScopeParamShapeError, TypeError, ValueError) as e:
    raise UserError(
        f"the GloVe vectors {spec.glove or '(built-in 6B 50d)'} have dimension {glove.dim}, "
        f"which the model of {workdir} was not trained on ({type(e).__name__}); put back "
        "the GloVe file the run was trained with at the path its config.json names.") from None


def _oov_words(words: Sequence[str], glove) -> list[str]:
  """Distinct out-of-vocabulary words of ``words``, in order of first appearance."""
  return list(dict.fromkeys(glove.oov(words)))


def encode_captions(gen: Generator, captions: Sequence[str]) -> np.ndarray:
  """Caption strings -> the float32 tensors training saw, [C, D] (or [C, T, D] in sequence mode).

  Each caption is cleaned by the run's caption spec (the paper's cleaning, with or without
  stopwords). Out-of-vocabulary words add nothing to the tensor, as in training; they are
  named in one warning line per caption on stderr. A caption left with no word, or with no
  word GloVe knows, would decode the same image as the empty caption: that is a UserError,
  raised before any warning is printed.
  """
  if isinstance(captions, str):
    captions = [captions]
  if not captions:
    raise UserError("no caption given; pass at least one caption in quotes.")
  out, warnings = [], []
  for caption in captions:
    values, stats = gen.spec.encode(gen.glove, caption)
    words = values["clean_caption"].split()
    if not words:
      raise UserError(
          f"caption {short(caption)} has no words left after cleaning (digits, punctuation, "
          f"non-Latin letters{' and stopwords' if gen.spec.remove_stopwords else ''} are "
          "removed); describe the image in English words.")
    if stats.oov == stats.tokens:
      raise UserError(
          f"caption {short(caption)}: none of its words are in the GloVe vocabulary "
          f"({_cut(', '.join(_oov_words(words, gen.glove)[:5]), _MESSAGE_CHARS)}); use common "
          "English words.")
    if stats.oov:
      oov = _oov_words(words, gen.glove)
      listed = _cut(", ".join(oov[:10]), 3 * _MESSAGE_CHARS) + (
          f" (+{len(oov) - 10} more)" if len(oov) > 10 else "")
      warnings.append(f"caption {short(caption)}: {stats.oov} of {stats.tokens} words are not "
                      f"in the GloVe vocabulary and are ignored: {listed}")
    known = stats.tokens - stats.oov
    if gen.spec.mode == "sequence" and known > gen.spec.max_len:
      warnings.append(f"caption {short(caption)}: {known} known words; the model reads only "
                      f"the first {gen.spec.max_len}.")
    out.append(np.asarray(values["caption_tensor"]).astype(np.float32))
  for line in warnings:
    print(f"warning: {line}", file=sys.stderr)
  return np.stack(out)


# Rows per jitted sampling call, whatever the request: a run's in-loop grids, its samples
# and its evaluation share one compiled sampler (each new batch shape compiles it again,
# 2.5-3 s for the quickstart's). Larger requests run in several calls, smaller ones are
# padded. On the 2-core AMD VM, 1,024 quickstart samples take the same time at 32, 64,
# 128 or 256 rows a call (1.45-1.77 s, in the noise of the machine; stop 53).
DRAW_BATCH = 64
RECONSTRUCT_BATCH = 256  # images per jitted reconstruction call


@functools.lru_cache(maxsize=8)
def _generate_fn(method: methods.Method):
  """A jitted ``(params, frozen, text [B, ...], caption_id [B], sample_id [B], key) -> uint8``.

  Row ``b`` draws with ``fold_in(fold_in(key, caption_id[b]), sample_id[b])``. Cached per
  (hashable) method, so repeated loads of one run reuse the compiled program.
  """

  @functools.partial(jax.jit, static_argnames="options")
  def fn(params, frozen, text, caption_id, sample_id, key, *, options):
    keys = jax.vmap(lambda i, j: jax.random.fold_in(jax.random.fold_in(key, i), j))(
        caption_id, sample_id)
    images = method.generate(params, text, None, keys, frozen, **dict(options))
    images = jnp.nan_to_num(images.astype(jnp.float32), nan=0.0)
    return jnp.clip(jnp.round(images * 255.0), 0, 255).astype(jnp.uint8)

  return fn


def resolve_options(method: methods.Method, config: ml_collections.ConfigDict,
                    options: Mapping[str, Any]) -> dict[str, Any]:
  """The run's default sampling options with ``options`` (None = keep the default) applied.

  An option the family does not take is a one-line UserError naming the ones it takes.
  """
  resolved = method.default_options(config)
  for name, value in options.items():
    if value is None:
      continue
    if name not in resolved:
      offered = ", ".join(sorted(resolved)) or "none"
      raise UserError(f"model {config.model!r} has no sampling {name} (its sampling "
                      f"options: {offered}).")
    resolved[name] = value
  return method.check_options(resolved)


def draw(method: methods.Method, params: Any, frozen: Any, text: np.ndarray, *, n: int,
         seed: int, options: Mapping[str, Any]) -> np.ndarray:
  """Caption tensors [C, ...] -> uint8 images [C, n, 64, 64, 3] with checked ``options``.

  Every call draws DRAW_BATCH rows (the last one padded), so that requests of any size
  share one compiled sampler. Where this process has several devices (GPUs, or
  ``cpu_devices`` host devices), each call's rows are split over them; a row's image
  depends only on its own key.
  """
  if n < 1:
    raise UserError(f"the number of samples must be at least 1, got {n}.")
  text = np.asarray(text, np.float32)
  num = text.shape[0]
  caption_id = np.repeat(np.arange(num, dtype=np.int32), n)
  sample_id = np.tile(np.arange(n, dtype=np.int32), num)
  total = num * n
  fn = _generate_fn(method)
  key = jax.random.key(int(seed))
  static = tuple(sorted(options.items()))
  size, put_whole, put_rows = parallel.local_rows(DRAW_BATCH)  # rows split over local devices
  params, frozen, key = put_whole((params, frozen, key))
  outputs = []
  for start in range(0, total, size):
    rows = np.arange(start, start + size) % total  # the last call is padded with repeats
    outputs.append(fn(params, frozen, *put_rows((text[caption_id[rows]], caption_id[rows],
                                                 sample_id[rows])), key, options=static))
  images = np.concatenate([np.asarray(o) for o in jax.device_get(outputs)])[:total]
  return images.reshape((num, n) + images.shape[1:])


@functools.lru_cache(maxsize=8)
def _reconstruct_fn(method: methods.Method):

  @jax.jit
  def fn(params, frozen, images):
    out = method.reconstruct(params, images.astype(jnp.float32) / 255.0, frozen)
    return jnp.clip(jnp.round(jnp.nan_to_num(out, nan=0.0) * 255.0), 0, 255).astype(jnp.uint8)

  return fn


def reconstruct(gen: Generator, images: np.ndarray,
                batch_size: int = RECONSTRUCT_BATCH) -> np.ndarray:
  """uint8 images [N, 64, 64, 3] -> the run's reconstructions of them (a first stage)."""
  fn = _reconstruct_fn(gen.method)
  out = []
  for start in range(0, len(images), batch_size):
    chunk = np.asarray(images[start:start + batch_size])
    padded = pipeline.pad_leading({"x": chunk}, batch_size)["x"]  # one compiled shape
    out.append(np.asarray(fn(gen.params, gen.frozen, padded))[:len(chunk)])
  return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:], np.uint8)


def generate_from_tensors(gen: Generator, text: np.ndarray, n: int, seed: int = 0,
                          **options: Any) -> np.ndarray:
  """Caption tensors [C, ...] -> uint8 images [C, n, 64, 64, 3]; see the module docstring.

  ``options`` are the family's sampling options (temperature, steps, guidance, ...);
  one left out or None is the run's own.
  """
  resolved = resolve_options(gen.method, gen.config, options)
  return draw(gen.method, gen.params, gen.frozen, text, n=n, seed=seed, options=resolved)


def generate(gen: Generator, captions: Sequence[str], n: int, seed: int = 0,
             **options: Any) -> np.ndarray:
  """Captions -> uint8 images [C, n, 64, 64, 3].

  For the VAE families, ``sample_latent=False`` decodes the latent's mean (then all ``n``
  columns are the same image) and ``temperature`` scales the CVAE's prior std.
  """
  text = encode_captions(gen, captions)
  return generate_from_tensors(gen, text, n, seed, **options)


# ------------------------------------------------------------------------------ grids


def _font(size: int = FONT_SIZE):
  from PIL import ImageFont  # pylint: disable=import-outside-toplevel
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
    return ImageFont.load_default()


def _wrap(text: str, font, width: int, max_lines: int) -> list[str]:
  """Greedy word wrap to ``width`` pixels; overlong words are cut, extra lines become '...'."""
  words = _cut(text, 80 * max_lines).split()  # more than fits; a 100k-char caption is cheap
  lines: list[str] = []
  line = ""
  for word in words:
    while font.getlength(word) > width:  # a word wider than the column: hard-cut it
      cut = max(1, int(len(word) * width / max(font.getlength(word), 1)) - 1)
      if line:
        lines.append(line)
        line = ""
      lines.append(word[:cut])
      word = word[cut:]
    candidate = f"{line} {word}" if line else word
    if font.getlength(candidate) <= width:
      line = candidate
    else:
      lines.append(line)
      line = word
    if len(lines) > max_lines:
      break
  if line:
    lines.append(line)
  if len(lines) > max_lines:
    lines = lines[:max_lines]
    last = lines[-1]
    while last and font.getlength(last + "...") > width:
      last = last[:-1]
    lines[-1] = last + "..."
  return lines


def _draw_text(draw, xy, text: str, font) -> None:
  """Draws ``text``; characters the font cannot encode become '?' rather than an error."""
  try:
    draw.text(xy, text, fill=(20, 20, 20), font=font)
  except UnicodeEncodeError:
    draw.text(xy, text.encode("latin-1", "replace").decode("latin-1"), fill=(20, 20, 20),
              font=font)


def grid_layout(rows: int, cols: int, col_labels: bool = False) -> dict[str, int]:
  """Pixel geometry of a grid: canvas size and the top-left corner of tile (0, 0)."""
  top = PAD + (HEADER if col_labels else 0)
  left = PAD + LABEL_WIDTH + PAD
  return {"width": left + cols * (TILE + PAD), "height": top + rows * (TILE + PAD),
          "left": left, "top": top, "step": TILE + PAD}


def atomic_save(save, path: str | Path) -> Path:
  """Calls ``save(tmp_path)`` and renames the result to ``path``: no half-written file."""
  path = Path(path).expanduser()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    save(tmp)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return path


def save_grid(images: np.ndarray, row_labels: Sequence[str], path: str | Path,
              col_labels: Sequence[str] | None = None) -> Path:
  """Writes uint8 images [R, K, H, W, 3] as a PNG grid, each row's label wrapped on its left.

  Tiles are upscaled to TILE pixels with nearest neighbour (no smoothing to hide detail).
  Returns the path written.
  """
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  images = np.asarray(images)
  if images.ndim != 5 or images.shape[-1] != 3:
    raise ValueError(f"images must be [rows, cols, H, W, 3], got {images.shape}")
  rows, cols = images.shape[:2]
  if len(row_labels) != rows:
    raise ValueError(f"{rows} rows but {len(row_labels)} row labels")
  if col_labels is not None and len(col_labels) != cols:
    raise ValueError(f"{cols} columns but {len(col_labels)} column labels")
  g = grid_layout(rows, cols, col_labels is not None)
  canvas = Image.new("RGB", (g["width"], g["height"]), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  font = _font()
  line_h = FONT_SIZE + 3
  if col_labels is not None:
    for c, label in enumerate(col_labels):
      text = _wrap(label, font, TILE, 1)
      _draw_text(draw, (g["left"] + c * g["step"], PAD + 2), text[0] if text else "", font)
  for r in range(rows):
    y = g["top"] + r * g["step"]
    for i, line in enumerate(_wrap(row_labels[r], font, LABEL_WIDTH, LABEL_LINES)):
      _draw_text(draw, (PAD, y + 2 + i * line_h), line, font)
    for c in range(cols):
      tile = Image.fromarray(np.asarray(images[r, c], np.uint8)).resize(
          (TILE, TILE), Image.Resampling.NEAREST)
      canvas.paste(tile, (g["left"] + c * g["step"], y))
  return atomic_save(lambda tmp: canvas.save(tmp, format="PNG"), path)


def load_png(path: str | Path) -> np.ndarray:
  """A PNG as a uint8 [H, W, 3] array (a grid, for TensorBoard)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


# ----------------------------------------------------------------- command-line flows


def default_sample_path(gen: Generator) -> Path:
  return gen.workdir / "samples" / f"sample_{gen.step}.png"


def sample_grid(workdir: str | Path, captions: Sequence[str], *, n: int = 8, seed: int = 0,
                out: str | Path | None = None, npz: str | Path | None = None,
                step: int | None = None, **options: Any) -> Path:
  """``t2i sample``: one row per caption, ``n`` generated images each.

  ``npz`` also writes the images as uint8 [num_captions, n, 64, 64, 3] ('images'), with the
  'captions', the 'seed', the 'step' and the sampling options, for scripts. ``step`` picks a
  kept checkpoint (default: the latest).
  """
  gen = load_generator(workdir, step=step)
  text = encode_captions(gen, captions)
  resolved = resolve_options(gen.method, gen.config, options)
  images = draw(gen.method, gen.params, gen.frozen, text, n=n, seed=seed, options=resolved)
  if npz is not None:
    extras = {f"option_{k}": np.asarray(v) for k, v in resolved.items()}
    atomic_save(lambda tmp: _save_npz(tmp, images=images, captions=np.asarray(list(captions)),
                                      seed=np.asarray(seed), step=np.asarray(gen.step),
                                      **extras), npz)
  mean_only = resolved.get("sample_latent") is False
  cols = ["latent mean" if mean_only else f"sample {j + 1}" for j in range(n)]
  return save_grid(images, list(captions), out or default_sample_path(gen), col_labels=cols)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
  with open(path, "wb") as f:  # a file object: np.savez would append .npz to a bare name
    np.savez(f, **arrays)


def mean_image(table) -> np.ndarray:
  """float32 [64, 64, 3] in [0, 1]: the mean image of ``table``'s pairs (an image counts
  once per caption, as training sees it)."""
  counts = np.bincount(table.image_index, minlength=len(table.images)).astype(np.float64)
  total = np.zeros(table.images.shape[1:], np.float64)
  for start in range(0, len(table.images), 1024):
    chunk = table.images[start:start + 1024].astype(np.float64) / 255.0
    total += np.tensordot(counts[start:start + 1024], chunk, axes=1)
  return (total / counts.sum()).astype(np.float32)


def collapse_reference(train, test) -> dict[str, float]:
  """How a model that always draws the mean training image scores on every test pair:
  the loss a collapsed paper model plateaus at (SEED.md), in the paper's own metrics."""
  mean = mean_image(train)
  sq = np.zeros((), np.float64)
  hits = np.zeros((), np.float64)
  mean_arg = np.argmax(mean, axis=-1)
  for start in range(0, len(test.image_index), 1024):
    imgs = test.images[test.image_index[start:start + 1024]].astype(np.float32) / 255.0
    sq += np.square(imgs - mean).mean(axis=(1, 2, 3)).sum()
    hits += (np.argmax(imgs, axis=-1) == mean_arg).mean(axis=(1, 2)).sum()
  n = len(test.image_index)
  mse = float(sq / n)
  return {"mse": mse, "paper_accuracy": float(hits / n),
          "psnr_of_mean_mse": float(-10.0 * np.log10(max(mse, 1e-10))), "test_pairs": n}


def compare_grid(workdir: str | Path, *, num: int = 8, n: int = 4, seed: int = 0,
                 out: str | Path | None = None, data_dir: str | None = None,
                 step: int | None = None) -> tuple[Path, dict[str, float]]:
  """``t2i compare``: test pairs of the run's dataset, the real image beside ``n`` samples
  and the mean training image; returns the grid's path and ``collapse_reference``.

  The pairs are the first ``num`` of a seeded random order of the test split, and the model
  reads the very caption tensors stored in the prepared dataset, like the paper's
  figures 6-11.
  """
  if num < 1:
    raise UserError(f"--num must be at least 1, got {num}.")
  gen = load_generator(workdir, step=step)
  config = gen.config
  if data_dir:
    config = ml_collections.ConfigDict(config.to_dict())
    config.data_dir = str(data_dir)
  common.host_only_tensorflow()
  table = pipeline.load_table(config, "test")
  train = pipeline.load_table(config, "train")
  order = np.random.default_rng(seed).permutation(len(table))[:num]
  samples = generate_from_tensors(gen, table.text[order], n, seed)
  real = table.images[table.image_index[order]][:, None]
  mean = np.round(mean_image(train) * 255.0).astype(np.uint8)
  means = np.broadcast_to(mean, (len(order), 1) + mean.shape)
  images = np.concatenate([real, samples, means], axis=1)
  cols = ["dataset"] + [f"sample {j + 1}" for j in range(n)] + ["mean image"]
  path = out or gen.workdir / "samples" / f"compare_{gen.step}.png"
  return (save_grid(images, [str(c) for c in table.captions[order]], path, col_labels=cols),
          collapse_reference(train, table))


__all__ = [
    "Generator", "atomic_save", "collapse_reference", "compare_grid", "draw",
    "encode_captions", "generate", "generate_from_tensors", "grid_layout", "load_generator",
    "load_png", "mean_image", "reconstruct", "resolve_options", "sample_grid", "save_grid",
]
