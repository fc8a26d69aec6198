"""Training speed, size and FLOPs of every registered model, and the HMDN overhead.

  python -m benchmarks.models_bench [--rows=50000 --batch_size=512 --steps=30
                                     --rounds=3 --models=moe,hmdn_moe
                                     --steps_per_execution=1]

Every model is built with `pipeline.train.build_model` at the ModelConfig defaults (same
embeddings, same backbone sizes) except `codebook_warmup_steps=0` (STEADY_STATE: the
HMDN codebooks are seeded on the first, untimed step, so the timed steps are the
steady-state training path, not the warm-up pass-through), compiled with Adam, and
trained by a `tf.function` around its own `train_step` (what `model.fit` runs per step)
on batches held in memory, so the input pipeline is not measured (with
`--steps_per_execution` N > 1, by a function that runs N of them in a `tf.range` loop
over an iterator of those batches, as `model.fit` does with the trainer's
`--steps_per_execution`). Models are interleaved in rounds so that noise from other
processes on the machine hits them alike: each backbone runs right next to
its HMDN variant (which goes first alternates), and the pairs rotate each round; each
model's turn starts with warm-up steps that are not timed. The HMDN overhead of a pair
is the ratio of median train-step times hmdn_<b> / <b>, taken per round (the two ran
seconds apart) and summarised by the median over rounds; the ratio of 10th-percentile
step times is printed beside it (on a machine other processes load, a median also
measures their share of the cores, the low percentile the step's own cost). The forward
pass alone (`training=False`, same batches) is timed in the same turn, to tell the
quantizer's inference cost from its training-time codebook updates.

FLOPs per example are counted by TF's profiler (`float_operation`) over the graph of the
concrete inference function (`model(features, training=False)`) traced at a fixed
batch, plus the Einsum ops the profiler has no statistic for (counted here from their
equation and static shapes: 2 x the index space of a contraction), divided by the batch.
The profiler counts only ops that register a flops statistic (MatMul, elementwise
arithmetic, reductions...); activations, table lookups, gathers and string hashing
count zero, so the figure is the dense arithmetic of a forward pass.

Results: a table on stdout and `<out_dir>/models_bench.json`
(`models_bench_steps_per_execution_<N>.json` with N > 1). Not a test: nothing here
asserts on speed.

  python -m benchmarks.models_bench --sequence_data=DIR [--models=dnn]

instead times each model with `--sequence_pooling` din, mean and none on a data
directory whose spec has sequence fields (MovieLens-100K's histories of 50: `hmdn data
fetch movielens-100k`, then `hmdn preprocess --source=movielens --spec=movielens_100k`),
the three interleaved in rounds like the pairs above: training examples/s of DIN
against the same model ignoring the histories (target: DIN >= 0.5x). Results:
`<out_dir>/models_bench_sequences.json`.
"""
import dataclasses
import os
import platform
import time
from typing import Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from benchmarks import common, domain_sweep  # noqa: E402
from hmdn.features.fileio import write_json_atomic  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("rows", 50_000, "Synthetic rows (generated once, cached).")
flags.DEFINE_integer("batch_size", 512, "Training batch.")
flags.DEFINE_integer("steps", 30, "Timed training steps per model per round.")
flags.DEFINE_integer("warmup_steps", 5, "Untimed steps per model at the start of each "
                     "round (the first also traces the function).")
flags.DEFINE_integer("rounds", 3, "Rounds; every model runs once per round.")
flags.DEFINE_integer("steps_per_execution", 1, "Training steps per call, run as "
                     "Keras' train_function runs them with the trainer's "
                     "--steps_per_execution (a tf.range loop over an iterator of the "
                     "cached batches); step time = call time / this.")
flags.DEFINE_integer("cached_batches", 8, "Distinct training batches held in memory "
                     "and cycled through.")
flags.DEFINE_integer("flops_batch", 64, "Static batch of the graph the FLOPs are "
                     "counted on.")
flags.DEFINE_string("models", "", "Comma-separated model names (default: every "
                    "registered model).")
flags.DEFINE_string("out_dir", "bench_out", "Cache of data and results.")
flags.DEFINE_string("sequence_data", "", "Instead: training ex/s of --models (default "
                    "dnn) with --sequence_pooling din, mean and none on this data "
                    "directory (its spec with sequence fields).")
flags.DEFINE_list("domain_sweep", [], "Instead: the per-domain backbones' training "
                  "speed at these numbers of domains, every branch vs the own branch "
                  "(benchmarks/domain_sweep.py), e.g. 4,32,400.")

TARGET_OVERHEAD = 0.10  # the issue: HMDN at most 10% slower than its backbone
TARGET_DIN_RATIO = 0.5  # issue 21: DIN trains at least half as fast as no history
POOLINGS = ("din", "mean", "none")
# Config overrides of every benchmarked model (ignored by baselines): no codebook
# warm-up, so what is timed is the steady-state step (seeded codebooks, EMA updates).
STEADY_STATE = {"codebook_warmup_steps": 0}


@dataclasses.dataclass
class ModelResult:
  model: str
  trainable_params: int
  non_trainable_params: int
  flops_per_example: float
  step_ms_median: float  # over every timed step of every round
  step_ms_per_round: List[float]  # median of each round
  step_ms_p10: float  # 10th percentile over every timed step: the step's own cost
  # when other processes share the cores (a median then also measures them)
  examples_per_sec: float  # batch_size / step_ms_median
  infer_ms_median: float  # forward pass alone (training=False), same batches
  build_seconds: float  # build_model + first traced step


@dataclasses.dataclass
class PairResult:
  backbone: str
  hmdn: str
  step_ratio: float  # median over rounds of (hmdn round median / backbone round median)
  step_ratio_per_round: List[float]
  step_ratio_p10: float  # hmdn / backbone 10th-percentile train steps
  infer_ratio: float  # forward pass alone, ratio of medians
  overhead: float  # step_ratio - 1
  meets_target: bool  # overhead <= TARGET_OVERHEAD (reported, not asserted)
  params_ratio: float
  flops_ratio: Optional[float]


def _cached_batches(data_dir: str, spec, batch_size: int, count: int):
  """`count` training batches as eager tensors: the steps then read only memory."""
  from hmdn.pipeline import data
  ds = data.make_dataset(data_dir, data.TRAIN, spec, batch_size, training=True)
  return [(dict(f), l) for f, l in ds.take(count)]


def _count_params(variables) -> int:
  return int(sum(v.shape.num_elements() for v in variables))


def _flops_per_example(model, features_batch) -> float:
  """Profiler float_operation over the concrete inference graph at a static batch."""
  import tensorflow as tf
  batch = int(next(iter(features_batch.values())).shape[0])
  fn = tf.function(lambda features: model(features, training=False))
  concrete = fn.get_concrete_function(
      {k: tf.TensorSpec(v.shape, v.dtype) for k, v in features_batch.items()})
  options = (tf.compat.v1.profiler.ProfileOptionBuilder(
      tf.compat.v1.profiler.ProfileOptionBuilder.float_operation())
             .with_empty_output().build())
  profile = tf.compat.v1.profiler.profile(graph=concrete.graph, cmd="op",
                                          options=options)
  return (profile.total_float_ops + _einsum_flops(concrete.graph)) / batch


def _einsum_flops(graph) -> int:
  """FLOPs of the Einsum ops, which TF's profiler has no statistic for (it counts them
  as 0, although STAR's per-domain layers and the expert mixtures are einsums).

  A contraction costs a multiply and an add per point of the full index space (every
  distinct letter); an einsum without a summed index, one multiply per point.
  """
  total = 0
  for op in graph.get_operations():
    if op.type != "Einsum":
      continue
    inputs, output = op.get_attr("equation").decode().replace(" ", "").split("->")
    sizes = {}
    for letters, tensor in zip(inputs.split(","), op.inputs):
      for letter, dim in zip(letters, tensor.shape.as_list()):
        sizes[letter] = dim
    if any(d is None for d in sizes.values()) or "." in inputs:
      continue  # not static: left out, as the profiler would
    points = 1
    for d in sizes.values():
      points *= d
    total += points * (2 if set(inputs) - set(output) - {","} else 1)
  return total


def _pair_groups(names: List[str]) -> List[List[str]]:
  """[[backbone, hmdn_backbone], [dnn], ...]: each pair together, the rest alone."""
  from hmdn.models.registry import HMDN_PREFIX
  groups, seen = [], set()
  for name in names:
    if name in seen:
      continue
    base = name[len(HMDN_PREFIX):] if name.startswith(HMDN_PREFIX) else name
    group = [n for n in (base, HMDN_PREFIX + base) if n in names]
    seen.update(group)
    groups.append(group)
  return groups


class _Bench:
  """One model, compiled, with its traced train step (or execution of
  `steps_per_execution` steps)."""

  def __init__(self, name: str, data_dir: str, batches, steps_per_execution: int = 1,
               **options):
    import tensorflow as tf
    from hmdn.models.registry import ModelConfig
    from hmdn.pipeline import train
    tf.keras.utils.set_random_seed(0)
    self.name = name
    # Steady state: the codebooks are seeded on the first (untimed) step, so the
    # timed steps run the quantizer's training path, not its warm-up pass-through.
    self.model = train.build_model(data_dir, ModelConfig.of(name=name, **STEADY_STATE,
                                                            **options))
    self.model.compile(optimizer=tf.keras.optimizers.Adam(2e-3))
    model = self.model
    self.steps_per_execution = steps_per_execution
    self.step = tf.function(model.train_step)
    self.execution = None
    if steps_per_execution > 1:
      stacked = tf.nest.map_structure(lambda *x: tf.stack(x), *batches)
      self._iterator = iter(tf.data.Dataset.from_tensor_slices(stacked).repeat())

      @tf.function
      def execution(iterator):  # Keras' train_function with steps_per_execution
        out = model.train_step(next(iterator))
        for _ in tf.range(steps_per_execution - 1):
          out = model.train_step(next(iterator))
        return out
      self.execution = lambda: execution(self._iterator)
    self.infer = tf.function(lambda features: model(features, training=False)["logits"])
    self.times: List[List[float]] = []
    self.infer_times: List[float] = []

  def run(self, batches, first: int, warmup: int, steps: int) -> None:
    """`warmup` untimed steps then `steps` timed ones, cycling the cached batches; then
    the same for the forward pass alone (where the HMDN overhead comes from: the
    quantizer's inference path, or its training-time codebook updates).

    Each call's output is fetched to the host, so the time covers the whole step.
    With steps_per_execution N, a call runs N steps and each counts call time / N.
    """
    n = len(batches)
    times = []
    if self.execution is not None:
      per_call = self.steps_per_execution
      for _ in range(max(1, warmup // per_call)):
        self.execution()["loss"].numpy()
      for _ in range(-(-steps // per_call)):
        start = time.perf_counter()
        self.execution()["loss"].numpy()
        times.append((time.perf_counter() - start) / per_call)
    else:
      for i in range(warmup):
        self.step(batches[(first + i) % n])["loss"].numpy()
      for i in range(steps):
        batch = batches[(first + warmup + i) % n]
        start = time.perf_counter()
        self.step(batch)["loss"].numpy()
        times.append(time.perf_counter() - start)
    self.times.append(times)
    for i in range(warmup):
      self.infer(batches[(first + i) % n][0]).numpy()
    for i in range(steps):
      features = batches[(first + warmup + i) % n][0]
      start = time.perf_counter()
      self.infer(features).numpy()
      self.infer_times.append(time.perf_counter() - start)


def _sequence_bench(names: List[str]) -> None:
  """Each model with every --sequence_pooling on --sequence_data, interleaved."""
  import tensorflow as tf
  from hmdn.features.preprocessed import PreprocessedData
  data_dir = FLAGS.sequence_data
  spec = PreprocessedData(data_dir).spec
  if not spec.sequence_fields:
    raise app.UsageError(f"--sequence_data={data_dir}: its spec {spec.name!r} has no "
                         "sequence field")
  batches = _cached_batches(data_dir, spec, FLAGS.batch_size, FLAGS.cached_batches)
  lengths = {f.name: float(tf.reduce_mean(tf.reduce_sum(tf.cast(
      tf.not_equal(b[0][f.name], ""), tf.float32), 1)).numpy()) for f in
      spec.sequence_fields for b in batches[:1]}
  load_before = common.load_average()
  benches = {}
  for name in names:
    for pooling in POOLINGS:
      label = f"{name}:sequence_pooling={pooling}"
      benches[label] = _Bench(name, data_dir, batches, FLAGS.steps_per_execution,
                              sequence_pooling=pooling)
      benches[label].step(batches[0])["loss"].numpy()  # trace
      if benches[label].execution is not None:
        benches[label].execution()["loss"].numpy()
      print(f"built {label}", flush=True)
  labels = list(benches)
  for r in range(FLAGS.rounds):
    shift = r % len(labels)
    for label in labels[shift:] + labels[:shift]:
      benches[label].run(batches, r * FLAGS.steps, FLAGS.warmup_steps, FLAGS.steps)
    print(f"round {r + 1}/{FLAGS.rounds} done", flush=True)
  results = {}
  for label, b in benches.items():
    times = [t for rnd in b.times for t in rnd]
    results[label] = {"examples_per_sec": FLAGS.batch_size / common.median(times),
                      "step_ms_median": common.median(times) * 1e3,
                      "step_ms_p10": common.percentile(times, 10) * 1e3,
                      "infer_ms_median": common.median(b.infer_times) * 1e3,
                      "trainable_params": _count_params(b.model.trainable_variables)}
  rows = []
  for label, m in results.items():
    name, pooling = label.split(":sequence_pooling=")
    none = results[f"{name}:sequence_pooling=none"]
    ratio = m["examples_per_sec"] / none["examples_per_sec"]
    m["vs_none"] = ratio
    m["vs_none_p10"] = none["step_ms_p10"] / m["step_ms_p10"]
    rows.append([label, f"{m['examples_per_sec']:,.0f}", f"{m['step_ms_median']:.1f}",
                 f"{m['step_ms_p10']:.1f}", f"{m['infer_ms_median']:.1f}",
                 f"{m['trainable_params']:,}",
                 f"x{ratio:.2f} (p10 x{m['vs_none_p10']:.2f})",
                 ("met" if ratio >= TARGET_DIN_RATIO else "MISSED")
                 if pooling == "din" else ""])
  described = ", ".join(f"{k} (mean length {v:.1f})" for k, v in lengths.items())
  print(f"\n{spec.name}: sequences {described}; "
        f"batch {FLAGS.batch_size}, {FLAGS.rounds} rounds x {FLAGS.steps} timed steps; "
        f"TF {tf.__version__}, {os.cpu_count()} CPUs, load average {load_before[0]} "
        f"before / {common.load_average()[0]} after")
  print(common.format_table(
      ["model", "train ex/s", "step ms", "p10 ms", "fwd ms", "trainable params",
       "ex/s vs none", f"din >= x{TARGET_DIN_RATIO}"], rows))
  path = os.path.join(FLAGS.out_dir, "models_bench_sequences.json")
  write_json_atomic(path, {
      "config": {"data_dir": data_dir, "batch_size": FLAGS.batch_size,
                 "steps": FLAGS.steps, "rounds": FLAGS.rounds, "models": names},
      "mean_lengths": lengths, "target_din_ratio": TARGET_DIN_RATIO,
      "load_average_before_after": [load_before, common.load_average()],
      "models": results})
  print(f"results: {path}")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if FLAGS.sequence_data:
    _sequence_bench([m for m in FLAGS.models.split(",") if m] or ["dnn"])
    return
  if FLAGS.domain_sweep:
    counts = [int(d) for d in FLAGS.domain_sweep]
    rates = domain_sweep.run(counts, FLAGS.batch_size, FLAGS.steps, FLAGS.rounds)
    path = os.path.join(FLAGS.out_dir, "domain_sweep.json")
    write_json_atomic(path, {"batch_size": FLAGS.batch_size, "steps": FLAGS.steps,
                             "rounds": FLAGS.rounds, "examples_per_sec": rates})
    print(f"results: {path}")
    return
  import tensorflow as tf
  from hmdn.features.preprocessed import PreprocessedData
  from hmdn.models.registry import HMDN_PREFIX, model_names

  names = [m for m in FLAGS.models.split(",") if m] or model_names()
  unknown = sorted(set(names) - set(model_names()))
  if unknown:
    raise app.UsageError(f"--models: unknown {unknown}; known: {model_names()}")
  if FLAGS.steps_per_execution < 1:
    raise app.UsageError(f"--steps_per_execution={FLAGS.steps_per_execution}: "
                         "expected an integer >= 1")
  data_dir = common.prepare_data(FLAGS.out_dir, FLAGS.rows)
  spec = PreprocessedData(data_dir).spec
  batches = _cached_batches(data_dir, spec, FLAGS.batch_size, FLAGS.cached_batches)
  flops_features = {k: v[:FLAGS.flops_batch] for k, v in batches[0][0].items()}

  load_before = common.load_average()
  benches: Dict[str, _Bench] = {}
  build_seconds, flops = {}, {}
  for name in names:
    start = time.perf_counter()
    benches[name] = _Bench(name, data_dir, batches, FLAGS.steps_per_execution)
    benches[name].step(batches[0])["loss"].numpy()  # trace (and seed HMDN codebooks)
    if benches[name].execution is not None:
      benches[name].execution()["loss"].numpy()  # trace
    build_seconds[name] = time.perf_counter() - start
    try:
      flops[name] = _flops_per_example(benches[name].model, flops_features)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("FLOPs of %s not counted: %s", name, e)
      flops[name] = float("nan")
    print(f"built {name:<12} in {build_seconds[name]:5.1f} s", flush=True)

  groups = _pair_groups(names)
  for r in range(FLAGS.rounds):
    # A backbone and its HMDN variant run back to back (the ratio compares moments
    # seconds apart), first one then the other; the groups rotate: no fixed slot.
    shift = r % len(groups)
    order = [n for g in groups[shift:] + groups[:shift]
             for n in (g if r % 2 == 0 else g[::-1])]
    for name in order:
      benches[name].run(batches, r * FLAGS.steps, FLAGS.warmup_steps, FLAGS.steps)
    print(f"round {r + 1}/{FLAGS.rounds} done", flush=True)

  results: Dict[str, ModelResult] = {}
  for name in names:
    b = benches[name]
    all_times = [t for rnd in b.times for t in rnd]
    step = common.median(all_times)
    results[name] = ModelResult(
        model=name,
        trainable_params=_count_params(b.model.trainable_variables),
        non_trainable_params=_count_params(b.model.non_trainable_variables),
        flops_per_example=flops[name],
        step_ms_median=step * 1e3,
        step_ms_per_round=[common.median(rnd) * 1e3 for rnd in b.times],
        step_ms_p10=common.percentile(all_times, 10) * 1e3,
        examples_per_sec=FLAGS.batch_size / step,
        infer_ms_median=common.median(b.infer_times) * 1e3,
        build_seconds=build_seconds[name])

  pairs: Dict[str, PairResult] = {}
  for name in names:
    if name.startswith(HMDN_PREFIX) and name[len(HMDN_PREFIX):] in results:
      base, hmdn = results[name[len(HMDN_PREFIX):]], results[name]
      per_round = [h / b for h, b in zip(hmdn.step_ms_per_round, base.step_ms_per_round)]
      ratio = common.median(per_round)
      flops_ratio = (hmdn.flops_per_example / base.flops_per_example
                     if base.flops_per_example else None)
      pairs[name] = PairResult(
          backbone=base.model, hmdn=name, step_ratio=ratio,
          step_ratio_per_round=per_round, overhead=ratio - 1.0,
          step_ratio_p10=hmdn.step_ms_p10 / base.step_ms_p10,
          infer_ratio=hmdn.infer_ms_median / base.infer_ms_median,
          meets_target=ratio - 1.0 <= TARGET_OVERHEAD,
          params_ratio=hmdn.trainable_params / max(base.trainable_params, 1),
          flops_ratio=flops_ratio)

  rows = []
  for name in [n for g in groups for n in g]:
    m = results[name]
    p = pairs.get(name)
    rows.append([
        name, f"{m.examples_per_sec:,.0f}", f"{m.step_ms_median:.1f}",
        " ".join(f"{t:.1f}" for t in m.step_ms_per_round), f"{m.step_ms_p10:.1f}",
        f"x{p.step_ratio_p10:.3f}" if p else "", f"{m.infer_ms_median:.1f}",
        f"{m.trainable_params:,}", f"{m.flops_per_example / 1e3:,.1f}",
        f"x{p.step_ratio:.3f} ({p.overhead:+.1%})" if p else "",
        ("met" if p.meets_target else "MISSED") if p else "",
        f"x{p.infer_ratio:.2f}" if p else "",
        f"x{p.flops_ratio:.2f}" if p and p.flops_ratio else ""])
  print(f"\nHMDN models timed in the steady state ({STEADY_STATE}: codebooks seeded "
        "on the untimed first step, not the warm-up pass-through)")
  print(f"\n{len(names)} models, batch {FLAGS.batch_size}, {FLAGS.rounds} rounds x "
        f"{FLAGS.steps} timed steps (+{FLAGS.warmup_steps} warm-up per round), "
        f"{FLAGS.steps_per_execution} step(s) per execution, "
        f"{FLAGS.rows} rows; TF {tf.__version__}, {os.cpu_count()} CPUs, load average "
        f"{load_before[0]} before / {common.load_average()[0]} after")
  print(common.format_table(
      ["model", "train ex/s", "step ms", "per-round ms", "p10 ms", "p10 vs bb", "fwd ms",
       "trainable params",
       "kFLOPs/ex", "step vs backbone", f"<= +{TARGET_OVERHEAD:.0%}", "fwd vs bb",
       "FLOPs vs bb"],
      rows))
  print("train ex/s = batch / median train step; step vs backbone = median over rounds "
        "of the per-round ratio of median train steps; p10 = 10th percentile of every "
        "timed step (robust when other processes load the machine); fwd = forward pass "
        "alone "
        "(training=False) at the same batch; FLOPs: TF profiler float_operation over the "
        "inference graph + Einsum ops (dense arithmetic only).")

  suffix = (f"_steps_per_execution_{FLAGS.steps_per_execution}"
            if FLAGS.steps_per_execution > 1 else "")
  path = os.path.join(FLAGS.out_dir, f"models_bench{suffix}.json")
  write_json_atomic(path, {
      "config": {"rows": FLAGS.rows, "batch_size": FLAGS.batch_size,
                 "steps": FLAGS.steps, "warmup_steps": FLAGS.warmup_steps,
                 "steps_per_execution": FLAGS.steps_per_execution,
                 "rounds": FLAGS.rounds, "cached_batches": FLAGS.cached_batches,
                 "flops_batch": FLAGS.flops_batch, "models": names},
      "environment": {"tensorflow": tf.__version__, "cpus": os.cpu_count(),
                      "platform": platform.platform(),
                      "load_average_before_after": [load_before, common.load_average()]},
      "method": {
          "steady_state": STEADY_STATE,
          "step": "tf.function(model.train_step) on cached in-memory batches; loss "
                  "fetched each step; warm-up steps untimed; models interleaved in "
                  "rounds (each backbone next to its HMDN variant, order alternated, "
                  "groups rotated)",
          "forward": "tf.function(model(features, training=False)) on the same batches",
          "flops": "tf.compat.v1.profiler float_operation over the concrete inference "
                   "graph (training=False) at a static batch, plus Einsum ops (no "
                   "profiler statistic; 2 x index space of a contraction), divided by "
                   "the batch",
          "target_overhead": TARGET_OVERHEAD},
      "models": {k: dataclasses.asdict(v) for k, v in results.items()},
      "hmdn_pairs": {k: dataclasses.asdict(v) for k, v in pairs.items()},
  })
  print(f"results: {path}")


if __name__ == "__main__":
  app.run(main)
