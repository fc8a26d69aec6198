"""One writer an output directory: a lock file holding the writer's pid, host and start.

`held(directory, flag)` creates `<directory>/.hmdn.lock` with O_EXCL semantics (the
record is written to a file of its own, then hard-linked to the lock's name, so a
reader never sees half a record) and removes it when the block ends. A second writer
is refused with one line naming the holder. The lock of a process that no longer runs
on this host (a SIGKILL, a crash) is stale: it is taken over with a line saying so, so
a killed run restarted with the same command goes on. A process holding the lock may
take it again (nested stages). Paths such as gs://... are not locked (no O_EXCL there).
"""
import contextlib
import datetime
import errno
import json
import os
import socket
import sys
from typing import Any, Dict, Iterator, Optional

LOCK_FILE = ".hmdn.lock"


class LockedError(ValueError):
  """Another running process writes into the directory."""


class OutputPathError(ValueError):
  """An output directory's path is taken by something else (a file)."""


def lock_path(directory: str) -> str:
  return os.path.join(directory, LOCK_FILE)


def _record() -> Dict[str, Any]:
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.now(datetime.timezone.utc).strftime(
              "%Y-%m-%d %H:%M:%S UTC"),
          "command": " ".join(sys.argv[:2])}


def holder(directory: str) -> Optional[Dict[str, Any]]:
  """The lock's record, or None when there is no lock (or it is unreadable)."""
  try:
    with open(lock_path(directory)) as f:
      record = json.load(f)
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


def _describe(record: Dict[str, Any]) -> str:
  return (f"pid {record.get('pid')} on {record.get('host')}, started "
          f"{record.get('started')}")


def _try_create(directory: str) -> bool:
  """Creates the lock with this process's record; False when a lock is there."""
  path = lock_path(directory)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(_record(), f)
  try:
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  finally:
    os.remove(tmp)


def _remove_stale_temps(directory: str) -> None:
  """A lock record's temporary file left by a process killed while it took the lock
  (`_try_create`): removed once that process is gone."""
  prefix = os.path.basename(lock_path(directory)) + "."
  for name in os.listdir(directory):
    pid = name[len(prefix):-len(".tmp")]
    if name.startswith(prefix) and name.endswith(".tmp") and pid.isdigit() and (
        int(pid) != os.getpid() and not _alive(int(pid))):
      try:
        os.remove(os.path.join(directory, name))
      except FileNotFoundError:
        pass


def _acquire(directory: str, flag: str) -> bool:
  """Takes the lock; True when this call created it (and must remove it)."""
  if os.path.lexists(directory) and not os.path.isdir(directory):
    raise OutputPathError(f"{flag}={directory} is a file, not a directory; nothing "
                          "was written")
  os.makedirs(directory, exist_ok=True)
  _remove_stale_temps(directory)
  for _ in range(3):
    if _try_create(directory):
      return True
    record = holder(directory)
    if record is None:  # removed meanwhile, or unreadable: treated as stale
      record = {}
    here = record.get("host") == socket.gethostname()
    pid = record.get("pid")
    if here and pid == os.getpid():
      return False  # ours already (a nested stage)
    if here and isinstance(pid, int) and _alive(pid):
      raise LockedError(
          f"{flag}={directory} is being written by another hmdn process "
          f"({_describe(record)}, lock {lock_path(directory)}); wait for it to end or "
          "use another directory")
    if record and not here:
      raise LockedError(
          f"{flag}={directory} is locked by a process on another host "
          f"({_describe(record)}); if it is no longer running, remove "
          f"{lock_path(directory)}")
    print(f"note: {flag}={directory}: took over the stale lock of a process that no "
          f"longer runs ({_describe(record) if record else 'unreadable lock'})",
          file=sys.stderr, flush=True)
    try:
      os.remove(lock_path(directory))
    except FileNotFoundError:
      pass
  raise LockedError(f"{flag}={directory}: could not take the lock "
                    f"{lock_path(directory)}; another process keeps taking it")


def release(directory: str) -> None:
  """Removes the lock if this process holds it."""
  record = holder(directory)
  if record and record.get("pid") == os.getpid() and (
      record.get("host") == socket.gethostname()):
    try:
      os.remove(lock_path(directory))
    except OSError as e:
      if e.errno != errno.ENOENT:
        raise


@contextlib.contextmanager
def held(directory: str, flag: str) -> Iterator[None]:
  """The lock of `directory` for the block (created with the directory if absent)."""
  if "://" in directory:
    yield
    return
  created = _acquire(directory, flag)
  try:
    yield
  finally:
    if created:
      release(directory)
