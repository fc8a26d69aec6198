"""A built-in log for the regime HMDN is for: a deep hierarchy with a long tail of leaves.

Every impression belongs to a leaf of a four-level observed tree
`scenario -> channel -> population -> segment` (each node has 3-8 children, so several
hundred to a few thousand leaves), and every user to one of a few latent groups below it.
Leaf sizes follow a Zipf law over randomly ranked leaves: a few head leaves hold most of
the traffic, most leaves get under 200 rows in 1M. A node's click model is its parent's
plus noise whose scale shrinks with depth (bias and a preference vector dotted with the
item's latent vector), so a rare leaf is predictable from its ancestors and a leaf is more
than a bias. The latent group adds its own shared effect; it is written as the
passthrough column `latent_segment` (to score codes, never a model input) and shows in
a row only through weak correlates (device, hour); the Beam job's user profile fields
(`user_top_device`, `user_top_hour` in the spec) summarise a user's device and hour
over their training rows, which shows it much more clearly. The leaf path is kept as the
passthrough column `leaf`, so evaluation can bucket rows by leaf size.

Same contract as `synthetic_logs`: `generate(output_dir, config)` writes raw/part-*.csv,
spec.yaml and generator.json (oracle AUC, AUC of the leaf-agnostic part of the logit,
leaf size quantiles). Rows are drawn in fixed blocks of BLOCK_ROWS, each from its own
seeded generator, so the output depends on (rows, seed and the shape knobs) alone, not
on `chunk_rows` or `rows_per_file`.

Two opt-in additions, each off by default (the log, its spec and generator.json are then
what they were without them), each drawn from its own seeded streams so that turning one
on leaves the world and the draws of the rest as they were:

- `conversion_rate` > 0: a `purchase` label, only after a click, with conversion effects
  per node nesting like the click's (each node's deviation from its parent's correlated
  with its click deviation by `conversion_correlation`) and its intercept calibrated so
  that `conversion_rate` of clicks convert; the true p(purchase | click) is `true_cvr`
  (role oracle, task purchase) and the spec gains
  `{name: purchase, kind: numeric, role: label, after: click}`. generator.json gains
  `purchases`, `cvr` (purchases / clicks), `ctcvr` (purchases / rows),
  `oracle_auc_purchase_cvr` (true_cvr over clicked rows) and `oracle_auc_purchase_ctcvr`
  (true_ctr * true_cvr over all rows).
- `browsing` > 0: each latent group prefers some item categories (a Dirichlet of
  `interest_concentration`); that share of a user's rows view an item drawn from their
  group's categories (item popularity kept within a category), and the click (and the
  conversion) logit gains `interest_strength` * the group's interest in the item's
  category. So a user's viewed items carry the latent level: generator.json's
  `browsing_nmi_user_top_category` is the NMI between the latent group and a user's most
  viewed category (users with >= 5 rows), against `browsing_nmi_row_category` from one
  row's category. Rows gain `ts` (passthrough, numeric): the row's position in the log,
  increasing per user (exact in float32 up to 2^24 rows; `hour` stays drawn as
  before, not from it), from which the Beam job can derive each row's history, and by
  which it can split (`--split_time_field=ts --split_time_quantile=0.8`: 15,999 / 4,001
  rows of a 20k-row log). The spec lines that add the histories:

    - {name: item_history, kind: sequence, vocab_from: item_id, max_length: 50,
       derived: {kind: history, source: user_id, of: item_id, order_by: ts}}
    - {name: category_history, kind: sequence, vocab_from: item_category,
       max_length: 50,
       derived: {kind: history, source: user_id, of: item_category, order_by: ts}}
"""
import dataclasses
import json
import os
from typing import Dict, List, Optional

import numpy as np

from hmdn.beam_jobs import generated_logs
from hmdn.features.options import option, validate
from hmdn.features import spec as spec_lib

SPEC_PATH = os.path.join(spec_lib.SPECS_DIR, "longtail.yaml")

LEVELS = ("scenario", "channel", "population", "segment")  # coarse to fine
LEVEL_PREFIX = ("s", "ch", "p", "g")
LATENT_COLUMN = "latent_segment"
LEAF_COLUMN = "leaf"
DEVICES = ("ios", "android", "pc", "tablet")
DEVICE_PROBS = (0.4, 0.35, 0.15, 0.1)
BLOCK_ROWS = 4_096  # rows per seeded block: the unit of determinism
CALIBRATION_ROWS = 50_000
TS_COLUMN = "ts"
PURCHASE, TRUE_CVR = generated_logs.PURCHASE, generated_logs.TRUE_CVR
# The opt-in additions' config fields, by the field that turns each on: left out of
# generator.json's config while it is off, so a default summary is unchanged.
OPT_IN = {"conversion_rate": ("conversion_rate", "conversion_correlation"),
          "browsing": ("browsing", "interest_strength", "interest_concentration")}
MIN_USER_ROWS = 5  # users with this many rows or more enter the browsing NMI


@dataclasses.dataclass
class LongTailConfig:
  """The size, the seed and the shape of the long-tail log."""
  rows: int = option(1_000_000, "Impressions to generate.", minimum=1)
  seed: int = option(0, "Seed of the world (tree, effects, users, items) and the rows.",
                     minimum=0)
  rows_per_file: int = option(1_000_000, "Rows per raw/part-*.csv file.", minimum=1)
  chunk_rows: int = option(50_000, "Rows drawn and written at once (memory only; the "
                           "output does not depend on it).", minimum=1)
  branching_min: int = option(3, "Fewest children of a node (the root included).", minimum=1)
  branching_max: int = option(8, "Most children of a node (the root included).", minimum=1)
  zipf_exponent: float = option(1.4, "Leaf traffic share ~ (rank + zipf_offset) ** "
                                "-zipf_exponent over randomly ranked leaves.", minimum=0)
  zipf_offset: float = option(2.0, "Flattens the head of the Zipf law.", minimum=0)
  ctr: float = option(0.08, "Mean true click probability the intercept is calibrated "
                      "to.", above=0, below=1)
  bias_scale: float = option(0.5, "Std of a scenario's bias around the root's.")
  preference_scale: float = option(0.6, "Std of a scenario's preference vector around "
                                   "the root's.")
  shrink: float = option(0.75, "Each level's noise std is this times its parent "
                         "level's: effect(child) = effect(parent) + noise.", above=0)
  latent_groups: int = option(4, "Number of latent user groups (`latent_segment`).", minimum=1)
  latent_scale: float = option(0.6, "Std of a latent group's bias and preference.")
  latent_signal: float = option(0.5, "Share of rows whose device and hour follow their "
                                "latent group (the rest are drawn globally): how "
                                "visible the latent level is.", minimum=0, maximum=1)
  latent_dim: int = option(8, "Dimension of item and preference vectors.", minimum=1)
  num_categories: int = option(30, "Item categories.", minimum=1)
  conversion_rate: float = option(0.0, generated_logs.CONVERSION_RATE_HELP, minimum=0,
                                  below=1)
  conversion_correlation: float = option(0.5, generated_logs.CONVERSION_CORRELATION_HELP,
                                         minimum=-1, maximum=1)
  browsing: float = option(0.0, "Share of a user's rows whose item is drawn from their "
                           "latent group's preferred categories (0: off, the log without "
                           "`ts`; > 0 adds `ts` and the interest term to the click "
                           "logit).", minimum=0, maximum=1)
  interest_strength: float = option(1.0, "With browsing: weight of the latent group's "
                                    "interest in the item's category in the logit.",
                                    minimum=0)
  interest_concentration: float = option(0.3, "With browsing: Dirichlet concentration of "
                                         "a latent group's category preferences (smaller: "
                                         "fewer preferred categories).", above=0)

  def validate(self) -> "LongTailConfig":
    """The declared rules (`features.options.validate`), then the branching range."""
    validate(self)
    if self.branching_max < self.branching_min:
      raise ValueError(f"--branching_max={self.branching_max!r}: expected an integer >= "
                       f"--branching_min ({self.branching_min})")
    return self


class _World:
  """The tree, its click-model parameters, users and items, drawn from the seed.

  Depends on `rows` only through the numbers of users and items.
  """

  def __init__(self, config: LongTailConfig):
    c = config
    rng = np.random.default_rng([c.seed, 0])
    d = c.latent_dim
    # The tree: parents[l][i] is the index at level l-1 of node i of level l.
    self.parents: List[np.ndarray] = []
    bias = np.zeros(1)
    pref = 0.3 * rng.normal(0, 1, (1, d))  # the root's: a mild global taste
    self.root_pref = pref
    self.node_bias: List[np.ndarray] = []
    self.node_pref: List[np.ndarray] = []
    width = 1
    for level in range(len(LEVELS)):
      children = rng.integers(c.branching_min, c.branching_max + 1, width)
      parent = np.repeat(np.arange(width), children)
      scale = c.shrink ** level
      bias = bias[parent] + c.bias_scale * scale * rng.normal(0, 1, len(parent))
      pref = pref[parent] + c.preference_scale * scale * rng.normal(0, 1, (len(parent), d))
      self.parents.append(parent)
      self.node_bias.append(bias)
      self.node_pref.append(pref)
      width = len(parent)
    self.num_leaves = width
    # ancestors[l][leaf]: the leaf's node at level l.
    self.ancestors = [np.arange(width)]
    for level in range(len(LEVELS) - 1, 0, -1):
      self.ancestors.insert(0, self.parents[level][self.ancestors[0]])
    names = []
    for level, prefix in enumerate(LEVEL_PREFIX):
      names.append(np.array([f"{prefix}{i}" for i in range(len(self.node_bias[level]))],
                            dtype=object))
    self.level_names = names
    self.leaf_names = np.array(
        [".".join(str(self.ancestors[l][i]) for l in range(len(LEVELS)))
         for i in range(width)], dtype=object)
    # Zipf leaf sizes over a random ranking of the leaves.
    rank = rng.permutation(width)
    weight = (rank + 1.0 + c.zipf_offset) ** -c.zipf_exponent
    self.leaf_prob = weight / weight.sum()
    # Latent groups: a shared effect each, plus a small deviation per (leaf, group),
    # continuing the shrinking noise one level down.
    self.latent_bias = c.latent_scale * rng.normal(0, 1, c.latent_groups)
    self.latent_pref = c.latent_scale * rng.normal(0, 1, (c.latent_groups, d))
    deep = c.shrink ** len(LEVELS)
    self.leaf_latent_bias = c.bias_scale * deep * rng.normal(0, 1, (width, c.latent_groups))
    self.latent_device = rng.dirichlet(np.full(len(DEVICES), 0.5), c.latent_groups)
    self.latent_hour = rng.uniform(0, 24, c.latent_groups)
    # Users nest in leaves (populations and segments are user properties): each leaf
    # owns a block of users in proportion to its traffic, at least one.
    target_users = int(np.clip(c.rows // 20, 500, 200_000))
    per_leaf = np.maximum(1, np.round(self.leaf_prob * target_users)).astype(int)
    self.user_start = np.r_[0, np.cumsum(per_leaf)[:-1]]
    self.user_count = per_leaf
    self.num_users = int(per_leaf.sum())
    self.user_latent = rng.integers(0, c.latent_groups, self.num_users)
    self.user_taste = rng.normal(0, 1, (self.num_users, d))
    # Items: a category (Zipf-popular), a latent vector around the category's, a price.
    self.num_items = int(np.clip(c.rows // 50, 500, 50_000))
    cat_weight = 1.0 / np.arange(1, c.num_categories + 1)
    self.item_category = rng.choice(c.num_categories, self.num_items,
                                    p=cat_weight / cat_weight.sum())
    centre = rng.normal(0, 1, (c.num_categories, d))
    self.item_vector = centre[self.item_category] + 0.5 * rng.normal(0, 1, (self.num_items, d))
    self.item_log_price = (rng.normal(3.0, 0.6, c.num_categories)[self.item_category] +
                           0.3 * rng.normal(0, 1, self.num_items))
    self.item_weight = rng.zipf(1.4, self.num_items).clip(max=500).astype(float)
    self.item_weight /= self.item_weight.sum()
    self.user_names = np.array([f"u{i}" for i in range(self.num_users)], dtype=object)
    self.item_names = np.array([f"i{i}" for i in range(self.num_items)], dtype=object)
    self.category_names = np.array([f"c{i}" for i in range(c.num_categories)],
                                   dtype=object)
    self.latent_names = np.array([f"z{i}" for i in range(c.latent_groups)], dtype=object)
    self.config = c
    self.browsing = c.browsing > 0
    self.converts = c.conversion_rate > 0
    if self.browsing:
      self._draw_interests(c)
    if self.converts:
      self._draw_conversion_effects(c)
    self.intercept = self._calibrate(c.ctr)

  def _draw_interests(self, c: LongTailConfig) -> None:
    """Each latent group's category preferences, the item distribution of its views
    (as a CDF per group) and its interest term per category."""
    rng = np.random.default_rng([c.seed, 8])
    self.latent_category = rng.dirichlet(np.full(c.num_categories, c.interest_concentration),
                                          c.latent_groups)
    category_share = np.bincount(self.item_category, weights=self.item_weight,
                                 minlength=c.num_categories)
    within = self.item_weight / np.maximum(category_share[self.item_category], 1e-300)
    views = self.latent_category[:, self.item_category] * within[None]
    self.view_cdf = np.cumsum(views / views.sum(1, keepdims=True), axis=1)
    self.view_cdf[:, -1] = 1.0
    tiny = 1e-6
    self.interest = c.interest_strength * np.tanh(
        np.log(c.num_categories * self.latent_category + tiny))

  def _draw_conversion_effects(self, c: LongTailConfig) -> None:
    """Conversion effects per node: the parent's plus noise correlated with the node's
    click noise (same scale per level), and per latent group likewise."""
    rng = np.random.default_rng([c.seed, 5])
    rho = c.conversion_correlation
    bias = np.zeros(1)
    pref = generated_logs.correlated(rng, self.root_pref, 0.3, rho)
    click_bias, click_pref = np.zeros(1), self.root_pref
    self.cvr_bias, self.cvr_pref = [], []
    for level in range(len(LEVELS)):
      parent = self.parents[level]
      scale = c.shrink ** level
      bias = bias[parent] + generated_logs.correlated(
          rng, self.node_bias[level] - click_bias[parent], c.bias_scale * scale, rho)
      pref = pref[parent] + generated_logs.correlated(
          rng, self.node_pref[level] - click_pref[parent], c.preference_scale * scale, rho)
      click_bias, click_pref = self.node_bias[level], self.node_pref[level]
      self.cvr_bias.append(bias)
      self.cvr_pref.append(pref)
    self.cvr_latent_bias = generated_logs.correlated(rng, self.latent_bias, c.latent_scale,
                                                     rho)
    self.cvr_latent_pref = generated_logs.correlated(rng, self.latent_pref, c.latent_scale,
                                                     rho)

  def _calibrate(self, ctr: float) -> float:
    """The intercept that makes the mean true CTR `ctr` on a fixed calibration sample
    (and, with conversions, the conversion intercept that makes `conversion_rate` of
    clicks convert there)."""
    rng = np.random.default_rng([self.config.seed, 2])
    aux = np.random.default_rng([self.config.seed, 2, 1])
    parts = _draw(self, rng, CALIBRATION_ROWS, aux)
    logit = parts["agnostic"] + parts["hierarchy"]
    intercept = generated_logs.calibrate(lambda b: _sigmoid(logit + b).mean(), ctr)
    if self.converts:
      p_click = _sigmoid(logit + intercept)
      cvr = parts["cvr_logit"]
      self.cvr_intercept = generated_logs.calibrate(
          lambda b: float((p_click * _sigmoid(cvr + b)).sum() / p_click.sum()),
          self.config.conversion_rate)
    return intercept


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _draw(world: _World, rng: np.random.Generator, n: int,
          aux: Optional[np.random.Generator] = None) -> Dict[str, np.ndarray]:
  """n impressions as integer indices and the two parts of their logit (with
  conversions, the conversion logit before its intercept). `aux` draws the browsing,
  so what `rng` draws is the same with and without it."""
  c = world.config
  d = c.latent_dim
  leaf = rng.choice(world.num_leaves, n, p=world.leaf_prob)
  # Within its leaf a user is drawn with a skew (u ** 2): some users are heavy.
  user = world.user_start[leaf] + np.floor(
      world.user_count[leaf] * rng.random(n) ** 2).astype(int)
  item = rng.choice(world.num_items, n, p=world.item_weight)
  latent = world.user_latent[user]
  follows = rng.random(n) < c.latent_signal
  cum = np.cumsum(world.latent_device, axis=1)
  latent_device = np.minimum((rng.random(n)[:, None] > cum[latent]).sum(1),
                             len(DEVICES) - 1)
  global_device = rng.choice(len(DEVICES), n, p=DEVICE_PROBS)
  device = np.where(follows, latent_device, global_device)
  hour = np.where(follows, np.mod(world.latent_hour[latent] + rng.normal(0, 3.0, n), 24.0),
                  rng.uniform(0, 24, n))
  if world.browsing:
    # That share of rows views an item of the user's latent group's categories.
    browses = aux.random(n) < c.browsing
    u = aux.random(n)
    for g in range(c.latent_groups):
      rows = browses & (latent == g)
      item[rows] = np.minimum(np.searchsorted(world.view_cdf[g], u[rows], side="right"),
                              world.num_items - 1)
  vec = world.item_vector[item]
  # The part a model without the hierarchy could learn: user x item affinity, price
  # and time of day.
  agnostic = (0.5 * np.einsum("ij,ij->i", world.user_taste[user], vec) / np.sqrt(d) -
              0.3 * (world.item_log_price[item] - 3.0) / 0.6 +
              0.2 * np.cos(2 * np.pi * (hour - 20.0) / 24.0))
  # The part carried by the leaf (bias + preference . item vector) and the latent group.
  pref = world.node_pref[-1][leaf] + world.latent_pref[latent]
  hierarchy = (world.node_bias[-1][leaf] + world.latent_bias[latent] +
               world.leaf_latent_bias[leaf, latent] +
               np.einsum("ij,ij->i", pref, vec) / np.sqrt(d))
  interest = 0.0
  if world.browsing:  # the latent group's interest in the item's category
    interest = world.interest[latent, world.item_category[item]]
    hierarchy = hierarchy + interest
  out = {"leaf": leaf, "user": user, "item": item, "latent": latent,
         "device": device, "hour": hour, "agnostic": agnostic, "hierarchy": hierarchy}
  if world.converts:
    cvr_pref = world.cvr_pref[-1][leaf] + world.cvr_latent_pref[latent]
    out["cvr_logit"] = (
        0.5 * np.einsum("ij,ij->i", world.user_taste[user], vec) / np.sqrt(d) -
        0.5 * (world.item_log_price[item] - 3.0) / 0.6 +
        world.cvr_bias[-1][leaf] + world.cvr_latent_bias[latent] + interest +
        np.einsum("ij,ij->i", cvr_pref, vec) / np.sqrt(d))
  return out


def _rows(world: _World, seed: int, first_block: int, num_blocks: int, n: int
          ) -> Dict[str, np.ndarray]:
  """The first n rows of blocks first_block.., each block from its own generator."""
  parts = []
  for block in range(first_block, first_block + num_blocks):
    rng = np.random.default_rng([seed, 1, block])
    aux = np.random.default_rng([seed, 6, block])
    draw = _draw(world, rng, BLOCK_ROWS, aux)
    draw["uniform"] = rng.random(BLOCK_ROWS)
    if world.converts:
      draw["purchase_uniform"] = aux.random(BLOCK_ROWS)
    if world.browsing:
      draw["ts"] = block * BLOCK_ROWS + np.arange(BLOCK_ROWS, dtype=np.int64)
    parts.append(draw)
  out = {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}
  out["true_ctr"] = _sigmoid(world.intercept + out["agnostic"] + out["hierarchy"])
  out["click"] = (out["uniform"] < out["true_ctr"]).astype(int)
  if world.converts:
    out[TRUE_CVR] = _sigmoid(world.cvr_intercept + out["cvr_logit"])
    out[PURCHASE] = out["click"] * (out["purchase_uniform"] < out[TRUE_CVR]).astype(int)
  return out


def _columns(world: _World, rows: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """The raw CSV columns of drawn rows, by spec name."""
  leaf = rows["leaf"]
  cols = {"click": rows["click"], "true_ctr": rows["true_ctr"],
          **{k: rows[k] for k in (PURCHASE, TRUE_CVR, TS_COLUMN) if k in rows},
          LEAF_COLUMN: world.leaf_names[leaf],
          LATENT_COLUMN: world.latent_names[rows["latent"]]}
  for level, name in enumerate(LEVELS):
    cols[name] = world.level_names[level][world.ancestors[level][leaf]]
  cols.update({
      "user_id": world.user_names[rows["user"]],
      "item_id": world.item_names[rows["item"]],
      "item_category": world.category_names[world.item_category[rows["item"]]],
      "device": np.array(DEVICES, dtype=object)[rows["device"]],
      "price": np.exp(world.item_log_price[rows["item"]]),
      "hour": rows["hour"],
  })
  return cols


def log_spec(config: LongTailConfig) -> "spec_lib.FeatureSpec":
  """The shipped spec, with the conversion task and `ts` when they are on."""
  spec = spec_lib.load_spec(SPEC_PATH)
  if config.conversion_rate > 0:
    spec = generated_logs.with_conversion(spec)
  if config.browsing > 0:
    at = spec.names.index("hour") + 1
    ts = spec_lib.Feature(TS_COLUMN, spec_lib.NUMERIC, role=spec_lib.PASSTHROUGH)
    spec = spec_lib.FeatureSpec(name=spec.name, source=spec.source,
                                features=spec.features[:at] + (ts,) + spec.features[at:])
  return spec


class _BrowsingCounts:
  """Views per (user, category) and per (latent group, category), for the NMI of the
  latent group with a user's most viewed category (what a history carries) and with
  one row's category."""

  def __init__(self, world: _World):
    self.world = world
    self.categories = world.config.num_categories
    self.user_category = np.zeros(world.num_users * self.categories, dtype=np.int64)
    self.latent_category = np.zeros((world.config.latent_groups, self.categories),
                                    dtype=np.int64)

  def update(self, rows: Dict[str, np.ndarray]) -> None:
    category = self.world.item_category[rows["item"]]
    self.user_category += np.bincount(rows["user"] * self.categories + category,
                                      minlength=len(self.user_category))
    np.add.at(self.latent_category, (rows["latent"], category), 1)

  def result(self) -> Dict[str, float]:
    counts = self.user_category.reshape(-1, self.categories)
    active = counts.sum(1) >= MIN_USER_ROWS
    top = counts[active].argmax(1)  # ties: the smallest category
    joint = np.zeros_like(self.latent_category)
    np.add.at(joint, (self.world.user_latent[active], top), 1)
    return {
        "browsing_users": int(active.sum()),
        "browsing_nmi_user_top_category": generated_logs.normalized_mutual_information(
            joint),
        "browsing_nmi_row_category": generated_logs.normalized_mutual_information(
            self.latent_category),
    }


def leaf_row_quantiles(counts: np.ndarray) -> Dict[str, float]:
  qs = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
  values = np.quantile(counts, qs) if len(counts) else [float("nan")] * len(qs)
  out = {f"p{int(q * 100)}": float(v) for q, v in zip(qs, values)}
  out["max"] = float(counts.max()) if len(counts) else float("nan")
  return out


def generate(output_dir: str, config: LongTailConfig) -> Dict:
  """Writes `raw/part-*.csv`, `spec.yaml` and `generator.json` under output_dir.

  Returns the summary also written to generator.json: rows, CTR, the oracle AUC, the AUC
  of the leaf-agnostic part of the logit (what a model blind to the hierarchy could at
  best reach, up to the latent correlates), the tree's shape and leaf size quantiles.
  """
  config.validate()
  spec = log_spec(config)
  shards = generated_logs.CsvShards(generated_logs.raw_dir(output_dir),
                                    [f.name for f in spec.raw_fields],  # not derived
                                    config.rows_per_file, config.rows)
  world = _World(config)
  conversion = generated_logs.ConversionSummary()
  browsing = _BrowsingCounts(world) if world.browsing else None
  oracle_auc = generated_logs.BinnedAuc()
  agnostic_auc = generated_logs.BinnedAuc()
  leaf_rows = np.zeros(world.num_leaves, dtype=np.int64)
  leaf_clicks = np.zeros(world.num_leaves)
  leaf_prob = np.zeros(world.num_leaves)
  latent_rows = np.zeros(config.latent_groups, dtype=np.int64)
  latent_clicks = np.zeros(config.latent_groups)
  blocks_per_chunk = max(1, -(-config.chunk_rows // BLOCK_ROWS))
  clicks = 0
  written = 0
  block = 0
  while written < config.rows:
    n = min(blocks_per_chunk * BLOCK_ROWS, config.rows - written)
    blocks = -(-n // BLOCK_ROWS)
    rows = _rows(world, config.seed, block, blocks, n)
    block += blocks
    columns = _columns(world, rows)
    shards.write(columns)
    click = rows["click"]
    oracle_auc.update(click, rows["true_ctr"])
    agnostic_auc.update(click, _sigmoid(rows["agnostic"]))
    clicks += int(click.sum())
    if world.converts:
      conversion.update(click, rows[PURCHASE], rows["true_ctr"], rows[TRUE_CVR])
    if browsing is not None:
      browsing.update(rows)
    leaf_rows += np.bincount(rows["leaf"], minlength=world.num_leaves)
    leaf_clicks += np.bincount(rows["leaf"], weights=click, minlength=world.num_leaves)
    # Float sums block by block, so they add up in the same order whatever chunk_rows.
    for lo in range(0, n, BLOCK_ROWS):
      leaf_prob += np.bincount(rows["leaf"][lo:lo + BLOCK_ROWS],
                               weights=rows["true_ctr"][lo:lo + BLOCK_ROWS],
                               minlength=world.num_leaves)
    latent_rows += np.bincount(rows["latent"], minlength=config.latent_groups)
    latent_clicks += np.bincount(rows["latent"], weights=click,
                                 minlength=config.latent_groups)
    written += n
  paths = shards.publish()
  spec.save(generated_logs.spec_path(output_dir))
  seen = leaf_rows > 0
  summary = {
      "generator": "longtail",
      # chunk_rows left out: it changes nothing in the output.
      "config": {k: v for k, v in dataclasses.asdict(config).items()
                 if k != "chunk_rows" and k not in _unused_options(config)},
      "rows": written,
      "clicks": clicks,
      "ctr": clicks / written,
      "seed": config.seed,
      "files": len(paths),
      "oracle_auc": oracle_auc.result(),
      "leaf_agnostic_auc": agnostic_auc.result(),
      "intercept": world.intercept,
      "levels": list(LEVELS),
      "nodes_per_level": [len(b) for b in world.node_bias],
      "num_leaves": world.num_leaves,
      "num_leaves_seen": int(seen.sum()),
      "leaves_under_200_rows": float(np.mean(leaf_rows < 200)),
      "leaf_rows_quantiles": leaf_row_quantiles(leaf_rows),
      "num_users": world.num_users,
      "num_items": world.num_items,
      "latent_groups": {
          str(world.latent_names[k]): {
              "rows": int(latent_rows[k]),
              "observed_ctr": float(latent_clicks[k] / max(latent_rows[k], 1))}
          for k in range(config.latent_groups)},
      "leaves": {str(world.leaf_names[i]): {
          "rows": int(leaf_rows[i]),
          "true_ctr": float(leaf_prob[i] / leaf_rows[i]),
          "observed_ctr": float(leaf_clicks[i] / leaf_rows[i])}
          for i in np.flatnonzero(seen)},
  }
  if world.converts:
    summary.update(conversion.result())
  if browsing is not None:
    summary.update(browsing.result())
  with open(generated_logs.summary_path(output_dir), "w") as f:
    json.dump(summary, f, indent=1)
  return summary


def _unused_options(config: LongTailConfig) -> List[str]:
  """The opt-in fields of the additions that are off."""
  return [k for on, keys in OPT_IN.items() if not getattr(config, on) for k in keys]
