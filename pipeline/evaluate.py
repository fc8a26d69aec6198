"""Evaluation: one pass over the eval split, exact metrics overall and per distribution.

`run(predictor, data)` is the one evaluation path (train summary, the per-epoch
callback, `hmdn evaluate` / `hmdn run`, the benchmarks). A predictor takes serialized
tf.Example and returns the serving outputs; for an in-memory model it is the export's
own serving function (`export.ServingModule.serve_examples`), for an export its
`serving_default` signature, so the same code literally scores both.
"""
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import EVAL, PreprocessedData, as_data
from hmdn.pipeline import code_report as task_codes, data, export, metrics

Predictor = Callable[[tf.Tensor], Dict[str, tf.Tensor]]


def model_predictor(model: tf.keras.Model, spec: spec_lib.FeatureSpec) -> Predictor:
  """The in-memory model behind the serving function its export will have."""
  return export.ServingModule(model, spec).serve_examples


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
  """Runs the predictor over a split; returns columns: probability, label, codes, ..."""
  files = data.files_of(data_dir, split)
  ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch_size)
  keep = [spec.label.name] + _categorical_columns(spec)
  keep += [f.name for f in (spec.user_id, spec.oracle) if f is not None]
  columns = {k: [] for k in keep + ["probability"]}
  codes = {}  # "codes" and, with several tasks, "codes_<task>"
  parse_spec = {k: v for k, v in spec.parsing_spec().items() if k in keep}
  for serialized in ds:
    out = predict(serialized)
    parsed = tf.io.parse_example(serialized, parse_spec)
    for k in keep:
      columns[k].append(parsed[k].numpy())
    columns["probability"].append(out["probability"].numpy())
    for k in (k for k in out if k.startswith("codes")):
      codes.setdefault(k, []).append(out[k].numpy())
  result = {k: np.concatenate(v) if v else np.array([]) for k, v in columns.items()}
  result.update({k: np.concatenate(v) for k, v in codes.items()})
  return result


def compute_metrics(columns: Dict[str, np.ndarray], spec: spec_lib.FeatureSpec,
                    codebook_size: Optional[int] = None,
                    code_views: Optional[list] = None) -> Dict:
  labels = columns[spec.label.name]
  probs = columns["probability"]
  result = {
      "auc": metrics.auc(labels, probs),
      "logloss": metrics.logloss(labels, probs),
      "rows_eval": int(len(labels)),
      "ctr_eval": float(np.mean(labels)) if len(labels) else float("nan"),
  }
  if spec.user_id is not None:
    result["gauc"] = metrics.gauc(labels, probs, columns[spec.user_id.name])
  if spec.oracle is not None:
    result["oracle_auc"] = metrics.auc(labels, columns[spec.oracle.name])
  result["per_distribution"] = {
      name: metrics.breakdown(labels, probs, columns[name])
      for name in _categorical_columns(spec)}
  if "codes" in columns and codebook_size:
    result["codes"] = code_report(columns, spec, codebook_size, code_views or [])
  if codebook_size and task_codes.has_task_codes(columns, [f.name for f in spec.labels]):
    result["codes_by_task"] = task_codes.by_task(
        columns, [f.name for f in spec.labels], _categorical_columns(spec), codebook_size,
        code_views or [])
  return result


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


def format_table(result: Dict) -> str:
  """The per-distribution table printed at the end of a run."""
  lines = [f"{'field':<14} {'value':<14} {'rows':>8} {'ctr':>7} {'auc':>7} {'logloss':>8}"]
  for field, values in result["per_distribution"].items():
    lines += _field_lines(field, values)
  lines.append(f"{'overall':<14} {'':<14} {result['rows_eval']:>8d} "
               f"{result['ctr_eval']:>7.4f} {result['auc']:>7.4f} {result['logloss']:>8.4f}")
  extras = [f"{k} {result[k]:.4f}" for k in ("gauc", "oracle_auc") if k in result]
  if extras:  # the oracle AUC (true click probabilities) is the ceiling for any model
    lines.append("  ".join(extras))
  for name, usage in result.get("codes", {}).items():
    nmi = ", ".join(f"{k} {v:.2f}" for k, v in usage["nmi"].items())
    lines.append(f"codes {name:<18} perplexity {usage['perplexity']:5.2f}  dead "
                 f"{usage['dead_share']:.2f}  NMI: {nmi}")
  lines += task_codes.format_lines(result.get("codes_by_task", {}))
  return "\n".join(lines)
