"""Ali-CCP's raw release format: its separators, file names and line parsers, and a
writer of logs in that format with a planted click model (tests, demos).

The real release (about 84M impressions) cannot be fetched offline; `generate` writes the
same line format, so the `ali_ccp_raw` source (beam_jobs/sources/ali_ccp_raw.py, which
parses with the functions here) and a whole `hmdn run` can be exercised on it:

  sample_skeleton_<part>.csv  sample_id,click,purchase,common_feature_index,feature_count,
                              feature_list (the impression's item-side features)
  common_features_<part>.csv  common_feature_index,feature_count,feature_list (user side)
  feature_list                entries `field_id\\x02feature_id\\x03value` joined by \\x01

No Beam here: the format is shared by the reader and the writer.
"""
import os
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np

from hmdn.features import spec as spec_lib

SKELETON = "sample_skeleton_"
COMMON = "common_features_"
SUFFIX = ".csv"
ENTRY_SEP, FIELD_SEP, VALUE_SEP = "\x01", "\x02", "\x03"
USER_FIELDS = ("121", "122", "124", "125", "126", "127", "128", "129")
MULTI_FIELDS = ("109_14", "110_14", "127_14", "150_14")  # the multi-valued fields
ITEM_FIELDS = ("206", "207", "210", "216", "508", "509", "702", "853")

Entry = Tuple[str, str, float]  # (field id, feature id, value)


# --- Files --------------------------------------------------------------------------------
def skeleton_file(part: str) -> str:
  return f"{SKELETON}{part}{SUFFIX}"


def common_file(part: str) -> str:
  return f"{COMMON}{part}{SUFFIX}"


def ali_ccp_files(paths: Sequence[str]) -> Dict[str, Dict[str, List[str]]]:
  """{part: {"skeleton": [...], "common": [...]}} from file names
  `sample_skeleton_<part>.csv` / `common_features_<part>.csv`; raises ValueError on a
  file of another name or a skeleton part without its common-features file."""
  parts: Dict[str, Dict[str, List[str]]] = {}
  for path in paths:
    base = os.path.basename(path)
    m = re.match(rf"^({SKELETON}|{COMMON})(.+?){re.escape(SUFFIX)}$", base)
    if not m:
      raise ValueError(f"{path}: an Ali-CCP raw file is named {skeleton_file('<part>')} "
                       f"or {common_file('<part>')}")
    kind = "skeleton" if m.group(1) == SKELETON else "common"
    parts.setdefault(m.group(2), {"skeleton": [], "common": []})[kind].append(path)
  for part, files in parts.items():
    if files["skeleton"] and not files["common"]:
      raise ValueError(f"{files['skeleton'][0]}: no {common_file(part)} among the input "
                       "files to join it with")
  if not any(f["skeleton"] for f in parts.values()):
    raise ValueError(f"no {skeleton_file('<part>')} among {list(paths)}")
  return parts


def part_of(path: str) -> str:
  """The <part> of a skeleton or common-features file name."""
  base = os.path.basename(path)
  prefix = SKELETON if base.startswith(SKELETON) else COMMON
  return base[len(prefix):-len(SUFFIX)]


# --- Lines --------------------------------------------------------------------------------
def parse_feature_list(text: str, declared_count: str) -> Dict[str, List[str]]:
  """`field\\x02id\\x03value` entries joined by \\x01 -> {field: [ids]}; raises
  SpecError on an entry without its separators, a non-numeric value or a count that
  does not match `feature_count`."""
  try:
    count = int(declared_count)
  except ValueError:
    raise spec_lib.SpecError(f"feature_count {declared_count!r} is not an integer")
  entries = text.split(ENTRY_SEP) if text else []
  if count != len(entries):
    raise spec_lib.SpecError(f"feature_count is {count} but the feature list has "
                             f"{len(entries)} entries")
  out: Dict[str, List[str]] = {}
  for i, entry in enumerate(entries):
    field, sep, rest = entry.partition(FIELD_SEP)
    if not sep:
      raise spec_lib.SpecError(f"feature entry {i} {entry!r} has no \\x02 between field "
                               "and feature id")
    fid, sep, value = rest.partition(VALUE_SEP)
    if not sep:
      raise spec_lib.SpecError(f"feature entry {i} {entry!r} has no \\x03 between "
                               "feature id and value")
    if not field or not fid:
      raise spec_lib.SpecError(f"feature entry {i} {entry!r}: empty field or feature id")
    if len(fid) > spec_lib.MAX_CELL_CHARS:
      raise spec_lib.SpecError(f"feature entry {i}: a feature id of {len(fid)} "
                               f"characters is over the limit of "
                               f"{spec_lib.MAX_CELL_CHARS}")
    try:
      float(value)
    except ValueError:
      raise spec_lib.SpecError(f"feature entry {i} {entry[:60]!r}: value "
                               f"{value[:60]!r} is not a number")
    out.setdefault(field, []).append(fid)
  return out


def parse_skeleton_line(line: str) -> Tuple[str, str, Dict[str, object]]:
  """A skeleton line -> (sample_id, common_feature_index, cells): the sample's own
  feature ids by field plus sample_id, click and purchase; raises SpecError."""
  cells = line.split(",")
  if len(cells) != 6:
    raise spec_lib.SpecError(
        f"expected 6 comma-separated fields (sample_id, click, purchase, "
        f"common_feature_index, feature_count, feature_list), got {len(cells)}")
  sample_id, click, purchase, index, count, features = cells
  if not sample_id or not index:
    raise spec_lib.SpecError("empty sample_id or common_feature_index")
  parsed = _without_own_columns(parse_feature_list(features, count))
  return sample_id, index, dict(parsed, sample_id=sample_id, click=click,
                                purchase=purchase)


# The skeleton's own columns: a feature list entry of that field id would be silently
# replaced by (or replace) the column, so it is an error.
OWN_COLUMNS = ("sample_id", "click", "purchase")


def _without_own_columns(parsed: Dict[str, List[str]]) -> Dict[str, List[str]]:
  clash = sorted(set(parsed) & set(OWN_COLUMNS))
  if clash:
    raise spec_lib.SpecError(f"feature list uses field id(s) {clash}, the names of the "
                             "skeleton's own columns")
  return parsed


def parse_common_line(line: str) -> Tuple[str, Dict[str, List[str]]]:
  """A common-features line -> (common_feature_index, {field: [ids]}); raises
  SpecError."""
  cells = line.split(",")
  if len(cells) != 3:
    raise spec_lib.SpecError(
        f"expected 3 comma-separated fields (common_feature_index, feature_count, "
        f"feature_list), got {len(cells)}")
  index, count, features = cells
  if not index:
    raise spec_lib.SpecError("empty common_feature_index")
  return index, _without_own_columns(parse_feature_list(features, count))


# --- Writing ------------------------------------------------------------------------------
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
    with open(os.path.join(out_dir, common_file(part)), "w") as f:
      for u in seen_users:
        f.write(common_line(f"c{u:08x}", user_entries(rng, u, group_of[u])) + "\n")
    clicks = 0
    with open(os.path.join(out_dir, skeleton_file(part)), "w") as f:
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
