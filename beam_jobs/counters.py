"""The job's counters read back at the end, and the check that they reconcile."""
from typing import Dict, Mapping

from apache_beam.metrics.metric import MetricsFilter

from hmdn.beam_jobs.sources import base
from hmdn.beam_jobs.transforms.batches import NAMESPACE
from hmdn.features.preprocessed import EVAL, SPLITS, TRAIN


class CountersError(RuntimeError):
  """The job's counters do not add up: some row was lost or counted twice."""


def job_counters(result) -> Dict[str, int]:
  """{name: value} of the job's counters (committed where the runner has them)."""
  counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
  out = {}
  for c in counters["counters"]:
    value = c.committed if c.committed is not None else c.attempted
    out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
  return out


def reconcile(counters: Mapping[str, int]) -> Dict:
  """read = written + rejected for the rows (impressions), and read = joined + unused +
  rejected for each side file; returns those counts, raises CountersError naming the
  numbers when they do not add up (a row lost or counted twice)."""
  read = counters.get(base.ROWS_READ, 0)
  written = {s: counters.get(f"rows_written_{s}", 0) for s in SPLITS}
  rejected = counters.get(base.ROWS_REJECTED, 0)
  if read != written[TRAIN] + written[EVAL] + rejected:
    raise CountersError(f"counters do not reconcile: read {read} != written {written} + "
                        f"rejected {rejected}")
  side_files = side_file_counts(counters)
  for kind, c in side_files.items():
    if c["read"] != c["joined"] + c["unused"] + c["rejected"]:
      raise CountersError(f"{kind} counters do not reconcile: read {c['read']} != "
                          f"joined {c['joined']} + unused {c['unused']} + rejected "
                          f"{c['rejected']}")
  return {"rows_read": read, "rows_written": written, "rows_rejected": rejected,
          "side_files": side_files}


def side_file_counts(counters: Dict[str, int]) -> Dict[str, Dict[str, int]]:
  """Ali-CCP common features, MovieLens users and items: each row read is joined
  (used by an impression), unused, or rejected (dead letter)."""
  out = {}
  for kind in ("ali_ccp_common_rows", "movielens_users", "movielens_items"):
    if f"{kind}_read" in counters:
      out[kind] = {k: counters.get(f"{kind}_{k}", 0)
                   for k in ("read", "joined", "unused", "rejected")}
  return out
