"""Residual vector quantizer of HMDN (HMDRR: hierarchical multi-distribution
residual representation)."""
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

_CODEBOOK_UPDATES = ("ema", "loss")


def _nearest(points: tf.Tensor, book: tf.Tensor,
             filled: tf.Tensor = None) -> tf.Tensor:
  """Index of the nearest (squared L2) code for each row: [N, d] -> [N] int32.

  Distances are computed from explicit differences, not the ||a||^2 - 2ab +
  ||b||^2 expansion, so each row's result does not depend on the other rows
  of the batch (inference is batch independent bit for bit).
  """
  dist = tf.reduce_sum(
      tf.math.squared_difference(points[:, None, :], book[None, :, :]), -1)
  if filled is not None:
    dist = tf.where(filled[None, :], dist, tf.fill(tf.shape(dist), np.inf))
  return tf.argmin(dist, axis=-1, output_type=tf.int32)


def _kmeanspp_fill(points: tf.Tensor, book: tf.Tensor, filled: tf.Tensor,
                   start: int, end: int,
                   seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """k-means++ seeding of book rows [start, end) from `points`.

  Rows already `filled` count as existing centres. Each new centre is a row of
  `points` drawn with probability proportional to its squared distance to the
  nearest centre chosen so far (uniformly if there is none yet). Stateless
  random with `seed`, so every replica given the same points and seed picks
  the same centres.
  """
  has_centre = tf.reduce_any(filled)
  dist = tf.reduce_sum(
      tf.math.squared_difference(points[:, None, :], book[None, :, :]), -1)
  dist = tf.where(filled[None, :], dist, tf.fill(tf.shape(dist), np.inf))
  min_dist = tf.reduce_min(dist, axis=-1)

  def body(i, book, filled, min_dist, has_centre):
    logits = tf.where(has_centre, tf.math.log(min_dist + 1e-30),
                      tf.zeros_like(min_dist))
    index = tf.random.stateless_categorical(
        logits[None, :], 1, seed=tf.random.experimental.stateless_fold_in(
            seed, i), dtype=tf.int32)[0, 0]
    centre = tf.gather(points, index)
    book = tf.tensor_scatter_nd_update(book, [[i]], centre[None, :])
    filled = tf.tensor_scatter_nd_update(filled, [[i]], [True])
    min_dist = tf.minimum(
        min_dist, tf.reduce_sum(tf.math.squared_difference(points, centre), -1))
    return i + 1, book, filled, min_dist, tf.constant(True)

  _, book, filled, _, _ = tf.while_loop(
      lambda i, *_: i < end, body,
      (tf.constant(start), book, filled, min_dist, has_centre))
  return book, filled


class ResidualQuantizer(tf.keras.layers.Layer):
  """Multi-level residual vector quantizer (HMDN, HMDRR section).

  Level l picks the code of codebook l nearest to the residual left by levels
  1..l-1 (r_0 = x, r_l = r_{l-1} - e_l[c_l]); the partial sums
  s_l = e_1[c_1] + ... + e_l[c_l] describe x from coarse to fine and s_D is the
  hierarchical representation, passed on with straight-through gradients.
  Codebooks are seeded by k-means++ on the first training batch and learnt by
  EMA (with dead-code restarts) or by the VQ-VAE codebook loss.

  Variables (all replica-synchronised under tf.distribute):
    codebooks: [num_books, K, d], num_books = 1 if `shared_codebook` else D.
      Trainable only with `codebook_update="loss"`.
    ema_counts: [num_books, K] EMA of how many residuals each code takes per
      global batch; read it for code usage.
    ema_sums: [num_books, K, d] EMA of the residuals each code takes ("ema").
    initialized: bool, set by the first training call.
    step: int64 count of training calls; seeds the stateless random ops.

  Dead codes: after the EMA update, a code whose EMA count is below
  `dead_code_threshold` times the uniform share (sum of the book's EMA counts
  / K) is restarted to a random residual of the current global batch at that
  level (pooled over levels for a shared codebook), with the uniform share as
  its new EMA count. With decay 0.99 and the default 0.01, a code unused from
  a uniform start is restarted after about 460 steps; 0 disables restarts.
  """

  def __init__(self,
               num_levels: int = 4,
               codebook_size: int = 16,
               shared_codebook: bool = False,
               codebook_update: str = "ema",
               decay: float = 0.99,
               epsilon: float = 1e-5,
               beta: float = 0.25,
               commitment_weight: float = 1.0,
               dead_code_threshold: float = 0.01,
               seed: int = 0,
               **kwargs):
    super().__init__(**kwargs)
    if int(num_levels) < 1:
      raise ValueError(f"`num_levels` must be >= 1, got {num_levels!r}.")
    if int(codebook_size) < 2:
      raise ValueError(f"`codebook_size` must be >= 2, got {codebook_size!r}.")
    if codebook_update not in _CODEBOOK_UPDATES:
      raise ValueError(f"`codebook_update` must be one of {_CODEBOOK_UPDATES}, "
                       f"got {codebook_update!r}.")
    if not 0.0 < float(decay) < 1.0:
      raise ValueError(f"`decay` must be in (0, 1), got {decay!r}.")
    if float(epsilon) < 0.0:
      raise ValueError(f"`epsilon` must be >= 0, got {epsilon!r}.")
    if float(beta) < 0.0:
      raise ValueError(f"`beta` must be >= 0, got {beta!r}.")
    if float(commitment_weight) < 0.0:
      raise ValueError(
          f"`commitment_weight` must be >= 0, got {commitment_weight!r}.")
    if float(dead_code_threshold) < 0.0:
      raise ValueError(
          f"`dead_code_threshold` must be >= 0, got {dead_code_threshold!r}.")
    self.num_levels = int(num_levels)
    self.codebook_size = int(codebook_size)
    self.shared_codebook = bool(shared_codebook)
    self.codebook_update = codebook_update
    self.decay = float(decay)
    self.epsilon = float(epsilon)
    self.beta = float(beta)
    self.commitment_weight = float(commitment_weight)
    self.dead_code_threshold = float(dead_code_threshold)
    self.seed = int(seed)
    self._num_books = 1 if self.shared_codebook else self.num_levels

  def _check_shape(self, shape: tf.TensorShape, expected_dim=None):
    shape = tf.TensorShape(shape)
    if (shape.rank != 2 or shape[-1] is None or
        (expected_dim is not None and shape[-1] != expected_dim)):
      expected = f"[batch_size, {expected_dim or 'dim'}]"
      raise ValueError(f"ResidualQuantizer expects inputs of shape {expected} "
                       f"with a known last dimension, received shape {shape}.")

  def build(self, input_shape):
    self._check_shape(input_shape)
    self._dim = int(tf.TensorShape(input_shape)[-1])
    books, size, dim = self._num_books, self.codebook_size, self._dim
    # Assignments happen in replica context; ONLY_FIRST_REPLICA lets them
    # (and the values are computed identically on every replica anyway).
    sync = dict(synchronization=tf.VariableSynchronization.ON_WRITE,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.codebooks = self.add_weight(
        "codebooks", shape=(books, size, dim),
        initializer=tf.keras.initializers.RandomNormal(
            stddev=0.01, seed=self.seed),
        trainable=self.codebook_update == "loss", **sync)
    self.ema_counts = self.add_weight(
        "ema_counts", shape=(books, size), initializer="zeros",
        trainable=False, **sync)
    self.ema_sums = None
    if self.codebook_update == "ema":
      self.ema_sums = self.add_weight(
          "ema_sums", shape=(books, size, dim), initializer="zeros",
          trainable=False, **sync)
    self.initialized = self.add_weight(
        "initialized", shape=(), dtype=tf.bool, initializer="zeros",
        trainable=False, **sync)
    self.step = self.add_weight(
        "step", shape=(), dtype=tf.int64, initializer="zeros",
        trainable=False, **sync)
    super().build(input_shape)

  def _book(self, level: int) -> int:
    return 0 if self.shared_codebook else level

  def _quantize(self, x: tf.Tensor, books: tf.Tensor):
    """Residual chain with fixed `books`: codes [B, D], inputs r_0..r_{D-1}
    of each level [B, D, d] and partial sums s_1..s_D [B, D, d]."""
    residual, total = x, tf.zeros_like(x)
    codes, residuals, partial_sums = [], [], []
    for level in range(self.num_levels):
      book = books[self._book(level)]
      code = _nearest(residual, book)
      chosen = tf.gather(book, code)
      codes.append(code)
      residuals.append(residual)
      residual = residual - chosen
      total = total + chosen
      partial_sums.append(total)
    return (tf.stack(codes, 1), tf.stack(residuals, 1),
            tf.stack(partial_sums, 1))

  def _kmeanspp_init(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """k-means++ seeding level by level: level l from the residuals left by
    the already seeded levels. A shared book gives each level its own slice
    of the K codes (earlier levels get the remainder), and later levels see
    the codes seeded so far."""
    size, dim = self.codebook_size, self._dim
    residual = x
    if self.shared_codebook:
      book = tf.zeros((size, dim), x.dtype)
      filled = tf.zeros((size,), tf.bool)
      bounds = [level * (size // self.num_levels) +
                min(level, size % self.num_levels)
                for level in range(self.num_levels + 1)]
      for level in range(self.num_levels):
        if bounds[level + 1] > bounds[level]:
          book, filled = _kmeanspp_fill(
              residual, book, filled, bounds[level], bounds[level + 1],
              tf.random.experimental.stateless_fold_in(seed, level))
        residual -= tf.gather(book, _nearest(residual, book, filled))
      return book[None]
    books = []
    for level in range(self.num_levels):
      book, _ = _kmeanspp_fill(
          residual, tf.zeros((size, dim), x.dtype), tf.zeros((size,), tf.bool),
          0, size, tf.random.experimental.stateless_fold_in(seed, level))
      residual -= tf.gather(book, _nearest(residual, book))
      books.append(book)
    return tf.stack(books)

  def _statistics(self, codes: tf.Tensor, residuals: tf.Tensor):
    """Per-book assignment counts [num_books, K] and residual sums
    [num_books, K, d] of the local batch."""
    one_hot = tf.one_hot(codes, self.codebook_size, dtype=residuals.dtype)
    counts = tf.reduce_sum(one_hot, 0)
    sums = tf.einsum("blk,bld->lkd", one_hot, residuals)
    if self.shared_codebook:
      counts = tf.reduce_sum(counts, 0, keepdims=True)
      sums = tf.reduce_sum(sums, 0, keepdims=True)
    return counts, sums

  def _initial_state(self, books, num_rows):
    """EMA state right after seeding: a uniform-usage prior of one global
    batch, with sums matching the seeded codes."""
    levels_per_book = self.num_levels // self._num_books
    share = (tf.cast(num_rows * levels_per_book, books.dtype) /
             self.codebook_size)
    counts = tf.fill((self._num_books, self.codebook_size), share)
    return books, counts, books * share

  def _updated_state(self, books, counts, sums, pool, seed):
    """EMA update with Laplace smoothing, then dead-code restarts from `pool`
    ([num_books, N, d] global-batch residuals)."""
    decay, size = self.decay, self.codebook_size
    ema_counts = decay * self.ema_counts + (1.0 - decay) * counts
    total = tf.reduce_sum(ema_counts, -1, keepdims=True)
    if self.codebook_update == "ema":
      ema_sums = decay * self.ema_sums + (1.0 - decay) * sums
      smoothed = ((ema_counts + self.epsilon) /
                  (total + size * self.epsilon) * total)
      books = ema_sums / smoothed[..., None]
    else:
      ema_sums = tf.zeros_like(books)
    share = total / size
    dead = ema_counts < self.dead_code_threshold * share
    # A random permutation of the pool rows per book (without replacement
    # when the pool has at least K rows).
    pool_size = tf.shape(pool)[1]
    noise = tf.random.stateless_uniform(tf.shape(pool)[:2], seed=seed)
    order = tf.argsort(noise, axis=-1)
    picks = tf.gather(order, tf.range(size) % pool_size, axis=1)
    candidates = tf.gather(pool, picks, batch_dims=1)
    share = tf.broadcast_to(share, ema_counts.shape)
    books = tf.where(dead[..., None], candidates, books)
    ema_counts = tf.where(dead, share, ema_counts)
    ema_sums = tf.where(dead[..., None], candidates * share[..., None],
                        ema_sums)
    return books, ema_counts, ema_sums

  def _train_step(self, x: tf.Tensor):
    """Seeds (first call) or updates the codebooks from the global batch and
    quantizes x with the codebooks as they were at the start of the step."""
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
    variable = tf.convert_to_tensor(self.codebooks)
    global_x = all_gather(tf.stop_gradient(x))
    books = tf.stop_gradient(tf.cond(
        was_initialized, lambda: variable,
        lambda: self._kmeanspp_init(global_x, seed)))
    codes, residuals, partial_sums = self._quantize(x, books)
    # Value of `books`, gradient (loss mode) into the variable.
    live = variable + tf.stop_gradient(books - variable)

    counts, sums = all_reduce(self._statistics(codes, residuals))
    global_residuals = all_gather(residuals)
    if self.shared_codebook:
      pool = tf.reshape(global_residuals, (1, -1, self._dim))
    else:
      pool = tf.transpose(global_residuals, (1, 0, 2))
    new_books, new_counts, new_sums = tf.cond(
        was_initialized,
        lambda: self._updated_state(
            books, counts, sums, pool,
            tf.random.experimental.stateless_fold_in(seed, self.num_levels)),
        lambda: self._initial_state(books, tf.shape(global_x)[0]))
    # Every assignment sits outside control flow: under MirroredStrategy each
    # one is a cross-replica synchronisation point.
    updates = [self.codebooks.assign(new_books),
               self.ema_counts.assign(new_counts),
               self.initialized.assign(True),
               self.step.assign_add(1)]
    if self.ema_sums is not None:
      updates.append(self.ema_sums.assign(new_sums))
    with tf.control_dependencies(updates):
      codes = tf.identity(codes)
    return codes, residuals, partial_sums, live

  def call(self, inputs: tf.Tensor,
           training: bool = None) -> Dict[str, tf.Tensor]:
    """Quantizes a batch.

    Args:
      inputs: [batch_size, d] vectors x.
      training: if True, seeds/updates codebooks (variable updates); if False
        nothing is updated and each output row depends only on its input row.

    Returns:
      {"quantized": [batch_size, d] s_D with straight-through gradient to x,
       "partial_sums": [batch_size, D, d] s_1..s_D (no gradient),
       "codes": [batch_size, D] int32 code of each level}.
    """
    self._check_shape(inputs.shape, self._dim)
    x = tf.cast(inputs, self.codebooks.dtype)
    if tf.is_tensor(training) and tf.get_static_value(training) is not None:
      training = bool(tf.get_static_value(training))

    def infer():
      variable = tf.convert_to_tensor(self.codebooks)
      codes, residuals, partial_sums = self._quantize(
          x, tf.stop_gradient(variable))
      return codes, residuals, partial_sums, variable

    if tf.is_tensor(training):  # symbolic flag: default strategy only, as
      # MirroredStrategy cannot synchronise inside control flow.
      codes, residuals, partial_sums, live = tf.cond(
          training, lambda: self._train_step(x), infer)
    elif training:
      codes, residuals, partial_sums, live = self._train_step(x)
    else:
      codes, residuals, partial_sums, live = infer()

    total = partial_sums[:, -1, :]
    # ||r_{l-1} - sg(e_l)||^2 = ||x - sg(s_l)||^2, gradient into x only.
    commitment = tf.reduce_mean(tf.reduce_sum(
        tf.square(x[:, None, :] - partial_sums), axis=[1, 2]))
    self.add_loss(self.commitment_weight * self.beta * commitment)
    if self.codebook_update == "loss":
      chosen = tf.stack([
          tf.gather(live[self._book(level)], codes[:, level])
          for level in range(self.num_levels)], 1)
      codebook_loss = tf.reduce_mean(tf.reduce_sum(
          tf.square(tf.stop_gradient(residuals) - chosen), axis=[1, 2]))
      self.add_loss(self.commitment_weight * codebook_loss)
    return {"quantized": x + tf.stop_gradient(total - x),
            "partial_sums": tf.stop_gradient(partial_sums),
            "codes": codes}

  def compute_output_shape(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    batch = input_shape[0]
    return {"quantized": input_shape,
            "partial_sums": tf.TensorShape(
                [batch, self.num_levels, input_shape[-1]]),
            "codes": tf.TensorShape([batch, self.num_levels])}

  def get_config(self):
    config = super().get_config()
    config.update(num_levels=self.num_levels,
                  codebook_size=self.codebook_size,
                  shared_codebook=self.shared_codebook,
                  codebook_update=self.codebook_update,
                  decay=self.decay,
                  epsilon=self.epsilon,
                  beta=self.beta,
                  commitment_weight=self.commitment_weight,
                  dead_code_threshold=self.dead_code_threshold,
                  seed=self.seed)
    return config
