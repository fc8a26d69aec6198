"""The feature spec: the single declaration of every field of a dataset.

The Beam job, the tf.Example parsing spec, the Keras inputs and the serving signature are
all derived from a `FeatureSpec`; nothing else in the project declares a feature. This
module holds the declaration and its views; the rules it must obey are in `validation`,
the typing of a raw cell in `cells`, and reading it from YAML in `loading`.
"""
import bisect
import dataclasses
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import yaml

from hmdn.features.fileio import write_text_atomic
from hmdn.features.spec import cells
from hmdn.features.spec.kinds import (CATEGORICAL, COUNT_BUCKET, CROSS, DEFAULT_MAX_LENGTH,
                                      FEATURE, HISTORY, LABEL, MULTI_CATEGORICAL, NUMERIC,
                                      ORACLE, SEQUENCE, TABLE_KINDS)
from hmdn.features.spec.validation import validate


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
  history: a `sequence` field: for each row, the `of` values of the same `source`
    value's rows strictly earlier in the numeric `order_by` (never the row itself, a
    later row or a row of the same moment), most recent last, the last `max_length`
    kept (the Feature's key: a raw sequence is truncated the same way, so the length
    is declared in one place, on the field). `of` is the raw categorical field whose
    vocabulary the history shares (the field's `vocab_from` names it too). History
    fields with the same source, order_by and max_length are computed together, in
    step (an item and its category). The model cannot recompute a history from one
    row, so unlike every other derived field a history IS a model input, fed at
    serving.
  """
  kind: str
  source: str = ""
  sources: Tuple[str, ...] = ()
  boundaries: Tuple[float, ...] = ()
  separator: str = "_x_"
  of: str = ""
  value: str = ""
  order_by: str = ""

  @property
  def reads(self) -> Tuple[str, ...]:
    if self.kind == HISTORY:
      return (self.source, self.of, self.order_by)
    return tuple(self.sources) if self.kind == CROSS else (self.source,)

  @property
  def is_row_wise(self) -> bool:
    """Computed from one row's values (a cross, a bucket): the model recomputes it."""
    return self.kind not in TABLE_KINDS and self.kind != HISTORY

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
    edges = [float(np.float32(b)) for b in self.boundaries]
    f32 = np.float32
    return lambda x: str(bisect.bisect_right(edges, float(f32(x))))


@dataclasses.dataclass(frozen=True)
class Feature:
  """One field of the raw log and of the tf.Example.

  Attributes:
    name: column name in the raw log and key in the tf.Example.
    kind: `categorical`, `multi_categorical` (values joined by `separator`), `numeric`
      or `sequence` (an ordered list of categorical values, most recent last).
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
      not fed at serving: the model recomputes it from the raw inputs it reads; except
      a history, which is fed (see `Derived`).
    vocab_from: sequence only (required): the categorical field whose vocabulary and
      embedding the sequence shares (its history `of`, e.g. item_id), so the target
      and its history live in one space. A sequence has no vocabulary, embedding_dim,
      hash_buckets or default of its own; an empty cell is an empty sequence.
    max_length: sequence only: at most this many values, the most recent (the last)
      kept; a longer raw list is truncated, and the Beam job counts it.
    after: labels only: the label this task is observed after (a purchase after a
      click): it can be 1 only where that label is 1 (ESMM's entire-space tasks).
    task: oracles only: the label this field is the true probability of (None: the
      first label). For an `after` task it is the true conditional probability
      p(task | prerequisite = 1) (a CVR); the entire-space one (CTCVR) is its product
      with the prerequisite's oracle.
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
  after: Optional[str] = None
  vocab_from: Optional[str] = None
  max_length: int = DEFAULT_MAX_LENGTH
  task: Optional[str] = None

  @property
  def is_derived(self) -> bool:
    return self.derived is not None

  @property
  def is_history(self) -> bool:
    return self.derived is not None and self.derived.kind == HISTORY

  @property
  def is_sequence(self) -> bool:
    return self.kind == SEQUENCE

  @property
  def is_model_input(self) -> bool:
    """Fed to the model (and to the serving signatures): derived fields are not, but a
    history is (the model cannot recompute it from one row)."""
    return self.role == FEATURE and (not self.is_derived or self.is_history)

  @property
  def is_embedded(self) -> bool:
    return self.role == FEATURE

  @property
  def uses_vocabulary(self) -> bool:
    """Has a vocabulary of its own (a sequence uses its vocab_from field's)."""
    return self.kind not in (NUMERIC, SEQUENCE) and self.hash_buckets == 0

  @property
  def vocabulary_field(self) -> str:
    """The field whose vocabulary (and embedding table) this field's values index."""
    return self.vocab_from if self.kind == SEQUENCE else self.name

  @property
  def required(self) -> bool:
    """An empty cell is an error (no default); a sequence is never required: an empty
    cell is an empty sequence."""
    return self.default is None and self.kind != SEQUENCE


@dataclasses.dataclass(frozen=True)
class HistoryGroup:
  """History fields computed together, in step: one source, order_by and max_length;
  `outputs[i]` is the history of `of[i]` (the Beam job's `transforms.history.History`)."""
  outputs: Tuple[str, ...]
  key: str
  of: Tuple[str, ...]
  order_by: str
  max_length: int


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """A validated, ordered set of features (the order of the model's inputs; a CSV's
  columns are found by name)."""
  name: str
  features: Tuple[Feature, ...]
  source: str = "<memory>"

  def __post_init__(self):
    validate(self)

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
  def labels(self) -> List[Feature]:
    """Every task's label, in spec order (one per task)."""
    return [f for f in self.features if f.role == LABEL]

  @property
  def label(self) -> Feature:
    """The first task's label (the only one of a one-task spec)."""
    return self.labels[0]

  @property
  def oracles(self) -> Dict[str, Feature]:
    """Each task's oracle (a synthetic row's true probability), by the task's label
    name, in spec order; a task without one is absent."""
    return {oracle_task(self, f): f for f in self.features if f.role == ORACLE}

  @property
  def oracle(self) -> Optional[Feature]:
    """The first task's oracle (the true click probability), if the spec has one."""
    return self.oracles.get(self.label.name)

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
  def sequence_fields(self) -> List[Feature]:
    """Every sequence field, raw or history."""
    return [f for f in self.features if f.kind == SEQUENCE]

  @property
  def history_groups(self) -> List[HistoryGroup]:
    """The history fields grouped by (source, order_by, max_length), in spec order:
    each group is one keyed, time-ordered pass of the Beam job."""
    groups: Dict[Tuple[str, str, int], List[Feature]] = {}
    for f in self.features:
      if f.is_history:
        key = (f.derived.source, f.derived.order_by, f.max_length)
        groups.setdefault(key, []).append(f)
    return [HistoryGroup(outputs=tuple(f.name for f in fs), key=key,
                         of=tuple(f.derived.of for f in fs), order_by=order_by,
                         max_length=length)
            for (key, order_by, length), fs in groups.items()]

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
    """The fields with a vocabulary of their own (a sequence shares its vocab_from's)."""
    return [f for f in self.embedded_fields if f.uses_vocabulary]

  # --- Derived TensorFlow specs ---------------------------------------------------
  def parsing_spec(self, for_serving: bool = False) -> Dict[str, Any]:
    """The `tf.io.parse_example` spec; for serving, model inputs only.

    The TFRecords also carry derived values (for per-distribution evaluation), but
    serving never needs them: the model recomputes them from the raw inputs (a history
    excepted: it is a model input). A sequence is a `tf.io.RaggedFeature(tf.string)`
    (a VarLen bytes list, possibly empty); the input pipeline densifies it (see
    `tensor_specs` for the contract).
    """
    import tensorflow as tf  # here, not at the top: Beam workers load the spec, not TF
    spec = {}
    for f in self.features:
      if for_serving and not f.is_model_input:
        continue
      if f.kind in (MULTI_CATEGORICAL, SEQUENCE):
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

    A sequence is the same shape, `[batch, None]` tf.string, with this contract: the
    model receives a DENSE `[batch, L]` tensor, L <= max_length, each row's values in
    order (most recent LAST) followed by "" padding at the END, so a row's most recent
    value is its last non-"" one. "" is never a value (an empty cell is missing), so
    the mask is `values != ""`; an all-"" row is an empty history. The serving
    signatures truncate a longer row to its last max_length values before the model.
    """
    import tensorflow as tf  # here, not at the top: Beam workers load the spec, not TF
    specs = {}
    for f in self.model_inputs:
      if f.kind in (MULTI_CATEGORICAL, SEQUENCE):
        specs[f.name] = tf.TensorSpec([batch_size, None], tf.string, name=f.name)
      elif f.kind == CATEGORICAL:
        specs[f.name] = tf.TensorSpec([batch_size], tf.string, name=f.name)
      else:
        specs[f.name] = tf.TensorSpec([batch_size], tf.float32, name=f.name)
    return specs

  # --- Raw values -----------------------------------------------------------------
  def parse_value(self, feature: Feature, raw: Any) -> Union[str, float, List[str]]:
    """Types one raw cell (see `cells.parse_value`); raises SpecError naming the field
    and the value."""
    return cells.parse_value(feature, raw)

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

  def difference(self, other: "FeatureSpec",
                 labels: Tuple[str, str] = ("this spec", "the other")) -> str:
    """The first way `other` differs from this spec, for an error that says what: a
    field only in one, a field's first differing key, the fields' order, the name
    ("" if none); `labels` name the two specs in the sentence."""
    mine = {f["name"]: f for f in self.to_dict()["features"]}
    theirs = {f["name"]: f for f in other.to_dict()["features"]}
    for name in list(mine) + [n for n in theirs if n not in mine]:
      if name not in theirs or name not in mine:
        return f"field {name!r} is only in {labels[0] if name in mine else labels[1]}"
      for key in sorted(set(mine[name]) | set(theirs[name])):
        if mine[name].get(key) != theirs[name].get(key):
          return (f"field {name!r}: {key} {mine[name].get(key)!r} in {labels[0]}, "
                  f"{theirs[name].get(key)!r} in {labels[1]}")
    if list(mine) != list(theirs):
      return f"the fields' order: {list(mine)} in {labels[0]}, {list(theirs)} in {labels[1]}"
    if self.name != other.name:
      return f"the name: {self.name!r} in {labels[0]}, {other.name!r} in {labels[1]}"
    return ""

  def save(self, path: str) -> None:
    """The spec as YAML, written atomically (a run directory or an export holds it)."""
    write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def oracle_task(spec: FeatureSpec, f: Feature) -> str:
  """The label an oracle field is the true probability of: its `task`, else the
  first label."""
  return f.task if f.task is not None else spec.label.name


_DERIVED_DEFAULTS = {x.name: x.default for x in dataclasses.fields(Derived)
                     if x.default is not dataclasses.MISSING}
