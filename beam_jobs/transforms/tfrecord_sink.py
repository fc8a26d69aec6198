"""The TFRecord sink: lists of serialized records framed and written with one call each,
through Beam's public file-based sink (sharding, temporary files, finalization)."""
import re
import struct
from typing import Sequence

import apache_beam as beam
import google_crc32c
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from hmdn.beam_jobs.transforms.batches import Batch
from hmdn.beam_jobs.transforms.examples import ToExampleFn
from hmdn.features.preprocessed import PreprocessedData


def _masked_crc32c(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frames(records: Sequence[bytes]) -> bytes:
  """TFRecord framing of many records at once: length, masked CRC32C of the length,
  data, masked CRC32C of the data."""
  pack_q, pack_i = struct.Struct("<Q").pack, struct.Struct("<I").pack
  out = []
  for data in records:
    length = pack_q(len(data))
    out += (length, pack_i(_masked_crc32c(length)), data, pack_i(_masked_crc32c(data)))
  return b"".join(out)


class _BatchTFRecordSink(FileBasedSink):
  """A TFRecord sink on Beam's public `FileBasedSink` (sharding, temporary files,
  finalization), whose elements are lists of serialized records, framed and written
  with one call each."""

  def __init__(self, prefix: str, suffix: str, template, compression):
    super().__init__(prefix, beam.coders.BytesCoder(), file_name_suffix=suffix,
                     num_shards=0, shard_name_template=template,
                     mime_type="application/octet-stream", compression_type=compression)

  def write_record(self, file_handle, value):
    file_handle.write(tfrecord_frames(value))


def _batch_sink(prefix, suffix="", template=None, compression=CompressionTypes.AUTO):
  return beam.io.Write(_BatchTFRecordSink(prefix, suffix, template, compression))


@beam.ptransform_fn
@beam.typehints.with_input_types(Batch)
def WriteExamples(batches, spec, prefix, split, tfds_prefix=None, progress_prefix=""):
  """Record batches -> sharded gzip TFRecords `<prefix>-SSSSS-of-NNNNN<SHARD_SUFFIX>`.

  With `tfds_prefix` (`<dir>/<dataset>-<split>.tfrecord`), the same examples are also
  written uncompressed in TFDS' shard naming (TFDS reads neither gzip nor our names),
  and the result is one (split, shard, examples, bytes) per TFDS shard, counted by the
  workers that read the shards back: TFDS' split info needs per-shard lengths.
  """
  serialized = batches | "ToExample" >> beam.ParDo(
      ToExampleFn(spec, f"rows_written_{split}", progress_prefix))
  _ = serialized | "WriteTFRecord" >> _batch_sink(
      prefix, PreprocessedData.SHARD_SUFFIX, None, CompressionTypes.GZIP)
  if tfds_prefix is None:
    return None
  return (serialized
          | "WriteTfdsShards" >> _batch_sink(tfds_prefix, "", "-SSSSS-of-NNNNN",
                                             CompressionTypes.UNCOMPRESSED)
          | "CountTfdsShard" >> beam.ParDo(_CountShardFn(split)))


class _CountShardFn(beam.DoFn):
  """A written TFDS shard -> (split, shard index, examples, bytes)."""

  def __init__(self, split: str):
    self._split = split

  @staticmethod
  def _count_records(path: str) -> int:
    """Records of an uncompressed TFRecord file, from its framing (length, CRC, data,
    CRC): no TensorFlow in the workers."""
    n = 0
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      while True:
        header = f.read(12)
        if not header:
          return n
        if len(header) < 12:
          raise ValueError(f"{path}: truncated TFRecord header")
        (length,) = struct.unpack("<Q", header[:8])
        f.seek(length + 4, 1)
        n += 1

  def process(self, path: str):
    shard = int(re.search(r"-(\d{5})-of-\d{5}$", path).group(1))
    n = self._count_records(path)
    size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    yield self._split, shard, n, size
