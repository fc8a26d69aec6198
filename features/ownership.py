"""Output directories are ours or untouched.

A command writes only into a directory that is absent, empty, or marked as written by
hmdn: `claim` creates `<directory>/.hmdn-output.json` (the kind of output it holds) in
an absent or empty directory, accepts a directory marked with the same kind (or one
holding that kind's signature files, written before the marker existed), and refuses
anything else in one line naming the flag, the path and a few of the foreign entries,
before a file is touched. Whether an output of ours may be replaced (`--overwrite`) is
the caller's rule; a foreign directory is refused with or without it.
"""
import json
import os
from typing import Callable, Dict, List, Optional, Sequence, Union

from hmdn.features import fileio, locks

MARKER_FILE = ".hmdn-output.json"
DATA, RUN, EXPORT, REPORT, GENERATED = "data", "run", "export", "report", "generated"
KINDS: Dict[str, str] = {
    GENERATED: "a generated log of `hmdn generate`",
    DATA: "a data directory of `hmdn preprocess`",
    RUN: "a run directory of `hmdn train`",
    EXPORT: "an export root of `hmdn export`",
    REPORT: "a report directory of `hmdn compare`",
}
# Files hmdn itself keeps in any output directory (not the user's).
OWN_ENTRIES = (MARKER_FILE, locks.LOCK_FILE)
SHOWN_ENTRIES = 3


class ForeignDirectoryError(ValueError):
  """The directory holds files hmdn did not write (or another kind of output)."""


def marker_path(directory: str) -> str:
  return os.path.join(directory, MARKER_FILE)


def marked_kind(directory: str) -> Optional[str]:
  """The kind recorded in the directory's marker, or None."""
  try:
    with open(marker_path(directory)) as f:
      record = json.load(f)
  except (OSError, ValueError):
    return None
  return record.get("kind") if isinstance(record, dict) else None


def user_entries(directory: str) -> List[str]:
  """The directory's entries, without hmdn's own marker and lock (sorted)."""
  return sorted(n for n in os.listdir(directory) if n not in OWN_ENTRIES
                and not (n.startswith(locks.LOCK_FILE) and n.endswith(".tmp")))


def _write_marker(directory: str, kind: str) -> None:
  fileio.write_json_atomic(marker_path(directory), {"kind": kind, "tool": "hmdn"})


def claim(directory: str, kind: str, flag: str,
          signature: Union[Sequence[str], Callable[[str], bool]] = (),
          own: Optional[Callable[[str], bool]] = None) -> bool:
  """Makes `directory` an output of `kind`, or refuses it. True when it already held
  an output of that kind (the caller decides whether it may be replaced or extended),
  False when it was absent or empty. An unmarked directory written before the marker
  existed is accepted when it holds a `signature` entry (names, or a test of a name)
  and nothing but entries `own` accepts (default: the signature)."""
  if "://" in directory:  # object stores: no marker checks (they have no empty dir)
    return False
  if os.path.lexists(directory) and not os.path.isdir(directory):
    raise ForeignDirectoryError(f"{flag}={directory} is a file, not a directory; "
                                "nothing was written")
  if not os.path.isdir(directory):
    os.makedirs(directory)
    _write_marker(directory, kind)
    return False
  entries = user_entries(directory)
  marked = marked_kind(directory)
  if marked == kind:
    return bool(entries)
  if marked is not None:
    raise ForeignDirectoryError(
        f"{flag}={directory} is {KINDS.get(marked, marked)}, not "
        f"{KINDS[kind].split(' of ')[0]}; nothing was touched; use another directory")
  if not entries:
    _write_marker(directory, kind)
    return False
  is_signature = signature if callable(signature) else (lambda name: name in signature)
  own = own or is_signature
  if any(map(is_signature, entries)) and all(map(own, entries)):
    _write_marker(directory, kind)  # an older output of ours
    return True
  shown = ", ".join(repr(n) for n in entries[:SHOWN_ENTRIES]) + (
      ", ..." if len(entries) > SHOWN_ENTRIES else "")
  raise ForeignDirectoryError(
      f"{flag}={directory} is not empty and was not written by hmdn (it holds {shown});"
      f" nothing was touched; use an empty or new directory")


def unclaim_if_empty(directory: str) -> None:
  """Removes the marker of a directory a failed command left empty: it is as the user
  gave it (an empty directory is claimed again by the next run anyway)."""
  if "://" not in directory and os.path.isdir(directory) and not user_entries(directory):
    try:
      os.remove(marker_path(directory))
    except FileNotFoundError:
      pass
