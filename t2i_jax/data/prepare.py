"""Runs a TFDS builder once and prints the summary a user needs.

Preparing is idempotent: TFDS writes into an ``incomplete.*`` folder and renames it only
when every split is written, so an interrupted run is never mistaken for a complete one,
and running again on a complete output is a no-op that reprints the stored summary.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from t2i_jax.errors import UserError


def summary(builder) -> dict[str, Any]:
  """The prepare summary, read back from the dataset's stored metadata."""
  info = builder.info
  meta = dict(info.metadata or {})
  return {
      "dataset": builder.name,
      "config": builder.builder_config.name,
      "path": str(builder.data_path),
      "pairs_per_split": {k: int(v.num_examples) for k, v in sorted(info.splits.items())},
      **meta,
  }


def format_summary(s: dict[str, Any]) -> str:
  lines = [f"{s['dataset']}/{s['config']} at {s['path']}",
           "  pairs per split: " + ", ".join(f"{k} {v:,}" for k, v in s["pairs_per_split"].items())]
  for key in ("paper_split", "official_split"):
    if key in s:
      lines.append(f"  {key.replace('_', ' ')}: " + ", ".join(f"{k} {v:,}" for k, v in s[key].items()))
  if "images_present" in s:
    lines.append(f"  images: {s['images_present']:,} written; {s.get('images_missing', 0):,} named by "
                 f"captions but absent; {s.get('images_corrupt', 0):,} corrupt or refused"
                 + (f" (listed in {s['log']})" if s.get("log") else ""))
  if "oov_rate" in s:
    lines.append(f"  GloVe {s.get('glove', '')}: {s.get('embedding_dim', '?')}d, OOV rate "
                 f"{100 * s['oov_rate']:.2f}% of {s.get('tokens', 0):,} tokens; "
                 f"{s.get('empty_captions', 0)} captions empty after cleaning, "
                 f"{s.get('all_oov_captions', 0)} entirely out of vocabulary")
  if "note" in s:
    lines.append(f"  note: {s['note']}")
  return "\n".join(lines)


def prepare(builder, manual_dir: str | None = None, quiet: bool = False) -> dict[str, Any]:
  """Prepares ``builder`` if needed; returns (and prints) the summary."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  if builder.is_prepared():
    s = summary(builder)
    if not quiet:
      print("Already prepared (nothing to do).")
      print(format_summary(s))
    return s
  start = time.time()
  try:
    Path(builder.data_dir).parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"Cannot create the data folder {builder.data_dir}: {e.strerror}; "
                    "pass a writable --data-dir.") from None
  tfds.disable_progress_bar()  # the builders show one tqdm bar of their own
  dl_config = tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  try:
    builder.download_and_prepare(download_config=dl_config)
  except OSError as e:
    if getattr(e, "errno", None) == 28:
      raise UserError(f"Disk full while writing {builder.data_dir}; nothing was marked complete. "
                      "Free space and run the same command again.") from None
    raise
  s = summary(builder)
  s["seconds"] = round(time.time() - start, 1)
  if not quiet:
    print(format_summary(s))
    print(f"  prepared in {s['seconds']:.1f} s")
    print(json.dumps({k: v for k, v in s.items() if not isinstance(v, dict)}))
  return s
