"""The preprocessing job: raw logs + a feature spec -> TFRecords, vocab, stats.

`--source` picks the reader (beam_jobs/sources/), once; every output path comes from
`features.preprocessed.PreprocessedData`, which owns the layout its readers (trainer,
evaluation, export) read it through: the splits as gzip tf.Example shards, one
vocabulary per categorical field (most frequent first), one lookup table per
count_bucket or mode field (from the training split), the dead letter (every rejected
row with its reason), statistics, the spec, and the metadata (counters), written last
so that its presence means "complete".

Complete or absent. Before anything is touched, the inputs (`--raw` files, a MovieLens
folder, the spec file) are checked to lie outside what the job clears. Then, in order:
the old metadata (the completion marker) is removed first, a killed run's leftovers
(`_staging-*` directories, Beam's `beam-temp-*`) and the old outputs are removed, the
job writes everything into a fresh staging directory `<data_dir>/_staging-<id>/` (the
same layout), and only after the counters reconcile are the outputs moved into place
and the metadata written last. On any failure (an exception, a full disk, Ctrl-C) the
staging directory and anything already moved are removed before the error is re-raised.
What holds where: locally (and on HDFS) each output directory is published by one
atomic rename; on gs:// (no directory rename) every file is copied and deleted one by
one, so a reader can see part of the outputs while they move, but never the metadata,
which is one object created last (object creation is atomic), and every reader checks
it (`PreprocessedData.check_complete`). A run killed at any point leaves no metadata,
and the next run removes what it left.

The flags are range-checked first (`PreprocessConfig.validate`). While the Beam job
runs, a line with rows read / written / rejected and rows/s is printed every few
seconds (`ProgressPrinter`), then one final line; Beam's own log lines are silenced
at their loggers unless absl's --verbosity asks for INFO.
"""
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import uuid
import warnings
from typing import Dict, List, Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import sources
from beam_jobs import transforms as T
from beam_jobs.sources import base
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


# The run's outputs before they are published (a PreprocessedData layout of its own),
# and the temporary directories Beam's file sinks write beside their outputs. (Layout
# names: candidates for features/preprocessed.PreprocessedData.)
STAGING_PREFIX = PreprocessedData.STAGING_PREFIX
PROGRESS_EVERY_S = 5.0  # a progress line while the Beam job runs
BEAM_TEMP_PREFIX = "beam-temp-"
_STALE_PREFIXES = (STAGING_PREFIX, BEAM_TEMP_PREFIX)


class CountersError(RuntimeError):
  """The job's counters do not add up: some row was lost or counted twice."""


def _is_local(path: str) -> bool:
  return FileSystems.get_scheme(path) is None


def _files_under(path: str) -> List[str]:
  """Every file below a directory (recursively), sorted."""
  if _is_local(path):
    return sorted(os.path.join(root, f) for root, _, files in os.walk(path)
                  for f in files)
  found = FileSystems.match([path.rstrip("/") + "/**"])[0].metadata_list
  return sorted(m.path for m in found)


def _delete_tree(path: str) -> None:
  """Removes a file or a directory and everything below it; nothing if absent."""
  if _is_local(path):
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    elif os.path.lexists(path):
      os.remove(path)
    return
  files = _files_under(path)
  if files:
    FileSystems.delete(files)
  if FileSystems.exists(path):
    FileSystems.delete([path])


def _remove_stale(data: PreprocessedData) -> List[str]:
  """A killed run's leftovers (staging directories, `beam-temp-*` directories at any
  depth); returns what was removed."""
  stale = []
  if _is_local(data.data_dir):
    for root, dirs, _ in os.walk(data.data_dir):
      for d in list(dirs):
        if d.startswith(_STALE_PREFIXES):
          stale.append(os.path.join(root, d))
          dirs.remove(d)
  else:
    root = data.data_dir.rstrip("/") + "/"
    for f in _files_under(data.data_dir):
      parts = f[len(root):].split("/")
      for i, part in enumerate(parts[:-1]):
        if part.startswith(_STALE_PREFIXES):
          stale.append(root + "/".join(parts[:i + 1]))
          break
    stale = sorted(set(stale))
  for path in stale:
    _delete_tree(path)
  return stale


def _clear(data: PreprocessedData, spec_path: str = "") -> None:
  """Removes a previous run's outputs so stale shards never mix with new ones; the
  spec file too, unless it is this run's own --spec (then it is replaced at the end)."""
  for sub in data.OUTPUT_DIRS:
    _delete_tree(data.path(sub))
  for name in data.OUTPUT_FILES:
    _delete_tree(data.path(name))
  if base.path_key(spec_path or ".") != base.path_key(data.spec_path):
    _delete_tree(data.spec_path)


def _inside(path: str, root: str) -> bool:
  root = root.rstrip("/")
  return path == root or path.startswith(root + "/")


def check_raw_outside_outputs(raw: str, data: PreprocessedData) -> None:
  """The fixed part of each `--raw` glob (up to its first wildcard) must not lie in the
  data directory: found before a header is read, so a glob pointing into the outputs
  fails for the right reason."""
  out = base.path_key(data.data_dir)
  for pattern in [p for p in raw.split(",") if p]:
    fixed = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    if fixed != pattern:  # a glob: its directory part
      fixed = fixed.rsplit("/", 1)[0] if "/" in fixed else "."
    if fixed and _inside(base.path_key(fixed), out):
      raise PreprocessError(
          f"--raw {pattern} points inside the output directory {data.data_dir}, whose "
          "contents the job replaces; write the output elsewhere or move the input")


def check_inputs_outside_outputs(inputs: sources.Inputs, data: PreprocessedData,
                                 spec_path: str = "") -> None:
  """Inputs are never deleted or overwritten: a `--raw` file inside the data directory,
  a folder the source reads that holds the data directory or lies in it, or a spec
  file among the outputs the job clears is a PreprocessError naming both paths. Local
  paths are compared resolved (symlinks, `..`)."""
  out = base.path_key(data.data_dir)
  for path in inputs.paths:
    key = base.path_key(path)
    if _inside(key, out):
      raise PreprocessError(
          f"--raw file {path} is inside the output directory {data.data_dir}, whose "
          "contents the job replaces; write the output elsewhere or move the input")
    if _inside(out, key):
      raise PreprocessError(f"the output directory {data.data_dir} is the --raw file "
                            f"{path}")
  for folder in inputs.folders:
    key = base.path_key(folder)
    if _inside(key, out) or _inside(out, key):
      raise PreprocessError(f"--raw folder {folder} and the output directory "
                            f"{data.data_dir} overlap; write the output elsewhere")
  if spec_path and ("/" in spec_path or os.path.exists(spec_path)):
    key = base.path_key(spec_path)
    cleared = [data.path(n) for n in data.OUTPUT_DIRS + data.OUTPUT_FILES]
    for path in cleared:
      if _inside(key, base.path_key(path)):
        raise PreprocessError(f"--spec {spec_path} is inside {path}, which the job "
                              "clears; copy the spec elsewhere")


def _publish(staging: PreprocessedData, data: PreprocessedData) -> None:
  """Moves the staged outputs into the data directory (each directory by one rename
  where the filesystem has one, file by file on object stores)."""
  names = [n for n in data.OUTPUT_DIRS if n != data.SCRATCH_DIR]
  names += [n for n in data.OUTPUT_FILES if n != data.METADATA_FILE] + [data.SPEC_FILE]
  for name in names:
    src, dst = staging.path(name), data.path(name)
    if _is_local(src):
      if not os.path.lexists(src):
        continue
      if os.path.isdir(dst) and not os.path.islink(dst):
        _delete_tree(dst)
      os.replace(src, dst)
      continue
    files = _files_under(src) if not FileSystems.exists(src) else [src]
    if files:
      _delete_tree(dst)
      FileSystems.rename(files, [dst + f[len(src):] for f in files])


def _write_metadata(staging: PreprocessedData, data: PreprocessedData,
                    metadata: Dict) -> None:
  """The completion marker: written whole in staging, then moved into place (a rename,
  or one object created on gs://), so it is never seen half written."""
  spec_lib.write_text(staging.metadata_path, json.dumps(metadata, indent=1))
  if _is_local(staging.metadata_path):
    os.replace(staging.metadata_path, data.metadata_path)
  else:
    FileSystems.rename([staging.metadata_path], [data.metadata_path])


def _read_json_lines(pattern: str) -> List:
  rows = []
  for m in FileSystems.match([pattern])[0].metadata_list:
    with FileSystems.open(m.path) as f:
      rows.extend(json.loads(line) for line in f.read().decode().splitlines() if line)
  return rows


SIDE_RESULTS = "side_results"


def _read_side_results(data: PreprocessedData) -> Dict[str, List]:
  """`T.WriteSideResults`' file: {name: [value, ...]} (a name with no value absent)."""
  out: Dict[str, List] = {}
  for name, value in _read_json_lines(_scratch(data, SIDE_RESULTS + "*")):
    out.setdefault(name, []).append(value)
  return out


def _scratch(data: PreprocessedData, name: str) -> str:
  """A side result's prefix in the scratch directory (removed at the end)."""
  return f"{data.scratch_dir}/{name}"


def build_pipeline(p: beam.Pipeline, config: PreprocessConfig,
                   spec: spec_lib.FeatureSpec, source: sources.Source,
                   inputs: sources.Inputs, progress_prefix: str = "") -> None:
  """Record batches (beam_jobs/transforms.py `Batch`) from the source through the
  derived features to the TFRecords, the vocabularies and the statistics."""
  data = PreprocessedData(config.output_dir)
  side_results: Dict[str, beam.PCollection] = {}  # small results the driver reads
  parsed = source.read(p, inputs, spec, config, progress_prefix)
  records = parsed[T.RECORDS]
  if not source.batched:
    records = records | "BatchRecords" >> T.Batched()
  _ = parsed[T.DEAD_LETTER] | "DeadLetter" >> T.WriteDeadLetter(data.dead_letter_prefix)
  if config.split_time_field:
    quantile = config.split_time_quantile
    if config.split_time_cutoff is None and quantile is None:
      quantile = 1.0 - config.eval_fraction
    records, cutoff = records | "SplitByTime" >> T.SplitByTime(
        config.split_time_field, config.split_time_cutoff, quantile)
    side_results["time_cutoff"] = cutoff
  records = records | "DerivedFeatures" >> T.AddDerivedFeatures(spec, data)
  splits = records | "Split" >> beam.Partition(
      lambda batch, _: 0 if batch[0] == TRAIN else 1, 2)
  for split, part in zip((TRAIN, EVAL), splits):
    tfds_prefix = (f"{data.tfds_dir}/{tfds_name(spec)}-{split}.tfrecord" if config.tfds
                   else None)
    shards = part | f"Write{split}" >> T.WriteExamples(
        spec, data.split_prefix(split), split, tfds_prefix, progress_prefix)
    if shards is not None:
      side_results[f"tfds_{split}"] = shards
  train = splits[0]
  side_results["vocab_sizes"], side_results["distinct"] = (
      train | "Vocabularies" >> T.ComputeVocabularies(spec, data))
  side_results["moments"] = train | "Moments" >> T.NumericMoments(spec)
  side_results["distribution"] = (records | "DistributionStats"
                                  >> T.DistributionStatistics(spec))
  _ = side_results | "SideResults" >> T.WriteSideResults(_scratch(data, SIDE_RESULTS))


def _counters(result) -> Dict[str, int]:
  counters = result.metrics().query(MetricsFilter().with_namespace(T.NAMESPACE))
  out = {}
  for c in counters["counters"]:
    value = c.committed if c.committed is not None else c.attempted
    out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
  return out


def reconcile(counters: Mapping[str, int]) -> Dict:
  """read = written + rejected for the rows (impressions), and read = joined + unused +
  rejected for each side file; returns those counts, raises CountersError naming the
  numbers when they do not add up (a row lost or counted twice)."""
  read = counters.get(base.ROWS_READ, 0)
  written = {s: counters.get(f"rows_written_{s}", 0) for s in SPLITS}
  rejected = counters.get(base.ROWS_REJECTED, 0)
  if read != written[TRAIN] + written[EVAL] + rejected:
    raise CountersError(f"counters do not reconcile: read {read} != written {written} + "
                        f"rejected {rejected}")
  side_files = _side_file_counts(counters)
  for kind, c in side_files.items():
    if c["read"] != c["joined"] + c["unused"] + c["rejected"]:
      raise CountersError(f"{kind} counters do not reconcile: read {c['read']} != "
                          f"joined {c['joined']} + unused {c['unused']} + rejected "
                          f"{c['rejected']}")
  return {"rows_read": read, "rows_written": written, "rows_rejected": rejected,
          "side_files": side_files}


def run(config: PreprocessConfig, beam_args: Optional[Sequence[str]] = None) -> Dict:
  """Runs the job; returns the metadata also written as the completion marker."""
  config.validate()  # before anything is read or touched
  with quiet_libraries(verbose()):
    return _run(config, beam_args)


def verbose() -> bool:
  """Library logs wanted: absl's --verbosity at INFO or above (the CLI's default is
  WARNING)."""
  from absl import logging as absl_logging
  return absl_logging.get_verbosity() >= absl_logging.INFO


@contextlib.contextmanager
def quiet_libraries(verbose: bool = False):
  """Beam's INFO/WARNING lines (per bundle and worker, harness start-up, pickling
  notes) and Python warnings from its modules would bury the job's own output: they
  are silenced at their loggers for the run, unless `verbose`."""
  if verbose:
    yield
    return
  loggers = {name: logging.getLogger(name) for name in _NOISY_LOGGERS}
  levels = {name: lg.level for name, lg in loggers.items()}
  for lg in loggers.values():
    lg.setLevel(logging.ERROR)
  with warnings.catch_warnings():
    for module in ("apache_beam", "google", "tensorflow_datasets"):
      warnings.filterwarnings("ignore", module=module)
    try:
      yield
    finally:
      for name, lg in loggers.items():
        lg.setLevel(levels[name])


_NOISY_LOGGERS = ("apache_beam", "google", "tensorflow_datasets")


def _run(config: PreprocessConfig, beam_args: Optional[Sequence[str]]) -> Dict:
  spec = spec_lib.load_spec(config.spec_path)
  if config.split_key and config.split_key not in spec.names:
    raise PreprocessError(f"--split_key {config.split_key!r} is not a field of "
                          f"{spec.source}")
  _check_split_flags(config, spec)
  source = sources.get(config.source)
  data = PreprocessedData(config.output_dir)
  check_raw_outside_outputs(config.raw, data)  # before any input is even read
  inputs = source.resolve(config, spec)
  check_inputs_outside_outputs(inputs, data, config.spec_path)

  # Nothing was touched so far. The completion marker goes first, then the leftovers.
  _delete_tree(data.metadata_path)
  stale = _remove_stale(data)
  if stale:
    logging.info("removed a previous run's temporary files: %s", stale)
  _clear(data, config.spec_path)
  staging = PreprocessedData(data.path(f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"))
  try:
    metadata = _run_staged(config, beam_args, spec, source, inputs, staging)
    _publish(staging, data)
    _write_metadata(staging, data, metadata)  # last
  except BaseException:
    for cleanup in (lambda: _delete_tree(staging.data_dir),
                    lambda: _clear(data, config.spec_path)):
      try:
        cleanup()
      except Exception as e:  # the original error matters more; say what is left.
        logging.error("could not remove the failed run's files in %s: %s",
                      data.data_dir, e)
    raise
  _delete_tree(staging.data_dir)
  return metadata


def local_runner(options: PipelineOptions):
  """The local runner of a job given no --runner: the engine Beam's DirectRunner runs
  a batch pipeline on (the FnApiRunner, in-process or with --direct_num_workers
  processes), set up as the DirectRunner sets it up. Named explicitly because the
  DirectRunner first tries to download and start the Prism runner: where the network
  allows, the job would run on another engine than the one tested here, and where it
  does not, the attempt costs half a second per job."""
  from apache_beam.portability.api import beam_provision_api_pb2
  from apache_beam.runners.portability.fn_api_runner import fn_runner
  from apache_beam.runners.portability.portable_runner import JobServiceHandle
  encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
  return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
      beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def _run_staged(config: PreprocessConfig, beam_args: Optional[Sequence[str]],
                spec: spec_lib.FeatureSpec, source: sources.Source,
                inputs: sources.Inputs, data: PreprocessedData) -> Dict:
  """The pipeline, writing into `data` (the staging directory), and the statistics;
  returns the metadata."""
  spec.save(data.spec_path)
  args = list(beam_args or [])
  runner_given = any(a.startswith("--runner") for a in args)
  if config.direct_num_workers > 1 and not any("direct_num_workers" in a for a in args):
    args += ["--direct_running_mode=multi_processing",
             f"--direct_num_workers={config.direct_num_workers}"]
  if not any("sdk_harness_log_level" in a for a in args) and not verbose():
    args.append("--default_sdk_harness_log_level=ERROR")
  options = PipelineOptions(args)
  pipeline = beam.Pipeline(runner=None if runner_given else local_runner(options),
                           options=options)
  progress_prefix = _scratch(data, "progress")
  build_pipeline(pipeline, dataclasses.replace(config, output_dir=data.data_dir), spec,
                 source, inputs, progress_prefix)
  with ProgressPrinter(progress_prefix) as progress:
    result = pipeline.run()
    result.wait_until_finish()

  counters = _counters(result)
  counts = reconcile(counters)
  progress.final(counts)
  side = _read_side_results(data)
  time_cutoff = None
  if config.split_time_field:
    time_cutoff = side["time_cutoff"][0]
  if config.tfds:
    write_tfds_metadata(data, spec, {s: side.get(f"tfds_{s}", []) for s in SPLITS})
  stats = _assemble_stats(data, spec, counters, side)
  metadata = {
      "spec": spec.name,
      "source": config.source,
      "raw": list(inputs.paths),
      "raw_matched_twice": list(inputs.duplicates),  # read once each
      "input_format": inputs.input_format,
      "rows_read": counts["rows_read"],
      "rows_written": counts["rows_written"],
      "rows_rejected": counts["rows_rejected"],
      "eval_fraction": config.eval_fraction,
      "split_key": config.split_key,
      "split_time_field": config.split_time_field,
      "split_time_cutoff": time_cutoff,
      "side_files": counts["side_files"],
      "tfds": f"{data.TFDS_DIR}/" if config.tfds else None,
      "vocab_sizes": stats["vocab_sizes"],
      "tables": {f.name: data.table_relpath(f.name) for f in spec.derived_fields
                 if f.derived.has_table},
  }
  spec_lib.write_text(data.stats_path, json.dumps(stats, indent=1, sort_keys=True))
  return metadata


class ProgressPrinter:
  """Prints rows read / written / rejected and rows/s every `every_s` seconds while the
  Beam job runs, from the files the workers' `Progress` writes (the DirectRunner's
  counters are only known at the end), then one final line from the counters."""

  def __init__(self, prefix: str, every_s: Optional[float] = None, out=None):
    self._prefix = prefix
    self._every = PROGRESS_EVERY_S if every_s is None else every_s
    self._out = out or sys.stdout
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, daemon=True,
                                    name="preprocess-progress")

  def __enter__(self):
    self._start = time.monotonic()
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join(timeout=5)
    self.seconds = time.monotonic() - self._start

  def counts(self) -> Dict[str, int]:
    totals: Dict[str, int] = {}
    try:
      found = FileSystems.match([f"{self._prefix}-*.json"])[0].metadata_list
    except Exception:  # nothing written yet
      return totals
    for m in found:
      try:
        with FileSystems.open(m.path) as f:
          counts = json.loads(f.read().decode("utf-8"))
      except (OSError, ValueError):  # being rewritten: the next poll reads it
        continue
      for k, v in counts.items():
        totals[k] = totals.get(k, 0) + int(v)
    return totals

  def _loop(self):
    while not self._stop.wait(self._every):
      c = self.counts()
      if not c:
        continue
      elapsed = time.monotonic() - self._start
      self._print(f"preprocess: {elapsed:5.0f}s  read {c.get('read', 0):,}  written "
                  f"{c.get('written', 0):,}  rejected {c.get('rejected', 0):,}  "
                  f"{c.get('read', 0) / max(elapsed, 1e-9):,.0f} rows/s")

  def final(self, counts: Mapping) -> None:
    read = counts["rows_read"]
    written = sum(counts["rows_written"].values())
    self._print(f"preprocess: Beam job done in {self.seconds:.1f}s: read {read:,}  "
                f"written {written:,}  rejected {counts['rows_rejected']:,}  "
                f"{read / max(self.seconds, 1e-9):,.0f} rows/s")

  def _print(self, line: str) -> None:
    print(line, file=self._out, flush=True)


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
                    counters: Dict, side: Dict[str, List]) -> Dict:
  vocab_sizes = dict(side.get("vocab_sizes", []))
  for f in spec.vocabulary_fields:  # a field whose every value was rare: empty vocab.
    if f.name not in vocab_sizes:
      spec_lib.write_text(data.vocab_path(f.name), "")
      vocab_sizes[f.name] = 0
  for f in spec.derived_fields:  # no training row at all: an empty table, all unseen.
    path = data.table_path(f.name)
    if f.derived.has_table and not FileSystems.exists(path):
      spec_lib.write_text(path, "")
  distribution: Dict = {}
  for (split, field, value), (rows, clicks) in side.get("distribution", []):
    cell = distribution.setdefault(split, {}).setdefault(field, {})
    cell[value] = {"rows": rows, "clicks": clicks, "ctr": clicks / rows if rows else 0.0}
  stats = {
      "vocab_sizes": vocab_sizes,
      "distinct_train": dict(side.get("distinct", [])),
      "numeric": dict(side.get("moments", [])),
      "missing": {f.name: counters.get(f"missing_{f.name}", 0) for f in spec.raw_fields},
      "distribution": distribution,
  }
  found = FileSystems.match([_scratch(data, "*")])[0].metadata_list
  FileSystems.delete([m.path for m in found])
  return stats
