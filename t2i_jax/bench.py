"""Small helpers every benchmark module uses: machine description and peak memory."""

from __future__ import annotations

import os
import platform
import resource


def machine() -> str:
  """One line naming the machine a number came from."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  mem = ""
  try:
    import psutil  # pylint: disable=import-outside-toplevel
    mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
  except ImportError:
    pass
  devices = ""
  try:
    import jax  # pylint: disable=import-outside-toplevel
    devs = jax.devices()
    devices = f", jax {jax.__version__} on {len(devs)}x {devs[0].device_kind}"
  except Exception:  # pylint: disable=broad-except
    pass
  return f"{platform.node() or 'host'}: {os.cpu_count()} cores {cpu}{mem}{devices}"


def peak_rss_mb() -> dict[str, float]:
  """Peak resident memory of this process and of its largest child process, in MiB."""
  self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  return {"peak_rss_mb": round(self_kb / 1024, 1), "peak_child_rss_mb": round(child_kb / 1024, 1)}
