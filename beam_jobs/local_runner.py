"""The local runner of a job given no --runner, and the progress lines printed while
it runs."""
import json
import sys
import threading
import time
from typing import Dict, Mapping, Optional

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo
from apache_beam.runners.portability.portable_runner import JobServiceHandle

PROGRESS_EVERY_S = 5.0  # a progress line while the Beam job runs


def local_runner(options: PipelineOptions) -> FnApiRunner:
  """The local runner of a job given no --runner: the engine Beam's DirectRunner runs
  a batch pipeline on (the FnApiRunner, in-process or with --direct_num_workers
  processes), given the pipeline options for its workers as the DirectRunner gives
  them (the provision info its constructor documents: a worker's log level comes from
  there). Named explicitly because the DirectRunner first tries to download and start
  the Prism runner: where the network allows, the job would run on another engine than
  the one tested here, and where it does not, the attempt costs half a second per job."""
  encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
  return FnApiRunner(provision_info=ExtendedProvisionInfo(
      beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


class ProgressPrinter:
  """Prints rows read / written / rejected and rows/s every `every_s` seconds while the
  Beam job runs, from the files the workers' `Progress` writes (the DirectRunner's
  counters are only known at the end), then one final line from the counters."""

  def __init__(self, prefix: str, every_s: Optional[float] = None, out=None):
    self._prefix = prefix
    self._every = PROGRESS_EVERY_S if every_s is None else every_s
    self._out = out or sys.stdout
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, daemon=True,
                                    name="preprocess-progress")

  def __enter__(self):
    self._start = time.monotonic()
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join(timeout=5)
    self.seconds = time.monotonic() - self._start

  def counts(self) -> Dict[str, int]:
    totals: Dict[str, int] = {}
    try:
      found = FileSystems.match([f"{self._prefix}-*.json"])[0].metadata_list
    except Exception:  # nothing written yet
      return totals
    for m in found:
      try:
        with FileSystems.open(m.path) as f:
          counts = json.loads(f.read().decode("utf-8"))
      except (OSError, ValueError):  # being rewritten: the next poll reads it
        continue
      for k, v in counts.items():
        totals[k] = totals.get(k, 0) + int(v)
    return totals

  def _loop(self):
    while not self._stop.wait(self._every):
      c = self.counts()
      if not c:
        continue
      elapsed = time.monotonic() - self._start
      self._print(f"preprocess: {elapsed:5.0f}s  read {c.get('read', 0):,}  written "
                  f"{c.get('written', 0):,}  rejected {c.get('rejected', 0):,}  "
                  f"{c.get('read', 0) / max(elapsed, 1e-9):,.0f} rows/s")

  def final(self, counts: Mapping) -> None:
    read = counts["rows_read"]
    written = sum(counts["rows_written"].values())
    self._print(f"preprocess: Beam job done in {self.seconds:.1f}s: read {read:,}  "
                f"written {written:,}  rejected {counts['rows_rejected']:,}  "
                f"{read / max(self.seconds, 1e-9):,.0f} rows/s")

  def _print(self, line: str) -> None:
    print(line, file=self._out, flush=True)
