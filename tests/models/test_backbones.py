"""Behavioural tests run on every backbone in `models.backbones.BACKBONES`."""
import json

import numpy as np
import pytest
import tensorflow as tf

from hmdn.models.backbones import BACKBONES
from hmdn.models.backbones import uses_condition
from hmdn.models.backbones import uses_domain
from hmdn.models.backbones.apg import APG
from hmdn.models.backbones.apg import OverparamFactors

F, C, D, OUT = 6, 4, 3, 4

# Tiny sizes so the whole file runs in well under two minutes on 2 CPU cores.
TINY = {
    "dnn": dict(units=[16]),
    "moe": dict(num_experts=3, expert_units=[16]),
    "mmoe": dict(num_experts=3, expert_units=[16]),
    "ple": dict(num_levels=2, num_shared_experts=2, num_specific_experts=1,
                expert_units=[16]),
    "hinet": dict(num_shared_experts=2, num_specific_experts=1,
                  expert_units=[16], tower_units=[16]),
    "star": dict(units=[16], aux_units=[8]),
    "apg": dict(units=[16], rank=4, overparam_dim=8, generator_units=[8]),
    "epnet": dict(units=[16], gate_units=[8]),
    "esmm": dict(units=[16]),
}
NAMES = sorted(BACKBONES)


def make(name, **overrides):
  return BACKBONES[name](num_domains=D, output_dim=OUT,
                         **{**TINY[name], **overrides})


def random_inputs(batch, seed=0):
  rng = np.random.default_rng(seed)
  return {
      "features": rng.normal(size=(batch, F)).astype(np.float32),
      "condition": rng.normal(size=(batch, C)).astype(np.float32),
      "domain": rng.integers(0, D, size=batch).astype(np.int32),
  }


def take(inputs, index):
  return {k: v[index] for k, v in inputs.items()}


def keras_inputs():
  return {
      "features": tf.keras.Input((F,), name="features"),
      "condition": tf.keras.Input((C,), name="condition"),
      "domain": tf.keras.Input((), dtype=tf.int32, name="domain"),
  }


def build_model(name, **overrides):
  """Functional model: backbone + shared Dense(1) sigmoid head, dict inputs."""
  inputs = keras_inputs()
  hidden = make(name, **overrides)(inputs)
  prob = tf.keras.layers.Dense(1, activation="sigmoid", name="head")(hidden)
  return tf.keras.Model(inputs, prob)


def toy_task(n, seed):
  """Label is the sign of x1 + s_d * x0, where s_d flips with the domain.

  The condition is the domain's embedding (plus noise), as for the
  single-distribution baselines, so only the domain/condition tells the sign.
  """
  table = np.random.default_rng(123).normal(size=(D, C)).astype(np.float32)
  x = random_inputs(n, seed)
  x["condition"] = (table[x["domain"]] + 0.05 * x["condition"]).astype(
      np.float32)
  sign = np.array([1.0, -1.0, 1.0], np.float32)[x["domain"]]
  f = x["features"]
  y = (f[:, 1] + sign * f[:, 0] > 0).astype(np.float32)[:, None]
  return x, y


def bce(model, x, y):
  p = model(x, training=False).numpy()
  return float(tf.keras.losses.binary_crossentropy(y, p).numpy().mean())


def test_registry_and_condition_flags():
  assert set(BACKBONES) == {"dnn", "moe", "mmoe", "ple", "hinet", "star",
                            "apg", "epnet", "esmm"}
  assert set(TINY) == set(BACKBONES)
  assert not uses_condition("dnn") and not uses_domain("dnn")
  for name in NAMES:
    assert issubclass(BACKBONES[name], tf.keras.layers.Layer)
    if name not in ("dnn", "esmm"):
      assert uses_condition(name)
  assert not uses_condition("esmm")  # its branches are tasks
  assert {n for n in NAMES if uses_domain(n)} == {"mmoe", "ple", "hinet",
                                                  "star", "esmm"}
  with pytest.raises(ValueError, match="nope"):
    uses_condition("nope")


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_eager_and_tf_function(name):
  layer = make(name)
  for batch in (1, 3, 8):
    out = layer(random_inputs(batch, batch))
    assert out.shape == (batch, OUT) and out.dtype == tf.float32

  spec = {"features": tf.TensorSpec([None, F], tf.float32),
          "condition": tf.TensorSpec([None, C], tf.float32),
          "domain": tf.TensorSpec([None], tf.int32)}
  fn = tf.function(lambda x: layer(x, training=False), input_signature=[spec])
  for batch in (2, 5):
    x = random_inputs(batch, 10 + batch)
    out = fn(x)
    assert out.shape == (batch, OUT)
    np.testing.assert_allclose(out.numpy(), layer(x).numpy(), atol=1e-6)
  assert np.all(np.isfinite(out.numpy()))


@pytest.mark.parametrize("name", NAMES)
def test_batch_independence(name):
  layer = make(name)
  x = random_inputs(7, seed=1)
  batch_out = layer(x, training=False).numpy()
  others = random_inputs(7, seed=2)
  for i in range(7):
    alone = layer(take(x, slice(i, i + 1)), training=False).numpy()
    np.testing.assert_allclose(alone[0], batch_out[i], atol=1e-5)
    # Same example placed among different neighbours, at a different index.
    mixed = {k: np.concatenate([others[k][:3], x[k][i:i + 1], others[k][3:]])
             for k in x}
    np.testing.assert_allclose(layer(mixed).numpy()[3], batch_out[i],
                               atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
  layer = make(name)
  x = random_inputs(5, seed=3)
  expected = layer(x).numpy()
  config = layer.get_config()
  json.dumps(config)  # plain values only
  clone = type(layer).from_config(config)
  assert clone.get_config() == config
  clone(x)
  assert len(clone.get_weights()) == len(layer.get_weights())
  clone.set_weights(layer.get_weights())
  np.testing.assert_allclose(clone(x).numpy(), expected, atol=1e-6)


def train_on_toy_task(name):
  """Returns (initial, final) eval loss around ~100 Adam steps on `toy_task`."""
  tf.keras.utils.set_random_seed(0)
  x, y = toy_task(3200, seed=4)
  x_eval, y_eval = toy_task(512, seed=5)
  model = build_model(name)
  model.compile(tf.keras.optimizers.Adam(0.02), "binary_crossentropy")
  initial = bce(model, x_eval, y_eval)
  model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # 100 steps
  return initial, bce(model, x_eval, y_eval)


@pytest.fixture(scope="module")
def dnn_toy_loss():
  return train_on_toy_task("dnn")[1]


@pytest.mark.parametrize("name", NAMES)
def test_learns_domain_dependent_task(name, dnn_toy_loss):
  initial, final = train_on_toy_task(name)
  assert final < 0.8 * initial, (initial, final)
  if uses_condition(name):
    # The DNN cannot see the domain, so wherever |x1| < |x0| the label is a
    # coin flip for it; a backbone that uses z/domain must do clearly better.
    assert final < 0.85 * dnn_toy_loss, (final, dnn_toy_loss)


@pytest.fixture(scope="module")
def strategy(mirrored_strategy):
  return mirrored_strategy  # shared by the session (tests/conftest.py)


@pytest.mark.parametrize("name", NAMES)
def test_fits_under_mirrored_strategy(name, strategy):
  assert strategy.num_replicas_in_sync == 2
  x, y = toy_task(32, seed=6)
  with strategy.scope():
    model = build_model(name)
    model.compile(tf.keras.optimizers.Adam(0.01), "binary_crossentropy")
  before = [w.copy() for w in model.get_weights()]
  history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
  assert len(history.history["loss"]) == 1
  assert np.isfinite(history.history["loss"][0])
  assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))


def randomized(name, output_dim=16, seed=9):
  """A built backbone with random (non-initial) weights and a wide output.

  At initialisation STAR's domain factors are the identity, so the domain
  could not matter yet; and a wide output keeps a ReLU from zeroing a whole
  row, which would hide a change.
  """
  tf.keras.utils.set_random_seed(seed)
  layer = BACKBONES[name](num_domains=D, output_dim=output_dim, **TINY[name])
  layer(random_inputs(2))
  rng = np.random.default_rng(seed)
  layer.set_weights([rng.normal(scale=0.5, size=w.shape)
                     for w in layer.get_weights()])
  return layer


def row_changes(layer, x, key, new_values):
  """Changes `x[key]` in one row at a time; returns per-row max |delta|.

  Result [i, j]: how much output row j moved when only row i's `key` changed.
  """
  base_out = layer(x, training=False).numpy()
  n = len(base_out)
  deltas = np.zeros((n, n))
  for i in range(n):
    changed = dict(x)
    changed[key] = x[key].copy()
    changed[key][i] = new_values[i]
    out = layer(changed, training=False).numpy()
    deltas[i] = np.abs(out - base_out).max(axis=1)
  return deltas


@pytest.mark.parametrize("name", NAMES)
def test_each_example_reads_its_own_condition(name):
  """Changing only one example's condition changes that example's output.

  Catches a backbone whose condition is ignored or replaced by a constant
  (its output would not move) or by a batch statistic (its neighbours' would).
  """
  layer = randomized(name)
  x = random_inputs(6, seed=7)
  deltas = row_changes(layer, x, "condition",
                       random_inputs(6, seed=8)["condition"])
  others = deltas[~np.eye(len(deltas), dtype=bool)]
  assert others.max() < 1e-6, deltas  # features and domain fixed elsewhere
  if uses_condition(name):
    assert np.diag(deltas).min() > 1e-4, np.diag(deltas)
  else:
    assert np.diag(deltas).max() == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_each_example_reads_its_own_domain(name):
  layer = randomized(name)
  x = random_inputs(6, seed=7)
  deltas = row_changes(layer, x, "domain", (x["domain"] + 1) % D)
  others = deltas[~np.eye(len(deltas), dtype=bool)]
  assert others.max() < 1e-6, deltas
  if uses_domain(name):
    assert np.diag(deltas).min() > 1e-4, np.diag(deltas)
  else:
    assert np.diag(deltas).max() == 0.0


FACTOR_NAMES = ("u1", "u2", "v1", "v2")  # OverparamFactors' weights


def leaf_names(variables):
  """`.../adaptive_0/u1:0` -> ("adaptive_0", "u1")."""
  return [tuple(v.name.split(":")[0].split("/")[-2:]) for v in variables]


def factor_variables(variables):
  return [v.name for v in variables
          if v.name.split(":")[0].split("/")[-1] in FACTOR_NAMES]


def test_apg_merge_keeps_outputs_and_drops_factors(tmp_path):
  tf.keras.utils.set_random_seed(1)
  x, y = toy_task(256, seed=10)
  model = build_model("apg", units=[16, 8])
  model.compile(tf.keras.optimizers.Adam(0.02), "binary_crossentropy")
  model.fit(x, y, batch_size=64, epochs=1, verbose=0)  # non-initial factors
  layer = next(l for l in model.layers if isinstance(l, APG))
  n_before = len(layer.weights)
  hidden_before = layer(x).numpy()
  out_before = model(x).numpy()
  # The names looked for below really exist before the merge: 4 per layer.
  factors = sorted(n for n in leaf_names(layer.variables)
                   if n[1] in FACTOR_NAMES)
  assert factors == [(f"adaptive_{i}", n) for i in (0, 1)
                     for n in FACTOR_NAMES], factors
  assert len(factor_variables(model.trainable_weights)) == 8
  before_keys = [k for k, _ in tf.train.list_variables(
      tf.train.Checkpoint(model=model).save(str(tmp_path / "before" / "c")))]
  assert len([k for k in before_keys if "/_factors/" in k]) == 8, before_keys

  layer.merge_overparameterization()
  np.testing.assert_allclose(layer(x).numpy(), hidden_before, atol=1e-5)
  np.testing.assert_allclose(model(x).numpy(), out_before, atol=1e-5)
  for variables in (layer.variables, layer.trainable_weights,
                    model.variables, model.trainable_weights):
    assert not factor_variables(variables), factor_variables(variables)
  # Two adaptive layers: 4 factors each replaced by single U and V, named
  # beside the layer's other weights.
  assert len(layer.weights) == n_before - 4
  merged = [n for n in leaf_names(layer.trainable_weights) if n[1] in "uv"]
  assert sorted(merged) == [("adaptive_0", "u"), ("adaptive_0", "v"),
                            ("adaptive_1", "u"), ("adaptive_1", "v")], merged
  assert not any(isinstance(l, OverparamFactors)
                 for l in layer._flatten_layers())
  config = layer.get_config()
  assert config["overparam_dim"] == 0
  assert all(l.get_config()["overparam_dim"] == 0 for l in layer._adaptive)
  after_keys = [k for k, _ in tf.train.list_variables(
      tf.train.Checkpoint(model=model).save(str(tmp_path / "after" / "c")))]
  assert not [k for k in after_keys if "_factors" in k], after_keys

  # A fresh non-over-parameterised layer takes the merged weights as they are.
  fresh = type(layer).from_config(config)
  fresh(x)
  fresh.set_weights(layer.get_weights())
  np.testing.assert_allclose(fresh(x).numpy(), hidden_before, atol=1e-5)

  # The export holds only the merged variables and still matches.
  path = str(tmp_path / "apg")
  tf.saved_model.save(model, path)
  saved = [n for n, _ in tf.train.list_variables(path + "/variables/variables")]
  assert not any("factors" in n for n in saved), saved
  loaded = tf.saved_model.load(path)
  assert not factor_variables(loaded.variables)
  out = loaded.signatures["serving_default"](
      **{k: tf.constant(v) for k, v in x.items()})
  np.testing.assert_allclose(list(out.values())[0].numpy(), out_before,
                             atol=1e-5)

  layer.merge_overparameterization()  # second call is a no-op
  assert len(layer.weights) == n_before - 4


def test_apg_without_overparameterization_has_no_factors():
  layer = make("apg", overparam_dim=0)
  layer(random_inputs(2))
  assert not any(isinstance(l, OverparamFactors)
                 for l in layer._flatten_layers())
  before = [w.copy() for w in layer.get_weights()]
  layer.merge_overparameterization()
  assert all(np.array_equal(a, b) for a, b in zip(before, layer.get_weights()))


@pytest.mark.parametrize("name", NAMES)
def test_single_domain(name):
  """One scenario only (e.g. a single-distribution data set) still works."""
  layer = BACKBONES[name](num_domains=1, output_dim=OUT, **TINY[name])
  x = dict(random_inputs(5, seed=12), domain=np.zeros(5, np.int32))
  out = layer(x).numpy()
  assert out.shape == (5, OUT) and np.all(np.isfinite(out))


INVALID = [(name, "num_domains", dict(num_domains=0)) for name in NAMES] + [
    (name, "output_dim", dict(output_dim=-2)) for name in NAMES] + [
        ("dnn", "units", dict(units=[8, 0])),
        ("dnn", "dropout", dict(dropout=1.5)),
        ("moe", "num_experts", dict(num_experts=0)),
        ("moe", "expert_units", dict(expert_units=[])),
        ("mmoe", "num_experts", dict(num_experts=-1)),
        ("mmoe", "gate_units", dict(gate_units=[4, 0])),
        ("ple", "num_levels", dict(num_levels=0)),
        ("ple", "num_shared_experts", dict(num_shared_experts=0)),
        ("ple", "num_specific_experts", dict(num_specific_experts=0)),
        ("hinet", "num_specific_experts", dict(num_specific_experts=0)),
        ("hinet", "san_units", dict(san_units=[-1])),
        ("star", "units", dict(units=[0])),
        ("star", "aux_units", dict(aux_units=3)),
        ("apg", "rank", dict(rank=0)),
        ("apg", "overparam_dim", dict(overparam_dim=-1)),
        ("apg", "units", dict(units=[])),
        ("epnet", "gate_units", dict(gate_units=[-3])),
    ]


@pytest.mark.parametrize("name,option,kwargs", INVALID)
def test_invalid_config_names_the_option(name, option, kwargs):
  args = dict(num_domains=D, output_dim=OUT, **TINY[name])
  args.update(kwargs)
  with pytest.raises(ValueError, match=option):
    BACKBONES[name](**args)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_name_the_key(name):
  x = random_inputs(4)
  with pytest.raises(ValueError, match="features"):
    make(name)({k: v for k, v in x.items() if k != "features"})
  with pytest.raises(ValueError, match=r"'features'.*\(4,\)"):
    make(name)(dict(x, features=x["features"][:, 0]))
  with pytest.raises(ValueError, match="condition"):
    make(name)(dict(x, condition=x["condition"][:, :, None]))
  with pytest.raises(ValueError, match="domain"):
    make(name)(dict(x, domain=x["domain"][:, None]))
  with pytest.raises(ValueError, match="dict"):
    make(name)(x["features"])
  missing_condition = {k: v for k, v in x.items() if k != "condition"}
  missing_domain = {k: v for k, v in x.items() if k != "domain"}
  if uses_condition(name):
    with pytest.raises(ValueError, match="condition"):
      make(name)(missing_condition)
  else:
    assert make(name)(missing_condition).shape == (4, OUT)
  if uses_domain(name):
    with pytest.raises(ValueError, match="domain"):
      make(name)(missing_domain)
    with pytest.raises(ValueError, match="domain"):
      make(name)(dict(x, domain=x["domain"].astype(np.float32)))
  else:
    assert make(name)(missing_domain).shape == (4, OUT)
  # A built layer still validates (e.g. rank-1 features on a later call).
  layer = make(name)
  layer(x)
  with pytest.raises(ValueError, match="features"):
    layer(dict(x, features=x["features"][:, 0]))


@pytest.mark.parametrize("name", NAMES)
def test_saved_model_round_trip(name, tmp_path):
  model = build_model(name)
  x = random_inputs(6, seed=11)
  expected = model(x, training=False).numpy()
  path = str(tmp_path / name)
  tf.saved_model.save(model, path)
  loaded = tf.saved_model.load(path)
  out = loaded.signatures["serving_default"](
      **{k: tf.constant(v) for k, v in x.items()})
  np.testing.assert_allclose(list(out.values())[0].numpy(), expected,
                             atol=1e-6)


@pytest.mark.parametrize("per_group_input", [False, True])
def test_grouped_mlp_group_is_the_mlp_with_its_weights(per_group_input):
  # The fused einsum must compute, for every group, exactly the MLP it replaces.
  from hmdn.models.mlp import MLP, GroupedMLP
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 3, 5) if per_group_input else (6, 5)).astype(np.float32)
  grouped = GroupedMLP(3, [7, 4], activation="tanh", output_activation="relu")
  out = grouped(x).numpy()
  assert out.shape == (6, 3, 4)
  for g in range(3):
    own = x[:, g] if per_group_input else x
    mlp = MLP([7, 4], activation="tanh", output_activation="relu")
    mlp(own)
    mlp.set_weights([w.numpy() for w in grouped.group_weights(g)])
    np.testing.assert_allclose(out[:, g], mlp(own).numpy(), rtol=1e-5, atol=1e-6)
  # Groups are independent: another group's weights do not change group 0.
  before = out[:, 0]
  kernel = grouped._kernels[0]
  kernel.assign(kernel + tf.reshape(tf.one_hot(1, 3), (3, 1, 1)))  # group 1 only
  np.testing.assert_array_equal(grouped(x).numpy()[:, 0], before)


def test_grouped_mlp_refuses_a_wrong_group_axis():
  from hmdn.models.mlp import GroupedMLP
  with pytest.raises(ValueError, match="3 groups.*4 groups"):
    GroupedMLP(3, [4])(np.zeros((2, 4, 5), np.float32))
  with pytest.raises(ValueError, match="groups.*0"):
    GroupedMLP(0, [4])


@pytest.mark.parametrize("kwargs,message", [
    (dict(units=[]), r"`units` needs at least one layer size"),
    (dict(units=[4, 0]), r"`units` sizes must be positive integers, got \[4, 0\]"),
    (dict(units="64"), r"`units` must be a list of layer sizes"),
    (dict(units=[4], dropout=1.0), r"`dropout` must be a number in \[0, 1\), got 1.0"),
])
def test_mlp_blocks_check_their_options_like_the_backbones(kwargs, message):
  """MLP and GroupedMLP use the backbones' check helpers (models/checks.py)."""
  from hmdn.models.mlp import MLP, GroupedMLP
  with pytest.raises(ValueError, match=message):
    MLP(**kwargs)
  with pytest.raises(ValueError, match=message):
    GroupedMLP(2, **kwargs)
  assert MLP([np.int64(3)], dropout=0).get_config()["units"] == [3]
