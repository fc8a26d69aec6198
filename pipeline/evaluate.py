"""Evaluation: one pass over the eval split, exact metrics overall and per distribution.

`run(predictor, data)` is the one evaluation path (train summary, the per-epoch
callback, `hmdn evaluate` / `hmdn run`, the benchmarks). A predictor takes serialized
tf.Example and returns the serving outputs; for an in-memory model it is the export's
own serving function (`export.ServingModule.serve_examples`), for an export its
`serving_default` signature, so the same code literally scores both.

The result (`compute_metrics`): the first task's figures at the top level ("auc",
"logloss", "rows_eval", "ctr_eval", "gauc", "oracle_auc", "per_distribution", "codes"),
exactly as a one-task run has them. With several tasks (`models/tasks.py`) also
"tasks": {task: the same keys for that task over every eval row (for a task after
another its entire-space probability: ESMM's CTCVR AUC), "per_code" (its own codes'
breakdown, HMDN), and for a task after another "cvr": the same keys again over the
rows whose prerequisite label is 1 only, scored by p(task | prerequisite) (the CVR AUC
of ESMM and EasyRec), with "given": the prerequisite's name}. "ctr_eval" is the task's
positive rate. An oracle is the task's true conditional probability (`spec.oracles`);
over every row an after task's oracle is its product with its prerequisite's.
"""
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import EVAL, PreprocessedData, as_data
from hmdn.models import tasks as tasks_lib
from hmdn.pipeline import code_report as task_codes, data, export, metrics

Predictor = Callable[[tf.Tensor], Dict[str, tf.Tensor]]


def model_predictor(model: tf.keras.Model, spec: spec_lib.FeatureSpec) -> Predictor:
  """The in-memory model behind the serving function its export will have (every
  task's outputs with several tasks)."""
  return export.ServingModule(model, spec).serve_examples


def task_output_keys(spec: spec_lib.FeatureSpec) -> List[str]:
  """The per-task probabilities evaluation reads (none for one task): each task's over
  every impression, and an after task's given its prerequisite."""
  tasks = tasks_lib.tasks_of(spec)
  if len(tasks) == 1:
    return []
  keys = [f"probability_{t.name}" for t in tasks]
  return keys + [f"probability_{t.given}" for t in tasks if t.after is not None]


def saved_model_predictor(export_dir: str) -> Predictor:
  loaded = tf.saved_model.load(export_dir)
  signature = loaded.signatures["serving_default"]
  return lambda serialized: signature(examples=serialized)


def _categorical_columns(spec: spec_lib.FeatureSpec):
  """Fields to break metrics down by: distribution fields and categorical passthroughs."""
  fields = [f.name for f in spec.distribution_fields]
  fields += [f.name for f in spec.features
             if f.role == spec_lib.PASSTHROUGH and f.kind == spec_lib.CATEGORICAL]
  return fields


def run(predict: Predictor, data_dir: "str | PreprocessedData",
        codebook_size: Optional[int] = None, code_views: Optional[Sequence[str]] = None,
        batch_size: int = 4096, split: str = EVAL) -> Dict:
  """Scores a split with the predictor: the metrics dict (see `compute_metrics`)."""
  data_files = as_data(data_dir)
  columns = collect(predict, data_files, data_files.spec, batch_size, split)
  return compute_metrics(columns, data_files.spec, codebook_size, code_views)


def collect(predict: Predictor, data_dir: "str | PreprocessedData",
            spec: spec_lib.FeatureSpec, batch_size: int = 4096, split: str = EVAL
            ) -> Dict[str, np.ndarray]:
  """Runs the predictor over a split; returns columns: probability, label, codes, ...
  (with several tasks every label, "probability_<task>", "probability_<task>_given_
  <prerequisite>" and, for HMDN, "codes_<task>" [rows, views * levels])."""
  files = data.files_of(data_dir, split)
  ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch_size)
  keep = [f.name for f in spec.labels] + _categorical_columns(spec)
  keep += [f.name for f in [spec.user_id] + list(spec.oracles.values()) if f is not None]
  keep = list(dict.fromkeys(keep))  # the user_id may be a categorical passthrough too
  outputs = ["probability"] + task_output_keys(spec)
  columns = {k: [] for k in keep + outputs}
  tasks = tasks_lib.tasks_of(spec)
  codes: Dict[str, list] = {}
  parse_spec = {k: v for k, v in spec.parsing_spec().items() if k in keep}
  for serialized in ds:
    out = predict(serialized)
    missing = [k for k in outputs if k not in out]
    if missing:
      raise ValueError(f"the model serves no {missing[0]!r} (outputs: {sorted(out)}); "
                       f"spec {spec.name!r} has the tasks {[t.name for t in tasks]}: "
                       "export it again with per-task outputs")
    parsed = tf.io.parse_example(serialized, parse_spec)
    for k in keep:
      columns[k].append(parsed[k].numpy())
    for k in outputs:
      columns[k].append(np.reshape(out[k].numpy(), [-1]))
    for k, v in _codes_of(out, tasks).items():
      codes.setdefault(k, []).append(v)
  result = {k: np.concatenate(v) if v else np.array([]) for k, v in columns.items()}
  result.update({k: np.concatenate(v) for k, v in codes.items()})
  return result


def _codes_of(out: Dict[str, tf.Tensor], tasks) -> Dict[str, np.ndarray]:
  """"codes" (the first task's) and, with several tasks, each task's as "codes_<task>"
  (served as "codes_<task>" or one "codes_by_task" [batch, tasks, codes])."""
  found = {}
  if "codes" in out:
    found["codes"] = out["codes"].numpy()
  if len(tasks) > 1:
    for t in tasks:
      if f"codes_{t.name}" in out:
        found[f"codes_{t.name}"] = out[f"codes_{t.name}"].numpy()
      elif "codes_by_task" in out:
        found[f"codes_{t.name}"] = out["codes_by_task"].numpy()[:, t.index]
  return found


def _task_metrics(spec: spec_lib.FeatureSpec, columns: Dict[str, np.ndarray],
                  labels: np.ndarray, probs: np.ndarray, oracle: Optional[np.ndarray],
                  rows: Optional[np.ndarray] = None) -> Dict:
  """AUC, logloss, GAUC, oracle AUC and the per-distribution breakdown of one task's
  scores, over `rows` (a mask) or every row."""
  if rows is not None:
    columns = {k: v[rows] for k, v in columns.items() if len(v) == len(rows)}
    labels, probs = labels[rows], probs[rows]
    oracle = oracle[rows] if oracle is not None else None
  result = {
      "auc": metrics.auc(labels, probs),
      "logloss": metrics.logloss(labels, probs),
      "rows_eval": int(len(labels)),
      "ctr_eval": float(np.mean(labels)) if len(labels) else float("nan"),
  }
  if spec.user_id is not None:
    result["gauc"] = metrics.gauc(labels, probs, columns[spec.user_id.name])
  if oracle is not None:
    result["oracle_auc"] = metrics.auc(labels, oracle)
  result["per_distribution"] = {
      name: metrics.breakdown(labels, probs, columns[name])
      for name in _categorical_columns(spec)}
  return result


def _entire_space_oracle(spec, tasks, task, columns) -> Optional[np.ndarray]:
  """A task's true probability over every impression: its conditional oracle times
  its prerequisites' down the chain (None when one of them has no oracle)."""
  oracles = spec.oracles
  value = None
  while task is not None:
    if task.name not in oracles:
      return None
    own = columns[oracles[task.name].name].astype(float)
    value = own if value is None else value * own
    task = tasks[task.after] if task.after is not None else None
  return value


def compute_metrics(columns: Dict[str, np.ndarray], spec: spec_lib.FeatureSpec,
                    codebook_size: Optional[int] = None,
                    code_views: Optional[list] = None) -> Dict:
  """The metrics dict of the module docstring, from `collect`'s columns."""
  tasks = tasks_lib.tasks_of(spec)
  first = tasks[0]
  result = _task_metrics(spec, columns, columns[first.name], columns["probability"],
                         _entire_space_oracle(spec, tasks, first, columns))
  if "codes" in columns and codebook_size:
    result["codes"] = code_report(columns, spec, codebook_size, code_views or [])
  if codebook_size and task_codes.has_task_codes(columns, [f.name for f in spec.labels]):
    result["codes_by_task"] = task_codes.by_task(
        columns, [f.name for f in spec.labels], _categorical_columns(spec), codebook_size,
        code_views or [])
  if len(tasks) == 1:
    return result
  result["tasks"] = {}
  for t in tasks:
    labels, probs = columns[t.name], columns[f"probability_{t.name}"]
    entry = _task_metrics(spec, columns, labels, probs,
                          _entire_space_oracle(spec, tasks, t, columns))
    codes = columns.get(f"codes_{t.name}")
    if codes is not None and codebook_size:
      entry["per_code"] = per_code(codes, labels, probs, code_views or [])
    if t.after is not None:
      clicked = np.asarray(columns[t.after_name]).ravel() == 1
      oracle = spec.oracles.get(t.name)
      entry["cvr"] = _task_metrics(
          spec, columns, labels, columns[f"probability_{t.given}"],
          columns[oracle.name].astype(float) if oracle is not None else None, clicked)
      entry["cvr"]["given"] = t.after_name
      if codes is not None and codebook_size:
        entry["cvr"]["per_code"] = per_code(codes[clicked], labels[clicked],
                                            columns[f"probability_{t.given}"][clicked],
                                            code_views or [])
    result["tasks"][t.name] = entry
  return result


def per_code(codes: np.ndarray, labels: np.ndarray, probs: np.ndarray,
             views: Sequence[str]) -> Dict:
  """{view/level_l: the breakdown of the scores by code} of one task's codes."""
  levels = codes.shape[1] // max(len(views), 1)
  return {f"{view}/level_{level + 1}": metrics.breakdown(
      labels, probs, codes[:, v * levels + level])
          for v, view in enumerate(views) for level in range(levels)}


def code_report(columns, spec, codebook_size, views) -> Dict:
  """Per view and level: usage (perplexity, dead share) and NMI with each known field."""
  codes = columns["codes"]
  levels = codes.shape[1] // max(len(views), 1)
  report = {}
  for v, view in enumerate(views):
    for level in range(levels):
      c = codes[:, v * levels + level]
      entry = metrics.code_usage(c, codebook_size)
      entry["nmi"] = {name: metrics.normalized_mutual_information(c, columns[name])
                      for name in _categorical_columns(spec)}
      entry["per_code"] = metrics.breakdown(columns[spec.label.name],
                                            columns["probability"], c)
      report[f"{view}/level_{level + 1}"] = entry
  return report


# A field with more values than this prints its largest and worst few and a summary
# of the rest (the long-tail log's table ran to 1,170 lines, 875 of them `nan`).
TABLE_ALL_VALUES = 12
TABLE_LARGEST = 5
TABLE_WORST = 5


def _value_line(field: str, value: str, m: Dict) -> str:
  return (f"{field:<14} {value:<14} {m['rows']:>8d} {m['ctr']:>7.4f} "
          f"{m['auc']:>7.4f} {m['logloss']:>8.4f}")


def _field_lines(field: str, values: Dict[str, Dict]) -> list:
  """Every value of a field with few; else the largest by rows, the lowest finite
  AUCs, and one line for the rest (rows, CTR, how many have one class only)."""
  if len(values) <= TABLE_ALL_VALUES:
    return [_value_line(field, v, m) for v, m in sorted(values.items())]
  largest = sorted(values, key=lambda v: (-values[v]["rows"], v))[:TABLE_LARGEST]
  scored = [v for v in values if v not in largest and np.isfinite(values[v]["auc"])]
  worst = sorted(scored, key=lambda v: (values[v]["auc"], v))[:TABLE_WORST]
  rest = [v for v in values if v not in largest and v not in worst]
  rows = sum(values[v]["rows"] for v in rest)
  ctr = (sum(values[v]["ctr"] * values[v]["rows"] for v in rest) / rows) if rows else 0.0
  undefined = sum(1 for v in rest if not np.isfinite(values[v]["auc"]))
  lines = [f"{field}: {len(values)} values; the {len(largest)} with most rows, the "
           f"{len(worst)} with the lowest AUC, the rest in one line (every value: "
           "the metrics JSON)"]
  lines += [_value_line(field, v, values[v]) for v in largest]
  lines += [_value_line(field, v, values[v]) for v in worst]
  lines.append(f"{field:<14} {f'{len(rest)} others':<14} {rows:>8d} {ctr:>7.4f}  "
               f"({undefined} with one class only: AUC undefined)")
  return lines


CVR_SUFFIX = "_cvr"  # an after task's figures over its prerequisite's positives


def task_results(result: Dict) -> Dict[str, Dict]:
  """{name: metrics} of every task of a several-task result (empty for one task):
  "<task>" over every row, "<task>_cvr" over the prerequisite's positives."""
  out = {}
  for name, entry in result.get("tasks", {}).items():
    out[name] = entry
    if "cvr" in entry:
      out[name + CVR_SUFFIX] = entry["cvr"]
  return out


def task_lines(result: Dict) -> List[str]:
  """One line per task of a several-task result (none for one task): over every row,
  and for a task after another over its prerequisite's positives (CVR)."""
  return [_task_line(name, f"{m['given']} = 1" if "given" in m else "every row", m)
          for name, m in task_results(result).items()]


def _extra(key: str, value: float) -> str:
  """"gauc 0.7123", or why there is none: GAUC averages the users whose eval rows hold
  both a click and a non-click."""
  if key == "gauc" and value != value:  # NaN
    return "gauc none (no user has both classes in the eval rows)"
  return f"{key.replace('_', ' ')} {value:.4f}"


def _task_line(name: str, rows: str, m: Dict) -> str:
  extras = "".join(f"  {_extra(k, m[k])}" for k in ("gauc", "oracle_auc") if k in m)
  return (f"task {name:<16} {m['rows_eval']:>8d} rows ({rows}) rate {m['ctr_eval']:.4f}"
          f"  AUC {m['auc']:.4f}  logloss {m['logloss']:.4f}{extras}")


def format_table(result: Dict) -> str:
  """The per-distribution table printed at the end of a run (the first task's), then
  a line per task when there are several."""
  lines = [f"{'field':<14} {'value':<14} {'rows':>8} {'ctr':>7} {'auc':>7} {'logloss':>8}"]
  for field, values in result["per_distribution"].items():
    lines += _field_lines(field, values)
  lines.append(f"{'overall':<14} {'':<14} {result['rows_eval']:>8d} "
               f"{result['ctr_eval']:>7.4f} {result['auc']:>7.4f} {result['logloss']:>8.4f}")
  extras = [_extra(k, result[k]) for k in ("gauc", "oracle_auc") if k in result]
  if extras:  # the oracle AUC (true click probabilities) is the ceiling for any model
    lines.append("  ".join(extras))
  for name, usage in result.get("codes", {}).items():
    nmi = ", ".join(f"{k} {v:.2f}" for k, v in usage["nmi"].items())
    lines.append(f"codes {name:<18} perplexity {usage['perplexity']:5.2f}  dead "
                 f"{usage['dead_share']:.2f}  NMI: {nmi}")
  lines += task_lines(result)
  lines += task_codes.format_lines(result.get("codes_by_task", {}))
  return "\n".join(lines)
