"""The CTR model: spec embeddings -> (HMDRR) -> backbone -> sigmoid head, as a tfrs.Model.

Loss is BCE through `tfrs.tasks.Ranking` with SUM reduction divided by the global batch,
plus the quantization losses divided by the number of replicas, so the gradient is the
same on one device and under any tf.distribute strategy.
"""
from typing import Any, Dict, Mapping, Optional

import tensorflow as tf
import tensorflow_recommenders as tfrs

from hmdn.features import spec as spec_lib
from hmdn.models.backbones import BACKBONES
from hmdn.models.embedding import FeatureEmbeddings
from hmdn.models.hierarchical import (EXPLICIT, IMPLICIT,
                                      HierarchicalDistributionRepresentation)
from hmdn.models.registry import ModelConfig

# The losses a step reports (as their means over the epoch so far).
LOSSES = ("loss", "regularization_loss", "total_loss", "aux_loss")


class CTRModel(tfrs.Model):
  """Click-through-rate model built from a feature spec and a `ModelConfig`.

  `call(features)` takes raw inputs keyed by field name and returns
  {"logits": [batch, 1], "probability": [batch, 1]} plus, for HMDN models,
  "codes": [batch, views * num_levels] int32 (and "codes_<view>": [batch, num_levels]).
  The backbone's condition is `config.condition` (coarsest distribution field, all of
  them, or their cross); HMDN variants add s_D to it (or use s_D alone).
  """

  def __init__(self, spec: spec_lib.FeatureSpec, vocab_dir: str,
               numeric_moments: Optional[Mapping[str, Mapping[str, float]]],
               config: ModelConfig, tables_dir: Optional[str] = None):
    super().__init__()
    # Raw numeric features stay float32 under a mixed precision policy (each layer
    # computes in the policy dtype; the embeddings normalise the raw values first).
    self._autocast = False
    # Step outputs below are already global (metric results, all-reduced losses), so
    # Keras reports the first replica's copy instead of summing them ("auto" may sum).
    self.distribute_reduction_method = "first"
    config.validate()
    if len(spec.labels) > 1:
      raise ValueError(
          f"spec {spec.source} has {len(spec.labels)} labels "
          f"({', '.join(f.name for f in spec.labels)}): the models train one task; "
          "give the others role: passthrough to train on the first")
    self.config = config
    self.feature_spec = spec
    self.embeddings = FeatureEmbeddings(spec.to_dict(), vocab_dir, numeric_moments,
                                        tables_dir=tables_dir, name="embeddings")
    self._distribution_fields = [f.name for f in spec.distribution_fields]
    embedded = [f.name for f in spec.embedded_fields]
    unknown = sorted(set(config.implicit_fields) - set(embedded))
    if unknown:
      raise ValueError(f"implicit_fields: {unknown} are not embedded fields of spec "
                       f"{spec.source}; embedded: {embedded}")
    self._implicit_fields = (list(config.implicit_fields) or
                             [f.name for f in spec.implicit_view_fields])
    backbone_cls = BACKBONES[config.backbone]
    reads_condition = backbone_cls.reads_condition
    if not self._distribution_fields and (
        reads_condition or (config.is_hmdn and config.hmdrr.extraction != "implicit")):
      raise ValueError(
          f"model {config.name!r} needs at least one distribution field "
          f"(distribution_level) in spec {spec.source}")
    self.num_domains = (self.embeddings.num_ids[self._distribution_fields[0]]
                        if self._distribution_fields else 1)
    self.cross_embedding = None
    if config.condition == "cross" and self._distribution_fields:
      self.cross_embedding = tf.keras.layers.Embedding(
          config.cross_buckets, config.cross_dim, name="cross_condition_embedding",
          embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.05))
    self.hierarchy = None
    self.aux_head = None
    if config.is_hmdn:
      self.hierarchy = HierarchicalDistributionRepresentation(
          config.hmdrr, seed=config.seed, name="hierarchy")
      if IMPLICIT in self.hierarchy.views and config.aux_weight > 0:
        # The implicit view's reason to encode distribution: its s_D alone must
        # predict the click, so its codes separate groups that click differently.
        self.aux_head = tf.keras.layers.Dense(1, name="implicit_aux_logit",
                                              dtype="float32")
    self.backbone = backbone_cls(num_domains=self.num_domains,
                                 output_dim=config.output_dim,
                                 name=f"backbone_{config.backbone}",
                                 **config.backbone_kwargs)
    # Under a mixed precision policy the logit and the sigmoid stay float32.
    self.head = tf.keras.layers.Dense(1, name="logit", dtype="float32")
    self.task = tfrs.tasks.Ranking(
        loss=tf.keras.losses.BinaryCrossentropy(
            from_logits=True, reduction=tf.keras.losses.Reduction.SUM),
        metrics=[tf.keras.metrics.AUC(from_logits=True, name="auc")])
    # The reported losses are means since the epoch's start (Keras resets `metrics`
    # each epoch), so the epoch's logs hold the epoch's mean, not the last batch's
    # loss. Not tracked: checkpoints keep the same variables as before.
    object.__setattr__(self, "loss_means", {
        name: tf.keras.metrics.Mean(name=name) for name in LOSSES})

  def _cross_ids(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Hash bucket of the joined ids of every distribution field: [batch]."""
    derived = self.embeddings.derived_values(features)
    ids = []
    for name in self._distribution_fields:
      values = derived[name] if name in derived else features[name]
      ids.append(tf.strings.as_string(self.embeddings.ids(name, values)))
    joined = tf.strings.join(ids, separator="|")
    return tf.strings.to_hash_bucket_fast(joined, self.config.cross_buckets)

  def backbone_condition(self, features: Mapping[str, tf.Tensor],
                         embedded: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """The backbone's own condition (`ModelConfig.condition`): [batch, C]."""
    fields = self._distribution_fields
    if self.config.condition == "coarsest":
      return embedded[fields[0]]
    if self.config.condition == "all":
      return tf.concat([embedded[n] for n in fields], -1)
    return self.cross_embedding(self._cross_ids(features))

  def _view_inputs(self, embedded: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    inputs = {IMPLICIT: tf.concat([embedded[n] for n in self._implicit_fields], -1)}
    if self._distribution_fields:
      inputs[EXPLICIT] = tf.concat([embedded[n] for n in self._distribution_fields],
                                   -1)
    return inputs

  def call(self, features: Mapping[str, tf.Tensor], training: bool = False
           ) -> Dict[str, tf.Tensor]:
    embedded = self.embeddings(features)
    all_fields = tf.concat([embedded[f.name] for f in self.feature_spec.embedded_fields],
                           -1)
    if self._distribution_fields:
      condition = self.backbone_condition(features, embedded)
      domain = self.embeddings.ids(self._distribution_fields[0],
                                   features[self._distribution_fields[0]])
    else:
      condition = tf.zeros_like(all_fields[:, :1])
      domain = tf.zeros_like(all_fields[:, 0], dtype=tf.int32)
    out = {}
    if self.hierarchy is not None:
      h = self.hierarchy(self._view_inputs(embedded), training=training)
      representation = tf.cast(h["representation"], condition.dtype)  # float32 s_D
      condition = (representation if self.config.hmdn_condition ==
                   "hierarchical_only" else tf.concat([condition, representation], -1))
      out.update({k: v for k, v in h.items() if k.startswith("codes")})
      if self.aux_head is not None:  # called on every call so its weights exist
        # from the first (inference) call on, when the optimizer is built.
        out["aux_logits"] = self.aux_head(h[f"representation_{IMPLICIT}"])
    hidden = self.backbone({"features": all_fields, "condition": condition,
                            "domain": domain}, training=training)
    logits = self.head(hidden)
    out["logits"] = logits
    out["probability"] = tf.sigmoid(logits)
    return out

  def code_diagnostics(self, features: Mapping[str, tf.Tensor]
                       ) -> Dict[str, Dict[str, Any]]:
    """Per-view quantizer health on a fixed probe batch (raw features), for the
    trainer to log outside the training step: {view: {residual_ratio, perplexity,
    dead_codes, flip_share: [D]}} (`ResidualQuantizer.diagnostics`). Empty for
    baselines. Eager; updates no model variable."""
    if self.hierarchy is None:
      return {}
    return self.hierarchy.diagnostics(self._view_inputs(self.embeddings(features)))

  def _loss_terms(self, inputs, training: bool):
    """(BCE, auxiliary CTR loss of the implicit view, quantization losses), each
    already scaled so replicas' gradients add up to the global batch's."""
    features, labels = inputs
    out = self(features, training=training)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    global_batch = tf.cast(tf.shape(labels)[0] * replicas, tf.float32)
    labels = tf.reshape(tf.cast(labels, tf.float32), [-1, 1])
    bce = self.task(labels, out["logits"], training=training) / global_batch
    aux = tf.constant(0.0)
    if self.aux_head is not None:
      aux_logits = out["aux_logits"]
      aux = self.config.aux_weight * tf.reduce_sum(
          tf.nn.sigmoid_cross_entropy_with_logits(labels, aux_logits)) / global_batch
    regularization = tf.add_n([tf.constant(0.0)] + [tf.reduce_sum(l) for l in
                                                     self.losses]) / replicas
    return bce, aux, regularization

  def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
    bce, _, _ = self._loss_terms(inputs, training)
    return bce

  def train_step(self, inputs):
    with tf.GradientTape() as tape:
      bce, aux, regularization = self._loss_terms(inputs, training=True)
      total = bce + aux + regularization
      # mixed_float16: compile() wraps the optimizer in a LossScaleOptimizer.
      scaled = isinstance(self.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
      if scaled:
        total = self.optimizer.get_scaled_loss(total)
    gradients = tape.gradient(total, self.trainable_variables)
    if scaled:
      gradients = self.optimizer.get_unscaled_gradients(gradients)
    self.optimizer.apply_gradients(
        (g, v) for g, v in zip(gradients, self.trainable_variables) if g is not None)
    return self._report(bce, aux, regularization)

  def test_step(self, inputs):
    return self._report(*self._loss_terms(inputs, training=False))

  @property
  def metrics(self):
    return super().metrics + list(self.loss_means.values())

  def _report(self, bce, aux, regularization):
    """Metric results and the losses' means since the epoch began, each batch's loss
    summed over replicas first (each holds its share): loss (BCE), aux_loss (implicit
    view's CTR head), regularization_loss (quantization), total_loss."""
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
      bce, aux, regularization = context.all_reduce("sum", [bce, aux, regularization])
    batch = {"loss": bce, "regularization_loss": regularization,
             "total_loss": bce + aux + regularization, "aux_loss": aux}
    for name, mean in self.loss_means.items():
      mean.update_state(batch[name])
    metrics = {m.name: m.result() for m in super().metrics}
    metrics.update({name: mean.result() for name, mean in self.loss_means.items()
                    if name != "aux_loss" or self.aux_head is not None})
    return metrics
