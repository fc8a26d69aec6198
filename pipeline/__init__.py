"""The trainer: tf.data input, tf.distribute training, evaluation and export."""
import os

# TFRS 0.7.7 only imports with legacy (tf-keras 2.x) Keras; must be set before TF loads.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
