"""The HMDN residual vector quantizer layer (HMDRR: hierarchical
multi-distribution residual representation), fused over views: its
variables, the training step that warms up, seeds and updates them, and the
outputs. The chain, the seeding and the codebook updates are in the sibling
modules."""
import dataclasses
from typing import Dict, List, NamedTuple, Optional

import numpy as np
import tensorflow as tf

from hmdn.features.options import with_values
from hmdn.models.quantizer import chain as chain_lib
from hmdn.models.quantizer import health
from hmdn.models.quantizer import seeding
from hmdn.models.quantizer import updates
from hmdn.models.quantizer.config import QuantizerConfig

OPTION_NAMES = tuple(f.name for f in dataclasses.fields(QuantizerConfig))


class Step(NamedTuple):
  """What a call quantized, from `_train_step` or inference alike."""
  codes: tf.Tensor  # [B, V, D] int32
  residuals: List[tf.Tensor]  # per level its input r_{l-1} [B, V, d]
  partial_sums: tf.Tensor  # s_1..s_D [B, V, D, d]
  total: tf.Tensor  # s_D [B, V, d]
  squares: tf.Tensor  # the commitment sum, gradient into x
  live: tf.Tensor  # the codebooks' value (loss mode: gradient to the variable)
  active: tf.Tensor  # bool: seeded, so x was quantized


@tf.keras.utils.register_keras_serializable(package="hmdn")
class ResidualQuantizer(tf.keras.layers.Layer):
  """Multi-level residual vector quantizer (HMDN arXiv 2408.01332, HMDRR).

  Level l picks the code of codebook l nearest to the residual left by levels
  1..l-1 (r_0 = x, r_l = r_{l-1} - e_l[c_l]); the partial sums
  s_l = e_1[c_1] + ... + e_l[c_l] describe x from coarse to fine and s_D is the
  hierarchical representation, passed on with straight-through gradients.

  Several views are quantized at once: inputs [batch, views, d] get one
  codebook set per view ([views, books, K, d]) and each level is ONE distance
  computation for all views. Inputs [batch, d] are a single view (no views
  axis in the variables or outputs).

  Settling: for `warmup_steps` training calls x passes through unquantized
  (codes 0, no commitment loss) while a ring buffer of `buffer_size` real
  vectors fills; then the codebooks are seeded by k-means (k-means++ and
  `kmeans_iterations` Lloyd iterations) on the buffer, level by level on the
  residuals. After that they are learnt by EMA (Laplace smoothing) or by the
  VQ-VAE codebook loss; a code no row chose for `restart_after_steps` steps is
  restarted to a random residual of the current global batch at its level.

  Args:
    config: the options (`QuantizerConfig`: num_levels D, codebook_size K,
      shared_codebook, codebook_update "ema" or "loss", decay, beta,
      commitment_weight, warmup_steps, kmeans_iterations, restart_after_steps,
      buffer_size); None = its defaults.
    epsilon: Laplace smoothing of the EMA counts.
    seed: seed of the stateless random ops.
    **kwargs: any `QuantizerConfig` option by name (over `config`), and the base
      Layer arguments.

  Variables (all replica-synchronised under tf.distribute; shapes shown for
  view inputs, without the leading `views` axis for [batch, d] inputs):
    codebooks [views, books, K, d] (books = 1 if shared else D), ema_counts
    [views, books, K] (code usage), ema_sums [views, books, K, d] ("ema"),
    last_used [views, books, K] step each code was last chosen, buffer
    [views, buffer_size, d] and buffer_rows (seeding), initialized, step.
  """

  def __init__(self, config: Optional[QuantizerConfig] = None, epsilon: float = 1e-5,
               seed: int = 0, **kwargs):
    options = {k: kwargs.pop(k) for k in OPTION_NAMES if k in kwargs}
    super().__init__(**kwargs)
    self.config = with_values(config or QuantizerConfig(), options).validate()
    if not float(epsilon) >= 0.0:
      raise ValueError(f"`epsilon` must be >= 0, got {epsilon!r}.")
    self.epsilon = float(epsilon)
    self.seed = int(seed)
    self._num_books = 1 if self.config.shared_codebook else self.config.num_levels
    self._probe_codes = None  # diagnostics(): codes of the previous call

  # -- shapes -----------------------------------------------------------------
  def _check_shape(self, shape):
    shape = tf.TensorShape(shape)
    expected = getattr(self, "_input_shape_text", "[batch_size, dim] or "
                       "[batch_size, views, dim]")
    ok = shape.rank in (2, 3) and shape[-1] is not None and (
        shape.rank == 2 or shape[1] is not None)
    if ok and self.built:
      ok = (shape.rank == (2 if self._single else 3) and shape[-1] == self._dim
            and (self._single or shape[1] == self._views))
    if not ok:
      raise ValueError(f"ResidualQuantizer expects inputs of shape {expected} "
                       f"with known trailing dimensions, received shape {shape}.")

  def _lead(self, *dims):
    return tuple(dims) if self._single else (self._views,) + tuple(dims)

  def build(self, input_shape):
    self._check_shape(input_shape)
    shape = tf.TensorShape(input_shape)
    self._single = shape.rank == 2
    self._views = 1 if self._single else int(shape[1])
    self._dim = int(shape[-1])
    self._input_shape_text = (f"[batch_size, {self._dim}]" if self._single else
                              f"[batch_size, {self._views}, {self._dim}]")
    books, size, dim = self._num_books, self.config.codebook_size, self._dim
    # Assignments happen in replica context; ONLY_FIRST_REPLICA lets them
    # (and the values are computed identically on every replica anyway).
    sync = dict(synchronization=tf.VariableSynchronization.ON_WRITE,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.codebooks = self.add_weight(
        "codebooks", shape=self._lead(books, size, dim),
        initializer=tf.keras.initializers.RandomNormal(
            stddev=0.01, seed=self.seed),
        trainable=self.config.codebook_update == "loss", **sync)
    self.ema_counts = self.add_weight(
        "ema_counts", shape=self._lead(books, size), initializer="zeros",
        trainable=False, **sync)
    self.ema_sums = None
    if self.config.codebook_update == "ema":
      self.ema_sums = self.add_weight(
          "ema_sums", shape=self._lead(books, size, dim), initializer="zeros",
          trainable=False, **sync)
    self.last_used = self.add_weight(
        "last_used", shape=self._lead(books, size), dtype=tf.int64,
        initializer="zeros", trainable=False, **sync)
    self.buffer = self.add_weight(
        "buffer", shape=self._lead(self.config.buffer_size, dim), initializer="zeros",
        trainable=False, **sync)
    self.buffer_rows = self.add_weight(
        "buffer_rows", shape=(), dtype=tf.int64, initializer="zeros",
        trainable=False, **sync)
    self.initialized = self.add_weight(
        "initialized", shape=(), dtype=tf.bool, initializer="zeros",
        trainable=False, **sync)
    self.step = self.add_weight(
        "step", shape=(), dtype=tf.int64, initializer="zeros",
        trainable=False, **sync)
    super().build(input_shape)

  def _read(self, variable) -> tf.Tensor:
    """A variable's value with the views axis in front."""
    value = tf.convert_to_tensor(variable)
    return value[None] if self._single else value

  def _write(self, value: tf.Tensor) -> tf.Tensor:
    return value[0] if self._single else value

  def _book(self, level: int) -> int:
    return chain_lib.book_of(level, self._num_books)

  def _kmeans_init(self, points: tf.Tensor, valid: tf.Tensor, seed):
    return seeding.kmeans_init(
        points, valid, seed, num_levels=self.config.num_levels,
        codebook_size=self.config.codebook_size,
        shared_codebook=self.config.shared_codebook,
        kmeans_iterations=self.config.kmeans_iterations)

  def _train_step(self, x: tf.Tensor) -> Step:
    """Warm-up (buffer), seeding or codebook update from the global batch;
    quantizes x with the codebooks as they were at the start of the step
    (or as just seeded)."""
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync == 1:
      context = None  # nothing to synchronise (e.g. the default strategy)

    def all_gather(value):  # identity in cross-replica or single-replica use
      return value if context is None else context.all_gather(value, axis=0)

    def all_reduce(value):
      return (value if context is None else
              context.all_reduce(tf.distribute.ReduceOp.SUM, value))

    step = tf.convert_to_tensor(self.step)
    seed = tf.stack([tf.constant(self.seed, tf.int64), step])
    was_initialized = tf.convert_to_tensor(self.initialized)
    seed_now = tf.logical_and(tf.logical_not(was_initialized),
                              step >= self.config.warmup_steps)
    active = tf.logical_or(was_initialized, seed_now)
    variable = self._read(self.codebooks)
    global_x = all_gather(tf.stop_gradient(x))  # [N, V, d]
    num_rows = tf.shape(global_x, out_type=tf.int64)[0]
    buffer_rows = tf.convert_to_tensor(self.buffer_rows)

    def fill_buffer():  # ring buffer of the latest rows
      rows = tf.transpose(global_x, (1, 0, 2))[:, -self.config.buffer_size:]
      n = tf.shape(rows, out_type=tf.int64)[1]
      at = (buffer_rows + tf.range(n)) % self.config.buffer_size
      values = tf.transpose(self._read(self.buffer), (1, 0, 2))
      values = tf.tensor_scatter_nd_update(
          values, at[:, None], tf.transpose(rows, (1, 0, 2)))
      return tf.transpose(values, (1, 0, 2)), buffer_rows + n

    buffer, new_buffer_rows = tf.cond(
        was_initialized, lambda: (self._read(self.buffer), buffer_rows),
        fill_buffer)
    valid = tf.range(self.config.buffer_size, dtype=tf.int64) < new_buffer_rows
    # The seeding runs once; as a call that is not inlined, the branch not
    # taken on every later step is one node, not the unrolled k-means.
    kmeans = tf.function(self._kmeans_init, autograph=False,
                         experimental_attributes={"_noinline": True})
    books = tf.stop_gradient(tf.cond(
        seed_now, lambda: kmeans(buffer, valid, seed), lambda: variable))
    # The chain sees no gradient: the commitment, the only gradient into x,
    # gets its value from the chain and its gradient 2 sum_l (x - s_l)
    # (r_l = x - sg(s_l)) as one product, not back through every level.
    chain = chain_lib.quantize(tf.stop_gradient(x), books, self.config.num_levels,
                               exact=False)
    counts, sums = chain_lib.statistics(
        chain.rows, chain.inputs, views=self._views, num_books=self._num_books,
        codebook_size=self.config.codebook_size)
    codes, residuals = chain.codes, chain.inputs
    @tf.custom_gradient
    def commitment_sum(x):
      return chain.squares, lambda dy: (2.0 * dy) * chain.residual_sum

    squares = commitment_sum(x)
    # Value of `books`, gradient (loss mode) into the variable.
    live = variable + tf.stop_gradient(books - variable)

    counts, sums = all_reduce((counts, sums))
    # Restart candidates: the global batch's level inputs [D, N, V, d]
    # (rearranged per book only inside the restart branch).
    # (A list of per-level tensors, stacked only when a code restarts.)
    pool = (residuals if context is None else
            context.all_gather(tf.stack(residuals), axis=1))
    ema_counts = self._read(self.ema_counts)
    ema_sums = (self._read(self.ema_sums) if self.ema_sums is not None
                else tf.zeros_like(variable))
    last_used = self._read(self.last_used)
    keep = lambda: (variable, ema_counts, ema_sums, last_used)  # noqa: E731
    new_books, new_counts, new_sums, new_last_used = tf.cond(
        was_initialized,
        lambda: updates.updated_state(
            books, counts, sums, pool, step,
            tf.random.experimental.stateless_fold_in(seed, self.config.num_levels),
            ema_counts, ema_sums, last_used,
            codebook_update=self.config.codebook_update, decay=self.config.decay,
            epsilon=self.epsilon,
            restart_after_steps=self.config.restart_after_steps,
            shared_codebook=self.config.shared_codebook),
        lambda: tf.cond(seed_now, lambda: updates.initial_state(
            books, num_rows, step, num_levels=self.config.num_levels,
            codebook_size=self.config.codebook_size), keep))
    # Every assignment sits outside control flow: under MirroredStrategy each
    # one is a cross-replica synchronisation point.
    assignments = [self.codebooks.assign(self._write(new_books)),
               self.ema_counts.assign(self._write(new_counts)),
               self.last_used.assign(self._write(new_last_used)),
               self.buffer.assign(self._write(buffer)),
               self.buffer_rows.assign(new_buffer_rows),
               self.initialized.assign(active),
               self.step.assign_add(1)]
    if self.ema_sums is not None:
      assignments.append(self.ema_sums.assign(self._write(new_sums)))
    with tf.control_dependencies(assignments):
      codes = tf.identity(codes)
    return Step(codes=codes, residuals=residuals,
                partial_sums=chain.partial_sums, total=chain.total,
                squares=squares, live=live, active=active)

  def call(self, inputs: tf.Tensor,
           training: bool = None) -> Dict[str, tf.Tensor]:
    """Quantizes a batch.

    Args:
      inputs: [batch_size, d] vectors x (one view) or [batch_size, views, d].
      training: if True, warms up / seeds / updates codebooks (variable
        updates); if False nothing is updated and each output row depends only
        on its input row.

    Returns (shapes for [batch_size, d] inputs; view inputs add a views axis
    after the batch):
      {"quantized": [batch_size, d] s_D with straight-through gradient to x
         (x itself before the codebooks are seeded),
       "partial_sums": [batch_size, D, d] s_1..s_D (no gradient),
       "codes": [batch_size, D] int32 code of each level}.
    """
    self._check_shape(inputs.shape)
    x = tf.cast(inputs, self.codebooks.dtype)
    if self._single:
      x = x[:, None]
    if tf.is_tensor(training) and tf.get_static_value(training) is not None:
      training = bool(tf.get_static_value(training))

    def infer():
      variable = self._read(self.codebooks)
      chain = chain_lib.quantize(x, tf.stop_gradient(variable),
                                 self.config.num_levels)
      return Step(codes=chain.codes, residuals=chain.inputs,
                  partial_sums=chain.partial_sums, total=chain.total,
                  squares=chain.squares, live=variable,
                  active=tf.convert_to_tensor(self.initialized))

    if tf.is_tensor(training):  # symbolic flag: default strategy only, as
      # MirroredStrategy cannot synchronise inside control flow.
      step = tf.cond(training, lambda: self._train_step(x), infer)
    elif training:
      step = self._train_step(x)
    else:
      step = infer()

    # Before seeding: x passes through, codes 0, partial sums 0, no loss.
    # (Level-major partial sums [D, B, V, d]; the transposed output is pruned
    # from a training step that does not read it.)
    codes = tf.where(step.active, step.codes, tf.zeros_like(step.codes))
    batch = tf.cast(tf.shape(x)[0], x.dtype)
    # ||r_{l-1} - sg(e_l)||^2 = ||x - sg(s_l)||^2, gradient into x only;
    # mean over rows and levels, summed over views.
    on = tf.cast(step.active, x.dtype)
    commitment = on * step.squares / (batch * self.config.num_levels)
    self.add_loss(self.config.commitment_weight * self.config.beta * commitment)
    if self.config.codebook_update == "loss":
      size, books = self.config.codebook_size, self._num_books
      index = (tf.transpose(codes, (2, 0, 1)) +
               tf.range(self._views) * books * size +
               tf.constant([self._book(l) * size
                            for l in range(self.config.num_levels)])[:, None, None])
      chosen = tf.gather(tf.reshape(step.live, (-1, self._dim)), index)
      codebook_loss = on * tf.reduce_sum(tf.square(
          tf.stop_gradient(tf.stack(step.residuals)) - chosen)) / (batch * self.config.num_levels)
      self.add_loss(self.config.commitment_weight * codebook_loss)
    # x + sg(s_D - x) once seeded, x before (a 0/1 factor, not a select: the
    # gradient is the identity either way, with no select in the backward).
    quantized = x + tf.stop_gradient(on * (step.total - x))
    partial_sums = tf.where(step.active, step.partial_sums, 0.0)
    out = {"quantized": quantized,
           "partial_sums": tf.stop_gradient(partial_sums),
           "codes": codes}
    if self._single:
      out = {k: v[:, 0] for k, v in out.items()}
    return out

  def diagnostics(self, inputs) -> Dict[str, np.ndarray]:
    """Code health on a fixed probe set, for logging outside the training step.

    Eager only; reads the codebooks, updates nothing but the remembered probe
    codes.

    Args:
      inputs: the probe, shaped like `call` inputs; pass the same probe each
        time for `flip_share` to mean something.

    Returns numpy arrays [D] (single view) or [views, D]:
      residual_ratio: ||r_l|| / ||x|| over the probe (Frobenius), l = 1..D.
      perplexity: exp(entropy) of the level's code usage, in [1, K].
      dead_codes: codes of the level no probe row chose, in [0, K - 1].
      flip_share: share of probe rows whose code changed since the previous
        call on a probe of the same shape (NaN on the first call).
    """
    x = tf.cast(tf.convert_to_tensor(inputs), self.codebooks.dtype)
    if not self.built:
      self.build(x.shape)
    self._check_shape(x.shape)
    if self._single:
      x = x[:, None]
    chain = chain_lib.quantize(x, self._read(self.codebooks), self.config.num_levels)
    codes = chain.codes.numpy()
    out = health.code_health(x.numpy(), codes, chain.partial_sums.numpy(),
                             self.config.codebook_size, self._probe_codes)
    self._probe_codes = codes
    return {k: v[0] for k, v in out.items()} if self._single else out

  def compute_output_shape(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    lead = input_shape[:-1]
    return {"quantized": input_shape,
            "partial_sums": lead.concatenate(
                [self.config.num_levels, input_shape[-1]]),
            "codes": lead.concatenate([self.config.num_levels])}

  def get_config(self):
    # Flat: the option names as keyword arguments (and as older saved configs hold them).
    config = super().get_config()
    config.update(dataclasses.asdict(self.config), epsilon=self.epsilon, seed=self.seed)
    return config
