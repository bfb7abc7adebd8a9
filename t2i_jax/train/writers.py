"""Where a run's numbers go: metrics.jsonl and TensorBoard (process 0 only), and run.json."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np


def _record_step(line: str) -> int | None:
  """The step of a metrics.jsonl line; None for a blank or torn (crash-truncated) line."""
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


class MetricsWriter:
  """Appends records to WORKDIR/metrics.jsonl and scalars (and images) to TensorBoard.

  On (re)start, records after ``resume_step`` (work lost since the last checkpoint, which
  the run redoes) are dropped from metrics.jsonl and purged from TensorBoard, so every step
  is logged once.
  """

  def __init__(self, workdir: Path, resume_step: int):
    self.path = workdir / "metrics.jsonl"
    if self.path.exists():
      kept = [line for line in self.path.read_text().splitlines()
              if _record_step(line) is not None and _record_step(line) <= resume_step]
      self.path.write_text("".join(line + "\n" for line in kept))
    self._file = self.path.open("a")
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._tb = SummaryWriter(logdir=str(workdir / "tensorboard"), purge_step=resume_step + 1)

  def write(self, *, split: str, step: int, epoch: int, scope: str,
            metrics: Mapping[str, Any]) -> None:
    record = {"step": int(step), "epoch": int(epoch), "split": split, "scope": scope}
    record.update({k: (float(v) if isinstance(v, (float, np.floating)) else v)
                   for k, v in metrics.items()})
    record["time"] = round(time.time(), 3)
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    for k, v in metrics.items():
      if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
        self._tb.add_scalar(f"{split}/{k}", float(v), int(step))

  def write_image(self, tag: str, image: np.ndarray, step: int) -> None:
    """A uint8 [H, W, 3] picture (a sample grid) to TensorBoard."""
    self._tb.add_image(tag, np.asarray(image), int(step), dataformats="HWC")

  def flush(self) -> None:
    self._tb.flush()

  def close(self) -> None:
    self._file.close()
    self._tb.close()


class NullWriter:
  """MetricsWriter of processes other than 0: multi-host runs log once."""

  def write(self, **_) -> None:
    pass

  def write_image(self, *_, **__) -> None:
    pass

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def _versions() -> dict[str, str]:
  out = {"python": sys.version.split()[0]}
  for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorflow-cpu",
              "tensorflow", "tensorflow-datasets", "ml_collections", "t2i_jax"):
    try:
      out[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_run_info(workdir: Path, model: str, param_count: int, info: dict[str, Any]) -> None:
  """run.json: what ran where; a resumed run appends a session instead of forgetting one."""
  devices = jax.devices()
  session = {"start_time": now(), "start_step": info["start_step"], "host": socket.gethostname(),
             "backend": jax.default_backend(), "devices": [str(d) for d in devices],
             "argv": list(sys.argv)}
  path = workdir / "run.json"
  previous = json.loads(path.read_text()) if path.exists() else {}
  run = {
      "model": model,
      "param_count": int(param_count),
      "backend": jax.default_backend(),
      "devices": [str(d) for d in devices],
      "device_kind": devices[0].device_kind,
      "platform": platform.platform(),
      "host": socket.gethostname(),
      "cpu_count": os.cpu_count(),
      "versions": _versions(),
      "start_time": previous.get("start_time", session["start_time"]),
      **{k: v for k, v in info.items() if k != "start_step"},
      "sessions": previous.get("sessions", []) + [session],
  }
  path.write_text(json.dumps(run, indent=2) + "\n")


__all__ = ["MetricsWriter", "NullWriter", "now", "write_run_info"]
