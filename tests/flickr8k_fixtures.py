"""Builders of a tiny generated Flickr8k corpus in each layout a user may have.

The corpus has one image per case the readers must handle (portrait, landscape, grey,
CMYK, RGBA and palette PNGs under .jpg names, a truncated JPEG, a zero-byte file, a text
file, a missing file, the release's '.jpg.1#k' quirk and an image in no split list), so
that every layout of the same corpus must give the same pairs and images.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ABSENT = "2258277193_586949ec62.jpg"  # the release's quirk: captions, never an image
IMAGES_DIR = "Flicker8k_Dataset"  # sic, as in the release
TEXT_DIR = "Flickr8k_text"


@dataclasses.dataclass(frozen=True)
class FixtureImage:
  name: str
  kind: str  # rgb | gray | cmyk | rgba_png | palette_png | truncated | empty | text | missing
  size: tuple[int, int]  # (width, height)
  split: str | None  # official split list naming it, if any


IMAGES = (
    FixtureImage("1000000001_aaaaaaaaaa.jpg", "rgb", (160, 96), "train"),  # landscape
    FixtureImage("1000000002_bbbbbbbbbb.jpg", "rgb", (72, 120), "train"),  # portrait
    FixtureImage("1000000003_cccccccccc.jpg", "gray", (100, 100), "train"),
    FixtureImage("1000000004_dddddddddd.jpg", "cmyk", (90, 60), "dev"),
    FixtureImage("1000000005_eeeeeeeeee.jpg", "rgba_png", (80, 80), "dev"),
    FixtureImage("1000000006_ffffffffff.jpg", "palette_png", (50, 70), "test"),
    FixtureImage("1000000007_gggggggggg.jpg", "rgb", (40, 30), "test"),  # smaller than 64
    FixtureImage("1000000008_hhhhhhhhhh.jpg", "rgb", (128, 64), None),  # in no split list
    FixtureImage("1000000009_iiiiiiiiii.jpg", "truncated", (120, 90), "train"),
    FixtureImage("1000000010_jjjjjjjjjj.jpg", "empty", (0, 0), "train"),
    FixtureImage("1000000011_kkkkkkkkkk.jpg", "text", (0, 0), "test"),
    FixtureImage("1000000012_llllllllll.jpg", "missing", (64, 64), "train"),
)
BAD_KINDS = ("truncated", "empty", "text")
BY_NAME = {im.name: im for im in IMAGES}
PRESENT = tuple(im.name for im in IMAGES if im.kind != "missing")
VALID = tuple(im.name for im in IMAGES if im.kind not in BAD_KINDS + ("missing",))
MISSING = tuple(im.name for im in IMAGES if im.kind == "missing")
BAD = tuple(im.name for im in IMAGES if im.kind in BAD_KINDS)


def captions(name: str) -> list[str]:
  """Five captions; some with commas, quotes and non-ASCII text, as real ones have."""
  stem = name.split("_")[0][-2:]
  return [
      f"A dog runs through the grass in picture {stem} .",
      f'A man , a woman and a "happy" child play near {stem} .',
      "Two people 's bikes lean on a wall, one red , one blue .",
      f"A café on a street corner with a sign saying \"open, 24 hours\" {stem}",
      f"The last caption of image {stem} goes to the paper's test set .",
  ]


def token_text(quirk: bool = True) -> str:
  """Flickr8k.token.txt content: '<image>.jpg#<k>\\t<caption>'."""
  lines = []
  for im in IMAGES:
    lines += [f"{im.name}#{k}\t{c}" for k, c in enumerate(captions(im.name))]
    if quirk and im.name == IMAGES[4].name:  # in the middle of the file, as in the release
      lines += [f"{ABSENT}.1#{k}\t{c}" for k, c in enumerate(captions(ABSENT))]
  return "\n".join(lines) + "\n"


def lemma_text() -> str:
  """A decoy Flickr8k.lemma.token.txt (same keys, other captions) that must not be read."""
  return "".join(f"{im.name}#{k}\tlemma be here\n" for im in IMAGES for k in range(5))


def split_texts() -> dict[str, str]:
  """The three official split lists, keyed by file name."""
  files = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt",
           "test": "Flickr_8k.testImages.txt"}
  return {f: "".join(f"{im.name}\n" for im in IMAGES if im.split == s) for s, f in files.items()}


def kaggle_csv() -> str:
  """Kaggle's captions.txt: CSV 'image,caption' (the quirk's captions are not in it)."""
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(["image", "caption"])
  for im in IMAGES:
    for c in captions(im.name):
      writer.writerow([im.name, c])
  return buf.getvalue()


def _pattern(w: int, h: int, seed: int) -> np.ndarray:
  """A smooth colourful image with no dark pixels, so black letterbox bars stand out."""
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  r = 90 + 150 * x / max(w - 1, 1)
  g = 90 + 150 * y / max(h - 1, 1)
  b = 90 + 75 * (1 + np.sin((x + y) / 7.0 + seed))
  return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
  buf = io.BytesIO()
  img.save(buf, fmt, **kw)
  return buf.getvalue()


@functools.lru_cache(maxsize=None)
def image_bytes() -> dict[str, bytes]:
  """File contents of every present image, by name."""
  out = {}
  for seed, im in enumerate(IMAGES):
    w, h = im.size
    rgb = Image.fromarray(_pattern(w, h, seed), "RGB") if w else None
    if im.kind == "rgb":
      out[im.name] = _encode(rgb, "JPEG", quality=92)
    elif im.kind == "gray":
      out[im.name] = _encode(rgb.convert("L"), "JPEG", quality=92)
    elif im.kind == "cmyk":
      out[im.name] = _encode(rgb.convert("CMYK"), "JPEG", quality=92)
    elif im.kind == "rgba_png":
      rgba = rgb.convert("RGBA")
      alpha = np.full((h, w), 255, np.uint8)
      alpha[:, : w // 2] = 0  # left half fully transparent: must come out black
      rgba.putalpha(Image.fromarray(alpha, "L"))
      out[im.name] = _encode(rgba, "PNG")
    elif im.kind == "palette_png":
      pal = rgb.quantize(colors=16)
      pal.putpixel((0, 0), 0)
      out[im.name] = _encode(pal, "PNG", transparency=0)
    elif im.kind == "truncated":
      full = _encode(rgb, "JPEG", quality=92)
      out[im.name] = full[: len(full) // 2]
    elif im.kind == "empty":
      out[im.name] = b""
    elif im.kind == "text":
      out[im.name] = b"<html><body>404 Not Found</body></html>\n"
  return out


def _write(path: Path, data: bytes | str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def _text_files() -> dict[str, str]:
  files = {"Flickr8k.token.txt": token_text(), "Flickr8k.lemma.token.txt": lemma_text(),
           "readme.txt": "Flickr8k text files (test fixture).\n"}
  files.update(split_texts())
  return files


def write_text_files(folder: Path) -> Path:
  """The release's text files (token, lemma decoy, split lists, readme) into ``folder``."""
  for name, text in _text_files().items():
    _write(folder / name, text)
  return folder


def make_official_unzipped(root: Path, images_dir: str = IMAGES_DIR,
                           text_dir: str | None = TEXT_DIR) -> Path:
  """The official zips unpacked; ``text_dir=None`` puts the text files in ``root``."""
  for name, data in image_bytes().items():
    _write(root / images_dir / name, data)
  write_text_files(root / text_dir if text_dir else root)
  return root


def make_official_zips(root: Path, macos_junk: bool = True) -> Path:
  """Flickr8k_Dataset.zip + Flickr8k_text.zip as downloaded, with macOS junk entries."""
  root.mkdir(parents=True, exist_ok=True)
  apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 64
  with zipfile.ZipFile(root / "Flickr8k_Dataset.zip", "w", zipfile.ZIP_DEFLATED) as zf:
    zf.writestr(f"{IMAGES_DIR}/", b"")
    for name, data in image_bytes().items():
      zf.writestr(f"{IMAGES_DIR}/{name}", data)
      if macos_junk:
        zf.writestr(f"__MACOSX/{IMAGES_DIR}/._{name}", apple_double)
    if macos_junk:
      zf.writestr(f"{IMAGES_DIR}/._{IMAGES[0].name}", apple_double)
      zf.writestr(f"{IMAGES_DIR}/.DS_Store", b"\x00\x00\x00\x01Bud1")
  with zipfile.ZipFile(root / "Flickr8k_text.zip", "w", zipfile.ZIP_DEFLATED) as zf:
    for name, text in _text_files().items():
      zf.writestr(name, text.encode("utf-8"))
      if macos_junk:
        zf.writestr(f"__MACOSX/._{name}", apple_double)
  return root


def make_kaggle(root: Path, split_files: bool = False) -> Path:
  """Kaggle's layout: Images/ + captions.txt; optionally the official split files beside."""
  for name, data in image_bytes().items():
    _write(root / "Images" / name, data)
  _write(root / "captions.txt", kaggle_csv())
  if split_files:
    for name, text in split_texts().items():
      _write(root / name, text)
  return root


LAYOUT_BUILDERS = {
    "official_unzipped": make_official_unzipped,
    "official_zips": make_official_zips,
    "kaggle": make_kaggle,
}


def png_header_bomb(width: int, height: int) -> bytes:
  """A valid 1-bit greyscale PNG of width x height, all black, built by streaming zlib.

  PIL would need width*height bytes to create it, so it is written by hand: a 30000x30000
  image is ~110 KB on disk, 112 MB of zlib input, and 900 MB once decoded by PIL.
  """
  def chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

  row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
  comp = zlib.compressobj(9)
  parts = []
  rows_per_block = max(1, (1 << 22) // len(row))
  for start in range(0, height, rows_per_block):
    parts.append(comp.compress(row * min(rows_per_block, height - start)))
  parts.append(comp.flush())
  ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts))
          + chunk(b"IEND", b""))


GLOVE_WORDS = ("dog", "runs", "grass", "man", "woman", "child", "the", "cafe")


def write_glove(path: Path, words: tuple[str, ...] = GLOVE_WORDS, dim: int = 4) -> Path:
  """A tiny GloVe text file ('<word> <v1> ... <vD>'); word i's vector is i+1 + 0.1*j."""
  lines = [" ".join([w] + [f"{i + 1 + 0.1 * j:.4f}" for j in range(dim)])
           for i, w in enumerate(words)]
  _write(path, "\n".join(lines) + "\n")
  return path
