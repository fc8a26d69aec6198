"""Keras layers and models of HMDN and its backbones (tf.keras / tf-keras 2.x)."""
import features  # noqa: F401  (selects legacy Keras before TensorFlow loads)
