"""EPNet / PEPNet: embedding- and parameter-personalised gating."""
from typing import Sequence

import tensorflow as tf

from models.backbones import base
from models.mlp import MLP


class GateNU(tf.keras.layers.Layer):
  """Gate Neural Unit: 2 * sigmoid(MLP(x)), centred on 1 to rescale, not mask.

  (PEPNet's Gate NU; the factor 2 lets a gate amplify as well as suppress.)
  """

  def __init__(self, units: int, hidden_units: Sequence[int] = (64,),
               **kwargs):
    super().__init__(**kwargs)
    self.units = int(units)
    self.hidden_units = [int(u) for u in hidden_units]
    self._mlp = MLP(self.hidden_units + [self.units],
                    output_activation="sigmoid", name="mlp")

  def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
    """[B, gate_input_dim] -> [B, units] in (0, 2)."""
    return 2.0 * self._mlp(inputs, training=training)

  def get_config(self):
    config = super().get_config()
    config.update(units=self.units, hidden_units=self.hidden_units)
    return config


class EPNet(base.Backbone):
  """PEPNet (Chang et al., KDD 2023, arXiv 2302.01115), Sec. "EPNet"
  and "PPNet", single task.

  EPNet rescales the concatenated embeddings elementwise,
  E' = E * GateNU(z ⊕ stop_gradient(E)). PPNet then multiplies each
  hidden layer's output by its own GateNU of the same gate input, so the
  distribution condition z personalises every layer; `use_ppnet=False` keeps
  the pure EPNet. The stop-gradient keeps the gates from pulling on E.
  """

  reads_condition = True
  reads_domain = False

  def __init__(self,
               num_domains: int,
               output_dim: int = 32,
               units: Sequence[int] = (64, 32),
               gate_units: Sequence[int] = (64,),
               use_ppnet: bool = True,
               dropout: float = 0.0,
               **kwargs):
    super().__init__(num_domains, output_dim, **kwargs)
    self.units = base.check_units("units", units)
    self.gate_units = base.check_units("gate_units", gate_units)
    self.use_ppnet = bool(use_ppnet)
    self.dropout = base.check_dropout(dropout)
    widths = self.units + [self.output_dim]
    self._layers = [MLP([u], name=f"layer_{i}") for i, u in enumerate(widths)]
    self._dropout = tf.keras.layers.Dropout(self.dropout)
    self._ppnet_gates = [
        GateNU(u, self.gate_units, name=f"ppnet_gate_{i}")
        for i, u in enumerate(widths)
    ] if self.use_ppnet else []
    self._epnet_gate = None  # width F is only known in build

  def build(self, input_shape):
    self._check_shapes(input_shape)
    dim = int(input_shape[base.FEATURES][-1])
    self._epnet_gate = GateNU(dim, self.gate_units, name="epnet_gate")
    super().build(input_shape)

  def call(self, inputs, training: bool = False) -> tf.Tensor:
    """{"features": [B, F], "condition": [B, C]} -> [B, output_dim]."""
    features, condition, _ = self.unpack(inputs)
    gate_input = tf.concat([condition, tf.stop_gradient(features)], axis=-1)
    x = features * self._epnet_gate(gate_input, training=training)
    for i, layer in enumerate(self._layers):
      if i > 0:
        x = self._dropout(x, training=training)
      x = layer(x, training=training)
      if self.use_ppnet:
        x *= self._ppnet_gates[i](gate_input, training=training)
    return x

  def get_config(self):
    config = super().get_config()
    config.update(units=self.units, gate_units=self.gate_units,
                  use_ppnet=self.use_ppnet, dropout=self.dropout)
    return config
