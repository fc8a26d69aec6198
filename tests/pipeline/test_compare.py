"""`hmdn compare`: model variants, paired deltas, and the report directory."""
import json
import os
import re

import numpy as np
import pytest

from hmdn.pipeline import compare, compare_report, variants


def test_variants_are_parsed_and_typed_like_their_config_fields():
  assert variants.parse_variant("moe") == ("moe", {})
  name, options = variants.parse_variant(
      "hmdn_moe:num_levels=6:shared_codebook=true:implicit_fields=user_id|device")
  assert name == "hmdn_moe"
  assert options == {"num_levels": 6, "shared_codebook": True,
                     "implicit_fields": ("user_id", "device")}


@pytest.mark.parametrize("text,message", [
    ("hmdn_moe:levels=6", r"'levels=6' .* is not key=value of a model option"),
    ("hmdn_moe:num_levels", r"is not key=value"),
    ("hmdn_moe:num_levels=six", r"num_levels='six' .* is not a int"),
    ("hmdn_moe:shared_codebook=maybe", r"is not a bool"),
    ("hmdn_moe:view_units=16.0", r"view_units='16.0' .* is not a list of int values "
     r"joined by '\|' \(the default: view_units=64\)"),
    ("no_such_model", r"--model='no_such_model': expected one of"),
    ("hmdn_moe:seed=3", r"is not key=value of a model option"),
    ("moe:num_levels=6", r"'moe:num_levels=6': --num_levels does not apply: --model=moe "
     "is not an HMDN model"),
    ("hmdn_moe:hmdn_condition=hierarchical_only:condition=all",
     r"--condition does not apply: .*hierarchical_only"),
    ("hmdn_moe:extraction=explicit:aux_weight=0.3",
     r"--aux_weight does not apply: --extraction=explicit has no implicit view"),
])
def test_bad_variants_are_refused_naming_the_option(text, message):
  with pytest.raises(ValueError, match=message):
    variants.parse_variant(text)


def test_deltas_are_paired_by_seed_and_against_every_variant_of_the_backbone():
  results = {
      "moe": [{"seed": 0, "auc": 0.70}, {"seed": 1, "auc": 0.72}],
      "moe:condition=all": [{"seed": 0, "auc": 0.71}, {"seed": 1, "auc": 0.70}],
      "apg": [{"seed": 0, "auc": 0.5}, {"seed": 1, "auc": 0.5}],
      "hmdn_moe": [{"seed": 1, "auc": 0.73}, {"seed": 0, "auc": 0.72}],
  }
  rows = compare_report.paired_deltas(results, list(results))
  assert [(r["model"], r["baseline"]) for r in rows] == [
      ("hmdn_moe", "moe"), ("hmdn_moe", "moe:condition=all")]
  d = np.array([0.72 - 0.70, 0.73 - 0.72])  # seed 0 with seed 0, seed 1 with seed 1
  assert rows[0]["mean"] == pytest.approx(d.mean())
  assert rows[0]["std"] == pytest.approx(d.std(ddof=1))
  assert rows[0]["wins"] == 2
  assert rows[1]["mean"] == pytest.approx(np.mean([0.72 - 0.71, 0.73 - 0.70]))


def test_leaf_key_is_the_cross_of_distribution_field_values(planted_data_dir):
  from hmdn.features.preprocessed import PreprocessedData
  spec = PreprocessedData(planted_data_dir).spec
  names = [f.name for f in spec.distribution_fields]
  columns = {n: np.array([b"a", b"b"]) for n in names}
  columns[names[-1]] = np.array([b"x", b"y"])
  keys = compare.leaf_key(columns, spec)
  assert keys.tolist() == ["|".join(["a"] * (len(names) - 1) + ["x"]),
                           "|".join(["b"] * (len(names) - 1) + ["y"])]


def test_compare_writes_a_report_with_paired_deltas_deciles_and_plots(
    planted_data_dir, tmp_path):
  from hmdn.pipeline.train import TrainConfig
  report = str(tmp_path / "report")
  base = TrainConfig(data_dir=planted_data_dir, model_dir=report, epochs=1,
                     steps_per_epoch=4, batch_size=256)
  summary = compare.run(base, ["moe", "hmdn_moe:codebook_warmup_steps=1"], [0, 1],
                        report, log=lambda *_: None)
  assert set(summary["results"]) == {"moe", "hmdn_moe:codebook_warmup_steps=1"}
  assert [r["seed"] for r in summary["results"]["moe"]] == [0, 1]
  (delta,) = summary["deltas"]
  got = [h["auc"] - m["auc"] for h, m in zip(
      summary["results"]["hmdn_moe:codebook_warmup_steps=1"], summary["results"]["moe"])]
  assert delta["mean"] == pytest.approx(np.mean(got))
  deciles = summary["results"]["moe"][0]["deciles"]
  assert sum(b["rows"] for b in deciles) == summary["eval_rows"]
  codes = summary["results"]["hmdn_moe:codebook_warmup_steps=1"][0]["codes"]
  assert "explicit/level_1" in codes and "scenario" in codes["explicit/level_1"]["nmi"]
  text = open(os.path.join(report, "report.md")).read()
  assert "Paired ΔAUC" in text and "leaf-size decile" in text and "NMI" in text
  # Without --deterministic the report says its spreads hold the input's noise too.
  assert summary["deterministic"] is False and "Input not deterministic" in text
  # Deciles are named as the heading counts them (1 = rarest), not by 0-based index.
  header = " | ".join(f"d{b['bucket'] + 1} ({b['size_min']}-{b['size_max']})"
                      for b in deciles)
  assert f"| model | {header} |" in text
  for plot in summary["plots"]:
    with open(os.path.join(report, plot), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert "paired_delta.png" in summary["plots"]
  with open(os.path.join(report, "results.json")) as f:
    assert json.load(f)["deltas"][0]["baseline"] == "moe"


def test_report_escapes_list_labels_and_averages_codes_over_seeds():
  label = "hmdn_moe:implicit_fields=a|b"
  runs = [{"seed": seed, "auc": auc, "logloss": 0.3, "gauc": 0.6, "seconds": 1.0,
           "codes": {"implicit/level_1": {"perplexity": perplexity, "dead_share": 0.0,
                                          "nmi": {"latent": nmi}}}}
          for seed, auc, perplexity, nmi in ((0, 0.70, 4.0, 0.2), (1, 0.72, 6.0, 0.4))]
  text = compare_report.markdown({
      "data_dir": "d", "train_rows": 8, "eval_rows": 2, "epochs": 1, "batch_size": 4,
      "learning_rate": 0.1, "seeds": [0, 1], "results": {label: runs}, "deltas": [],
      "depth": []})
  assert "| hmdn_moe:implicit_fields=a\\|b | 0.7100 ± 0.0141 |" in text
  assert "| implicit/level_1 | 5.00 | 0.00 | 0.30 ± 0.14 |" in text
  assert "(mean ± std over 2 seeds)" in text
  assert variants.file_name(label) == "hmdn_moe__implicit_fields=a+b"


def test_model_flags_apply_to_every_variant_under_its_own_overrides(tmp_path):
  # `hmdn compare --codebook_warmup_steps=3 --num_levels=2` must reach every run;
  # a variant's own `num_levels=5` wins over the flag.
  from hmdn.models.registry import ModelConfig
  from hmdn.pipeline.train import TrainConfig
  base = TrainConfig(data_dir="unused", model_dir=str(tmp_path),
                     model=ModelConfig.of(codebook_warmup_steps=3, num_levels=2))
  config = compare.run_config(base, "hmdn_moe:num_levels=5", 7, str(tmp_path))
  assert (config.model.name, config.model.seed, config.seed) == ("hmdn_moe", 7, 7)
  quantizer = config.model.hmdrr.quantizer
  assert quantizer.warmup_steps == 3 and quantizer.num_levels == 5
  plain = compare.run_config(base, "moe", 7, str(tmp_path))
  assert plain.model.name == "moe" and plain.model.hmdrr.quantizer.num_levels == 2
  assert config.model_dir != plain.model_dir


def test_a_model_flag_no_model_of_the_list_uses_is_refused(tmp_path):
  from hmdn.pipeline.train import TrainConfig
  base = TrainConfig(data_dir="unused", model_dir=str(tmp_path))
  compare.refuse_unused_flags(base, ["moe", "hmdn_moe"], ["num_levels", "seed"])
  compare.refuse_unused_flags(base, ["moe", "moe:condition=cross"], ["cross_dim"])
  with pytest.raises(ValueError, match=r"--num_levels does not apply: --model=moe .*"
                     r"nor to any other model of --models"):
    compare.refuse_unused_flags(base, ["moe", "mmoe"], ["num_levels"])


def test_a_variant_that_would_never_quantize_is_refused_before_any_run(
    planted_data_dir, tmp_path):
  from hmdn.pipeline.train import TrainConfig
  report = tmp_path / "report"
  base = TrainConfig(data_dir=planted_data_dir, model_dir=str(report), epochs=1,
                     steps_per_epoch=4, batch_size=256)
  with pytest.raises(ValueError, match="codebook_warmup_steps=100.*only 4 training"):
    compare.run(base, ["moe", "hmdn_moe"], [0], str(report), log=lambda *_: None)
  assert not (report / "runs").exists()  # moe was not trained first


@pytest.mark.parametrize("models, seeds, message", [
    (["moe"], [0, 1, 0], "--seeds=0,1,0: seed 0 is listed twice"),
    (["hmdn_moe:num_levels=2:extraction=explicit",
      "hmdn_moe:extraction=explicit:num_levels=2"], [0],
     "'hmdn_moe:extraction=explicit:num_levels=2' is the same model as"),
    (["moe", "moe"], [0], "'moe' is the same model as 'moe'"),
    # an option at its default
    (["hmdn_moe", "hmdn_moe:num_levels=4"], [0],
     "'hmdn_moe:num_levels=4' is the same model as 'hmdn_moe'"),
])
def test_repeated_seeds_and_models_are_refused_before_any_run(tmp_path, models, seeds,
                                                             message):
  from hmdn.pipeline.train import TrainConfig
  base = TrainConfig(data_dir=str(tmp_path / "none"), model_dir=str(tmp_path))
  with pytest.raises(ValueError, match=re.escape(message)):
    compare.run(base, models, seeds, str(tmp_path / "report"), log=lambda *_: None)
  assert not (tmp_path / "report").exists()


def test_the_depth_line_joins_only_variants_that_differ_in_depth():
  runs = lambda auc: [{"auc": auc}]  # noqa: E731
  results = {"moe": runs(0.6),
             "hmdn_moe:num_levels=2": runs(0.70), "hmdn_moe:num_levels=4": runs(0.72),
             "hmdn_moe:num_levels=3:extraction=explicit": runs(0.65)}
  depth = compare_report.depth_table(results)
  assert [(r["line"], r["num_levels"]) for r in depth] == [("hmdn_moe", 2),
                                                           ("hmdn_moe", 4)]
  # Two depths of the explicit variant: a second line, not a join with the first.
  results["hmdn_moe:extraction=explicit:num_levels=5"] = runs(0.66)
  lines = {r["line"] for r in compare_report.depth_table(results)}
  assert lines == {"hmdn_moe", "hmdn_moe:extraction=explicit"}


def test_a_long_variant_name_wraps_after_its_separators():
  label = "hmdn_moe:num_levels=6:extraction=explicit:implicit_fields=user_id|device"
  lines = compare_report.wrap_label(label, 24).split("\n")
  assert "".join(lines) == label
  assert lines == ["hmdn_moe:num_levels=6:", "extraction=explicit:",
                   "implicit_fields=user_id|", "device"]


@pytest.mark.parametrize("kwargs,message", [
    (dict(models=","), r"--models=',': expected at least one"),
    (dict(models="moe,moe"), r"--models='moe,moe': expected each once"),
    (dict(seeds=()), r"--seeds=\(\): expected at least one"),
    (dict(seeds=(0, -1)), r"--seeds=\(0, -1\): expected a list of integers >= 0"),
    (dict(report_dir=""), r"--report_dir='': expected a non-empty value"),
])
def test_compare_config_is_checked_like_every_config(kwargs, message):
  config = compare.CompareConfig(**dict(dict(report_dir="r"), **kwargs))
  with pytest.raises(ValueError, match=message):
    config.validate()
  assert compare.CompareConfig("r").validate().labels == ["moe", "hmdn_moe"]


def test_short_runs_follow_the_default_codebook_warmup_unless_it_was_set(
    planted_data_dir, tmp_path, monkeypatch):
  """As in `hmdn train`: with the flag unset the runs follow their length (one note);
  a variant's own codebook_warmup_steps stays and is checked against the run."""
  from hmdn.pipeline.train import TrainConfig
  seen = []
  monkeypatch.setattr(compare, "_run_held", lambda base, *a, **k: seen.append(base) or {})
  base = TrainConfig(data_dir=planted_data_dir, model_dir=str(tmp_path), epochs=1,
                     batch_size=512)
  lines = []
  compare.run(base, ["moe", "hmdn_moe"], [0], str(tmp_path / "r1"), log=lines.append,
              follow_codebook_warmup_steps=True)
  steps = compare.run_length.steps_per_epoch(base, compare.PreprocessedData(
      planted_data_dir).rows(compare.TRAIN))
  assert seen[-1].model.hmdrr.quantizer.warmup_steps == max(1, steps // 3) < 100
  assert len(lines) == 1 and "follows the run's length" in lines[0]
  with pytest.raises(ValueError, match="--codebook_warmup_steps=100: the run has only"):
    compare.run(base, ["moe", "hmdn_moe"], [0], str(tmp_path / "r2"), log=lines.append)
  with pytest.raises(ValueError, match="--codebook_warmup_steps=500"):
    compare.run(base, ["hmdn_moe:codebook_warmup_steps=500"], [0], str(tmp_path / "r3"),
                log=lines.append, follow_codebook_warmup_steps=True)
