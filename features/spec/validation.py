"""The rules a spec obeys, checked once when a `FeatureSpec` is built: each error names
the file, the field and the offending value, so a wrong spec fails before any job runs."""
import math
import re
from typing import TYPE_CHECKING, Any, List, Mapping, Optional, Sequence

import numpy as np

from hmdn.features.spec.kinds import (BUCKET, CATEGORICAL, COUNT_BUCKET, CROSS,
                                      DEFAULT_MAX_LENGTH, DERIVED_KINDS, FEATURE,
                                      FIELD_NAME_PATTERN, FLOAT32_MAX, HISTORY, KINDS, LABEL,
                                      MODE, NUMERIC, ORACLE, PASSTHROUGH, PROFILE_KINDS, ROLES,
                                      SEQUENCE, SHARE, TABLE_KINDS, SpecError)

if TYPE_CHECKING:  # schema imports this module; the annotations only need the names
  from hmdn.features.spec.schema import Derived, Feature, FeatureSpec


def check_value(where: str, key: str, value: Any, ok: bool = True, expected: str = "",
                choices: Optional[Sequence[Any]] = None) -> None:
  """The one idiom for a key whose value is wrong: with `choices`, the value must be one
  of them ("unknown kind 'x'; expected one of (...)"); else `ok` says whether it is
  what `expected` describes ("embedding_dim must be >= 1, got 0")."""
  if choices is not None:
    if value not in choices:
      raise SpecError(f"{where}: unknown {key} {value!r}; expected one of {choices}")
  elif not ok:
    raise SpecError(f"{where}: {key} must be {expected}, got {value!r}")


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_list_of(v: Any, each) -> bool:
  return isinstance(v, (list, tuple)) and all(each(x) for x in v)


# Each key has one type (a boolean is not an integer, a string is not a list); a value
# of another type is refused, never converted. (key -> (is of the type, its words))
FIELD_TYPES = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "kind": (lambda v: isinstance(v, str), "a string"),
    "role": (lambda v: isinstance(v, str), "a string"),
    "embedding_dim": (_is_int, "an integer"),
    "vocab_min_count": (_is_int, "an integer"),
    "hash_buckets": (_is_int, "an integer"),
    "boundaries": (lambda v: _is_list_of(v, _is_number), "a list of finite numbers"),
    "distribution_level": (lambda v: v is None or _is_int(v), "an integer"),
    "user_id": (lambda v: isinstance(v, bool), "true or false"),
    "implicit_view": (lambda v: isinstance(v, bool), "true or false"),
    "default": (lambda v: v is None or isinstance(v, str) or _is_number(v),
                "a string or a finite number"),
    "separator": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "after": (lambda v: v is None or isinstance(v, str), "a label field's name"),
    "vocab_from": (lambda v: v is None or isinstance(v, str), "a field name (a string)"),
    "max_length": (_is_int, "an integer"),
    "task": (lambda v: v is None or isinstance(v, str), "a label field's name"),
}
DERIVED_TYPES = {
    "kind": (lambda v: isinstance(v, str), "a string"),
    "source": (lambda v: isinstance(v, str), "a field name (a string)"),
    "sources": (lambda v: _is_list_of(v, lambda x: isinstance(x, str)),
                "a list of field names (strings)"),
    "separator": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "of": (lambda v: isinstance(v, str), "a field name (a string)"),
    "order_by": (lambda v: isinstance(v, str), "a field name (a string)"),
}


def _increasing(bounds: Sequence[float]) -> bool:
  """Within float32 and strictly increasing there, as the model's Bucketize sees them
  (1e39 and 1e40 would both be float32 inf)."""
  if not all(abs(b) <= FLOAT32_MAX for b in bounds):  # also false for NaN
    return False
  edges = [float(np.float32(b)) for b in bounds]
  return all(math.isfinite(e) for e in edges) and all(
      a < b for a, b in zip(edges, edges[1:]))


def check_types(where: str, obj: Any, types: Mapping[str, Any], prefix: str = "") -> None:
  """Every key of `types` on the dataclass `obj` holds a value of its one type."""
  for key, (ok, expected) in types.items():
    value = getattr(obj, key)
    check_value(where, prefix + key, value, ok(value), expected)


def validate(spec: "FeatureSpec") -> None:
  """Every rule over the whole spec; raises SpecError at the first broken one."""
  src = spec.source
  if not spec.features:
    raise SpecError(f"{src}: the spec declares no features")
  seen = set()
  for f in spec.features:
    if not f.name or not isinstance(f.name, str):
      raise SpecError(f"{src}: a field has no name ({f!r})")
    where = f"{src}: field {f.name!r}"
    if f.name in seen:
      raise SpecError(f"{where}: declared twice (name {f.name!r})")
    seen.add(f.name)
    _validate_field(spec, f, where)
  if not any(f.role == LABEL for f in spec.features):
    raise SpecError(f"{src}: the spec needs a field with role 'label' (one per task)")
  _validate_tasks(spec, src)
  _validate_output_names(spec, src)
  _validate_oracles(spec, src)
  found = [f for f in spec.features if f.user_id]
  if len(found) > 1:
    raise SpecError(f"{src}: at most one user_id field, found {[f.name for f in found]}")
  levels = [f.distribution_level for f in spec.features
            if f.distribution_level is not None]
  if len(levels) != len(set(levels)):
    raise SpecError(f"{src}: two distribution fields share a distribution_level: "
                    f"{sorted(levels)}")
  coarsest = spec.distribution_fields[0] if levels else None
  if coarsest is not None and coarsest.is_derived:
    raise SpecError(f"{src}: field {coarsest.name!r}: the coarsest distribution field "
                    "(the backbones' domain id, read from the fed inputs) must not be "
                    "derived; give it a higher distribution_level")
  if not any(f.is_model_input for f in spec.features):
    raise SpecError(f"{src}: the spec has no model input (role 'feature')")


def output_names(spec: "FeatureSpec") -> List[str]:
  """The names of the serving outputs of a model of this spec, in the order a reader
  wants them (pipeline/export.py `serving_outputs`): "probability"; with several
  tasks each task's, and an after task's given its prerequisite, in spec order; then
  "codes" (HMDN only) and each task's."""
  labels = [f for f in spec.features if f.role == LABEL]
  names = ["probability"]
  if len(labels) > 1:
    for f in labels:
      names.append(f"probability_{f.name}")
      if f.after:
        names.append(f"probability_{f.name}_given_{f.after}")
  return names + ["codes"] + ([f"codes_{f.name}" for f in labels]
                              if len(labels) > 1 else [])


def _validate_output_names(spec: "FeatureSpec", src: str) -> None:
  """Every output has its own name, and no field takes one: evaluation holds the
  fields it reads and the model's outputs as one table of columns, where a label
  named "probability" would silently be read as the scores."""
  outputs = output_names(spec)
  clash = sorted({n for n in outputs if outputs.count(n) > 1})
  if clash:
    raise SpecError(f"{src}: label fields "
                    f"{[f.name for f in spec.features if f.role == LABEL]}: the "
                    f"serving output {clash[0]!r} would name two outputs; rename a "
                    "label")
  for f in spec.features:
    if f.name in outputs:
      raise SpecError(f"{src}: field {f.name!r}: the name of a model output "
                      f"({', '.join(outputs)}); a field's name is its column in the "
                      "raw log: rename that column")


def _validate_tasks(spec: "FeatureSpec", src: str) -> None:
  """`after` links labels only, to another existing label, without a cycle."""
  by_name = {f.name: f for f in spec.features}
  for f in spec.features:
    if f.after is None:
      continue
    where = f"{src}: field {f.name!r}: after"
    if f.role != LABEL:
      raise SpecError(f"{where} is for labels only (a task observed after another); "
                      f"this field's role is {f.role!r}")
    if f.after == f.name:
      raise SpecError(f"{where} names the field itself")
    if f.after not in by_name:
      raise SpecError(f"{where} names {f.after!r}, which is not a field of the spec; "
                      f"labels: {[g.name for g in spec.features if g.role == LABEL]}")
    if by_name[f.after].role != LABEL:
      raise SpecError(f"{where} names {f.after!r}, which is not a label (role "
                      f"{by_name[f.after].role!r})")
    chain, current = [f.name], f
    while current.after is not None:
      if current.after in chain:
        raise SpecError(f"{src}: field {f.name!r}: after forms a cycle: "
                        f"{' -> '.join(chain + [current.after])}")
      chain.append(current.after)
      current = by_name[current.after]


def _validate_oracles(spec: "FeatureSpec", src: str) -> None:
  """`task` is for oracles only and names a label; one oracle per task."""
  labels = [f.name for f in spec.features if f.role == LABEL]
  by_task = {}
  for f in spec.features:
    where = f"{src}: field {f.name!r}: task"
    if f.task is not None and f.role != ORACLE:
      raise SpecError(f"{where} is for oracles only (the label it is the true "
                      f"probability of); this field's role is {f.role!r}")
    if f.role != ORACLE:
      continue
    if f.task is not None and f.task not in labels:
      raise SpecError(f"{where} names {f.task!r}, which is not a label; labels: {labels}")
    task = f.task if f.task is not None else labels[0]
    if task in by_task:
      raise SpecError(f"{where}: two oracles for task {task!r}: {by_task[task]!r} and "
                      f"{f.name!r} (one true probability per task)")
    by_task[task] = f.name


def _validate_field(spec: "FeatureSpec", f: "Feature", where: str) -> None:
  """The rules of one field, alone and against the fields declared before it."""
  check_types(where, f, FIELD_TYPES)
  if not re.fullmatch(FIELD_NAME_PATTERN, f.name):
    raise SpecError(f"{where}: a field name must be letters, digits and underscores "
                    "(at most 128, not starting with an underscore): it is a "
                    "tf.Example key, a vocabulary file name and a serving argument "
                    "name")
  check_value(where, "kind", f.kind, choices=KINDS)
  check_value(where, "role", f.role, choices=ROLES)
  if f.kind == SEQUENCE:
    _validate_sequence(spec, f, where)
  elif f.vocab_from is not None:
    raise SpecError(f"{where}: vocab_from is for sequence fields, kind is {f.kind!r} "
                    f"(vocab_from={f.vocab_from!r})")
  elif f.max_length != DEFAULT_MAX_LENGTH:
    raise SpecError(f"{where}: max_length is for sequence fields, kind is {f.kind!r} "
                    f"(max_length={f.max_length!r})")
  check_value(where, "embedding_dim", f.embedding_dim, f.embedding_dim >= 1, ">= 1")
  check_value(where, "vocab_min_count", f.vocab_min_count, f.vocab_min_count >= 1,
              ">= 1")
  check_value(where, "hash_buckets", f.hash_buckets, f.hash_buckets >= 0, ">= 0")
  if f.boundaries and f.kind != NUMERIC:
    raise SpecError(f"{where}: boundaries are for numeric fields, kind is {f.kind!r}")
  check_value(where, "boundaries", list(f.boundaries), _increasing(f.boundaries),
              "strictly increasing (as float32, the model's precision)")
  if f.hash_buckets and f.kind == NUMERIC:
    raise SpecError(f"{where}: hash_buckets is for categorical fields")
  if f.distribution_level is not None:
    if f.kind != CATEGORICAL:
      raise SpecError(f"{where}: distribution_level marks a distribution field, which "
                      f"must be categorical; kind is {f.kind!r}")
    if f.role != FEATURE:
      raise SpecError(f"{where}: a distribution field must have role 'feature', "
                      f"got {f.role!r}")
    check_value(where, "distribution_level", f.distribution_level,
                isinstance(f.distribution_level, int) and f.distribution_level >= 0,
                "an integer >= 0")
  if f.derived is not None:
    _validate_derived(spec, f, where)
  if f.implicit_view and f.role != FEATURE:
    raise SpecError(f"{where}: implicit_view marks a model feature, but the role is "
                    f"{f.role!r}")
  if f.user_id and f.kind != CATEGORICAL:
    raise SpecError(f"{where}: the user_id field must be categorical, kind is "
                    f"{f.kind!r}")
  if f.role in (LABEL, ORACLE) and f.kind != NUMERIC:
    raise SpecError(f"{where}: a {f.role} field (role {f.role!r}) must be numeric, kind "
                    f"is {f.kind!r}")
  if f.default is not None and f.kind == NUMERIC:
    check_value(where, "default", f.default,
                _is_number(f.default) and abs(f.default) <= FLOAT32_MAX,
                "a number for a numeric field (not a string), within float32")
  elif f.default is not None:
    check_value(where, "default", f.default, isinstance(f.default, str),
                f"a string for a {f.kind} field (quote it in YAML)")


# Keys a sequence takes from its vocab_from field, never its own (key -> its default).
_SHARED_WITH_VOCAB_FROM = {"embedding_dim": 8, "vocab_min_count": 1, "hash_buckets": 0,
                           "boundaries": (), "default": None}


def _validate_sequence(spec: "FeatureSpec", f: "Feature", where: str) -> None:
  """A sequence is a model input sharing the vocabulary and embedding of a raw
  categorical feature (`vocab_from`), at most `max_length` long."""
  if f.role != FEATURE:
    raise SpecError(f"{where}: a sequence is a model input: role must be 'feature', got "
                    f"{f.role!r}")
  if f.distribution_level is not None:
    raise SpecError(f"{where}: a sequence cannot be a distribution field "
                    f"(distribution_level={f.distribution_level!r}): a distribution is "
                    "one categorical value per row")
  check_value(where, "max_length", f.max_length, f.max_length >= 1, ">= 1")
  for key, default in _SHARED_WITH_VOCAB_FROM.items():
    value = getattr(f, key)
    if value != default:
      raise SpecError(f"{where}: a sequence shares the vocabulary and embedding of its "
                      f"vocab_from field; it takes no {key} of its own (got {value!r})")
  if f.vocab_from is None or f.vocab_from == "":
    raise SpecError(f"{where}: a sequence needs vocab_from: the categorical field whose "
                    "vocabulary and embedding it shares (e.g. vocab_from: item_id)")
  if f.vocab_from == f.name:
    raise SpecError(f"{where}: vocab_from names the field itself ({f.vocab_from!r}); a "
                    "sequence has no vocabulary of its own")
  target = next((g for g in spec.features if g.name == f.vocab_from), None)
  if target is None:
    raise SpecError(f"{where}: vocab_from names {f.vocab_from!r}, which is not a field "
                    f"of the spec")
  if target.is_derived:
    raise SpecError(f"{where}: vocab_from names {f.vocab_from!r}, a derived field; it "
                    "must be a raw categorical feature (its vocabulary is the log's)")
  if target.kind != CATEGORICAL or target.role != FEATURE:
    raise SpecError(f"{where}: vocab_from names {f.vocab_from!r}, which has kind "
                    f"{target.kind!r} role {target.role!r}; it must be a categorical "
                    "feature")


def _validate_history(spec: "FeatureSpec", f: "Feature", where: str) -> None:
  """A history reads raw fields declared before it: a categorical `source` (the key),
  a categorical feature `of` (whose vocabulary it shares: vocab_from), a numeric
  `order_by` (the time)."""
  d = f.derived
  if f.kind != SEQUENCE:
    raise SpecError(f"{where}: a history is a sequence: kind must be 'sequence', got "
                    f"{f.kind!r}")
  for key in ("sources", "boundaries", "separator", "value"):
    if getattr(d, key) != _DERIVED_KEY_DEFAULTS[key]:
      raise SpecError(f"{where}: a history takes no derived {key} (got "
                      f"{getattr(d, key)!r}); it takes source, of and order_by")
  earlier = {}
  for g in spec.features:
    if g.name == f.name:
      break
    earlier[g.name] = g
  needs = (("source", "the field whose rows it collects, e.g. user_id",
            (CATEGORICAL,), (FEATURE, PASSTHROUGH)),
           ("of", "the field whose earlier values it holds, e.g. item_id",
            (CATEGORICAL,), (FEATURE,)),
           ("order_by", "the numeric field that orders the rows, e.g. a timestamp",
            (NUMERIC,), (FEATURE, PASSTHROUGH)))
  for key, what, kinds, roles in needs:
    name = getattr(d, key)
    if not name:
      raise SpecError(f"{where}: a history needs `{key}`: {what}")
    g = earlier.get(name)
    if g is None:
      raise SpecError(f"{where}: history {key} {name!r} is not a field declared before "
                      "it")
    if g.is_derived:
      raise SpecError(f"{where}: history {key} {name!r} must be a raw field (it is a "
                      f"{g.derived.kind})")
    if g.kind not in kinds or g.role not in roles:
      raise SpecError(f"{where}: history {key} {name!r} must be {' or '.join(kinds)} with "
                      f"role {' or '.join(roles)}; it has kind {g.kind!r} role "
                      f"{g.role!r}")
  if d.of == d.source:
    raise SpecError(f"{where}: a history's `of` {d.of!r} must differ from its source")
  if earlier[d.order_by].default is not None:
    raise SpecError(f"{where}: history order_by {d.order_by!r} has a default "
                    f"({earlier[d.order_by].default!r}); a row without a time cannot be "
                    "ordered, so the field must be required")
  if f.vocab_from != d.of:
    raise SpecError(f"{where}: a history of {d.of!r} shares its vocabulary: vocab_from "
                    f"must be {d.of!r}, got {f.vocab_from!r}")


def _validate_derived(spec: "FeatureSpec", f: "Feature", where: str) -> None:
  d = f.derived
  check_types(where, d, DERIVED_TYPES, prefix="derived: ")
  check_value(where, "derived kind", d.kind, choices=DERIVED_KINDS)
  if d.kind == HISTORY:
    _validate_history(spec, f, where)
    return
  if d.order_by:
    raise SpecError(f"{where}: order_by is for a history, not a {d.kind} "
                    f"(order_by={d.order_by!r})")
  if f.kind != CATEGORICAL or f.role != FEATURE:
    raise SpecError(f"{where}: a derived field must be a categorical feature, got kind "
                    f"{f.kind!r} role {f.role!r}")
  if f.default is not None:
    raise SpecError(f"{where}: a derived field takes no default (it is never read)")
  if d.kind == CROSS:
    if len(d.sources) < 2 or d.source:
      raise SpecError(f"{where}: a cross needs `sources` (two or more fields), got "
                      f"sources={list(d.sources)} source={d.source!r}")
  elif not d.source or d.sources:
    raise SpecError(f"{where}: a {d.kind} needs one `source` field")
  if d.kind in (COUNT_BUCKET, BUCKET, SHARE):
    _validate_derived_boundaries(d, where)
  elif d.boundaries:
    raise SpecError(f"{where}: boundaries are for a count_bucket, bucket or share, not "
                    f"a {d.kind} (boundaries={list(d.boundaries)})")
  earlier = {}
  for g in spec.features:
    if g.name == f.name:
      break
    earlier[g.name] = g
  for name in d.reads:
    src = earlier.get(name)
    if src is None:
      raise SpecError(f"{where}: derived from {name!r}, which is not a field declared "
                      "before it")
    if src.role != FEATURE:
      raise SpecError(f"{where}: derived from {name!r}, whose role is {src.role!r}: "
                      "the model must read the source, so its role must be 'feature'")
    wanted = NUMERIC if d.kind == BUCKET else CATEGORICAL
    if src.kind != wanted:
      raise SpecError(f"{where}: a {d.kind} reads a {wanted} field, {name!r} is "
                      f"{src.kind!r}")
    if d.kind in TABLE_KINDS and src.is_derived:
      raise SpecError(f"{where}: {d.kind} source {name!r} must be a raw field")
  if d.kind in PROFILE_KINDS:
    _validate_profile_of(d, earlier, where)
  elif d.of:
    raise SpecError(f"{where}: `of` is for a mode or a share, not a {d.kind} "
                    f"(of={d.of!r})")
  if d.kind == SHARE:
    _validate_share_value(d, earlier[d.of], where)
  elif d.value != "":
    raise SpecError(f"{where}: `value` is for a share, not a {d.kind} "
                    f"(value={d.value!r})")


_DERIVED_KEY_DEFAULTS = {"sources": (), "boundaries": (), "separator": "_x_", "value": ""}


def _validate_derived_boundaries(d: "Derived", where: str) -> None:
  """A count_bucket, bucket or share is bucketized at strictly increasing numbers (a
  share's inside (0, 1))."""
  bounds = list(d.boundaries)
  if not bounds:
    raise SpecError(f"{where}: a {d.kind} needs `boundaries`")
  check_value(where, "boundaries", bounds,
              all(isinstance(b, (int, float)) and not isinstance(b, bool)
                  for b in bounds), "numbers")
  check_value(where, "boundaries", bounds, _increasing(bounds),
              "strictly increasing (as float32, the model's precision)")
  if d.kind == SHARE and not all(0 < b < 1 for b in bounds):
    raise SpecError(f"{where}: a share's boundaries must lie in (0, 1) (a share is a "
                    f"fraction of rows), got {bounds}")


def _validate_profile_of(d: "Derived", earlier: Mapping[str, "Feature"],
                         where: str) -> None:
  """`of` (of a mode or a share) is a categorical feature declared before the field,
  other than its source, and computed row by row from raw fields (the Beam job
  computes it before the join)."""
  what = {MODE: "most frequent value", SHARE: "share of `value`"}[d.kind]
  if not d.of:
    raise SpecError(f"{where}: a {d.kind} needs `of`: the field whose {what} per "
                    "source value it is")
  if d.of == d.source:
    raise SpecError(f"{where}: a {d.kind}'s `of` {d.of!r} must differ from its source")
  of = earlier.get(d.of)
  if of is None:
    raise SpecError(f"{where}: {d.kind} of {d.of!r}, which is not a field declared "
                    "before it")
  if of.role != FEATURE or of.kind != CATEGORICAL:
    raise SpecError(f"{where}: a {d.kind}'s `of` must be a categorical feature, "
                    f"{d.of!r} has kind {of.kind!r} role {of.role!r}")
  pending = [of]
  while pending:
    g = pending.pop()
    if g.is_derived:
      if g.derived.kind not in (BUCKET, CROSS):
        raise SpecError(f"{where}: a {d.kind}'s `of` {d.of!r} must be a raw field or a "
                        f"bucket/cross of raw fields; it reads {g.name!r}, a "
                        f"{g.derived.kind}")
      pending.extend(earlier[n] for n in g.derived.reads)


def _validate_share_value(d: "Derived", of: "Feature", where: str) -> None:
  """A share's `value` is one value of `of`, as a string (YAML: quote a number); a
  bucket's values are known, so a value outside them is refused."""
  check_value(where, "a share's `value`", d.value, isinstance(d.value, str),
              "a string (quote it in YAML)")
  if d.value == "":
    raise SpecError(f"{where}: a share needs `value`: the value of {d.of!r} whose "
                    "share of the source value's rows it is")
  if of.is_derived and of.derived.kind == BUCKET:
    buckets = [str(i) for i in range(len(of.derived.boundaries) + 1)]
    if d.value not in buckets:
      raise SpecError(f"{where}: share of {d.of!r} value {d.value!r}, which is not one "
                      f"of its buckets {buckets}")
