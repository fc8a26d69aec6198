"""Training speed with two tasks (click, purchase after click) against one, per backbone.

  python -m benchmarks.task_bench [--rows=50000 --batch_size=512 --steps=30 --rounds=3
                                   --models=dnn,mmoe,ple,hinet,star,esmm,hmdn_mmoe]

(the flags are models_bench's; --models defaults to the list above)

One long-tail log with conversions (`--conversion_rate=0.04`), generated and
preprocessed twice: with its two-task spec and with the same spec whose `purchase` is
a passthrough field (one task, the click). Each model is built at the ModelConfig
defaults on both (`codebook_warmup_steps=0`, as models_bench: the steady-state step),
its `train_step` traced once, and the two timed in interleaved rounds on batches held in
memory, so the ratio two-task / one-task examples/s is taken seconds apart (target:
>= 0.8, issue 20). ESMM has no one-task form: it is timed against `dnn` on one task.
Results: a table on stdout and `<out_dir>/task_bench.json`. Not a test.
"""
import os
import time
from typing import Dict, List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.models_bench import STEADY_STATE, _cached_batches  # noqa: E402
from hmdn.features.fileio import write_json_atomic  # noqa: E402

FLAGS = flags.FLAGS  # models_bench's flags: --rows --batch_size --steps --warmup_steps
# --rounds --models --out_dir (its --models default, every model, is DEFAULT_MODELS here)
DEFAULT_MODELS = ("dnn", "mmoe", "ple", "hinet", "star", "esmm", "hmdn_mmoe")
TARGET_RATIO = 0.8  # issue 20: two-task training >= 0.8x one-task examples/s
ONE_TASK_REFERENCE = {"esmm": "dnn"}  # a model with no one-task form


def _data(out_dir: str, rows: int) -> Dict[str, str]:
  """{"one": dir, "two": dir}: the same log preprocessed with one task and with two."""
  import yaml
  from hmdn.beam_jobs import generators, preprocess
  from hmdn.beam_jobs.config import PreprocessConfig
  from hmdn.features.preprocessed import PreprocessedData
  raw = os.path.join(out_dir, f"tasks_raw_{rows}")
  if not os.path.exists(os.path.join(raw, "generator.json")):
    gen = generators.get(generators.LONGTAIL)
    gen.generate(raw, gen.config(rows=rows, seed=0, conversion_rate=0.04))
  spec = yaml.safe_load(open(os.path.join(raw, "spec.yaml")))
  later = [f["name"] for f in spec["features"] if f.get("role") == "label" and f.get("after")]
  for f in spec["features"]:
    if f["name"] in later or f.get("task") in later:  # the purchase and its oracle
      f["role"] = "passthrough"
      f.pop("after", None)
      f.pop("task", None)
  one_spec = os.path.join(out_dir, f"tasks_one_task_spec_{rows}.yaml")
  with open(one_spec, "w") as out:
    yaml.safe_dump(spec, out, sort_keys=False)
  dirs = {}
  for kind, spec_path in (("two", os.path.join(raw, "spec.yaml")), ("one", one_spec)):
    dirs[kind] = os.path.join(out_dir, f"tasks_{kind}_{rows}")
    if not PreprocessedData(dirs[kind]).is_complete():
      preprocess.run(PreprocessConfig(raw=common.generated_raw(raw), output_dir=dirs[kind],
                                      spec_path=spec_path, tfds=False))
  return dirs


class _Timed:
  """One model on one data directory, compiled, its train step traced."""

  def __init__(self, name: str, data_dir: str, batches):
    import tensorflow as tf
    from hmdn.models.registry import ModelConfig
    from hmdn.pipeline import train
    tf.keras.utils.set_random_seed(0)
    self.model = train.build_model(data_dir, ModelConfig.of(name=name, **STEADY_STATE))
    self.model.compile(optimizer=tf.keras.optimizers.Adam(2e-3))
    self.step = tf.function(self.model.train_step)
    self.batches = batches
    self.step(batches[0])["loss"].numpy()
    self.times: List[float] = []

  def run(self, first: int, warmup: int, steps: int) -> None:
    n = len(self.batches)
    for i in range(warmup):
      self.step(self.batches[(first + i) % n])["loss"].numpy()
    for i in range(steps):
      start = time.perf_counter()
      self.step(self.batches[(first + warmup + i) % n])["loss"].numpy()
      self.times.append(time.perf_counter() - start)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import tensorflow as tf
  from hmdn.features.preprocessed import PreprocessedData
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  dirs = _data(FLAGS.out_dir, FLAGS.rows)
  batches = {k: _cached_batches(d, PreprocessedData(d).spec, FLAGS.batch_size, 8)
             for k, d in dirs.items()}
  models = [m for m in FLAGS.models.split(",") if m] or list(DEFAULT_MODELS)
  timed = {}
  for name in models:
    one = ONE_TASK_REFERENCE.get(name, name)
    timed[(name, "two")] = _Timed(name, dirs["two"], batches["two"])
    if (one, "one") not in timed:
      timed[(one, "one")] = _Timed(one, dirs["one"], batches["one"])
    print(f"built {name}", flush=True)
  load_before = common.load_average()
  keys = list(timed)
  for r in range(FLAGS.rounds):
    shift = r % len(keys)
    for key in keys[shift:] + keys[:shift]:
      timed[key].run(r * FLAGS.steps, FLAGS.warmup_steps, FLAGS.steps)
    print(f"round {r + 1}/{FLAGS.rounds} done", flush=True)
  results, rows = {}, []
  for name in models:
    one = ONE_TASK_REFERENCE.get(name, name)
    two_ms = common.median(timed[(name, "two")].times) * 1e3
    one_ms = common.median(timed[(one, "one")].times) * 1e3
    ratio = one_ms / two_ms  # examples/s two-task over one-task
    p10 = (common.percentile(timed[(one, "one")].times, 10)
           / common.percentile(timed[(name, "two")].times, 10))
    results[name] = {"one_task_model": one, "one_task_step_ms": one_ms,
                     "two_task_step_ms": two_ms, "ratio": ratio, "ratio_p10": p10}
    rows.append([name, one, f"{one_ms:.2f}", f"{two_ms:.2f}",
                 f"x{ratio:.2f} (p10 x{p10:.2f})",
                 "met" if ratio >= TARGET_RATIO else "MISSED"])
  print(f"\nlong-tail log with conversions, {FLAGS.rows} rows; batch {FLAGS.batch_size}, "
        f"{FLAGS.rounds} rounds x {FLAGS.steps} timed steps; TF {tf.__version__}, "
        f"{os.cpu_count()} CPUs, load average {load_before[0]} before / "
        f"{common.load_average()[0]} after")
  print(common.format_table(
      ["model", "one-task model", "one-task step ms", "two-task step ms",
       "two-task ex/s vs one-task", f">= x{TARGET_RATIO}"], rows))
  path = os.path.join(FLAGS.out_dir, "task_bench.json")
  write_json_atomic(path, {"config": {"rows": FLAGS.rows, "batch_size": FLAGS.batch_size,
                                      "steps": FLAGS.steps, "rounds": FLAGS.rounds},
                           "target_ratio": TARGET_RATIO,
                           "load_average_before_after": [load_before,
                                                         common.load_average()],
                           "models": results})
  print(f"results: {path}")


if __name__ == "__main__":
  app.run(main)
