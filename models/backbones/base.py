"""The contract every backbone layer follows, and the helpers they share.

A backbone maps `{"features": E [B, F], "condition": z [B, C], "domain": d [B]}`
to a hidden representation `[B, output_dim]`; the model adds the logit head.
Keeping option validation (the helpers of `models/checks.py`, shared with the MLP
blocks the backbones are built of), domain selection and `get_config` here means each
backbone module only holds its paper's computation.
"""
import inspect
from typing import Any, Dict, Sequence, Tuple

import tensorflow as tf

from hmdn.models.checks import (  # noqa: F401  (the helpers every backbone uses)
    check_bool, check_dropout, check_non_negative, check_positive, check_units)

FEATURES = "features"
CONDITION = "condition"
DOMAIN = "domain"

_RANKS = {FEATURES: 2, CONDITION: 2, DOMAIN: 1}


def _non_empty_units(name, value):
  return check_units(name, value, allow_empty=False)


# One rule per option name, so every backbone checks `num_experts`,
# `expert_units`, `gate_units`, `dropout`, ... the same way.
OPTION_RULES = {
    "num_experts": check_positive,
    "num_levels": check_positive,
    "num_shared_experts": check_positive,
    "num_specific_experts": check_positive,
    "rank": check_positive,
    "overparam_dim": check_non_negative,
    "expert_units": _non_empty_units,
    "units": check_units,
    "gate_units": check_units,
    "tower_units": check_units,
    "san_units": check_units,
    "aux_units": check_units,
    "generator_units": check_units,
    "dropout": lambda name, value: check_dropout(value, name),
    "normalize": check_bool,
    "use_ppnet": check_bool,
}


def check_options(options: Dict[str, Any],
                  non_empty: Sequence[str] = ()) -> Dict[str, Any]:
  """Validates backbone options by name with `OPTION_RULES`.

  Args:
    options: option name -> value, as given to a backbone's constructor.
    non_empty: names of layer-size options that need at least one size here
      (e.g. APG's `units`, whose layers are what reads the condition).

  Returns:
    The options as plain ints / floats / bools / lists of ints.

  Raises:
    ValueError: naming the option and the value that breaks its rule.
  """
  checked = {}
  for name, value in options.items():
    if name not in OPTION_RULES:  # a new option needs its rule first
      raise KeyError(f"No validation rule for backbone option {name!r}.")
    rule = _non_empty_units if name in non_empty else OPTION_RULES[name]
    checked[name] = rule(name, value)
  return checked


def runs_own_branch_only(num_domains: int, from_domains: int) -> bool:
  """Whether a layer with per-domain weights computes only each example's own branch.

  From `from_domains` domains on (a class attribute of each such layer, measured by
  `python -m benchmarks.models_bench --domain_sweep`, docs/speed.md), a layer gathers
  each example's own weights, so its cost stops growing with the domains; below, one
  dense einsum over every domain's branch, keeping the own one, is cheaper. Either
  way the result is the same.
  """
  return num_domains >= from_domains


def branch_count(task_branches: str, num_domains: int, num_tasks: int) -> int:
  """How many branches (the backbone's `num_domains`) a model of `num_tasks` builds."""
  if task_branches == "task":
    return num_tasks
  return num_domains * (num_tasks if task_branches else 1)


def branch_ids(task_branches: str, domain: tf.Tensor, task: int,
               num_domains: int) -> tf.Tensor:
  """The branch an example runs for task `task`: its domain, its task, or the
  (task, domain) pair numbered task * num_domains + domain."""
  if task_branches == "task":
    return tf.fill(tf.shape(domain), tf.constant(task, domain.dtype))
  return domain + task * num_domains if task_branches else domain


def select_by_domain(per_domain: tf.Tensor, domain: tf.Tensor) -> tf.Tensor:
  """Picks each example's own domain slice: [B, D, ...] x [B] -> [B, ...].

  Backbones with per-domain parameters compute every domain's branch and keep
  the example's own one, so an output only depends on its own example.
  """
  return tf.gather(per_domain, domain, axis=1, batch_dims=1)


@tf.keras.utils.register_keras_serializable(package="hmdn")
class Backbone(tf.keras.layers.Layer):
  """Base class of the backbones: the input contract, options and config.

  Not a layer to use on its own. Subclasses set `reads_condition` /
  `reads_domain` to declare which inputs they use (only those keys are
  required in `call`), validate their options with `set_options`, and store
  every constructor argument under its own name, which is how `get_config`
  returns all of them.

  Args:
    num_domains: number of domains (scenarios); `domain` inputs lie in
      [0, num_domains).
    output_dim: width of the hidden representation the backbone returns.
    **kwargs: standard `tf.keras.layers.Layer` arguments (`name`, `dtype`...).
  """

  reads_condition: bool = True
  reads_domain: bool = False
  # In a model of several tasks: "" = one body shared by the tasks (each gets its own
  # tower on top, in the model); "task_domain" = the branches are (task, domain) pairs
  # (MMoE's and PLE's published multi-task form, a gate and tower per task, here per
  # task and domain); "task" = a branch per task (ESMM). See `branch_ids`.
  task_branches: str = ""

  def __init__(self, num_domains: int, output_dim: int, **kwargs):
    super().__init__(**kwargs)
    self.num_domains = check_positive("num_domains", num_domains)
    self.output_dim = check_positive("output_dim", output_dim)
    # Set by a model of several tasks that runs the backbone once per (example, task):
    # "features" then holds this many identical copies of the batch, task-major
    # (CTRModel._fold), and work that reads the features alone runs on one copy
    # (`on_feature_copy`). Not a constructor argument: the model sets it on each build.
    self.feature_copies = 1

  def on_feature_copy(self, fn, features: tf.Tensor) -> tf.Tensor:
    """`fn(features)` of a per-row computation, run on one copy of the batch and
    tiled: the same values as on every copy (a shared expert's output is the same for
    every task, as in MMoE), at 1 / feature_copies of the cost."""
    if self.feature_copies == 1:
      return fn(features)
    rows = tf.shape(features)[0] // self.feature_copies
    out = fn(features[:rows])
    return tf.tile(out, [self.feature_copies] + [1] * (out.shape.rank - 1))

  @classmethod
  def option_names(cls) -> Tuple[str, ...]:
    """The constructor arguments of this backbone (what `get_config` holds)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in params if p.name != "self" and p.kind in (
        p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

  def set_options(self, non_empty: Sequence[str] = (), **options):
    """Validates options with `check_options` and stores them as attributes."""
    for name, value in check_options(options, non_empty).items():
      setattr(self, name, value)

  def _required_keys(self) -> Tuple[str, ...]:
    keys = [FEATURES]
    if self.reads_condition:
      keys.append(CONDITION)
    if self.reads_domain:
      keys.append(DOMAIN)
    return tuple(keys)

  def _check_shapes(self, shapes: Dict[str, tf.TensorShape]):
    if not isinstance(shapes, dict):
      raise ValueError(
          f"{type(self).__name__} expects a dict with keys "
          f"{self._required_keys()}, got {type(shapes).__name__}.")
    for key in self._required_keys():
      if key not in shapes:
        raise ValueError(
            f"{type(self).__name__} needs input {key!r}; got keys "
            f"{sorted(shapes)}.")
    for key, rank in _RANKS.items():
      if key not in shapes:
        continue
      shape = tf.TensorShape(shapes[key])
      if shape.rank is not None and shape.rank != rank:
        raise ValueError(
            f"Input {key!r} must have rank {rank}, got shape {shape}.")
      if rank == 2 and key in self._required_keys() and shape.rank == 2 and (
          shape[-1] is None):
        raise ValueError(
            f"Input {key!r} needs a known last dimension, got shape {shape}.")

  def build(self, input_shape):
    self._check_shapes(input_shape)
    super().build(input_shape)

  def unpack(self, inputs: Dict[str, tf.Tensor]):
    """Validates `inputs`; returns (features, condition, domain) as tensors.

    Inputs the backbone does not read come back as None.
    """
    if not isinstance(inputs, dict):
      self._check_shapes(inputs)
    self._check_shapes({k: tf.convert_to_tensor(v).shape
                        for k, v in inputs.items()})
    features = tf.cast(inputs[FEATURES], tf.float32)
    condition = (tf.cast(inputs[CONDITION], tf.float32)
                 if self.reads_condition else None)
    domain = None
    if self.reads_domain:
      domain = tf.convert_to_tensor(inputs[DOMAIN])
      if not domain.dtype.is_integer:
        raise ValueError(
            f"Input {DOMAIN!r} must be an integer index, got {domain.dtype}.")
      domain = tf.cast(domain, tf.int32)
    return features, condition, domain

  def get_config(self):
    """Every constructor argument, read from the attribute of the same name."""
    config = super().get_config()
    for name in self.option_names():
      value = getattr(self, name)
      config[name] = list(value) if isinstance(value, (list, tuple)) else value
    return config
