"""A damaged prepared dataset is one line naming the file and the command that rebuilds it.

A TFRecord shard can be truncated (a full disk, a copy cut short), have a flipped byte (a
bad sync) or be gone. tf.data then fails deep inside an iterator with a DataLossError that
names no file, or, for a shard cut at a record boundary, reads fewer examples without any
error. ``read_split`` wraps the read of one split: the shards must all be there, a read
error is traced to its shard by reading each one alone, and the number of records read must
equal the split's count in ``dataset_info.json`` (per shard: ``shardLengths``), so training
never starts with examples silently missing.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Callable

from t2i_jax.errors import UserError


def split_shards(builder, split: str) -> list[tuple[Path, int]]:
  """(path, expected record count) of each shard of ``split``, from dataset_info."""
  info = builder.info.splits[split]
  paths = [Path(str(f)) for f in info.filepaths]
  lengths = [int(n) for n in info.shard_lengths]
  if len(lengths) != len(paths):
    lengths = [-1] * len(paths)
  return list(zip(paths, lengths))


def rebuild_command(config) -> str:
  """The `t2i prepare ... --force` command that rebuilds the dataset of ``config``."""
  from t2i_jax.data import common  # pylint: disable=import-outside-toplevel
  get = config.get
  name = get("dataset", "shapes")
  args = ["t2i", "prepare", name, "--force"]
  if name in ("flickr8k", "folder"):
    args += ["--manual-dir", get("manual_dir") or "DIR"]
    if get("image_mode", "paper") != "paper":
      args += ["--image-mode", get("image_mode")]
    if name == "folder" and get("folder_test_fraction", 0.05) != 0.05:
      args += ["--test-fraction", str(get("folder_test_fraction"))]
  else:
    if get("num_images", 20000) != 20000:
      args += ["--num-images", str(get("num_images"))]
    if get("shapes_seed", 0):
      args += ["--seed", str(get("shapes_seed"))]
  if get("glove"):
    args += ["--glove", get("glove")]
  mode = get("caption_mode", "sum")
  if mode != "sum":
    args += ["--caption-mode", mode]
  if mode == "sequence" and get("max_caption_len", 32) != 32:
    args += ["--max-len", str(get("max_caption_len"))]
  remove = get("remove_stopwords", True)
  if remove != (mode != "sequence"):
    args.append("--no-keep-stopwords" if remove else "--keep-stopwords")
  if get("caption_dtype", "float32") != "float32":
    args += ["--caption-dtype", get("caption_dtype")]
  args += ["--data-dir", get("data_dir") or common.default_data_dir()]
  return " ".join(shlex.quote(a) for a in args)


def damaged(builder, config, path: Path | None, what: str) -> UserError:
  where = f"{path.name} {what}" if path is not None else what
  return UserError(f"The prepared dataset {builder.data_path} is damaged: {where}. Rebuild it "
                   f"with `{rebuild_command(config)}`.")


def count_records(path: Path) -> int:
  """Records in one TFRecord file; raises tf.errors.OpError on a damaged one."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  ds = tf.data.TFRecordDataset([str(path)]).batch(4096).map(tf.size)
  return int(sum(int(n) for n in ds.as_numpy_iterator()))


def find_damage(builder, split: str) -> tuple[Path | None, str]:
  """The first damaged shard of ``split`` and what is wrong with it."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  for path, expected in split_shards(builder, split):
    if not path.exists():
      return path, "is missing"
    try:
      n = count_records(path)
    except tf.errors.OpError as e:
      kind = "is truncated" if "truncated" in str(e) else "has a corrupted record"
      return path, f"{kind} ({e.__class__.__name__})"
    if expected >= 0 and n != expected:
      return path, f"holds {n:,} records where dataset_info.json says {expected:,}"
  return None, f"the {split} split cannot be read"


def read_split(builder, split: str, config, reader: Callable[[Any, str], dict[str, Any]]
               ) -> dict[str, Any]:
  """``reader(builder, split)``, with damage turned into one UserError line."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  for path, _ in split_shards(builder, split):
    if not path.exists():
      raise damaged(builder, config, path, "is missing")
  try:
    cols = reader(builder, split)
  except tf.errors.OpError as e:
    path, what = find_damage(builder, split)
    if path is None:
      what = f"{what} ({e.__class__.__name__}: {str(e).splitlines()[0][:200]})"
    raise damaged(builder, config, path, what) from None
  expected = int(builder.info.splits[split].num_examples)
  got = len(next(iter(cols.values()))) if cols else 0
  if got != expected:
    path, what = find_damage(builder, split)
    if path is None:
      what = f"the {split} split has {got:,} records where dataset_info.json says {expected:,}"
    raise damaged(builder, config, path, what)
  return cols
