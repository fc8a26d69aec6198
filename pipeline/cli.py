"""`hmdn`: the command line of every stage. `hmdn` or `hmdn --help` lists the commands
(the table at the end of this module), `hmdn CMD --help` the flags of one.

  hmdn generate   --output_dir=DIR [--rows=N --seed=S]      synthetic raw logs + spec
  hmdn preprocess --raw=GLOB --spec=SPEC --data_dir=DIR      Beam: raw -> TFRecords
  hmdn train      --data_dir=DIR --model_dir=DIR --model=NAME [--overwrite]
  hmdn evaluate   --data_dir=DIR (--model_dir=DIR | --saved_model=DIR) [--output=FILE]
  hmdn export     --data_dir=DIR --model_dir=DIR --export_dir=DIR
  hmdn predict    --saved_model=DIR --input=REQUEST.json     TF Serving REST format
  hmdn run        --output_dir=DIR [--raw=GLOB --spec=SPEC]  all stages
  hmdn compare    --data_dir=DIR --report_dir=DIR --models=moe,hmdn_moe --seeds=0,1,2
                  models x seeds, same budget: report.md, plots, paired deltas
  hmdn data fetch movielens-100k [--output_dir=DIR]         MovieLens-100K (ml-100k layout)

--source picks the reader of --raw: generic (CSV/JSONL), ali_ccp_raw (skeleton + common
features files) or movielens (the folder holding u.data, u.user, u.item).

The flags of the stages are generated from their config dataclasses (TrainConfig,
ModelConfig, PreprocessConfig; pipeline/config_flags.py): a default or a list of
choices is stated on the config field, once. An unknown flag is an error naming the
closest known one; `preprocess` and `run` also take the pipeline options Beam
recognises (e.g. --runner=...) and pass anything after a bare `--` to Beam unchecked.
Bad input ends with one line naming the file, field and value, and exit status 2.

The run directory (--model_dir, features/run_directory.py) records the model config:
`evaluate`, `export` and a resumed `train` take it from there (no --model needed); a
model flag given explicitly must agree with it. A model flag given explicitly must also
apply to the model (`--model=dnn --num_levels=7` is refused, as is `--condition=all`
with `--hmdn_condition=hierarchical_only`); defaults are not given. Every path flag is
made absolute at start, so a relative path means the same in every stage and subprocess.
"""
import dataclasses
import json
import os
import sys
from typing import Dict, List

import hmdn.features  # noqa: E402,F401  (selects legacy Keras before TensorFlow loads)
from hmdn.pipeline import quiet  # noqa: E402

quiet.silence_libraries(sys.argv)  # before TensorFlow loads; --verbosity keeps it all

from absl import app, flags, logging  # noqa: E402

from hmdn.beam_jobs import generators, movielens  # noqa: E402  (no Beam)
from hmdn.beam_jobs.config import PreprocessConfig, PreprocessError  # noqa: E402  (no Beam)
from hmdn.features import spec as spec_lib  # noqa: E402
from hmdn.features.preprocessed import EVAL, PreprocessedData  # noqa: E402
from hmdn.features import options  # noqa: E402
from hmdn.features.run_directory import RUN_REMEDY, RunDirectory, absolute  # noqa: E402
from hmdn.features.spec import SpecError  # noqa: E402
from hmdn.models.registry import ModelConfig  # noqa: E402
from hmdn.pipeline import argv as argv_lib  # noqa: E402
from hmdn.pipeline import (  # noqa: E402
    compare, compare_report, config_flags, data, evaluate, export, faults, serving,
    stages, strategies, train)
from hmdn.pipeline.argv import Command, FlagGroup  # noqa: E402
from hmdn.pipeline.serving_request import RequestError  # noqa: E402
from hmdn.pipeline.train import TrainConfig  # noqa: E402
from hmdn.pipeline.train_config import RUN_SHAPING  # noqa: E402

FLAGS = flags.FLAGS
# A flag whose name differs from its field is declared on the field (`option(flag=...)`:
# --model sets ModelConfig.name, --codebook_warmup_steps the quantizer's warmup_steps).
config_flags.define_flags(TrainConfig)
config_flags.define_flags(ModelConfig, shared=("seed",))
config_flags.define_flags(PreprocessConfig, shared=("data_dir", "overwrite"))
flags.DEFINE_enum("generator", generators.DEFAULT, sorted(generators.GENERATORS),
                  "generate/run without --raw: the built-in log generator. " + "; ".join(
                      f"{g.name}: {g.help}" for g in generators.GENERATORS.values()))
flags.DEFINE_integer("rows", 200_000, "generate/run: rows of generated raw log.")
for _config_class, _not_flags in generators.flag_configs().items():  # opt-in options
  config_flags.define_flags(_config_class, skip=_not_flags, shared=generators.FLAG_FIELDS)
config_flags.define_flags(compare.CompareConfig)
# Flags of the commands themselves, not of a config.
flags.DEFINE_string("output_dir", None, "generate/run: directory of every output; data "
                    "fetch: where the dataset goes.")
flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into N logical devices (0: "
                     "as TensorFlow finds it).", lower_bound=0)
flags.DEFINE_string("export_dir", None, "Export root: versions go to <export_dir>/<v>/.")
flags.DEFINE_string("saved_model", None, "An exported version dir (or export root: the "
                    "latest version is used).")
flags.DEFINE_string("input", None, "predict: JSON request in TF Serving REST format.")
flags.DEFINE_string("output", None, "evaluate: write metrics JSON here.")
flags.DEFINE_bool("verify_export", True, "run: reload the export in a fresh process.")
flags.DEFINE_integer("keep_export_versions", 0, "export/run: after exporting, remove "
                     "the versions of the export root older than its newest N (0: keep "
                     "every version; run --overwrite: 1, the run's own export replaced).",
                     lower_bound=0)
flags.DEFINE_bool("debug", False, "Show tracebacks of input errors.")

_BEAM_ARGS: List[str] = []  # set by _parse_flags: what preprocess and run pass to Beam
USER_ERRORS = (SpecError, PreprocessError, RequestError, ValueError, FileNotFoundError)


# --- Configs from flags ------------------------------------------------------------------
def model_config() -> ModelConfig:
  return config_flags.from_flags(ModelConfig).validate()


def train_config(data_dir: str, model_dir: str) -> TrainConfig:
  """From the flags, range-checked before any work."""
  return config_flags.from_flags(TrainConfig, data_dir=data_dir, model_dir=model_dir,
                                 model=model_config()).validate()


def given_model_options() -> Dict:
  """The model options set explicitly on the command line ({flag: value}): those a
  run directory's recorded config is checked against, and that must apply to the
  model (defaults are not given)."""
  present = config_flags.given(ModelConfig).values()
  if not present:
    return {}
  values = options.values_by_flag(config_flags.from_flags(ModelConfig))
  return {flag: values[flag] for flag in present}


def given_training_options(config: TrainConfig) -> Dict:
  """The training options set explicitly on the command line ({field: value})."""
  return {field: getattr(config, field) for field in config_flags.given(TrainConfig)
          if hasattr(config, field)}


def refuse_inapplicable(model: ModelConfig) -> None:
  """A model flag given explicitly that `model` does not use (`--model=dnn
  --num_levels=7`) or that another flag makes unused is refused, naming both."""
  options.refuse_inapplicable(model, given_model_options())


def _codebook_warmup_unset() -> bool:
  """--codebook_warmup_steps not given: a short new run may follow its length."""
  return not FLAGS["codebook_warmup_steps"].present


# Flags holding a local path (or comma-separated globs: --raw): made absolute at start.
PATH_FLAGS = ("data_dir", "model_dir", "export_dir", "output_dir", "saved_model",
              "input", "output", "report_dir", "raw", "spec")


def absolute_path_flags() -> None:
  """Every path flag made absolute, so that it means the same from any working
  directory (and in the fresh processes `run` starts elsewhere)."""
  for name in PATH_FLAGS:
    if name not in FLAGS or not FLAGS[name].value:
      continue
    value = FLAGS[name].value
    if name == "raw":
      value = ",".join(absolute(p.strip()) for p in value.split(",") if p.strip())
    elif name == "spec" and os.path.sep not in value and not value.endswith(
        (".yaml", ".yml")) and os.path.exists(
            os.path.join(spec_lib.SPECS_DIR, value + ".yaml")):
      continue  # the name of a shipped spec
    else:
      value = absolute(value)
    FLAGS[name].value = value


def preprocess_config(raw: str, spec: str, data_dir: str) -> PreprocessConfig:
  """The job's config from the flags; --eval_fraction given beside a time cutoff or
  quantile, which set the eval split themselves, is refused (it would be unused)."""
  config = config_flags.from_flags(PreprocessConfig, raw=raw, spec_path=spec,
                                   output_dir=data_dir)
  if "eval_fraction" in config_flags.given(PreprocessConfig) and config.split_time_field:
    for flag in ("split_time_cutoff", "split_time_quantile"):
      if getattr(config, flag) is not None:
        raise PreprocessError(
            f"--eval_fraction={config.eval_fraction} and --{flag}="
            f"{getattr(config, flag)} contradict: the {flag.rsplit('_', 1)[-1]} sets "
            "the eval split; drop one")
  return config


def generator_config():
  """The chosen generator's config with --rows, --seed and its opt-in flags given."""
  generator = generators.get(FLAGS.generator)
  given = {n: FLAGS[n].value for n in generators.FLAG_FIELDS if FLAGS[n].present}
  return generator, generator.config_from_flags(FLAGS.rows, FLAGS.seed, given)


def _require(*names: str) -> None:
  missing = [n for n in names if not getattr(FLAGS, n)]
  if missing:
    raise ValueError(f"missing flag(s): {', '.join('--' + n for n in missing)}")


# --- Commands ------------------------------------------------------------------------------
def cmd_generate() -> None:
  _require("output_dir")
  stages.generate(FLAGS.output_dir, *generator_config(), overwrite=FLAGS.overwrite)


def cmd_preprocess() -> None:
  _require("raw", "spec", "data_dir")
  stages.preprocess(preprocess_config(FLAGS.raw, FLAGS.spec, FLAGS.data_dir),
                    _BEAM_ARGS)


def cmd_train() -> None:
  _require("data_dir", "model_dir")
  # Parameter-server training: worker and PS tasks only serve.
  strategies.serve_forever_if_server_task(FLAGS.strategy)
  config = train_config(FLAGS.data_dir, FLAGS.model_dir)
  run = RunDirectory(config.model_dir)
  if not config.overwrite and run.has_run():
    # Resuming: the run's model config and training options, not the flags' defaults
    # (no --model needed); a flag that contradicts them is refused.
    config = dataclasses.replace(config, model=run.check_model(
        given_model_options(), ModelConfig, remedy=RUN_REMEDY),
        **run.check_training(given_training_options(config), RUN_SHAPING))
  else:
    refuse_inapplicable(config.model)
  train.train(config, follow_codebook_warmup_steps=_codebook_warmup_unset())


def cmd_evaluate() -> None:
  _require("data_dir")
  if FLAGS.saved_model:
    if FLAGS.model_dir:
      raise ValueError(f"--model_dir={FLAGS.model_dir} with --saved_model="
                       f"{FLAGS.saved_model}: evaluate reads one model; give one of them")
    version = serving.latest_version(FLAGS.saved_model)
    export.check_data(version, FLAGS.data_dir)
    export.check_model_flags(version, given_model_options())
    stages.evaluate_and_report(evaluate.saved_model_predictor(version), FLAGS.data_dir,
                               export.read_model_config(version), FLAGS.output)
    return
  _require("model_dir")
  # The model config is the run's (checked against the model flags given).
  model = train.load_trained(FLAGS.data_dir, FLAGS.model_dir,
                             given=given_model_options())
  spec = PreprocessedData(FLAGS.data_dir).spec
  stages.evaluate_and_report(evaluate.model_predictor(model, spec), FLAGS.data_dir,
                             model.config, FLAGS.output)


def cmd_export() -> None:
  _require("data_dir", "model_dir", "export_dir")
  model = train.load_trained(FLAGS.data_dir, FLAGS.model_dir,
                             given=given_model_options())
  rows = data.first_records(FLAGS.data_dir, EVAL, stages.WARMUP_ROWS)
  spec = PreprocessedData(FLAGS.data_dir).spec
  export.check_same_model(FLAGS.export_dir, model.config, spec)
  version = export.export(model, spec, FLAGS.export_dir, rows)
  print(export.describe(version))
  export.prune_versions(FLAGS.export_dir, FLAGS.keep_export_versions)


def cmd_predict() -> None:
  _require("saved_model", "input")
  print(json.dumps(serving.predict(FLAGS.saved_model, FLAGS.input)))


def cmd_run() -> None:
  """All stages; writes metrics.json into --output_dir."""
  _require("output_dir")
  out = FLAGS.output_dir
  # Built first: a bad model or training option fails now, not after preprocessing.
  config = train_config(os.path.join(out, "data"), os.path.join(out, "model"))
  refuse_inapplicable(config.model)
  run_dir = RunDirectory(config.model_dir)
  if _codebook_warmup_unset() and not config.overwrite and run_dir.has_run():
    # Resuming a run whose codebook warm-up followed its length: the recorded one.
    recorded = run_dir.check_model({}, ModelConfig, remedy=RUN_REMEDY)
    if recorded.quantizes and config.model.quantizes:
      config = dataclasses.replace(config, model=options.with_values(
          config.model, {"codebook_warmup_steps": recorded.hmdrr.quantizer.warmup_steps}))
  if not config.overwrite and run_dir.has_run():
    config = dataclasses.replace(config, **run_dir.check_training(
        given_training_options(config), RUN_SHAPING))
  run_dir.check_resumable(config)  # before any work
  raw, spec = FLAGS.raw, FLAGS.spec
  summary = None
  if raw is None:
    generated = os.path.join(out, "raw_logs")
    summary = stages.generate(generated, *generator_config(), overwrite=True)  # the run's own
    raw, spec = stages.generated_raw(generated), spec or stages.generated_spec(generated)
  elif spec is None:
    raise ValueError("--spec is needed with --raw: it declares the fields of the log")
  # The data directory is the run's own (refused if a folder of the user's is there).
  stages.preprocess(dataclasses.replace(preprocess_config(raw, spec, config.data_dir),
                                        overwrite=True), _BEAM_ARGS)
  # --overwrite replaces the run: its export too, unless told how many to keep.
  keep = FLAGS.keep_export_versions or (1 if config.overwrite else 0)
  stages.train_evaluate_export(config, out, summary, FLAGS.verify_export,
                               follow_codebook_warmup_steps=_codebook_warmup_unset(),
                               keep_export_versions=keep)


def cmd_compare() -> None:
  _require("data_dir", "report_dir")
  settings = config_flags.from_flags(compare.CompareConfig).validate()
  base = train_config(FLAGS.data_dir, settings.report_dir)
  compare.refuse_unused_flags(base, settings.labels, given_model_options())
  summary = compare.run(base, settings.labels, settings.seeds, settings.report_dir,
                        follow_codebook_warmup_steps=_codebook_warmup_unset())
  print(compare_report.markdown(summary))
  print(f"report: {os.path.join(settings.report_dir, 'report.md')}")


DATASETS = ("movielens-100k",)


def cmd_data(args: List[str]) -> None:
  """`hmdn data fetch NAME`: downloads a dataset the project can use offline."""
  if len(args) != 2 or args[0] != "fetch" or args[1] not in DATASETS:
    raise app.UsageError(f"usage: hmdn data fetch {{{'|'.join(DATASETS)}}} "
                         "[--output_dir=DIR]")
  out = FLAGS.output_dir or os.path.join("data", "ml-100k")
  try:
    summary = movielens.fetch_movielens_100k(out)
  except (movielens.FetchError, ValueError) as e:
    print(f"hmdn data: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"MovieLens-100K: {summary['ratings']} ratings, {summary['users']} users, "
        f"{summary['items']} items in {out} (u.data, u.user, u.item; from "
        f"{summary['from']}). Licence: GroupLens research use only, do not "
        "redistribute.\n"
        f"  hmdn run --source=movielens --raw={out} --spec=movielens_100k "
        "--output_dir=runs/ml100k")


# --- The command table ------------------------------------------------------------------
def config_group(title: str, cls, rename=None, skip=()) -> FlagGroup:
  """The flags generated from a config dataclass, listed under `title`."""
  return FlagGroup(title, tuple(name for name in config_flags.flag_names(
      cls, rename).values() if name not in skip))


TRAIN = config_group("training (TrainConfig)", TrainConfig)
MODEL = config_group("model (ModelConfig)", ModelConfig)
PREPROCESS = config_group("preprocessing (PreprocessConfig)", PreprocessConfig)
GENERATED = FlagGroup("generated log", ("generator", "rows", "seed") +
                      generators.FLAG_FIELDS)
EVERY = FlagGroup("every command", ("cpu_devices", "debug", "verbosity"))
DIRS = ("data_dir", "model_dir")  # in `run` and `compare`: from --output_dir/--report_dir

COMMANDS: Dict[str, Command] = {c.name: c for c in (
    Command("generate", "synthetic raw logs and their spec into --output_dir",
            cmd_generate, (FlagGroup("generate", ("output_dir", "overwrite")), GENERATED,
                           EVERY)),
    Command("preprocess", "Beam: raw logs (--raw, --spec) into TFRecords in --data_dir",
            cmd_preprocess, (PREPROCESS, EVERY), beam=True),
    Command("train", "train (or resume) a model on --data_dir into --model_dir",
            cmd_train, (TRAIN, MODEL, EVERY)),
    Command("evaluate", "exact eval metrics of a run (--model_dir) or an export "
            "(--saved_model)", cmd_evaluate, (FlagGroup("evaluate", (
                "data_dir", "model_dir", "saved_model", "output")), MODEL, EVERY)),
    Command("export", "a run's model as a SavedModel version under --export_dir",
            cmd_export, (FlagGroup("export", ("data_dir", "model_dir", "export_dir",
                                              "keep_export_versions")), MODEL, EVERY)),
    Command("predict", "answer a TF Serving REST request (--input) with an export",
            cmd_predict, (FlagGroup("predict", ("saved_model", "input")), EVERY)),
    Command("run", "every stage (generate or --raw, preprocess, train, evaluate, "
            "export) into --output_dir", cmd_run, (
                FlagGroup("run", ("output_dir", "raw", "spec", "verify_export",
                                  "keep_export_versions")),
                GENERATED, config_group(TRAIN.title, TrainConfig, skip=DIRS), MODEL,
                config_group(PREPROCESS.title, PreprocessConfig,
                             skip=DIRS + ("overwrite",)), EVERY), beam=True),
    Command("compare", "models x seeds, same budget: report.md, plots, paired deltas",
            cmd_compare, (FlagGroup("compare", ("data_dir", "report_dir", "models",
                                                "seeds")),
                          # --models and --seeds name the models and the seeds
                          config_group(TRAIN.title, TrainConfig, skip=DIRS + ("seed",)),
                          config_group(MODEL.title, ModelConfig, skip=("model", "seed")),
                          EVERY)),
    Command("data", "fetch a dataset the project can use offline", cmd_data,
            (FlagGroup("data", ("output_dir",)), EVERY),
            args=f"fetch {{{'|'.join(DATASETS)}}}"),
)}


def main(argv: List[str]) -> None:
  if len(argv) < 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: hmdn {{{'|'.join(COMMANDS)}}} [--flags]; see --help")
  command, args = COMMANDS[argv[1]], argv[2:]
  if not FLAGS["verbosity"].present:  # TF's and Beam's INFO lines bury the results.
    logging.set_verbosity(logging.WARNING)
  absolute_path_flags()
  if command.args:
    command.run(args)
    return
  if args:
    raise app.UsageError(f"unexpected arguments {args}")
  try:
    strategies.split_cpu(FLAGS.cpu_devices)
    command.run()
  except USER_ERRORS + faults.FAULTS as e:  # one line naming the input or the path;
    if FLAGS.debug:  # tracebacks with --debug
      raise
    print(f"hmdn {command.name}: error: {faults.describe(e) or e}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: List[str]) -> List[str]:
  """absl's flags parser: pipeline/argv.py's, over this command table."""
  return argv_lib.parse(argv, COMMANDS, _BEAM_ARGS)


def run_main() -> None:
  """Console-script entry point (`hmdn`)."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run_main()
