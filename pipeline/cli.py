"""`hmdn`: the command line of every stage.

  hmdn generate   --output_dir=DIR [--rows=N --seed=S]      synthetic raw logs + spec
  hmdn preprocess --raw=GLOB --spec=SPEC --data_dir=DIR      Beam: raw -> TFRecords
  hmdn train      --data_dir=DIR --model_dir=DIR --model=NAME
  hmdn evaluate   --data_dir=DIR (--model_dir=DIR | --saved_model=DIR) [--output=FILE]
  hmdn export     --data_dir=DIR --model_dir=DIR --export_dir=DIR
  hmdn predict    --saved_model=DIR --input=REQUEST.json     TF Serving REST format
  hmdn run        --output_dir=DIR [--raw=GLOB --spec=SPEC]  all stages
  hmdn data fetch movielens-100k [--output_dir=DIR]         MovieLens-100K (ml-100k layout)

--source picks the reader of --raw: generic (CSV/JSONL), ali_ccp_raw (skeleton + common
features files) or movielens (the folder holding u.data, u.user, u.item).

Flags this program does not know are passed unchanged to Beam (e.g. --runner=...).
Bad input ends with one line naming the file, field and value, and exit status 2.
"""
import dataclasses
import json
import os
import subprocess
import sys
from typing import Dict, List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import features  # noqa: E402,F401  (selects legacy Keras before TensorFlow loads)
from absl import app, flags, logging  # noqa: E402

COMMANDS = ("generate", "preprocess", "train", "evaluate", "export", "predict", "run",
            "data")

FLAGS = flags.FLAGS
# Data.
flags.DEFINE_string("output_dir", None, "run: directory of every output of the run.")
flags.DEFINE_string("raw", None, "Raw log file glob(s), comma-separated; `run` without "
                    "it generates the embedded synthetic dataset.")
flags.DEFINE_string("spec", None, "Feature spec YAML (or the name of one in "
                    "features/specs). Default: the synthetic dataset's spec.")
flags.DEFINE_integer("rows", 200_000, "generate/run: rows of synthetic raw log.")
flags.DEFINE_string("input_format", "auto", "Raw format: csv, jsonl or auto.")
flags.DEFINE_string("delimiter", ",", "CSV delimiter.")
flags.DEFINE_float("eval_fraction", 0.2, "Share of rows in the eval split.")
flags.DEFINE_string("split_key", "", "Field whose hash decides the split (default: the "
                    "whole row).")
flags.DEFINE_enum("source", "generic", ["generic", "ali_ccp_raw", "movielens"],
                  "Reader of --raw (beam_jobs/sources.py): generic CSV/JSONL, Ali-CCP's "
                  "raw skeleton + common-features files, or a MovieLens ml-100k folder.")
flags.DEFINE_string("split_time_field", "", "Split by this numeric time field instead of "
                    "by hash: eval = rows at or after the cutoff.")
flags.DEFINE_float("split_time_cutoff", None, "Time split: the first eval time.")
flags.DEFINE_float("split_time_quantile", None, "Time split: the cutoff is this quantile "
                   "of the field (default 1 - --eval_fraction).")
flags.DEFINE_bool("tfds", True, "preprocess: also write <data_dir>/tfds/, the splits as "
                  "a TFDS dataset (tfds.builder_from_directory); --notfds skips it.")
flags.DEFINE_integer("direct_num_workers", 2, "Beam DirectRunner worker processes.")
flags.DEFINE_string("data_dir", None, "Preprocessed data (output of `preprocess`).")
# Model.
flags.DEFINE_string("model", "dnn", "Model name in the registry (e.g. moe, hmdn_apg).")
flags.DEFINE_integer("seed", 0, "Seed of data generation, initialisation and shuffling.")
flags.DEFINE_integer("output_dim", 32, "Backbone output width.")
flags.DEFINE_string("backbone_kwargs", "{}", "JSON of extra backbone constructor args.")
flags.DEFINE_enum("extraction", "dual", ["explicit", "implicit", "dual"], "HMDN views.")
flags.DEFINE_integer("distribution_dim", 16, "HMDN distribution dim d.")
flags.DEFINE_integer("num_levels", 4, "HMDN codebook depth D.")
flags.DEFINE_integer("codebook_size", 16, "HMDN codes per level K.")
flags.DEFINE_bool("shared_codebook", False, "One codebook shared by all levels.")
flags.DEFINE_enum("codebook_update", "ema", ["ema", "loss"], "Codebook learning.")
flags.DEFINE_float("commitment_weight", 1.0, "lambda: weight of quantization losses.")
flags.DEFINE_enum("hmdn_condition", "concat", ["concat", "hierarchical_only"],
                  "Backbone condition of HMDN models.")
# Training.
flags.DEFINE_string("model_dir", None, "Checkpoints, TensorBoard logs, run config.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker_mirrored",
                                          "parameter_server", "tpu"],
                  "tf.distribute strategy; multi-worker ones read TF_CONFIG.")
flags.DEFINE_string("tpu", "", "tpu: the TPU name or grpc:// address.")
flags.DEFINE_integer("ps_min_shard_bytes", 256 << 10, "parameter_server: embedding "
                     "tables larger than this are sharded across the PS tasks.")
flags.DEFINE_integer("num_devices", 0, "mirrored: number of devices (0 = all GPUs).")
flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into N logical devices.")
flags.DEFINE_integer("batch_size", 512, "GLOBAL batch size (over all replicas).")
flags.DEFINE_float("learning_rate", 2e-3, "Adam learning rate for the global batch.")
flags.DEFINE_integer("epochs", 3, "Training epochs.")
flags.DEFINE_integer("steps_per_epoch", 0, "0 = one pass over the training split.")
flags.DEFINE_enum("lr_schedule", "constant", ["constant", "cosine"], "Learning rate "
                  "schedule (cosine decays to 0 over the run, after --warmup_steps).")
flags.DEFINE_integer("warmup_steps", 0, "Linear warm-up steps of the cosine schedule.")
flags.DEFINE_integer("early_stopping_patience", 0, "Stop after N epochs without a "
                     "better exact eval AUC (0 = off).")
flags.DEFINE_integer("keep_checkpoints", 3, "Epoch checkpoints kept.")
flags.DEFINE_integer("backup_every_steps", 0, "Fault-tolerance backup frequency in "
                     "steps (0 = each epoch).")
# Export and serving.
flags.DEFINE_string("export_dir", None, "Export root: versions go to <export_dir>/<v>/.")
flags.DEFINE_string("saved_model", None, "An exported version dir (or export root: the "
                    "latest version is used).")
flags.DEFINE_string("input", None, "predict: JSON request in TF Serving REST format.")
flags.DEFINE_string("output", None, "evaluate: write metrics JSON here.")
flags.DEFINE_bool("verify_export", True, "run: reload the export in a fresh process.")
flags.DEFINE_bool("debug", False, "Show tracebacks of input errors.")

_BEAM_ARGS: List[str] = []


def model_config_from_flags():
  from models.registry import ModelConfig
  try:
    backbone_kwargs = json.loads(FLAGS.backbone_kwargs)
  except ValueError as e:
    raise ValueError(f"--backbone_kwargs is not valid JSON: {e}")
  return ModelConfig(
      name=FLAGS.model, output_dim=FLAGS.output_dim, backbone_kwargs=backbone_kwargs,
      extraction=FLAGS.extraction, distribution_dim=FLAGS.distribution_dim,
      num_levels=FLAGS.num_levels, codebook_size=FLAGS.codebook_size,
      shared_codebook=FLAGS.shared_codebook, codebook_update=FLAGS.codebook_update,
      commitment_weight=FLAGS.commitment_weight, hmdn_condition=FLAGS.hmdn_condition,
      seed=FLAGS.seed).validate()


def train_config_from_flags(data_dir: str, model_dir: str):
  from pipeline.train import TrainConfig
  return TrainConfig(
      data_dir=data_dir, model_dir=model_dir, model=model_config_from_flags(),
      strategy=FLAGS.strategy, tpu=FLAGS.tpu, num_devices=FLAGS.num_devices,
      batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
      lr_schedule=FLAGS.lr_schedule, warmup_steps=FLAGS.warmup_steps,
      epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch,
      early_stopping_patience=FLAGS.early_stopping_patience,
      keep_checkpoints=FLAGS.keep_checkpoints,
      backup_every_steps=FLAGS.backup_every_steps,
      ps_min_shard_bytes=FLAGS.ps_min_shard_bytes, seed=FLAGS.seed)


def _require(*names: str) -> None:
  missing = [n for n in names if not getattr(FLAGS, n)]
  if missing:
    raise ValueError(f"missing flag(s): {', '.join('--' + n for n in missing)}")


def _latest_version(path: str) -> str:
  """An export root -> its newest version dir; a version dir stays as it is."""
  import tensorflow as tf
  if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
    return path
  versions = sorted(int(n.strip("/")) for n in tf.io.gfile.listdir(path)
                    if n.strip("/").isdigit()) if tf.io.gfile.isdir(path) else []
  if not versions:
    raise ValueError(f"--saved_model: {path} holds no SavedModel version")
  return os.path.join(path, str(versions[-1]))


def cmd_generate(output_dir: str) -> Dict:
  from beam_jobs import synthetic_logs
  summary = synthetic_logs.generate(output_dir, synthetic_logs.GeneratorConfig(
      rows=FLAGS.rows, seed=FLAGS.seed))
  print(f"generated {summary['rows']} rows (CTR {summary['ctr']:.4f}, oracle AUC "
        f"{summary['oracle_auc']:.4f}) in {output_dir}/raw; spec: {output_dir}/spec.yaml")
  return summary


def cmd_preprocess(raw: str, spec: str, data_dir: str) -> Dict:
  from beam_jobs import preprocess
  metadata = preprocess.run(preprocess.PreprocessConfig(
      raw=raw, output_dir=data_dir, spec_path=spec, input_format=FLAGS.input_format,
      delimiter=FLAGS.delimiter, eval_fraction=FLAGS.eval_fraction,
      split_key=FLAGS.split_key, direct_num_workers=FLAGS.direct_num_workers,
      source=FLAGS.source, split_time_field=FLAGS.split_time_field,
      split_time_cutoff=FLAGS.split_time_cutoff,
      split_time_quantile=FLAGS.split_time_quantile, tfds=FLAGS.tfds),
      beam_args=_BEAM_ARGS)
  print(f"preprocess: read {metadata['rows_read']}, written "
        f"{metadata['rows_written']}, rejected {metadata['rows_rejected']} "
        f"(dead letter: {data_dir}/dead_letter/)")
  return metadata


def cmd_evaluate(predict, data_dir: str, model_config=None, output: str = None) -> Dict:
  from features import spec as spec_lib
  from pipeline import evaluate
  spec = spec_lib.load_spec(os.path.join(data_dir, "spec.yaml"))
  columns = evaluate.collect(predict, data_dir, spec)
  views = model_config.code_views if model_config is not None else []
  codebook_size = model_config.codebook_size if model_config is not None else None
  result = evaluate.compute_metrics(columns, spec, codebook_size, views)
  print(evaluate.format_table(result))
  if output:
    _write_json(output, result)
  return result


def _write_json(path: str, obj) -> None:
  import tensorflow as tf
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(json.dumps(obj, indent=1, default=float))
  tf.io.gfile.rename(tmp, path, overwrite=True)


def cmd_predict(saved_model: str, request_path: str) -> Dict:
  import numpy as np
  import tensorflow as tf
  from pipeline import serving_request
  from features import spec as spec_lib
  version = _latest_version(saved_model)
  request = serving_request.load_request(request_path)
  loaded = tf.saved_model.load(version)
  name = request.get("signature_name", "serving_default")
  if name not in loaded.signatures:
    raise serving_request.RequestError(
        f"signature_name {name!r} is not in {version}; it has {list(loaded.signatures)}")
  signature = loaded.signatures[name]
  try:
    if name in ("serving_default", "classify"):
      examples = tf.constant(serving_request.examples_from_instances(request["instances"]))
      out = (signature(examples=examples) if name == "serving_default"
             else signature(inputs=examples))
    else:
      spec = spec_lib.load_spec(os.path.join(version, "assets.extra", "spec.yaml"))
      tensors = serving_request.tensors_from_instances(spec, request["instances"])
      out = signature(**{k: tf.constant(v) for k, v in tensors.items()})
  except tf.errors.InvalidArgumentError as e:  # e.g. a required feature not in an Example
    lines = [l.strip() for l in e.message.splitlines() if l.strip()]
    reason = next((l for l in lines if "Feature:" in l), lines[-1] if lines else str(e))
    raise serving_request.RequestError(f"{request_path}: {reason}")
  def jsonable(value):
    value = np.asarray(value)
    if value.dtype == object:  # string tensors come back as bytes
      return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(value).tolist()
    return value.tolist()

  predictions = [{k: jsonable(v[i]) for k, v in out.items()}
                 for i in range(len(request["instances"]))]
  response = {"predictions": predictions}
  print(json.dumps(response))
  return response


def cmd_run() -> Dict:
  """All stages; writes metrics.json into --output_dir."""
  _require("output_dir")
  model_config_from_flags()  # a bad model option fails now, not after preprocessing
  out = FLAGS.output_dir
  raw, spec = FLAGS.raw, FLAGS.spec
  summary = None
  if raw is None:
    summary = cmd_generate(os.path.join(out, "raw_logs"))
    raw = os.path.join(out, "raw_logs", "raw", "*.csv")
    spec = spec or os.path.join(out, "raw_logs", "spec.yaml")
  elif spec is None:
    raise ValueError("--spec is needed with --raw: it declares the fields of the log")
  data_dir = os.path.join(out, "data")
  cmd_preprocess(raw, spec, data_dir)
  return train_evaluate_export(data_dir, out, summary)


def train_evaluate_export(data_dir: str, out: str, summary=None) -> Dict:
  import tensorflow as tf
  from features import spec as spec_lib
  from pipeline import evaluate, export, train
  config = train_config_from_flags(data_dir, os.path.join(out, "model"))
  model = train.train(config)
  spec = spec_lib.load_spec(os.path.join(data_dir, "spec.yaml"))
  result = {"model": config.model.name, "seed": config.seed}
  result.update(cmd_evaluate(evaluate.model_predictor(model, spec), data_dir,
                             config.model))
  if summary is not None:
    result["generator"] = {k: summary[k] for k in ("rows", "ctr", "oracle_auc")}
  # Predictions of the trained model, taken before export (which merges APG factors).
  rows = _eval_rows(data_dir, 3)
  expected = evaluate.model_predictor(model, spec)(tf.constant(rows))["probability"]
  export_dir = export.export(model, spec, os.path.join(out, "export"),
                             warmup_examples=_eval_rows(data_dir, 8))
  result["export_dir"] = export_dir
  _write_json(os.path.join(out, "metrics.json"), result)
  print(f"metrics: {os.path.join(out, 'metrics.json')}")
  print(f"SavedModel for TF Serving: {export_dir}")
  if FLAGS.verify_export:
    verify_in_fresh_process(spec, rows, expected.numpy(), export_dir, out)
  return result


def _eval_rows(data_dir: str, n: int) -> List[bytes]:
  """The first n serialized eval examples (warm-up requests, demo requests)."""
  import tensorflow as tf
  from pipeline import data
  return [r.numpy() for r in tf.data.TFRecordDataset(
      data.files_of(data_dir, "eval"), compression_type="GZIP").take(n)]


def verify_in_fresh_process(spec, rows, expected, export_dir, out) -> None:
  """Writes a REST request from eval rows; a new process answers it from the export,
  which must agree with the trained model's `expected` probabilities."""
  import numpy as np
  from pipeline import serving_request
  request = {"signature_name": "predict",
             "instances": serving_request.instances_from_examples(spec, rows, raw=True)}
  request_path = os.path.join(out, "request.json")
  with open(request_path, "w") as f:
    json.dump(request, f, indent=1)
  proc = subprocess.run(
      [sys.executable, "-m", "pipeline.cli", "predict", f"--saved_model={export_dir}",
       f"--input={request_path}"], capture_output=True, text=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if proc.returncode != 0:
    raise RuntimeError(f"the export failed to answer in a fresh process:\n{proc.stderr}")
  response = json.loads(proc.stdout.strip().splitlines()[-1])
  got = np.array([p["probability"] for p in response["predictions"]])
  print(f"request ({request_path}): {json.dumps(request['instances'][0])}")
  print(f"fresh-process prediction from {export_dir}: {got.round(6).tolist()}; "
        f"in-memory model: {np.asarray(expected).round(6).tolist()}")
  if not np.allclose(got, expected, atol=1e-5):
    raise RuntimeError("the reloaded SavedModel disagrees with the trained model")


def main(argv: List[str]) -> None:
  if len(argv) < 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: hmdn {{{'|'.join(COMMANDS)}}} [--flags]; see --help")
  command = argv[1]
  if not FLAGS["verbosity"].present:  # TF's and Beam's INFO lines bury the results.
    logging.set_verbosity(logging.WARNING)
  if command == "data":
    cmd_data(argv[2:])
    return
  if len(argv) > 2:
    raise app.UsageError(f"unexpected arguments {argv[2:]}")
  try:
    from pipeline import strategies
    strategies.split_cpu(FLAGS.cpu_devices)
    if command == "train":  # parameter-server training: workers and PS only serve.
      strategies.serve_forever_if_server_task(FLAGS.strategy)
    if command == "generate":
      _require("output_dir")
      cmd_generate(FLAGS.output_dir)
    elif command == "preprocess":
      _require("raw", "spec", "data_dir")
      cmd_preprocess(FLAGS.raw, FLAGS.spec, FLAGS.data_dir)
    elif command == "train":
      _require("data_dir", "model_dir")
      from pipeline import train
      train.train(train_config_from_flags(FLAGS.data_dir, FLAGS.model_dir))
    elif command == "evaluate":
      _require("data_dir")
      cmd_evaluate_command()
    elif command == "export":
      _require("data_dir", "model_dir", "export_dir")
      from pipeline import export, train
      from features import spec as spec_lib
      model = train.load_trained(FLAGS.data_dir, FLAGS.model_dir,
                                 model_config_from_flags())
      spec = spec_lib.load_spec(os.path.join(FLAGS.data_dir, "spec.yaml"))
      print(f"exported: {export.export(model, spec, FLAGS.export_dir, _eval_rows(FLAGS.data_dir, 8))}")
    elif command == "predict":
      _require("saved_model", "input")
      cmd_predict(FLAGS.saved_model, FLAGS.input)
    elif command == "run":
      cmd_run()
  except Exception as e:  # pylint: disable=broad-except
    from features.spec import SpecError
    from beam_jobs.preprocess import PreprocessError
    from pipeline.serving_request import RequestError
    if FLAGS.debug or not isinstance(
        e, (SpecError, PreprocessError, RequestError, ValueError, FileNotFoundError)):
      raise
    print(f"hmdn {command}: error: {e}", file=sys.stderr)
    sys.exit(2)


DATASETS = ("movielens-100k",)


def cmd_data(args: List[str]) -> None:
  """`hmdn data fetch NAME`: downloads a dataset the project can use offline."""
  if len(args) != 2 or args[0] != "fetch" or args[1] not in DATASETS:
    raise app.UsageError(f"usage: hmdn data fetch {{{'|'.join(DATASETS)}}} "
                         "[--output_dir=DIR]")
  from beam_jobs import movielens
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


def cmd_evaluate_command() -> None:
  import tensorflow as tf
  from features import spec as spec_lib
  from pipeline import evaluate, train
  if FLAGS.saved_model:
    from models.registry import ModelConfig
    version = _latest_version(FLAGS.saved_model)
    config_path = os.path.join(version, "assets.extra", "model_config.json")
    config = None
    if tf.io.gfile.exists(config_path):
      with tf.io.gfile.GFile(config_path) as f:
        config = ModelConfig(**json.load(f))
    cmd_evaluate(evaluate.saved_model_predictor(version), FLAGS.data_dir, config,
                 FLAGS.output)
    return
  _require("model_dir")
  config = model_config_from_flags()
  model = train.load_trained(FLAGS.data_dir, FLAGS.model_dir, config)
  spec = spec_lib.load_spec(os.path.join(FLAGS.data_dir, "spec.yaml"))
  cmd_evaluate(evaluate.model_predictor(model, spec), FLAGS.data_dir, config,
               FLAGS.output)


def _parse_flags(argv: List[str]) -> List[str]:
  """Parses our flags; unknown --flags are kept for Beam's PipelineOptions."""
  rest = FLAGS(argv, known_only=True)
  _BEAM_ARGS[:] = [a for a in rest[1:] if a.startswith("--")]
  return [rest[0]] + [a for a in rest[1:] if not a.startswith("--")]


def run_main() -> None:
  """Console-script entry point (`hmdn`)."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run_main()
