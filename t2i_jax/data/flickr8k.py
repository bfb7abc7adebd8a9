"""Flickr8k readers: captions, splits and 64x64 images from whatever layout a user has.

``open_source(folder)`` detects one of these layouts (no TFDS here; a builder sits on top):

  * ``official_unzipped``: the two official zips unpacked, ``Flicker8k_Dataset/*.jpg``
    (misspelled as in the release; ``Flickr8k_Dataset/`` and ``Images/`` work too) and
    ``Flickr8k_text/Flickr8k.token.txt`` (or the text files directly in the folder).
  * ``official_zips``: ``Flickr8k_Dataset.zip`` and ``Flickr8k_text.zip`` themselves, read in
    place with :mod:`zipfile`; macOS junk entries (``__MACOSX/``, ``._*``) are ignored.
  * ``kaggle``: ``Images/*.jpg`` and ``captions.txt`` (CSV with header ``image,caption``).

A token file with one layout and images with the other (a zip beside an unpacked folder) is
``official_mixed``. Images named by captions but absent from disk are skipped and counted,
never fatal unless ``strict``: users often hold a partial download.

Image preprocessing (``preprocess``):
  * ``paper``: letterbox to 256x256 (long side scaled to 256 with PIL's bilinear filter,
    centred on black), then a bilinear resize to 64x64, as in the paper.
  * ``center_crop``: the centred square, resized to 64x64 with Lanczos and
    ``reducing_gap=3.0`` (an integer box reduction first, then Lanczos; Pillow documents
    the result as indistinguishable from full Lanczos, at a fraction of the cost).
EXIF orientation is not applied, as in the paper's Keras loader.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import io
import multiprocessing
import os
import re
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Mapping, Protocol

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from t2i_jax.errors import UserError

LAYOUTS = ("official_unzipped", "official_zips", "kaggle", "official_mixed")
# 'official_all' is 'official' plus an 'unlisted' split (images in no list, or every image
# when there are no lists): each pair exactly once, for storing by image and filtering later.
SPLIT_SCHEMES = ("paper", "official", "official_all")
IMAGE_MODES = ("paper", "center_crop")

IMAGE_SIZE = 64
PAPER_CANVAS = 256
# 40 Mpx: ten times a 20 Mpx camera photo; Flickr8k images are ~0.2 Mpx.
DEFAULT_MAX_PIXELS = 40_000_000
CAPTIONS_PER_IMAGE = 5
PAPER_TEST_INDEX = 4
# Formats a .jpg-named file may really be; anything else is refused as "not an image".
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")

# The full corpus, to check a complete download against (see ``count_pairs``).
NUM_CAPTION_LINES = 40_460
NUM_IMAGES = 8_091
NUM_PAIRS = 40_455
SPLIT_PAIRS = {
    "paper": {"train": 32_364, "test": 8_091},
    "official": {"train": 30_000, "dev": 5_000, "test": 5_000},
    "official_all": {"train": 30_000, "dev": 5_000, "test": 5_000, "unlisted": 455},
}
# Named by five captions (keys '<name>.1#k'), but missing from the official release itself.
ABSENT_IMAGE = "2258277193_586949ec62.jpg"
KNOWN_ABSENT = frozenset({ABSENT_IMAGE})

TOKEN_FILE = "Flickr8k.token.txt"
KAGGLE_CAPTIONS = "captions.txt"
SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "dev": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images", "images")
TEXT_DIR = "Flickr8k_text"
DATASET_ZIP = "Flickr8k_Dataset.zip"
TEXT_ZIP = "Flickr8k_text.zip"

EXPECTED = ("expected one of: Flicker8k_Dataset/ + Flickr8k_text/Flickr8k.token.txt (the "
            "official zips unpacked), Flickr8k_Dataset.zip + Flickr8k_text.zip (the official "
            "zips), or Images/ + captions.txt (Kaggle)")

# '<image>.jpg#<k>'; the release's one quirk is '<image>.jpg.1#<k>', so '.<digits>' is dropped.
_TOKEN_KEY = re.compile(r"^(?P<image>[^\s#/\\]+?\.jpg)(?:\.\d+)?#(?P<index>\d+)$", re.IGNORECASE)
_IMAGE_NAME = re.compile(r"^(?P<image>[^\s#/\\]+?\.jpg)(?:\.\d+)?$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Pair:
  """One caption of one image; ``image`` is the canonical '<id>.jpg' name."""

  image: str
  index: int
  caption: str


class ImageError(ValueError):
  """An image that cannot be used (corrupt, truncated, not an image, too large)."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


# ----------------------------------------------------------------------------------------
# Image stores: where a name's bytes come from. Both pickle cheaply, so workers read bytes
# themselves and the parent never holds more than one result per image in flight.


class _ImageStore(Protocol):

  def names(self) -> set[str]:
    ...

  def read(self, name: str) -> bytes | None:
    ...

  def where(self, name: str) -> str:
    ...


def _safe_name(name: str) -> bool:
  return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


class DirImages:
  """Images as files in one folder (``readable`` decides which names may be read)."""

  def __init__(self, folder: Path):
    self.folder = folder

  def readable(self, name: str) -> bool:
    return _safe_name(name)

  def names(self) -> set[str]:
    with os.scandir(self.folder) as entries:
      return {e.name for e in entries if _is_image_name(e.name) and e.is_file()}

  def read(self, name: str) -> bytes | None:
    if not self.readable(name):
      return None
    try:
      return (self.folder / name).read_bytes()
    except FileNotFoundError:
      return None
    except OSError as e:
      raise ImageError(f"cannot read the file ({e.strerror or e})") from None

  def where(self, name: str) -> str:
    return str(self.folder / name)


class _ZipImages:
  """Images as members of a zip, opened lazily once per process (a ZipFile never pickles)."""

  def __init__(self, zip_path: Path, members: dict[str, str]):
    self.zip_path = zip_path
    self.members = members  # canonical name -> member path inside the archive
    self._zf: zipfile.ZipFile | None = None
    self._pid: int | None = None

  def __getstate__(self) -> dict:
    state = dict(self.__dict__)
    state["_zf"] = None
    state["_pid"] = None
    return state

  def _zip(self) -> zipfile.ZipFile:
    if self._zf is None or self._pid != os.getpid():
      self._zf = zipfile.ZipFile(self.zip_path)
      self._pid = os.getpid()
    return self._zf

  def names(self) -> set[str]:
    return set(self.members)

  def read(self, name: str) -> bytes | None:
    member = self.members.get(name)
    if member is None:
      return None
    try:
      return self._zip().read(member)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
      raise ImageError(f"cannot read the zip member {member} ({e})") from None

  def where(self, name: str) -> str:
    return f"{self.zip_path}:{self.members.get(name, name)}"


def _is_image_name(name: str) -> bool:
  return name.lower().endswith(".jpg") and not name.startswith("._")


def _is_junk(member: str) -> bool:
  parts = PurePosixPath(member).parts
  return (not parts or "__MACOSX" in parts or parts[-1].startswith("._")
          or parts[-1] == ".DS_Store" or member.endswith("/"))


# ----------------------------------------------------------------------------------------
# Text files.


def _decode_text(data: bytes, name: str, like: str = " as in the Flickr8k release") -> str:
  """Decodes a text file as UTF-8; any other encoding is a UserError naming the file."""
  if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data[:4096]:
    raise UserError(f"{name}: looks like UTF-16 (or binary) text; expected UTF-8 (plain "
                    f"ASCII) text{like}. Re-save the file as UTF-8.")
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise UserError(f"{name}, line {line}: byte 0x{data[e.start]:02x} is not valid UTF-8; "
                    f"expected UTF-8 (plain ASCII) text{like}. Re-save the file as UTF-8."
                    ) from None


def _lines(text: str) -> Iterator[tuple[int, str]]:
  # Not str.splitlines(): that would also split on \x0b, \x1c, \u2028 inside a caption.
  for lineno, line in enumerate(text.split("\n"), start=1):
    yield lineno, line.rstrip("\r")


def parse_token_file(data: bytes, name: str) -> list[Pair]:
  """Parses ``Flickr8k.token.txt`` bytes ('<image>.jpg#<k>\\t<caption>' per line)."""
  text = _decode_text(data, name)
  pairs: list[Pair] = []
  seen: set[tuple[str, int]] = set()
  shape = "'<image>.jpg#<0-4><TAB><caption>'"
  for lineno, line in _lines(text):
    if not line.strip():
      continue
    key, tab, caption = line.partition("\t")
    m = _TOKEN_KEY.match(key.strip())
    if not tab or not m:
      raise UserError(f"{name}, line {lineno}: expected {shape}, got {line[:70]!r}. The "
                      "caption file is malformed; restore it from Flickr8k_text.zip.")
    image, index = m["image"], int(m["index"])
    if index >= CAPTIONS_PER_IMAGE:
      raise UserError(f"{name}, line {lineno}: caption number #{index} in {key!r}; Flickr8k "
                      f"numbers the captions of an image #0 to #{CAPTIONS_PER_IMAGE - 1}.")
    caption = caption.strip()
    if not caption:
      raise UserError(f"{name}, line {lineno}: empty caption for {key!r}; the caption file "
                      "is malformed.")
    if (image, index) in seen:
      raise UserError(f"{name}, line {lineno}: caption {image}#{index} appears a second "
                      "time; the caption file is malformed.")
    seen.add((image, index))
    pairs.append(Pair(image, index, caption))
  if not pairs:
    raise UserError(f"{name}: no captions in the file; expected lines {shape}.")
  return pairs


def caption_csv_rows(data: bytes, name: str, what: str = "Kaggle's captions.txt",
                     like: str = " as in the Flickr8k release"
                     ) -> Iterator[tuple[int, list[str], str, str]]:
  """The rows of an 'image,caption' CSV after its header: (line, fields, image, caption).

  Blank rows are skipped; an unquoted comma splits a caption into more fields, which are
  joined back. A wrong header, a bad encoding or invalid CSV is a UserError naming the file
  and the line (``what`` names the expected file in the header message). The Kaggle reader
  and the captioned-folder reader (``t2i_jax.data.folder``) apply their rules on top.
  """
  text = _decode_text(data, name, like)
  reader = csv.reader(io.StringIO(text, newline=""))
  try:
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header] != ["image", "caption"]:
      got = ",".join(header or [])[:70]
      raise UserError(f"{name}, line 1: expected the header 'image,caption' of {what}, "
                      f"got {got!r}.")
    for row in reader:
      if not any(field.strip() for field in row):
        continue
      yield reader.line_num, row, row[0].strip(), ",".join(row[1:]).strip()
  except csv.Error as e:
    raise UserError(f"{name}, line {reader.line_num}: not valid CSV ({e}); the caption file "
                    "is malformed.") from None


def parse_kaggle_captions(data: bytes, name: str) -> list[Pair]:
  """Parses Kaggle's ``captions.txt`` (CSV, header 'image,caption'); numbers by order."""
  pairs: list[Pair] = []
  counts: collections.Counter[str] = collections.Counter()
  for lineno, row, image_field, caption in caption_csv_rows(data, name):
    m = _IMAGE_NAME.match(image_field)
    if len(row) < 2 or not m or not caption:
      raise UserError(f"{name}, line {lineno}: expected '<image>.jpg,<caption>', got "
                      f"{','.join(row)[:70]!r}. The caption file is malformed.")
    image = m["image"]
    index = counts[image]
    if index >= CAPTIONS_PER_IMAGE:
      raise UserError(f"{name}, line {lineno}: a caption #{index} for {image}; Flickr8k "
                      f"has {CAPTIONS_PER_IMAGE} captions per image.")
    counts[image] += 1
    pairs.append(Pair(image, index, caption))
  if not pairs:
    raise UserError(f"{name}: no captions after the header; expected lines "
                    "'<image>.jpg,<caption>'.")
  return pairs


def parse_split_file(data: bytes, name: str) -> set[str]:
  """Parses a ``Flickr_8k.*Images.txt`` list: one image name per line."""
  names: set[str] = set()
  for lineno, line in _lines(_decode_text(data, name)):
    if not line.strip():
      continue
    m = _IMAGE_NAME.match(line.strip())
    if not m:
      raise UserError(f"{name}, line {lineno}: expected one '<image>.jpg' name per line, "
                      f"got {line[:70]!r}. The split file is malformed.")
    names.add(m["image"])
  return names


# ----------------------------------------------------------------------------------------
# Layout detection.


@dataclasses.dataclass
class Source:
  """A Flickr8k corpus as found on disk: its caption index, split lists and images."""

  layout: str
  root: Path
  pairs: list[Pair]
  split_lists: dict[str, set[str]] | None
  caption_file: str = ""
  # Why split_lists is None (which split files were or were not found).
  split_note: str = ""
  store: _ImageStore | None = dataclasses.field(default=None, repr=False)
  _names: frozenset[str] | None = dataclasses.field(default=None, repr=False, init=False,
                                                    compare=False)

  def image_names(self) -> frozenset[str]:
    """Names of the image files present (listed once, then cached)."""
    if self._names is None:
      self._names = frozenset(self.store.names()) if self.store is not None else frozenset()
    return self._names

  def open_image_bytes(self, name: str) -> bytes | None:
    """The bytes of image ``name``; None if it is absent. ImageError if unreadable."""
    if self.store is None or name not in self.image_names():
      return None
    return self.store.read(name)

  def where(self, name: str) -> str:
    """Where image ``name`` is (or would be), for messages and logs."""
    return self.store.where(name) if self.store is not None else name

  def captioned_images(self) -> list[str]:
    """Distinct images named by the captions, in caption-file order."""
    return list(dict.fromkeys(p.image for p in self.pairs))


def _dir_has_image(folder: Path) -> bool:
  with os.scandir(folder) as entries:
    return any(_is_image_name(e.name) for e in entries)


def _find_images_dir(root: Path) -> tuple[Path | None, Path | None]:
  """(folder of .jpg files, or None; an empty candidate folder, for the message)."""
  empty = None
  for name in IMAGE_DIRS:
    folder = root / name
    if not folder.is_dir():
      continue
    if _dir_has_image(folder):
      return folder, None
    # macOS' Archive Utility unpacks Flickr8k_Dataset.zip into Flickr8k_Dataset/Flicker8k_Dataset.
    for inner in IMAGE_DIRS:
      if (folder / inner).is_dir() and _dir_has_image(folder / inner):
        return folder / inner, None
    empty = empty or folder
  return None, empty


def _read_zip_index(path: Path) -> list[str]:
  try:
    with zipfile.ZipFile(path) as zf:
      return [m for m in zf.namelist() if not _is_junk(m)]
  except (zipfile.BadZipFile, OSError) as e:
    raise UserError(f"{path}: not a readable zip archive ({e}); download it again.") from None


def _read_zip_member(path: Path, member: str) -> bytes:
  try:
    with zipfile.ZipFile(path) as zf:
      return zf.read(member)
  except (zipfile.BadZipFile, zlib.error, OSError) as e:
    raise UserError(f"{path}: cannot read {member} ({e}); download the zip again.") from None


def _zip_find(members: Iterable[str], basename: str) -> str | None:
  found = sorted(m for m in members if PurePosixPath(m).name == basename)
  return min(found, key=lambda m: len(PurePosixPath(m).parts)) if found else None


def _describe_contents(root: Path) -> str:
  try:
    entries = sorted(os.listdir(root))
  except OSError:
    return "it cannot be listed"
  if not entries:
    return "it is empty"
  shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
  return f"it holds {shown}"


class _SplitSearch:
  """Finds the three split lists in folders or a zip; remembers what it saw for messages."""

  def __init__(self):
    self.partial: list[str] = []

  def in_dirs(self, dirs: Iterable[Path]) -> dict[str, set[str]] | None:
    for d in dict.fromkeys(dirs):
      paths = {s: d / f for s, f in SPLIT_FILES.items() if (d / f).is_file()}
      if len(paths) == len(SPLIT_FILES):
        return {s: parse_split_file(p.read_bytes(), str(p)) for s, p in paths.items()}
      if paths:
        self.partial.append(f"{d} holds only {', '.join(p.name for p in paths.values())}")
    return None

  def in_zip(self, path: Path, members: list[str]) -> dict[str, set[str]] | None:
    found = {s: _zip_find(members, f) for s, f in SPLIT_FILES.items()}
    if all(found.values()):
      return {s: parse_split_file(_read_zip_member(path, m), f"{path}:{m}")
              for s, m in found.items()}
    if any(found.values()):
      self.partial.append(f"{path} holds only {', '.join(m for m in found.values() if m)}")
    return None

  def note(self, where: str) -> str:
    return "; ".join(self.partial) if self.partial else f"none was found in {where}"


def open_source(path: str | os.PathLike) -> Source:
  """Reads the caption index of the Flickr8k folder ``path``, detecting its layout.

  Raises UserError (one line, naming the three expected layouts) for anything else.
  """
  root = Path(path).expanduser()
  if not root.exists():
    raise UserError(f"Flickr8k folder {root} does not exist; {EXPECTED}.")
  if not root.is_dir():
    raise UserError(f"Flickr8k path {root} is a file, not a folder; {EXPECTED}.")

  text_dirs = [root / TEXT_DIR, root]
  token_path = next((d / TOKEN_FILE for d in text_dirs if (d / TOKEN_FILE).is_file()), None)
  kaggle_path = root / KAGGLE_CAPTIONS if (root / KAGGLE_CAPTIONS).is_file() else None
  text_zip = root / TEXT_ZIP if (root / TEXT_ZIP).is_file() else None
  data_zip = root / DATASET_ZIP if (root / DATASET_ZIP).is_file() else None
  images_dir, empty_dir = _find_images_dir(root)
  splits = _SplitSearch()

  # Captions: the official token file (unpacked, then zipped) before Kaggle's CSV.
  text_members = _read_zip_index(text_zip) if text_zip and not token_path else []
  token_member = _zip_find(text_members, TOKEN_FILE) if text_members else None
  if token_path is not None:
    caption_file = str(token_path)
    pairs = parse_token_file(token_path.read_bytes(), caption_file)
    split_lists = splits.in_dirs([token_path.parent, *text_dirs])
    text_zipped = False
  elif token_member is not None:
    caption_file = f"{text_zip}:{token_member}"
    pairs = parse_token_file(_read_zip_member(text_zip, token_member), caption_file)
    split_lists = splits.in_zip(text_zip, text_members)
    text_zipped = True
  elif kaggle_path is not None:
    caption_file = str(kaggle_path)
    pairs = parse_kaggle_captions(kaggle_path.read_bytes(), caption_file)
    # Kaggle ships no split files; use them if the user put them beside captions.txt.
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    split_lists = splits.in_dirs([root, root / TEXT_DIR, *subdirs])
    text_zipped = None
  elif text_zip is not None:
    raise UserError(f"{text_zip} holds no {TOKEN_FILE}; is it the Flickr8k text archive? "
                    f"Download it again; {EXPECTED}.")
  else:
    if images_dir is not None or data_zip is not None:
      found = f"found the images {images_dir or data_zip} but no captions"
    else:
      found = _describe_contents(root)
    raise UserError(f"{root} is not a Flickr8k folder ({found}); {EXPECTED}.")

  # Images: an unpacked folder before the zip.
  if images_dir is not None:
    store: _ImageStore = DirImages(images_dir)
    images_zipped = False
  elif data_zip is not None:
    members = _read_zip_index(data_zip)
    by_name: dict[str, str] = {}
    for m in members:
      base = PurePosixPath(m).name
      if _is_image_name(base):
        by_name.setdefault(base, m)
    if not by_name:
      raise UserError(f"{data_zip} holds no .jpg images; is it the Flickr8k image archive? "
                      "Download it again.")
    store = _ZipImages(data_zip, by_name)
    images_zipped = True
  elif empty_dir is not None:
    raise UserError(f"The images folder {empty_dir} holds no .jpg files; unpack "
                    f"{DATASET_ZIP} there (or put {DATASET_ZIP} in {root}).")
  else:
    raise UserError(f"{root}: found the captions {caption_file} but no images; expected a "
                    f"folder Flicker8k_Dataset/ (or Flickr8k_Dataset/, Images/) of .jpg files "
                    f"or {DATASET_ZIP} beside them; {EXPECTED}.")

  if text_zipped is None:
    layout = "kaggle"
  elif text_zipped and images_zipped:
    layout = "official_zips"
  elif not text_zipped and not images_zipped:
    layout = "official_unzipped"
  else:
    layout = "official_mixed"
  note = "" if split_lists is not None else splits.note(str(root))
  return Source(layout=layout, root=root, pairs=pairs, split_lists=split_lists,
                caption_file=caption_file, split_note=note, store=store)


# ----------------------------------------------------------------------------------------
# Splits.


def _split_lookup(split_lists: Mapping[str, set[str]]) -> dict[str, str]:
  lookup: dict[str, str] = {}
  for split in ("train", "dev", "test"):
    for image in sorted(split_lists.get(split, ())):
      if image in lookup:
        raise UserError(f"{image} is listed in both the {lookup[image]} and the {split} split "
                        "files; the official split lists must not overlap.")
      lookup[image] = split
  return lookup


def assign_splits(pairs: Iterable[Pair], split_scheme: str,
                  split_lists: Mapping[str, set[str]] | None = None) -> dict[str, list[Pair]]:
  """Pure: every pair of the index by split ('paper' by caption, 'official*' by image).

  Under 'official' a pair whose image is in no list is left out; 'official_all' puts it in
  'unlisted' (and needs no lists: without them every pair is 'unlisted').
  """
  if split_scheme == "paper":
    out: dict[str, list[Pair]] = {"train": [], "test": []}
    for p in pairs:
      out["test" if p.index == PAPER_TEST_INDEX else "train"].append(p)
    return out
  if split_scheme == "official":
    if split_lists is None:
      raise UserError("The official split needs the lists " + ", ".join(SPLIT_FILES.values())
                      + "; use the 'paper' split.")
    lookup = _split_lookup(split_lists)
    out = {"train": [], "dev": [], "test": []}
    for p in pairs:
      split = lookup.get(p.image)
      if split is not None:
        out[split].append(p)
    return out
  if split_scheme == "official_all":
    lookup = _split_lookup(split_lists) if split_lists is not None else {}
    out = {"train": [], "dev": [], "test": [], "unlisted": []}
    for p in pairs:
      out[lookup.get(p.image, "unlisted")].append(p)
    return out
  raise UserError(f"Unknown split scheme {split_scheme!r}; use one of "
                  f"{', '.join(SPLIT_SCHEMES)}.")


def count_pairs(pairs: Iterable[Pair], split_scheme: str,
                split_lists: Mapping[str, set[str]] | None = None,
                present: Iterable[str] | None = None) -> dict[str, int]:
  """Pure: pairs per split, over images in ``present`` when given (SPLIT_PAIRS for all)."""
  if present is not None:
    keep = set(present)
    pairs = [p for p in pairs if p.image in keep]
  return {s: len(ps) for s, ps in assign_splits(pairs, split_scheme, split_lists).items()}


def count_images(pairs: Iterable[Pair], split_scheme: str,
                 split_lists: Mapping[str, set[str]] | None = None,
                 present: Iterable[str] | None = None) -> dict[str, int]:
  """Pure: distinct images per split, over images in ``present`` when given."""
  if present is not None:
    keep = set(present)
    pairs = [p for p in pairs if p.image in keep]
  return {s: len({p.image for p in ps})
          for s, ps in assign_splits(pairs, split_scheme, split_lists).items()}


def split_pairs(source: Source, split_scheme: str) -> dict[str, list[Pair]]:
  """All pairs of ``source`` by split, present images or not (see iter_examples)."""
  if split_scheme == "official" and source.split_lists is None:
    hint = (" Kaggle's layout has none: copy them from Flickr8k_text.zip beside captions.txt,"
            if source.layout == "kaggle" else "")
    raise UserError(f"The official split needs {', '.join(SPLIT_FILES.values())}, but "
                    f"{source.split_note}.{hint} Or use the 'paper' split.")
  return assign_splits(source.pairs, split_scheme, source.split_lists)


# ----------------------------------------------------------------------------------------
# Images.


def _open_image(data: bytes | Image.Image, max_pixels: int) -> Image.Image:
  """Opens without decoding, and refuses what is too large before any pixel is read."""
  if isinstance(data, Image.Image):
    img = data
  else:
    if not data:
      raise ImageError("empty file (0 bytes)")
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
      except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"refused as a decompression bomb: {e}") from None
      except UnidentifiedImageError:
        raise ImageError("not an image: no JPEG/PNG/GIF/BMP/TIFF/WEBP header") from None
      except Exception as e:  # pylint: disable=broad-except; any header a plugin rejects
        raise ImageError(f"unreadable image header ({type(e).__name__}: {e})") from None
  w, h = img.size
  if w < 1 or h < 1:
    raise ImageError(f"image of size {w}x{h}")
  if w * h > max_pixels:
    raise ImageError(f"{w}x{h} = {w * h:,} pixels is over the limit of {max_pixels:,}; "
                     "refused as a possible decompression bomb")
  return img


def _decode(img: Image.Image) -> None:
  # With LOAD_TRUNCATED_IMAGES a truncated JPEG decodes to grey instead of failing.
  forced = ImageFile.LOAD_TRUNCATED_IMAGES
  ImageFile.LOAD_TRUNCATED_IMAGES = False
  try:
    img.load()
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise ImageError(f"refused as a decompression bomb: {e}") from None
  except Exception as e:  # pylint: disable=broad-except; decoders raise many kinds
    raise ImageError(f"corrupt or truncated image data ({type(e).__name__}: {e})") from None
  finally:
    ImageFile.LOAD_TRUNCATED_IMAGES = forced


def _to_rgb(img: Image.Image) -> Image.Image:
  """Any mode -> RGB; transparency is composited on black."""
  if img.mode == "P":
    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
  elif img.mode in ("L", "RGB") and "transparency" in img.info:
    img = img.convert("RGBA")
  if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    rgba = img.convert("RGBA")
    canvas = Image.new("RGB", rgba.size, (0, 0, 0))
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return canvas
  if img.mode.startswith("I;16"):
    # 16-bit grey: keep the top 8 bits instead of letting convert() clip at 255.
    arr = (np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)
    return Image.fromarray(arr, "L").convert("RGB")
  return img if img.mode == "RGB" else img.convert("RGB")


def _letterbox(img: Image.Image) -> Image.Image:
  w, h = img.size
  if w >= h:
    nw, nh = PAPER_CANVAS, max(1, int(h * PAPER_CANVAS / w + 0.5))
  else:
    nw, nh = max(1, int(w * PAPER_CANVAS / h + 0.5)), PAPER_CANVAS
  canvas = Image.new("RGB", (PAPER_CANVAS, PAPER_CANVAS), (0, 0, 0))
  canvas.paste(img.resize((nw, nh), Image.Resampling.BILINEAR),
               ((PAPER_CANVAS - nw) // 2, (PAPER_CANVAS - nh) // 2))
  return canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)


def _center_crop(img: Image.Image) -> Image.Image:
  w, h = img.size
  s = min(w, h)
  left, top = (w - s) // 2, (h - s) // 2
  return img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS,
                    box=(left, top, left + s, top + s), reducing_gap=3.0)


def preprocess(data: bytes | Image.Image, mode: str,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Image bytes (or a PIL image) -> uint8 [64, 64, 3] RGB, the ``mode`` way.

  Raises ImageError (with ``.reason``) for an empty, truncated, non-image or oversized
  input; an image over ``max_pixels`` is refused from its header, before decoding.
  """
  if mode not in IMAGE_MODES:
    raise UserError(f"Unknown image mode {mode!r}; use one of {', '.join(IMAGE_MODES)}.")
  img = _open_image(data, max_pixels)
  _decode(img)
  img = _to_rgb(img)
  out = _letterbox(img) if mode == "paper" else _center_crop(img)
  arr = np.array(out, dtype=np.uint8)
  if arr.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
    raise ImageError(f"preprocessing gave shape {arr.shape}")
  return arr


# ----------------------------------------------------------------------------------------
# Preparing examples.


@dataclasses.dataclass
class Report:
  """What preparing found: usable pairs per split, and every image it skipped and why."""

  pairs_per_split: dict[str, int] = dataclasses.field(default_factory=dict)
  missing_images: list[str] = dataclasses.field(default_factory=list)
  corrupt_images: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  images_ok: int = 0
  pairs_skipped: int = 0
  # Present images in no official split list (left out of the 'official' scheme).
  unsplit_images: list[str] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    per_split = ", ".join(f"{s} {n:,}" for s, n in self.pairs_per_split.items())
    return (f"{sum(self.pairs_per_split.values()):,} pairs ({per_split}) from "
            f"{self.images_ok:,} images; skipped {len(self.missing_images):,} missing and "
            f"{len(self.corrupt_images):,} unusable images ({self.pairs_skipped:,} pairs)")


def write_log(report: Report, path: str | os.PathLike, title: str = "Flickr8k") -> Path:
  """Writes every missing or unusable image, one per line: 'status<TAB>image<TAB>reason'."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  lines = [f"# {title} preparation: {report.summary()}", "# status\timage\treason"]
  lines += [f"missing\t{name}\tnamed by a caption but no such image file"
            for name in report.missing_images]
  lines += [f"corrupt\t{name}\t{' '.join(reason.split())}"
            for name, reason in report.corrupt_images]
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


def default_num_workers() -> int:
  """CPUs this process may use (affinity-aware, unlike os.cpu_count() alone)."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:
    return max(1, os.cpu_count() or 1)


_WORKER: dict = {}


def _init_worker(store: _ImageStore, mode: str, max_pixels: int) -> None:
  _WORKER.update(store=store, mode=mode, max_pixels=max_pixels)


def _load_one(store: _ImageStore, name: str, mode: str,
              max_pixels: int) -> tuple[str, np.ndarray | None, str | None]:
  try:
    data = store.read(name)
    if data is None:
      return name, None, "the file disappeared while preparing"
    return name, preprocess(data, mode, max_pixels), None
  except ImageError as e:
    return name, None, e.reason


def _work(name: str) -> tuple[str, np.ndarray | None, str | None]:
  return _load_one(_WORKER["store"], name, _WORKER["mode"], _WORKER["max_pixels"])


def _mp_context(name: str | None) -> multiprocessing.context.BaseContext:
  # Not fork: the caller may run threads (TF, JAX), and a forked child can deadlock on a
  # lock one of them held. forkserver forks from a clean single-threaded server instead.
  if name is None:
    name = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
  return multiprocessing.get_context(name)


def iter_examples(source: Source, split_scheme: str, image_mode: str,
                  num_workers: int | None = None, strict: bool = False,
                  report: Report | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                  chunksize: int = 16,
                  mp_context: str | None = None) -> Iterator[tuple[str, Pair, np.ndarray]]:
  """Yields (split, pair, uint8 [64, 64, 3]) for every pair whose image is present and valid.

  Each image is decoded once, in a pool of ``num_workers`` processes (default: the usable
  CPUs; 1 runs inline), and its read-only array is yielded for each of its pairs. Workers
  get image names and read the bytes themselves (a zip is opened once per worker), so the
  parent holds only 12 KB results, at most one per image: memory stays bounded. Order is
  deterministic: images in caption-file order, then their pairs.

  Missing and unusable images are recorded in ``report`` and skipped; with ``strict`` they
  raise UserError instead (except KNOWN_ABSENT, which the release itself lacks).
  """
  if image_mode not in IMAGE_MODES:
    raise UserError(f"Unknown image mode {image_mode!r}; use one of {', '.join(IMAGE_MODES)}.")
  report = report if report is not None else Report()
  splits = split_pairs(source, split_scheme)
  by_image: dict[str, list[tuple[str, Pair]]] = {}
  for split, pairs in splits.items():
    report.pairs_per_split.setdefault(split, 0)
    for p in pairs:
      by_image.setdefault(p.image, []).append((split, p))
  order = {name: i for i, name in enumerate(source.captioned_images())}
  names = sorted(by_image, key=order.__getitem__)
  for name in names:
    by_image[name].sort(key=lambda sp: sp[1].index)

  present = source.image_names()
  missing = [n for n in names if n not in present]
  report.missing_images.extend(missing)
  report.pairs_skipped += sum(len(by_image[n]) for n in missing)
  if split_scheme == "official":
    report.unsplit_images.extend(sorted(present - set(by_image)))
  unexpected = [n for n in missing if n not in KNOWN_ABSENT]
  if strict and unexpected:
    raise UserError(f"{len(unexpected):,} of the {len(names):,} images that "
                    f"{source.caption_file} names are missing (first: "
                    f"{source.where(unexpected[0])}); add them, or run without strict to skip "
                    "them.")
  todo = [n for n in names if n in present]
  workers = min(num_workers or default_num_workers(), max(1, len(todo)))

  def emit(results: Iterable[tuple[str, np.ndarray | None, str | None]]):
    for name, image, reason in results:
      if image is None:
        report.corrupt_images.append((name, reason))
        report.pairs_skipped += len(by_image[name])
        if strict:
          raise UserError(f"Image {source.where(name)} is unusable: {reason}. Replace the "
                          "file, or run without strict to skip it.")
        continue
      report.images_ok += 1
      image.setflags(write=False)  # one array is yielded for each of the image's pairs
      for split, pair in by_image[name]:
        report.pairs_per_split[split] += 1
        yield split, pair, image

  if workers <= 1:
    yield from emit(_load_one(source.store, n, image_mode, max_pixels) for n in todo)
    return
  pool = concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=_mp_context(mp_context), initializer=_init_worker,
      initargs=(source.store, image_mode, max_pixels))
  try:
    yield from emit(pool.map(_work, todo, chunksize=max(1, chunksize)))
  except concurrent.futures.process.BrokenProcessPool as e:
    raise UserError(f"The image worker processes died ({e}). Called from a script? Put its "
                    "code under `if __name__ == '__main__':` (workers are spawned, not "
                    "forked), or pass num_workers=1.") from None
  finally:
    # Also when the consumer stops early: drop queued work instead of finishing it.
    pool.shutdown(wait=True, cancel_futures=True)


def check_complete(source: Source) -> None:
  """For --strict: a UserError if any captioned image (but the release's own gap) is absent."""
  present = source.image_names()
  missing = [n for n in source.captioned_images() if n not in present and n not in KNOWN_ABSENT]
  if missing:
    raise UserError(f"{len(missing):,} of the images that {source.caption_file} names are "
                    f"missing (first: {source.where(missing[0])}); add them, or drop --strict "
                    "to skip them.")


# ----------------------------------------------------------------------------------------
# TFDS builder.

# Set by `t2i prepare flickr8k` (--strict, --workers); read when the builder generates.
PREPARE_OPTIONS: dict = {"strict": False, "num_workers": None}

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download Flickr8k yourself (research use; cite Hodosh, Young and Hockenmaier 2013) and pass
its folder as the manual dir (`t2i prepare flickr8k --manual-dir DIR`). The folder may hold
the official zips unpacked (Flicker8k_Dataset/ and Flickr8k_text/), the zips themselves
({DATASET_ZIP}, {TEXT_ZIP}), or Kaggle's Images/ + {KAGGLE_CAPTIONS}.
"""


def make_builder(spec, data_dir: str | None = None, image_mode: str = "paper"):
  """A TFDS builder for Flickr8k with images in ``image_mode`` and the captions of ``spec``.

  Pairs are stored once, by official image split (``train``, ``dev``, ``test``, and
  ``unlisted`` for images in no list or a copy without lists); the paper split is a filter
  on the caption index at read time (see pipeline.split_request).
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from t2i_jax.data import common  # pylint: disable=import-outside-toplevel

  if image_mode not in IMAGE_MODES:
    raise UserError(f"Unknown image mode {image_mode!r}; use one of {', '.join(IMAGE_MODES)}.")
  name = f"{image_mode}_{spec.tag}"

  class Flickr8k(common.PrepareMessages, tfds.core.GeneratorBasedBuilder,
                 skip_registration=True):
    """Flickr8k: 8,091 photos with five crowd-sourced captions each, at 64x64."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=(
        f"{image_mode} images; captions as GloVe {spec.mode} ({spec.glove_tag})"))]

    def _info(self):
      self._glove = spec.load_glove()
      return tfds.core.DatasetInfo(
          builder=self, description=__doc__.split("\n\n")[0],
          features=common.builder_features(spec, self._glove.dim),
          metadata=tfds.core.MetadataDict(),
          homepage="https://hockenmaier.cs.illinois.edu/8k-pictures.html")

    def _split_generators(self, dl_manager):
      source = open_source(dl_manager.manual_dir)
      self._report = Report()
      self._present = source.image_names()
      splits = [s for s, ps in assign_splits(source.pairs, "official_all",
                                             source.split_lists).items()
                if any(p.image in self._present for p in ps)]
      if not splits:
        raise UserError(f"None of the images named by {source.caption_file} is in "
                        f"{source.root}; {EXPECTED}.")
      self._source = source
      self._stream = None
      self._png = common.PngOnce()
      return {s: self._generate_examples(s) for s in splits}

    def _examples(self):
      """One pass over all images (decoded once, in a pool), grouped by split on the fly."""
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      total = sum(1 for p in self._source.pairs if p.image in self._present)
      it = iter_examples(self._source, "official_all", image_mode,
                         num_workers=PREPARE_OPTIONS.get("num_workers"),
                         strict=PREPARE_OPTIONS.get("strict", False), report=self._report)
      return tqdm(it, total=total, desc="flickr8k", unit="pair", mininterval=1.0)

    def _generate_examples(self, split):
      # TFDS consumes split generators one after another. The first one runs the whole
      # decode pass and keeps later splits' examples (12 KB each) until their turn, so every
      # image is decoded once however the splits are ordered.
      if self._stream is None:
        self._pending = {}
        self._stats = common.CaptionStats()
        for s, pair, image in self._examples():
          self._pending.setdefault(s, []).append((pair, image))
        self._stream = True
        self._finish()
      for pair, image in self._pending.pop(split, []):
        values, st = spec.encode(self._glove, pair.caption)
        self._stats += st
        yield f"{pair.image}#{pair.index}", {
            "image": self._png(pair.image, image), "caption": pair.caption,
            "image_id": pair.image,
            "caption_index": pair.index, "split": split, **values}
      if not self._pending:
        self._write_metadata()

    def _finish(self):
      log = Path(self.data_dir).parent / "prepare_log.tsv"
      rep = self._report
      if rep.missing_images or rep.corrupt_images:
        write_log(rep, log)
      self._log = str(log) if (rep.missing_images or rep.corrupt_images) else ""

    def _write_metadata(self):
      rep, src = self._report, self._source
      present_ok = {p for p in self._present} - {n for n, _ in rep.corrupt_images}
      missing = [n for n in rep.missing_images if n not in KNOWN_ABSENT]
      note = ""
      if missing:
        note = (f"partial copy: {len(missing):,} of {len(src.captioned_images()) - len(KNOWN_ABSENT):,} "
                f"captioned images are absent (the full corpus has {NUM_IMAGES:,})")
      self.info.metadata.update({
          "layout": src.layout, "manual_dir": str(src.root), "image_mode": image_mode,
          **common.caption_metadata(spec, self._glove.dim, self._stats),
          "images_present": rep.images_ok, "images_missing": len(rep.missing_images),
          "images_corrupt": len(rep.corrupt_images), "log": self._log,
          "paper_split": count_pairs(src.pairs, "paper", present=present_ok),
          **({"official_split": count_pairs(src.pairs, "official", src.split_lists,
                                            present=present_ok)}
             if src.split_lists is not None else {}),
          **({"note": note} if note else {}),
      })

  return Flickr8k(config=name, data_dir=data_dir)
