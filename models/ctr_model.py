"""The CTR model: spec embeddings -> (HMDRR) -> backbone -> sigmoid head, as a tfrs.Model.

Loss is BCE through `tfrs.tasks.Ranking` with SUM reduction divided by the global batch,
plus the quantization losses divided by the number of replicas, so the gradient is the
same on one device and under any tf.distribute strategy.
"""
from typing import Any, Dict, Mapping, Optional

import tensorflow as tf
import tensorflow_recommenders as tfrs

from features import spec as spec_lib
from models.backbones import BACKBONES
from models.embedding import FeatureEmbeddings
from models.hierarchical import HierarchicalDistributionRepresentation
from models.registry import ModelConfig


class CTRModel(tfrs.Model):
  """Click-through-rate model built from a feature spec and a `ModelConfig`.

  `call(features)` takes raw inputs keyed by field name and returns
  {"logits": [batch, 1], "probability": [batch, 1]} plus, for HMDN models,
  "codes": [batch, views * num_levels] int32 (and "codes_<view>": [batch, num_levels]).
  """

  def __init__(self, spec: spec_lib.FeatureSpec, vocab_dir: str,
               numeric_moments: Optional[Mapping[str, Mapping[str, float]]],
               config: ModelConfig, tables_dir: Optional[str] = None):
    super().__init__()
    # Step outputs below are already global (metric results, all-reduced losses), so
    # Keras reports the first replica's copy instead of summing them ("auto" may sum).
    self.distribute_reduction_method = "first"
    config.validate()
    self.config = config
    self.feature_spec = spec
    self.embeddings = FeatureEmbeddings(spec.to_dict(), vocab_dir, numeric_moments,
                                        tables_dir=tables_dir, name="embeddings")
    self._distribution_fields = [f.name for f in spec.distribution_fields]
    backbone_cls = BACKBONES[config.backbone]
    reads_condition = backbone_cls.reads_condition
    if not self._distribution_fields and (
        reads_condition or (config.is_hmdn and config.extraction != "implicit")):
      raise ValueError(
          f"model {config.name!r} needs at least one distribution field "
          f"(distribution_level) in spec {spec.source}")
    self.num_domains = (self.embeddings.num_ids[self._distribution_fields[0]]
                        if self._distribution_fields else 1)
    self.hierarchy = None
    if config.is_hmdn:
      self.hierarchy = HierarchicalDistributionRepresentation(
          extraction=config.extraction, distribution_dim=config.distribution_dim,
          view_units=config.view_units, num_levels=config.num_levels,
          codebook_size=config.codebook_size, shared_codebook=config.shared_codebook,
          codebook_update=config.codebook_update, decay=config.decay, beta=config.beta,
          commitment_weight=config.commitment_weight, seed=config.seed,
          name="hierarchy")
    self.backbone = backbone_cls(num_domains=self.num_domains,
                                 output_dim=config.output_dim,
                                 name=f"backbone_{config.backbone}",
                                 **config.backbone_kwargs)
    self.head = tf.keras.layers.Dense(1, name="logit")
    self.task = tfrs.tasks.Ranking(
        loss=tf.keras.losses.BinaryCrossentropy(
            from_logits=True, reduction=tf.keras.losses.Reduction.SUM),
        metrics=[tf.keras.metrics.AUC(from_logits=True, name="auc")])

  def call(self, features: Mapping[str, tf.Tensor], training: bool = False
           ) -> Dict[str, tf.Tensor]:
    embedded = self.embeddings(features)
    all_fields = tf.concat([embedded[f.name] for f in self.feature_spec.embedded_fields],
                           -1)
    if self._distribution_fields:
      distribution = tf.concat([embedded[n] for n in self._distribution_fields], -1)
      domain = self.embeddings.ids(self._distribution_fields[0],
                                   features[self._distribution_fields[0]])
    else:
      distribution = tf.zeros_like(all_fields[:, :1])
      domain = tf.zeros_like(all_fields[:, 0], dtype=tf.int32)
    out = {}
    condition = distribution
    if self.hierarchy is not None:
      h = self.hierarchy({"explicit": distribution, "implicit": all_fields},
                         training=training)
      condition = (h["representation"] if self.config.hmdn_condition ==
                   "hierarchical_only" else tf.concat([distribution,
                                                       h["representation"]], -1))
      out.update({k: v for k, v in h.items() if k.startswith("codes")})
    hidden = self.backbone({"features": all_fields, "condition": condition,
                            "domain": domain}, training=training)
    logits = self.head(hidden)
    out["logits"] = logits
    out["probability"] = tf.sigmoid(logits)
    return out

  def _loss_terms(self, inputs, training: bool):
    features, labels = inputs
    out = self(features, training=training)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    global_batch = tf.cast(tf.shape(labels)[0] * replicas, tf.float32)
    labels = tf.reshape(tf.cast(labels, tf.float32), [-1, 1])
    bce = self.task(labels, out["logits"], training=training) / global_batch
    regularization = tf.add_n([tf.constant(0.0)] + [tf.reduce_sum(l) for l in
                                                     self.losses]) / replicas
    return bce, regularization

  def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
    bce, _ = self._loss_terms(inputs, training)
    return bce

  def train_step(self, inputs):
    with tf.GradientTape() as tape:
      bce, regularization = self._loss_terms(inputs, training=True)
      total = bce + regularization
    gradients = tape.gradient(total, self.trainable_variables)
    self.optimizer.apply_gradients(
        (g, v) for g, v in zip(gradients, self.trainable_variables) if g is not None)
    return self._report(bce, regularization)

  def test_step(self, inputs):
    bce, regularization = self._loss_terms(inputs, training=False)
    return self._report(bce, regularization)

  def _report(self, bce, regularization):
    """Metric results and the losses summed over replicas (each holds its share)."""
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
      bce, regularization = context.all_reduce("sum", [bce, regularization])
    metrics = {m.name: m.result() for m in self.metrics}
    metrics.update(loss=bce, regularization_loss=regularization,
                   total_loss=bce + regularization)
    return metrics
