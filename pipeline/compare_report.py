"""The report of `hmdn compare`: report.md's tables and the plots beside it, from the
summary of every run (paired deltas, leaf-size deciles, AUC vs depth, code NMI). With
several tasks (a run's "tasks": {task: {"auc", ..., "deciles"}}) the AUC table has a
column per task and the paired deltas and deciles come once more per task after the
first (the report's own figures are the first task's); a one-task report is
unchanged."""
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hmdn.models.registry import ModelConfig
from hmdn.pipeline.variants import (backbone_of, file_name, is_hmdn, option_text,
                                    parse_variant)

LEAF = "leaf (cross of distribution fields)"


def _of_task(run: Dict, task: Optional[str]) -> Dict:
  """A run's figures of `task` (a name of its "tasks"), or its first task's (None)."""
  return run if task is None else run["tasks"][task]


def paired_deltas(results: Dict[str, List[Dict]], labels: Sequence[str],
                  task: Optional[str] = None) -> List[Dict[str, Any]]:
  """ΔAUC of each HMDN variant vs each variant of its backbone, paired by seed (of
  `task`'s AUC with several tasks; None: the first task's)."""
  rows = []
  for label in labels:
    if not is_hmdn(label):
      continue
    for base in labels:
      if is_hmdn(base) or backbone_of(base) != backbone_of(label):
        continue
      mine = {r["seed"]: _of_task(r, task)["auc"] for r in results[label]}
      theirs = {r["seed"]: _of_task(r, task)["auc"] for r in results[base]}
      seeds = sorted(set(mine) & set(theirs))
      d = np.array([mine[s] - theirs[s] for s in seeds])
      if not len(d):
        continue
      std = float(d.std(ddof=1)) if len(d) > 1 else 0.0
      rows.append({"model": label, "baseline": base, "seeds": seeds,
                   "mean": float(d.mean()), "std": std,
                   "wins": int((d > 0).sum()),
                   "beats_3_spread": bool(len(d) > 1 and d.mean() > 3 * std)})
  return rows


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
  if not len(v):
    return float("nan"), float("nan")
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _cell(text: str) -> str:
  """Text in a Markdown table cell: a `|` (in `implicit_fields=a|b`) is escaped."""
  return str(text).replace("|", "\\|")


def mean_codes(runs: List[Dict]) -> Dict[str, Dict]:
  """Each level's perplexity, dead share and NMI per field, averaged over the seeds
  (NMI also with its std: `nmi_std`)."""
  levels = runs[0]["codes"]
  out = {}
  for name, first in levels.items():
    per_seed = [r["codes"][name] for r in runs if name in r.get("codes", {})]
    out[name] = {
        "perplexity": float(np.mean([c["perplexity"] for c in per_seed])),
        "dead_share": float(np.mean([c["dead_share"] for c in per_seed])),
        "nmi": {f: mean_std([c["nmi"][f] for c in per_seed])[0] for f in first["nmi"]},
        "nmi_std": {f: mean_std([c["nmi"][f] for c in per_seed])[1]
                    for f in first["nmi"]}}
  return out


def markdown(summary: Dict) -> str:
  """report.md from the summary dict (also the README's quality section)."""
  lines = [f"# hmdn compare: {summary['data_dir']}", "",
           f"{summary['train_rows']} train / {summary['eval_rows']} eval rows; "
           f"{summary['epochs']} epochs, global batch {summary['batch_size']}, "
           f"learning rate {summary['learning_rate']}; seeds {summary['seeds']}."]
  if summary.get("deterministic") is False:  # (older results.json: not recorded)
    lines.append("Input not deterministic (`--deterministic` not given): a seed fixes "
                 "the initialization, not the batches, so two runs of one model and seed "
                 "differ too; the paired spreads include that noise.")
  if summary.get("oracle_auc") is not None:
    lines.append(f"Oracle AUC (true click probabilities): {summary['oracle_auc']:.4f}.")
  first_task = next(iter(next(iter(summary["results"].values()))[0].get("tasks", {})),
                    None)
  tasks = task_names(summary)
  lines += ["", "## AUC (mean ± std over seeds)", "",
            f"| model | AUC{f' {_cell(first_task)}' if first_task else ''} | logloss | "
            "GAUC | " + "".join(f"AUC {_cell(t)} | " for t in tasks) + "s/run |",
            "|---|---|---|---|" + "---|" * len(tasks) + "---|"]
  for label, runs in summary["results"].items():
    auc, auc_s = mean_std([r["auc"] for r in runs])
    ll, _ = mean_std([r["logloss"] for r in runs])
    gauc, _ = mean_std([r.get("gauc", float("nan")) for r in runs])
    secs, _ = mean_std([r["seconds"] for r in runs])
    per_task = "".join("{:.4f} ± {:.4f} | ".format(*mean_std(
        [r["tasks"][t]["auc"] for r in runs])) for t in tasks)
    lines.append(f"| {_cell(label)} | {auc:.4f} ± {auc_s:.4f} | {ll:.4f} | {gauc:.4f} | "
                 f"{per_task}{secs:.0f} |")
  if tasks:
    lines += ["", f"Tasks: the first ({first_task}) has the logloss and GAUC and the "
              "sections without a task's name; `<task>` over every eval row (a task after "
              "another: its entire-space probability, CTCVR); `<task>_cvr` over the rows "
              "whose prerequisite is 1 (CVR)."]
  lines += _delta_lines(summary["deltas"], "")
  for t in tasks:
    lines += _delta_lines(summary.get("deltas_by_task", {}).get(t, []), f" ({t})")
  lines += _decile_lines(summary, None)
  for t in tasks:
    lines += _decile_lines(summary, t)
  depth = summary.get("depth")
  if depth:
    lines += ["", "## AUC vs codebook depth D (variants that differ in D only)", "",
              "| variant | D | model | AUC |", "|---|---|---|---|"]
    for row in depth:
      lines.append(f"| {_cell(row.get('line', ''))} | {row['num_levels']} | "
                   f"{_cell(row['model'])} | {row['auc']:.4f} ± {row['std']:.4f} |")
  for label, runs in summary["results"].items():
    if not runs[0].get("codes"):
      continue
    codes = mean_codes(runs)
    fields = list(next(iter(codes.values()))["nmi"])
    lines += ["", f"## Codes of {_cell(label)}: NMI with each field (mean ± std over "
              f"{len(runs)} seeds)", "",
              "| level | perplexity | dead | " + " | ".join(fields) + " |",
              "|---|---|---|" + "---|" * len(fields)]
    for name, c in codes.items():
      lines.append(f"| {name} | {c['perplexity']:.2f} | {c['dead_share']:.2f} | "
                   + " | ".join(f"{c['nmi'][f]:.2f} ± {c['nmi_std'][f]:.2f}"
                                for f in fields) + " |")
  for plot in summary.get("plots", []):
    lines += ["", f"![{plot}]({plot})"]
  return "\n".join(lines) + "\n"


def task_names(summary: Dict) -> List[str]:
  """The tasks of a several-task comparison (`<task>`, `<task>_cvr`) after the first
  (whose figures are the report's own); [] for one task."""
  return list(next(iter(summary["results"].values()))[0].get("tasks", {}))[1:]


def _delta_lines(deltas: List[Dict], title: str) -> List[str]:
  if not deltas:
    return []
  lines = ["", f"## Paired ΔAUC of each HMDN variant vs its backbone{title}", "",
           "| HMDN variant | baseline | ΔAUC mean ± std | wins | > 3 × spread |",
           "|---|---|---|---|---|"]
  for d in deltas:
    lines.append(f"| {_cell(d['model'])} | {_cell(d['baseline'])} | {d['mean']:+.4f} ± "
                 f"{d['std']:.4f} | {d['wins']}/{len(d['seeds'])} | "
                 f"{'yes' if d['beats_3_spread'] else 'no'} |")
  return lines


def _decile_lines(summary: Dict, task: Optional[str]) -> List[str]:
  """The AUC per leaf-size decile table of the first task (None) or of `task`."""
  first = _of_task(next(iter(summary["results"].values()))[0], task)
  if not first.get("deciles"):
    return []
  deciles = first["deciles"]
  title = "" if task is None else f" of {task}"
  lines = ["", f"## AUC per leaf-size decile{title} (leaf: {LEAF}; decile 1 = rarest "
           "leaves by training rows)", "",
           "| model | " + " | ".join(
               f"d{b['bucket'] + 1} ({b['size_min']}-{b['size_max']})" for b in deciles)
           + " |", "|---|" + "---|" * len(deciles)]
  for label, runs in summary["results"].items():
    cells = []
    for i in range(len(deciles)):
      m, _ = mean_std([_of_task(r, task)["deciles"][i]["auc"] for r in runs])
      cells.append(f"{m:.4f}")
    lines.append(f"| {_cell(label)} | " + " | ".join(cells) + " |")
  return lines


def _depth_line(label: str) -> str:
  """The variant a depth line follows: the model and every override but num_levels
  (`hmdn_moe:extraction=explicit`), so a line joins only runs that differ in D."""
  name, overrides = parse_variant(label)
  return ":".join([name] + [f"{k}={option_text(v)}" for k, v in sorted(
      overrides.items()) if k != "num_levels"])


def depth_table(results: Dict[str, List[Dict]]) -> List[Dict]:
  """AUC per num_levels of the HMDN variants that differ in depth only: one line
  (`line`) per model and other options, kept when it has two depths or more."""
  rows = []
  for label, runs in results.items():
    if not is_hmdn(label):
      continue
    _, overrides = parse_variant(label)
    depth = overrides.get("num_levels", ModelConfig().hmdrr.quantizer.num_levels)
    auc, std = mean_std([r["auc"] for r in runs])
    rows.append({"model": label, "line": _depth_line(label), "num_levels": depth,
                 "auc": auc, "std": std})
  depths: Dict[str, set] = {}
  for r in rows:
    depths.setdefault(r["line"], set()).add(r["num_levels"])
  kept = [r for r in rows if len(depths[r["line"]]) > 1]
  return sorted(kept, key=lambda r: (r["line"], r["num_levels"]))


def wrap_label(label: str, width: int) -> str:
  """A variant name in lines of about `width` characters, cut only after a `:` or a
  `|` (a piece longer than the width stays whole on its line)."""
  lines = [""]
  for piece in re.split(r"(?<=[:|])", label):
    if lines[-1] and len(lines[-1]) + len(piece) > width:
      lines.append("")
    lines[-1] += piece
  return "\n".join(lines)


def plots(summary: Dict, report_dir: str) -> List[str]:
  """PNG plots next to report.md; returns their file names."""
  # Imported here: the backend is chosen before pyplot loads, and only plots need it.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  written = []

  def save(fig, name):
    fig.tight_layout()
    fig.savefig(os.path.join(report_dir, name), dpi=80)
    plt.close(fig)
    written.append(name)

  # The first task's plots keep their names; each other task's add `_<task>`.
  for task in [None] + task_names(summary):
    suffix = "" if task is None else f"_{file_name(task)}"
    d = (summary["deltas"] if task is None else
         summary.get("deltas_by_task", {}).get(task, []))
    if d:
      fig, ax = plt.subplots(figsize=(7, 0.45 * len(d) + 1.2))
      y = np.arange(len(d))
      ax.barh(y, [r["mean"] for r in d], xerr=[r["std"] for r in d],
              color=["tab:green" if r["mean"] > 0 else "tab:red" for r in d])
      ax.set_yticks(y, [f"{r['model']} vs {r['baseline']}" for r in d], fontsize=7)
      ax.axvline(0, color="black", lw=0.8)
      ax.set_xlabel("paired ΔAUC (mean ± std over seeds)"
                    + ("" if task is None else f" of {task}"))
      save(fig, f"paired_delta{suffix}.png")
    first = _of_task(next(iter(summary["results"].values()))[0], task)
    if first.get("deciles"):
      fig, ax = plt.subplots(figsize=(7, 3.5))
      for label, runs in summary["results"].items():
        n = len(_of_task(runs[0], task)["deciles"])
        ax.plot(range(1, n + 1), [mean_std([_of_task(r, task)["deciles"][i]["auc"]
                                            for r in runs])[0] for i in range(n)],
                marker="o", label=label)
      ax.set_xlabel("leaf-size decile (1 = rarest leaves)")
      ax.set_ylabel("AUC" if task is None else f"AUC of {task}")
      ax.legend(fontsize=6)
      save(fig, f"auc_by_leaf_decile{suffix}.png")
  if summary.get("depth"):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    lines: Dict[str, List[Dict]] = {}
    for r in summary["depth"]:
      lines.setdefault(r.get("line", ""), []).append(r)
    for line, rows in lines.items():  # one line per variant: only D differs along it
      ax.errorbar([r["num_levels"] for r in rows], [r["auc"] for r in rows],
                  yerr=[r["std"] for r in rows], marker="o", label=line, capsize=2)
    if len(lines) > 1:
      ax.legend(fontsize=6)
    ax.set_xlabel("codebook depth D")
    ax.set_ylabel("AUC")
    save(fig, "auc_vs_depth.png")
  for label, runs in summary["results"].items():
    if not runs[0].get("codes"):
      continue
    codes = mean_codes(runs)
    fields = list(next(iter(codes.values()))["nmi"])
    matrix = np.array([[c["nmi"][f] for f in fields] for c in codes.values()])
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(fields), 0.35 * len(codes) + 1.2))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(fields)), fields, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(codes)), list(codes), fontsize=7)
    for i in range(matrix.shape[0]):
      for j in range(matrix.shape[1]):
        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                color="white" if matrix[i, j] < 0.5 else "black")
    fig.colorbar(im, ax=ax)
    # Wrapped to the figure's width after a `:` or `|`: a long variant name is whole.
    ax.set_title(f"NMI of codes (mean of {len(runs)} seeds)\n"
                 + wrap_label(label, max(16, int(fig.get_figwidth() * 11))), fontsize=8)
    save(fig, f"codes_{file_name(label)}.png")
  return written
