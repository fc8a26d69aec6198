"""The trainer: tf.data input, tf.distribute training, evaluation and export."""
import hmdn.features  # noqa: F401  (selects legacy Keras before TensorFlow loads)
