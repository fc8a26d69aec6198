"""The codes of a several-task HMDN model, scored per task and against the task.

With several tasks the explicit view reads a task embedding, so every (example, task)
has its own codes (`export.serving_outputs`: "codes_<task>"). Per view and level the
report says how those codes split by task and by the distribution fields:

  {"<view>/level_<l>": {
      "perplexity", "dead_share": usage over every (example, task) row,
      "nmi_task": NMI(code, task) over those rows (0: every task reads the same codes,
                  as the implicit view's do; 1: the code names the task),
      "nmi": {field: NMI(code, field)} over those rows,
      "tasks": {task: {"perplexity", "dead_share", "nmi": {field: ...}}} (that task's
               codes over the examples, as the one-task report scores "codes")}}

`evaluate.compute_metrics` adds it as result["codes_by_task"]; the first task's codes
keep the one-task report (result["codes"]).
"""
from typing import Dict, List, Mapping, Sequence

import numpy as np

from hmdn.pipeline import metrics

PREFIX = "codes_"


def has_task_codes(columns: Mapping[str, np.ndarray], task_names: Sequence[str]) -> bool:
  """Several tasks, each with its codes column."""
  return len(task_names) > 1 and all(PREFIX + t in columns for t in task_names)


def by_task(columns: Mapping[str, np.ndarray], task_names: Sequence[str],
            fields: Sequence[str], codebook_size: int, views: Sequence[str]) -> Dict:
  """The report above. columns: "codes_<task>" [N, views * levels] per task and each
  field's [N] values."""
  stacked = np.stack([np.asarray(columns[PREFIX + t]) for t in task_names])  # [T, N, C]
  tasks, rows, width = stacked.shape
  levels = width // max(len(views), 1)
  task_ids = np.repeat(np.arange(tasks), rows)
  pooled_fields = {f: np.tile(np.asarray(columns[f]), tasks) for f in fields}
  report = {}
  for v, view in enumerate(views):
    for level in range(levels):
      codes = stacked[:, :, v * levels + level]  # [T, N]
      entry = metrics.code_usage(codes.ravel(), codebook_size)
      entry["nmi_task"] = metrics.normalized_mutual_information(codes.ravel(), task_ids)
      entry["nmi"] = {f: metrics.normalized_mutual_information(codes.ravel(), values)
                      for f, values in pooled_fields.items()}
      entry["tasks"] = {}
      for t, name in enumerate(task_names):
        own = metrics.code_usage(codes[t], codebook_size)
        own["nmi"] = {f: metrics.normalized_mutual_information(codes[t], columns[f])
                      for f in fields}
        entry["tasks"][name] = own
      report[f"{view}/level_{level + 1}"] = entry
  return report


def format_lines(report: Mapping[str, Dict]) -> List[str]:
  """One console line per view and level: NMI with the task, then each task's."""
  lines = []
  for name, entry in report.items():
    per_task = "; ".join(
        f"{task} perplexity {u['perplexity']:.2f} NMI "
        + ", ".join(f"{f} {x:.2f}" for f, x in u["nmi"].items())
        for task, u in entry["tasks"].items())
    lines.append(f"codes {name:<18} by task: NMI task {entry['nmi_task']:.2f}; "
                 f"{per_task}")
  return lines
