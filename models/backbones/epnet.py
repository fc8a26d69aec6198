"""EPNet / PEPNet: embedding- and parameter-personalised gating."""
from typing import Sequence

import tensorflow as tf

from hmdn.models.backbones import base
from hmdn.models.mlp import MLP


@tf.keras.utils.register_keras_serializable(package="hmdn")
class GateNU(tf.keras.layers.Layer):
  """Gate Neural Unit: 2 * sigmoid(MLP(x)), centred on 1 to rescale, not mask.

  PEPNet's Gate NU (Chang et al., arXiv 2302.01115, Sec. "Gate Neural Unit"):
  a ReLU MLP followed by a sigmoid layer scaled by 2, so a gate can amplify as
  well as suppress the signal it multiplies.

  Args:
    units: width of the gate, i.e. of the tensor it multiplies, at least 1.
    hidden_units: hidden layer sizes before the sigmoid layer.
    **kwargs: standard `tf.keras.layers.Layer` arguments.
  """

  def __init__(self, units: int, hidden_units: Sequence[int] = (64,),
               **kwargs):
    super().__init__(**kwargs)
    self.units = base.check_positive("units", units)
    self.hidden_units = base.check_units("hidden_units", hidden_units)
    self._mlp = MLP(self.hidden_units + [self.units],
                    output_activation="sigmoid", name="mlp")

  def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
    """Computes the gate.

    Args:
      inputs: `[batch_size, gate_input_dim]`.
      training: unused (no dropout); accepted like the other layers.

    Returns:
      `[batch_size, units]`, each value in (0, 2).
    """
    return 2.0 * self._mlp(inputs, training=training)

  def get_config(self):
    config = super().get_config()
    config.update(units=self.units, hidden_units=list(self.hidden_units))
    return config


@tf.keras.utils.register_keras_serializable(package="hmdn")
class EPNet(base.Backbone):
  """PEPNet (Chang et al., KDD 2023, arXiv 2302.01115), Sec. "EPNet"
  and "PPNet", single task.

  EPNet rescales the concatenated embeddings elementwise,
  E' = E * GateNU(z ⊕ stop_gradient(E)). PPNet then multiplies each
  hidden layer's output by its own GateNU of the same gate input, so the
  distribution condition z personalises every layer; `use_ppnet=False` keeps
  the pure EPNet. The stop-gradient keeps the gates from pulling on E.

  Args:
    num_domains: number of domains; kept for the common backbone interface.
    output_dim: width of the returned representation (the last layer).
    units: hidden layer sizes before the `output_dim` layer; may be empty.
    gate_units: hidden layer sizes of every Gate NU.
    use_ppnet: whether each layer's output is also gated (PPNet); False keeps
      the EPNet embedding gate only.
    dropout: dropout rate in [0, 1) between layers.
    **kwargs: standard `tf.keras.layers.Layer` arguments.
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
    self.set_options(units=units, gate_units=gate_units, use_ppnet=use_ppnet,
                     dropout=dropout)
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
    """Gates the embeddings, then every layer, by [z, stop_gradient(E)].

    Args:
      inputs: dict with "features" `[batch_size, F]` and "condition"
        `[batch_size, C]`; "domain" is ignored if present.
      training: whether dropout is active.

    Returns:
      `[batch_size, output_dim]`.
    """
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
