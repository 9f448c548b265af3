"""One run per workdir: an exclusive `flock` on `workdir/.lock`.

    with lock.workdir_lock(workdir):
      ...  # write config.json, checkpoints, metrics, outputs.

A second run in the same workdir gets a one-line `WorkdirLockedError`
instead of interleaving its files with the first. The lock belongs to the
open file, so the kernel releases it when the process ends, however it ends:
there are no stale locks to clean up. Within one process the lock is
re-entrant (Boost-DD's `boost.run` calls `rat_train.distill` while it holds
the lock; flock from a second file descriptor would conflict with the
first); another thread of the same process is refused like another run.
In a multi-host run only process 0 takes the lock (and writes in the
workdir); the others run unlocked.
"""

import contextlib
import errno
import fcntl
import os
import threading

from absl import logging

from distill_jax.platform import distributed

LOCK_FILE = ".lock"
# Filesystems without flock support (some network mounts): run unlocked.
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS)


class WorkdirLockedError(ValueError):
  """Another run holds the workdir."""


_mutex = threading.Lock()
_held: dict[str, list] = {}  # lock path -> [thread id, depth, fd].


def ensure_workdir(workdir: str) -> None:
  """Creates `workdir`, or raises a one-line ValueError saying why not."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir} is a file, not a folder; remove it "
                     "or choose another --workdir.")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"--workdir {workdir} cannot be created ({e.strerror}: "
                     f"{e.filename}); choose another --workdir.") from e


def _locked_message(workdir: str, pid: str) -> str:
  return (f"workdir {workdir} is in use by another run (pid {pid or '?'}); "
          "wait for it to finish or choose another --workdir.")


def _acquire(path: str, workdir: str) -> int | None:
  """Opens and flocks `path`; returns the fd (None if flock is unsupported)."""
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise ValueError(f"--workdir {workdir} is not writable ({e.strerror}: "
                     f"{path}); choose another --workdir.") from e
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
    os.close(fd)
    raise WorkdirLockedError(_locked_message(workdir, pid)) from None
  except OSError as e:
    os.close(fd)
    if e.errno not in _UNSUPPORTED:
      raise
    logging.warning("%s: no file locks on this filesystem (%s); running "
                    "without the workdir lock.", workdir, e.strerror)
    return None
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
  return fd


def _release(fd: int | None) -> None:
  if fd is None:
    return
  try:
    os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Holds the exclusive lock of `workdir` (created) for the `with` block.

  Args:
    workdir: the run's output folder.

  Yields:
    None.

  Raises:
    WorkdirLockedError: another process (or thread) holds the lock.
    ValueError: `workdir` is a file or cannot be created.
  """
  if not distributed.is_writer():
    yield
    return
  ensure_workdir(workdir)
  path = os.path.realpath(os.path.join(workdir, LOCK_FILE))
  me = threading.get_ident()
  with _mutex:
    held = _held.get(path)
    if held is not None and held[0] != me:
      raise WorkdirLockedError(_locked_message(workdir, str(os.getpid())))
    if held is None:
      fd = _acquire(path, workdir)
      held = _held[path] = [me, 0, fd]
    held[1] += 1
  try:
    yield
  finally:
    with _mutex:
      held[1] -= 1
      if held[1] == 0:
        del _held[path]
        _release(held[2])
