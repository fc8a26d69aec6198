"""HMDRR: the hierarchical distribution representation of HMDN (arXiv 2408.01332).

Dual-view extraction (explicit: the distribution fields of every level; implicit:
user/context features behind a stop-gradient) followed by multi-level residual
quantization of each view. Each view has its own MLP; both go through ONE fused
quantizer (views as an axis), so the chain's ops are those of one view.
The concatenated quantized views are `s_D`, the condition HMDN feeds to its backbone;
the integer codes are interpretable distribution ids, exported by the serving signature.
"""
import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from hmdn.features.options import leaves, nested, option, validate, with_values
from hmdn.models.checks import check_units
from hmdn.models.mlp import MLP
from hmdn.models.quantizer import QuantizerConfig, ResidualQuantizer

EXPLICIT, IMPLICIT = "explicit", "implicit"
EXTRACTIONS = (EXPLICIT, IMPLICIT, "dual")


@dataclasses.dataclass
class HMDRRConfig:
  """HMDRR's options (../shared/HMDN.md, "The model"): its views and its quantizer.
  `ModelConfig.hmdrr` holds one (each option a flag of its own name) and passes it
  whole to the layer."""
  extraction: str = option("dual", "HMDN views quantized: explicit, implicit or both.",
                           EXTRACTIONS)
  distribution_dim: int = option(16, "d: width of each view's vector and codes.",
                                 minimum=1)
  view_units: Tuple[int, ...] = option((64,), "Hidden layer sizes of each view's MLP.",
                                       minimum=1)
  quantize: bool = option(True, "Quantize the views (HMDRR). False: s_D is the views' "
                          "continuous vectors, no codes (the ablation that removes the "
                          "quantizer, e.g. hmdn compare's hmdn_moe:quantize=false).")
  quantizer: QuantizerConfig = nested(QuantizerConfig, "The residual quantizer.",
                                      applies=lambda root: _unless_quantized(root))

  def __post_init__(self):
    self.view_units = tuple(self.view_units)  # JSON and flags give lists

  def validate(self) -> "HMDRRConfig":
    return validate(self)


def _unless_quantized(root) -> str:
  """The quantizer's options apply only when HMDRR quantizes (root: the ModelConfig
  or TrainConfig holding this HMDRRConfig)."""
  hmdrr = getattr(getattr(root, "model", root), "hmdrr", root)
  return "" if hmdrr.quantize else "--quantize=false has no quantizer"


# Every HMDRR option by field name: what the layer takes as a keyword argument.
OPTION_NAMES = tuple(leaf.name for _, leaf in leaves(HMDRRConfig).values())


def views_of(extraction: str):
  """The views an extraction quantizes, in the order their codes are concatenated."""
  return [EXPLICIT, IMPLICIT] if extraction == "dual" else [extraction]


@tf.keras.utils.register_keras_serializable(package="hmdn")
class ViewEncoders(tf.keras.layers.Layer):
  """One MLP per view (HMDN, dual-view extraction), outputs stacked per view.

  Each view's MLP reads only its own input. (A block-diagonal fusion of the views
  into one MatMul per layer saves an op per layer but multiplies the zero blocks
  too: it doubled the encoders' multiply-adds, which at batch 4096 cost more than
  the ops it saved at 512.)

  Args:
    units: hidden layer sizes, then the output size d, of each view's MLP.
    activation: hidden activation (the output layer is linear).
    **kwargs: base Layer arguments.
  """

  def __init__(self, units: Sequence[int], activation: str = "relu", **kwargs):
    super().__init__(**kwargs)
    self.units = check_units("units", units, allow_empty=False)
    self.activation = activation

  def build(self, input_shape):
    """input_shape: a list of [batch, width_v] shapes, one per view."""
    self.num_views = len(input_shape)
    self._mlps = [MLP(self.units, activation=self.activation, output_activation=None,
                      name=f"view_{v}") for v in range(self.num_views)]
    for mlp, shape in zip(self._mlps, input_shape):
      mlp.build(shape)
    super().build(input_shape)

  def view_weights(self, layer: int, view: int):
    """(kernel, bias) of one view's MLP layer."""
    dense = self._mlps[view]._dense[layer]  # pylint: disable=protected-access
    return dense.kernel, dense.bias

  def call(self, inputs: Sequence[tf.Tensor]) -> tf.Tensor:
    """[[batch, width_v] per view] -> [batch, views, units[-1]]."""
    return tf.stack([mlp(x) for mlp, x in zip(self._mlps, inputs)], axis=1)

  def get_config(self):
    config = super().get_config()
    config.update(units=self.units, activation=self.activation)
    return config


@tf.keras.utils.register_keras_serializable(package="hmdn")
class HierarchicalDistributionRepresentation(tf.keras.layers.Layer):
  """HMDN's HMDRR (arXiv 2408.01332): views -> residual quantization -> s_D.

  The explicit view encodes the distribution fields of all levels; the implicit view
  encodes user/context features read through a stop-gradient, so neither its
  commitment loss nor any other gradient of it moves the shared embedding tables
  (its MLP learns from the backbone's straight-through gradient and from the model's
  auxiliary CTR head on its s_D). With `extraction="dual"` the results are
  concatenated (explicit first), so `s_D` has `2 * distribution_dim` units.

  Args:
    config: the options (`HMDRRConfig`: extraction "explicit", "implicit" or
      "dual", distribution_dim d, view_units, and its `QuantizerConfig`: num_levels
      D, codebook_size K, shared_codebook, codebook_update, decay, beta,
      commitment_weight, warmup_steps, kmeans_iterations, restart_after_steps,
      buffer_size); None = its defaults.
    implicit_stop_gradient: read the implicit input through tf.stop_gradient.
    seed: seed of the quantizer's random ops.
    **kwargs: any HMDRR option by name (over `config`: `warmup_steps=20`), and the
      base Layer arguments.
  """

  def __init__(self, config: Optional[HMDRRConfig] = None,
               implicit_stop_gradient: bool = True, seed: int = 0, **kwargs):
    options = {k: kwargs.pop(k) for k in OPTION_NAMES if k in kwargs}
    super().__init__(**kwargs)
    self.config = with_values(config or HMDRRConfig(), options).validate()
    self.implicit_stop_gradient = bool(implicit_stop_gradient)
    self._seed = seed
    self.views = views_of(self.config.extraction)
    self.encoders = ViewEncoders(
        list(self.config.view_units) + [self.config.distribution_dim],
        name="view_encoders")
    # Distances, EMA statistics and codebooks stay float32 under a mixed precision
    # policy (the quantizer casts its input).
    self.quantizer = None
    if self.config.quantize:
      self.quantizer = ResidualQuantizer(self.config.quantizer, seed=seed,
                                         dtype="float32", name="quantizer")
    self.num_levels = self.config.quantizer.num_levels if self.config.quantize else 0

  def encode(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    """The views' vectors before quantization, [batch, views, d]."""
    for view in self.views:
      if view not in inputs:
        raise ValueError(f"the {view} view needs input {view!r}; got {sorted(inputs)}")
    xs = [tf.stop_gradient(inputs[v]) if v == IMPLICIT and self.implicit_stop_gradient
          else inputs[v] for v in self.views]
    return self.encoders(xs)

  def call(self, inputs: Dict[str, tf.Tensor], training: bool = False
           ) -> Dict[str, tf.Tensor]:
    """inputs: {"explicit": [batch, De], "implicit": [batch, Di]} (the views used).

    Returns {"representation": [batch, views * d], "codes": [batch, views * D] int32,
    "representation_<view>": [batch, d], "codes_<view>": [batch, D],
    "partial_sums_<view>": [batch, D, d]}. Without quantization (`quantize=False`)
    only the representations, the views' continuous vectors.
    """
    if self.quantizer is None:
      encoded = self.encode(inputs)
      out = {"representation": tf.reshape(encoded, (-1, len(self.views) *
                                                     self.config.distribution_dim))}
      for i, view in enumerate(self.views):
        out[f"representation_{view}"] = encoded[:, i]
      return out
    q = self.quantizer(self.encode(inputs), training=training)
    views, d, depth = len(self.views), self.config.distribution_dim, self.num_levels
    out = {"representation": tf.reshape(q["quantized"], (-1, views * d)),
           "codes": tf.reshape(q["codes"], (-1, views * depth))}
    # One unstack per output for all views: its gradient is one stack, where a
    # strided slice per view has a StridedSliceGrad each (zeros, then a copy).
    per_view = {name: tf.unstack(q[key], num=views, axis=1) for name, key in (
        ("representation", "quantized"), ("codes", "codes"),
        ("partial_sums", "partial_sums"))}
    for i, view in enumerate(self.views):
      for name, values in per_view.items():
        out[f"{name}_{view}"] = values[i]
    return out

  def diagnostics(self, inputs: Dict[str, tf.Tensor]) -> Dict[str, Dict[str, np.ndarray]]:
    """Quantizer diagnostics on a fixed probe, per view: {view: {name: [D]}}
    (see `ResidualQuantizer.diagnostics`); empty without a quantizer. Eager; updates
    no variable."""
    if self.quantizer is None:
      return {}
    report = self.quantizer.diagnostics(self.encode(inputs))
    return {view: {k: v[i] for k, v in report.items()}
            for i, view in enumerate(self.views)}

  def get_config(self):
    # Flat: the option names as keyword arguments (and as older saved configs hold them).
    config = super().get_config()
    hmdrr = dataclasses.asdict(self.config)
    config.update(hmdrr.pop("quantizer"), **hmdrr, seed=self._seed,
                  implicit_stop_gradient=self.implicit_stop_gradient)
    return config
