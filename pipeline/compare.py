"""`hmdn compare`: models x seeds on one data directory -> a report directory.

Every model is trained with the same data, splits, batch, learning rate, epochs and
seeds (the `TrainConfig` given), so the differences are the models'. An HMDN variant is
compared, seed by seed (paired), with every variant of its own backbone in the list:
the paper's single-distribution baseline (`condition=coarsest`) and the stronger ones
(`all`, `cross`). The report directory holds:

  results.json     every run's metrics (overall, per leaf-size decile, code NMI; with
                   several tasks "tasks": {task: the same per task, "<task>_cvr"
                   over an after task's prerequisite positives}, "deltas_by_task" for
                   the tasks after the first)
  report.md        tables: mean ± std, paired ΔAUC, AUC per leaf-size decile, AUC vs D,
                   NMI of each level's codes with every distribution / passthrough field
                   (several tasks: an AUC column per task, paired ΔAUC and deciles
                   per task after the first)
  *.png            the same as plots (paired Δ, deciles, depth, code heat maps)
  runs/<model>/seed_<s>/   each run directory (`file_name(model)`: `:` -> `__`, `|` -> `+`)

A model is written `NAME` or `NAME:key=value:key=value` with ModelConfig overrides,
e.g. `hmdn_moe:num_levels=6:extraction=explicit`; list values are joined by `|`
(`implicit_fields=user_id|device`). Model options given as flags (`--num_levels=6`)
apply to every model of the list, under each variant's own overrides.
"""
import dataclasses
import json
import os
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from hmdn.features import locks, options, ownership
from hmdn.features.options import option, validate
from hmdn.features import spec as spec_lib
from hmdn.features.fileio import write_json_atomic, write_text_atomic
from hmdn.features.preprocessed import TRAIN, PreprocessedData, delete_tree
from hmdn.models.tasks import tasks_of
from hmdn.pipeline import callbacks, evaluate, metrics, run_length, train
from hmdn.pipeline.compare_report import (depth_table, markdown, paired_deltas,
                                          plots, task_names)
from hmdn.pipeline.variants import file_name, is_hmdn, parse_variant

@dataclasses.dataclass
class CompareConfig:
  """What `hmdn compare` trains and where the report goes (each run's training options
  are the TrainConfig's, its model options the ModelConfig's under the variant's)."""
  report_dir: str = option(help="compare: where report.md, plots and runs go.")
  models: str = option("moe,hmdn_moe", "compare: models, comma-separated; NAME or "
                       "NAME:option=value:... (ModelConfig options).")
  seeds: Tuple[int, ...] = option((0, 1, 2), "compare: training seeds.", minimum=0)

  def __post_init__(self):
    self.seeds = tuple(self.seeds)

  @property
  def labels(self) -> List[str]:
    return [m for m in self.models.split(",") if m]

  def validate(self) -> "CompareConfig":
    """The declared rules, then: a model and a seed at least, none twice."""
    validate(self)
    for flag, values in (("models", self.labels), ("seeds", self.seeds)):
      if not values:
        raise ValueError(f"--{flag}={getattr(self, flag)!r}: expected at least one")
      if len(set(values)) != len(values):
        raise ValueError(f"--{flag}={getattr(self, flag)!r}: expected each once")
    return self


def refuse_unused_flags(base, labels: Sequence[str], given: Sequence[str]) -> None:
  """A model flag given on the command line applies to every model of the list under
  its own overrides; one that no model of the list uses is refused."""
  configs = [run_config(base, label, 0, "").model for label in labels]
  for flag in given:
    if configs and all(
        flag not in options.values_by_flag(c, applicable_only=True) for c in configs):
      try:
        options.refuse_inapplicable(configs[0], [flag])
      except ValueError as e:
        raise ValueError(f"{e} (nor to any other model of --models)") from None


def leaf_key(columns: Dict[str, np.ndarray], spec: spec_lib.FeatureSpec) -> np.ndarray:
  """Each row's finest observed distribution: its values of every distribution field."""
  names = [f.name for f in spec.distribution_fields]
  parts = [np.char.decode(columns[n].astype(bytes), "utf-8") if columns[n].dtype.kind in
           "SO" else columns[n].astype(str) for n in names]
  key = parts[0].astype(object)
  for part in parts[1:]:
    key = key + "|" + part.astype(object)
  return key.astype(str)


def train_leaf_sizes(data: PreprocessedData) -> Dict[str, int]:
  """Rows of each observed leaf in the training split (one pass, those columns only)."""
  spec = data.spec
  names = [f.name for f in spec.distribution_fields]
  parse_spec = {k: v for k, v in spec.parsing_spec().items() if k in names}
  ds = tf.data.TFRecordDataset(data.split_files(TRAIN), compression_type="GZIP")
  ds = ds.batch(8192).map(lambda s: tf.io.parse_example(s, parse_spec))
  keys = [leaf_key({n: batch[n].numpy() for n in names}, spec) for batch in ds]
  return metrics.group_sizes(np.concatenate(keys) if keys else np.array([], str))


_KEPT = ("auc", "logloss", "gauc", "oracle_auc")


def _summarise(result: Dict, columns: Dict[str, np.ndarray], spec, sizes) -> Dict:
  """What the report keeps of one run's evaluation (each task's too: its AUCs and its
  leaf-size deciles, a CVR's over the prerequisite's positives, leaves sized by their
  training rows)."""
  labels = columns[spec.label.name]
  probs = columns["probability"]
  out = {k: result[k] for k in _KEPT if k in result}
  leaves = leaf_key(columns, spec) if spec.distribution_fields else None
  if leaves is not None:
    out["deciles"] = metrics.leaf_size_deciles(labels, probs, leaves, sizes)
  if "tasks" in result:
    out["tasks"] = {}
    figures = evaluate.task_results(result)
    for task in tasks_of(spec):
      scored = {task.name: (None, columns[f"probability_{task.name}"])}
      if task.after is not None:
        scored[task.name + evaluate.CVR_SUFFIX] = (
            np.asarray(columns[task.after_name]).ravel() == 1,
            columns[f"probability_{task.given}"])
      for name, (rows, p) in scored.items():
        out["tasks"][name] = {k: figures[name][k] for k in _KEPT if k in figures[name]}
        if leaves is not None:
          keep = slice(None) if rows is None else rows
          out["tasks"][name]["deciles"] = metrics.leaf_size_deciles(
              np.asarray(columns[task.name]).ravel()[keep], p[keep], leaves[keep], sizes)
  if "codes" in result:
    out["codes"] = {name: {"perplexity": c["perplexity"], "dead_share": c["dead_share"],
                           "nmi": c["nmi"]} for name, c in result["codes"].items()}
  return out


def run_config(base, label: str, seed: int, report_dir: str):
  """The TrainConfig of one run: the base's model options (the command line's model
  flags) under the variant's overrides, in the report's own run directory."""
  name, overrides = parse_variant(label)
  model_config = options.with_values(dataclasses.replace(base.model, name=name, seed=seed),
                                     overrides)
  return dataclasses.replace(  # the run directories are the report's own outputs
      base, model=model_config, seed=seed, overwrite=True,
      model_dir=os.path.join(report_dir, "runs", file_name(label), f"seed_{seed}"))


def run_one(base, label: str, seed: int, report_dir: str, sizes: Dict[str, int]) -> Dict:
  """Trains one model with one seed and scores it on the eval split."""
  config = run_config(base, label, seed, report_dir)
  model_config = config.model
  tf.keras.backend.clear_session()
  start = time.time()
  model = train.train(config)
  seconds = time.time() - start
  data = PreprocessedData(base.data_dir)
  columns = evaluate.collect(evaluate.model_predictor(model, data.spec), data, data.spec)
  result = evaluate.compute_metrics(columns, data.spec, model_config.codebook_size
                                    if model_config.is_hmdn else None,
                                    model_config.code_views)
  summary = _summarise(result, columns, data.spec, sizes)
  summary.update(seconds=seconds, seed=seed)
  return summary


def run(base, labels: Sequence[str], seeds: Sequence[int], report_dir: str,
        log=print, follow_codebook_warmup_steps: bool = False) -> Dict:
  """Trains every model with every seed (seeds outermost, so machine drift hits all
  models alike), then writes results.json, report.md and the plots.
  `follow_codebook_warmup_steps`: the codebook warm-up was not set on the command line,
  so runs shorter than it needs follow their length, as `hmdn train` does (a variant's
  own `codebook_warmup_steps` is kept)."""
  repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
  if repeated:
    raise ValueError(f"--seeds={','.join(map(str, seeds))}: seed {repeated[0]} is listed "
                     "twice (one run counted twice; its spread would be understated)")
  variants: Dict[str, str] = {}
  for label in labels:  # the same model twice, in any spelling (options in another
    # order, one at its default): its runs would be reported as two models, each
    # paired with the other
    resolved = run_config(base, label, seeds[0] if seeds else 0, report_dir).model
    key = json.dumps(options.to_record(resolved), sort_keys=True, default=str)
    if key in variants:
      raise ValueError(f"--models: {label!r} is the same model as {variants[key]!r} "
                       "(its options resolve to the same config; listed twice)")
    variants[key] = label
  CompareConfig(report_dir, ",".join(labels), tuple(seeds)).validate()
  data = PreprocessedData(base.data_dir).check_complete()
  steps = run_length.steps_per_epoch(base, data.rows(TRAIN))
  followed = run_length.followed_codebook_warmup(base, steps)
  if follow_codebook_warmup_steps and followed is not None and any(
      is_hmdn(label) for label in labels):
    base = run_length.with_codebook_warmup(base, steps, followed,
                                           log=lambda line, **_: log(line))
  callbacks.check_select_by(base.select_by, tasks_of(data.spec))
  for label in labels:  # every bad model or option fails before the first run
    config = run_config(base, label, seeds[0], report_dir)
    config.model.validate().check_tasks(tasks_of(data.spec)).check_sequences(data.spec)
    run_length.check_quantizer_starts(config, steps)
  with locks.held(report_dir, "--report_dir"):
    claim_report(report_dir, base.overwrite)
    return _run_held(base, labels, seeds, report_dir, log, data)


REPORT_FILES = ("results.json", "report.md")
RUNS_DIR = "runs"


def _is_report_entry(name: str) -> bool:
  return name in REPORT_FILES + (RUNS_DIR,) or name.endswith(".png") or name.endswith(
      ".tmp")


def claim_report(report_dir: str, overwrite: bool) -> None:
  """The report directory is new, empty or a report of ours; an earlier report is
  replaced whole (its runs too) with --overwrite, refused without it."""
  if not ownership.claim(report_dir, ownership.REPORT, "--report_dir",
                         signature=REPORT_FILES, own=_is_report_entry):
    return
  if not overwrite:
    raise ValueError(f"--report_dir={report_dir} holds an earlier report; pass "
                     "--overwrite to replace it (and its runs), or use another "
                     "--report_dir")
  for name in ownership.user_entries(report_dir):
    if _is_report_entry(name):
      delete_tree(os.path.join(report_dir, name))


def _run_held(base, labels: Sequence[str], seeds: Sequence[int], report_dir: str, log,
              data: PreprocessedData) -> Dict:
  """`run` once the report directory is held."""
  sizes = train_leaf_sizes(data) if data.spec.distribution_fields else {}
  results: Dict[str, List[Dict]] = {label: [] for label in labels}
  oracle = None
  for seed in seeds:
    for label in labels:
      r = run_one(base, label, seed, report_dir, sizes)
      results[label].append(r)
      oracle = r.get("oracle_auc", oracle)
      aucs = (" ".join(f"{name} {m['auc']:.4f}" for name, m in r["tasks"].items())
              if "tasks" in r else f"{r['auc']:.4f}")  # several tasks: each one's
      log(f"compare: seed {seed} {label:<28} AUC {aucs} ({r['seconds']:.0f} s)")
      write_json_atomic(os.path.join(report_dir, "results.json"), results)
  summary = {"data_dir": data.data_dir, "train_rows": data.rows(TRAIN),
             "eval_rows": data.rows("eval"), "epochs": base.epochs,
             "batch_size": base.batch_size, "learning_rate": base.learning_rate,
             "seeds": list(seeds), "deterministic": base.deterministic,
             "oracle_auc": oracle, "results": results,
             "deltas": paired_deltas(results, labels), "depth": depth_table(results)}
  tasks = task_names(summary)  # after the first, whose deltas are "deltas"
  if tasks:
    summary["deltas_by_task"] = {name: paired_deltas(results, labels, name)
                                 for name in tasks}
  summary["plots"] = plots(summary, report_dir)
  write_json_atomic(os.path.join(report_dir, "results.json"), summary)
  write_text_atomic(os.path.join(report_dir, "report.md"), markdown(summary))
  return summary
