"""CTRModel with several tasks (click; purchase observed after a click): a head per
task on every backbone, ESMM's entire-space product, the three CVR losses, the task as
a level of HMDN's hierarchy, batch independence, and the same step on two replicas."""
import numpy as np
import pytest
import tensorflow as tf

from hmdn.features.preprocessed import PreprocessedData
from hmdn.models import registry
from hmdn.models.backbones import BACKBONES
from hmdn.models.registry import ModelConfig
from hmdn.pipeline import data, train

SMALL = dict(output_dim=8, distribution_dim=8, view_units=(16,), num_levels=2,
             codebook_size=4, codebook_warmup_steps=0)


def _config(name, **options):
  return ModelConfig.of(name=name, **(SMALL if name.startswith("hmdn_") else
                                      dict(output_dim=8)), **options)


@pytest.fixture(scope="module")
def batches(two_task_data_dir):
  spec = PreprocessedData(two_task_data_dir).spec
  ds = data.make_dataset(two_task_data_dir, "train", spec, 128, training=True, seed=0)
  return list(ds.take(6))


def _dataset(batches):
  return tf.data.Dataset.from_generator(
      lambda: iter(batches),
      output_signature=tf.data.Dataset.from_tensors(batches[0]).element_spec)


def test_labels_are_one_per_task(batches):
  _, labels = batches[0]
  assert sorted(labels) == ["click", "purchase"]
  click, purchase = labels["click"].numpy(), labels["purchase"].numpy()
  assert (purchase <= click).all() and purchase.sum() > 0


@pytest.mark.parametrize("name", registry.model_names())
def test_every_model_predicts_each_task_and_the_entire_space_product(
    name, two_task_data_dir, batches):
  model = train.build_model(two_task_data_dir, _config(name))
  features, _ = batches[0]
  out = model(features)
  click = out["probability_click"].numpy()[:, 0]
  ctcvr = out["probability_purchase"].numpy()[:, 0]
  cvr = out["probability_purchase_given_click"].numpy()[:, 0]
  np.testing.assert_allclose(ctcvr, click * cvr, rtol=1e-5)
  np.testing.assert_allclose(out["probability"].numpy()[:, 0], click)
  assert ((ctcvr > 0) & (ctcvr < click)).all()
  np.testing.assert_allclose(tf.sigmoid(out["logits_purchase"]).numpy()[:, 0], ctcvr,
                             rtol=1e-4)
  # Batch independence: the first three rows alone score as in the batch.
  alone = model({k: v[:3] for k, v in features.items()})
  for key in ("probability_click", "probability_purchase",
              "probability_purchase_given_click"):
    np.testing.assert_allclose(alone[key].numpy(), out[key].numpy()[:3], rtol=1e-5,
                               atol=1e-6)
  if name.startswith("hmdn_"):
    assert out["codes_by_task"].shape[:2] == (features["scenario"].shape[0], 2)
    np.testing.assert_array_equal(out["codes_by_task"].numpy()[:, 0], out["codes"].numpy())
    np.testing.assert_array_equal(alone["codes_by_task"].numpy(),
                                  out["codes_by_task"].numpy()[:3])


@pytest.mark.parametrize("name", ["mmoe", "ple"])
def test_multi_task_backbones_run_a_gate_and_tower_per_task_and_domain(
    name, two_task_data_dir):
  model = train.build_model(two_task_data_dir, _config(name))
  assert model.backbone.num_domains == 2 * model.num_domains


@pytest.mark.parametrize("name,own_branch,options", [
    ("mmoe", False, {}), ("ple", False, {}), ("hmdn_mmoe", False, {}),
    ("mmoe", True, {}), ("ple", True, {"backbone_kwargs": {"num_levels": 1}})])
def test_shared_experts_run_once_for_every_task_with_the_same_result(
    name, own_branch, options, two_task_data_dir, batches, monkeypatch):
  """The experts that read the features alone run on one copy of the batch, not once
  per task: the outputs and the gradients are those of running them on every copy
  (on the path computing every branch, and on the own-branch path)."""
  if own_branch:
    monkeypatch.setattr(BACKBONES[name], "own_branch_from_domains", 1)
  model = train.build_model(two_task_data_dir, _config(name, **options))
  assert model.backbone.feature_copies == 2
  features, labels = batches[0]

  def outputs_and_gradients():
    with tf.GradientTape() as tape:
      out = model(features, training=False)
      loss = tf.reduce_sum(out["logits_click"]) + tf.reduce_sum(out["logits_purchase"])
    grads = tape.gradient(loss, model.backbone.trainable_variables)
    return out, [tf.convert_to_tensor(g).numpy() for g in grads]

  once, grads_once = outputs_and_gradients()
  model.backbone.feature_copies = 1  # every copy of the batch through the experts
  every, grads_every = outputs_and_gradients()
  for key in ("probability_click", "probability_purchase"):
    np.testing.assert_allclose(once[key].numpy(), every[key].numpy(), rtol=1e-5,
                               atol=1e-7)
  for a, b in zip(grads_once, grads_every):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_esmm_has_one_network_per_task(two_task_data_dir):
  model = train.build_model(two_task_data_dir, _config("esmm"))
  assert model.backbone.num_domains == 2


def test_hmdn_explicit_view_reads_the_task(two_task_data_dir, batches):
  """Each task has its own s_D: the explicit view's input differs only by the task
  embedding, so the two tasks' rows of one example differ there."""
  model = train.build_model(two_task_data_dir, _config("hmdn_moe"))
  features, _ = batches[0]
  inputs = model._view_inputs(model.embeddings(features))
  b = features["scenario"].shape[0]
  explicit = inputs["explicit"].numpy()
  width = explicit.shape[1] - model.config.task_dim
  np.testing.assert_array_equal(explicit[:b, :width], explicit[b:, :width])
  assert not np.allclose(explicit[:b, width:], explicit[b:, width:])
  np.testing.assert_array_equal(inputs["implicit"].numpy()[:b],
                                inputs["implicit"].numpy()[b:])


def _bce(y, p):
  p = np.clip(p, 1e-7, 1 - 1e-7)
  return -(y * np.log(p) + (1 - y) * np.log(1 - p))


@pytest.mark.parametrize("cvr_loss", ["entire", "masked", "both"])
def test_cvr_loss_is_the_stated_bce(cvr_loss, two_task_data_dir, batches):
  model = train.build_model(two_task_data_dir, _config("dnn", cvr_loss=cvr_loss))
  features, labels = batches[0]
  bce, _, _, per_task = model._loss_terms((features, labels), training=False)
  out = model(features)
  y_click = labels["click"].numpy().astype(np.float64)
  y_buy = labels["purchase"].numpy().astype(np.float64)
  n = len(y_click)
  click = _bce(y_click, out["probability_click"].numpy()[:, 0]).sum() / n
  entire = _bce(y_buy, out["probability_purchase"].numpy()[:, 0]).sum() / n
  masked = (y_click * _bce(y_buy, out["probability_purchase_given_click"].numpy()[:, 0])
            ).sum() / y_click.sum()
  expected = {"entire": entire, "masked": masked, "both": entire + masked}[cvr_loss]
  np.testing.assert_allclose(per_task["click"].numpy(), click, rtol=1e-4)
  np.testing.assert_allclose(per_task["purchase"].numpy(), expected, rtol=1e-4)
  np.testing.assert_allclose(bce.numpy(), click + expected, rtol=1e-4)


def test_training_reports_each_task_and_lowers_the_loss(two_task_data_dir, batches):
  tf.keras.utils.set_random_seed(0)
  model = train.build_model(two_task_data_dir, _config("hmdn_mmoe"))
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
  history = model.fit(_dataset(batches), epochs=4, verbose=0).history
  for key in ("auc", "auc_purchase", "auc_purchase_given_click", "loss_click",
              "loss_purchase", "loss"):
    assert key in history and np.isfinite(history[key]).all(), key
  np.testing.assert_allclose(np.array(history["loss"]),
                             np.array(history["loss_click"]) +
                             np.array(history["loss_purchase"]), rtol=1e-4)
  assert history["loss"][-1] < history["loss"][0]
  assert history["auc"][-1] > 0.6


def test_weights_restore_to_the_same_predictions(two_task_data_dir, batches, tmp_path):
  features, _ = batches[0]
  model = train.build_model(two_task_data_dir, _config("hmdn_ple"))
  before = model(features)
  path = str(tmp_path / "ckpt")
  tf.train.Checkpoint(model=model).write(path)
  again = train.build_model(two_task_data_dir, _config("hmdn_ple"))
  tf.train.Checkpoint(model=again).read(path).assert_existing_objects_matched()
  after = again(features)
  for key in ("probability_click", "probability_purchase", "codes_by_task"):
    np.testing.assert_allclose(after[key].numpy(), before[key].numpy(), rtol=1e-6)


@pytest.mark.parametrize("name,options", [("mmoe", {"cvr_loss": "masked"}),
                                          ("hmdn_moe", {"quantize": False})])
def test_one_step_on_two_replicas_equals_one_replica(name, options, two_task_data_dir,
                                                     batches, mirrored_strategy):
  """Same weights, same global batch: the per-task losses (the masked one divided by
  the global count of clicks) are the same on one and on two replicas, and so is the
  SGD step. HMDN runs without its quantizer here (the task folding and the task
  embedding are what is tested): its first step seeds the codebooks at random from the
  rows each replica holds, which differs between one and two replicas."""
  features, labels = batches[0]
  config = _config(name, **options)
  single = train.build_model(two_task_data_dir, config)
  start = single.get_weights()
  with mirrored_strategy.scope():
    mirrored = train.build_model(two_task_data_dir, config)
    mirrored.compile(optimizer=tf.keras.optimizers.SGD(0.5))
  mirrored.set_weights(start)
  single.compile(optimizer=tf.keras.optimizers.SGD(0.5))
  one_batch = tf.data.Dataset.from_tensors((features, labels))
  h_single = single.fit(one_batch, epochs=1, verbose=0).history
  h_mirrored = mirrored.fit(one_batch, epochs=1, verbose=0).history
  for key in ("loss", "loss_purchase", "auc_purchase_given_click"):
    np.testing.assert_allclose(h_mirrored[key][0], h_single[key][0], rtol=1e-4)
  for a, b in zip(single.get_weights(), mirrored.get_weights()):
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)


def test_hmdn_without_quantization_trains_with_no_codes(two_task_data_dir, batches):
  """hmdn_<backbone>:quantize=false, the ablation hmdn compare runs: a continuous s_D
  per task; the quantizer's options do not apply to it."""
  from hmdn.features import options
  config = _config("hmdn_moe", quantize=False)
  assert config.code_views == [] and config.codebook_size is None
  with pytest.raises(ValueError, match="--num_levels does not apply: --quantize=false"):
    options.refuse_inapplicable(config, ["num_levels"])
  model = train.build_model(two_task_data_dir, config)
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
  history = model.fit(_dataset(batches[:3]), epochs=1, verbose=0).history
  assert np.isfinite(history["loss"][-1])
  out = model(batches[0][0])
  assert not any(k.startswith("codes") for k in out)
