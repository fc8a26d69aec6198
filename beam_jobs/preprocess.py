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

The pieces live beside it: `input_safety` (the checks before anything is touched),
`local_runner` (the runner and the progress lines), `counters`, `tfds_metadata`, and
`features.preprocessed.PreprocessedData` (staging and publishing).
"""
import dataclasses
import errno
import json
import logging
import os
import re
from typing import Dict, List, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from absl import logging as absl_logging

from hmdn.beam_jobs import sources
from hmdn.beam_jobs.config import PreprocessConfig, PreprocessError
# run() raises CountersError
from hmdn.beam_jobs.counters import CountersError, job_counters, reconcile
from hmdn.beam_jobs.input_safety import (check_inputs_outside_outputs,
                                         check_raw_outside_outputs, check_split_flags)
from hmdn.beam_jobs.local_runner import ProgressPrinter, local_runner
from hmdn.beam_jobs.sources import base
from hmdn.beam_jobs.tfds_metadata import tfds_name, write_tfds_metadata
from hmdn.beam_jobs.transforms.batches import DEAD_LETTER, RECORDS, Batched
from hmdn.beam_jobs.transforms.derived import AddDerivedFeatures
from hmdn.beam_jobs.transforms.history import AddSpecHistories
from hmdn.beam_jobs.transforms.side_results import WriteDeadLetter, WriteSideResults
from hmdn.beam_jobs.transforms.statistics import (DistributionStatistics, NumericMoments,
                                                  SequenceLengths, sequence_statistics)
from hmdn.beam_jobs.transforms.time_split import SplitByTime
from hmdn.beam_jobs.transforms.tfrecord_sink import WriteExamples
from hmdn.beam_jobs.transforms.vocabularies import ComputeVocabularies
from hmdn.features import locks, ownership
from hmdn.features import spec as spec_lib
from hmdn.features.fileio import short
from hmdn.features.preprocessed import EVAL, SPLITS, TRAIN, PreprocessedData, delete_tree
from hmdn.features.quiet import quiet_libraries

STAGING_PREFIX = PreprocessedData.STAGING_PREFIX
SIDE_RESULTS = "side_results"


def _read_json_lines(pattern: str) -> List:
  rows = []
  for m in FileSystems.match([pattern])[0].metadata_list:
    with FileSystems.open(m.path) as f:
      rows.extend(json.loads(line) for line in f.read().decode().splitlines() if line)
  return rows


def _read_side_results(data: PreprocessedData) -> Dict[str, List]:
  """`WriteSideResults`' file: {name: [value, ...]} (a name with no value absent)."""
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
  """Record batches (`beam_jobs.transforms.batches.Batch`) from the source through the
  derived features to the TFRecords, the vocabularies and the statistics."""
  data = PreprocessedData(config.output_dir)
  side_results: Dict[str, beam.PCollection] = {}  # small results the driver reads
  parsed = source.read(p, inputs, spec, config, progress_prefix)
  records = parsed[RECORDS]
  if not source.batched:
    records = records | "BatchRecords" >> Batched()
  if config.split_time_field:
    quantile = config.split_time_quantile
    if config.split_time_cutoff is None and quantile is None:
      quantile = 1.0 - config.eval_fraction
    records, cutoff = records | "SplitByTime" >> SplitByTime(
        config.split_time_field, config.split_time_cutoff, quantile)
    side_results["time_cutoff"] = cutoff
  records = records | "DerivedFeatures" >> AddDerivedFeatures(spec, data)
  dead_letter = parsed[DEAD_LETTER]
  if spec.history_groups:
    # Keyed and time-ordered, after the derived tables: their row-by-row joins would
    # carry every history. A row whose order_by is not a finite number would go to
    # the dead letter here, but none reaches it: order_by is a required numeric field
    # (no default), so the parser rejects such a row first.
    records, rejected = records | "Histories" >> AddSpecHistories(spec)
    dead_letter = ([dead_letter] + rejected) | "FlattenDeadLetters" >> beam.Flatten()
  _ = dead_letter | "DeadLetter" >> WriteDeadLetter(data.dead_letter_prefix)
  splits = records | "Split" >> beam.Partition(
      lambda batch, _: 0 if batch[0] == TRAIN else 1, 2)
  for split, part in zip((TRAIN, EVAL), splits):
    tfds_prefix = (f"{data.tfds_dir}/{tfds_name(spec)}-{split}.tfrecord" if config.tfds
                   else None)
    shards = part | f"Write{split}" >> WriteExamples(
        spec, data.split_prefix(split), split, tfds_prefix, progress_prefix)
    if shards is not None:
      side_results[f"tfds_{split}"] = shards
  train = splits[0]
  side_results["vocab_sizes"], side_results["distinct"] = (
      train | "Vocabularies" >> ComputeVocabularies(spec, data))
  side_results["moments"] = train | "Moments" >> NumericMoments(spec)
  side_results["distribution"] = (records | "DistributionStats"
                                  >> DistributionStatistics(spec))
  if spec.sequence_fields:
    side_results["sequences"] = records | "SequenceLengths" >> SequenceLengths(spec)
  _ = side_results | "SideResults" >> WriteSideResults(_scratch(data, SIDE_RESULTS))


def run(config: PreprocessConfig, beam_args: Optional[Sequence[str]] = None,
        require_splits: bool = False) -> Dict:
  """Runs the job; returns the metadata also written as the completion marker. A job
  that writes no row at all is a PreprocessError (with the commonest reasons its rows
  were rejected) and leaves no data directory; with `require_splits` (the CLI) so is a
  split with no row (nothing to train on, or nothing to evaluate)."""
  config.validate()  # before anything is read or touched
  with quiet_libraries(verbose()):
    return _run(config, beam_args, require_splits)


def verbose() -> bool:
  """Library logs wanted: absl's --verbosity at INFO or above (the CLI's default is
  WARNING)."""
  return absl_logging.get_verbosity() >= absl_logging.INFO


def _run(config: PreprocessConfig, beam_args: Optional[Sequence[str]],
         require_splits: bool = False) -> Dict:
  spec = spec_lib.load_spec(config.spec_path)
  if config.split_key and config.split_key not in spec.names:
    raise PreprocessError(f"--split_key {config.split_key!r} is not a field of "
                          f"{spec.source}")
  check_split_flags(config, spec)
  check_history_split(config, spec)
  source = sources.get(config.source)
  data = PreprocessedData(config.output_dir)
  check_raw_outside_outputs(config.raw, data)  # before any input is even read
  inputs = source.resolve(config, spec)
  check_inputs_outside_outputs(inputs, data, config.spec_path)
  with locks.held(data.data_dir, "--data_dir"):  # one writer; refused before any write
    _claim(data, config)
    return _run_owned(config, beam_args, spec, source, inputs, data, require_splits)


def check_history_split(config: PreprocessConfig, spec: spec_lib.FeatureSpec) -> None:
  """A time split on another field than a history's order_by is refused: only a split
  on the history's own time keeps every eval row out of the training rows'
  histories (transforms/history.py)."""
  if not config.split_time_field:
    return
  for f in spec.features:
    if f.is_history and f.derived.order_by != config.split_time_field:
      raise PreprocessError(
          f"--split_time_field={config.split_time_field}: history {f.name!r} is ordered "
          f"by {f.derived.order_by!r}; split on the same time "
          f"(--split_time_field={f.derived.order_by}) so that no training row's history "
          "holds an eval row")


def _claim(data: PreprocessedData, config: PreprocessConfig) -> None:
  """The data directory is new, empty or ours (`features.ownership`); a complete one
  is replaced only with --overwrite."""
  ours = ownership.claim(data.data_dir, ownership.DATA, "--data_dir",
                         signature=_older_output, own=data.is_output_name)
  if ours and data.is_complete() and not config.overwrite:
    raise PreprocessError(
        f"--data_dir={data.data_dir} holds a complete output of an earlier `hmdn "
        "preprocess`; pass --overwrite to replace it, or use another --data_dir")


def _older_output(name: str) -> bool:
  """An entry only hmdn writes: an unmarked directory holding one is an output of an
  earlier version (complete: the metadata; killed: a staging directory)."""
  return name == PreprocessedData.METADATA_FILE or name.startswith(STAGING_PREFIX)


def _run_owned(config: PreprocessConfig, beam_args: Optional[Sequence[str]],
               spec: spec_lib.FeatureSpec, source: sources.Source,
               inputs: sources.Inputs, data: PreprocessedData,
               require_splits: bool) -> Dict:
  """The run in a data directory this process holds (locked and claimed)."""
  # Nothing was touched so far. The completion marker goes first, then the leftovers.
  delete_tree(data.metadata_path)
  stale = data.remove_stale()
  if stale:
    logging.info("removed a previous run's temporary files: %s", stale)
  data.clear(keep_spec=_is_own_spec(data, config.spec_path))
  staging = data.staging()
  try:
    metadata = _run_staged(config, beam_args, spec, source, inputs, staging)
    refusal = _no_rows(config, metadata, staging, require_splits)
    if refusal:
      raise PreprocessError(refusal)
    data.publish_from(staging)
    data.write_metadata(metadata)  # last
  except BaseException:
    for cleanup in (lambda: delete_tree(staging.data_dir),
                    lambda: data.clear(keep_spec=_is_own_spec(data, config.spec_path)),
                    lambda: ownership.unclaim_if_empty(data.data_dir)):
      try:
        cleanup()
      except Exception as e:  # the original error matters more; say what is left.
        logging.error("could not remove the failed run's files in %s: %s",
                      data.data_dir, e)
    raise
  delete_tree(staging.data_dir)
  return metadata


TOP_REASONS = 3  # the commonest dead-letter reasons quoted when no row was written


def _no_rows(config: PreprocessConfig, metadata: Dict, staging: PreprocessedData,
             require_splits: bool) -> Optional[str]:
  """Why the job's output is unusable (no row written; with `require_splits` a split
  without a row), or None."""
  written, read = metadata["rows_written"], metadata["rows_read"]
  if not sum(written.values()):
    if not read:
      return f"--raw={config.raw}: no row to read (the input holds no data line)"
    reasons = _top_reasons(staging)
    return (f"no row written: all {read:,} rows read were rejected"
            + (f"; commonest reasons: {reasons}" if reasons else ""))
  if not require_splits:
    return None
  for split, other in ((TRAIN, EVAL), (EVAL, TRAIN)):
    if not written[split]:
      return (f"no {split} row: {_split_flags(config)} put all {written[other]:,} "
              f"written rows in the {other} split; choose a split that leaves rows in "
              "both")
  return None


def _split_flags(config: PreprocessConfig) -> str:
  if config.split_time_field:
    where = (f"--split_time_cutoff={config.split_time_cutoff}"
             if config.split_time_cutoff is not None else
             f"--split_time_quantile={config.split_time_quantile}"
             if config.split_time_quantile is not None else
             f"--eval_fraction={config.eval_fraction}")
    return f"--split_time_field={config.split_time_field} {where}"
  return f"--eval_fraction={config.eval_fraction}" + (
      f" --split_key={config.split_key}" if config.split_key else "")


def _top_reasons(data: PreprocessedData) -> str:
  """The commonest reasons in the dead letter: '"reason" (n rows); ...'."""
  found = FileSystems.match([f"{data.dead_letter_prefix}-*"])[0].metadata_list
  counts: Dict[str, int] = {}
  for m in found:
    with FileSystems.open(m.path) as f:
      for line in f.read().decode("utf-8").splitlines():
        if line.strip():
          reason = json.loads(line).get("reason", "?")
          counts[reason] = counts.get(reason, 0) + 1
  top = sorted(counts.items(), key=lambda kv: -kv[1])[:TOP_REASONS]
  return "; ".join(f"{short(r, 120)} ({n:,} rows)" for r, n in top)


# Beam's runners re-raise a worker's exception as text: "OSError: [Errno 28] No space
# left on device [while running 'Writetrain/...']".
_WORKER_OS_ERROR = re.compile(r"\b\w*Error: \[Errno (\d+)\] ([^\[\]]+?)\s*"
                              r"(?:\[while running '([^']*)'\])?\s*$")
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def worker_os_error(error: BaseException, directory: str) -> Optional[OSError]:
  """A storage fault of a Beam worker (full disk, read-only, permission) as the OSError
  it was, on the directory being written (the worker's path is lost in the text)."""
  match = _WORKER_OS_ERROR.search(str(error).strip())
  if not match or int(match.group(1)) not in STORAGE_ERRNOS:
    return None
  step = f" (while running {match.group(3)})" if match.group(3) else ""
  return OSError(int(match.group(1)), match.group(2) + step, directory)


def _is_own_spec(data: PreprocessedData, spec_path: str) -> bool:
  """The data directory's spec file is this run's --spec (replaced at the end)."""
  return base.path_key(spec_path or ".") == base.path_key(data.spec_path)


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
    try:
      result = pipeline.run()
      result.wait_until_finish()
    except Exception as e:  # a worker's full disk arrives as RuntimeError("OSError: ...")
      os_error = worker_os_error(e, os.path.dirname(data.data_dir))  # (not staging)
      if os_error is None:
        raise
      raise os_error from e

  counters = job_counters(result)
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
      # None when a time cutoff or quantile sets the split (the fraction is unused).
      "eval_fraction": None if config.split_time_field and (
          config.split_time_cutoff is not None
          or config.split_time_quantile is not None) else config.eval_fraction,
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


def value_statistics(spec: spec_lib.FeatureSpec, rows: int, positives: Sequence[int]
                     ) -> Dict:
  """One distribution value's statistics: rows, the first label's clicks and CTR, and
  with several labels each task's positives and rate over all rows; a task `after`
  another also its rate over that one's positives (CVR over clicks; its rate over all
  rows is ESMM's CTCVR)."""
  first = positives[0]
  out = {"rows": rows, "clicks": first, "ctr": first / rows if rows else 0.0}
  if len(spec.labels) > 1:
    count = {f.name: n for f, n in zip(spec.labels, positives)}
    tasks = {}
    for f in spec.labels:
      task = {"positives": count[f.name], "rate": count[f.name] / rows if rows else 0.0}
      if f.after is not None:
        before = count[f.after]
        task["rate_after"] = count[f.name] / before if before else 0.0
      tasks[f.name] = task
    out["tasks"] = tasks
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
  for (split, field, value), (rows, *positives) in side.get("distribution", []):
    cell = distribution.setdefault(split, {}).setdefault(field, {})
    cell[value] = value_statistics(spec, rows, positives)
  stats = {
      "vocab_sizes": vocab_sizes,
      "distinct_train": dict(side.get("distinct", [])),
      "numeric": dict(side.get("moments", [])),
      "missing": {f.name: counters.get(f"missing_{f.name}", 0) for f in spec.raw_fields},
      "distribution": distribution,
  }
  if spec.sequence_fields:
    stats["sequences"] = sequence_statistics(spec, dict(side.get("sequences", [])),
                                             counters)
  found = FileSystems.match([_scratch(data, "*")])[0].metadata_list
  FileSystems.delete([m.path for m in found])
  return stats
