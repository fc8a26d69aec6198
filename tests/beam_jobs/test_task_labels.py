"""A log with two tasks (click, purchase after click) through the Beam job: a label
that is not 0/1, or a purchase without a click, is a dead letter with its reason; the
counters reconcile; the statistics hold each task's rate per distribution value."""
import glob
import json

import pytest
import yaml

from hmdn.beam_jobs import preprocess
from hmdn.beam_jobs.config import PreprocessConfig
from hmdn.features.preprocessed import PreprocessedData

SPEC = {"name": "two_tasks", "features": [
    {"name": "click", "kind": "numeric", "role": "label"},
    {"name": "purchase", "kind": "numeric", "role": "label", "after": "click"},
    {"name": "scenario", "kind": "categorical", "distribution_level": 0},
    {"name": "uid", "kind": "categorical", "user_id": True},
]}
BAD = {  # line -> a fragment of its reason
    "0,1,s0,bad_no_click": "1 where 'click' is 0",
    "1,2,s0,bad_purchase_2": "'purchase'",
    "1,0.5,s1,bad_purchase_half": "'purchase'",
    "1,yes,s1,bad_purchase_yes": "'purchase'",
    "1,,s1,bad_purchase_empty": "'purchase'",
    "-1,0,s1,bad_click_negative": "'click'",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("tasks")
  (root / "spec.yaml").write_text(yaml.safe_dump(SPEC))
  good = []
  for i in range(2000):  # s0: every 2nd row clicked, every 10th purchased
    scenario = f"s{i % 2}"
    click = int(i % 4 < 2) if scenario == "s0" else int(i % 4 == 1)
    purchase = int(click and i % 20 == 0)
    good.append(f"{click},{purchase},{scenario},u{i % 50}")
  lines = ["click,purchase,scenario,uid"] + good[:1000] + list(BAD) + good[1000:]
  (root / "log.csv").write_text("\n".join(lines) + "\n")
  out = str(root / "data")
  metadata = preprocess.run(PreprocessConfig(
      raw=str(root / "log.csv"), output_dir=out, spec_path=str(root / "spec.yaml"),
      direct_num_workers=1, tfds=False))
  dead = []
  for path in glob.glob(f"{PreprocessedData(out).dead_letter_prefix}-*.jsonl"):
    with open(path) as f:
      dead += [json.loads(line) for line in f if line.strip()]
  return {"metadata": metadata, "dead": dead, "good": good, "out": out}


def test_bad_labels_and_a_purchase_without_a_click_are_dead_letters(run):
  reasons = {d["row"].strip(): d["reason"] for d in run["dead"]}
  assert sorted(reasons) == sorted(BAD)
  for row, fragment in BAD.items():
    assert fragment in reasons[row], (row, reasons[row])
  m = run["metadata"]
  assert m["rows_read"] == len(run["good"]) + len(BAD)
  assert m["rows_rejected"] == len(BAD)
  assert sum(m["rows_written"].values()) == len(run["good"])


def test_statistics_hold_each_tasks_rate_and_the_rate_after_its_prerequisite(run):
  stats = PreprocessedData(run["out"]).stats["distribution"]
  rows = [r.split(",") for r in run["good"]]
  for split in stats:
    for value, cell in stats[split]["scenario"].items():
      assert set(cell["tasks"]) == {"click", "purchase"}
      assert cell["clicks"] == cell["tasks"]["click"]["positives"]
      purchase = cell["tasks"]["purchase"]
      assert purchase["rate"] == pytest.approx(purchase["positives"] / cell["rows"])
      assert purchase["rate_after"] == pytest.approx(
          purchase["positives"] / cell["clicks"])
  # Over both splits, the counts are the log's.
  for scenario in ("s0", "s1"):
    mine = [r for r in rows if r[2] == scenario]
    cells = [stats[s]["scenario"][scenario] for s in stats if scenario in stats[s]["scenario"]]
    assert sum(c["rows"] for c in cells) == len(mine)
    assert sum(c["clicks"] for c in cells) == sum(int(r[0]) for r in mine)
    assert sum(c["tasks"]["purchase"]["positives"] for c in cells) == sum(
        int(r[1]) for r in mine)
