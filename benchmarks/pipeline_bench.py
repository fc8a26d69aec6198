"""Throughput of training (1 and 2 replicas) and of the input pipeline, serving latency of
the SavedModel, and peak memory of each, every measurement in its own process.

  python -m benchmarks.pipeline_bench [--model=hmdn_moe --rows=50000 --batch_size=512]

Each configuration runs in a subprocess of this module (`--worker=train|input|serve`):
logical CPU devices can only be set before TensorFlow initialises, the serving side must
be a fresh process that holds nothing but the loaded export, and `ru_maxrss` is per
process. The configurations alternate over `--rounds` and the medians are reported, so
noise from other processes on the machine is shared out rather than landing on one.

  train   `model.fit` as `pipeline.train.train` sets it up (strategy, build_model, Adam,
          `--steps_per_execution`, the training `make_dataset` with DATA auto-sharding
          and `--cache_input`, the in-graph non-finite-loss check), without evaluation
          and checkpoint callbacks. Epochs of `--warmup_steps` steps: the first is the
          warm-up, the others are timed by wall clock at their start and end (no batch
          hook: a per-step callback would itself read the logs back every step).
          examples/s = timed steps x batch / their time. `--loss_check=per_step` times
          the previous check instead (a batch hook reading logs["loss"]), `none` none.
          2 replicas: MirroredStrategy over the CPU split into 2 logical devices (both
          share the same 2 cores). Round 1 of the 1-replica run exports the trained
          model with `pipeline.export.export`.
  input   `pipeline.data.make_dataset(training=True)` alone, streamed from the files and
          cached in memory (`cache=True`): batches read, decompressed, shuffled and
          parsed per second after a warm-up (which fills the first shuffle window or the
          cache), compared with the training throughput. Streamed runs also time the
          pipeline cut after each stage (read + gunzip, + shuffle windows, + parse).
  serve   `tf.saved_model.load` of the export, `signatures["serving_default"]` on
          serialized tf.Example from the eval split at each batch size: per-call latency
          (result fetched to the host) after warm-up calls, p50 / p99. A spec with
          sequence fields: the eval rows whose histories are the longest (each at its
          max_length when there are such rows), the worst case of a request.

`--data_dir` runs it all on that data directory instead of the synthetic log (e.g.
MovieLens-100K's, whose histories are 50 long: the serving latency with histories).

Results: a table on stdout and `<out_dir>/pipeline_bench.json`. Not a test.
"""
import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from benchmarks import common  # noqa: E402
from hmdn.features.fileio import write_json_atomic  # noqa: E402
from hmdn.features.preprocessed import EVAL, TRAIN, PreprocessedData  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "hmdn_moe", "Model trained and served.")
flags.DEFINE_integer("rows", 50_000, "Synthetic rows (generated once, cached).")
flags.DEFINE_integer("batch_size", 512, "GLOBAL training batch (and input batch).")
flags.DEFINE_integer("train_steps", 60, "Timed training steps per run.")
flags.DEFINE_integer("warmup_steps", 10, "Untimed training steps before them; also "
                     "the length of each timed epoch.")
flags.DEFINE_integer("steps_per_execution", 1, "TrainConfig.steps_per_execution.")
flags.DEFINE_bool("cache_input", False, "TrainConfig.cache_input of the train runs.")
flags.DEFINE_enum("loss_check", "graph", ["graph", "per_step", "none"], "train: the "
                  "non-finite loss check timed with the steps.")
flags.DEFINE_integer("input_batches", 200, "Timed input-pipeline batches per run.")
flags.DEFINE_integer("input_warmup_batches", 20, "Untimed input batches before them.")
flags.DEFINE_string("serve_batches", "1,64,256,512", "Serving batch sizes.")
flags.DEFINE_integer("latency_calls", 500, "Timed serving calls per batch size.")
flags.DEFINE_integer("latency_warmup", 20, "Untimed serving calls per batch size.")
flags.DEFINE_integer("rounds", 3, "Rounds of the train(1), train(2) and input runs.")
flags.DEFINE_string("out_dir", "bench_out", "Cache of data and results.")
# Worker side (set by the parent; not meant to be typed).
flags.DEFINE_enum("worker", None, ["train", "input", "serve"], "Run one measurement in "
                  "this process and write it to --result.")
flags.DEFINE_integer("replicas", 1, "train worker: 1 (default strategy) or N "
                     "(MirroredStrategy over N logical CPU devices).")
flags.DEFINE_string("data_dir", None, "Preprocessed data (default: the synthetic "
                    "log's, generated once); the workers get it from the parent.")
flags.DEFINE_string("export_root", "", "train worker: export the model here if set.")
flags.DEFINE_string("saved_model", None, "serve worker: the exported version dir.")
flags.DEFINE_string("result", None, "Worker: JSON result file.")

TARGET_INPUT_RATIO = 5.0  # input pipeline >= 5x training throughput
TARGET_P99_MS = {1: 2.0, 256: 10.0}  # serving p99 on 2 cores


@dataclasses.dataclass
class TrainRun:
  replicas: int
  examples_per_sec: float  # timed steps x batch / their wall time
  step_ms_median: float
  step_ms_p90: float
  max_rss_mb: float
  export_dir: str = ""


@dataclasses.dataclass
class InputRun:
  examples_per_sec: float
  batch_ms_median: float
  max_rss_mb: float
  # Streamed runs: records/s of the pipeline's first stages alone (`_input_stages`).
  stages: Dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Latency:
  batch: int
  calls: int
  p50_ms: float
  p99_ms: float
  mean_ms: float
  examples_per_sec_at_p50: float
  target_p99_ms: Optional[float] = None
  meets_target: Optional[bool] = None


@dataclasses.dataclass
class ServeRun:
  load_seconds: float
  latencies: List[Latency]
  max_rss_mb: float  # after load and every call: the serving process's peak
  # Sequence fields: {field: [min, max] length} over the requests' rows.
  sequence_lengths: Dict[str, List[int]] = dataclasses.field(default_factory=dict)


# --- workers: one measurement per process -----------------------------------------------


def _worker_train() -> dict:
  """model.fit under the strategy, with the input pipeline train.train builds."""
  from hmdn.pipeline import strategies
  strategies.split_cpu(FLAGS.replicas)  # before anything initialises TensorFlow
  import tensorflow as tf
  from hmdn.models.registry import ModelConfig
  from hmdn.pipeline import callbacks as callbacks_lib
  from hmdn.pipeline import data, export, train

  tf.keras.utils.set_random_seed(0)
  strategy = (strategies.make_strategy("mirrored", FLAGS.replicas)
              if FLAGS.replicas > 1 else strategies.make_strategy("default"))
  spec = PreprocessedData(FLAGS.data_dir).spec
  dataset = data.make_dataset(FLAGS.data_dir, TRAIN, spec, FLAGS.batch_size,
                              training=True, seed=0, cache=FLAGS.cache_input)
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  dataset = dataset.with_options(options)
  with strategy.scope():
    model = train.build_model(FLAGS.data_dir, ModelConfig(name=FLAGS.model))
    model.compile(optimizer=tf.keras.optimizers.Adam(2e-3),
                  steps_per_execution=FLAGS.steps_per_execution)

  seconds: List[float] = []  # of each epoch

  class EpochClock(tf.keras.callbacks.Callback):
    """Wall time of each epoch (Keras has fetched its last step's logs at its end)."""

    def on_epoch_begin(self, epoch, logs=None):
      self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
      seconds.append(time.perf_counter() - self._start)

  class PerStepCheck(callbacks_lib.StopOnNonFiniteLoss):
    """The check this benchmark compares against: the loss read back every step."""

    def __init__(self):
      super().__init__(in_graph=False)

    def on_train_batch_end(self, batch, logs=None):
      if not math.isfinite(float(logs["loss"])):
        raise ValueError(f"non-finite loss at step {batch + 1}")

  stop = callbacks_lib.StopOnNonFiniteLoss()
  checks = {"graph": [stop], "per_step": [PerStepCheck()], "none": []}[FLAGS.loss_check]
  epoch_steps = max(1, FLAGS.warmup_steps)
  epochs = 1 + max(1, FLAGS.train_steps // epoch_steps)
  with stop.raising_training_error():
    model.fit(dataset, epochs=epochs, steps_per_epoch=epoch_steps,
              callbacks=[EpochClock()] + checks, verbose=0)
  timed = seconds[1:]  # after the warm-up epoch
  step_seconds = [t / epoch_steps for t in timed]
  run = TrainRun(replicas=strategy.num_replicas_in_sync,
                 examples_per_sec=(len(timed) * epoch_steps * FLAGS.batch_size
                                   / sum(timed)),
                 step_ms_median=common.median(step_seconds) * 1e3,
                 step_ms_p90=common.percentile(step_seconds, 90) * 1e3,
                 max_rss_mb=common.max_rss_mb())
  if FLAGS.export_root:
    rows = data.first_records(FLAGS.data_dir, EVAL, 8)
    run.export_dir = export.export(model, spec, FLAGS.export_root, warmup_examples=rows)
  return dataclasses.asdict(run)


def _input_stages(spec) -> Dict[str, float]:
  """Records/s of the streamed pipeline's stages, each pipeline cut after it: the
  files' record blocks read and decompressed as `make_dataset` reads them
  (`data.read_blocks`), cut into batches; then with its shuffle windows; then (no
  shuffle) parsed. Shows which stage bounds the streamed rate."""
  import tensorflow as tf
  from hmdn.pipeline import data
  files = data.files_of(FLAGS.data_dir, TRAIN)
  batches = FLAGS.input_batches

  def blocks():
    return data.read_blocks(tf.data.Dataset.from_tensor_slices(files).repeat(),
                            len(files), ordered=False)

  def rate(ds):
    it = iter(ds.prefetch(tf.data.AUTOTUNE))
    for _ in range(FLAGS.input_warmup_batches):
      next(it)
    start = time.perf_counter()
    for _ in range(batches):
      next(it)
    return batches * FLAGS.batch_size / (time.perf_counter() - start)

  parse = lambda s: data.parse_batch(s, spec, for_serving=True, with_label=True)  # noqa
  return {
      "read + gunzip": rate(blocks().rebatch(FLAGS.batch_size)),
      "read + gunzip + shuffle windows": rate(data.shuffled_windows(
          blocks(), FLAGS.batch_size, data.SHUFFLE_WINDOW_RECORDS, seed=0)),
      "read + gunzip + parse batch": rate(blocks().rebatch(FLAGS.batch_size).map(
          parse, num_parallel_calls=tf.data.AUTOTUNE)),
  }


def _worker_input() -> dict:
  """The training input pipeline alone, consumed as fast as it produces."""
  import tensorflow as tf  # noqa: F401  (initialised here, not inside the clock)
  from hmdn.pipeline import data
  spec = PreprocessedData(FLAGS.data_dir).spec
  it = iter(data.make_dataset(FLAGS.data_dir, TRAIN, spec, FLAGS.batch_size,
                              training=True, seed=0, cache=FLAGS.cache_input))
  for _ in range(FLAGS.input_warmup_batches):
    next(it)
  times = []
  start = time.perf_counter()
  for _ in range(FLAGS.input_batches):
    t = time.perf_counter()
    next(it)
    times.append(time.perf_counter() - t)
  elapsed = time.perf_counter() - start
  del it
  return dataclasses.asdict(InputRun(
      examples_per_sec=FLAGS.input_batches * FLAGS.batch_size / elapsed,
      batch_ms_median=common.median(times) * 1e3, max_rss_mb=common.max_rss_mb(),
      stages={} if FLAGS.cache_input else _input_stages(spec)))


def _worker_serve() -> dict:
  """A process holding only the loaded export, as a model server would."""
  import tensorflow as tf
  sizes = [int(b) for b in FLAGS.serve_batches.split(",")]
  # Read directly (pipeline/ is not imported: the process holds only the export).
  preprocessed = PreprocessedData(FLAGS.data_dir)
  files = preprocessed.split_files(EVAL)
  sequences = [f.name for f in preprocessed.spec.sequence_fields]
  if sequences:  # the longest histories: the worst case of a request
    scored = []
    for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(20_000):
      example = tf.train.Example.FromString(r.numpy())
      lengths = [len(example.features.feature[n].bytes_list.value) for n in sequences]
      scored.append((min(lengths), r.numpy(), lengths))
    scored.sort(key=lambda t: -t[0])
    chosen = scored[:max(sizes)]
    rows = [r for _, r, _ in chosen]
    sequence_lengths = {n: [min(c[2][i] for c in chosen), max(c[2][i] for c in chosen)]
                        for i, n in enumerate(sequences)}
  else:
    rows = [r.numpy() for r in tf.data.TFRecordDataset(
        files, compression_type="GZIP").take(max(sizes))]
    sequence_lengths = {}
  start = time.perf_counter()
  signature = tf.saved_model.load(FLAGS.saved_model).signatures["serving_default"]
  load_seconds = time.perf_counter() - start
  requests = {b: tf.constant([rows[i % len(rows)] for i in range(b)]) for b in sizes}

  def call(b):
    t = time.perf_counter()
    signature(examples=requests[b])["probability"].numpy()
    return time.perf_counter() - t

  for b in sizes:
    for _ in range(FLAGS.latency_warmup):
      call(b)
  times: Dict[int, List[float]] = {b: [] for b in sizes}
  chunks = 5  # batch sizes interleaved in 5 passes: a noisy spell hits them all
  for c in range(chunks):
    for b in sizes:
      n = FLAGS.latency_calls // chunks + (c < FLAGS.latency_calls % chunks)
      times[b].extend(call(b) for _ in range(n))
  latencies = []
  for b in sizes:
    t = times[b]
    p50 = common.percentile(t, 50)
    target = TARGET_P99_MS.get(b)
    p99 = common.percentile(t, 99) * 1e3
    latencies.append(Latency(
        batch=b, calls=len(t), p50_ms=p50 * 1e3, p99_ms=p99,
        mean_ms=sum(t) / len(t) * 1e3, examples_per_sec_at_p50=b / p50,
        target_p99_ms=target, meets_target=None if target is None else p99 <= target))
  return dataclasses.asdict(ServeRun(load_seconds=load_seconds, latencies=latencies,
                                     max_rss_mb=common.max_rss_mb(),
                                     sequence_lengths=sequence_lengths))


# --- parent: data, subprocesses, table ------------------------------------------------


def _spawn(worker: str, data_dir: str, **flags_) -> dict:
  """Runs `python -m benchmarks.pipeline_bench --worker=...` and returns its result."""
  fd, result = tempfile.mkstemp(suffix=".json", prefix=f"bench-{worker}-")
  os.close(fd)
  args = [sys.executable, "-m", "benchmarks.pipeline_bench", f"--worker={worker}",
          f"--data_dir={data_dir}", f"--result={result}", f"--model={FLAGS.model}",
          f"--batch_size={FLAGS.batch_size}"]
  for name in ("train_steps", "warmup_steps", "input_batches", "input_warmup_batches",
               "serve_batches", "latency_calls", "latency_warmup",
               "steps_per_execution", "loss_check"):
    args.append(f"--{name}={getattr(FLAGS, name)}")
  args += [f"--{k}={v}" for k, v in flags_.items()]
  start = time.perf_counter()
  proc = subprocess.run(args, cwd=common.REPO_ROOT, capture_output=True, text=True)
  try:
    if proc.returncode != 0:
      raise RuntimeError(f"worker {worker} {flags_} failed ({proc.returncode}):\n"
                         f"{proc.stderr[-4000:]}")
    with open(result) as f:
      out = json.load(f)
  finally:
    os.remove(result)
  print(f"  {worker} {flags_ or ''}: {time.perf_counter() - start:.0f} s", flush=True)
  return out


def _fmt_bool(value: Optional[bool]) -> str:
  return "" if value is None else ("met" if value else "MISSED")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if FLAGS.worker:
    result = {"train": _worker_train, "input": _worker_input,
              "serve": _worker_serve}[FLAGS.worker]()
    write_json_atomic(FLAGS.result, result)
    return

  data_dir = os.path.abspath(FLAGS.data_dir or
                             common.prepare_data(FLAGS.out_dir, FLAGS.rows))
  export_root = os.path.abspath(os.path.join(FLAGS.out_dir, "pipeline_export",
                                             FLAGS.model))
  if os.path.isdir(export_root):  # this benchmark's own exports: keep only this run's
    shutil.rmtree(export_root)
  load_before = common.load_average()
  train_runs: Dict[int, List[dict]] = {1: [], 2: []}
  input_runs: Dict[str, List[dict]] = {"streamed": [], "cached": []}
  export_dir = ""
  for r in range(FLAGS.rounds):
    print(f"round {r + 1}/{FLAGS.rounds}", flush=True)
    # Alternate which configuration goes first, so a slow spell does not favour one.
    order = [1, 2] if r % 2 == 0 else [2, 1]
    for replicas in order:
      extra = {"export_root": export_root} if replicas == 1 and not export_dir else {}
      run = _spawn("train", data_dir, replicas=replicas,
                   cache_input=FLAGS.cache_input, **extra)
      export_dir = export_dir or run.get("export_dir", "")
      train_runs[replicas].append(run)
    for kind in ("streamed", "cached"):
      input_runs[kind].append(_spawn("input", data_dir,
                                     cache_input=kind == "cached"))
  serve = _spawn("serve", data_dir, saved_model=export_dir)

  def med(runs, key):
    return common.median(r[key] for r in runs)

  train_eps = {n: med(runs, "examples_per_sec") for n, runs in train_runs.items()}
  input_eps = {k: med(runs, "examples_per_sec") for k, runs in input_runs.items()}
  ratios = {k: {str(n): eps / train_eps[n] for n in train_eps}
            for k, eps in input_eps.items()}
  summary = {
      "train_examples_per_sec": {str(n): v for n, v in train_eps.items()},
      "train_step_ms_median": {str(n): med(runs, "step_ms_median")
                               for n, runs in train_runs.items()},
      "speedup_2_replicas": train_eps[2] / train_eps[1],
      "input_examples_per_sec": input_eps,
      "input_to_train_ratio": ratios,
      "input_meets_target": {k: min(r.values()) >= TARGET_INPUT_RATIO
                             for k, r in ratios.items()},
      "max_rss_mb": {"train_1_replica": max(r["max_rss_mb"] for r in train_runs[1]),
                     "train_2_replicas": max(r["max_rss_mb"] for r in train_runs[2]),
                     **{f"input_{k}": max(r["max_rss_mb"] for r in runs)
                        for k, runs in input_runs.items()},
                     "serve": serve["max_rss_mb"]},
  }

  print(f"\n{FLAGS.model}, global batch {FLAGS.batch_size}, {FLAGS.rows} rows, "
        f"steps_per_execution {FLAGS.steps_per_execution}, cache_input "
        f"{FLAGS.cache_input}, loss check {FLAGS.loss_check}, "
        f"{FLAGS.rounds} rounds (medians); TF {_tf_version()}, {os.cpu_count()} CPUs, "
        f"load average {load_before[0]} before / {common.load_average()[0]} after")
  rows = []
  for n in (1, 2):
    rows.append([f"train, {n} replica{'s' if n > 1 else ''}", f"{train_eps[n]:,.0f}",
                 f"{summary['train_step_ms_median'][str(n)]:.1f}",
                 " ".join(f"{r['examples_per_sec']:,.0f}" for r in train_runs[n]),
                 f"{summary['max_rss_mb'][f'train_{n}_replica' + ('s' if n > 1 else '')]:,.0f}",
                 "" if n == 1 else f"x{summary['speedup_2_replicas']:.2f} vs 1"])
  for kind, runs in input_runs.items():
    rows.append([f"input alone, {kind}", f"{input_eps[kind]:,.0f}",
                 f"{med(runs, 'batch_ms_median'):.1f}",
                 " ".join(f"{r['examples_per_sec']:,.0f}" for r in runs),
                 f"{summary['max_rss_mb'][f'input_{kind}']:,.0f}",
                 f"x{ratios[kind]['1']:.1f} / x{ratios[kind]['2']:.1f} of train 1/2 "
                 f"(>= x{TARGET_INPUT_RATIO:.0f}: "
                 f"{_fmt_bool(summary['input_meets_target'][kind])})"])
  print(common.format_table(["throughput", "ex/s", "step ms", "per-run ex/s",
                             "peak RSS MB", "note"], rows))
  stage_names = list(input_runs["streamed"][0]["stages"])
  summary["input_stages_records_per_sec"] = {
      name: med([r["stages"] for r in input_runs["streamed"]], name)
      for name in stage_names}
  print("\nstreamed input cut after each stage (records/s, median of the rounds): " +
        ", ".join(f"{name} {rate:,.0f}" for name, rate in
                  summary["input_stages_records_per_sec"].items()))
  histories = "".join(f", {n} of {lo}-{hi} values" for n, (lo, hi) in
                      serve["sequence_lengths"].items())
  print(f"\nserving_default of {export_dir} in a fresh process (load "
        f"{serve['load_seconds']:.1f} s, peak RSS {serve['max_rss_mb']:,.0f} MB"
        f"{histories})")
  print(common.format_table(
      ["batch", "calls", "p50 ms", "p99 ms", "mean ms", "ex/s at p50", "p99 target"],
      [[l["batch"], l["calls"], f"{l['p50_ms']:.2f}", f"{l['p99_ms']:.2f}",
        f"{l['mean_ms']:.2f}", f"{l['examples_per_sec_at_p50']:,.0f}",
        "" if l["target_p99_ms"] is None else
        f"<= {l['target_p99_ms']:g} ms: {_fmt_bool(l['meets_target'])}"]
       for l in serve["latencies"]]))

  path = os.path.join(FLAGS.out_dir, "pipeline_bench.json")
  write_json_atomic(path, {
      "config": {k: getattr(FLAGS, k) for k in (
          "model", "rows", "batch_size", "train_steps", "warmup_steps", "input_batches",
          "input_warmup_batches", "serve_batches", "latency_calls", "latency_warmup",
          "rounds", "steps_per_execution", "cache_input", "loss_check")},
      "environment": {"tensorflow": _tf_version(), "cpus": os.cpu_count(),
                      "platform": platform.platform(),
                      "load_average_before_after": [load_before, common.load_average()]},
      "targets": {"input_to_train_ratio": TARGET_INPUT_RATIO,
                  "serving_p99_ms": TARGET_P99_MS},
      "summary": summary,
      "train_runs": {str(n): runs for n, runs in train_runs.items()},
      "input_runs": input_runs,
      "serve": serve,
      "export_dir": export_dir,
  })
  print(f"results: {path}")


def _tf_version() -> str:
  """From package metadata: the parent needs no TensorFlow runtime of its own."""
  from importlib import metadata
  try:
    return metadata.version("tensorflow")
  except metadata.PackageNotFoundError:
    return "?"


if __name__ == "__main__":
  app.run(main)
