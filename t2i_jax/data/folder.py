"""A captioned folder: your own images and captions as a dataset (`t2i prepare folder`).

The folder ``DIR`` holds::

  DIR/images/...          .jpg / .jpeg / .png / .webp files, nested as you like
  DIR/captions.csv        header 'image,caption', one row per caption (several per image;
                          quotes and commas as in Kaggle's Flickr8k captions.txt)
  or DIR/captions.jsonl   one {"image": ..., "caption": ...} object per line

An image is named by its path relative to ``DIR/images/`` with '/' (``cats/tom.png``); that
path is its ``image_id``. Captions are numbered per image in file order.

Splits are ``train`` and ``test``, by a hash of that path: an image is in ``test`` when
the first 64 bits of SHA-256(path) fall below ``test_fraction`` of their range
(``split_of``). So an image lands in the same split whatever else is in the folder, all
captions of an image share its split, and raising the fraction only moves images from train
to test.

Bad inputs, as for Flickr8k (``t2i_jax.data.flickr8k`` does the reading, decoding and the
worker pool): a missing (named by a caption, no such file), corrupt or oversized image is
skipped and listed in ``prepare_log.tsv``; an empty caption and a row naming a missing image
are counted; a malformed line is a one-line error naming the file and line; a folder
without a captions file is one line saying what is expected. Images are decoded split by
split in a pool of processes and streamed to the TFDS writer, so memory stays flat in the
number of images.

A prepared folder is identified by its resolved path (a hash in the TFDS config name), the
image mode, the test fraction and the caption spec: after changing the folder's contents,
prepare it again with ``--force``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from pathlib import Path

from t2i_jax.data import flickr8k
from t2i_jax.data.flickr8k import ImageError, Pair, Report
from t2i_jax.errors import UserError

IMAGES_DIR = "images"
CSV_FILE = "captions.csv"
JSONL_FILE = "captions.jsonl"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
DEFAULT_TEST_FRACTION = 0.05
SPLITS = ("train", "test")

EXPECTED = ("expected DIR/images/ (.jpg, .png or .webp files, nested as you like) and "
            f"DIR/{CSV_FILE} (header 'image,caption', one row per caption) or DIR/{JSONL_FILE} "
            "(one {\"image\": ..., \"caption\": ...} per line), the image named by its path "
            "under images/")
_LIKE = ""  # text-file messages: no "as in the Flickr8k release"


def split_of(image: str, test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
  """'test' or 'train' for the image path ``image``: a pure function of the path."""
  h = int.from_bytes(hashlib.sha256(image.encode("utf-8")).digest()[:8], "big")
  return "test" if h < test_fraction * 2.0**64 else "train"


def check_test_fraction(test_fraction: float) -> float:
  f = float(test_fraction)
  if not 0.0 < f < 1.0:
    raise UserError(f"the test fraction must be between 0 and 1 (exclusive), got {test_fraction}; "
                    f"e.g. {DEFAULT_TEST_FRACTION} for 5% of the images.")
  return f


# ----------------------------------------------------------------------------------------
# Images.


def _is_image_file(name: str) -> bool:
  return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def list_images(images_dir: Path) -> frozenset[str]:
  """Relative '/' paths of the image files under ``images_dir`` (symlinks followed; hidden
  files and folders, such as macOS' ._* files, left out)."""
  found: list[str] = []
  seen_dirs: set[str] = set()
  for top, dirs, files in os.walk(images_dir, followlinks=True):
    real = os.path.realpath(top)
    if real in seen_dirs:  # a symlink loop
      dirs[:] = []
      continue
    seen_dirs.add(real)
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    rel = Path(top).relative_to(images_dir).as_posix()
    for f in files:
      if _is_image_file(f) and os.path.isfile(os.path.join(top, f)):
        found.append(f if rel == "." else f"{rel}/{f}")
  return frozenset(found)


class _TreeImages(flickr8k.DirImages):
  """The image store of ``flickr8k.iter_examples``: files under one folder, by relative path.

  It pickles cheaply (a path and the names), so pool workers read the bytes themselves.
  """

  def __init__(self, folder: Path, names: frozenset[str]):
    super().__init__(folder)
    self._names = names

  def names(self) -> set[str]:
    return set(self._names)

  def readable(self, name: str) -> bool:
    return name in self._names  # only listed files: never a path outside the folder


# ----------------------------------------------------------------------------------------
# Captions.


@dataclasses.dataclass
class Captions:
  """The captions file read: usable pairs (present images or not) and what was skipped."""

  file: str
  pairs: list[Pair]
  rows: int = 0  # caption rows (lines) in the file, blank ones left out
  empty: int = 0  # rows with an empty caption (skipped)


def _image_name(field: str) -> str:
  name = field.strip().replace("\\", "/")
  while name.startswith("./"):
    name = name[2:]
  return name


def _number(rows, file: str) -> Captions:
  """(line, image, caption) rows -> Captions, captions numbered per image in file order."""
  out = Captions(file=file, pairs=[])
  counts: collections.Counter[str] = collections.Counter()
  for _, image, caption in rows:
    out.rows += 1
    if not caption:
      out.empty += 1
      continue
    out.pairs.append(Pair(image, counts[image], caption))
    counts[image] += 1
  return out


def parse_csv(data: bytes, name: str) -> Captions:
  """``captions.csv``: header 'image,caption' (Kaggle's CSV reader, ``flickr8k``)."""

  def rows():
    for lineno, row, image, caption in flickr8k.caption_csv_rows(
        data, name, what=f"a captioned folder's {CSV_FILE}", like=_LIKE):
      if len(row) < 2 or not image:
        raise UserError(f"{name}, line {lineno}: expected '<image path>,<caption>', got "
                        f"{','.join(row)[:70]!r}. The caption file is malformed.")
      yield lineno, _image_name(image), caption

  return _number(rows(), name)


def parse_jsonl(data: bytes, name: str) -> Captions:
  """``captions.jsonl``: one ``{"image": ..., "caption": ...}`` object per line."""
  shape = "one {\"image\": \"<path under images/>\", \"caption\": \"...\"} object per line"

  def rows():
    for lineno, line in flickr8k._lines(flickr8k._decode_text(data, name, _LIKE)):  # pylint: disable=protected-access
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"{name}, line {lineno}: not valid JSON ({e.msg} at column "
                        f"{e.colno}); expected {shape}. The caption file is malformed.") from None
      caption = obj.get("caption") if isinstance(obj, dict) else None
      image = obj.get("image") if isinstance(obj, dict) else None
      if (not isinstance(image, str) or not image.strip() or "caption" not in obj
          or not isinstance(caption, (str, type(None)))):
        raise UserError(f"{name}, line {lineno}: expected {shape}, got {line[:70]!r}. The "
                        "caption file is malformed.")
      yield lineno, _image_name(image), (caption or "").strip()

  return _number(rows(), name)


# ----------------------------------------------------------------------------------------
# The folder.


@dataclasses.dataclass
class FolderSource:
  """A captioned folder as found on disk."""

  root: Path
  images_dir: Path
  captions: Captions
  present: frozenset[str]  # relative paths of the image files

  @property
  def store(self) -> _TreeImages:
    return _TreeImages(self.images_dir, self.present)

  def missing(self) -> list[str]:
    """Images named by captions but absent, in caption-file order."""
    return [n for n in dict.fromkeys(p.image for p in self.captions.pairs)
            if n not in self.present]

  def pairs_by_split(self, test_fraction: float) -> dict[str, list[Pair]]:
    """The pairs whose image is present, by split."""
    out: dict[str, list[Pair]] = {s: [] for s in SPLITS}
    for p in self.captions.pairs:
      if p.image in self.present:
        out[split_of(p.image, test_fraction)].append(p)
    return out


def open_folder(path: str | os.PathLike) -> FolderSource:
  """Reads the captions of the folder ``path`` and lists its images (no decoding).

  Raises UserError (one line saying what is expected) for anything that is not a
  captioned folder.
  """
  root = Path(path).expanduser()
  if not root.is_dir():
    what = "does not exist" if not root.exists() else "is a file, not a folder"
    raise UserError(f"{root} {what}; {EXPECTED}.")
  csv_path, jsonl_path = root / CSV_FILE, root / JSONL_FILE
  images_dir = root / IMAGES_DIR
  if csv_path.is_file() and jsonl_path.is_file():
    raise UserError(f"{root} holds both {CSV_FILE} and {JSONL_FILE}; keep one of them.")
  if not csv_path.is_file() and not jsonl_path.is_file():
    raise UserError(f"{root} has no {CSV_FILE} or {JSONL_FILE}; {EXPECTED}.")
  if not images_dir.is_dir():
    raise UserError(f"{root} has no images/ folder; {EXPECTED}.")
  if csv_path.is_file():
    captions = parse_csv(csv_path.read_bytes(), str(csv_path))
  else:
    captions = parse_jsonl(jsonl_path.read_bytes(), str(jsonl_path))
  if not captions.pairs:
    raise UserError(f"{captions.file}: no non-empty caption ({captions.rows:,} rows, "
                    f"{captions.empty:,} empty); {EXPECTED}.")
  present = list_images(images_dir)
  if not present:
    raise UserError(f"{images_dir} holds no .jpg, .jpeg, .png or .webp file; {EXPECTED}.")
  source = FolderSource(root=root, images_dir=images_dir, captions=captions, present=present)
  if all(p.image not in present for p in captions.pairs):
    raise UserError(f"None of the images named by {captions.file} is under {images_dir} "
                    f"(first: {captions.pairs[0].image!r}); name each image by its path under "
                    "images/, with '/'.")
  return source


# ----------------------------------------------------------------------------------------
# TFDS builder.

# Set by `t2i prepare folder` (--strict, --workers); read when the builder generates.
PREPARE_OPTIONS: dict = {"strict": False, "num_workers": None}
WRITER_BUFFER_BYTES = 64 << 20  # TFDS' in-memory shuffle buffer while preparing

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Pass your folder as the manual dir (`t2i prepare folder --manual-dir DIR`, or
--config.manual_dir=DIR when training); {EXPECTED}.
"""


def folder_tag(manual_dir: str | os.PathLike) -> str:
  """The folder's name and a hash of its resolved path, for the TFDS config name."""
  p = Path(manual_dir).expanduser().resolve()
  digest = hashlib.sha1(str(p).encode()).hexdigest()[:6]
  stem = "".join(c if c.isalnum() else "_" for c in p.name)[:40] or "root"
  return f"{stem}_{digest}".lower()


def config_name(manual_dir, image_mode: str, test_fraction: float, spec) -> str:
  per_10k = int(round(check_test_fraction(test_fraction) * 10_000))
  return f"{folder_tag(manual_dir)}_{image_mode}_test{per_10k}_{spec.tag}"


def make_builder(spec, manual_dir: str, data_dir: str | None = None, image_mode: str = "paper",
                 test_fraction: float = DEFAULT_TEST_FRACTION):
  """A TFDS builder ``folder`` for the captioned folder ``manual_dir`` (train and test)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from t2i_jax.data import common  # pylint: disable=import-outside-toplevel

  if not manual_dir:
    raise UserError("the folder dataset needs its folder: --config.manual_dir=DIR (or "
                    f"`t2i prepare folder --manual-dir DIR`); {EXPECTED}.")
  if image_mode not in flickr8k.IMAGE_MODES:
    raise UserError(f"Unknown image mode {image_mode!r}; use one of "
                    f"{', '.join(flickr8k.IMAGE_MODES)}.")
  test_fraction = check_test_fraction(test_fraction)
  name = config_name(manual_dir, image_mode, test_fraction, spec)
  root = Path(manual_dir).expanduser()

  class Folder(common.PrepareMessages, tfds.core.GeneratorBasedBuilder,
               skip_registration=True):
    """Your own images and captions, at 64x64."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=(
        f"{root.resolve()}: {image_mode} images, {test_fraction:g} of them in test; "
        f"captions as GloVe {spec.mode} ({spec.glove_tag})"))]

    def _info(self):
      self._glove = spec.load_glove()
      return tfds.core.DatasetInfo(
          builder=self, description=(self.__doc__ or "").strip(),
          features=common.builder_features(spec, self._glove.dim),
          metadata=tfds.core.MetadataDict())

    def _download_and_prepare(self, dl_manager, download_config=None):
      from tensorflow_datasets.core import shuffle  # pylint: disable=import-outside-toplevel
      # TFDS' writer holds up to 1 GB of a split's serialized examples in memory before it
      # spills them to disk (the order written is the same either way): a small buffer keeps
      # peak memory flat in the size of the folder.
      buffer = shuffle.MAX_MEM_BUFFER_SIZE
      shuffle.MAX_MEM_BUFFER_SIZE = min(buffer, WRITER_BUFFER_BYTES)
      try:
        super()._download_and_prepare(dl_manager, download_config)
      except AssertionError as e:  # TFDS' writer refuses a split with no example
        if "No examples" not in str(e):
          raise
        raise UserError(f"Every image of one split of {root} is unusable, so that split would "
                        "be empty; see the images listed in prepare_log.tsv next to "
                        f"{self.data_dir}.") from None
      finally:
        shuffle.MAX_MEM_BUFFER_SIZE = buffer

    def _split_generators(self, dl_manager):
      del dl_manager  # the folder is the builder's own (it names the config)
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      source = open_folder(root)
      missing = source.missing()
      if PREPARE_OPTIONS.get("strict") and missing:
        raise UserError(f"{len(missing):,} images named by {source.captions.file} are not "
                        f"under {source.images_dir} (first: {missing[0]!r}); add them, or "
                        "drop --strict to skip them.")
      self._source = source
      self._report = Report(missing_images=missing, pairs_skipped=sum(
          1 for p in source.captions.pairs if p.image not in source.present))
      self._stats = common.CaptionStats()
      self._png = common.PngOnce()
      by_split = source.pairs_by_split(test_fraction)
      self._splits = [s for s in SPLITS if by_split[s]]
      self._done: list[str] = []
      self._bar = tqdm(total=sum(len(ps) for ps in by_split.values()), desc="folder",
                       unit="pair", mininterval=1.0)
      return {s: self._generate_examples(s, by_split[s]) for s in self._splits}

    def _generate_examples(self, split, pairs):
      src = self._source
      names = {p.image for p in pairs}
      # The flickr8k reader over this split's images only: each image is decoded once (it
      # is in one split), and nothing is held back for a later split.
      view = flickr8k.Source(layout="folder", root=src.root, pairs=pairs,
                             split_lists={split: names}, caption_file=src.captions.file,
                             store=src.store)
      for _, pair, image in flickr8k.iter_examples(
          view, "official_all", image_mode, num_workers=PREPARE_OPTIONS.get("num_workers"),
          strict=PREPARE_OPTIONS.get("strict", False), report=self._report):
        values, st = spec.encode(self._glove, pair.caption)
        self._stats += st
        self._bar.update(1)
        yield f"{pair.image}#{pair.index}", {
            "image": self._png(pair.image, image), "caption": pair.caption,
            "image_id": pair.image,
            "caption_index": pair.index, "split": split, **values}
      self._done.append(split)
      if len(self._done) == len(self._splits):
        self._bar.close()
        self._write_metadata()

    def _write_metadata(self):
      rep, src, cap = self._report, self._source, self._source.captions
      log = ""
      if rep.missing_images or rep.corrupt_images:
        log = str(flickr8k.write_log(rep, Path(self.data_dir).parent / "prepare_log.tsv",
                                     title=f"Captioned folder {src.root}"))
      bad = {n for n, _ in rep.corrupt_images}
      per_split = collections.Counter(split_of(n, test_fraction) for n in src.present
                                      if n not in bad and n in self._captioned())
      unknown_rows = sum(1 for p in cap.pairs if p.image not in src.present)
      uncaptioned = len(src.present - self._captioned())
      note = (f"caption rows in {Path(cap.file).name}: {cap.rows:,}, of which skipped "
              f"{cap.empty:,} empty and {unknown_rows:,} naming no image under images/; images "
              f"without a caption (left out): {uncaptioned:,}; images per split: "
              + ", ".join(f"{s} {per_split[s]:,}" for s in SPLITS))
      if not per_split["test"]:
        note += (f"; no image in test: raise the test fraction ({test_fraction:g}) for a "
                 "test split")
      self.info.metadata.update({
          "layout": "folder", "manual_dir": str(src.root.resolve()),
          "captions_file": cap.file, "image_mode": image_mode, "test_fraction": test_fraction,
          **common.caption_metadata(spec, self._glove.dim, self._stats),
          "images_present": rep.images_ok, "images_missing": len(rep.missing_images),
          "images_corrupt": len(rep.corrupt_images), "log": log,
          "caption_rows": cap.rows, "captions_empty": cap.empty,
          "captions_unknown_image": unknown_rows, "images_uncaptioned": uncaptioned,
          "images_per_split": {s: per_split[s] for s in SPLITS}, "note": note,
      })

    def _captioned(self) -> set[str]:
      if not hasattr(self, "_captioned_set"):
        self._captioned_set = {p.image for p in self._source.captions.pairs}
      return self._captioned_set

  return Folder(config=name, data_dir=data_dir)


__all__ = ["EXPECTED", "FolderSource", "make_builder", "open_folder", "parse_csv",
           "parse_jsonl", "split_of"]
