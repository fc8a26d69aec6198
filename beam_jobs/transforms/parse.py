"""Raw cells -> a typed record of the spec's raw fields (the sources' parsers call it)."""
from typing import Any, Mapping, Optional

from hmdn.beam_jobs.transforms.batches import Record
from hmdn.features import spec as spec_lib


def parse_record(spec: spec_lib.FeatureSpec, cells: Mapping[str, Any],
                 missing_counters: Optional[Mapping[str, Any]] = None) -> Record:
  """Raw cells (strings, or lists for multi-valued fields) -> a typed record of every
  raw field of the spec; raises SpecError naming the field and the value (or the two
  labels of a task seen without its prerequisite)."""
  record = {}
  for f in spec.raw_fields:
    raw = cells.get(f.name)
    if (raw is None or raw == "" or raw == []) and missing_counters is not None:
      missing_counters[f.name].inc()
    record[f.name] = spec_lib.check_cell(f, spec.parse_value(f, raw))
  spec_lib.check_tasks(spec, record)
  return record

