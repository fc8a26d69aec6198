"""Raw cells -> a typed record of the spec's raw fields (the sources' parsers call it)."""
from typing import Any, Mapping, Optional

from beam_jobs.transforms.batches import Record
from features import spec as spec_lib


def parse_record(spec: spec_lib.FeatureSpec, cells: Mapping[str, Any],
                 missing_counters: Optional[Mapping[str, Any]] = None) -> Record:
  """Raw cells (strings, or lists for multi-valued fields) -> a typed record of every
  raw field of the spec; raises SpecError naming the field and the value."""
  record = {}
  for f in spec.raw_fields:
    raw = cells.get(f.name)
    if (raw is None or raw == "" or raw == []) and missing_counters is not None:
      missing_counters[f.name].inc()
    record[f.name] = checked_value(f, spec.parse_value(f, raw))
  return record


def checked_value(feature: spec_lib.Feature, value: Any) -> Any:
  """What the tf.Example and the vocabulary files need beyond `parse_value`: every
  string encodes as UTF-8 (JSON's "\\ud800" does not) and each value of a list is within
  the cell limit."""
  for v in value if isinstance(value, list) else [value]:
    if not isinstance(v, str):
      continue
    if len(v) > spec_lib.MAX_CELL_CHARS:
      raise spec_lib.SpecError(f"field {feature.name!r}: a value of {len(v)} characters "
                               f"is over the limit of {spec_lib.MAX_CELL_CHARS}")
    try:
      v.encode("utf-8")
    except UnicodeEncodeError as e:
      raise spec_lib.SpecError(f"field {feature.name!r}: {v[:60]!r} is not valid "
                               f"Unicode ({e.reason})")
  return value
