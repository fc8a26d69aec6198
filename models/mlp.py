"""The multilayer perceptron block every model shares."""
from typing import Optional, Sequence

import tensorflow as tf


class MLP(tf.keras.layers.Layer):
  """Stack of Dense layers: hidden units with `activation`, optional dropout.

  Shared by views, experts, towers and gates so no model re-writes it. When
  `output_activation` is None the last layer is linear (useful for logits and
  distribution views).
  """

  def __init__(self,
               units: Sequence[int],
               activation: str = "relu",
               output_activation: Optional[str] = "relu",
               dropout: float = 0.0,
               **kwargs):
    super().__init__(**kwargs)
    if not units:
      raise ValueError(f"MLP needs at least one layer size in `units`, got {units!r}.")
    self.units = [int(u) for u in units]
    self.activation = activation
    self.output_activation = output_activation
    self.dropout = float(dropout)
    self._dense = []
    for i, u in enumerate(self.units):
      last = i == len(self.units) - 1
      self._dense.append(tf.keras.layers.Dense(
          u, activation=output_activation if last else activation,
          name=f"dense_{i}"))
    self._dropout = tf.keras.layers.Dropout(self.dropout) if self.dropout else None

  def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
    """[batch_size, input_dim] -> [batch_size, units[-1]]."""
    x = inputs
    for i, layer in enumerate(self._dense):
      x = layer(x)
      if self._dropout is not None and i < len(self._dense) - 1:
        x = self._dropout(x, training=training)
    return x

  def get_config(self):
    config = super().get_config()
    config.update(units=self.units, activation=self.activation,
                  output_activation=self.output_activation, dropout=self.dropout)
    return config
