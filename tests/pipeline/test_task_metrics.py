"""Metrics per task (click; purchase observed after a click): the evaluation's CTCVR and
CVR figures, the history and epoch line, --select_by, the train summary, the compare
report. One-task outputs are the other test files'."""
import contextlib
import glob
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import EVAL, PreprocessedData
from hmdn.models.registry import ModelConfig
from hmdn.models.tasks import tasks_of
from hmdn.pipeline import callbacks, compare, compare_report, data, evaluate, train
from hmdn.pipeline.train_config import TrainConfig

SMALL_HMDN = dict(output_dim=8, distribution_dim=8, view_units=(16,), num_levels=2,
                  codebook_size=4, codebook_warmup_steps=0)


def _pairwise_auc(labels, scores):
  """AUC straight from its definition: P(score of a positive > a negative's), ties 1/2."""
  labels, scores = np.asarray(labels).ravel() == 1, np.asarray(scores, float).ravel()
  pos, neg = scores[labels][:, None], scores[~labels][None, :]
  return float(((pos > neg) + 0.5 * (pos == neg)).mean())


@pytest.fixture(scope="module")
def trained(two_task_data_dir, tmp_path_factory):
  """A two-task moe run of 2 epochs whose best epoch is picked by the CVR AUC."""
  model_dir = str(tmp_path_factory.mktemp("tasks") / "run")
  config = TrainConfig(data_dir=two_task_data_dir, model_dir=model_dir, epochs=2,
                       steps_per_epoch=8, batch_size=256, learning_rate=0.01,
                       select_by="purchase_cvr",
                       model=ModelConfig.of(name="moe", output_dim=8))
  console = io.StringIO()
  with contextlib.redirect_stdout(console):
    model = train.train(config)
  return model, model_dir, console.getvalue()


def _model_outputs(model, data_dir):
  """Labels and every output of the model over the eval split, by direct calls."""
  spec = PreprocessedData(data_dir).spec
  out = {}
  for features, labels in data.make_dataset(data_dir, EVAL, spec, 512, training=False):
    got = model(features, training=False)
    for k in ("probability_click", "probability_purchase",
              "probability_purchase_given_click"):
      out.setdefault(k, []).append(got[k].numpy().ravel())
    for k in ("click", "purchase"):
      out.setdefault(k, []).append(labels[k].numpy().ravel())
  return {k: np.concatenate(v) for k, v in out.items()}


def test_per_task_metrics_equal_a_recomputation_from_the_model_outputs(
    trained, two_task_data_dir):
  model, _, _ = trained
  spec = PreprocessedData(two_task_data_dir).spec
  result = evaluate.run(evaluate.model_predictor(model, spec), two_task_data_dir)
  o = _model_outputs(model, two_task_data_dir)
  tasks = result["tasks"]
  assert list(tasks) == ["click", "purchase"]
  for name in ("click", "purchase"):
    assert tasks[name]["auc"] == pytest.approx(
        _pairwise_auc(o[name], o[f"probability_{name}"]), abs=1e-6)
    p = np.clip(o[f"probability_{name}"], 1e-7, 1 - 1e-7)
    assert tasks[name]["logloss"] == pytest.approx(
        -np.mean(o[name] * np.log(p) + (1 - o[name]) * np.log(1 - p)), rel=1e-5)
    assert tasks[name]["rows_eval"] == len(o[name])
  # The first task's figures stay at the top level, as in a one-task run.
  assert result["auc"] == tasks["click"]["auc"]
  assert result["logloss"] == tasks["click"]["logloss"]
  # CVR: p(purchase | click) over the clicked rows only.
  clicked = o["click"] == 1
  cvr = tasks["purchase"]["cvr"]
  assert cvr["rows_eval"] == clicked.sum() and cvr["given"] == "click"
  assert cvr["ctr_eval"] == pytest.approx(o["purchase"][clicked].mean())
  expected = _pairwise_auc(o["purchase"][clicked],
                           o["probability_purchase_given_click"][clicked])
  assert cvr["auc"] == pytest.approx(expected, abs=1e-6)
  over_all_rows = _pairwise_auc(o["purchase"], o["probability_purchase_given_click"])
  assert abs(over_all_rows - cvr["auc"]) > 1e-3
  # Per distribution value, over the task's own rows.
  rows = sum(m["rows"] for m in cvr["per_distribution"]["scenario"].values())
  assert rows == clicked.sum()
  assert "gauc" in tasks["purchase"] and "gauc" in cvr
  lines = evaluate.task_lines(result)
  assert [line.split()[1] for line in lines] == ["click", "purchase", "purchase_cvr"]
  assert f"AUC {cvr['auc']:.4f}" in lines[2] and "(click = 1)" in lines[2]
  assert evaluate.format_table(result).endswith("\n".join(lines))


def test_oracle_per_task_is_conditional_and_its_product_over_every_row():
  spec = spec_lib.spec_from_dict({"name": "o", "features": [
      {"name": "click", "kind": "numeric", "role": "label"},
      {"name": "purchase", "kind": "numeric", "role": "label", "after": "click"},
      {"name": "scenario", "kind": "categorical", "distribution_level": 0},
      {"name": "p_click", "kind": "numeric", "role": "oracle"},
      {"name": "p_buy", "kind": "numeric", "role": "oracle", "task": "purchase"}]})
  rng = np.random.default_rng(0)
  n = 400
  p_click, p_buy = rng.random(n), rng.random(n)
  click = (rng.random(n) < p_click).astype(float)
  purchase = click * (rng.random(n) < p_buy)
  columns = {"click": click, "purchase": purchase, "p_click": p_click, "p_buy": p_buy,
             "scenario": rng.choice([b"a", b"b"], n), "probability": rng.random(n),
             "probability_purchase": rng.random(n),
             "probability_purchase_given_click": rng.random(n)}
  columns["probability_click"] = columns["probability"]
  result = evaluate.compute_metrics(columns, spec)
  assert result["oracle_auc"] == pytest.approx(_pairwise_auc(click, p_click))
  purchase_task = result["tasks"]["purchase"]
  assert purchase_task["oracle_auc"] == pytest.approx(
      _pairwise_auc(purchase, p_click * p_buy))
  clicked = click == 1
  assert purchase_task["cvr"]["oracle_auc"] == pytest.approx(
      _pairwise_auc(purchase[clicked], p_buy[clicked]))


def test_hmdn_codes_are_broken_down_per_task(two_task_data_dir):
  model = train.build_model(two_task_data_dir, ModelConfig.of(name="hmdn_moe",
                                                              **SMALL_HMDN))
  spec = PreprocessedData(two_task_data_dir).spec
  columns = evaluate.collect(evaluate.model_predictor(model, spec), two_task_data_dir,
                             spec)
  assert columns["codes_click"].shape == columns["codes_purchase"].shape
  np.testing.assert_array_equal(columns["codes_click"], columns["codes"])
  # A predictor may give every task's codes as one [batch, tasks, codes] output instead.
  predict = evaluate.model_predictor(model, spec)

  def stacked_outputs(serialized):
    out = dict(predict(serialized))
    stacked = tf.stack([out.pop("codes_click"), out.pop("codes_purchase")], axis=1)
    return dict(out, codes_by_task=stacked)
  split = evaluate.collect(stacked_outputs, two_task_data_dir, spec)
  np.testing.assert_array_equal(split["codes_purchase"], columns["codes_purchase"])
  result = evaluate.compute_metrics(columns, spec, 4, model.config.code_views)
  per_code = result["tasks"]["purchase"]["per_code"]
  level = f"{model.config.code_views[0]}/level_1"
  assert sum(m["rows"] for m in per_code[level].values()) == len(columns["click"])
  cvr_rows = sum(m["rows"] for m in result["tasks"]["purchase"]["cvr"]["per_code"][
      level].values())
  assert cvr_rows == int(columns["click"].sum())


def test_history_epoch_line_tensorboard_and_summary_hold_every_task(trained):
  _, model_dir, console = trained
  with open(os.path.join(model_dir, "history.json")) as f:
    history = json.load(f)
  assert [h["epoch"] for h in history] == [1, 2]
  epoch_lines = [line for line in console.splitlines() if line.startswith("epoch ")]
  assert len(epoch_lines) == 2
  for h, line in zip(history, epoch_lines):
    tasks = h["tasks"]
    assert set(tasks) == {"click", "purchase"} and "cvr" in tasks["purchase"]
    assert tasks["click"]["auc"] == h["auc"]
    assert 0 < tasks["purchase"]["cvr"]["auc"] < 1
    assert "s0" in tasks["purchase"]["cvr"]["per_distribution"]["scenario"]
    assert {"loss_click", "loss_purchase"} <= set(h)
    assert (f"eval AUC click {h['auc']:.4f} purchase {tasks['purchase']['auc']:.4f} "
            f"purchase_cvr {tasks['purchase']['cvr']['auc']:.4f}") in line
  tags = {}
  for path in glob.glob(os.path.join(model_dir, "logs", "eval", "events.*")):
    for record in tf.data.TFRecordDataset(path):
      for value in tf.compat.v1.Event.FromString(record.numpy()).summary.value:
        tags.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
  np.testing.assert_allclose(tags["eval_purchase_cvr/auc"],
                             [h["tasks"]["purchase"]["cvr"]["auc"] for h in history],
                             rtol=1e-6)
  assert "eval_purchase_scenario/s1/auc" in tags and "eval/auc" in tags
  with open(os.path.join(model_dir, "run_config.json")) as f:
    assert json.load(f)["config"]["select_by"] == "purchase_cvr"
  with open(os.path.join(model_dir, "train_summary.json")) as f:
    summary = json.load(f)
  cvr = [h["tasks"]["purchase"]["cvr"]["auc"] for h in history]
  assert summary["select_by"] == "purchase_cvr"
  assert summary["eval_auc_per_epoch_by_task"]["purchase_cvr"] == cvr
  assert summary["best_epoch"] == 1 + int(np.argmax(cvr))
  assert summary["select_by_per_epoch"] == cvr  # beside eval_auc_per_epoch (clicks)
  assert set(summary["final"]["tasks"]) == {"click", "purchase", "purchase_cvr"}


class _Evaluation(callbacks.DistributionEvaluation):
  """DistributionEvaluation's ranking over given per-task AUCs instead of a pass."""

  def __init__(self, entries, select_by):
    tf.keras.callbacks.Callback.__init__(self)
    self.history, self._entries, self._on_history = [], entries, None
    self.recovered, self._resumed, self.select_by = None, False, select_by

  def on_epoch_end(self, epoch, logs=None):
    self.history.append(dict(self._entries[epoch], epoch=epoch + 1))


def _entry(click, purchase, cvr):
  return {"auc": click, "tasks": {"click": {"auc": click},
                                  "purchase": {"auc": purchase, "cvr": {"auc": cvr}}}}


# Tasks that disagree: click improves every epoch, purchase peaks at epoch 2, the CVR
# at epoch 1; their mean peaks at epoch 2.
ENTRIES = [_entry(0.60, 0.70, 0.90), _entry(0.70, 0.80, 0.60), _entry(0.75, 0.50, 0.55)]


@pytest.mark.parametrize("select_by,saved", [
    ("first", [1, 2, 3]), ("click", [1, 2, 3]), ("purchase", [1, 2]),
    ("purchase_cvr", [1]), ("mean", [1, 2])])
def test_select_by_picks_the_best_checkpoint_by_that_task(select_by, saved, tmp_path,
                                                          monkeypatch):
  model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,))])
  model.compile(optimizer="sgd", loss="mse")
  epochs = []
  monkeypatch.setattr(callbacks, "save_weights",
                      lambda *_: epochs.append(len(evaluation.history)))
  evaluation = _Evaluation(ENTRIES, select_by)
  model.fit(np.ones((4, 2)), np.zeros((4, 1)), epochs=3, verbose=0, callbacks=[
      evaluation, callbacks.BestCheckpoint(str(tmp_path / "best"), evaluation)])
  assert epochs == saved


@pytest.mark.parametrize("select_by,epochs_run", [("click", 3), ("purchase_cvr", 2)])
def test_early_stopping_follows_select_by(select_by, epochs_run):
  model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,))])
  model.compile(optimizer="sgd", loss="mse")
  evaluation = _Evaluation(ENTRIES, select_by)
  model.fit(np.ones((4, 2)), np.zeros((4, 1)), epochs=3, verbose=0, callbacks=[
      evaluation, callbacks.EarlyStopping(evaluation, patience=1)])
  assert len(evaluation.history) == epochs_run


def test_select_by_choices_follow_the_spec_tasks(two_task_data_dir, planted_data_dir):
  two = tasks_of(PreprocessedData(two_task_data_dir).spec)
  assert callbacks.select_by_choices(two) == ["first", "mean", "click", "purchase",
                                              "purchase_cvr"]
  assert callbacks.select_by_choices(tasks_of(PreprocessedData(
      planted_data_dir).spec)) == ["first"]


@pytest.mark.parametrize("which,select_by,message", [
    ("two", "purchas", "--select_by=purchas: not one of first, mean, click, purchase, "
     "purchase_cvr (the spec's tasks: click, purchase)"),
    ("two", "click_cvr", "--select_by=click_cvr: not one of"),
    ("one", "click", "--select_by=click: the spec has one task (click)"),
    ("one", "mean", "only --select_by=first applies"),
])
def test_a_bad_select_by_is_refused_in_one_line_before_anything_is_written(
    which, select_by, message, two_task_data_dir, planted_data_dir, tmp_path):
  data_dir = two_task_data_dir if which == "two" else planted_data_dir
  model_dir = tmp_path / "run"
  with pytest.raises(ValueError) as e:
    train.train(TrainConfig(data_dir=data_dir, model_dir=str(model_dir),
                            select_by=select_by))
  assert message in str(e.value) and "\n" not in str(e.value)
  assert not model_dir.exists()


def test_compare_reports_every_task(two_task_data_dir, tmp_path):
  report = str(tmp_path / "report")
  base = TrainConfig(data_dir=two_task_data_dir, model_dir=report, epochs=1,
                     steps_per_epoch=3, batch_size=256,
                     model=ModelConfig.of(output_dim=8))
  logged = []
  summary = compare.run(base, ["moe"], [0], report, log=logged.append)
  (run,) = summary["results"]["moe"]
  assert set(run["tasks"]) == {"click", "purchase", "purchase_cvr"}
  assert run["tasks"]["click"]["auc"] == run["auc"]
  # The CVR's deciles hold the clicked eval rows only; the others every eval row.
  clicks = sum(b["rows"] for b in run["tasks"]["purchase_cvr"]["deciles"])
  assert clicks == pytest.approx(sum(b["rows"] * b["ctr"] for b in run["deciles"]))
  assert summary["eval_rows"] == sum(b["rows"] for b in run["tasks"]["purchase"]["deciles"])
  tasks = run["tasks"]
  assert (f"moe{' ' * 26}AUC click {run['auc']:.4f} purchase {tasks['purchase']['auc']:.4f} "
          f"purchase_cvr {tasks['purchase_cvr']['auc']:.4f} (") in logged[-1]
  text = open(os.path.join(report, "report.md")).read()
  assert ("| model | AUC click | logloss | GAUC | AUC purchase | AUC purchase_cvr "
          "| s/run |") in text
  assert f"| {run['tasks']['purchase_cvr']['auc']:.4f} ± 0.0000 |" in text
  assert "## AUC per leaf-size decile of purchase_cvr" in text
  assert "decile of click" not in text  # the first task's are the report's own
  assert "auc_by_leaf_decile_purchase_cvr.png" in summary["plots"]
  assert "auc_by_leaf_decile_click.png" not in summary["plots"]


def test_paired_deltas_per_task():
  def runs(aucs):
    return [{"seed": s, "auc": a[0], "logloss": 0.5, "seconds": 1.0,
             "tasks": {"click": {"auc": a[0]}, "purchase": {"auc": a[1]}}}
            for s, a in enumerate(aucs)]
  results = {"moe": runs([(0.70, 0.60), (0.71, 0.62)]),
             "hmdn_moe": runs([(0.72, 0.59), (0.73, 0.60)])}
  (first,) = compare_report.paired_deltas(results, list(results))
  (purchase,) = compare_report.paired_deltas(results, list(results), "purchase")
  assert first["mean"] == pytest.approx(0.02) and purchase["mean"] == pytest.approx(-0.015)
  summary = {"data_dir": "d", "train_rows": 8, "eval_rows": 2, "epochs": 1,
             "batch_size": 4, "learning_rate": 0.1, "seeds": [0, 1], "results": results,
             "deltas": [first], "deltas_by_task": {"click": [first],
                                                   "purchase": [purchase]},
             "depth": []}
  text = compare_report.markdown(summary)
  assert "## Paired ΔAUC of each HMDN variant vs its backbone (purchase)" in text
  assert "| hmdn_moe | moe | -0.0150 ± 0.0071 | 0/2 | no |" in text
  assert "vs its backbone (click)" not in text
