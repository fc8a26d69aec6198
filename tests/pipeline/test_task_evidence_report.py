"""The per-task evidence report: one paired row per (model, reference)."""
import pytest

from benchmarks.task_evidence import report


def _run(seed, click, cvr):
  return {"click": click, "purchase_cvr": cvr, "seed": seed, "seconds": 1.0,
          "deciles": {"click": [click]}, "decile_sizes": {"click": ["1-9"]}}


def test_an_hmdn_variant_of_the_first_model_is_paired_once():
  results = {"mmoe": [_run(0, 0.70, 0.60), _run(1, 0.71, 0.62)],
             "hmdn_mmoe": [_run(0, 0.72, 0.61), _run(1, 0.70, 0.66)],
             "esmm": [_run(0, 0.69, 0.65), _run(1, 0.69, 0.64)]}
  text = report(results, ["mmoe", "hmdn_mmoe", "esmm"])
  rows = [line for line in text.splitlines() if line.startswith("| hmdn_mmoe - mmoe")]
  assert len(rows) == 1
  # click deltas +0.02 and -0.01: mean +0.005, one seed of two ahead
  assert "+0.0050" in rows[0] and "(1/2)" in rows[0]
  assert [line for line in text.splitlines() if line.startswith("| esmm - mmoe")]


if __name__ == "__main__":
  pytest.main([__file__])
