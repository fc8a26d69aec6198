"""tf.data input over the preprocessing job's TFRecords, parsed with the spec.

Records travel in blocks from the readers to the batches, never one per element
(tf.data's cost is per element): a parallel interleave passes each file's blocks,
training permutes windows of consecutive records by one vectorised op each (or, with
`cache`, the whole split held in memory each epoch), `rebatch` cuts the blocks into
batches, and every batch is parsed at once (`parse_example` on a vector is far cheaper
than per-example parsing) and prefetched.
"""
import gzip
import os
import struct
from typing import Any, Dict, List, Optional, Tuple, Union

import tensorflow as tf

from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import EVAL, TRAIN, PreprocessedData, as_data  # noqa: F401

DataDir = Union[str, PreprocessedData]


def files_of(data_dir: DataDir, split: str) -> List[str]:
  """The split's TFRecord shards (see features/preprocessed.py for the layout), in the
  order of their content (`content_order`)."""
  return content_order(as_data(data_dir).split_files(split))


def content_order(files: List[str]) -> List[str]:
  """The shards ordered by their first record, not by name: the Beam job writes the
  same shards on every run but may number them differently, and a deterministic run
  must read the same records in the same order, for training and evaluation alike
  (two `make demo --deterministic` runs gave AUC 0.7690 and 0.7697 on identical
  shards named the other way round)."""
  return sorted(files, key=lambda path: (first_record(path), path))


def first_record(path: str) -> bytes:
  """A gzip TFRecord file's first record, read in Python (not by tf.data: this also
  runs while a dataset function is traced, as for parameter-server training)."""
  with tf.io.gfile.GFile(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as f:
    header = f.read(12)  # uint64 length, uint32 masked CRC of the length
    if len(header) < 12:
      return b""
    return f.read(struct.unpack("<Q", header[:8])[0])


def parse_batch(serialized: tf.Tensor, spec: spec_lib.FeatureSpec,
                for_serving: bool = False, with_label: bool = False
                ) -> Dict[str, tf.Tensor]:
  """A batch of serialized tf.Example -> dense tensors keyed by field name.

  All fields, or with `for_serving` only what the model is fed (plus the label when
  `with_label`): training parses nothing it does not use.
  Multi-valued fields become `[batch, max_values]` strings padded with "", sequences
  `[batch, L]` as `dense_sequence` makes them (the spec's `tensor_specs` contract).
  """
  parsing_spec = spec.parsing_spec(for_serving=for_serving)
  if with_label:
    full = spec.parsing_spec()
    parsing_spec.update({f.name: full[f.name] for f in spec.labels})
  parsed = tf.io.parse_example(serialized, parsing_spec)
  for f in spec.features:
    if f.name in parsed and f.kind == spec_lib.MULTI_CATEGORICAL:
      parsed[f.name] = parsed[f.name].to_tensor(default_value="")
    elif f.name in parsed and f.kind == spec_lib.SEQUENCE:
      parsed[f.name] = dense_sequence(parsed[f.name], f.max_length)
  return parsed


# The fields whose values are strings in the model: a tf.Example may give their ids as
# an int64_list (TF Serving clients often do), read as the decimal strings they are.
STRING_KINDS = (spec_lib.CATEGORICAL, spec_lib.MULTI_CATEGORICAL, spec_lib.SEQUENCE)
_NO_FIELD = "\x00hmdn: no field"  # a key no spec declares (parse_example's framing check)


def int_ids_as_bytes(serialized: tf.Tensor, spec: spec_lib.FeatureSpec) -> tf.Tensor:
  """Serialized tf.Examples with every int64_list of a categorical, multi-valued or
  sequence model input rewritten as the bytes_list of its decimal strings (123 ->
  "123", the id a raw log's JSON 123 is: `cells._category`), so `parse_example` reads
  both forms as one vocabulary row; examples without one pass unchanged.

  A float_list there is refused (InvalidArgumentError naming the feature and the
  instance): 3.0 may be the id "3", but float32 holds no id above 2**24 exactly, so a
  float id cannot be told apart from a rounded one. Everything else (the other fields,
  duplicate keys, a numeric field's type) is left to `parse_example`.
  """
  names = [f.name for f in spec.model_inputs if f.kind in STRING_KINDS]
  serialized = tf.convert_to_tensor(serialized, tf.string)
  if not names:
    return serialized
  # Bytes that are no tf.Example fail here with parse_example's own error ("Could not
  # parse example input"), not with decode_proto's DataLossError. A data dependency
  # on its output (the batch from its first row split, always 0), since grappler
  # drops a control one and simplifies what it can infer from the input's shape.
  framed = tf.io.parse_example(serialized, {_NO_FIELD: tf.io.RaggedFeature(tf.string)})
  checked = serialized[framed[_NO_FIELD].row_splits[0]:]
  # tf.Example -> Features -> its map entries [batch, entries], padded with "" (an
  # empty entry: key "", no kind); each entry -> its key and its Feature.
  _, (features,) = tf.io.decode_proto(checked, "tensorflow.Example", ["features"],
                                      [tf.string])
  counts, (entries,) = tf.io.decode_proto(features[:, 0], "tensorflow.Features",
                                          ["feature"], [tf.string])
  _, (keys, values) = tf.io.decode_proto(
      entries, "tensorflow.Features.FeatureEntry", ["key", "value"],
      [tf.string, tf.string])
  keys, values = keys[..., 0], values[..., 0]
  ours = tf.reduce_any(tf.equal(keys[..., None], tf.constant(names)), axis=-1)
  values = tf.where(ours, values, "")  # only these fields' Features decoded
  kinds, (_, int_lists) = tf.io.decode_proto(  # a bytes_list is not copied again
      values, "tensorflow.Feature", ["float_list", "int64_list"], [tf.string] * 2)
  floats = tf.logical_and(ours, kinds[..., 0] > 0)
  ints = tf.logical_and(ours, kinds[..., 1] > 0)

  def refused():  # built only for a batch that has one (per-op cost at batch 1)
    first = tf.where(floats)[0]  # the first such feature and its instance
    message = tf.strings.join([  # joined, not formatted: format would quote the name
        "feature ", tf.boolean_mask(keys, floats)[0],
        " is a float_list at instance ", tf.strings.as_string(first[0]),
        "; a categorical or sequence feature takes its ids as a bytes_list or an "
        "int64_list"])
    with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
      return tf.identity(serialized)

  def rewritten():
    sizes, (ids,) = tf.io.decode_proto(int_lists[..., 0], "tensorflow.Int64List",
                                       ["value"], [tf.int64])
    as_bytes = tf.io.encode_proto(sizes, [tf.strings.as_string(ids)], ["value"],
                                  "tensorflow.BytesList")
    feature = tf.io.encode_proto(tf.ones_like(sizes), [as_bytes[..., None]],
                                 ["bytes_list"], "tensorflow.Feature")
    entry = tf.io.encode_proto(
        tf.ones(tf.concat([tf.shape(keys), [2]], 0), tf.int32),
        [keys[..., None], feature[..., None]], ["key", "value"],
        "tensorflow.Features.FeatureEntry")
    rebuilt = tf.io.encode_proto(counts, [tf.where(ints, entry, entries)], ["feature"],
                                 "tensorflow.Features")
    return tf.io.encode_proto(tf.ones_like(counts), [rebuilt[:, None]], ["features"],
                              "tensorflow.Example")

  return tf.cond(tf.reduce_any(floats), refused, lambda: tf.cond(
      tf.reduce_any(ints), rewritten, lambda: tf.identity(serialized)))


def dense_sequence(values, max_length: int) -> tf.Tensor:
  """A batch of sequences (ragged, or dense with "" padding) -> the model's dense
  `[batch, L]` strings: each row's values in order, most recent last, its last
  `max_length` kept (a longer history is truncated, the oldest values dropped), padded
  with "" at the END; 1 <= L <= max_length (an all-empty batch has one "" column).
  "" is never a value, so every "" is dropped before the padding: the mask is
  `values != ""` and a row's result does not depend on the other rows.

  Written as a search, not as ragged masking and re-slicing: the result's column j of
  a row is the row's (dropped + j + 1)-th value, found in the running count of its
  values, so the serving graph stays a few ops (per-op cost is most of a batch of 1).
  """
  if isinstance(values, tf.RaggedTensor):
    values = values.to_tensor(default_value="")
  # One "" column more: where a row has no j-th value, the search lands on it.
  padded = tf.pad(tf.convert_to_tensor(values), [[0, 0], [0, 1]], constant_values="")
  running = tf.cumsum(tf.cast(tf.not_equal(padded, ""), tf.int32), axis=1)
  counts = running[:, -1]
  dropped = tf.maximum(counts - max_length, 0)  # the oldest values past max_length
  width = tf.maximum(tf.reduce_max(counts - dropped), 1)
  wanted = dropped[:, None] + tf.range(1, width + 1)[None, :]
  column = tf.minimum(tf.searchsorted(running, wanted, side="left"),
                      tf.shape(padded)[1] - 1)
  return tf.gather(padded, column, batch_dims=1)


def fit_sequences(features: Dict[str, tf.Tensor], spec: spec_lib.FeatureSpec
                  ) -> Dict[str, tf.Tensor]:
  """Raw serving tensors with every sequence put in the model's contract
  (`dense_sequence`): an over-long history truncated to its last max_length values,
  an empty one accepted."""
  out = dict(features)
  for f in spec.sequence_fields:
    if f.name in out:
      out[f.name] = dense_sequence(out[f.name], f.max_length)
  return out


def split_label(parsed: Dict[str, tf.Tensor], spec: spec_lib.FeatureSpec
                ) -> Tuple[Dict[str, tf.Tensor], Any]:
  """(features, label): the label a [batch] tensor, or with several tasks a dict of
  them keyed by label field."""
  features = dict(parsed)
  labels = {f.name: features.pop(f.name) for f in spec.labels}
  return features, (labels if len(labels) > 1 else labels[spec.label.name])


READ_BUFFER_BYTES = 4 << 20  # per gzip reader (measured: docs/speed.md, "pipeline")
# Records a file's reader hands the interleave at once. tf.data's cost is per element,
# so the records stay in blocks all the way to the batches, and training permutes
# windows instead of a per-record shuffle buffer (measured: docs/speed.md).
READ_BLOCK_RECORDS = 64
# Records of consecutive reading a training window permutes at once.
SHUFFLE_WINDOW_RECORDS = 50_000


def _options(ordered: bool) -> tf.data.Options:
  """Autotuned parallelism; unordered (training) gives up element order for
  throughput."""
  options = tf.data.Options()
  options.autotune.enabled = True
  options.deterministic = ordered
  options.experimental_optimization.map_parallelization = True
  options.experimental_optimization.parallel_batch = True
  return options


def _cached_epochs(blocks: tf.data.Dataset, batch_size: int, seed: int
                   ) -> tf.data.Dataset:
  """Batches of a split held in memory: each epoch a uniform permutation of every
  record (full batches only), gathered a batch at a time."""
  everything = blocks.rebatch(2 ** 62).cache()  # one element: the serialized split

  def epoch(split):
    batches = tf.shape(split)[0] // batch_size
    order = tf.random.shuffle(tf.range(tf.shape(split)[0]), seed=seed)
    order = tf.reshape(order[:batches * batch_size], [batches, batch_size])
    return tf.data.Dataset.from_tensor_slices(order).map(
        lambda idx: tf.gather(split, idx))
  return everything.repeat().flat_map(epoch)


def shuffled_windows(blocks: tf.data.Dataset, batch_size: int, window: int,
                     seed: int) -> tf.data.Dataset:
  """Full batches, repeated over epochs, of the blocks' records permuted a window at
  a time: every `window` consecutive records of an epoch (its last window shorter)
  are put in a uniformly random order by one op, seeded by `seed` and the window's
  count, so a seed gives the same batches when the reading is ordered.

  A record moves anywhere within its window and never out of it; a shuffle buffer
  of the same size moves records by a geometric number of places (some far, most
  few) at a per-record cost that was the streamed input's costliest stage.
  """
  def permute(index, records):
    return tf.random.experimental.stateless_shuffle(
        records, seed=tf.stack([tf.constant(seed, tf.int64), index]))
  # The windows stay in order even when the reading is not: an unordered map would let
  # a busy machine hand out the next epoch's first window before this epoch's last one,
  # so an epoch would see some records twice and miss others.
  return (blocks.rebatch(window).repeat().enumerate()
          .map(permute, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .rebatch(batch_size, drop_remainder=True))


def read_blocks(files: tf.data.Dataset, num_files: int, ordered: bool
                ) -> tf.data.Dataset:
  """Blocks of up to READ_BLOCK_RECORDS serialized records (string vectors) of a
  dataset of file names: up to 8 files read at once (gzip), each reader handing over
  a block at a time; a file's blocks keep its order, and `ordered` keeps the files'
  round robin."""
  return files.interleave(
      lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP",
                                        buffer_size=READ_BUFFER_BYTES
                                        ).batch(READ_BLOCK_RECORDS),
      cycle_length=min(num_files, max(8, os.cpu_count() or 1)),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=ordered)


def make_dataset(data_dir: DataDir, split: str, spec: spec_lib.FeatureSpec,
                 batch_size: int, training: bool, seed: int = 0,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 shuffle_window: int = SHUFFLE_WINDOW_RECORDS, cache: bool = False,
                 deterministic: bool = False, skip_batches: int = 0) -> tf.data.Dataset:
  """(features, label) batches. Training: shuffled, repeated, full batches only.

  `batch_size` is the batch of this input pipeline (per worker when an input_context
  shards the files across workers). Training permutes each `shuffle_window` records
  read in a row, after reading the files in a new random order each epoch. `cache`
  (training) keeps the split's serialized records in memory after the first pass: no
  more reading or decompression, and each epoch is a uniform shuffle of the whole
  split. Training reads blocks in whatever order the parallel readers finish (an
  epoch's records, never the next epoch's), unless `deterministic`: then the same seed
  gives the same batches. `skip_batches` (training) starts after that many batches of
  the repeated stream, before they are parsed: a resumed run continues where its
  backup stopped, in the epoch and the shuffle order it was in.
  """
  if shuffle_window < 1:
    raise ValueError(f"shuffle_window={shuffle_window!r}: expected an integer >= 1")
  ordered = deterministic or not training
  files = files_of(data_dir, split)
  ds = tf.data.Dataset.from_tensor_slices(files)
  pipelines = input_context.num_input_pipelines if input_context is not None else 1
  shard_files = pipelines > 1 and len(files) >= pipelines
  if shard_files:
    ds = ds.shard(pipelines, input_context.input_pipeline_id)
  if training:
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  ds = read_blocks(ds, len(files), ordered)
  if pipelines > 1 and not shard_files:  # fewer files than workers: shard the blocks
    ds = ds.shard(pipelines, input_context.input_pipeline_id)
  if not training:
    ds = ds.rebatch(batch_size)
  elif cache:
    ds = _cached_epochs(ds, batch_size, seed)
  else:
    ds = shuffled_windows(ds, batch_size, shuffle_window, seed)
  if training and skip_batches:
    ds = ds.skip(skip_batches)
  # Batches keep their order (only the reading is unordered): an unordered parse could
  # hand out the next epoch's first batch before this epoch's last one.
  ds = ds.map(lambda s: split_label(
      parse_batch(s, spec, for_serving=True, with_label=True), spec),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(ordered))


def count_records(data_dir: DataDir, split: str) -> int:
  return sum(1 for _ in tf.data.TFRecordDataset(files_of(data_dir, split),
                                                compression_type="GZIP"))


def first_records(data_dir: DataDir, split: str, n: int) -> List[bytes]:
  """The first n serialized tf.Examples of a split (warm-up and demo requests)."""
  return [r.numpy() for r in tf.data.TFRecordDataset(
      files_of(data_dir, split), compression_type="GZIP").take(n)]
