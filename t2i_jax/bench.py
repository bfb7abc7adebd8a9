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


class TreePeakRSS:
  """Samples the summed RSS of this process and all its descendants in a thread.

  ``ru_maxrss`` misses pool workers (they are grandchildren under forkserver), so the
  prepare benchmark reports this sum instead: a conservative peak for the whole job, since
  pages shared between processes are counted once per process.
  """

  def __init__(self, interval: float = 0.1):
    self.interval = interval
    self.peak_mb = 0.0
    self._stop = None
    self._thread = None

  def _sample(self) -> float:
    import psutil  # pylint: disable=import-outside-toplevel
    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
      try:
        total += p.memory_info().rss
      except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return total / 2**20

  def _run(self):
    while not self._stop.is_set():
      self.peak_mb = max(self.peak_mb, self._sample())
      self._stop.wait(self.interval)

  def __enter__(self):
    import threading  # pylint: disable=import-outside-toplevel
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak_mb = max(self.peak_mb, self._sample())
    return False


def main(get_config, run, argv: list[str]) -> int:
  """The shared ``main`` of benchmark modules: overrides, run, machine line, JSON last line."""
  import json  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from t2i_jax import configs  # pylint: disable=import-outside-toplevel
  from t2i_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  try:
    config = configs.apply_overrides(get_config(), argv)
    result = run(config)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"machine: {result['machine']}")
  print(json.dumps(result))
  return 0
