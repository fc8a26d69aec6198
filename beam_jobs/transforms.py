"""Composable Beam transforms of the preprocessing job, each one step of the data flow.

Parsing (beam_jobs/sources/) returns tagged outputs, so a bad row is data (the dead
letter), not an exception. Every transform takes the `FeatureSpec` explicitly; DoFns hold
no global state. Output paths come from `features.preprocessed.PreprocessedData`.
"""
import hashlib
import json
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from features import spec as spec_lib
from features.preprocessed import EVAL, TRAIN, PreprocessedData, escape_value

NAMESPACE = "hmdn.preprocess"
RECORDS = "records"
DEAD_LETTER = "dead_letter"

Record = Dict[str, Any]


def split_of(key: str, eval_fraction: float) -> str:
  """Deterministic train/eval assignment from a key (stable across runs and runners)."""
  bucket = int(hashlib.md5(key.encode("utf-8")).hexdigest()[:8], 16) % 10_000
  return EVAL if bucket < eval_fraction * 10_000 else TRAIN


def parse_record(spec: spec_lib.FeatureSpec, cells: Mapping[str, Any],
                 missing_counters: Optional[Mapping[str, Any]] = None) -> Record:
  """Raw cells (strings, or lists for multi-valued fields) -> a typed record of every
  raw field of the spec; raises SpecError naming the field and the value."""
  record = {}
  for f in spec.raw_fields:
    raw = cells.get(f.name)
    if (raw is None or raw == "" or raw == []) and missing_counters is not None:
      missing_counters[f.name].inc()
    record[f.name] = _checked(f, spec.parse_value(f, raw))
  return record


def _checked(feature: spec_lib.Feature, value: Any) -> Any:
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


# --- Time split -----------------------------------------------------------------------
def _time_of(record: Record, field: str) -> float:
  return float(record[field])


@beam.ptransform_fn
def SplitByTime(split_records, field, cutoff=None, quantile=None):
  """Re-splits (split, record) pairs by a time field: eval = time >= cutoff.

  The cutoff is given, or the `quantile` of the field over all rows, computed by a
  distributed approximate-quantiles combine (one value reaches the workers as a side
  input, never the data). Returns (split records, a PCollection of the one cutoff).
  """
  records = split_records | "DropHashSplit" >> beam.Values()
  if cutoff is not None:
    cut = records.pipeline | "Cutoff" >> beam.Create([float(cutoff)])
  else:
    steps = 1000
    cut = (records
           | "TimeValues" >> beam.Map(_time_of, field)
           | "TimeQuantiles" >> beam.ApproximateQuantiles.Globally(steps + 1)
           | "PickCutoff" >> beam.Map(lambda qs: float(qs[round(quantile * steps)])
                                      if qs else 0.0))
  split = records | "SplitAtCutoff" >> beam.Map(
      lambda r, c: (EVAL if _time_of(r, field) >= c else TRAIN, r),
      beam.pvalue.AsSingleton(cut))
  return split, cut


# --- Derived (whole-log) features -------------------------------------------------------
def _with_value(split_record, name, value):
  split, record = split_record
  out = dict(record)  # never mutate an element another step may hold
  out[name] = value
  return split, out


class _AttachBucketFn(beam.DoFn):
  """(source value, {rows, table}) -> each row with the value's bucket (or the bucket
  of a count of 0 for a value never seen in the training split)."""

  def __init__(self, feature: spec_lib.Feature):
    self._name = feature.name
    self._default = feature.derived.bucket_of(0)

  def process(self, element):
    _, grouped = element
    table = list(grouped["table"])
    bucket = table[0] if table else self._default
    for split_record in grouped["rows"]:
      yield _with_value(split_record, self._name, bucket)


def _row_derived(split_record, features):
  split, record = split_record
  out = dict(record)
  for f in features:
    d = f.derived
    if d.kind == spec_lib.CROSS:
      out[f.name] = d.separator.join(str(out[s]) for s in d.sources)
    elif d.kind == spec_lib.BUCKET:
      out[f.name] = d.bucket_of(out[d.source])
  return split, out


@beam.ptransform_fn
def AddDerivedFeatures(split_records, spec, data: PreprocessedData):
  """Adds the spec's derived fields to (split, record) pairs.

  count_bucket: counts each source value in the TRAINING split (a combine per key),
  writes `data.table_path(field)` (escaped value TAB bucket: the asset the model looks it
  up in, `features.preprocessed.escape_value`) and
  joins the bucket back onto every row, train and eval, with a CoGroupByKey; crosses
  and numeric buckets are computed row by row afterwards (a cross may read a count
  bucket). The values are the ones the model recomputes from the raw ids.
  """
  for f in spec.derived_fields:
    if f.derived.kind != spec_lib.COUNT_BUCKET:
      continue
    source, d = f.derived.source, f.derived
    table = (split_records
             | f"{f.name}TrainValues" >> beam.FlatMap(
                 lambda sr, s=source: [sr[1][s]] if sr[0] == TRAIN else [])
             | f"{f.name}Count" >> beam.combiners.Count.PerElement()
             | f"{f.name}Bucket" >> beam.Map(lambda kv, d=d: (kv[0], d.bucket_of(kv[1]))))
    _ = (table
         | f"{f.name}TableLines" >> beam.MapTuple(
             lambda k, b: f"{escape_value(k)}\t{b}")
         | f"{f.name}WriteTable" >> beam.io.WriteToText(
             data.table_path(f.name), shard_name_template=""))
    rows = split_records | f"{f.name}KeyRows" >> beam.Map(lambda sr, s=source: (sr[1][s], sr))
    split_records = ({"rows": rows, "table": table}
                     | f"{f.name}Join" >> beam.CoGroupByKey()
                     | f"{f.name}Attach" >> beam.ParDo(_AttachBucketFn(f)))
  row_wise = [f for f in spec.derived_fields if f.derived.kind != spec_lib.COUNT_BUCKET]
  if row_wise:
    split_records = split_records | "RowDerived" >> beam.Map(_row_derived, row_wise)
  return split_records


def _values(feature: spec_lib.Feature, value: Any) -> List[str]:
  return list(value) if feature.kind == spec_lib.MULTI_CATEGORICAL else [value]


class WriteVocabularyFn(beam.DoFn):
  """(field, [(value, count)]) -> the vocabulary file, most frequent first, one
  escaped value a line (`escape_value`: a tab or newline in an id cannot split it)."""

  def __init__(self, data: PreprocessedData):
    self._data = data

  def process(self, element):
    field, counts = element
    ordered = sorted(counts, key=lambda vc: (-vc[1], vc[0]))
    with FileSystems.create(self._data.vocab_path(field)) as f:
      f.write("".join(f"{escape_value(v)}\n" for v, _ in ordered).encode("utf-8"))
    yield field, len(ordered)


@beam.ptransform_fn
def ComputeVocabularies(train_records, spec, data: PreprocessedData):
  """Counts categorical values in the training split; keeps those >= vocab_min_count.

  Writes one `data.vocab_path(field)` per vocabulary field and returns (field, vocab size) pairs
  and (field, distinct values) pairs, the latter counted before the threshold.
  """
  fields = spec.vocabulary_fields
  min_count = {f.name: f.vocab_min_count for f in fields}
  counts = (train_records
            | "FieldValues" >> beam.FlatMap(
                lambda r: [(f.name, v) for f in fields for v in _values(f, r[f.name])])
            | "CountValues" >> beam.combiners.Count.PerElement())
  sizes = (counts
           | "KeepFrequent" >> beam.Filter(lambda kv: kv[1] >= min_count[kv[0][0]])
           | "ByField" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
           | "GroupByField" >> beam.GroupByKey()
           | "WriteVocab" >> beam.ParDo(WriteVocabularyFn(data)))
  distinct = (counts
              | "OnePerValue" >> beam.Map(lambda kv: (kv[0][0], 1))
              | "CountDistinct" >> beam.CombinePerKey(sum))
  return sizes, distinct


class _MomentsFn(beam.CombineFn):
  """count, mean and variance of a numeric column, mergeable across workers.

  The accumulator is (count, mean, sum of squared deviations), updated with Welford's
  and Chan's formulas: E[x^2] - E[x]^2 cancels catastrophically for large-offset
  columns (a timestamp's std came out 5x too large).
  """

  def create_accumulator(self):
    return (0, 0.0, 0.0)

  def add_input(self, acc, x):
    n, mean, m2 = acc
    n += 1
    delta = x - mean
    mean += delta / n
    return (n, mean, m2 + delta * (x - mean))

  def merge_accumulators(self, accs):
    n, mean, m2 = 0, 0.0, 0.0
    for n_b, mean_b, m2_b in accs:
      if n_b == 0:
        continue
      total = n + n_b
      delta = mean_b - mean
      mean += delta * n_b / total
      m2 += m2_b + delta * delta * n * n_b / total
      n = total
    return (n, mean, m2)

  def extract_output(self, acc):
    n, mean, m2 = acc
    if n == 0:
      return {"count": 0, "mean": 0.0, "std": 1.0}
    return {"count": n, "mean": mean, "std": max(m2 / n, 0.0) ** 0.5}


@beam.ptransform_fn
def NumericMoments(train_records, spec):
  """(field, {count, mean, std}) of every numeric model input, on the training split."""
  numeric = [f.name for f in spec.model_inputs if f.kind == spec_lib.NUMERIC]
  return (train_records
          | "NumericValues" >> beam.FlatMap(lambda r: [(n, r[n]) for n in numeric])
          | "Moments" >> beam.CombinePerKey(_MomentsFn()))


@beam.ptransform_fn
def DistributionStatistics(split_records, spec):
  """((split, field, value), (rows, clicks)) for every distribution field value."""
  fields = [f.name for f in spec.distribution_fields]
  label = spec.label.name

  def emit(split_record):
    split, r = split_record
    for name in fields:
      yield (split, name, r[name]), (1, r[label])
    yield (split, "__all__", "__all__"), (1, r[label])

  return (split_records
          | "DistributionKeys" >> beam.FlatMap(emit)
          | "SumRowsClicks" >> beam.CombinePerKey(
              lambda pairs: tuple(map(sum, zip(*pairs))) if pairs else (0, 0)))


class ToExampleFn(beam.DoFn):
  """record -> serialized tf.Example, every field of the spec typed as it declares."""

  def __init__(self, spec: spec_lib.FeatureSpec, counter_name: str):
    self._spec = spec
    self._counter_name = counter_name

  def setup(self):
    import tensorflow as tf  # heavy: once per worker, not per element.
    self._tf = tf
    self._written = beam.metrics.Metrics.counter(NAMESPACE, self._counter_name)

  def process(self, record: Record):
    tf = self._tf
    feature = {}
    for f in self._spec.features:
      value = record[f.name]
      if f.kind == spec_lib.NUMERIC:
        feature[f.name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
      else:
        values = value if isinstance(value, list) else [value]
        feature[f.name] = tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[v.encode("utf-8") for v in values]))
    self._written.inc()
    yield tf.train.Example(
        features=tf.train.Features(feature=feature)).SerializeToString()


@beam.ptransform_fn
def WriteExamples(records, spec, prefix, split, tfds_prefix=None):
  """Records -> sharded gzip TFRecords `<prefix>-SSSSS-of-NNNNN<SHARD_SUFFIX>`.

  With `tfds_prefix` (`<dir>/<dataset>-<split>.tfrecord`), the same examples are also
  written uncompressed in TFDS' shard naming (TFDS reads neither gzip nor our names),
  and the result is one (split, shard, examples, bytes) per TFDS shard, counted by the
  workers that read the shards back: TFDS' split info needs per-shard lengths.
  """
  serialized = records | "ToExample" >> beam.ParDo(
      ToExampleFn(spec, f"rows_written_{split}"))
  _ = serialized | "WriteTFRecord" >> beam.io.WriteToTFRecord(
      prefix, file_name_suffix=PreprocessedData.SHARD_SUFFIX,
      compression_type=beam.io.filesystem.CompressionTypes.GZIP)
  if tfds_prefix is None:
    return None
  return (serialized
          | "WriteTfdsShards" >> beam.io.WriteToTFRecord(
              tfds_prefix, shard_name_template="-SSSSS-of-NNNNN")
          | "CountTfdsShard" >> beam.ParDo(_CountShardFn(split)))


class _CountShardFn(beam.DoFn):
  """A written TFDS shard -> (split, shard index, examples, bytes)."""

  def __init__(self, split: str):
    self._split = split

  def setup(self):
    import tensorflow as tf
    self._tf = tf

  def process(self, path: str):
    import re
    shard = int(re.search(r"-(\d{5})-of-\d{5}$", path).group(1))
    n = sum(1 for _ in self._tf.data.TFRecordDataset(path))
    size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    yield self._split, shard, n, size


@beam.ptransform_fn
def WriteDeadLetter(dead, prefix):
  """Rejected rows as JSON lines {source, row, reason}."""
  return (dead
          | "ToJson" >> beam.Map(json.dumps)
          | "WriteDeadLetter" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl"))


@beam.ptransform_fn
def WriteJsonLines(pcoll, prefix):
  """Small side results (statistics) as one JSON file, assembled by the driver."""
  return (pcoll
          | "ToJson" >> beam.Map(lambda x: json.dumps(x, default=list))
          | "Write" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl",
                                           num_shards=1))
