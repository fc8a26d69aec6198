"""The contract of the public layers in models/mlp.py and models/backbones/.

Every public layer is Keras-serializable under the "hmdn" package, documents
each constructor argument, returns all of them from `get_config`, and is
rebuilt by `serialize`/`deserialize` into a layer with identical outputs. The
backbones' shared option checks name the option and the value the same way
in every backbone.
"""
import importlib
import inspect
import re

import numpy as np
import pytest
import tensorflow as tf

from hmdn.models.backbones import BACKBONES
from hmdn.models.backbones import base

from test_backbones import C
from test_backbones import D
from test_backbones import F
from test_backbones import NAMES
from test_backbones import TINY
from test_backbones import make
from test_backbones import random_inputs

MODULES = ["hmdn.models.mlp"] + [
    f"hmdn.models.backbones.{m}" for m in ("base", "experts", "dnn", "moe", "mmoe",
                                      "ple", "hinet", "star", "apg", "epnet", "esmm")
]


def public_layers():
  """Every public Layer class defined (not imported) in the modules above."""
  found = {}
  for module_name in MODULES:
    module = importlib.import_module(module_name)
    for name, obj in vars(module).items():
      if (inspect.isclass(obj) and issubclass(obj, tf.keras.layers.Layer) and
          obj.__module__ == module_name and not name.startswith("_")):
        found[name] = obj
  return found


LAYERS = public_layers()


def constructor_args(cls):
  params = inspect.signature(cls.__init__).parameters.values()
  return [p.name for p in params if p.name != "self" and p.kind in (
      p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def test_every_layer_is_found():
  # A module moved or a layer renamed must not silently shrink the checks.
  assert set(BACKBONES.values()) <= set(LAYERS.values())
  assert {"MLP", "GroupedMLP", "Backbone", "ExpertBank", "SoftmaxGate", "DomainLayerNorm",
          "StarDense", "OverparamFactors", "AdaptiveDense",
          "GateNU"} <= set(LAYERS)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_registered_and_documented(name):
  cls = LAYERS[name]
  assert tf.keras.utils.get_registered_name(cls) == f"hmdn>{name}"
  assert tf.keras.utils.get_registered_object(f"hmdn>{name}") is cls
  doc = inspect.getdoc(cls)
  assert "\nArgs:\n" in doc, name
  args_section = doc.split("\nArgs:\n", 1)[1]
  for arg in constructor_args(cls):
    assert re.search(rf"^\s+{arg}:", args_section, re.M), (name, arg)
  if "call" in vars(cls):
    assert "batch_size" in inspect.getdoc(cls.call), name


# Constructor arguments and inputs for the building blocks; every argument
# differs from its default so a dropped one shows in the config comparison.
def _x(batch=5, dim=F, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, dim)).astype(
      np.float32)


def _domain(batch=5):
  return np.arange(batch, dtype=np.int32) % D


BLOCKS = {
    "MLP": (dict(units=[8, 3], activation="tanh", output_activation=None,
                 dropout=0.1), lambda: _x()),
    "GroupedMLP": (dict(groups=3, units=[8, 3], activation="tanh",
                        output_activation=None, dropout=0.1), lambda: _x()),
    "ExpertBank": (dict(num_experts=3, units=[8, 4], dropout=0.1),
                   lambda: _x()),
    "SoftmaxGate": (dict(num_experts=3, hidden_units=[8], dropout=0.1,
                         num_gates=2), lambda: _x()),
    "GateNU": (dict(units=5, hidden_units=[8]), lambda: _x()),
    "DomainLayerNorm": (dict(num_domains=D, epsilon=1e-2),
                        lambda: (_x(), _domain())),
    "StarDense": (dict(num_domains=D, units=5, activation="tanh"),
                  lambda: (_x(), _domain())),
    "AdaptiveDense": (dict(units=5, rank=2, overparam_dim=3,
                           generator_units=[4], activation="tanh"),
                      lambda: (_x(), _x(dim=C, seed=1))),
}


def randomize(layer, seed=0):
  """Non-initial weights, so a clone that ignores them cannot match."""
  rng = np.random.default_rng(seed)
  layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32)
                     for w in layer.get_weights()])


def assert_round_trip(layer, inputs, call):
  config = layer.get_config()
  for arg in constructor_args(type(layer)):
    assert arg in config, arg
  serialized = tf.keras.layers.serialize(layer)
  assert serialized["registered_name"] == f"hmdn>{type(layer).__name__}"
  clone = tf.keras.layers.deserialize(serialized)  # no custom_objects needed
  assert type(clone) is type(layer)
  assert clone.get_config() == config
  assert type(layer).from_config(config).get_config() == config
  call(clone, inputs)
  assert [w.shape for w in clone.weights] == [w.shape for w in layer.weights]
  clone.set_weights(layer.get_weights())
  np.testing.assert_array_equal(call(clone, inputs), call(layer, inputs))


def _call(layer, inputs):
  if isinstance(layer, base.Backbone) or isinstance(inputs, np.ndarray):
    return layer(inputs, training=False).numpy()
  return layer(inputs).numpy()


def test_blocks_cover_every_building_block():
  backbones = {cls.__name__ for cls in BACKBONES.values()}
  assert set(LAYERS) - backbones - set(BLOCKS) == {"Backbone",
                                                   "OverparamFactors"}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_serialize_round_trip(name):
  kwargs, make_inputs = BLOCKS[name]
  for arg in constructor_args(LAYERS[name]):
    assert arg in kwargs, f"{name}: give {arg!r} a non-default test value"
  layer = LAYERS[name](**kwargs)
  inputs = make_inputs()
  _call(layer, inputs)
  randomize(layer)
  assert_round_trip(layer, inputs, _call)


def test_overparam_factors_round_trip():
  factors = LAYERS["OverparamFactors"](rank=2, units=5, inner_dim=3)
  factors.build(tf.TensorShape([None, F]))
  randomize(factors)
  config = factors.get_config()
  clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(factors))
  assert clone.get_config() == config
  clone.build(tf.TensorShape([None, F]))
  clone.set_weights(factors.get_weights())
  for a, b in zip(clone.products(), factors.products()):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


# Each backbone with every option moved off its default (where the TINY sizes
# do not already), so a `get_config` that drops one cannot pass.
NON_DEFAULT = {
    "dnn": dict(dropout=0.1),
    "moe": dict(gate_units=[4], tower_units=[8], dropout=0.1),
    "mmoe": dict(gate_units=[4], tower_units=[8], dropout=0.1),
    "ple": dict(num_levels=3, num_shared_experts=1, num_specific_experts=2,
                gate_units=[4],
                tower_units=[8], dropout=0.1),
    "hinet": dict(num_shared_experts=1, gate_units=[4], san_units=[4],
                  dropout=0.1),
    "star": dict(normalize=False, dropout=0.1),
    "apg": dict(dropout=0.1),
    "epnet": dict(use_ppnet=False, dropout=0.1),
    "esmm": dict(dropout=0.1),
}


@pytest.mark.parametrize("name", NAMES)
def test_backbone_serialize_round_trip(name):
  cls = BACKBONES[name]
  options = {**TINY[name], **NON_DEFAULT[name]}
  defaults = inspect.signature(cls.__init__).parameters
  for arg in constructor_args(cls)[2:]:  # after num_domains, output_dim
    default = defaults[arg].default
    default = list(default) if isinstance(default, tuple) else default
    assert options[arg] != default, (name, arg)
  layer = make(name, **NON_DEFAULT[name])
  assert cls.option_names() == tuple(constructor_args(cls))
  x = random_inputs(5, seed=20)
  layer(x)
  randomize(layer)
  assert_round_trip(layer, x, _call)


@pytest.mark.parametrize("name", NAMES)
def test_backbone_in_a_functional_model_reloads_by_name(name):
  """A model config holding a backbone rebuilds without custom_objects."""
  inputs = {
      "features": tf.keras.Input((F,), name="features"),
      "condition": tf.keras.Input((C,), name="condition"),
      "domain": tf.keras.Input((), dtype=tf.int32, name="domain"),
  }
  model = tf.keras.Model(inputs, make(name)(inputs))
  randomize(model)
  clone = tf.keras.Model.from_config(model.get_config())
  clone.set_weights(model.get_weights())
  x = random_inputs(4, seed=21)
  np.testing.assert_array_equal(clone(x).numpy(), model(x).numpy())


# The shared option checks: one rule per option, the same message everywhere.
MIXTURES = ["moe", "mmoe", "ple", "hinet"]


@pytest.mark.parametrize("option,value", [
    ("expert_units", []), ("expert_units", [8, 0]), ("expert_units", 8),
    ("gate_units", [0]), ("gate_units", "16"), ("tower_units", [-1]),
    ("tower_units", [2.5]), ("dropout", 1.0), ("dropout", -0.1),
    ("dropout", "0.1"), ("dropout", float("nan")), ("dropout", True),
])
def test_mixture_options_fail_alike(option, value):
  messages = set()
  for name in MIXTURES:
    with pytest.raises(ValueError, match=re.escape(f"`{option}`")) as error:
      BACKBONES[name](num_domains=D, **{**TINY[name], option: value})
    assert repr(value) in str(error.value)
    messages.add(str(error.value))
  assert len(messages) == 1, messages


@pytest.mark.parametrize("value", [0, -1, 2.5, "3", None, True])
def test_expert_counts_fail_alike(value):
  cases = [("moe", "num_experts"), ("mmoe", "num_experts"),
           ("ple", "num_shared_experts"), ("ple", "num_specific_experts"),
           ("hinet", "num_shared_experts"), ("hinet", "num_specific_experts")]
  for name, option in cases:
    with pytest.raises(ValueError, match=re.escape(f"`{option}`")) as error:
      BACKBONES[name](num_domains=D, **{**TINY[name], option: value})
    assert repr(value) in str(error.value)


@pytest.mark.parametrize("name,option", [("star", "normalize"),
                                         ("epnet", "use_ppnet")])
def test_flags_are_not_coerced(name, option):
  for value in ("false", 0, None):
    with pytest.raises(ValueError, match=option):
      BACKBONES[name](num_domains=D, **{**TINY[name], option: value})


def test_options_are_stored_as_plain_values():
  layer = BACKBONES["ple"](num_domains=D, num_levels=2.0,
                           expert_units=(np.int64(8),), dropout=0)
  assert layer.num_levels == 2 and type(layer.num_levels) is int
  assert layer.get_config()["expert_units"] == [8]
  assert type(layer.dropout) is float
  with pytest.raises(KeyError, match="new_option"):
    base.check_options({"new_option": 1})
