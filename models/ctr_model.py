"""The CTR model: spec embeddings -> (HMDRR) -> backbone -> head(s), as a tfrs.Model.

One label: a sigmoid head, its BCE through `tfrs.tasks.Ranking`. Several labels
(`models/tasks.py`): a tower and logit per task, ESMM's entire-space product for a task
observed after another. Each BCE is a SUM divided by the global batch (the masked CVR
loss: by the global count of prerequisite positives), the quantization losses divided by
the number of replicas, so the gradient is the same on one device and under any
tf.distribute strategy.
"""
from typing import Any, Dict, Mapping, Optional

import tensorflow as tf
import tensorflow_recommenders as tfrs

from hmdn.features import spec as spec_lib
from hmdn.models import tasks as tasks_lib
from hmdn.models.backbones import BACKBONES
from hmdn.models.backbones.base import branch_count, branch_ids
from hmdn.models.embedding import FeatureEmbeddings
from hmdn.models.hierarchical import (EXPLICIT, IMPLICIT,
                                      HierarchicalDistributionRepresentation)
from hmdn.models.mlp import GroupedMLP
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

  With several tasks, also "logits_<task>" and "probability_<task>" for each (over
  every impression; "logits"/"probability" are the first task's), for a task after
  another "probability_<task>_given_<prerequisite>" (its head: p(cvr)), and for HMDN
  "codes_by_task": [batch, tasks, views * num_levels]. The task is then a level of the
  hierarchy: the explicit view reads a task embedding with the distribution fields, so
  each task has its own s_D and codes and the backbone runs once per (example, task)
  with its task's condition ("codes" are the first task's). A backbone whose branches
  are tasks (`Backbone.task_branches`: MMoE, PLE, ESMM) runs the branch of each task.
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
    self.config = config
    self.tasks = tasks_lib.tasks_of(spec)
    self.num_tasks = len(self.tasks)
    self.feature_spec = spec
    self.embeddings = FeatureEmbeddings(
        spec.to_dict(), vocab_dir, numeric_moments, tables_dir=tables_dir,
        sequence_pooling=config.sequence_pooling,
        din_normalization=config.din_normalization, din_units=config.din_units,
        name="embeddings")
    self._distribution_fields = [f.name for f in spec.distribution_fields]
    # Every embedded field; a sequence's interest vector unless sequence_pooling=none.
    embedded = self.embeddings.output_fields
    self._embedded_fields = embedded
    unknown = sorted(set(config.implicit_fields) - set(embedded))
    if unknown:
      raise ValueError(f"implicit_fields: {unknown} are not embedded fields of spec "
                       f"{spec.source} (with --sequence_pooling="
                       f"{config.sequence_pooling}); embedded: {embedded}")
    self._implicit_fields = (list(config.implicit_fields) or
                             [f.name for f in spec.implicit_view_fields
                              if f.name in embedded] or embedded)
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
    self._task_branches = backbone_cls.task_branches
    self.backbone = backbone_cls(
        num_domains=branch_count(self._task_branches, self.num_domains, self.num_tasks),
        output_dim=config.output_dim, name=f"backbone_{config.backbone}",
        **config.backbone_kwargs)
    # Several tasks run the backbone once per (example, task) when a task changes its
    # input: its own branch, or (HMDN) its own s_D in the condition.
    self._per_task_backbone = self.num_tasks > 1 and (
        bool(self._task_branches) or config.is_hmdn)
    if self._per_task_backbone:
      self.backbone.feature_copies = self.num_tasks
    self.task_embedding = None
    if self.num_tasks > 1 and self.hierarchy is not None and (
        EXPLICIT in self.hierarchy.views):
      self.task_embedding = tf.keras.layers.Embedding(
          self.num_tasks, config.task_dim, name="task_embedding",
          embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.05))
    # Under a mixed precision policy the logits and the sigmoids stay float32.
    if self.num_tasks == 1:
      self.head = tf.keras.layers.Dense(1, name="logit", dtype="float32")
      self.task = tfrs.tasks.Ranking(
          loss=tf.keras.losses.BinaryCrossentropy(
              from_logits=True, reduction=tf.keras.losses.Reduction.SUM),
          metrics=[tf.keras.metrics.AUC(from_logits=True, name="auc")])
    else:
      self.task_heads = GroupedMLP(self.num_tasks, list(config.task_tower_units) + [1],
                                   output_activation=None, name="task_heads",
                                   dtype="float32")
    # The reported losses are means since the epoch's start (Keras resets `metrics`
    # each epoch), so the epoch's logs hold the epoch's mean, not the last batch's
    # loss. Not tracked: checkpoints keep the same variables as before.
    loss_names = list(LOSSES)
    if self.num_tasks > 1:
      loss_names += [f"loss_{t.name}" for t in self.tasks]
    object.__setattr__(self, "loss_means", {
        name: tf.keras.metrics.Mean(name=name) for name in loss_names})
    # Several tasks: an AUC per task over every impression ("auc" is the first task's),
    # and for a task after another its AUC over the prerequisite's positives (CVR).
    aucs = {}
    if self.num_tasks > 1:
      for t in self.tasks:
        aucs["auc" if t.index == 0 else f"auc_{t.name}"] = tf.keras.metrics.AUC(
            name="auc" if t.index == 0 else f"auc_{t.name}")
        if t.after is not None:
          aucs[f"auc_{t.given}"] = tf.keras.metrics.AUC(name=f"auc_{t.given}")
    object.__setattr__(self, "task_aucs", aucs)

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
    """The views' inputs; with several tasks, one row per (task, example), task-major,
    the explicit view reading the task's embedding too."""
    inputs = {IMPLICIT: tf.concat([embedded[n] for n in self._implicit_fields], -1)}
    if self._distribution_fields:
      inputs[EXPLICIT] = tf.concat([embedded[n] for n in self._distribution_fields],
                                   -1)
    if not self._per_task_backbone:
      return inputs
    inputs = {view: self._fold(x) for view, x in inputs.items()}
    if self.task_embedding is not None:
      batch = tf.shape(inputs[EXPLICIT])[0] // self.num_tasks
      task_ids = tf.repeat(tf.range(self.num_tasks), batch)
      task = tf.cast(self.task_embedding(task_ids), inputs[EXPLICIT].dtype)
      inputs[EXPLICIT] = tf.concat([inputs[EXPLICIT], task], -1)
    return inputs

  def _fold(self, x: tf.Tensor) -> tf.Tensor:
    """[B, ...] -> [tasks * B, ...]: the batch once per task, task-major."""
    return tf.concat([x] * self.num_tasks, 0)

  def _unfold(self, x: tf.Tensor) -> tf.Tensor:
    """[tasks * B, ...] -> [B, tasks, ...]."""
    x = tf.reshape(x, tf.concat([[self.num_tasks, -1], tf.shape(x)[1:]], 0))
    return tf.transpose(x, [1, 0] + list(range(2, x.shape.rank)))

  def call(self, features: Mapping[str, tf.Tensor], training: bool = False
           ) -> Dict[str, tf.Tensor]:
    embedded = self.embeddings(features)
    all_fields = tf.concat([embedded[n] for n in self._embedded_fields], -1)
    if self._distribution_fields:
      condition = self.backbone_condition(features, embedded)
      domain = self.embeddings.ids(self._distribution_fields[0],
                                   features[self._distribution_fields[0]])
    else:
      condition = tf.zeros_like(all_fields[:, :1])
      domain = tf.zeros_like(all_fields[:, 0], dtype=tf.int32)
    if self._per_task_backbone:
      branches = tf.concat([branch_ids(self._task_branches, domain, t, self.num_domains)
                            for t in range(self.num_tasks)], 0)
      all_fields, condition = self._fold(all_fields), self._fold(condition)
    else:
      branches = branch_ids(self._task_branches, domain, 0, self.num_domains)
    out = {}
    if self.hierarchy is not None:
      h = self.hierarchy(self._view_inputs(embedded), training=training)
      representation = tf.cast(h["representation"], condition.dtype)  # float32 s_D
      condition = (representation if self.config.hmdn_condition ==
                   "hierarchical_only" else tf.concat([condition, representation], -1))
      codes = {k: v for k, v in h.items() if k.startswith("codes")}
      if self._per_task_backbone and codes:
        out["codes_by_task"] = self._unfold(codes["codes"])
        codes = {k: self._unfold(v)[:, 0] for k, v in codes.items()}
      out.update(codes)
      if self.aux_head is not None:  # called on every call so its weights exist
        # from the first (inference) call on, when the optimizer is built.
        implicit = h[f"representation_{IMPLICIT}"]
        if self._per_task_backbone:
          implicit = self._unfold(implicit)[:, 0]  # the same for every task
        out["aux_logits"] = self.aux_head(implicit)
    hidden = self.backbone({"features": all_fields, "condition": condition,
                            "domain": branches}, training=training)
    if self.num_tasks == 1:
      logits = self.head(hidden)
      out["logits"] = logits
      out["probability"] = tf.sigmoid(logits)
      return out
    if self._per_task_backbone:
      hidden = self._unfold(hidden)  # [B, tasks, output_dim]
    out.update(self._task_outputs(self.task_heads(hidden, training=training)[..., 0]))
    return out

  def _task_outputs(self, head_logits: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Each task's logit and probability over every impression ([B, 1]; for a task
    after another the entire-space product), its head's conditional ones, and
    "head_logits" [B, tasks] for the loss."""
    out = {"head_logits": head_logits}
    log_p = tasks_lib.log_probabilities(self.tasks, head_logits)
    for t in self.tasks:
      own = head_logits[:, t.index:t.index + 1]
      if t.after is None:
        out[f"logits_{t.name}"] = own
      else:
        out[f"logits_{t.name}"] = tasks_lib.logit_of_log_probability(log_p[t.name])[:, None]
        out[f"logits_{t.given}"] = own
        out[f"probability_{t.given}"] = tf.sigmoid(own)
      out[f"probability_{t.name}"] = tf.exp(log_p[t.name])[:, None]
    first = self.tasks[0].name
    out["logits"], out["probability"] = out[f"logits_{first}"], out[f"probability_{first}"]
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
    """(BCE, auxiliary CTR loss of the implicit view, quantization losses, {task:
    BCE} with several tasks), each already scaled so replicas' gradients add up to
    the global batch's."""
    features, labels = inputs
    out = self(features, training=training)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if self.num_tasks == 1:
      first = labels
    else:
      missing = [t.name for t in self.tasks if t.name not in labels]
      if missing:
        raise ValueError(f"labels {sorted(labels)} lack tasks {missing}")
      first = labels[self.tasks[0].name]
    global_batch = tf.cast(tf.shape(first)[0] * replicas, tf.float32)
    first = tf.reshape(tf.cast(first, tf.float32), [-1, 1])
    per_task = {}
    if self.num_tasks == 1:
      bce = self.task(first, out["logits"], training=training) / global_batch
    else:
      per_task = self._task_losses(out, labels, global_batch)
      bce = tf.add_n(list(per_task.values()))
    aux = tf.constant(0.0)
    if self.aux_head is not None:
      aux_logits = out["aux_logits"]
      aux = self.config.aux_weight * tf.reduce_sum(
          tf.nn.sigmoid_cross_entropy_with_logits(first, aux_logits)) / global_batch
    regularization = tf.add_n([tf.constant(0.0)] + [tf.reduce_sum(l) for l in
                                                     self.losses]) / replicas
    return bce, aux, regularization, per_task

  def _task_losses(self, out, labels, global_batch) -> Dict[str, tf.Tensor]:
    """Each task's BCE share of this replica, and the AUC metrics' update.

    A task after another: `cvr_loss` entire = BCE of p(ctcvr) over all rows (ESMM),
    masked = BCE of its head over the prerequisite's positives, divided by their
    global count (EasyRec's masked loss), both = the sum.
    """
    y = {t.name: tf.reshape(tf.cast(labels[t.name], tf.float32), [-1]) for t in self.tasks}
    head_logits = out["head_logits"]
    log_p = tasks_lib.log_probabilities(self.tasks, head_logits)
    losses = {}
    for t in self.tasks:
      own = head_logits[:, t.index]
      if t.after is None:
        losses[t.name] = tf.reduce_sum(
            tf.nn.sigmoid_cross_entropy_with_logits(y[t.name], own)) / global_batch
        continue
      mask = y[t.after_name]
      loss = tf.constant(0.0)
      if self.config.cvr_loss in ("entire", "both"):
        loss += tf.reduce_sum(tasks_lib.bce_of_log_probability(
            y[t.name], log_p[t.name])) / global_batch
      if self.config.cvr_loss in ("masked", "both"):
        loss += tf.reduce_sum(mask * tf.nn.sigmoid_cross_entropy_with_logits(
            y[t.name], own)) / tf.maximum(_global_sum(tf.reduce_sum(mask)), 1.0)
      losses[t.name] = loss
      self.task_aucs[f"auc_{t.given}"].update_state(y[t.name], tf.sigmoid(own),
                                                    sample_weight=mask)
    for t in self.tasks:
      self.task_aucs["auc" if t.index == 0 else f"auc_{t.name}"].update_state(
          y[t.name], tf.exp(log_p[t.name]))
    return losses

  def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
    return self._loss_terms(inputs, training)[0]

  def train_step(self, inputs):
    with tf.GradientTape() as tape:
      bce, aux, regularization, per_task = self._loss_terms(inputs, training=True)
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
    return self._report(bce, aux, regularization, per_task)

  def test_step(self, inputs):
    return self._report(*self._loss_terms(inputs, training=False))

  @property
  def metrics(self):
    return (super().metrics + list(self.task_aucs.values()) +
            list(self.loss_means.values()))

  def _report(self, bce, aux, regularization, per_task):
    """Metric results and the losses' means since the epoch began, each batch's loss
    summed over replicas first (each holds its share): loss (BCE, of every task),
    aux_loss (implicit view's CTR head), regularization_loss (quantization),
    total_loss, and with several tasks loss_<task>."""
    names = list(per_task)
    terms = [bce, aux, regularization] + [per_task[n] for n in names]
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
      terms = context.all_reduce("sum", terms)
    bce, aux, regularization = terms[:3]
    batch = {"loss": bce, "regularization_loss": regularization,
             "total_loss": bce + aux + regularization, "aux_loss": aux}
    batch.update({f"loss_{n}": v for n, v in zip(names, terms[3:])})
    for name, mean in self.loss_means.items():
      mean.update_state(batch[name])
    metrics = {m.name: m.result() for m in super().metrics}
    metrics.update({name: m.result() for name, m in self.task_aucs.items()})
    metrics.update({name: mean.result() for name, mean in self.loss_means.items()
                    if name != "aux_loss" or self.aux_head is not None})
    return metrics


def _global_sum(value: tf.Tensor) -> tf.Tensor:
  """A replica's value summed over the replicas (itself outside a strategy)."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return value
  return context.all_reduce("sum", value)
