"""Writes logs in Ali-CCP's raw release format, for tests and for runs without the data.

The real release (about 84M impressions) cannot be fetched offline; this writes the same
line format with a planted click model (scenario x user group x item quality), so the
`ali_ccp_raw` source and a whole `hmdn run` can be exercised on it:

  sample_skeleton_<part>.csv  sample_id,click,purchase,common_feature_index,feature_count,
                              feature_list (the impression's item-side features)
  common_features_<part>.csv  common_feature_index,feature_count,feature_list (user side)
  feature_list                entries `field_id\\x02feature_id\\x03value` joined by \\x01
"""
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from beam_jobs.sources import ENTRY_SEP, FIELD_SEP, VALUE_SEP

USER_FIELDS = ("121", "122", "124", "125", "126", "127", "128", "129")
MULTI_FIELDS = ("109_14", "110_14", "127_14", "150_14")
ITEM_FIELDS = ("206", "207", "210", "216", "508", "509", "702", "853")

Entry = Tuple[str, str, float]  # (field id, feature id, value)


def feature_list(entries: Sequence[Entry]) -> str:
  return ENTRY_SEP.join(f"{f}{FIELD_SEP}{fid}{VALUE_SEP}{v:g}" for f, fid, v in entries)


def skeleton_line(sample_id: str, click: int, purchase: int, index: str,
                  entries: Sequence[Entry]) -> str:
  return f"{sample_id},{click},{purchase},{index},{len(entries)},{feature_list(entries)}"


def common_line(index: str, entries: Sequence[Entry]) -> str:
  return f"{index},{len(entries)},{feature_list(entries)}"


def user_entries(rng: np.random.Generator, user: int, group: int) -> List[Entry]:
  entries = [("101", str(100_000 + user), 1.0)]
  for k, field in enumerate(USER_FIELDS):
    value = group if field == "122" else int(rng.integers(0, 3 + k))
    entries.append((field, f"{field}{value:03d}", 1.0))
  for field in MULTI_FIELDS:
    for fid in rng.choice(40, size=int(rng.integers(1, 4)), replace=False):
      entries.append((field, f"{field}_{fid}", float(rng.integers(1, 9))))
  return entries


def generate(out_dir: str, impressions: int = 20_000, users: int = 1_000,
             items: int = 2_000, parts: Sequence[str] = ("train",), seed: int = 0
             ) -> Dict[str, object]:
  """Writes `<out_dir>/{sample_skeleton,common_features}_<part>.csv`; returns counts.

  Clicks: logistic in a scenario bias, a user-group x scenario interaction, an item
  quality and the user's activity, so per-distribution AUCs are meaningful.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(out_dir, exist_ok=True)
  group_of = rng.integers(0, 4, users)
  activity = rng.zipf(1.6, users).clip(1, 400).astype(float)
  item_p = 1.0 / np.arange(1, items + 1) ** 0.8
  item_p /= item_p.sum()
  quality = rng.normal(0, 0.8, items)
  scenario_bias = np.array([-2.2, -1.6, -2.8])
  interaction = rng.normal(0, 0.7, (3, 4))
  counts = {}
  per_part = np.array_split(np.arange(impressions), len(parts))
  for part, ids in zip(parts, per_part):
    user_p = activity / activity.sum()
    imp_users = rng.choice(users, size=len(ids), p=user_p)
    seen_users = sorted(set(imp_users.tolist()))
    with open(os.path.join(out_dir, f"common_features_{part}.csv"), "w") as f:
      for u in seen_users:
        f.write(common_line(f"c{u:08x}", user_entries(rng, u, group_of[u])) + "\n")
    clicks = 0
    with open(os.path.join(out_dir, f"sample_skeleton_{part}.csv"), "w") as f:
      for sid, u in zip(ids, imp_users):
        item = int(rng.choice(items, p=item_p))
        scenario = int(rng.choice(3, p=[0.6, 0.3, 0.1]))
        logit = (scenario_bias[scenario] + interaction[scenario, group_of[u]]
                 + quality[item] + 0.3 * np.log(activity[u]))
        click = int(rng.random() < 1 / (1 + np.exp(-logit)))
        purchase = int(click and rng.random() < 0.1)
        clicks += click
        entries = [("205", str(500_000 + item), 1.0), ("301", str(9_000 + scenario), 1.0)]
        entries += [(field, f"{field}{(item * (k + 3)) % (50 + 20 * k):04d}", 1.0)
                    for k, field in enumerate(ITEM_FIELDS)]
        f.write(skeleton_line(str(sid + 1), click, purchase, f"c{u:08x}", entries)
                + "\n")
    counts[part] = {"impressions": len(ids), "users": len(seen_users), "clicks": clicks}
  return counts
