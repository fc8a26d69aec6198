"""Training speed of the per-domain backbones against the number of domains.

  python -m benchmarks.models_bench --domain_sweep=4,32,400 [--batch_size=512]

Each backbone alone (the CTR model's input sizes: features [B, 128], condition
[B, 16], domains drawn uniformly) is trained by a `tf.function` of forward, backward
and an Adam step on batches held in memory, once computing every domain's branch and
keeping the example's own (`all`), once running only the own branch (`own`: weights
gathered per example), at each number of domains. The configurations are interleaved
in rounds so that load from other processes hits them alike; a figure is the 10th
percentile of every timed step (on a machine other processes load, a median also
measures their share of the cores). Each layer's `own_branch_from_domains` (MMoE, PLE, STAR's
StarDense) is the smallest number of domains at which it takes the `own` path by
default: where the sweep shows `own` catching up with `all`.
"""
import time
from typing import Dict, List, Sequence

from benchmarks import common

# name -> (backbone, constructor overrides). HiNet has no own path: its SAN attends
# over every scenario's representation. PLE's levels below the last need every domain
# (its shared gates mix all experts), so one-level PLE is swept beside the default.
BACKBONES = {"mmoe": ("mmoe", {}), "ple": ("ple", {}), "ple_1_level": ("ple", {
    "num_levels": 1}), "star": ("star", {}), "hinet": ("hinet", {})}
FEATURES, CONDITION = 128, 16


def _step_fn(layer, optimizer):
  import tensorflow as tf

  @tf.function
  def step(inputs, label):
    with tf.GradientTape() as tape:
      out = layer(inputs, training=True)
      loss = tf.reduce_mean(tf.square(tf.reduce_mean(out, -1) - label))
    variables = layer.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss
  return step


def _batches(batch_size: int, domains: int, count: int = 4):
  import numpy as np
  import tensorflow as tf
  rng = np.random.default_rng(domains)
  return [({"features": tf.constant(rng.normal(size=(batch_size, FEATURES)), tf.float32),
            "condition": tf.constant(rng.normal(size=(batch_size, CONDITION)), tf.float32),
            "domain": tf.constant(rng.integers(0, domains, batch_size), tf.int32)},
           tf.constant(rng.random(batch_size), tf.float32)) for _ in range(count)]


def run(domain_counts: Sequence[int], batch_size: int, steps: int, rounds: int
        ) -> Dict[str, Dict[str, float]]:
  """{f"{backbone}/{domains}/{path}": examples per second}; prints a table."""
  import tensorflow as tf
  from hmdn.models.backbones import BACKBONES as CLASSES
  tf.get_logger().setLevel("ERROR")  # one tf.function per configuration, on purpose
  from hmdn.models.backbones.star import StarDense
  switches = {"mmoe": CLASSES["mmoe"], "ple": CLASSES["ple"], "star": StarDense}
  defaults = {name: cls.own_branch_from_domains for name, cls in switches.items()}

  configs = []  # (key, step function, batches, own-branch path?)
  for name, (backbone, overrides) in BACKBONES.items():
    for domains in domain_counts:
      paths = ("own", "all") if backbone in switches else ("all",)
      for path in paths:
        tf.keras.utils.set_random_seed(0)
        layer = CLASSES[backbone](domains, output_dim=32, **overrides)
        if backbone in switches:
          switches[backbone].own_branch_from_domains = 1 if path == "own" else 10 ** 9
        batches = _batches(batch_size, domains)
        step = _step_fn(layer, tf.keras.optimizers.Adam(1e-3))
        step(*batches[0]).numpy()  # trace with this path
        configs.append((f"{name}/{domains}/{path}", step, batches, path))
  times: Dict[str, List[float]] = {key: [] for key, *_ in configs}
  for r in range(rounds):
    order = configs[r % len(configs):] + configs[:r % len(configs)]
    for key, step, batches, _ in order:
      for i in range(2):
        step(*batches[i % len(batches)]).numpy()
      for i in range(steps):
        start = time.perf_counter()
        step(*batches[i % len(batches)]).numpy()
        times[key].append(time.perf_counter() - start)
  rates = {key: batch_size / common.percentile(t, 10) for key, t in times.items()}
  rows = []
  for name in BACKBONES:
    for path in ("all", "own"):
      keys = [f"{name}/{d}/{path}" for d in domain_counts]
      if keys[0] not in rates:
        continue
      first = rates[keys[0]]
      rows.append([name, path] + [f"{rates[k]:,.0f} (x{rates[k] / first:.2f})"
                                  for k in keys])
  print(f"\nper-domain backbones, train examples/s at the 10th-percentile step (ratio "
        f"to {domain_counts[0]} domains),"
        f" batch {batch_size}, {rounds} rounds x {steps} steps; all = every domain's "
        f"branch computed, own = the example's own branch only")
  print(common.format_table(["backbone", "path"] + [f"{d} domains" for d in domain_counts],
                            rows))
  for name, cls in switches.items():
    cls.own_branch_from_domains = defaults[name]
  print("defaults: own branch from " + ", ".join(
      f"{name} {n} domains" for name, n in defaults.items()))
  return rates
