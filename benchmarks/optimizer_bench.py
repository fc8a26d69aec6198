"""Training step time against embedding-table size: Adam, LazyAdam (--optimizer).

  python -m benchmarks.optimizer_bench [--rows=10000,100000,1000000,4000000
                                        --dim=16 --batch_size=512 --steps=30]

One embedding table of `rows` x `dim` looked up by a batch of uniformly drawn ids, a
linear logit and a sigmoid cross-entropy, trained by a `tf.function` step with each
optimizer of `pipeline.optimizers` (the trainer's `--optimizer` choices) and Adagrad as
a reference of an update whose cost follows the batch. Adam's sparse update decays the
moments of every row of the table each step; LazyAdam touches only the batch's rows.
Optimizers alternate within a table size; medians of the timed steps are reported.

Results: a table on stdout and `<out_dir>/optimizer_bench.json`. Not a test.
"""
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from benchmarks import common  # noqa: E402
from hmdn.features.fileio import write_json_atomic  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("rows", ["10000", "100000", "1000000", "4000000"], "Table sizes.")
flags.DEFINE_integer("dim", 16, "Embedding width.")
flags.DEFINE_integer("batch_size", 512, "Ids per step.")
flags.DEFINE_integer("steps", 30, "Timed steps per optimizer and size.")
flags.DEFINE_integer("warmup_steps", 5, "Untimed steps first (the first traces).")
flags.DEFINE_string("out_dir", "bench_out", "Where the JSON result goes.")


def _step_ms(tf, optimizer, rows: int) -> float:
  table = tf.Variable(tf.random.normal([rows, FLAGS.dim], stddev=0.05))
  head = tf.Variable(tf.random.normal([FLAGS.dim, 1], stddev=0.05))

  @tf.function
  def step(ids, labels):
    with tf.GradientTape() as tape:
      logits = tf.matmul(tf.nn.embedding_lookup(table, ids), head)
      loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits))
    optimizer.apply_gradients(zip(tape.gradient(loss, [table, head]), [table, head]))
    return loss

  generator = tf.random.Generator.from_seed(0)
  batches = [(generator.uniform([FLAGS.batch_size], 0, rows, dtype=tf.int64),
              tf.cast(generator.uniform([FLAGS.batch_size, 1]) < 0.3, tf.float32))
             for _ in range(8)]
  for i in range(FLAGS.warmup_steps):
    step(*batches[i % 8]).numpy()
  times = []
  for i in range(FLAGS.steps):
    start = time.perf_counter()
    step(*batches[i % 8]).numpy()
    times.append(time.perf_counter() - start)
  return common.median(times) * 1e3


def main(argv):
  del argv
  import tensorflow as tf
  from hmdn.pipeline import optimizers
  makers = {name: (lambda n=name: optimizers.make_optimizer(n, 1e-3))
            for name in optimizers.OPTIMIZERS}
  makers["adagrad (reference)"] = lambda: tf.keras.optimizers.Adagrad(1e-2)
  load_before = common.load_average()
  results = []
  for rows in [int(r) for r in FLAGS.rows]:
    row = {"rows": rows}
    for name, make in makers.items():
      row[name] = _step_ms(tf, make(), rows)
    results.append(row)
    print(f"{rows:,} rows done", flush=True)
  names = list(makers)
  print(f"\nstep ms (median of {FLAGS.steps}), table rows x {FLAGS.dim}, batch "
        f"{FLAGS.batch_size}; {os.cpu_count()} CPUs, load average {load_before}")
  print(common.format_table(
      ["rows"] + names + ["adam / lazy_adam"],
      [[f"{r['rows']:,}"] + [f"{r[n]:.2f}" for n in names] +
       [f"x{r['adam'] / r['lazy_adam']:.1f}"] for r in results]))
  write_json_atomic(os.path.join(FLAGS.out_dir, "optimizer_bench.json"), {
      "benchmark": "optimizer_step_vs_table_rows", "dim": FLAGS.dim,
      "batch_size": FLAGS.batch_size, "steps": FLAGS.steps,
      "cpu_count": os.cpu_count(), "load_average_before": load_before,
      "load_average_after": common.load_average(), "results": results})
  print(f"results: {os.path.join(FLAGS.out_dir, 'optimizer_bench.json')}")


if __name__ == "__main__":
  app.run(main)
