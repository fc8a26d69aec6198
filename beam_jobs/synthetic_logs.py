"""The embedded default dataset: raw click logs with a planted hierarchy of distributions.

Every impression belongs to a leaf `scenario -> user_group -> subgroup`. Each leaf has its
own logistic click model over the same features, built as root + scenario + group +
subgroup deviations, so the distributions really nest. `scenario` and `user_group` are
columns; the subgroup is not: it shows only through correlations (device and hour of
day), as real populations do. Each row carries its true click probability (`true_ctr`,
role `oracle` in the spec), so the oracle AUC - the ceiling no model can pass - is known.

With `conversion_rate` > 0 a second task is drawn: a `purchase`, only after a click, from
a conversion model of the same form whose leaf coefficients nest the same way (each
level's deviation correlated with the click's by `conversion_correlation`), its
intercept calibrated so that `conversion_rate` of clicks convert. The row keeps its true
p(purchase | click) as `true_cvr` (role oracle, task purchase) and the written spec gains
`{name: purchase, kind: numeric, role: label, after: click}`; generator.json gains
`purchases`, `cvr` (purchases / clicks), `ctcvr` (purchases / rows), the oracle AUCs
`oracle_auc_purchase_cvr` (true_cvr over clicked rows) and `oracle_auc_purchase_ctcvr`
(true_ctr * true_cvr over all rows), and each leaf's mean `true_cvr`. The purchases are
drawn from their own seeded stream, so every other column stays as without them. At 0
(the default) the log, its spec and generator.json are what they were without the option.

Rows are generated in chunks and streamed to CSV files, so memory stays flat from 1k to
5M rows; the output depends only on (rows, seed).
"""
import dataclasses
import json
import os
from typing import Dict, Optional

import numpy as np

from hmdn.beam_jobs import generated_logs
from hmdn.features import spec as spec_lib
from hmdn.features.options import option, validate

SPEC_PATH = os.path.join(spec_lib.SPECS_DIR, "synthetic.yaml")

NUM_SCENARIOS = 3
NUM_GROUPS = 4
NUM_SUBGROUPS = 2
NUM_CATEGORIES = 20
NUM_TAGS = 30
LATENT_DIM = 4
DEVICES = ("ios", "android", "pc")
# Per subgroup: device probabilities and the centre of its hour-of-day distribution.
DEVICE_PROBS = ((0.75, 0.20, 0.05), (0.15, 0.60, 0.25))
HOUR_CENTRE = (9.0, 20.0)
SCENARIO_PROBS = (0.5, 0.3, 0.2)
GROUP_PROBS = (0.35, 0.30, 0.20, 0.15)
CHUNK_ROWS = 50_000


@dataclasses.dataclass
class GeneratorConfig:
  """The size and the seed of the planted log."""
  rows: int = option(200_000, "Impressions to generate.", minimum=1)
  seed: int = option(0, "Seed of the world and the rows.", minimum=0)
  rows_per_file: int = option(1_000_000, "Rows per raw/part-*.csv file.", minimum=1)
  conversion_rate: float = option(0.0, generated_logs.CONVERSION_RATE_HELP, minimum=0,
                                  below=1)
  conversion_correlation: float = option(0.5, generated_logs.CONVERSION_CORRELATION_HELP,
                                         minimum=-1, maximum=1)

  def validate(self) -> "GeneratorConfig":
    return validate(self)


class _World:
  """Users, items and the hierarchical click-model parameters drawn from the seed."""

  def __init__(self, rows: int, seed: int, conversion_rate: float = 0.0,
               conversion_correlation: float = 0.5):
    rng = np.random.default_rng([seed, 0])
    self.num_users = int(np.clip(rows // 40, 200, 50_000))
    self.num_items = int(np.clip(rows // 100, 300, 20_000))
    self.user_group = rng.choice(NUM_GROUPS, self.num_users, p=GROUP_PROBS)
    self.user_subgroup = rng.integers(0, NUM_SUBGROUPS, self.num_users)
    self.user_taste = rng.normal(0, 1, (self.num_users, LATENT_DIM))
    self.user_weight = rng.zipf(1.6, self.num_users).clip(max=200).astype(float)
    self.user_weight /= self.user_weight.sum()
    self.item_category = rng.integers(0, NUM_CATEGORIES, self.num_items)
    category_centre = rng.normal(0, 1, (NUM_CATEGORIES, LATENT_DIM))
    self.item_vector = (category_centre[self.item_category] +
                        0.5 * rng.normal(0, 1, (self.num_items, LATENT_DIM)))
    self.item_price = np.exp(rng.normal(3.0, 0.6, NUM_CATEGORIES)[self.item_category] +
                             0.3 * rng.normal(0, 1, self.num_items))
    self.item_weight = rng.zipf(1.4, self.num_items).clip(max=500).astype(float)
    self.item_weight /= self.item_weight.sum()
    tag_of_category = rng.integers(0, NUM_TAGS, (NUM_CATEGORIES, 3))
    self.item_tags = []
    for i in range(self.num_items):
      n = rng.integers(1, 4)
      own = tag_of_category[self.item_category[i], :n]
      self.item_tags.append("|".join(f"t{t}" for t in sorted(set(own.tolist()))))
    self.item_tags = np.array(self.item_tags)
    # Click-model coefficients per leaf: [bias, affinity, price, hour, category x20],
    # a root plus deviations that shrink down the hierarchy but stay decisive.
    n_coef = 4 + NUM_CATEGORIES
    root = np.concatenate([[-1.9, 0.4, 0.0, 0.0], 0.3 * rng.normal(0, 1, NUM_CATEGORIES)])
    scales = (np.r_[0.6, 0.3, 0.5, 0.3, [0.4] * NUM_CATEGORIES],
              np.r_[0.5, 0.3, 0.5, 0.4, [0.4] * NUM_CATEGORIES],
              np.r_[0.5, 0.4, 0.6, 0.6, [0.4] * NUM_CATEGORIES])
    scen = rng.normal(0, 1, (NUM_SCENARIOS, n_coef)) * scales[0]
    group = rng.normal(0, 1, (NUM_SCENARIOS, NUM_GROUPS, n_coef)) * scales[1]
    sub = rng.normal(0, 1, (NUM_SCENARIOS, NUM_GROUPS, NUM_SUBGROUPS, n_coef)) * scales[2]
    self.coef = (root[None, None, None] + scen[:, None, None] + group[:, :, None] + sub)
    self.cvr_coef = None
    if conversion_rate > 0:
      # The conversion model, from its own stream (the click world stays as it is):
      # each level's deviation correlated with the click's, so it nests the same way.
      crng = np.random.default_rng([seed, 5])
      rho = conversion_correlation
      cvr_root = np.concatenate([[0.0, 0.3, -0.3, 0.0],
                                 generated_logs.correlated(crng, root[4:], 0.3, rho)])
      cvr_scen, cvr_group, cvr_sub = (generated_logs.correlated(crng, x, scale, rho)
                                      for x, scale in zip((scen, group, sub), scales))
      self.cvr_coef = (cvr_root[None, None, None] + cvr_scen[:, None, None] +
                       cvr_group[:, :, None] + cvr_sub)
      self.cvr_intercept = 0.0
      self.cvr_intercept = self._calibrate_cvr(seed, conversion_rate)

  def _calibrate_cvr(self, seed: int, rate: float) -> float:
    """The conversion intercept that makes `rate` of clicks convert (in expectation, on
    a fixed calibration sample)."""
    sample = _chunk(self, np.random.default_rng([seed, 6]), CHUNK_ROWS)
    ctr, logit = sample["true_ctr"], sample["cvr_logit"]
    return generated_logs.calibrate(
        lambda b: float((ctr * _sigmoid(logit + b)).sum() / ctr.sum()), rate)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _logit(coef, affinity, price, hour, category):
  """One leaf model's logit per row: [bias, affinity, price, hour, category...]."""
  return (coef[:, 0] + coef[:, 1] * affinity +
          coef[:, 2] * (np.log(price) - 3.0) / 0.6 +
          coef[:, 3] * np.cos(2 * np.pi * (hour - 14.0) / 24.0) +
          coef[np.arange(len(coef)), 4 + category])


def _chunk(world: _World, rng: np.random.Generator, n: int,
           purchase_rng: Optional[np.random.Generator] = None) -> Dict[str, np.ndarray]:
  """Draws n impressions: the raw columns plus the leaf of each row; with a conversion
  model, `true_cvr` (and its logit before the intercept) and, given `purchase_rng`,
  the purchases (drawn apart, so the clicks do not depend on the conversion task)."""
  scenario = rng.choice(NUM_SCENARIOS, n, p=SCENARIO_PROBS)
  user = rng.choice(world.num_users, n, p=world.user_weight)
  item = rng.choice(world.num_items, n, p=world.item_weight)
  group = world.user_group[user]
  subgroup = world.user_subgroup[user]
  device = np.empty(n, dtype=object)
  hour = np.empty(n)
  for h in range(NUM_SUBGROUPS):
    mask = subgroup == h
    device[mask] = rng.choice(DEVICES, mask.sum(), p=DEVICE_PROBS[h])
    hour[mask] = np.mod(rng.normal(HOUR_CENTRE[h], 3.0, mask.sum()), 24.0)
  price = world.item_price[item]
  affinity = np.einsum("ij,ij->i", world.user_taste[user], world.item_vector[item]) / 2.0
  coef = world.coef[scenario, group, subgroup]  # [n, n_coef]
  category = world.item_category[item]
  logit = _logit(coef, affinity, price, hour, category)
  true_ctr = _sigmoid(logit)
  click = (rng.random(n) < true_ctr).astype(int)
  tasks = {}
  if world.cvr_coef is not None:
    cvr_logit = _logit(world.cvr_coef[scenario, group, subgroup], affinity, price, hour,
                       category)
    tasks["cvr_logit"] = cvr_logit
    tasks[generated_logs.TRUE_CVR] = _sigmoid(world.cvr_intercept + cvr_logit)
    if purchase_rng is not None:
      tasks[generated_logs.PURCHASE] = click * (
          purchase_rng.random(n) < tasks[generated_logs.TRUE_CVR]).astype(int)
  return {
      "click": click,
      "true_ctr": true_ctr,
      **tasks,
      "subgroup": np.char.add(np.char.add(np.char.add("s", scenario.astype(str)),
                                          np.char.add("_g", group.astype(str))),
                              np.char.add("_h", subgroup.astype(str))),
      "scenario": np.char.add("s", scenario.astype(str)),
      "user_group": np.char.add("g", group.astype(str)),
      "user_id": np.char.add("u", user.astype(str)),
      "item_id": np.char.add("i", item.astype(str)),
      "item_category": np.char.add("c", category.astype(str)),
      "device": device,
      "item_tags": world.item_tags[item],
      "price": price,
      "hour": hour,
  }


def generate(output_dir: str, config: GeneratorConfig) -> Dict:
  """Writes `raw/part-*.csv`, `spec.yaml` and `generator.json` under output_dir.

  Returns the summary also written to generator.json (rows, clicks, oracle AUC, leaf
  CTRs). Files are written under temporary names and renamed when complete.
  """
  config.validate()
  spec = spec_lib.load_spec(SPEC_PATH)
  converts = config.conversion_rate > 0
  if converts:
    spec = generated_logs.with_conversion(spec)
  shards = generated_logs.CsvShards(generated_logs.raw_dir(output_dir), spec.names,
                                    config.rows_per_file, config.rows)
  world = _World(config.rows, config.seed, config.conversion_rate,
                 config.conversion_correlation)
  auc = generated_logs.BinnedAuc()
  conversion = generated_logs.ConversionSummary()
  leaf_cvr: Dict[str, float] = {}
  leaf_rows: Dict[str, int] = {}
  leaf_clicks: Dict[str, float] = {}
  leaf_prob: Dict[str, float] = {}
  clicks = 0
  written = 0
  chunk_index = 0
  while written < config.rows:
    # Chunks are cut independently of the files, so rows_per_file only shards the
    # output: the rows themselves depend on (rows, seed) alone.
    n = min(CHUNK_ROWS, config.rows - written)
    rng = np.random.default_rng([config.seed, 1, chunk_index])
    purchase_rng = np.random.default_rng([config.seed, 7, chunk_index]) if converts else None
    chunk_index += 1
    columns = _chunk(world, rng, n, purchase_rng)
    shards.write(columns)
    auc.update(columns["click"], columns["true_ctr"])
    if converts:
      conversion.update(columns["click"], columns[generated_logs.PURCHASE],
                        columns["true_ctr"], columns[generated_logs.TRUE_CVR])
    clicks += int(columns["click"].sum())
    leaves, inverse = np.unique(columns["subgroup"], return_inverse=True)
    for j, leaf in enumerate(leaves):
      mask = inverse == j
      leaf_rows[leaf] = leaf_rows.get(leaf, 0) + int(mask.sum())
      leaf_clicks[leaf] = leaf_clicks.get(leaf, 0) + float(columns["click"][mask].sum())
      leaf_prob[leaf] = leaf_prob.get(leaf, 0) + float(columns["true_ctr"][mask].sum())
      if converts:
        leaf_cvr[leaf] = leaf_cvr.get(leaf, 0) + float(
            columns[generated_logs.TRUE_CVR][mask].sum())
    written += n
  paths = shards.publish()
  spec.save(generated_logs.spec_path(output_dir))
  summary = {
      "rows": written,
      "clicks": clicks,
      "ctr": clicks / written,
      "seed": config.seed,
      "files": len(paths),
      "oracle_auc": auc.result(),
      "num_users": world.num_users,
      "num_items": world.num_items,
      "leaves": {leaf: {"rows": leaf_rows[leaf],
                        "true_ctr": leaf_prob[leaf] / leaf_rows[leaf],
                        "observed_ctr": leaf_clicks[leaf] / leaf_rows[leaf]}
                 for leaf in sorted(leaf_rows)},
  }
  if converts:
    summary.update(conversion.result())
    summary["config"] = {"conversion_rate": config.conversion_rate,
                         "conversion_correlation": config.conversion_correlation}
    for leaf, entry in summary["leaves"].items():
      entry["true_cvr"] = leaf_cvr[leaf] / leaf_rows[leaf]
  with open(generated_logs.summary_path(output_dir), "w") as f:
    json.dump(summary, f, indent=1)
  return summary
