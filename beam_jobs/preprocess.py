"""The preprocessing job: raw CSV/JSONL logs + a feature spec -> TFRecords, vocab, stats.

Output layout under `output_dir` (read by `pipeline/`):
  spec.yaml                 the spec the data was written with
  train/part-*.tfrecord.gz  eval/part-*.tfrecord.gz   gzip tf.Example shards
  vocab/<field>.txt         one value a line, most frequent first
  tables/<field>.txt        count_bucket fields: `value<TAB>bucket`, from the training
                            split; the model looks buckets up in them (SavedModel assets)
  dead_letter/rows-*.jsonl  every rejected row with its reason
  stats.json                rows, clicks and CTR per distribution value, numeric moments,
                            distinct and missing values per field
  metadata.json             counters; written last, so its presence means "complete"
"""
import csv
import dataclasses
import json
import logging
import os
from typing import Dict, List, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import sources as S
from beam_jobs import transforms as T
from features import spec as spec_lib

COMPLETE_MARKER = "metadata.json"
TFDS_DIR = "tfds"


def tfds_name(spec: spec_lib.FeatureSpec) -> str:
  """The TFDS dataset name of a spec (TFDS names are snake_case identifiers)."""
  import re
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


def write_tfds_metadata(out: str, spec: spec_lib.FeatureSpec,
                        shards: Dict[str, List]) -> str:
  """dataset_info.json and features.json for the uncompressed shards in `out/tfds`, from
  the per-shard counts the workers reported (no file is read here)."""
  import tensorflow_datasets as tfds
  split_infos = []
  for split, rows in sorted(shards.items()):
    rows = sorted(rows, key=lambda r: r[1])
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[int(r[2]) for r in rows],
        num_bytes=sum(int(r[3]) for r in rows)))
  tfds.folder_dataset.write_metadata(
      data_dir=f"{out}/{TFDS_DIR}", features=tfds_features(spec),
      split_infos=split_infos, check_data=False,
      description=f"hmdn preprocess output of spec {spec.name!r}")
  return f"{out}/{TFDS_DIR}"


@dataclasses.dataclass
class PreprocessConfig:
  raw: str  # comma-separated file globs
  output_dir: str
  spec_path: str
  input_format: str = "auto"  # csv | jsonl | auto (by file extension)
  delimiter: str = ","
  eval_fraction: float = 0.2
  split_key: str = ""  # field whose value decides the split; "" hashes the whole row
  direct_num_workers: int = 1
  source: str = "generic"  # generic | ali_ccp_raw | movielens (beam_jobs/sources.py)
  # Split by time instead: eval = rows with split_time_field >= the cutoff, given or
  # taken at a quantile of the field (default: 1 - eval_fraction).
  split_time_field: str = ""
  split_time_cutoff: Optional[float] = None
  split_time_quantile: Optional[float] = None
  tfds: bool = True  # also write tfds/: the splits as a TFDS dataset (uncompressed)


class PreprocessError(ValueError):
  """Bad input to the job as a whole (no file, unreadable header): one clear line."""


def _match(patterns: str) -> List[str]:
  paths = []
  for pattern in [p for p in patterns.split(",") if p]:
    found = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    if not found:
      raise PreprocessError(f"--raw: no file matches {pattern!r}")
    paths.extend(sorted(found))
  if not paths:
    raise PreprocessError("--raw: no input pattern given")
  return paths


def _format_of(paths: Sequence[str], input_format: str) -> str:
  if input_format != "auto":
    if input_format not in ("csv", "jsonl"):
      raise PreprocessError(f"--input_format: expected csv, jsonl or auto, got "
                            f"{input_format!r}")
    return input_format
  kinds = {"jsonl" if p.rstrip(".gz").endswith((".jsonl", ".json")) else "csv"
           for p in paths}
  if len(kinds) > 1:
    raise PreprocessError(f"--raw mixes CSV and JSONL files ({paths[:4]}...); pass "
                          "--input_format")
  return kinds.pop()


def read_headers(paths: Sequence[str], spec: spec_lib.FeatureSpec,
                 delimiter: str) -> Dict[str, List[str]]:
  """Reads each CSV file's header and checks it against the spec, naming the file."""
  headers = {}
  for path in paths:
    with FileSystems.open(path) as f:
      first = f.readline().decode("utf-8").rstrip("\r\n")
    header = next(csv.reader([first], delimiter=delimiter)) if first else []
    if not header:
      raise PreprocessError(f"{path}: empty file, no header line")
    missing = [f.name for f in spec.raw_fields if f.required and f.name not in header]
    if missing:
      raise PreprocessError(
          f"{path}: column(s) {missing} of spec {spec.source} are not in the header "
          f"{header}")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
      raise PreprocessError(f"{path}: header repeats column(s) {dupes}")
    headers[path] = header
  return headers


def _clear(output_dir: str) -> None:
  """Removes a previous run's outputs so stale shards never mix with new ones."""
  for sub in ("train", "eval", "vocab", "tables", "dead_letter", TFDS_DIR, "_stats"):
    found = FileSystems.match([f"{output_dir}/{sub}/*"])[0].metadata_list
    if found:
      FileSystems.delete([m.path for m in found])
  for name in (COMPLETE_MARKER, "stats.json"):
    path = f"{output_dir}/{name}"
    if FileSystems.exists(path):
      FileSystems.delete([path])


def _read_json_lines(pattern: str) -> List:
  rows = []
  for m in FileSystems.match([pattern])[0].metadata_list:
    with FileSystems.open(m.path) as f:
      rows.extend(json.loads(line) for line in f.read().decode().splitlines() if line)
  return rows


def build_pipeline(p: beam.Pipeline, config: PreprocessConfig,
                   spec: spec_lib.FeatureSpec, paths: Sequence[str], input_format: str,
                   headers: Dict[str, List[str]]) -> None:
  out = config.output_dir
  if config.source == S.ALI_CCP_RAW:
    parsed = p | "AliCcpRaw" >> S.ReadAliCcpRaw(paths, spec, config.split_key,
                                               config.eval_fraction)
  elif config.source == S.MOVIELENS:
    parsed = p | "MovieLens" >> S.ReadMovieLens(config.raw, spec, config.split_key,
                                               config.eval_fraction)
  else:
    parsed = p | "Generic" >> S.ReadGeneric(paths, spec, input_format, headers,
                                            config.delimiter, config.split_key,
                                            config.eval_fraction)
  stats = f"{out}/_stats"
  records = parsed[T.RECORDS]
  _ = parsed[T.DEAD_LETTER] | "DeadLetter" >> T.WriteDeadLetter(f"{out}/dead_letter/rows")
  if config.split_time_field:
    quantile = config.split_time_quantile
    if config.split_time_cutoff is None and quantile is None:
      quantile = 1.0 - config.eval_fraction
    records, cutoff = records | "SplitByTime" >> T.SplitByTime(
        config.split_time_field, config.split_time_cutoff, quantile)
    _ = cutoff | "CutoffOut" >> T.WriteJsonLines(f"{stats}/time_cutoff")
  records = records | "DerivedFeatures" >> T.AddDerivedFeatures(spec, f"{out}/tables")
  splits = records | "Split" >> beam.Partition(
      lambda kv, _: 0 if kv[0] == T.TRAIN else 1, 2)
  for split, part in zip((T.TRAIN, T.EVAL), splits):
    tfds_prefix = (f"{out}/{TFDS_DIR}/{tfds_name(spec)}-{split}.tfrecord" if config.tfds
                   else None)
    shards = (part | f"{split}Records" >> beam.Values()
              | f"Write{split}" >> T.WriteExamples(spec, f"{out}/{split}/part", split,
                                                   tfds_prefix))
    if shards is not None:
      _ = shards | f"{split}TfdsShardsOut" >> T.WriteJsonLines(f"{stats}/tfds_{split}")
  train = splits[0] | "TrainRecords" >> beam.Values()
  sizes, distinct = train | "Vocabularies" >> T.ComputeVocabularies(spec, f"{out}/vocab")
  _ = sizes | "VocabSizesOut" >> T.WriteJsonLines(f"{stats}/vocab_sizes")
  _ = distinct | "DistinctOut" >> T.WriteJsonLines(f"{stats}/distinct")
  _ = (train | "Moments" >> T.NumericMoments(spec)
       | "MomentsOut" >> T.WriteJsonLines(f"{stats}/moments"))
  _ = (records | "DistributionStats" >> T.DistributionStatistics(spec)
       | "DistributionOut" >> T.WriteJsonLines(f"{stats}/distribution"))


def _counters(result) -> Dict[str, int]:
  counters = result.metrics().query(MetricsFilter().with_namespace(T.NAMESPACE))
  out = {}
  for c in counters["counters"]:
    value = c.committed if c.committed is not None else c.attempted
    out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
  return out


def run(config: PreprocessConfig, beam_args: Optional[Sequence[str]] = None) -> Dict:
  """Runs the job; returns the metadata also written to `metadata.json`."""
  # Beam's INFO logs (one line per bundle and worker) would bury the job's own output.
  logging.getLogger("apache_beam").setLevel(logging.WARNING)
  spec = spec_lib.load_spec(config.spec_path)
  if not 0.0 <= config.eval_fraction < 1.0:
    raise PreprocessError(f"--eval_fraction must be in [0, 1), got {config.eval_fraction}")
  if config.split_key and config.split_key not in spec.names:
    raise PreprocessError(f"--split_key {config.split_key!r} is not a field of "
                          f"{spec.source}")
  _check_split_flags(config, spec)
  headers: Dict[str, List[str]] = {}
  if config.source == S.MOVIELENS:
    try:
      paths = list(S.movielens_files(config.raw).values())
    except ValueError as e:
      raise PreprocessError(str(e))
    input_format = S.MOVIELENS
  elif config.source == S.ALI_CCP_RAW:
    paths = _match(config.raw)
    try:
      S.ali_ccp_files(paths)
    except ValueError as e:
      raise PreprocessError(str(e))
    input_format = S.ALI_CCP_RAW
  elif config.source == S.GENERIC:
    paths = _match(config.raw)
    input_format = _format_of(paths, config.input_format)
    if input_format == "csv":
      headers = read_headers(paths, spec, config.delimiter)
  else:
    raise PreprocessError(f"--source: expected one of {S.SOURCES}, got "
                          f"{config.source!r}")
  out = config.output_dir.rstrip("/")
  _clear(out)
  spec.save(f"{out}/spec.yaml")

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
  build_pipeline(pipeline, dataclasses.replace(config, output_dir=out), spec, paths,
                 input_format, headers)
  result = pipeline.run()
  result.wait_until_finish()

  counters = _counters(result)
  read = counters.get("rows_read", 0)
  written = {s: counters.get(f"rows_written_{s}", 0) for s in (T.TRAIN, T.EVAL)}
  rejected = counters.get("rows_rejected", 0)
  if read != written[T.TRAIN] + written[T.EVAL] + rejected:
    raise RuntimeError(f"counters do not reconcile: read {read} != written {written} + "
                       f"rejected {rejected}")
  side_files = _side_file_counts(counters)
  for kind, c in side_files.items():
    if c["read"] != c["joined"] + c["unused"] + c["rejected"]:
      raise RuntimeError(f"{kind} counters do not reconcile: {c}")
  time_cutoff = None
  if config.split_time_field:
    time_cutoff = _read_json_lines(f"{out}/_stats/time_cutoff*")[0]
  if config.tfds:
    write_tfds_metadata(out, spec, {
        s: _read_json_lines(f"{out}/_stats/tfds_{s}*") for s in (T.TRAIN, T.EVAL)})
  stats = _assemble_stats(out, spec, counters)
  metadata = {
      "spec": spec.name,
      "source": config.source,
      "raw": list(paths),
      "input_format": input_format,
      "rows_read": read,
      "rows_written": written,
      "rows_rejected": rejected,
      "eval_fraction": config.eval_fraction,
      "split_key": config.split_key,
      "split_time_field": config.split_time_field,
      "split_time_cutoff": time_cutoff,
      "side_files": side_files,
      "tfds": f"{TFDS_DIR}/" if config.tfds else None,
      "vocab_sizes": stats["vocab_sizes"],
      "tables": {f.name: f"tables/{f.name}.txt" for f in spec.derived_fields
                 if f.derived.kind == spec_lib.COUNT_BUCKET},
  }
  spec_lib.write_text(f"{out}/stats.json", json.dumps(stats, indent=1, sort_keys=True))
  spec_lib.write_text(f"{out}/{COMPLETE_MARKER}", json.dumps(metadata, indent=1))
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


def _assemble_stats(out: str, spec: spec_lib.FeatureSpec, counters: Dict) -> Dict:
  stats_dir = f"{out}/_stats"
  vocab_sizes = dict(_read_json_lines(f"{stats_dir}/vocab_sizes*"))
  for f in spec.vocabulary_fields:  # a field whose every value was rare: empty vocab.
    if f.name not in vocab_sizes:
      spec_lib.write_text(f"{out}/vocab/{f.name}.txt", "")
      vocab_sizes[f.name] = 0
  for f in spec.derived_fields:  # no training row at all: an empty table, all unseen.
    path = f"{out}/tables/{f.name}.txt"
    if f.derived.kind == spec_lib.COUNT_BUCKET and not FileSystems.exists(path):
      spec_lib.write_text(path, "")
  distribution: Dict = {}
  for (split, field, value), (rows, clicks) in _read_json_lines(
      f"{stats_dir}/distribution*"):
    cell = distribution.setdefault(split, {}).setdefault(field, {})
    cell[value] = {"rows": rows, "clicks": clicks, "ctr": clicks / rows if rows else 0.0}
  stats = {
      "vocab_sizes": vocab_sizes,
      "distinct_train": dict(_read_json_lines(f"{stats_dir}/distinct*")),
      "numeric": dict(_read_json_lines(f"{stats_dir}/moments*")),
      "missing": {f.name: counters.get(f"missing_{f.name}", 0) for f in spec.raw_fields},
      "distribution": distribution,
  }
  found = FileSystems.match([f"{stats_dir}/*"])[0].metadata_list
  FileSystems.delete([m.path for m in found])
  return stats


def load_metadata(data_dir: str) -> Dict:
  """The job's metadata; fails clearly if the directory is not a complete job output."""
  path = f"{data_dir.rstrip('/')}/{COMPLETE_MARKER}"
  if not FileSystems.exists(path):
    raise PreprocessError(f"{data_dir}: not a complete preprocessing output (no "
                          f"{COMPLETE_MARKER}); run `hmdn preprocess` first")
  return json.loads(spec_lib.read_text(path))


def load_stats(data_dir: str) -> Dict:
  load_metadata(data_dir)
  return json.loads(spec_lib.read_text(f"{data_dir.rstrip('/')}/stats.json"))
