"""The trainer's optimizers: Adam, and LazyAdam for large embedding tables.

tf-keras' Adam treats a sparse gradient (an embedding lookup's `IndexedSlices`) like a
dense one with zeros elsewhere: every step it decays the moments of EVERY row of the
table and moves every row whose momentum is not yet zero. That is Adam's definition,
and what the PyTorch CTR libraries do with dense embedding gradients, but its cost
grows with the table, not the batch (`benchmarks/optimizer_bench`; figures in
docs/speed.md, "pipeline").

`LazyAdam` (as in TF Addons, TF Recommenders-Addons, PyTorch's SparseAdam) updates only
the rows the batch looked up: their moments and their values, by Adam's formula; a row
no example touched keeps its moments and value. Dense variables get plain Adam.
"""
import tensorflow as tf

OPTIMIZERS = ("adam", "lazy_adam")


@tf.keras.utils.register_keras_serializable(package="hmdn")
class LazyAdam(tf.keras.optimizers.Adam):
  """Adam whose sparse updates touch only the gradient's rows (see the module doc).

  The rows of a sparse gradient arrive deduplicated (`Optimizer.apply_gradients` sums
  repeated indices first), so gathering, updating and scattering them back is exact.
  """

  def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
               name="LazyAdam", **kwargs):
    if kwargs.get("amsgrad"):
      raise ValueError("LazyAdam does not implement amsgrad")
    super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                     epsilon=epsilon, name=name, **kwargs)

  def update_step(self, gradient, variable):
    if not isinstance(gradient, tf.IndexedSlices):
      return super().update_step(gradient, variable)
    dtype = variable.dtype
    step = tf.cast(self.iterations + 1, dtype)
    beta_1 = tf.cast(self.beta_1, dtype)
    beta_2 = tf.cast(self.beta_2, dtype)
    alpha = (tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step)) /
             (1 - tf.pow(beta_1, step)))
    key = self._var_key(variable)
    m = self._momentums[self._index_dict[key]]
    v = self._velocities[self._index_dict[key]]
    rows, values = gradient.indices, gradient.values
    m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
    v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
    m.scatter_update(tf.IndexedSlices(m_rows, rows))
    v.scatter_update(tf.IndexedSlices(v_rows, rows))
    variable.scatter_sub(tf.IndexedSlices(
        alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))


def make_optimizer(name: str, learning_rate) -> tf.keras.optimizers.Optimizer:
  """The optimizer `--optimizer` names, at `learning_rate` (a float or a schedule)."""
  if name == "adam":
    return tf.keras.optimizers.Adam(learning_rate)
  if name == "lazy_adam":
    return LazyAdam(learning_rate)
  raise ValueError(f"--optimizer={name!r}: expected one of {OPTIMIZERS}")
