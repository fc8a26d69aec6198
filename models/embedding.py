"""Field embeddings derived from the feature spec: raw values in, one vector per field out.

Lookups (vocabularies as files, hashing, bucketization, standardization) live inside the
model, so the exported SavedModel takes raw values and training and serving can never
disagree on an id. Derived fields (spec `derived`) are recomputed here from the raw
inputs they read: count buckets, modes and shares by a lookup in the Beam job's
`tables/<field>.txt` (a file-initialized hash table, so the SavedModel carries it as an
asset), crosses by string join, numeric buckets by Bucketize; any derived value in the
inputs is ignored.

A sequence (a history) has no table of its own: its values are looked up in its
`vocab_from` field's vocabulary and embedded with that field's table, so a movie in a
history and the movie scored are one vector; the history is pooled into one interest
vector (`models/attention.py`) returned under the sequence's name.
"""
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import tensorflow as tf

from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import escape_tensor, holds_escapes, unescape_tensor
from hmdn.models.attention import NORMALIZATIONS, MaskedMeanPooling, TargetAttention

# How a sequence becomes one vector: DIN target attention with the example's own
# vocab_from value as the query, the mean of its values, or not at all (the model
# ignores the sequence fields: the no-history baseline on the same data).
SEQUENCE_POOLINGS = ("din", "mean", "none")


def _vocab_size(path: str) -> int:
  with tf.io.gfile.GFile(path) as f:
    return sum(1 for line in f if line.rstrip("\n"))


def has_no_spread(mean: float, std: float) -> bool:
  """Whether training saw (nearly) one value of a numeric field: a std at float
  round-off of the mean, as a constant column's moments give. Such a field reads 0
  for any value: training never showed what another value means, and a z-score
  over a tiny std would make any other value at serving an extreme input (a column
  blank through the whole training window, then filled)."""
  return not std > 1e-6 * max(1.0, abs(mean))


BYTES_PER_WEIGHT = 4  # float32 variables (mixed precision keeps them float32)
# Adam keeps two slots a weight: a table takes three times its size while it trains.
TRAINING_COPIES = 3


def physical_memory_bytes() -> int:
  """The machine's memory (a table larger than it can never be allocated)."""
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_memory(spec: spec_lib.FeatureSpec, num_ids: Mapping[str, int],
                      memory: Optional[int] = None) -> None:
  """Refuses a spec whose embedding tables (and numeric projections) cannot fit in
  memory with their optimizer slots, naming the largest field, before TensorFlow
  allocates them (it would abort the process or fail deep inside the first step)."""
  memory = memory or physical_memory_bytes()
  sizes = {f.name: num_ids.get(f.name, 1) * f.embedding_dim * BYTES_PER_WEIGHT
           for f in spec.embedded_fields if not f.is_sequence}  # shares a table
  total = sum(sizes.values()) * TRAINING_COPIES
  if not sizes or total <= memory:
    return
  name = max(sizes, key=sizes.get)
  raise ValueError(
      f"field {name!r}: embedding_dim {spec[name].embedding_dim:,} x "
      f"{num_ids.get(name, 1):,} rows is "
      f"{sizes[name] / 2**30:,.1f} GiB of weights; with the other tables and Adam's "
      f"slots training needs {total / 2**30:,.1f} GiB, more than this machine's "
      f"{memory / 2**30:,.1f} GiB of memory: lower embedding_dim (or hash_buckets) in "
      "the spec")


@tf.keras.utils.register_keras_serializable(package="hmdn")
class FeatureEmbeddings(tf.keras.layers.Layer):
  """Embeds every model input of a `FeatureSpec` (HMDN, "The model", step 1).

  categorical: vocabulary file (index 0 = OOV) or hashing -> Embedding.
  multi_categorical: dense `[batch, max_values]` strings padded with "" -> masked mean.
  numeric: bucketized at the spec's boundaries -> Embedding, or standardized with the
  training moments -> a learned per-field projection.
  sequence: dense `[batch, L]` strings padded with "" at the end -> its vocab_from
  field's ids and table -> one interest vector (`sequence_pooling`); "" is masked out
  (never an id), an empty history is zeros, so neither the padding length nor the
  other rows change a row's vector.

  Args:
    spec: the feature spec as a dict (`FeatureSpec.to_dict()`).
    vocab_dir: directory of the vocabularies (PreprocessedData.vocab_dir).
    numeric_moments: {field: {"mean", "std"}} of unbucketized numeric fields.
    tables_dir: lookup tables of derived count_bucket, mode and share fields
      (PreprocessedData.tables_dir).
    sequence_pooling: "din" (target attention, the query the vocab_from field's
      embedding of the example), "mean", or "none" (sequence fields not embedded).
    din_normalization: DIN's weights: "softmax" over the history or "none" (raw).
    din_units: hidden sizes of DIN's activation unit.
    **kwargs: base Layer arguments.
  """

  def __init__(self, spec: Dict[str, Any], vocab_dir: str,
               numeric_moments: Optional[Mapping[str, Mapping[str, float]]] = None,
               tables_dir: Optional[str] = None, sequence_pooling: str = "din",
               din_normalization: str = "softmax", din_units: Sequence[int] = (36,),
               **kwargs):
    # Raw numeric inputs stay float32 (not cast to a mixed policy's bfloat16/float16
    # before normalisation); the tables and projections compute in the policy dtype.
    super().__init__(autocast=False, **kwargs)
    self._spec = spec_lib.spec_from_dict(spec)
    if any(f.derived.has_table for f in self._spec.derived_fields) and not tables_dir:
      raise ValueError("count_bucket, mode and share fields need `tables_dir`: the "
                       "lookup tables of the preprocessing output "
                       "(PreprocessedData.tables_dir)")
    if sequence_pooling not in SEQUENCE_POOLINGS:
      raise ValueError(f"sequence_pooling must be one of {SEQUENCE_POOLINGS}, got "
                       f"{sequence_pooling!r}")
    if din_normalization not in NORMALIZATIONS:
      raise ValueError(f"din_normalization must be one of {NORMALIZATIONS}, got "
                       f"{din_normalization!r}")
    # Stored as JSON: Keras would wrap (and track) nested dicts set as attributes.
    self._config_json = json.dumps({"spec": spec, "vocab_dir": vocab_dir,
                                    "numeric_moments": dict(numeric_moments or {}),
                                    "tables_dir": tables_dir,
                                    "sequence_pooling": sequence_pooling,
                                    "din_normalization": din_normalization,
                                    "din_units": [int(u) for u in din_units]})
    self.sequence_pooling = sequence_pooling
    self.vocab_dir = vocab_dir
    moments = json.loads(self._config_json)["numeric_moments"]
    self._moments = {k: (float(v["mean"]), float(v["std"])) for k, v in moments.items()}
    self._lookup = {}
    self._table = {}
    self._projection = {}
    self._pooling = {}
    self.num_ids = {}
    self.derived_tables = {}
    # Files with no escaped line are looked up with the raw inputs (`holds_escapes`).
    self._escaped_files = set()
    for f in self._spec.derived_fields:
      if f.derived.has_table:  # (a history is fed, never recomputed)
        path = os.path.join(tables_dir, f"{f.name}.txt")
        if not tf.io.gfile.exists(path):
          raise ValueError(f"field {f.name!r}: lookup table {path} is missing; was the "
                           "data written by `hmdn preprocess` with this spec?")
        self.derived_tables[f.name] = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                path, tf.string, 0, tf.string, 1, delimiter="\t"),
            default_value=f.derived.table_default, name=f"{f.name}_table")
        if holds_escapes(path):
          self._escaped_files.add(f.name)
    for f in self._spec.embedded_fields:
      if f.is_sequence:  # no table of its own (its vocab_from's): pooled below
        continue
      if f.kind == spec_lib.NUMERIC and not f.boundaries:
        self._projection[f.name] = tf.keras.layers.Dense(
            f.embedding_dim, name=f"{f.name}_projection")
        continue
      if f.kind == spec_lib.NUMERIC:
        self._lookup[f.name] = tf.keras.layers.Discretization(
            bin_boundaries=list(f.boundaries), dtype="float32",  # raw values, any policy
            name=f"{f.name}_buckets")
        self.num_ids[f.name] = len(f.boundaries) + 1
      elif f.hash_buckets:
        self._lookup[f.name] = tf.keras.layers.Hashing(
            num_bins=f.hash_buckets, name=f"{f.name}_hash")
        self.num_ids[f.name] = f.hash_buckets
      else:
        path = os.path.join(vocab_dir, f"{f.name}.txt")
        if not tf.io.gfile.exists(path):
          raise ValueError(f"field {f.name!r}: vocabulary file {path} is missing; was "
                           "the data written by `hmdn preprocess` with this spec?")
        size = _vocab_size(path)
        if size == 0:  # every value was rarer than vocab_min_count: all OOV.
          self._lookup[f.name] = tf.keras.layers.Hashing(num_bins=1, name=f"{f.name}_oov")
          self.num_ids[f.name] = 1
        else:
          self._lookup[f.name] = tf.keras.layers.StringLookup(
              vocabulary=path, num_oov_indices=1, name=f"{f.name}_lookup")
          self.num_ids[f.name] = size + 1
          if holds_escapes(path):
            self._escaped_files.add(f.name)
      self._table[f.name] = tf.keras.layers.Embedding(
          self.num_ids[f.name], f.embedding_dim, name=f"{f.name}_embedding",
          embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.05))
    for f in self.sequence_fields:
      self._pooling[f.name] = (
          TargetAttention(din_units, normalization=din_normalization,
                          name=f"{f.name}_attention")
          if sequence_pooling == "din" else MaskedMeanPooling(name=f"{f.name}_mean"))
    check_fits_memory(self._spec, self.num_ids)

  @property
  def feature_spec(self) -> spec_lib.FeatureSpec:
    return self._spec

  @property
  def sequence_fields(self) -> List[spec_lib.Feature]:
    """The sequence fields this layer embeds (none with sequence_pooling "none")."""
    if self.sequence_pooling == "none":
      return []
    return self._spec.sequence_fields

  @property
  def output_fields(self) -> List[str]:
    """The fields `call` returns a vector for, in spec order: every embedded field,
    but no sequence with sequence_pooling "none"."""
    ignored = self.sequence_pooling == "none"
    return [f.name for f in self._spec.embedded_fields
            if not (ignored and f.is_sequence)]

  def ids(self, name: str, values: tf.Tensor) -> tf.Tensor:
    """Integer ids of a categorical or bucketized field (0 = OOV for vocabularies).

    Vocabulary files hold escaped values (features/preprocessed.py), so the inputs are
    escaped the same way before the lookup: any string, tabs and newlines included,
    finds its own row. A file with no escaped line needs no escaping (`holds_escapes`)."""
    if name in self._escaped_files:
      values = escape_tensor(values)
    return tf.cast(self._lookup[name](values), tf.int32)

  def derived_values(self, inputs: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """The derived fields' string values [batch_size], from the raw inputs alone."""
    values = {}

    def source(name):
      if name in values:
        return values[name]
      if name not in inputs:
        raise ValueError(f"input feature {name!r} is missing; got {sorted(inputs)}")
      return inputs[name]

    for f in self._spec.derived_fields:
      d = f.derived
      if f.is_history:  # a model input: fed, as the Beam job computed it
        continue
      if d.has_table:  # keys are escaped; a mode's values too (a count_bucket's or a
        # share's bucket ids need not be); a key unseen in training: table_default
        keys = tf.convert_to_tensor(source(d.source))
        if f.name not in self._escaped_files:
          values[f.name] = self.derived_tables[f.name].lookup(keys)
          continue
        found = self.derived_tables[f.name].lookup(escape_tensor(keys))
        values[f.name] = unescape_tensor(found) if d.kind == spec_lib.MODE else found
      elif d.kind == spec_lib.CROSS:
        values[f.name] = tf.strings.join([source(s) for s in d.sources],
                                         separator=d.separator)
      else:
        x = tf.cast(source(d.source), tf.float32)
        values[f.name] = tf.strings.as_string(tf.raw_ops.Bucketize(
            input=x, boundaries=[float(b) for b in d.boundaries]))
    return values

  def call(self, inputs: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Raw inputs keyed by field name -> {field: [batch_size, embedding_dim]} for every
    field of `output_fields`, derived ones included (a sequence: its vocab_from
    field's embedding_dim)."""
    out = {}
    derived = self.derived_values(inputs)
    for f in self._spec.embedded_fields:
      if f.is_sequence:
        continue
      if f.name not in inputs and f.name not in derived:
        raise ValueError(f"input feature {f.name!r} is missing; got "
                         f"{sorted(inputs)}")
      x = derived[f.name] if f.is_derived and not f.is_history else inputs[f.name]
      if f.name in self._projection:
        mean, std = self._moments.get(f.name, (0.0, 1.0))
        z = (tf.zeros_like(tf.cast(x, tf.float32)) if has_no_spread(mean, std) else
             (tf.cast(x, tf.float32) - mean) / std)
        out[f.name] = self._projection[f.name](tf.clip_by_value(z, -5.0, 5.0)[:, None])
      elif f.kind == spec_lib.MULTI_CATEGORICAL:
        x = tf.convert_to_tensor(x)
        mask = tf.cast(tf.not_equal(x, ""), self.compute_dtype)[..., None]
        vectors = self._table[f.name](self.ids(f.name, x)) * mask
        out[f.name] = tf.reduce_sum(vectors, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1.0)
      else:
        out[f.name] = self._table[f.name](self.ids(f.name, x))
    for f in self.sequence_fields:
      if f.name not in inputs:
        raise ValueError(f"input feature {f.name!r} is missing; got {sorted(inputs)}")
      out[f.name] = self.pool_sequence(f, inputs[f.name], out[f.vocab_from])
    return {name: out[name] for name in self.output_fields}

  def pool_sequence(self, f: spec_lib.Feature, values: tf.Tensor,
                    target: tf.Tensor) -> tf.Tensor:
    """A sequence `[batch, L]` ("" padded) -> its interest vector `[batch, d]`, d its
    vocab_from field's embedding_dim; `target` is that field's embedding of the
    example, DIN's query. The "" padding is masked out before the pooling."""
    values = tf.convert_to_tensor(values)
    if values.shape.rank != 2 or values.dtype != tf.string:
      raise ValueError(f"sequence {f.name!r}: expected [batch, length] strings padded "
                       f"with \"\", got {values.dtype.name} of shape {values.shape}")
    keys = self._table[f.vocab_from](self.ids(f.vocab_from, values))
    return self._pooling[f.name]({"query": target, "keys": keys,
                                  "mask": tf.not_equal(values, "")})

  def get_config(self):
    config = super().get_config()
    config.update(json.loads(self._config_json))
    return config
