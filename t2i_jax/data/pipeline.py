"""tf.data from a prepared TFDS dataset -> batches of numpy (or jax) arrays.

Why an in-memory table: the prepared sets are small (full Flickr8k at 64x64 is ~100 MB of
distinct images, the default shapes set ~250 MB), so one pass over the TFRecords loads a
*table*: distinct images once as uint8, caption tensors per pair. Batches are then gathered
by tf.data from a numpy permutation of the pair indices. That gives:

* a true global shuffle whose order is a pure function of (seed, epoch);
* starting at any step of any epoch in O(1), so a resumed run sees exactly the batches it
  would have seen (``start_step``);
* the very same permutation for the on-device path (``epoch_permutation``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping

import numpy as np

from t2i_jax import configs
from t2i_jax.data import common, integrity
from t2i_jax.errors import UserError

NUMERIC_KEYS = ("image", "text", "mask")


def caption_spec(config) -> common.CaptionSpec:
  """The caption spec named by an experiment config (missing keys: their defaults)."""
  config = configs.complete(config)
  return common.CaptionSpec(
      glove=config.glove or None,
      mode=config.caption_mode,
      max_len=config.max_caption_len,
      remove_stopwords=config.remove_stopwords,
      dtype=config.caption_dtype,
  )


def get_builder(config):
  """The TFDS builder (not necessarily prepared) for an experiment config."""
  common.quiet_tensorflow()
  config = configs.complete(config)
  name = config.dataset
  data_dir = config.data_dir or common.default_data_dir()
  spec = caption_spec(config)
  if name == "shapes":
    from t2i_jax.data import shapes  # pylint: disable=import-outside-toplevel
    return shapes.make_builder(spec, data_dir=data_dir,
                               num_images=config.num_images,
                               seed=config.shapes_seed)
  if name == "flickr8k":
    from t2i_jax.data import flickr8k  # pylint: disable=import-outside-toplevel
    return flickr8k.make_builder(spec, data_dir=data_dir,
                                 image_mode=config.image_mode)
  if name == "folder":
    from t2i_jax.data import folder  # pylint: disable=import-outside-toplevel
    return folder.make_builder(spec, config.manual_dir, data_dir=data_dir,
                               image_mode=config.image_mode,
                               test_fraction=config.folder_test_fraction)
  raise UserError(f"Unknown dataset {name!r}; use 'shapes', 'flickr8k' or 'folder'.")


def is_prepared(builder) -> bool:
  """True only for a complete dataset: TFDS writes into a temp folder and renames at the end."""
  return builder.is_prepared()


def ensure_prepared(config, builder=None):
  """Prepares shapes and a captioned folder (its manual dir) on first use; for Flickr8k asks
  for `t2i prepare` unless a manual dir is set."""
  config = configs.complete(config)
  builder = builder or get_builder(config)
  if is_prepared(builder):
    return builder
  if config.dataset == "flickr8k" and not config.manual_dir:
    raise UserError(
        f"Flickr8k is not prepared in {builder.data_dir}. Run `t2i prepare flickr8k "
        f"--manual-dir DIR --data-dir {config.data_dir or common.default_data_dir()}` "
        "first, or set --config.manual_dir=DIR.")
  from t2i_jax.data import prepare  # pylint: disable=import-outside-toplevel
  prepare.prepare(builder, manual_dir=config.manual_dir or None)
  return prepare.reload(builder)  # what is on disk now (another process may have prepared it)


def split_request(config, role: str) -> tuple[list[str], Any]:
  """Maps a role ('train', 'test', 'dev', 'compositional') to TFDS splits and a pair filter.

  Flickr8k is stored once, by official image split (``train``/``dev``/``test``/``unlisted``);
  the paper split is a filter on the caption index (#4 is test, #0-3 train) over all of them.
  """
  config = configs.complete(config)
  if config.dataset != "flickr8k":
    return [role], None
  scheme = config.split_scheme
  if scheme == "paper":
    if role not in ("train", "test"):
      raise UserError(f"The paper split has only train and test, not {role!r}.")
    splits = ["train", "dev", "test", "unlisted"]
    if role == "train":
      return splits, lambda ci: ci < 4
    return splits, lambda ci: ci == 4
  if scheme == "official":
    return [role], None
  raise UserError(f"Unknown split scheme {scheme!r}; use 'paper' or 'official'.")


@dataclasses.dataclass
class Table:
  """One split in memory. ``images`` holds each distinct image once; pairs point into it."""

  images: np.ndarray  # [M, 64, 64, 3] uint8
  image_index: np.ndarray  # [N] int32, pair -> row of `images`
  text: np.ndarray  # [N, D] or [N, T, D] float32
  mask: np.ndarray | None  # [N, T] bool in sequence mode
  caption_index: np.ndarray  # [N] int32
  image_ids: np.ndarray  # [M] str
  captions: np.ndarray  # [N] str (raw)
  clean_captions: np.ndarray  # [N] str
  extras: dict[str, np.ndarray]  # per-pair extra features (e.g. shapes attributes)

  def __len__(self) -> int:
    return int(self.text.shape[0])

  def subset(self, keep: np.ndarray) -> "Table":
    """The pairs where ``keep`` is True (images are kept as they are)."""
    return dataclasses.replace(
        self, image_index=self.image_index[keep], text=self.text[keep],
        mask=None if self.mask is None else self.mask[keep],
        caption_index=self.caption_index[keep], captions=self.captions[keep],
        clean_captions=self.clean_captions[keep],
        extras={k: v[keep] for k, v in self.extras.items()})

  def pairs(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    """The numeric batch for pair indices ``idx`` (host-side gather)."""
    return gather_pairs(pair_columns(self), idx)


def pair_columns(table: Table) -> dict[str, np.ndarray]:
  """The numeric columns ``gather_pairs`` reads: images once, pair -> image index, captions."""
  data = {"images": table.images, "image_index": np.asarray(table.image_index, np.int32),
          "text": table.text}
  if table.mask is not None:
    data["mask"] = table.mask
  return data


def _index(values: Any, i: Any) -> Any:
  return values[i]


def gather_pairs(columns: Mapping[str, Any], idx: Any, take=None) -> dict[str, Any]:
  """Pair indices (any shape, e.g. [B] or [K, B]) -> the batch {image, text[, mask]}.

  The one gather of the project: on the host (numpy), inside a jitted step (jax arrays) and
  in tf.data (``take=tf.gather``). ``columns`` is ``pair_columns(table)`` or a copy of it;
  where it holds per-image 'features' instead of 'images' (``Method.image_features``), the
  batch holds 'features' instead of 'image'.
  """
  if take is None:
    take = _index
  column, key = ("features", "features") if "features" in columns else ("images", "image")
  out = {key: take(columns[column], take(columns["image_index"], idx)),
         "text": take(columns["text"], idx)}
  if "mask" in columns:
    out["mask"] = take(columns["mask"], idx)
  return out


def pad_leading(arrays: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """Zero-pads every array along axis 0 to ``size`` rows (a short batch or chunk)."""
  return {k: v if v.shape[0] == size else
          np.concatenate([v, np.zeros((size - v.shape[0],) + v.shape[1:], v.dtype)])
          for k, v in arrays.items()}


_STRING_KEYS = ("image_id", "caption", "clean_caption", "split")


def _read_split(builder, split: str) -> dict[str, np.ndarray]:
  """All examples of one split as numpy columns; images stay PNG bytes.

  The TFRecords are parsed in batches with ``tf.io.parse_example`` (the same proto layout
  TFDS reads: ints and bools as int64, floats as float32), about 20x faster than TFDS's
  per-example decoding, which dominated start-up time. Each image is stored once per
  caption; load_table decodes one copy per distinct image.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  info = builder.info.features.get_serialized_info()
  spec, out_dtype = {}, {}
  for key, t in info.items():
    if t.tf_dtype == tf.string:
      wire = tf.string
    elif t.tf_dtype.is_floating:
      wire = tf.float32
    else:
      wire = tf.int64
    spec[key] = tf.io.FixedLenFeature(t.shape, wire)
    out_dtype[key] = None if wire == tf.string else np.dtype(t.np_dtype)
  files = [str(f) for f in builder.info.splits[split].filepaths]
  opts = tf.data.Options()
  opts.deterministic = True
  ds = (tf.data.TFRecordDataset(files).batch(4096)
        .map(lambda x: tf.io.parse_example(x, spec)).with_options(opts).prefetch(2))
  parts: dict[str, list[np.ndarray]] = {}
  for batch in ds.as_numpy_iterator():
    for k, v in batch.items():
      parts.setdefault(k, []).append(v if out_dtype[k] is None else v.astype(out_dtype[k]))
  return {k: np.concatenate(v) for k, v in parts.items()}


def _decode_images(encoded: np.ndarray) -> np.ndarray:
  """PNG bytes -> [M, 64, 64, 3] uint8, decoded in parallel by tf.data."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  ds = tf.data.Dataset.from_tensor_slices(encoded).map(
      lambda b: tf.ensure_shape(tf.io.decode_png(b, channels=3), common.IMAGE_SHAPE),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(1024)
  out = np.empty((len(encoded), *common.IMAGE_SHAPE), np.uint8)
  i = 0
  for batch in ds.as_numpy_iterator():
    out[i:i + len(batch)] = batch
    i += len(batch)
  return out


def _utf8(values: np.ndarray) -> np.ndarray:
  """TF strings arrive as bytes; captions may be any UTF-8 (cafés, quotes)."""
  return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values])


# The last few tables this process read, by where they live and what their files hold now:
# one run reads the same split several times (each stage's trainer, the latent scale, the
# evaluation; about 0.9 s for the quickstart's train split each time).
_TABLE_CACHE: dict[tuple, Table] = {}
_TABLE_CACHE_SIZE = 3


def _frozen_table(table: Table) -> Table:
  """``table`` with every array read-only: a cached table is shared by its readers."""
  arrays = [table.images, table.image_index, table.text, table.mask, table.caption_index,
            table.image_ids, table.captions, table.clean_captions, *table.extras.values()]
  for a in arrays:
    if a is not None:
      a.flags.writeable = False
  return table


def _table_key(config, role: str, builder, splits: list[str]) -> tuple | None:
  """What a table read depends on: the dataset's folder, the role and split scheme, and each
  shard's size and modification time (a rewritten or damaged file is read again)."""
  stats = []
  for s in splits:
    if s in builder.info.splits:
      for path, _ in integrity.split_shards(builder, s):
        try:
          st = path.stat()
        except OSError:
          return None  # missing: read_split says so in one line
        stats.append((str(path), st.st_size, st.st_mtime_ns))
  return (str(builder.data_dir), role, str(config.split_scheme), tuple(stats))


def load_table(config, role: str, builder=None) -> Table:
  """Reads one split (role) of the prepared dataset named by ``config`` into memory.

  The table is cached for the process, read-only, while its files are unchanged."""
  config = configs.complete(config)
  builder = builder or ensure_prepared(config)
  splits, pair_filter = split_request(config, role)
  key = _table_key(config, role, builder, splits)
  if key is not None and key in _TABLE_CACHE:
    _TABLE_CACHE[key] = _TABLE_CACHE.pop(key)  # the most recently used goes last
    return _TABLE_CACHE[key]
  table = _frozen_table(_read_table(config, role, builder, splits, pair_filter))
  if key is not None:
    _TABLE_CACHE[key] = table
    while len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
      _TABLE_CACHE.pop(next(iter(_TABLE_CACHE)))
  return table


def _read_table(config, role: str, builder, splits: list[str], pair_filter) -> Table:
  available = set(builder.info.splits.keys())
  missing = [s for s in splits if s not in available]
  if len(missing) == len(splits):
    raise UserError(
        f"Split {role!r} is not in the prepared {builder.name} ({', '.join(sorted(available))})."
        + (" The official split needs the Flickr_8k.*Images.txt lists, which this copy lacks; "
           "use --config.split_scheme=paper." if config.dataset == "flickr8k" else ""))
  cols: dict[str, list[np.ndarray]] = {}
  for s in splits:
    if s in available:
      for k, v in integrity.read_split(builder, s, config, _read_split).items():
        cols.setdefault(k, []).append(v)
  data = {k: np.concatenate(v) for k, v in cols.items()}
  image_ids = _utf8(data["image_id"])
  uniq, first, inverse = np.unique(image_ids, return_index=True, return_inverse=True)
  text = data["caption_tensor"].astype(np.float32)
  known = {"image", "caption_tensor", "caption_mask", "caption_index", *_STRING_KEYS}
  table = Table(
      images=_decode_images(data["image"][first]),
      image_index=inverse.astype(np.int32).reshape(-1),
      text=text,
      mask=data.get("caption_mask"),
      caption_index=data["caption_index"].astype(np.int32),
      image_ids=uniq,
      captions=_utf8(data["caption"]),
      clean_captions=_utf8(data["clean_caption"]),
      extras={k: v for k, v in data.items() if k not in known},
  )
  if pair_filter is not None:
    table = table.subset(pair_filter(table.caption_index))
  if len(table) == 0:
    raise UserError(f"Split {role!r} of {builder.name} is empty; prepare the dataset again.")
  return table


def epoch_permutation(num_examples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """The order of pairs in ``epoch``: a pure function of (seed, epoch)."""
  if not shuffle:
    return np.arange(num_examples)
  rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x7215]))
  return rng.permutation(num_examples)


def length_split_grid(grid: np.ndarray, lengths: np.ndarray, short_len: int, long_rows: int,
                      num_devices: int) -> np.ndarray:
  """An epoch's [steps, B] pair grid, arranged for a step run on two parts of each batch.

  Each batch's rows are dealt over its ``num_devices`` shards (B / num_devices rows each,
  in order) longest first, so that each shard's first ``long_rows / num_devices`` rows
  hold every caption of it with more than ``short_len`` words: those rows form the part
  padded to the full length, the rest the part padded to ``short_len`` (``train.step``).
  A batch with more than ``long_rows`` such captions (rare when ``long_rows`` is well above
  the mean) swaps the excess for short captions of the next batches with room. A pure
  function of its inputs, so a resumed run reads the same batches.
  """
  grid = np.array(grid, copy=True)
  steps, batch = grid.shape
  is_long = np.asarray(lengths)[grid] > short_len
  count = is_long.sum(axis=1)
  if count.sum() > long_rows * steps:
    raise UserError(f"--config.split_long_rows={long_rows}: this epoch has {int(count.sum())} "
                    f"captions of more than split_caption_len={short_len} words, more than "
                    f"{long_rows} a batch; raise split_long_rows to at least "
                    f"{-(-int(count.sum()) // max(steps, 1))}.")
  for i in np.flatnonzero(count > long_rows):  # move the excess to batches with room
    j = i
    while count[i] > long_rows:
      j = (j + 1) % steps
      while count[j] < long_rows and count[i] > long_rows:
        a = np.flatnonzero(is_long[i])[0]
        b = np.flatnonzero(~is_long[j])[0]
        grid[i, a], grid[j, b] = grid[j, b], grid[i, a]
        is_long[i, a], is_long[j, b] = False, True
        count[i] -= 1
        count[j] += 1
  longest_first = np.argsort(-np.asarray(lengths)[grid], axis=1, kind="stable")
  ranked = np.take_along_axis(grid, longest_first, axis=1)
  # rank r goes to shard r % num_devices: each shard gets its share of the long captions
  per = batch // num_devices
  return ranked.reshape(steps, per, num_devices).transpose(0, 2, 1).reshape(steps, batch)


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
  if drop_remainder:
    return num_examples // batch_size
  return -(-num_examples // batch_size)


def make_dataset(table: Table, *, batch_size: int, seed: int = 0, epoch: int = 0,
                 start_step: int = 0, shuffle: bool = True, drop_remainder: bool = True,
                 chunk: int = 0, prefetch: int = 2, process_index: int = 0,
                 process_count: int = 1):
  """A tf.data.Dataset of one epoch of batches, starting at ``start_step``.

  ``chunk`` > 0 groups that many consecutive batches into one element of shape
  [chunk, batch, ...] (the last chunk of an epoch may be shorter), for a jitted
  ``lax.scan`` over optimiser steps.

  ``process_count`` > 1 (multi-host data parallelism): ``batch_size`` is the global batch
  and this process gets the contiguous slice ``process_index`` of each one
  (``batch_size / process_count`` examples), so the processes' slices, put side by side,
  are exactly the single-process batches.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if batch_size < 1:
    raise UserError(f"batch_size must be at least 1, got {batch_size}.")
  n = len(table)
  steps = steps_per_epoch(n, batch_size, drop_remainder)
  if steps == 0:
    raise UserError(f"batch_size {batch_size} is larger than the split ({n} pairs); "
                    "lower --config.batch_size.")
  perm = epoch_permutation(n, seed, epoch, shuffle)[: steps * batch_size if drop_remainder else n]
  perm = perm[start_step * batch_size:]
  if process_count > 1:
    if batch_size % process_count or not drop_remainder:
      raise UserError(f"batch_size {batch_size} must be a multiple of the {process_count} "
                      "processes (and batches full) to split it between them.")
    local = batch_size // process_count
    perm = perm.reshape(-1, batch_size)[:, process_index * local:(process_index + 1) * local]
    perm = perm.reshape(-1)
    batch_size = local
  columns = {k: tf.constant(v) for k, v in pair_columns(table).items()}

  @tf.autograph.experimental.do_not_convert
  def gather(idx):
    return gather_pairs(columns, idx, take=tf.gather)

  ds = tf.data.Dataset.from_tensor_slices(perm.astype(np.int64))
  if chunk:
    if not drop_remainder and n % batch_size:
      raise UserError("chunked batches need drop_remainder=True (every step the same shape).")
    # One gather per chunk, then [K*B] -> [K, B]: tf.data's per-element cost is paid per
    # chunk, not per step, which is what keeps batch-1 training fed.
    @tf.autograph.experimental.do_not_convert
    def gather_chunk(idx):
      return {k: tf.reshape(v, tf.concat([[-1, batch_size], tf.shape(v)[1:]], 0))
              for k, v in gather(idx).items()}
    ds = ds.batch(batch_size * chunk).map(gather_chunk)
  else:
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(gather)
  opts = tf.data.Options()
  opts.deterministic = True
  opts.experimental_optimization.map_parallelization = True
  return ds.with_options(opts).prefetch(prefetch)


def iterate(table: Table, *, as_jax: bool = False, **kwargs) -> Iterator[dict[str, Any]]:
  """Yields the batches of ``make_dataset`` as numpy arrays (or jax arrays on the default device)."""
  ds = make_dataset(table, **kwargs)
  for batch in ds.as_numpy_iterator():
    if as_jax:
      import jax  # pylint: disable=import-outside-toplevel
      batch = jax.device_put(batch)
    yield batch
