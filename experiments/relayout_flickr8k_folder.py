"""Re-lays a Flickr8k folder out as a captioned folder (``t2i prepare folder``'s layout).

    python -m experiments.relayout_flickr8k_folder SRC DEST [--copy] [--format csv|jsonl]
                                                   [--nest N]

reads SRC with the Flickr8k readers (any layout ``t2i prepare flickr8k`` accepts, unpacked
image folders only) and writes::

    DEST/images/<name>.jpg          a symlink to each image of SRC (--copy: a copy)
    DEST/captions.csv               'image,caption', five rows per image, in token-file order
    (or DEST/captions.jsonl)

Every caption line is kept, so the release's captions of ``2258277193_586949ec62.jpg``,
an image it lacks, become the folder's "missing image" case. ``--nest N`` puts each image
under ``images/<its first N characters>/`` (to try nested folders). DEST must not be inside
this repository (the data stays beside it), and must be new or empty. Then::

    t2i prepare folder --manual-dir DEST [--data-dir D]

The README's "Your own data" section reports the counts and time of this on the shared
full corpus (SRC: the flickr8k_full folder beside the repository; DEST: any new folder)::

    python -m experiments.relayout_flickr8k_folder SRC DEST
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from pathlib import Path

from t2i_jax.data import flickr8k
from t2i_jax.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def relayout(src: str | os.PathLike, dest: str | os.PathLike, copy: bool = False,
             fmt: str = "csv", nest: int = 0) -> dict[str, int]:
  """Writes the captioned-folder layout of the Flickr8k folder ``src`` under ``dest``."""
  source = flickr8k.open_source(src)
  if not isinstance(source.store, flickr8k._DirImages):  # pylint: disable=protected-access
    raise UserError(f"{source.root}: its images are in a zip; unpack it first.")
  dest = Path(dest).expanduser().resolve()
  if dest == REPO or REPO in dest.parents:
    raise UserError(f"{dest} is inside the repository; write the folder beside it.")
  if dest.exists() and any(dest.iterdir()):
    raise UserError(f"{dest} is not empty; pass a new folder.")
  present = source.image_names()
  path_of = {}
  for name in sorted(present):
    rel = f"{name[:nest]}/{name}" if nest else name
    target = dest / "images" / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    origin = Path(source.where(name)).resolve()
    if copy:
      shutil.copyfile(origin, target)
    else:
      target.symlink_to(origin)
    path_of[name] = rel
  rows = [(path_of.get(p.image, p.image), p.caption) for p in source.pairs]
  if fmt == "csv":
    with open(dest / "captions.csv", "w", newline="", encoding="utf-8") as f:
      writer = csv.writer(f)
      writer.writerow(["image", "caption"])
      writer.writerows(rows)
  else:
    with open(dest / "captions.jsonl", "w", encoding="utf-8") as f:
      for image, caption in rows:
        f.write(json.dumps({"image": image, "caption": caption}, ensure_ascii=False) + "\n")
  return {"images": len(present), "caption_rows": len(rows),
          "rows_without_image": sum(1 for p in source.pairs if p.image not in present)}


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("src", help="a Flickr8k folder in the official layout")
  p.add_argument("dest", help="the captioned folder to write (outside the repository)")
  p.add_argument("--copy", action="store_true", help="copy the images instead of symlinking")
  p.add_argument("--format", choices=("csv", "jsonl"), default="csv")
  p.add_argument("--nest", type=int, default=0,
                 help="put each image under images/<its first N characters>/")
  args = p.parse_args(argv)
  try:
    counts = relayout(args.src, args.dest, copy=args.copy, fmt=args.format, nest=args.nest)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{args.dest}: {counts['images']:,} images, {counts['caption_rows']:,} caption rows "
        f"({counts['rows_without_image']:,} naming an image the source lacks)")
  print(f"next: t2i prepare folder --manual-dir {args.dest}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
