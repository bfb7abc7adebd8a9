"""SIGINT / SIGTERM during training: finish the chunk, save a checkpoint, exit."""

from __future__ import annotations

import signal
import threading
from typing import Any


class TrainingInterrupted(Exception):
  """SIGINT or SIGTERM arrived; a checkpoint of ``step`` was saved before raising this."""

  def __init__(self, signum: int, step: int):
    super().__init__(f"{signal.Signals(signum).name} at step {step}")
    self.signum = signum
    self.step = step


class StopSignals:
  """Turns SIGINT / SIGTERM into a flag the loop checks between chunks.

  Saving from inside a handler could interleave with a save in progress; the loop saves at
  the next chunk boundary instead. A second signal interrupts at once (KeyboardInterrupt).
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.signum: int | None = None
    self._old: dict[int, Any] = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      raise KeyboardInterrupt
    self.signum = signum

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old)


__all__ = ["StopSignals", "TrainingInterrupted"]
