"""Invariants the learning tests cannot see, each written to fail on a plausible bug:
inference and evaluation leave every variable alone, gate weights sum to 1 over the
experts, a domain id selects its own branch, a never-seen coarsest value is the OOV
domain, and a prediction reads every embedded field (derived ones included).
Fixtures (the planted data directory, 40 training batches): conftest.py."""
import numpy as np
import pytest
import tensorflow as tf

from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import PreprocessedData
from hmdn.models.backbones import BACKBONES
from hmdn.models.backbones import base
from hmdn.models.backbones.experts import SoftmaxGate
from hmdn.models.ctr_model import CTRModel
from hmdn.models.registry import ModelConfig
from hmdn.pipeline import data, evaluate, train

from test_backbones import TINY

SMALL = dict(output_dim=8, distribution_dim=8, view_units=(16,), num_levels=2,
             codebook_size=4, codebook_warmup_steps=2)
DOMAINS = 5  # unlike every other size of TINY, so a domain axis is recognisable
F, C = 6, 4


def _inputs(batch, seed=0):
  rng = np.random.default_rng(seed)
  return {"features": rng.normal(size=(batch, F)).astype(np.float32),
          "condition": rng.normal(size=(batch, C)).astype(np.float32),
          "domain": (np.arange(batch) % DOMAINS).astype(np.int32)}


def _randomized(name, seed=3):
  """A built backbone of DOMAINS domains with random (non-initial) weights: at
  initialisation STAR's domain factors are the identity, so no branch would differ."""
  layer = BACKBONES[name](num_domains=DOMAINS, output_dim=16, **TINY[name])
  layer(_inputs(2))
  rng = np.random.default_rng(seed)
  layer.set_weights([rng.normal(scale=0.5, size=w.shape) for w in layer.get_weights()])
  return layer


# --- Backbones ---------------------------------------------------------------------------
def test_select_by_domain_keeps_each_examples_own_slice():
  per_domain = np.arange(4 * DOMAINS * 2, dtype=np.float32).reshape(4, DOMAINS, 2)
  domain = np.array([3, 0, 4, 3], np.int32)
  got = base.select_by_domain(tf.constant(per_domain), tf.constant(domain)).numpy()
  np.testing.assert_array_equal(got, per_domain[np.arange(4), domain])


@pytest.mark.parametrize("num_gates", [0, 3])
def test_gate_weights_are_a_distribution_over_the_experts(num_gates):
  gate = SoftmaxGate(num_experts=4, hidden_units=[8], num_gates=num_gates)
  x = np.random.default_rng(0).normal(scale=20.0, size=(6, C)).astype(np.float32)
  gate(x)
  rng = np.random.default_rng(1)
  gate.set_weights([rng.normal(scale=2.0, size=w.shape) for w in gate.get_weights()])
  weights = gate(x).numpy()
  assert weights.shape == ((6, 4) if not num_gates else (6, num_gates, 4))
  assert weights.min() >= 0.0
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
  assert weights.max(-1).min() < 0.999  # not one-hot: the sum is not trivially 1


def _identical_experts(layer, seed=5):
  """Every expert of every bank the same MLP: weights of a `*experts*` variable are
  one random array per (variable kind, per-expert shape), broadcast over experts."""
  rng = np.random.default_rng(seed)
  shared = {}
  values = []
  for w in layer.weights:
    if "experts/experts/" not in w.name:
      values.append(w.numpy())
      continue
    key = (w.name.rsplit("/", 1)[-1], tuple(w.shape[1:]))
    if key not in shared:
      shared[key] = rng.normal(scale=0.5, size=w.shape[1:])
    values.append(np.broadcast_to(shared[key], w.shape))
  layer.set_weights(values)


@pytest.mark.parametrize("name", ["moe", "mmoe", "ple"])
def test_a_mixture_of_identical_experts_does_not_depend_on_the_gate(name):
  """With every expert equal, a mixture whose gate weights sum to 1 is that expert,
  whatever the gates read: the output cannot move with the condition."""
  layer = _randomized(name)
  x = _inputs(8, seed=1)
  other = dict(x, condition=_inputs(8, seed=2)["condition"] * 5.0)
  moved = np.abs(layer(other).numpy() - layer(x).numpy()).max()
  assert moved > 1e-3  # the gates do read the condition
  _identical_experts(layer)
  np.testing.assert_allclose(layer(other).numpy(), layer(x).numpy(), atol=1e-5)


# PLE's shared gate mixes every domain's experts of the levels below the last (its
# design), so those are not one domain's own.
SHARED_BY_DESIGN = {"ple": ("l0_specific_experts/",)}


def _domain_slices(name, layer):
  """The variables with one slice per domain (first axis DOMAINS) only that domain
  reads."""
  return [w for w in layer.weights if w.shape.rank and w.shape[0] == DOMAINS and
          not any(s in w.name for s in SHARED_BY_DESIGN.get(name, ()))]


@pytest.mark.parametrize("name", ["mmoe", "ple", "star"])
def test_domain_id_selects_its_own_branch(name):
  """Moving domain j's parameters moves exactly the examples of domain j."""
  layer = _randomized(name)
  slices = _domain_slices(name, layer)
  assert len(slices) >= 2, [w.name for w in layer.weights]
  x = _inputs(2 * DOMAINS, seed=4)
  before = layer(x).numpy()
  originals = [w.numpy() for w in slices]
  for j in range(DOMAINS):
    for w, value in zip(slices, originals):
      moved = value.copy()
      moved[j] += 0.5
      w.assign(moved)
    delta = np.abs(layer(x).numpy() - before).max(-1)
    for w, value in zip(slices, originals):
      w.assign(value)
    own = x["domain"] == j
    assert delta[own].min() > 1e-4, (j, delta)
    assert delta[~own].max() < 1e-6, (j, delta)


# --- The model: inference and evaluation are read-only ----------------------------------
def _as_dataset(batches):
  """The batches as a dataset of known size (fit runs exactly one step a batch)."""
  return tf.data.Dataset.from_generator(
      lambda: iter(batches),
      output_signature=tf.data.Dataset.from_tensors(batches[0]).element_spec).apply(
          tf.data.experimental.assert_cardinality(len(batches)))


def _state(model):
  """Every model variable but the metrics' (which evaluation accumulates)."""
  metric = {id(v) for m in model.metrics for v in m.variables}
  return {v.name: v.numpy().copy() for v in model.variables if id(v) not in metric}


def _assert_same(before, model, what):
  after = _state(model)
  assert before.keys() == after.keys()
  changed = [k for k in before if not np.array_equal(before[k], after[k])]
  assert not changed, f"{what} changed {changed}"


def test_inference_and_evaluation_leave_every_variable_alone(data_dir, spec, batches):
  """Before seeding (the warm-up buffer) and past warm-up (the EMA codebooks): only a
  training step moves a variable."""
  tf.keras.utils.set_random_seed(0)
  model = train.build_model(data_dir, ModelConfig.of(name="hmdn_mmoe", **SMALL))
  model.compile(optimizer=tf.keras.optimizers.Adam(3e-3))
  quantizer = model.hierarchy.quantizer
  features = batches[0][0]
  model(features, training=False)
  state = _state(model)
  model(features)
  _assert_same(state, model, "model(features) without training=, before seeding")
  warm = SMALL["codebook_warmup_steps"] + 1
  model.fit(_as_dataset(batches[:warm]), epochs=1, verbose=0)
  assert bool(quantizer.initialized) and int(quantizer.step) == warm
  state = _state(model)
  model(features)
  _assert_same(state, model, "model(features) without training=")
  model(features, training=False)
  _assert_same(state, model, "model(features, training=False)")
  model.predict(_as_dataset(batches[:2]).map(lambda f, _: f), verbose=0)
  _assert_same(state, model, "model.predict")
  model.evaluate(_as_dataset(batches[:2]), verbose=0)
  _assert_same(state, model, "model.evaluate (test_step)")
  rows = data.first_records(data_dir, "eval", 8)
  evaluate.model_predictor(model, spec)(tf.constant(rows))
  _assert_same(state, model, "the serving function")
  # A training step does move them (the comparisons above can see a change).
  model.fit(_as_dataset(batches[warm:warm + 1]), epochs=1, verbose=0)
  assert int(quantizer.step) == warm + 1
  after = _state(model)
  assert any(not np.array_equal(state[k], after[k]) for k in state)


# --- The model: a never-seen coarsest value at serving ----------------------------------
def _spy_domain(model):
  """Records the `domain` input of every backbone call."""
  seen = []
  call = model.backbone.call

  def spy(inputs, *args, **kwargs):
    seen.append(np.asarray(inputs["domain"]))
    return call(inputs, *args, **kwargs)

  model.backbone.call = spy
  return seen


def _one_row_per_value(features, field, values):
  """Row 0 repeated, `field` set to each value in turn."""
  n = len(values)
  out = {k: tf.repeat(v[:1], n, axis=0) for k, v in features.items()}
  out[field] = tf.constant(values)
  return out


@pytest.mark.parametrize("name", ["star", "hmdn_mmoe"])
def test_a_never_seen_coarsest_value_is_the_oov_domain(name, data_dir, batches):
  tf.keras.utils.set_random_seed(0)
  model = train.build_model(data_dir, ModelConfig.of(name=name, **SMALL))
  coarsest = model._distribution_fields[0]  # pylint: disable=protected-access
  vocab = [line for line in open(PreprocessedData(data_dir).vocab_path(coarsest))
           .read().splitlines() if line]
  assert model.num_domains == len(vocab) + 1  # the OOV row and one per value
  values = vocab + ["never-seen-1", "never-seen-2"]
  features = _one_row_per_value(batches[0][0], coarsest, values)
  seen = _spy_domain(model)
  out = model(features)
  np.testing.assert_array_equal(seen[-1], list(range(1, len(vocab) + 1)) + [0, 0])
  probability = out["probability"].numpy()[:, 0]
  assert np.isfinite(probability).all()
  assert probability[-1] == probability[-2]  # both unseen: the one OOV row
  # No real domain's prediction is the unseen one's (no alias of a real value).
  assert np.abs(probability[:-2] - probability[-1]).min() > 1e-7, probability


# --- The model: every embedded field, derived ones included, reaches the prediction -----
DERIVED_SPEC = """
name: derived_fields
features:
  - {name: click, kind: numeric, role: label}
  - {name: scenario, kind: categorical, distribution_level: 0, embedding_dim: 3}
  - {name: item, kind: categorical, embedding_dim: 3}
  - {name: price, kind: numeric, embedding_dim: 2}
  - {name: hour, kind: numeric, embedding_dim: 2, boundaries: [6, 12, 18]}
  - {name: scenario_item, kind: categorical, embedding_dim: 3,
     derived: {kind: cross, sources: [scenario, item]}}
  - {name: hour_bucket, kind: categorical, embedding_dim: 2,
     derived: {kind: bucket, source: hour, boundaries: [6, 12, 18]}}
"""


@pytest.fixture(scope="module")
def derived_setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("derived")
  (root / "spec.yaml").write_text(DERIVED_SPEC)
  spec = spec_lib.load_spec(str(root / "spec.yaml"))
  vocab = root / "vocab"
  vocab.mkdir()
  scenarios, items = ["s0", "s1"], ["i0", "i1", "i2"]
  separator = spec["scenario_item"].derived.separator
  (vocab / "scenario.txt").write_text("\n".join(scenarios) + "\n")
  (vocab / "item.txt").write_text("\n".join(items) + "\n")
  (vocab / "scenario_item.txt").write_text(
      "\n".join(s + separator + i for s in scenarios for i in items) + "\n")
  (vocab / "hour_bucket.txt").write_text("0\n1\n2\n3\n")
  features = {"scenario": tf.constant(["s0", "s1", "s1", "s0"]),
              "item": tf.constant(["i0", "i1", "i2", "i2"]),
              "price": tf.constant([1.0, 2.0, 3.0, 4.0]),
              "hour": tf.constant([1.0, 8.0, 13.0, 20.0])}
  return spec, str(vocab), features


def _field_weights(model, field):
  """The variables that embed `field`: its table or its projection."""
  layer = (model.embeddings._table.get(field) or  # pylint: disable=protected-access
           model.embeddings._projection[field])  # pylint: disable=protected-access
  return layer.weights


@pytest.mark.parametrize("name", ["dnn", "moe", "star", "hmdn_moe"])
def test_the_prediction_reads_every_embedded_field(name, derived_setup):
  spec, vocab_dir, features = derived_setup
  assert {f.name for f in spec.derived_fields} <= {f.name for f in spec.embedded_fields}
  tf.keras.utils.set_random_seed(0)
  model = CTRModel(spec, vocab_dir, {"price": {"mean": 2.5, "std": 1.0}},
                   ModelConfig.of(name=name, **SMALL))
  derived = model.embeddings.derived_values(features)
  for field in ("scenario_item", "hour_bucket"):  # every row finds a real id
    assert model.embeddings.ids(field, derived[field]).numpy().min() > 0
  before = model(features)["logits"].numpy()
  for f in spec.embedded_fields:
    weights = _field_weights(model, f.name)
    originals = [w.numpy() for w in weights]
    for w, value in zip(weights, originals):
      w.assign(value + np.random.default_rng(0).normal(scale=1.0, size=value.shape))
    moved = np.abs(model(features)["logits"].numpy() - before)[:, 0]
    for w, value in zip(weights, originals):
      w.assign(value)
    assert moved.min() > 1e-6, (f.name, moved)
