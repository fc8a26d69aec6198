"""The progress side channel: counts the workers write for the driver to print."""
import json
import time
import uuid
from typing import Dict

from apache_beam.io.filesystems import FileSystems


class Progress:
  """Cumulative counts of one DoFn instance, written every few seconds as a small JSON
  file `<progress_prefix>-<kind>-<id>.json` (read by the driver to print progress
  while the DirectRunner, which exposes counters only when the job ends, works). A
  no-op without a prefix."""
  EVERY_S = 2.0

  def __init__(self, progress_prefix: str, kind: str):
    self._path = (f"{progress_prefix}-{kind}-{uuid.uuid4().hex[:12]}.json"
                  if progress_prefix else "")
    self._counts: Dict[str, int] = {}
    self._clock = time.monotonic
    self._last = self._clock()

  def add(self, **counts: int) -> None:
    if not self._path:
      return
    for k, v in counts.items():
      self._counts[k] = self._counts.get(k, 0) + v
    if self._clock() - self._last >= self.EVERY_S:
      self.flush()

  def flush(self) -> None:
    if not self._path or not self._counts:
      return
    self._last = self._clock()
    try:
      with FileSystems.create(self._path) as f:
        f.write(json.dumps(self._counts).encode("utf-8"))
    except Exception:  # progress is best effort; the counters are the record.
      pass
