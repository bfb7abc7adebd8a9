"""One training run per workdir: an advisory lock file, ``WORKDIR/.lock``.

A run holds an exclusive ``flock`` on the file for as long as it trains, and writes its pid,
host and start time into it, so that a second run on the same workdir (a second terminal, a
resubmitted job) stops at once with one line naming the holder. The operating system drops
a ``flock`` when its process dies, even on SIGKILL, so a lock left by a dead run is free: it
is taken over with one ``warning:`` line. On a filesystem without ``flock`` the pid and host
in the file decide instead: the holder's process gone on this host means a stale lock.

Readers (``t2i sample``, ``t2i evaluate``) never take the lock. On a multi-host run only
process 0 takes it (``is_main``).

    with workdir_lock.hold(workdir, is_main=jax.process_index() == 0):
      ...  # train
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from t2i_jax.errors import UserError

LOCK_NAME = ".lock"

_HELD: dict[str, list] = {}  # path -> [lock, depth]: re-entrant within one process


def _now() -> str:
  return time.strftime("%Y-%m-%d %H:%M:%S")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by someone else
  return True


def _describe(record: dict) -> str:
  if not record:
    return "an unknown process (its lock file is still being written)"
  return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')}, "
          f"started {record.get('started', '?')}")


class FileLock:
  """An exclusive lock on ``path`` with a JSON record of its holder.

  ``acquire`` returns the previous holder's record when the lock was stale (a holder that
  died without releasing it), else ``None``; it raises :class:`Busy` while a live process
  holds it. ``release`` removes the file.
  """

  class Busy(Exception):
    def __init__(self, record: dict):
      super().__init__(_describe(record))
      self.record = record

  def __init__(self, path: str | os.PathLike, **info):
    self.path = Path(path)
    self.info = info
    self._fd: int | None = None

  @staticmethod
  def read_record(path: Path) -> dict:
    try:
      text = path.read_text(encoding="utf-8")
      record = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
      return {}
    return record if isinstance(record, dict) else {}

  def _open(self) -> int:
    return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

  def acquire(self, blocking: bool = False) -> dict | None:
    while True:
      fd = self._open()
      try:
        flocked = True
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
          raise FileLock.Busy(self._holder_record()) from None
        except OSError as e:
          if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
          flocked = False  # no flock on this filesystem: the record decides
        # The file may have been removed (released) between our open and our flock: retry
        # on the file that is there now.
        try:
          same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
          same = False
        if not same:
          os.close(fd)
          continue
        previous = self.read_record(self.path)
        if not flocked and previous and not self._is_stale(previous):
          raise FileLock.Busy(previous)
        self._write(fd)
        self._fd = fd
        return previous or None
      except BaseException:
        if self._fd != fd:
          os.close(fd)
        raise

  def _holder_record(self) -> dict:
    for _ in range(20):  # the holder writes its record just after taking the lock
      record = self.read_record(self.path)
      if record:
        return record
      time.sleep(0.05)
    return {}

  @staticmethod
  def _is_stale(record: dict) -> bool:
    """Without flock: stale only when the holder was on this host and its process is gone."""
    if record.get("host") != socket.gethostname():
      return False
    pid = record.get("pid")
    return isinstance(pid, int) and pid != os.getpid() and not _pid_alive(pid)

  def _write(self, fd: int) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
              **self.info}
    data = (json.dumps(record) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      with contextlib.suppress(FileNotFoundError):
        self.path.unlink()  # while still holding it, so no one locks a file being removed
    finally:
      os.close(self._fd)  # drops the flock
      self._fd = None


def _stale_warning(path: Path, record: dict, what: str) -> str:
  return (f"warning: {path} was left by {what} that is gone ({_describe(record)}); "
          "taking the lock over.")


@contextlib.contextmanager
def hold(workdir: str | os.PathLike, is_main: bool = True) -> Iterator[Path | None]:
  """Holds ``WORKDIR/.lock`` for a training run; yields its path (None when not is_main).

  Raises :class:`UserError` when another live run holds it; takes over a stale lock with one
  ``warning:`` line on stderr. Re-entrant within one process.
  """
  if not is_main:
    yield None
    return
  workdir = Path(workdir).expanduser()
  path = workdir / LOCK_NAME
  key = str(path.absolute())
  if key in _HELD:
    _HELD[key][1] += 1
    try:
      yield path
    finally:
      _HELD[key][1] -= 1
    return
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot write to workdir {workdir} ({e.strerror or e}); pass a "
                    "--workdir you can write to.") from None
  lock = FileLock(path, argv=" ".join(sys.argv)[:500])
  try:
    previous = lock.acquire()
  except FileLock.Busy as busy:
    raise UserError(f"{workdir} is in use by a training run ({busy}); wait for it to finish or "
                    "stop it, or use another --workdir.") from None
  except OSError as e:
    raise UserError(f"cannot write to workdir {workdir} ({e.strerror or e}); pass a "
                    "--workdir you can write to.") from None
  if previous:
    print(_stale_warning(path, previous, "a training run"), file=sys.stderr, flush=True)
  _HELD[key] = [lock, 1]
  try:
    yield path
  finally:
    del _HELD[key]
    lock.release()


@contextlib.contextmanager
def hold_waiting(path: str | os.PathLike, what: str) -> Iterator[None]:
  """Holds the lock file ``path``, waiting (with one line on stderr) while another holds it.

  For short exclusive jobs such as preparing one dataset: a second ``t2i prepare`` of the
  same dataset waits for the first, then finds it prepared.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  lock = FileLock(path, argv=" ".join(sys.argv)[:500])
  try:
    lock.acquire()
  except FileLock.Busy as busy:
    print(f"waiting: {what} is in progress in another process ({busy})", file=sys.stderr,
          flush=True)
    lock.acquire(blocking=True)
  try:
    yield
  finally:
    lock.release()
