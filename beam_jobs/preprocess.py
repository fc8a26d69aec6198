"""The preprocessing job: raw logs + a feature spec -> TFRecords, vocab, stats.

`--source` picks the reader (beam_jobs/sources/), once; every output path comes from
`features.preprocessed.PreprocessedData`, which owns the layout its readers (trainer,
evaluation, export) read it through: the splits as gzip tf.Example shards, one
vocabulary per categorical field (most frequent first), one lookup table per
count_bucket field (from the training split), the dead letter (every rejected row with
its reason), statistics, the spec, and the metadata (counters), written last so that
its presence means "complete".
"""
import dataclasses
import json
import logging
import re
from typing import Dict, List, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import sources
from beam_jobs import transforms as T
from beam_jobs.config import PreprocessConfig, PreprocessError
from features import spec as spec_lib
from features.preprocessed import EVAL, SPLITS, TRAIN, PreprocessedData


def tfds_name(spec: spec_lib.FeatureSpec) -> str:
  """The TFDS dataset name of a spec (TFDS names are snake_case identifiers)."""
  name = re.sub(r"\W+", "_", spec.name).strip("_").lower()
  return name if name[:1].isalpha() else f"hmdn_{name}"


def tfds_features(spec: spec_lib.FeatureSpec):
  """The TFDS feature connectors of the tf.Examples the job writes (every field)."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  features = {}
  for f in spec.features:
    if f.kind == spec_lib.NUMERIC:
      features[f.name] = tfds.features.Scalar(dtype=tf.float32)
    elif f.kind == spec_lib.MULTI_CATEGORICAL:
      features[f.name] = tfds.features.Sequence(tfds.features.Text())
    else:
      features[f.name] = tfds.features.Text()
  return tfds.features.FeaturesDict(features)


def write_tfds_metadata(data: PreprocessedData, spec: spec_lib.FeatureSpec,
                        shards: Dict[str, List]) -> str:
  """TFDS' dataset_info.json and features.json for the uncompressed shards in
  `data.tfds_dir`, from the per-shard counts the workers reported (no file is read)."""
  import tensorflow_datasets as tfds
  split_infos = []
  for split, rows in sorted(shards.items()):
    rows = sorted(rows, key=lambda r: r[1])
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[int(r[2]) for r in rows],
        num_bytes=sum(int(r[3]) for r in rows)))
  tfds.folder_dataset.write_metadata(
      data_dir=data.tfds_dir, features=tfds_features(spec),
      split_infos=split_infos, check_data=False,
      description=f"hmdn preprocess output of spec {spec.name!r}")
  return data.tfds_dir


def _clear(data: PreprocessedData) -> None:
  """Removes a previous run's outputs so stale shards never mix with new ones."""
  for sub in data.OUTPUT_DIRS:
    found = FileSystems.match([f"{data.path(sub)}/*"])[0].metadata_list
    if found:
      FileSystems.delete([m.path for m in found])
  for name in data.OUTPUT_FILES:
    path = data.path(name)
    if FileSystems.exists(path):
      FileSystems.delete([path])


def _read_json_lines(pattern: str) -> List:
  rows = []
  for m in FileSystems.match([pattern])[0].metadata_list:
    with FileSystems.open(m.path) as f:
      rows.extend(json.loads(line) for line in f.read().decode().splitlines() if line)
  return rows


def _scratch(data: PreprocessedData, name: str) -> str:
  """A side result's prefix in the scratch directory (removed at the end)."""
  return f"{data.scratch_dir}/{name}"


def build_pipeline(p: beam.Pipeline, config: PreprocessConfig,
                   spec: spec_lib.FeatureSpec, source: sources.Source,
                   inputs: sources.Inputs) -> None:
  data = PreprocessedData(config.output_dir)
  parsed = source.read(p, inputs, spec, config)
  records = parsed[T.RECORDS]
  _ = parsed[T.DEAD_LETTER] | "DeadLetter" >> T.WriteDeadLetter(data.dead_letter_prefix)
  if config.split_time_field:
    quantile = config.split_time_quantile
    if config.split_time_cutoff is None and quantile is None:
      quantile = 1.0 - config.eval_fraction
    records, cutoff = records | "SplitByTime" >> T.SplitByTime(
        config.split_time_field, config.split_time_cutoff, quantile)
    _ = cutoff | "CutoffOut" >> T.WriteJsonLines(_scratch(data, "time_cutoff"))
  records = records | "DerivedFeatures" >> T.AddDerivedFeatures(spec, data)
  splits = records | "Split" >> beam.Partition(
      lambda kv, _: 0 if kv[0] == TRAIN else 1, 2)
  for split, part in zip((TRAIN, EVAL), splits):
    tfds_prefix = (f"{data.tfds_dir}/{tfds_name(spec)}-{split}.tfrecord" if config.tfds
                   else None)
    shards = (part | f"{split}Records" >> beam.Values()
              | f"Write{split}" >> T.WriteExamples(spec, data.split_prefix(split), split,
                                                   tfds_prefix))
    if shards is not None:
      _ = shards | f"{split}TfdsShardsOut" >> T.WriteJsonLines(
          _scratch(data, f"tfds_{split}"))
  train = splits[0] | "TrainRecords" >> beam.Values()
  sizes, distinct = train | "Vocabularies" >> T.ComputeVocabularies(spec, data)
  _ = sizes | "VocabSizesOut" >> T.WriteJsonLines(_scratch(data, "vocab_sizes"))
  _ = distinct | "DistinctOut" >> T.WriteJsonLines(_scratch(data, "distinct"))
  _ = (train | "Moments" >> T.NumericMoments(spec)
       | "MomentsOut" >> T.WriteJsonLines(_scratch(data, "moments")))
  _ = (records | "DistributionStats" >> T.DistributionStatistics(spec)
       | "DistributionOut" >> T.WriteJsonLines(_scratch(data, "distribution")))


def _counters(result) -> Dict[str, int]:
  counters = result.metrics().query(MetricsFilter().with_namespace(T.NAMESPACE))
  out = {}
  for c in counters["counters"]:
    value = c.committed if c.committed is not None else c.attempted
    out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
  return out


def run(config: PreprocessConfig, beam_args: Optional[Sequence[str]] = None) -> Dict:
  """Runs the job; returns the metadata also written as the completion marker."""
  # Beam's INFO logs (one line per bundle and worker) would bury the job's own output.
  logging.getLogger("apache_beam").setLevel(logging.WARNING)
  spec = spec_lib.load_spec(config.spec_path)
  if not 0.0 <= config.eval_fraction < 1.0:
    raise PreprocessError(f"--eval_fraction must be in [0, 1), got {config.eval_fraction}")
  if config.split_key and config.split_key not in spec.names:
    raise PreprocessError(f"--split_key {config.split_key!r} is not a field of "
                          f"{spec.source}")
  _check_split_flags(config, spec)
  source = sources.get(config.source)
  inputs = source.resolve(config, spec)
  data = PreprocessedData(config.output_dir)
  _clear(data)
  spec.save(data.spec_path)

  args = list(beam_args or [])
  if not any(a.startswith("--runner") for a in args):
    args.append("--runner=DirectRunner")
  if config.direct_num_workers > 1 and not any("direct_num_workers" in a for a in args):
    args += ["--direct_running_mode=multi_processing",
             f"--direct_num_workers={config.direct_num_workers}"]
  if not any("sdk_harness_log_level" in a for a in args):
    args.append("--default_sdk_harness_log_level=WARNING")
  options = PipelineOptions(args)
  pipeline = beam.Pipeline(options=options)
  build_pipeline(pipeline, dataclasses.replace(config, output_dir=data.data_dir), spec,
                 source, inputs)
  result = pipeline.run()
  result.wait_until_finish()

  counters = _counters(result)
  read = counters.get("rows_read", 0)
  written = {s: counters.get(f"rows_written_{s}", 0) for s in SPLITS}
  rejected = counters.get("rows_rejected", 0)
  if read != written[TRAIN] + written[EVAL] + rejected:
    raise RuntimeError(f"counters do not reconcile: read {read} != written {written} + "
                       f"rejected {rejected}")
  side_files = _side_file_counts(counters)
  for kind, c in side_files.items():
    if c["read"] != c["joined"] + c["unused"] + c["rejected"]:
      raise RuntimeError(f"{kind} counters do not reconcile: {c}")
  time_cutoff = None
  if config.split_time_field:
    time_cutoff = _read_json_lines(_scratch(data, "time_cutoff*"))[0]
  if config.tfds:
    write_tfds_metadata(data, spec, {
        s: _read_json_lines(_scratch(data, f"tfds_{s}*")) for s in SPLITS})
  stats = _assemble_stats(data, spec, counters)
  metadata = {
      "spec": spec.name,
      "source": config.source,
      "raw": list(inputs.paths),
      "input_format": inputs.input_format,
      "rows_read": read,
      "rows_written": written,
      "rows_rejected": rejected,
      "eval_fraction": config.eval_fraction,
      "split_key": config.split_key,
      "split_time_field": config.split_time_field,
      "split_time_cutoff": time_cutoff,
      "side_files": side_files,
      "tfds": f"{data.TFDS_DIR}/" if config.tfds else None,
      "vocab_sizes": stats["vocab_sizes"],
      "tables": {f.name: data.table_relpath(f.name) for f in spec.derived_fields
                 if f.derived.kind == spec_lib.COUNT_BUCKET},
  }
  spec_lib.write_text(data.stats_path, json.dumps(stats, indent=1, sort_keys=True))
  spec_lib.write_text(data.metadata_path, json.dumps(metadata, indent=1))  # last
  return metadata


def _check_split_flags(config: PreprocessConfig, spec: spec_lib.FeatureSpec) -> None:
  if not config.split_time_field:
    if config.split_time_cutoff is not None or config.split_time_quantile is not None:
      raise PreprocessError("--split_time_cutoff/--split_time_quantile need "
                            "--split_time_field")
    return
  if config.split_time_field not in spec.names:
    raise PreprocessError(f"--split_time_field {config.split_time_field!r} is not a "
                          f"field of {spec.source}")
  if spec[config.split_time_field].kind != spec_lib.NUMERIC:
    raise PreprocessError(f"--split_time_field {config.split_time_field!r} must be "
                          "numeric (e.g. a unix time)")
  if config.split_time_cutoff is not None and config.split_time_quantile is not None:
    raise PreprocessError("give --split_time_cutoff or --split_time_quantile, not both")
  q = config.split_time_quantile
  if q is not None and not 0.0 < q < 1.0:
    raise PreprocessError(f"--split_time_quantile must be in (0, 1), got {q}")


def _side_file_counts(counters: Dict[str, int]) -> Dict[str, Dict[str, int]]:
  """Ali-CCP common features, MovieLens users and items: each row read is joined
  (used by an impression), unused, or rejected (dead letter)."""
  out = {}
  for kind in ("ali_ccp_common_rows", "movielens_users", "movielens_items"):
    if f"{kind}_read" in counters:
      out[kind] = {k: counters.get(f"{kind}_{k}", 0)
                   for k in ("read", "joined", "unused", "rejected")}
  return out


def _assemble_stats(data: PreprocessedData, spec: spec_lib.FeatureSpec,
                    counters: Dict) -> Dict:
  vocab_sizes = dict(_read_json_lines(_scratch(data, "vocab_sizes*")))
  for f in spec.vocabulary_fields:  # a field whose every value was rare: empty vocab.
    if f.name not in vocab_sizes:
      spec_lib.write_text(data.vocab_path(f.name), "")
      vocab_sizes[f.name] = 0
  for f in spec.derived_fields:  # no training row at all: an empty table, all unseen.
    path = data.table_path(f.name)
    if f.derived.kind == spec_lib.COUNT_BUCKET and not FileSystems.exists(path):
      spec_lib.write_text(path, "")
  distribution: Dict = {}
  for (split, field, value), (rows, clicks) in _read_json_lines(
      _scratch(data, "distribution*")):
    cell = distribution.setdefault(split, {}).setdefault(field, {})
    cell[value] = {"rows": rows, "clicks": clicks, "ctr": clicks / rows if rows else 0.0}
  stats = {
      "vocab_sizes": vocab_sizes,
      "distinct_train": dict(_read_json_lines(_scratch(data, "distinct*"))),
      "numeric": dict(_read_json_lines(_scratch(data, "moments*"))),
      "missing": {f.name: counters.get(f"missing_{f.name}", 0) for f in spec.raw_fields},
      "distribution": distribution,
  }
  found = FileSystems.match([_scratch(data, "*")])[0].metadata_list
  FileSystems.delete([m.path for m in found])
  return stats
