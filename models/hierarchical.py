"""HMDRR: the hierarchical distribution representation of HMDN (arXiv 2408.01332).

Dual-view extraction (explicit: the distribution fields of every level; implicit:
user/context features behind a stop-gradient) followed by multi-level residual
quantization of each view. Both views go through ONE block-diagonal encoder and ONE
fused quantizer (views as a leading axis), so their cost is that of one view's ops.
The concatenated quantized views are `s_D`, the condition HMDN feeds to its backbone;
the integer codes are interpretable distribution ids, exported by the serving signature.
"""
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from models.quantizer import ResidualQuantizer

EXPLICIT, IMPLICIT = "explicit", "implicit"
EXTRACTIONS = (EXPLICIT, IMPLICIT, "dual")


def views_of(extraction: str):
  """The views an extraction quantizes, in the order their codes are concatenated."""
  return [EXPLICIT, IMPLICIT] if extraction == "dual" else [extraction]


@tf.keras.utils.register_keras_serializable(package="hmdn")
class ViewEncoders(tf.keras.layers.Layer):
  """One MLP per view, computed as one block-diagonal MLP (HMDN, dual-view extraction).

  View v reads its own input and has its own weights; stacking them block-diagonally
  makes each layer a single MatMul for all views (the off-diagonal blocks are held at
  zero by a constant mask), instead of one MatMul per view and layer.

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
    widths = [int(tf.TensorShape(s)[-1]) for s in input_shape]
    self._widths = widths
    self.num_views = len(widths)
    self._kernels, self._biases, self._masks = [], [], []
    for i, u in enumerate(self.units):
      fan_in = widths if i == 0 else [self.units[i - 1]] * self.num_views
      mask = np.zeros((sum(fan_in), u * self.num_views), np.float32)
      start = 0
      for v, w in enumerate(fan_in):
        mask[start:start + w, v * u:(v + 1) * u] = 1.0
        start += w
      def init(shape, dtype=None, fan_in=fan_in, u=u):
        total, columns, start = sum(fan_in), [], 0
        for w in fan_in:  # each block Glorot for its own (w, u), zeros elsewhere
          block = tf.keras.initializers.GlorotUniform()((w, u), dtype=dtype)
          columns.append(tf.pad(block,
                                [[start, total - start - w], [0, 0]]))
          start += w
        return tf.concat(columns, 1)

      self._kernels.append(self.add_weight(f"kernel_{i}", shape=mask.shape,
                                           initializer=init))
      self._biases.append(self.add_weight(f"bias_{i}", shape=(u * self.num_views,),
                                          initializer="zeros"))
      self._masks.append(None if self.num_views == 1 else
                         tf.constant(mask, dtype=self.compute_dtype))
    super().build(input_shape)

  def view_weights(self, layer: int, view: int):
    """(kernel, bias) of one view's MLP layer: the block the fused kernel holds."""
    widths = (list(self._widths) if layer == 0 else
              [self.units[layer - 1]] * self.num_views)
    start = sum(widths[:view])
    u = self.units[layer]
    kernel = self._kernels[layer][start:start + widths[view], view * u:(view + 1) * u]
    return kernel, self._biases[layer][view * u:(view + 1) * u]

  def call(self, inputs: Sequence[tf.Tensor]) -> tf.Tensor:
    """[[batch, width_v] per view] -> [batch, views, units[-1]]."""
    x = inputs[0] if len(inputs) == 1 else tf.concat(list(inputs), -1)
    last = len(self.units) - 1
    for i, (kernel, bias, mask) in enumerate(zip(self._kernels, self._biases,
                                                 self._masks)):
      x = tf.nn.bias_add(tf.matmul(x, kernel if mask is None else kernel * mask), bias)
      if i < last:
        x = tf.keras.activations.get(self.activation)(x)
    return tf.reshape(x, (-1, self.num_views, self.units[-1]))

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
    for i, view in enumerate(self.views):
      out[f"representation_{view}"] = q["quantized"][:, i]
      out[f"codes_{view}"] = q["codes"][:, i]
      out[f"partial_sums_{view}"] = q["partial_sums"][:, i]
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
