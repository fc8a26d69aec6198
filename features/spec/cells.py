"""One raw cell -> the value of its field, never coerced.

The Beam readers and the serving request parser type every cell here, so a value the
model could not take (a JSON object for a single value, a boolean, a number outside
float32, a cell longer than MAX_CELL_CHARS, a string without a UTF-8 form) is refused
the same way on both sides: the job dead-letters the row, serving rejects the request.
"""
import math
import re
from typing import TYPE_CHECKING, Any, List, Mapping, Union

from hmdn.features.fileio import short
from hmdn.features.spec.kinds import (FLOAT32_MAX, LABEL, MAX_CELL_CHARS, MULTI_CATEGORICAL,
                                      NUMERIC, SEQUENCE, SpecError)

if TYPE_CHECKING:  # schema imports this module; the annotation only needs the name
  from hmdn.features.spec.schema import Feature, FeatureSpec

Value = Union[str, float, List[str]]

# A raw number: ASCII decimal or scientific notation, blanks (space, tab) around it
# allowed. Python's float() also takes "1_000", full-width "\uff11\uff12", "nan" and
# "infinity"; a cell is checked against this first, so none of those is ever a number.
NUMBER_PATTERN = r"[ \t]*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[ \t]*"
_NUMBER = re.compile(NUMBER_PATTERN)
# One regex call checks a whole column, its cells joined by "\n" (the batched parser).
_NUMBER_COLUMN = re.compile(f"{NUMBER_PATTERN}(?:\n{NUMBER_PATTERN})*")
_NON_FINITE = re.compile(r"[ \t]*[+-]?(?:nan|inf|infinity)[ \t]*", re.IGNORECASE)
NOT_A_NUMBER = "is not a number (ASCII decimal or scientific notation, e.g. 12, -0.5, 1e-3)"


def is_number_column(cells: List[str]) -> bool:
  """Every cell of a column of strings is a number by the strict grammar (one regex
  call for the column: the batched parser's fast path)."""
  joined = "\n".join(cells)
  return (joined.count("\n") == len(cells) - 1
          and _NUMBER_COLUMN.fullmatch(joined) is not None)


def strict_float(raw: Any) -> float:
  """A raw number -> float; raises ValueError for a string outside the grammar (a
  "nan"/"inf" string passes, as a non-finite float its caller refuses), TypeError for
  a value that is not a string or a number."""
  if isinstance(raw, str):
    if _NUMBER.fullmatch(raw) is None and _NON_FINITE.fullmatch(raw) is None:
      raise ValueError(raw)
    return float(raw)
  if isinstance(raw, bool) or not isinstance(raw, (int, float)):
    raise TypeError(raw)
  return float(raw)


def parse_value(feature: "Feature", raw: Any) -> Value:
  """Types one raw cell; raises SpecError naming the field and the value.

  Nothing is coerced: a value that does not fit the field is an error, so the Beam job
  dead-letters the row and serving rejects the request instead of training or
  predicting on a changed value.
  """
  if isinstance(raw, str) and len(raw) > MAX_CELL_CHARS:
    raise SpecError(f"field {feature.name!r}: a cell of {len(raw)} characters is over "
                    f"the limit of {MAX_CELL_CHARS}")
  if isinstance(raw, (list, tuple)):  # a JSON list: the CSV cell's limit, as joined
    sizes = [len(v) if isinstance(v, str) else len(str(v)) for v in raw]
    joined = sum(sizes) + len(raw) - 1
    if joined > MAX_CELL_CHARS and max(sizes) <= MAX_CELL_CHARS:  # (one value: its own)
      raise SpecError(f"field {feature.name!r}: a list of {len(raw):,} values "
                      f"({joined:,} characters joined) is over the limit of "
                      f"{MAX_CELL_CHARS} characters a cell")
  if feature.kind == SEQUENCE:
    return _sequence(feature, raw)
  if raw is None or (isinstance(raw, str) and raw.strip() == ""):
    if feature.required:
      what = "no value (a missing key or null)" if raw is None else "empty value"
      raise SpecError(f"field {feature.name!r}: {what}, and the field has no default")
    raw = feature.default
  if isinstance(raw, bool):
    raise SpecError(f"field {feature.name!r}: boolean {raw!r} is not a "
                    f"{'number' if feature.kind == NUMERIC else 'category'}; write "
                    "it as 0/1 or a string")
  if feature.role == LABEL:
    return _label(feature, raw)
  if feature.kind == NUMERIC:
    return _number(feature, raw, "value")
  if feature.kind == MULTI_CATEGORICAL:
    if isinstance(raw, (list, tuple)):
      values = [_category(feature, v) for v in raw]
    elif isinstance(raw, dict):
      raise SpecError(f"field {feature.name!r}: a JSON object is not a list of "
                      f"values: {short(raw)}")
    else:
      values = str(raw).split(feature.separator) if isinstance(raw, str) else [
          _category(feature, raw)]
    return [v for v in values if v != ""]
  return _category(feature, raw)


def _sequence(feature: "Feature", raw: Any) -> List[str]:
  """A sequence cell (a JSON list, or a string joined by `separator`) -> its values in
  order, all of them (`truncate` keeps the last max_length, for its caller to count).
  An empty cell is an empty sequence; each element is checked as a categorical value,
  and an empty element is an error naming its position (never dropped)."""
  if raw is None or (isinstance(raw, str) and raw.strip() == ""):
    return []
  if isinstance(raw, str):
    items = raw.split(feature.separator)
  elif isinstance(raw, (list, tuple)):
    items = list(raw)
  else:
    raise SpecError(f"field {feature.name!r}: {short(raw)} is not a sequence (a list of "
                    f"values, or values joined by {feature.separator!r})")
  values = []
  for i, v in enumerate(items):
    if isinstance(v, str) and v.strip() == "":
      raise SpecError(f"field {feature.name!r} position {i}: empty value {v!r} in a "
                      "sequence (\"\" is never a value)")
    try:
      values.append(_category(feature, v))
    except SpecError as e:
      rest = str(e).split(": ", 1)[-1]
      raise SpecError(f"field {feature.name!r} position {i}: {rest}") from None
  return values


def truncate(feature: "Feature", values: List[str]) -> List[str]:
  """A sequence's last (most recent) max_length values: what the model receives."""
  return values[-feature.max_length:] if len(values) > feature.max_length else values


def check_cell(feature: "Feature", value: Value) -> Value:
  """What the tf.Example and the vocabulary files need beyond `parse_value`: every
  string of a parsed value (each piece of a split multi-valued cell too) is within
  MAX_CELL_CHARS and encodes as UTF-8 (JSON's "\\ud800" does not)."""
  for v in value if isinstance(value, list) else [value]:
    if isinstance(v, str):
      _check_text(feature, v)
  return value


def _check_text(feature: "Feature", value: str) -> str:
  """A string value a tf.Example and a vocabulary file can hold."""
  if len(value) > MAX_CELL_CHARS:
    raise SpecError(f"field {feature.name!r}: a value of {len(value)} characters is "
                    f"over the limit of {MAX_CELL_CHARS}")
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as e:  # a lone surrogate (JSON "\ud800"): no UTF-8 form
    raise SpecError(f"field {feature.name!r}: {short(value)} is not valid Unicode "
                    f"({e.reason})")
  return value


def _label(feature: "Feature", raw: Any) -> float:
  """A click label: 0 or 1, as a float."""
  if isinstance(raw, (dict, list, tuple)):
    raise SpecError(f"field {feature.name!r}: label {short(raw)} is not a number")
  try:
    value = strict_float(raw)
  except (TypeError, ValueError, OverflowError):
    raise SpecError(f"field {feature.name!r}: label {short(raw)} {NOT_A_NUMBER}")
  if value not in (0.0, 1.0):
    raise SpecError(f"field {feature.name!r}: label {raw!r} is not 0 or 1")
  return value


def _number(feature: "Feature", raw: Any, what: str) -> float:
  """A finite float32 number from a raw cell (a string or a JSON number)."""
  if isinstance(raw, (dict, list, tuple)) or isinstance(raw, bool):
    raise SpecError(f"field {feature.name!r}: {what} {short(raw)} is not a number")
  try:
    value = strict_float(raw)
  except OverflowError:  # a JSON integer beyond any float
    raise SpecError(f"field {feature.name!r}: {what} {short(raw)} is outside the "
                    "float32 range the model computes in")
  except (TypeError, ValueError):
    raise SpecError(f"field {feature.name!r}: {what} {short(raw)} {NOT_A_NUMBER}")
  if not math.isfinite(value):
    raise SpecError(f"field {feature.name!r}: {what} {short(raw)} is not a finite "
                    "number")
  if abs(value) > FLOAT32_MAX:
    raise SpecError(f"field {feature.name!r}: {what} {short(raw)} is outside the "
                    "float32 range the model computes in")
  return value


def _category(feature: "Feature", raw: Any) -> str:
  """One categorical value as a string; JSON numbers used as ids: 3.0 and 3 are the same
  category. Objects, lists and booleans are not categories."""
  if isinstance(raw, bool) or isinstance(raw, (dict, list, tuple)) or raw is None:
    raise SpecError(f"field {feature.name!r}: {short(raw)} is not a categorical value "
                    "(a string or a number)")
  if isinstance(raw, float):
    if not math.isfinite(raw):
      raise SpecError(f"field {feature.name!r}: {raw!r} is not a categorical value")
    if raw.is_integer():
      raw = int(raw)
  return _check_text(feature, str(raw))


def violates_after(task: Any, prerequisite: Any) -> bool:
  """The `after` rule: a task observed only after its prerequisite's positive is 1
  where the prerequisite is 0 (a purchase without a click)."""
  return task == 1.0 and prerequisite == 0.0


def check_tasks(spec: "FeatureSpec", record: Mapping[str, Any]) -> None:
  """A row's labels agree with their `after` links: a task observed only after
  another's positive (a purchase after a click) is 0 wherever that one is 0; raises
  SpecError naming both fields and their values."""
  for f in spec.labels:
    if f.after is not None and violates_after(record.get(f.name), record.get(f.after)):
      raise SpecError(f"field {f.name!r}: label 1 where {f.after!r} is 0 ({f.name} is "
                      f"observed only after a {f.after}: after: {f.after})")
