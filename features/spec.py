"""The feature spec: the single declaration of every field of a dataset.

The Beam job, the tf.Example parsing spec, the Keras inputs and the serving signature are
all derived from a `FeatureSpec`; nothing else in the project declares a feature. A spec
is written as YAML (see `features/specs/`) and loaded with `load_spec`, which validates it
and raises `SpecError` naming the file, the field and the offending value.
"""
import dataclasses
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

CATEGORICAL = "categorical"
MULTI_CATEGORICAL = "multi_categorical"
NUMERIC = "numeric"
KINDS = (CATEGORICAL, MULTI_CATEGORICAL, NUMERIC)

FEATURE = "feature"  # an input of the model
LABEL = "label"  # the click label, 0 or 1
PASSTHROUGH = "passthrough"  # kept in the TFRecords (e.g. a CVR label), not a model input
ORACLE = "oracle"  # the true click probability of a synthetic row: for the oracle AUC only
ROLES = (FEATURE, LABEL, PASSTHROUGH, ORACLE)

# Kinds of derived field (computed from other fields, never read from the raw log).
COUNT_BUCKET = "count_bucket"  # bucketed count of the source value in the training split
CROSS = "cross"  # the source values joined by `separator`
BUCKET = "bucket"  # a numeric source bucketized at `boundaries`
MODE = "mode"  # the most frequent `of` value of the source value in the training split
SHARE = "share"  # bucketed share of the source value's training rows whose `of` is `value`
DERIVED_KINDS = (COUNT_BUCKET, CROSS, BUCKET, MODE, SHARE)
TABLE_KINDS = (COUNT_BUCKET, MODE, SHARE)  # over the training split: a lookup table each
PROFILE_KINDS = (MODE, SHARE)  # per-key profiles of another field `of`

SPECS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs")


class SpecError(ValueError):
  """A feature spec (or a value checked against it) is wrong; the message names it."""


# A raw cell longer than this is rejected (dead letter / request error): no real id or
# number is this long, and one huge cell must not abort a job or bloat a vocabulary.
MAX_CELL_CHARS = 10_000
FLOAT32_MAX = 3.4028234663852886e38
# A field name is a tf.Example key, a file name under vocab/ and tables/, and an
# argument name of the serving signatures: letters, digits and underscores only.
FIELD_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_]{0,127}"


def _short(value: Any, limit: int = 60) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."


def _number(feature: "Feature", raw: Any, what: str) -> float:
  """A finite float32 number from a raw cell (a string or a JSON number)."""
  if isinstance(raw, (dict, list, tuple)) or isinstance(raw, bool):
    raise SpecError(f"field {feature.name!r}: {what} {_short(raw)} is not a number")
  try:
    value = float(raw)
  except OverflowError:  # a JSON integer beyond any float
    raise SpecError(f"field {feature.name!r}: {what} {_short(raw)} is outside the "
                    "float32 range the model computes in")
  except (TypeError, ValueError):
    raise SpecError(f"field {feature.name!r}: {what} {_short(raw)} is not a number")
  if not math.isfinite(value):
    raise SpecError(f"field {feature.name!r}: {what} {_short(raw)} is not a finite "
                    "number")
  if abs(value) > FLOAT32_MAX:
    raise SpecError(f"field {feature.name!r}: {what} {_short(raw)} is outside the "
                    "float32 range the model computes in")
  return value


def _category(feature: "Feature", raw: Any) -> str:
  """One categorical value as a string; JSON numbers used as ids: 3.0 and 3 are the same
  category. Objects, lists and booleans are not categories."""
  if isinstance(raw, bool) or isinstance(raw, (dict, list, tuple)) or raw is None:
    raise SpecError(f"field {feature.name!r}: {_short(raw)} is not a categorical value "
                    "(a string or a number)")
  if isinstance(raw, float):
    if not math.isfinite(raw):
      raise SpecError(f"field {feature.name!r}: {raw!r} is not a categorical value")
    if raw.is_integer():
      raw = int(raw)
  value = str(raw)
  if len(value) > MAX_CELL_CHARS:
    raise SpecError(f"field {feature.name!r}: a value of {len(value)} characters is "
                    f"over the limit of {MAX_CELL_CHARS}")
  try:
    value.encode("utf-8")
  except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): no UTF-8 form
    raise SpecError(f"field {feature.name!r}: {_short(value)} is not valid Unicode")
  return value


@dataclasses.dataclass(frozen=True)
class Derived:
  """How a derived field is computed from the fields it reads.

  count_bucket: needs the whole log. The Beam job counts each `source` value in the
    training split and writes `tables/<field>.txt` (value \\t bucket); the model looks the
    bucket up in that table (a SavedModel asset), unseen values get the bucket of 0.
  mode: a per-key profile (e.g. a user's usual device). The Beam job finds, for each
    `source` value in the training split, the most frequent value of the field `of`
    among its rows (ties: the smallest value, so any worker split gives the same
    table) and writes `tables/<field>.txt` (value \\t mode); the model looks the mode up
    there, a value unseen in training gets "" (the vocabulary's OOV). `of` is a raw
    categorical field or a row-wise derived (bucket, cross) field of raw fields.
  share: a per-key histogram entry (e.g. the share of a user's rows on "ios"): the
    fraction of the `source` value's training rows whose `of` equals `value`,
    bucketized at `boundaries` (strictly increasing, in (0, 1)); `tables/<field>.txt`
    holds value \t bucket. A value unseen in training gets "" (no share: the
    vocabulary's OOV, distinct from the bucket of a share of 0). `of` as for a mode;
    the Beam job counts each (source, of) pair once for all its modes and shares.
  cross: `sources` values joined by `separator` (e.g. scenario x user group).
  bucket: a numeric `source` bucketized at `boundaries` (e.g. an age bucket).
  Bucket values are the bucket index as a string: "0" .. str(len(boundaries)).
  """
  kind: str
  source: str = ""
  sources: Tuple[str, ...] = ()
  boundaries: Tuple[float, ...] = ()
  separator: str = "_x_"
  of: str = ""
  value: str = ""

  @property
  def reads(self) -> Tuple[str, ...]:
    return tuple(self.sources) if self.kind == CROSS else (self.source,)

  @property
  def has_table(self) -> bool:
    """Computed by the Beam job over the training split, looked up by the model."""
    return self.kind in TABLE_KINDS

  @property
  def table_default(self) -> str:
    """The table's value for a source value unseen in training ("" for a mode or a
    share: no profile, the vocabulary's OOV)."""
    return self.bucket_of(0) if self.kind == COUNT_BUCKET else ""

  def bucket_of(self, x: float) -> str:
    """The bucket of a count, numeric value or share, as TensorFlow's Bucketize
    computes it (in float32: the model sees float32 values)."""
    return self.bucketizer()(x)

  def bucketizer(self):
    """`bucket_of` as a function, the edges converted once (for many values)."""
    import bisect
    import numpy as np
    edges = [float(np.float32(b)) for b in self.boundaries]
    f32 = np.float32
    return lambda x: str(bisect.bisect_right(edges, float(f32(x))))


@dataclasses.dataclass(frozen=True)
class Feature:
  """One field of the raw log and of the tf.Example.

  Attributes:
    name: column name in the raw log and key in the tf.Example.
    kind: `categorical`, `multi_categorical` (values joined by `separator`) or `numeric`.
    role: `feature`, `label`, `passthrough` or `oracle` (see module constants).
    embedding_dim: width of the field's embedding (model inputs only).
    vocab_min_count: values seen fewer times in the training split go to the OOV bucket.
    hash_buckets: if > 0, hash values into this many buckets instead of a vocabulary.
    boundaries: numeric only: bucketize at these boundaries and embed the bucket;
      empty means standardize with the training mean/std and project.
    distribution_level: this field names a distribution (0 = coarsest, e.g. scenario).
    user_id: the field that groups examples per user for GAUC.
    implicit_view: HMDN's implicit view reads this field (a user/context feature, e.g.
      a Beam-computed profile such as a user's most frequent device). When no field is
      marked the view reads every embedded field; `--implicit_fields` overrides both.
    default: value used when the raw cell is empty; None means the field is required.
    separator: joins the values of a multi_categorical cell.
    derived: computed from other fields (see `Derived`), not read from the raw log and
      not fed at serving: the model recomputes it from the raw inputs it reads.
  """
  name: str
  kind: str
  role: str = FEATURE
  embedding_dim: int = 8
  vocab_min_count: int = 1
  hash_buckets: int = 0
  boundaries: Tuple[float, ...] = ()
  distribution_level: Optional[int] = None
  user_id: bool = False
  implicit_view: bool = False
  default: Optional[Union[str, float]] = None
  separator: str = "|"
  derived: Optional[Derived] = None

  @property
  def is_derived(self) -> bool:
    return self.derived is not None

  @property
  def is_model_input(self) -> bool:
    """Fed to the model (and to the serving signatures): derived fields are not."""
    return self.role == FEATURE and not self.is_derived

  @property
  def is_embedded(self) -> bool:
    return self.role == FEATURE

  @property
  def uses_vocabulary(self) -> bool:
    return self.kind != NUMERIC and self.hash_buckets == 0

  @property
  def required(self) -> bool:
    return self.default is None


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """A validated, ordered set of features; the column order is the raw CSV's."""
  name: str
  features: Tuple[Feature, ...]
  source: str = "<memory>"

  def __post_init__(self):
    _validate(self)

  # --- Look-ups -------------------------------------------------------------------
  def __getitem__(self, name: str) -> Feature:
    for f in self.features:
      if f.name == name:
        return f
    raise KeyError(f"{self.source}: no feature named {name!r}; the spec has "
                   f"{[f.name for f in self.features]}")

  @property
  def names(self) -> List[str]:
    return [f.name for f in self.features]

  @property
  def label(self) -> Feature:
    return next(f for f in self.features if f.role == LABEL)

  @property
  def oracle(self) -> Optional[Feature]:
    return next((f for f in self.features if f.role == ORACLE), None)

  @property
  def user_id(self) -> Optional[Feature]:
    return next((f for f in self.features if f.user_id), None)

  @property
  def model_inputs(self) -> List[Feature]:
    """The fields fed to the model: what serving takes. Excludes derived fields."""
    return [f for f in self.features if f.is_model_input]

  @property
  def embedded_fields(self) -> List[Feature]:
    """Every field the model embeds: its inputs and the derived fields it computes."""
    return [f for f in self.features if f.is_embedded]

  @property
  def implicit_view_fields(self) -> List[Feature]:
    """The fields HMDN's implicit view reads by default: those marked, else every
    embedded field."""
    return [f for f in self.embedded_fields if f.implicit_view] or self.embedded_fields

  @property
  def derived_fields(self) -> List[Feature]:
    return [f for f in self.features if f.is_derived]

  @property
  def raw_fields(self) -> List[Feature]:
    """The columns of the raw log (everything but derived fields)."""
    return [f for f in self.features if not f.is_derived]

  @property
  def distribution_fields(self) -> List[Feature]:
    """Distribution fields ordered coarse to fine."""
    fields = [f for f in self.features if f.distribution_level is not None]
    return sorted(fields, key=lambda f: f.distribution_level)

  @property
  def vocabulary_fields(self) -> List[Feature]:
    return [f for f in self.embedded_fields if f.uses_vocabulary]

  # --- Derived TensorFlow specs ---------------------------------------------------
  def parsing_spec(self, for_serving: bool = False) -> Dict[str, Any]:
    """The `tf.io.parse_example` spec; for serving, model inputs only.

    The TFRecords also carry derived values (for per-distribution evaluation), but
    serving never needs them: the model recomputes them from the raw inputs.
    """
    import tensorflow as tf  # imported lazily so the Beam workers need not load TF.
    spec = {}
    for f in self.features:
      if for_serving and not f.is_model_input:
        continue
      if f.kind == MULTI_CATEGORICAL:
        spec[f.name] = tf.io.RaggedFeature(tf.string)
      elif f.kind == CATEGORICAL:
        default = None if f.required else str(f.default)
        spec[f.name] = tf.io.FixedLenFeature([], tf.string, default_value=default)
      else:
        default = None if f.required else float(f.default)
        spec[f.name] = tf.io.FixedLenFeature([], tf.float32, default_value=default)
    return spec

  def tensor_specs(self, batch_size: Optional[int] = None) -> Dict[str, Any]:
    """`tf.TensorSpec` of each model input: the raw-tensor serving signature.

    Multi-valued fields are dense `[batch, max_values]` strings padded with "".
    """
    import tensorflow as tf
    specs = {}
    for f in self.model_inputs:
      if f.kind == MULTI_CATEGORICAL:
        specs[f.name] = tf.TensorSpec([batch_size, None], tf.string, name=f.name)
      elif f.kind == CATEGORICAL:
        specs[f.name] = tf.TensorSpec([batch_size], tf.string, name=f.name)
      else:
        specs[f.name] = tf.TensorSpec([batch_size], tf.float32, name=f.name)
    return specs

  # --- Raw values -----------------------------------------------------------------
  def parse_value(self, feature: Feature, raw: Any) -> Union[str, float, List[str]]:
    """Types one raw cell; raises SpecError naming the field and the value.

    Nothing is coerced: a value that does not fit the field (a JSON object or list for a
    single value, a boolean, a number outside float32, a cell longer than
    MAX_CELL_CHARS) is an error, so the Beam job dead-letters the row and serving
    rejects the request instead of training or predicting on a changed value.
    """
    if isinstance(raw, str) and len(raw) > MAX_CELL_CHARS:
      raise SpecError(f"field {feature.name!r}: a cell of {len(raw)} characters is over "
                      f"the limit of {MAX_CELL_CHARS}")
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
      if feature.required:
        raise SpecError(f"field {feature.name!r}: empty value, and the field has no "
                        "default")
      raw = feature.default
    if isinstance(raw, bool):
      raise SpecError(f"field {feature.name!r}: boolean {raw!r} is not a "
                      f"{'number' if feature.kind == NUMERIC else 'category'}; write "
                      "it as 0/1 or a string")
    if feature.role == LABEL:
      if isinstance(raw, (dict, list, tuple)):
        raise SpecError(f"field {feature.name!r}: label {_short(raw)} is not a number")
      try:
        value = float(raw)
      except (TypeError, ValueError, OverflowError):
        raise SpecError(f"field {feature.name!r}: label {_short(raw)} is not a number")
      if value not in (0.0, 1.0):
        raise SpecError(f"field {feature.name!r}: label {raw!r} is not 0 or 1")
      return value
    if feature.kind == NUMERIC:
      return _number(feature, raw, "value")
    if feature.kind == MULTI_CATEGORICAL:
      if isinstance(raw, (list, tuple)):
        values = [_category(feature, v) for v in raw]
      elif isinstance(raw, dict):
        raise SpecError(f"field {feature.name!r}: a JSON object is not a list of "
                        f"values: {_short(raw)}")
      else:
        values = str(raw).split(feature.separator) if isinstance(raw, str) else [
            _category(feature, raw)]
      return [v for v in values if v != ""]
    return _category(feature, raw)

  def to_dict(self) -> Dict[str, Any]:
    out = []
    for f in self.features:
      d = dataclasses.asdict(f)
      defaults = {x.name: x.default for x in dataclasses.fields(Feature)
                  if x.default is not dataclasses.MISSING}
      d = {k: v for k, v in d.items() if k in ("name", "kind") or v != defaults.get(k)}
      if "boundaries" in d:
        d["boundaries"] = list(d["boundaries"])
      if d.get("derived"):
        dd = {k: v for k, v in d["derived"].items()
              if k == "kind" or v != _DERIVED_DEFAULTS.get(k)}
        for key in ("sources", "boundaries"):
          if key in dd:
            dd[key] = list(dd[key])
        d["derived"] = dd
      out.append(d)
    return {"name": self.name, "features": out}

  def save(self, path: str) -> None:
    write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def read_text(path: str) -> str:
  """Reads a whole UTF-8 file through `tf.io.gfile` (local, gs://, hdfs://); no Beam."""
  import tensorflow as tf
  with tf.io.gfile.GFile(path, "rb") as f:
    return f.read().decode("utf-8")


def write_text(path: str, text: str) -> None:
  """Writes a whole file through `tf.io.gfile`, creating its directory."""
  import os.path
  import tensorflow as tf
  parent = os.path.dirname(path)
  if parent:
    tf.io.gfile.makedirs(parent)
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(text.encode("utf-8"))


_FIELD_KEYS = {f.name for f in dataclasses.fields(Feature)}
_DERIVED_KEYS = {f.name for f in dataclasses.fields(Derived)}
_DERIVED_DEFAULTS = {x.name: x.default for x in dataclasses.fields(Derived)
                     if x.default is not dataclasses.MISSING}


def _validate_derived(spec: "FeatureSpec", f: Feature, where: str) -> None:
  d = f.derived
  if d.kind not in DERIVED_KINDS:
    raise SpecError(f"{where}: unknown derived kind {d.kind!r}; expected one of "
                    f"{DERIVED_KINDS}")
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
    if not d.boundaries:
      raise SpecError(f"{where}: a {d.kind} needs `boundaries`")
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool)
               for b in d.boundaries):
      raise SpecError(f"{where}: boundaries must be numbers, got {list(d.boundaries)}")
    if list(d.boundaries) != sorted(set(d.boundaries)):
      raise SpecError(f"{where}: boundaries must be strictly increasing, got "
                      f"{list(d.boundaries)}")
    if d.kind == SHARE and not all(0 < b < 1 for b in d.boundaries):
      raise SpecError(f"{where}: a share's boundaries must lie in (0, 1) (a share is a "
                      f"fraction of rows), got {list(d.boundaries)}")
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


def _validate_profile_of(d: Derived, earlier: Mapping[str, Feature],
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


def _validate_share_value(d: Derived, of: Feature, where: str) -> None:
  """A share's `value` is one value of `of`, as a string (YAML: quote a number); a
  bucket's values are known, so a value outside them is refused."""
  if not isinstance(d.value, str):
    raise SpecError(f"{where}: a share's `value` must be a string (quote it in YAML), "
                    f"got {d.value!r}")
  if d.value == "":
    raise SpecError(f"{where}: a share needs `value`: the value of {d.of!r} whose "
                    "share of the source value's rows it is")
  if of.is_derived and of.derived.kind == BUCKET:
    buckets = [str(i) for i in range(len(of.derived.boundaries) + 1)]
    if d.value not in buckets:
      raise SpecError(f"{where}: share of {d.of!r} value {d.value!r}, which is not one "
                      f"of its buckets {buckets}")


def _validate(spec: FeatureSpec) -> None:
  src = spec.source
  if not spec.features:
    raise SpecError(f"{src}: the spec declares no features")
  seen = set()
  for f in spec.features:
    where = f"{src}: field {f.name!r}"
    if not f.name or not isinstance(f.name, str):
      raise SpecError(f"{src}: a field has no name ({f!r})")
    if not re.fullmatch(FIELD_NAME_PATTERN, f.name):
      raise SpecError(f"{where}: a field name must be letters, digits and underscores "
                      "(at most 128, not starting with an underscore): it is a "
                      "tf.Example key, a vocabulary file name and a serving argument "
                      "name")
    if f.name in seen:
      raise SpecError(f"{where}: declared twice")
    seen.add(f.name)
    if f.kind not in KINDS:
      raise SpecError(f"{where}: unknown kind {f.kind!r}; expected one of {KINDS}")
    if f.role not in ROLES:
      raise SpecError(f"{where}: unknown role {f.role!r}; expected one of {ROLES}")
    if f.embedding_dim < 1:
      raise SpecError(f"{where}: embedding_dim must be >= 1, got {f.embedding_dim}")
    if f.vocab_min_count < 1:
      raise SpecError(f"{where}: vocab_min_count must be >= 1, got {f.vocab_min_count}")
    if f.hash_buckets < 0:
      raise SpecError(f"{where}: hash_buckets must be >= 0, got {f.hash_buckets}")
    if f.boundaries and f.kind != NUMERIC:
      raise SpecError(f"{where}: boundaries are for numeric fields, kind is {f.kind!r}")
    if list(f.boundaries) != sorted(set(f.boundaries)):
      raise SpecError(f"{where}: boundaries must be strictly increasing, got "
                      f"{list(f.boundaries)}")
    if f.hash_buckets and f.kind == NUMERIC:
      raise SpecError(f"{where}: hash_buckets is for categorical fields")
    if f.distribution_level is not None:
      if f.kind != CATEGORICAL:
        raise SpecError(f"{where}: a distribution field must be categorical, kind is "
                        f"{f.kind!r}")
      if f.role != FEATURE:
        raise SpecError(f"{where}: a distribution field must have role 'feature', "
                        f"got {f.role!r}")
      if not isinstance(f.distribution_level, int) or f.distribution_level < 0:
        raise SpecError(f"{where}: distribution_level must be an integer >= 0, got "
                        f"{f.distribution_level!r}")
    if f.derived is not None:
      _validate_derived(spec, f, where)
    if not isinstance(f.implicit_view, bool):
      raise SpecError(f"{where}: implicit_view must be true or false, got "
                      f"{f.implicit_view!r}")
    if f.implicit_view and f.role != FEATURE:
      raise SpecError(f"{where}: implicit_view marks a model feature, but the role is "
                      f"{f.role!r}")
    if f.user_id and f.kind != CATEGORICAL:
      raise SpecError(f"{where}: the user_id field must be categorical, kind is "
                      f"{f.kind!r}")
    if f.role in (LABEL, ORACLE) and f.kind != NUMERIC:
      raise SpecError(f"{where}: a {f.role} field must be numeric, kind is {f.kind!r}")
    if f.default is not None and f.kind == NUMERIC:
      try:
        float(f.default)
      except (TypeError, ValueError):
        raise SpecError(f"{where}: default {f.default!r} is not a number")
  labels = [f.name for f in spec.features if f.role == LABEL]
  if len(labels) != 1:
    raise SpecError(f"{src}: the spec needs exactly one field with role 'label', "
                    f"found {labels}")
  for role_name, found in (("oracle", [f for f in spec.features if f.role == ORACLE]),
                           ("user_id", [f for f in spec.features if f.user_id])):
    if len(found) > 1:
      raise SpecError(f"{src}: at most one {role_name} field, found "
                      f"{[f.name for f in found]}")
  levels = [f.distribution_level for f in spec.features
            if f.distribution_level is not None]
  if len(levels) != len(set(levels)):
    raise SpecError(f"{src}: two distribution fields share a level: {sorted(levels)}")
  coarsest = spec.distribution_fields[0] if levels else None
  if coarsest is not None and coarsest.is_derived:
    raise SpecError(f"{src}: field {coarsest.name!r}: the coarsest distribution field "
                    "(the backbones' domain id, read from the fed inputs) must not be "
                    "derived; give it a higher distribution_level")
  if not any(f.is_model_input for f in spec.features):
    raise SpecError(f"{src}: the spec has no model input (role 'feature')")


def spec_from_dict(data: Mapping[str, Any], source: str = "<memory>") -> FeatureSpec:
  """Builds a spec from parsed YAML/JSON, with errors naming the source."""
  if not isinstance(data, Mapping) or "features" not in data:
    raise SpecError(f"{source}: expected a mapping with a 'features' list")
  raw_features = data["features"]
  if not isinstance(raw_features, Sequence) or isinstance(raw_features, str):
    raise SpecError(f"{source}: 'features' must be a list")
  features = []
  for i, item in enumerate(raw_features):
    if not isinstance(item, Mapping) or "name" not in item or "kind" not in item:
      raise SpecError(f"{source}: features[{i}] needs at least 'name' and 'kind', got "
                      f"{item!r}")
    unknown = set(item) - _FIELD_KEYS
    if unknown:
      raise SpecError(f"{source}: field {item['name']!r}: unknown key(s) "
                      f"{sorted(unknown)}; allowed: {sorted(_FIELD_KEYS)}")
    kwargs = dict(item)
    if "boundaries" in kwargs:
      try:
        kwargs["boundaries"] = tuple(float(b) for b in kwargs["boundaries"])
      except (TypeError, ValueError):
        raise SpecError(f"{source}: field {item['name']!r}: boundaries must be numbers, "
                        f"got {item['boundaries']!r}")
    for int_key in ("embedding_dim", "vocab_min_count", "hash_buckets"):
      if int_key in kwargs and not isinstance(kwargs[int_key], int):
        raise SpecError(f"{source}: field {item['name']!r}: {int_key} must be an "
                        f"integer, got {kwargs[int_key]!r}")
    if kwargs.get("derived") is not None:
      kwargs["derived"] = _derived_from_dict(kwargs["derived"],
                                             f"{source}: field {item['name']!r}")
    features.append(Feature(**kwargs))
  return FeatureSpec(name=str(data.get("name", "unnamed")), features=tuple(features),
                     source=source)


def _derived_from_dict(raw: Any, where: str) -> Derived:
  if isinstance(raw, Derived):
    return raw
  if not isinstance(raw, Mapping) or "kind" not in raw:
    raise SpecError(f"{where}: derived must be a mapping with a 'kind', got {raw!r}")
  unknown = set(raw) - _DERIVED_KEYS
  if unknown:
    raise SpecError(f"{where}: derived: unknown key(s) {sorted(unknown)}; allowed: "
                    f"{sorted(_DERIVED_KEYS)}")
  kwargs = dict(raw)
  if "boundaries" in kwargs and (
      not isinstance(kwargs["boundaries"], Sequence) or
      isinstance(kwargs["boundaries"], str) or
      any(isinstance(b, bool) for b in kwargs["boundaries"])):
    raise SpecError(f"{where}: derived: boundaries must be a list of numbers, got "
                    f"{kwargs['boundaries']!r}")
  try:
    if "boundaries" in kwargs:
      kwargs["boundaries"] = tuple(float(b) for b in kwargs["boundaries"])
    if "sources" in kwargs:
      if isinstance(kwargs["sources"], str):
        raise TypeError
      kwargs["sources"] = tuple(str(s) for s in kwargs["sources"])
  except (TypeError, ValueError):
    raise SpecError(f"{where}: derived: boundaries must be numbers and sources a list "
                    f"of field names, got {raw!r}")
  return Derived(**kwargs)


def load_spec(path: str) -> FeatureSpec:
  """Loads and validates a YAML spec; a bare name means a spec shipped in features/specs."""
  if os.path.sep not in path and not path.endswith((".yaml", ".yml")) and \
      os.path.exists(os.path.join(SPECS_DIR, path + ".yaml")):
    path = os.path.join(SPECS_DIR, path + ".yaml")
  import tensorflow as tf
  try:
    text = read_text(path)
  except (IOError, OSError, tf.errors.OpError, UnicodeDecodeError) as e:
    raise SpecError(f"{path}: cannot read the spec ({getattr(e, 'message', e)})")
  try:
    data = yaml.safe_load(text)
  except yaml.YAMLError as e:
    raise SpecError(f"{path}: not valid YAML ({e})")
  try:
    return spec_from_dict(data, source=path)
  except TypeError as e:  # e.g. a wrong value type the dataclass could not take
    raise SpecError(f"{path}: {e}")
