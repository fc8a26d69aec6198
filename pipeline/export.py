"""SavedModel export for TF Serving: `<export_root>/<version>/`, written atomically.

Signatures:
  serving_default: {"examples": serialized tf.Example [batch]} -> {"probability": [batch]}
  predict: the model inputs as named raw tensors -> the same outputs.
HMDN models also return "codes" [batch, views * levels]: distribution ids to log.
"""
import os
import time
from typing import Dict

import tensorflow as tf

from features import spec as spec_lib
from pipeline import data


class ServingModule(tf.Module):
  """Wraps a trained model with the parsing the serving side needs, and nothing else."""

  def __init__(self, model: tf.keras.Model, spec: spec_lib.FeatureSpec):
    super().__init__()
    self.model = model
    self._spec = spec
    self.serve_examples = tf.function(
        self._serve_examples,
        input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    self.serve_tensors = tf.function(
        self._serve_tensors, input_signature=[spec.tensor_specs()])

  def _outputs(self, features) -> Dict[str, tf.Tensor]:
    out = self.model(features, training=False)
    result = {"probability": tf.reshape(out["probability"], [-1])}
    if "codes" in out:
      result["codes"] = out["codes"]
    return result

  def _serve_examples(self, examples):
    return self._outputs(data.parse_batch(examples, self._spec, for_serving=True))

  def _serve_tensors(self, features):
    return self._outputs(features)


def next_version(export_root: str) -> int:
  """A version number larger than any existing one (seconds since the epoch)."""
  existing = [int(n) for n in (tf.io.gfile.listdir(export_root)
                               if tf.io.gfile.exists(export_root) else [])
              if n.strip("/").isdigit()]
  return max([int(time.time())] + [v + 1 for v in existing])


def export(model: tf.keras.Model, spec: spec_lib.FeatureSpec, export_root: str) -> str:
  """Saves to a temporary directory, then renames it to `<export_root>/<version>`.

  A watcher (TF Serving polls the root) never sees a half-written version.
  """
  tf.io.gfile.makedirs(export_root)
  version = next_version(export_root)
  final = os.path.join(export_root, str(version))
  tmp = os.path.join(export_root, f".tmp-{version}")
  if tf.io.gfile.exists(tmp):
    tf.io.gfile.rmtree(tmp)
  module = ServingModule(model, spec)
  tf.saved_model.save(module, tmp, signatures={
      "serving_default": module.serve_examples,
      "predict": module.serve_tensors,
  })
  # The spec travels with the model: `hmdn predict` builds raw-tensor requests from it.
  tf.io.gfile.makedirs(os.path.join(tmp, "assets.extra"))
  spec.save(os.path.join(tmp, "assets.extra", "spec.yaml"))
  tf.io.gfile.rename(tmp, final)
  return final
