"""The preprocessing job: raw CSV/JSONL logs + a feature spec -> TFRecords, vocab, stats.

Output layout under `output_dir` (read by `pipeline/`):
  spec.yaml                 the spec the data was written with
  train/part-*.tfrecord.gz  eval/part-*.tfrecord.gz   gzip tf.Example shards
  vocab/<field>.txt         one value a line, most frequent first
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

from beam_jobs import transforms as T
from features import spec as spec_lib

COMPLETE_MARKER = "metadata.json"


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
    missing = [f.name for f in spec.features if f.required and f.name not in header]
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
  for sub in ("train", "eval", "vocab", "dead_letter", "_stats"):
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
  lines = [
      p | f"Read{i}" >> beam.io.ReadFromTextWithFilename(
          path, skip_header_lines=1 if input_format == "csv" else 0)
      for i, path in enumerate(paths)]
  parsed = (lines | "FlattenFiles" >> beam.Flatten()
            | "DropBlankLines" >> beam.Filter(lambda fl: fl[1].strip() != "")
            | "ParseRows" >> T.ParseRows(spec, input_format, headers, config.delimiter,
                                         config.split_key, config.eval_fraction))
  records = parsed[T.RECORDS]
  _ = parsed[T.DEAD_LETTER] | "DeadLetter" >> T.WriteDeadLetter(f"{out}/dead_letter/rows")
  splits = records | "Split" >> beam.Partition(
      lambda kv, _: 0 if kv[0] == T.TRAIN else 1, 2)
  for split, part in zip((T.TRAIN, T.EVAL), splits):
    _ = (part | f"{split}Records" >> beam.Values()
         | f"Write{split}" >> T.WriteExamples(spec, f"{out}/{split}/part", split))
  train = splits[0] | "TrainRecords" >> beam.Values()
  sizes, distinct = train | "Vocabularies" >> T.ComputeVocabularies(spec, f"{out}/vocab")
  stats = f"{out}/_stats"
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
  paths = _match(config.raw)
  input_format = _format_of(paths, config.input_format)
  headers = read_headers(paths, spec, config.delimiter) if input_format == "csv" else {}
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
  stats = _assemble_stats(out, spec, counters)
  metadata = {
      "spec": spec.name,
      "raw": list(paths),
      "input_format": input_format,
      "rows_read": read,
      "rows_written": written,
      "rows_rejected": rejected,
      "eval_fraction": config.eval_fraction,
      "split_key": config.split_key,
      "vocab_sizes": stats["vocab_sizes"],
  }
  spec_lib.write_text(f"{out}/stats.json", json.dumps(stats, indent=1, sort_keys=True))
  spec_lib.write_text(f"{out}/{COMPLETE_MARKER}", json.dumps(metadata, indent=1))
  return metadata


def _assemble_stats(out: str, spec: spec_lib.FeatureSpec, counters: Dict) -> Dict:
  stats_dir = f"{out}/_stats"
  vocab_sizes = dict(_read_json_lines(f"{stats_dir}/vocab_sizes*"))
  for f in spec.vocabulary_fields:  # a field whose every value was rare: empty vocab.
    if f.name not in vocab_sizes:
      spec_lib.write_text(f"{out}/vocab/{f.name}.txt", "")
      vocab_sizes[f.name] = 0
  distribution: Dict = {}
  for (split, field, value), (rows, clicks) in _read_json_lines(
      f"{stats_dir}/distribution*"):
    cell = distribution.setdefault(split, {}).setdefault(field, {})
    cell[value] = {"rows": rows, "clicks": clicks, "ctr": clicks / rows if rows else 0.0}
  stats = {
      "vocab_sizes": vocab_sizes,
      "distinct_train": dict(_read_json_lines(f"{stats_dir}/distinct*")),
      "numeric": dict(_read_json_lines(f"{stats_dir}/moments*")),
      "missing": {f.name: counters.get(f"missing_{f.name}", 0) for f in spec.features},
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
