"""Raw cells -> a typed record of the spec's raw fields (the sources' parsers call it)."""
import functools
from typing import Any, Mapping, Optional

import apache_beam as beam

from hmdn.beam_jobs.transforms.batches import NAMESPACE, Record
from hmdn.features import spec as spec_lib

TRUNCATED_PREFIX = "truncated_"  # counter truncated_<field>: rows whose list was cut


@functools.lru_cache(maxsize=None)
def truncated_counter(field: str):
  """The counter of the rows whose `field` sequence was longer than max_length (a
  metric handle, the same for every caller)."""
  return beam.metrics.Metrics.counter(NAMESPACE, TRUNCATED_PREFIX + field)


def parse_record(spec: spec_lib.FeatureSpec, cells: Mapping[str, Any],
                 missing_counters: Optional[Mapping[str, Any]] = None) -> Record:
  """Raw cells (strings, or lists for multi-valued fields) -> a typed record of every
  raw field of the spec; raises SpecError naming the field and the value (or the two
  labels of a task seen without its prerequisite). A raw sequence longer than its
  max_length keeps its last (most recent) values, counted in `truncated_<field>`
  once the whole row is accepted."""
  record = {}
  for f in spec.raw_fields:
    raw = cells.get(f.name)
    if (raw is None or raw == "" or raw == []) and missing_counters is not None:
      missing_counters[f.name].inc()
    record[f.name] = spec_lib.check_cell(f, spec.parse_value(f, raw))
  spec_lib.check_tasks(spec, record)
  for f in spec.sequence_fields:
    if not f.is_derived and len(record[f.name]) > f.max_length:
      record[f.name] = spec_lib.truncate(f, record[f.name])
      truncated_counter(f.name).inc()
  return record
