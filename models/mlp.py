"""The multilayer perceptron block every model shares."""
import numbers
from typing import Optional, Sequence

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="hmdn")
class MLP(tf.keras.layers.Layer):
  """Stack of Dense layers: the deep tower of CTR models.

  The feed-forward network of Wide & Deep (Cheng et al., arXiv 1606.07792,
  Sec. "The Deep Component"), shared by views, experts, towers and gates
  so no model re-writes it. Hidden layers use `activation`, dropout is applied
  between layers (never after the last one), and the last layer uses
  `output_activation`: None makes it linear, for logits and distribution views.

  Args:
    units: sizes of the Dense layers, first to last; at least one.
    activation: activation of every layer but the last (a Keras name).
    output_activation: activation of the last layer; None for linear.
    dropout: dropout rate in [0, 1) between layers; 0 disables it.
    **kwargs: standard `tf.keras.layers.Layer` arguments.
  """

  def __init__(self,
               units: Sequence[int],
               activation: str = "relu",
               output_activation: Optional[str] = "relu",
               dropout: float = 0.0,
               **kwargs):
    super().__init__(**kwargs)
    # Checked here, not with models.backbones.base: the backbones import this
    # module, so importing them back would be a cycle.
    if (isinstance(units, (str, bytes)) or not hasattr(units, "__iter__") or
        not list(units)):
      raise ValueError(
          f"MLP needs at least one layer size in `units`, got {units!r}.")
    if not all(isinstance(u, numbers.Integral) and not isinstance(u, bool) and
               u >= 1 for u in units):
      raise ValueError(
          f"MLP `units` must be positive integers, got {list(units)!r}.")
    if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or
        not 0.0 <= dropout < 1.0):
      raise ValueError(f"MLP `dropout` must be in [0, 1), got {dropout!r}.")
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
    """Applies the stack.

    Args:
      inputs: `[batch_size, input_dim]`.
      training: whether dropout is active.

    Returns:
      `[batch_size, units[-1]]`.
    """
    x = inputs
    for i, layer in enumerate(self._dense):
      x = layer(x)
      if self._dropout is not None and i < len(self._dense) - 1:
        x = self._dropout(x, training=training)
    return x

  def get_config(self):
    config = super().get_config()
    config.update(units=list(self.units), activation=self.activation,
                  output_activation=self.output_activation, dropout=self.dropout)
    return config
