"""HMDRR: the hierarchical distribution representation of HMDN (arXiv 2408.01332).

Dual-view extraction (explicit: the distribution fields of every level; implicit:
user/context features behind a stop-gradient) followed by multi-level residual
quantization of each view. Each view has its own MLP; both go through ONE fused
quantizer (views as an axis), so the chain's ops are those of one view.
The concatenated quantized views are `s_D`, the condition HMDN feeds to its backbone;
the integer codes are interpretable distribution ids, exported by the serving signature.
"""
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from hmdn.models.mlp import MLP
from hmdn.models.quantizer import ResidualQuantizer

EXPLICIT, IMPLICIT = "explicit", "implicit"
EXTRACTIONS = (EXPLICIT, IMPLICIT, "dual")


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
    if not units or any(int(u) < 1 for u in units):
      raise ValueError(f"`units` must be positive layer sizes, got {units!r}.")
    self.units = [int(u) for u in units]
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
    extraction: "explicit", "implicit" or "dual".
    distribution_dim: d, width of each view's vector and codes.
    view_units: hidden layer sizes of each view's MLP.
    num_levels: codebook depth D.
    codebook_size: codes per level K.
    shared_codebook: one codebook for all levels.
    codebook_update: "ema" or "loss".
    decay: EMA decay.
    beta: commitment cost.
    commitment_weight: lambda, weight of the quantization losses.
    warmup_steps: training steps before quantizing (views pass through).
    kmeans_iterations: Lloyd iterations of the codebook seeding.
    restart_after_steps: restart codes unused this many steps (0: never).
    buffer_size: real vectors kept for seeding.
    implicit_stop_gradient: read the implicit input through tf.stop_gradient.
    seed: seed of the quantizer's random ops.
    **kwargs: base Layer arguments.
  """

  def __init__(self,
               extraction: str = "dual",
               distribution_dim: int = 16,
               view_units: Sequence[int] = (64,),
               num_levels: int = 4,
               codebook_size: int = 8,
               shared_codebook: bool = False,
               codebook_update: str = "ema",
               decay: float = 0.99,
               beta: float = 0.25,
               commitment_weight: float = 1.0,
               warmup_steps: int = 0,
               kmeans_iterations: int = 5,
               restart_after_steps: int = 100,
               buffer_size: int = 2048,
               implicit_stop_gradient: bool = True,
               seed: int = 0,
               **kwargs):
    super().__init__(**kwargs)
    if extraction not in EXTRACTIONS:
      raise ValueError(f"extraction must be one of {EXTRACTIONS}, got {extraction!r}")
    if distribution_dim < 1:
      raise ValueError(f"distribution_dim must be >= 1, got {distribution_dim}")
    self.extraction = extraction
    self.distribution_dim = int(distribution_dim)
    self.view_units = [int(u) for u in view_units]
    self.implicit_stop_gradient = bool(implicit_stop_gradient)
    self.views = views_of(extraction)
    self.encoders = ViewEncoders(self.view_units + [self.distribution_dim],
                                 name="view_encoders")
    self.quantizer = ResidualQuantizer(
        num_levels=num_levels, codebook_size=codebook_size,
        shared_codebook=shared_codebook, codebook_update=codebook_update,
        decay=decay, beta=beta, commitment_weight=commitment_weight,
        warmup_steps=warmup_steps, kmeans_iterations=kmeans_iterations,
        restart_after_steps=restart_after_steps, buffer_size=buffer_size,
        # Distances, EMA statistics and codebooks stay float32 under a mixed
        # precision policy (the quantizer casts its input).
        seed=seed, dtype="float32", name="quantizer")
    self.num_levels = self.quantizer.num_levels

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
    "partial_sums_<view>": [batch, D, d]}.
    """
    q = self.quantizer(self.encode(inputs), training=training)
    views, d, depth = len(self.views), self.distribution_dim, self.num_levels
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
    (see `ResidualQuantizer.diagnostics`). Eager; updates no variable."""
    report = self.quantizer.diagnostics(self.encode(inputs))
    return {view: {k: v[i] for k, v in report.items()}
            for i, view in enumerate(self.views)}

  def get_config(self):
    config = super().get_config()
    q = self.quantizer
    config.update(extraction=self.extraction, distribution_dim=self.distribution_dim,
                  view_units=self.view_units, num_levels=q.num_levels,
                  codebook_size=q.codebook_size, shared_codebook=q.shared_codebook,
                  codebook_update=q.codebook_update, decay=q.decay, beta=q.beta,
                  commitment_weight=q.commitment_weight, warmup_steps=q.warmup_steps,
                  kmeans_iterations=q.kmeans_iterations,
                  restart_after_steps=q.restart_after_steps,
                  buffer_size=q.buffer_size,
                  implicit_stop_gradient=self.implicit_stop_gradient, seed=q.seed)
    return config
