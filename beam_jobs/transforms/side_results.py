"""Small outputs beside the TFRecords: the dead letter and the driver's side results."""
import json
from typing import Any, Dict

import apache_beam as beam


@beam.ptransform_fn
@beam.typehints.with_input_types(Dict[str, Any])
@beam.typehints.with_output_types(str)
def WriteDeadLetter(dead, prefix):
  """Rejected rows as JSON lines {source, row, reason}."""
  return (dead
          | "ToJson" >> beam.Map(json.dumps)
          | "WriteDeadLetter" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl"))


@beam.ptransform_fn
@beam.typehints.with_output_types(str)
def WriteSideResults(results: Dict[str, beam.PCollection], prefix: str):
  """Small side results (statistics, TFDS shard sizes, the time cutoff), a
  PCollection each in `results`, as ONE JSON-lines file of [name, value] rows for
  the driver to assemble: one sink for all, because every sink adds four stages
  (each a round of bundles on every worker) to the job."""
  tagged = tuple(
      pcoll | f"ToJson_{name}" >> beam.Map(
          lambda x, name=name: json.dumps([name, x], default=list))
      for name, pcoll in sorted(results.items()))
  return (tagged
          | "Flatten" >> beam.Flatten()
          | "Write" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl",
                                           num_shards=1))
