"""`hmdn compare`: models x seeds on one data directory -> a report directory.

Every model is trained with the same data, splits, batch, learning rate, epochs and
seeds (the `TrainConfig` given), so the differences are the models'. An HMDN variant is
compared, seed by seed (paired), with every variant of its own backbone in the list:
the paper's single-distribution baseline (`condition=coarsest`) and the stronger ones
(`all`, `cross`). The report directory holds:

  results.json     every run's metrics (overall, per leaf-size decile, code NMI)
  report.md        tables: mean ± std, paired ΔAUC, AUC per leaf-size decile, AUC vs D,
                   NMI of each level's codes with every distribution / passthrough field
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
import re
import time
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from hmdn.features import locks, options, ownership
from hmdn.features.options import option, validate
from hmdn.features import spec as spec_lib
from hmdn.features.fileio import write_json_atomic, write_text_atomic
from hmdn.features.preprocessed import TRAIN, PreprocessedData, delete_tree
from hmdn.models.registry import HMDN_PREFIX, ModelConfig
from hmdn.pipeline import evaluate, metrics, train

LEAF = "leaf (cross of distribution fields)"


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


def parse_variant(text: str) -> Tuple[str, Dict[str, Any]]:
  """`hmdn_moe:num_levels=6:condition=all` -> ("hmdn_moe", {"num_levels": 6, ...}),
  keyed by flag name, values typed like the ModelConfig option they set; an option
  the variant's model does not use is refused."""
  name, *parts = [p.strip() for p in text.split(":")]
  fields = {flag: field for flag, (_, field) in options.leaves(ModelConfig).items()
            if flag not in ("model", "seed")}
  defaults = options.values_by_flag(ModelConfig())
  overrides = {}
  for part in parts:
    key, sep, value = part.partition("=")
    if not sep or key not in fields:
      raise ValueError(f"--models: {part!r} in {text!r} is not key=value of a model "
                       f"option; options: {sorted(fields)}")
    current = defaults[key]
    try:
      if isinstance(current, bool):
        if value not in ("true", "false", "True", "False", "1", "0"):
          raise ValueError
        typed = value in ("true", "True", "1")
      elif isinstance(current, dict):
        typed = json.loads(value)
      elif isinstance(current, (list, tuple)):  # a|b|c (commas separate the models)
        items = [v for v in value.split("|") if v]
        kind = type(current[0]) if current else str
        typed = tuple(kind(v) for v in items)
      else:
        typed = type(current)(value)
    except ValueError:
      raise ValueError(f"--models: {key}={value!r} in {text!r} is not a "
                       f"{type(current).__name__}")
    overrides[key] = typed
  config = options.with_values(ModelConfig(name=name), overrides).validate()
  try:
    options.refuse_inapplicable(config, overrides)
  except ValueError as e:
    raise ValueError(f"--models: {text!r}: {e}") from None
  return name, overrides


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


def backbone_of(label: str) -> str:
  name = label.split(":")[0]
  return name[len(HMDN_PREFIX):] if name.startswith(HMDN_PREFIX) else name


def is_hmdn(label: str) -> bool:
  return label.split(":")[0].startswith(HMDN_PREFIX)


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


def _summarise(result: Dict, columns: Dict[str, np.ndarray], spec, sizes) -> Dict:
  """What the report keeps of one run's evaluation."""
  labels = columns[spec.label.name]
  probs = columns["probability"]
  out = {k: result[k] for k in ("auc", "logloss", "gauc", "oracle_auc") if k in result}
  if spec.distribution_fields:
    leaves = leaf_key(columns, spec)
    out["deciles"] = metrics.leaf_size_deciles(labels, probs, leaves, sizes)
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


def paired_deltas(results: Dict[str, List[Dict]], labels: Sequence[str]
                  ) -> List[Dict[str, Any]]:
  """ΔAUC of each HMDN variant vs each variant of its backbone, paired by seed."""
  rows = []
  for label in labels:
    if not is_hmdn(label):
      continue
    for base in labels:
      if is_hmdn(base) or backbone_of(base) != backbone_of(label):
        continue
      mine = {r["seed"]: r["auc"] for r in results[label]}
      theirs = {r["seed"]: r["auc"] for r in results[base]}
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


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
  if not len(v):
    return float("nan"), float("nan")
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def file_name(label: str) -> str:
  """A model label as a file name: `:` -> `__`, a list's `|` -> `+`."""
  return re.sub(r"[^A-Za-z0-9_.=+-]", "_", label.replace(":", "__").replace("|", "+"))


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
        "nmi": {f: _mean_std([c["nmi"][f] for c in per_seed])[0] for f in first["nmi"]},
        "nmi_std": {f: _mean_std([c["nmi"][f] for c in per_seed])[1]
                    for f in first["nmi"]}}
  return out


def markdown(summary: Dict) -> str:
  """report.md from the summary dict (also the README's quality section)."""
  lines = [f"# hmdn compare: {summary['data_dir']}", "",
           f"{summary['train_rows']} train / {summary['eval_rows']} eval rows; "
           f"{summary['epochs']} epochs, global batch {summary['batch_size']}, "
           f"learning rate {summary['learning_rate']}; seeds {summary['seeds']}."]
  if summary.get("oracle_auc") is not None:
    lines.append(f"Oracle AUC (true click probabilities): {summary['oracle_auc']:.4f}.")
  lines += ["", "## AUC (mean ± std over seeds)", "",
            "| model | AUC | logloss | GAUC | s/run |", "|---|---|---|---|---|"]
  for label, runs in summary["results"].items():
    auc, auc_s = _mean_std([r["auc"] for r in runs])
    ll, _ = _mean_std([r["logloss"] for r in runs])
    gauc, _ = _mean_std([r.get("gauc", float("nan")) for r in runs])
    secs, _ = _mean_std([r["seconds"] for r in runs])
    lines.append(f"| {_cell(label)} | {auc:.4f} ± {auc_s:.4f} | {ll:.4f} | {gauc:.4f} | "
                 f"{secs:.0f} |")
  if summary["deltas"]:
    lines += ["", "## Paired ΔAUC of each HMDN variant vs its backbone", "",
              "| HMDN variant | baseline | ΔAUC mean ± std | wins | > 3 × spread |",
              "|---|---|---|---|---|"]
    for d in summary["deltas"]:
      lines.append(f"| {_cell(d['model'])} | {_cell(d['baseline'])} | {d['mean']:+.4f} ± "
                   f"{d['std']:.4f} | {d['wins']}/{len(d['seeds'])} | "
                   f"{'yes' if d['beats_3_spread'] else 'no'} |")
  first = next(iter(summary["results"].values()))[0]
  if first.get("deciles"):
    deciles = first["deciles"]
    lines += ["", f"## AUC per leaf-size decile (leaf: {LEAF}; decile 1 = rarest "
              "leaves by training rows)", "",
              "| model | " + " | ".join(
                  f"b{b['bucket']} ({b['size_min']}-{b['size_max']})" for b in deciles)
              + " |", "|---|" + "---|" * len(deciles)]
    for label, runs in summary["results"].items():
      cells = []
      for i in range(len(deciles)):
        m, _ = _mean_std([r["deciles"][i]["auc"] for r in runs])
        cells.append(f"{m:.4f}")
      lines.append(f"| {_cell(label)} | " + " | ".join(cells) + " |")
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


def _depth_line(label: str) -> str:
  """The variant a depth line follows: the model and every override but num_levels
  (`hmdn_moe:extraction=explicit`), so a line joins only runs that differ in D."""
  name, overrides = parse_variant(label)
  return ":".join([name] + [f"{k}={_option_text(v)}" for k, v in sorted(
      overrides.items()) if k != "num_levels"])


def _option_text(value) -> str:
  return "|".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def depth_table(results: Dict[str, List[Dict]]) -> List[Dict]:
  """AUC per num_levels of the HMDN variants that differ in depth only: one line
  (`line`) per model and other options, kept when it has two depths or more."""
  rows = []
  for label, runs in results.items():
    if not is_hmdn(label):
      continue
    _, overrides = parse_variant(label)
    depth = overrides.get("num_levels", ModelConfig().hmdrr.quantizer.num_levels)
    auc, std = _mean_std([r["auc"] for r in runs])
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

  if summary["deltas"]:
    d = summary["deltas"]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(d) + 1.2))
    y = np.arange(len(d))
    ax.barh(y, [r["mean"] for r in d], xerr=[r["std"] for r in d],
            color=["tab:green" if r["mean"] > 0 else "tab:red" for r in d])
    ax.set_yticks(y, [f"{r['model']} vs {r['baseline']}" for r in d], fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("paired ΔAUC (mean ± std over seeds)")
    save(fig, "paired_delta.png")
  first = next(iter(summary["results"].values()))[0]
  if first.get("deciles"):
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, runs in summary["results"].items():
      n = len(runs[0]["deciles"])
      ax.plot(range(1, n + 1), [_mean_std([r["deciles"][i]["auc"] for r in runs])[0]
                                for i in range(n)], marker="o", label=label)
    ax.set_xlabel("leaf-size decile (1 = rarest leaves)")
    ax.set_ylabel("AUC")
    ax.legend(fontsize=6)
    save(fig, "auc_by_leaf_decile.png")
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


def run(base, labels: Sequence[str], seeds: Sequence[int], report_dir: str,
        log=print) -> Dict:
  """Trains every model with every seed (seeds outermost, so machine drift hits all
  models alike), then writes results.json, report.md and the plots."""
  repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
  if repeated:
    raise ValueError(f"--seeds={','.join(map(str, seeds))}: seed {repeated[0]} is listed "
                     "twice (one run counted twice; its spread would be understated)")
  variants: Dict[Tuple, str] = {}
  for label in labels:  # the same model written twice, in any spelling
    name, overrides = parse_variant(label)
    key = (name, tuple(sorted((k, _option_text(v)) for k, v in overrides.items())))
    if key in variants:
      raise ValueError(f"--models: {label!r} is the same model as {variants[key]!r} "
                       "(listed twice)")
    variants[key] = label
  CompareConfig(report_dir, ",".join(labels), tuple(seeds)).validate()
  data = PreprocessedData(base.data_dir).check_complete()
  steps = train.steps_per_epoch(base, data.rows(TRAIN))
  for label in labels:  # every bad model or option fails before the first run
    config = run_config(base, label, seeds[0], report_dir)
    config.model.validate()
    train.check_quantizer_starts(config, steps)
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
      log(f"compare: seed {seed} {label:<28} AUC {r['auc']:.4f} ({r['seconds']:.0f} s)")
      write_json_atomic(os.path.join(report_dir, "results.json"), results)
  summary = {"data_dir": data.data_dir, "train_rows": data.rows(TRAIN),
             "eval_rows": data.rows("eval"), "epochs": base.epochs,
             "batch_size": base.batch_size, "learning_rate": base.learning_rate,
             "seeds": list(seeds), "oracle_auc": oracle, "results": results,
             "deltas": paired_deltas(results, labels), "depth": depth_table(results)}
  summary["plots"] = plots(summary, report_dir)
  write_json_atomic(os.path.join(report_dir, "results.json"), summary)
  write_text_atomic(os.path.join(report_dir, "report.md"), markdown(summary))
  return summary
