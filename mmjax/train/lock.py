"""One run per workdir at a time: an exclusive lock on ``<workdir>/.mmjax.lock``.

The lock is an ``flock`` on the file, which the operating system releases when its process ends (also on
SIGKILL), and the file holds the owner's pid, host and start time, so a second run is told who holds it.
A lock file left by a process that died is taken over with a message. Only process 0 of a multi-process
run takes the lock (the processes share one workdir).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from mmjax.errors import UserError

LOCK_NAME = ".mmjax.lock"


class WorkdirLocked(UserError):
  """Another live process is running in this workdir."""


def _holder(path: Path) -> dict:
  try:
    return json.loads(path.read_text() or "{}")
  except (OSError, ValueError):
    return {}


def _describe(holder: dict) -> str:
  if not holder:
    return "another process"
  started = holder.get("started")
  when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
  return f"process {holder.get('pid')} on {holder.get('host')} (since {when})"


class WorkdirLock:
  """``check()`` fails fast (writing nothing) when a live process holds the lock; ``acquire()`` takes it
  (creating the workdir), ``release()`` gives it back. Also a context manager (acquire/release)."""

  def __init__(self, workdir, echo=print):
    self.path = Path(workdir) / LOCK_NAME
    self.echo = echo
    self._fd = None

  def _held_by_other(self) -> dict | None:
    """The holder's record when another live process holds the lock, else None (nothing is written)."""
    if not self.path.is_file():
      return None
    fd = os.open(self.path, os.O_RDONLY)
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return _holder(self.path)
    finally:
      os.close(fd)  # closing releases the probe's shared lock
    return None

  def check(self) -> None:
    """Raises :class:`WorkdirLocked` naming the holder when another live process runs in the workdir."""
    holder = self._held_by_other()
    if holder is not None:
      raise WorkdirLocked(f"{self.path.parent} is in use by {_describe(holder)}: two runs in one workdir "
                          "would overwrite each other's checkpoints. Wait for it to finish, stop it, or use "
                          "another --workdir.")

  def acquire(self) -> None:
    """Takes the lock, or raises :class:`WorkdirLocked`. A lock file of a dead process is taken over."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      self.check()
      raise WorkdirLocked(f"{self.path.parent} is locked by another process") from None
    previous = _holder(self.path)
    if previous.get("pid") and previous.get("pid") != os.getpid():
      self.echo(f"mmjax: taking over the lock of {_describe(previous)}, which is no longer running")
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)
    self._fd = fd

  def release(self) -> None:
    """Gives the lock back (the file stays, empty, so a later run finds no stale owner)."""
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
    finally:
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
