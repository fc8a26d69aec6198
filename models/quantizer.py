"""Residual vector quantizer of HMDN (HMDRR: hierarchical multi-distribution
residual representation), fused over views."""
from typing import Dict, List, NamedTuple, Optional

import numpy as np
import tensorflow as tf

CODEBOOK_UPDATES = ("ema", "loss")
_CODEBOOK_UPDATES = CODEBOOK_UPDATES  # older name


def _sq_dist(points: tf.Tensor, book: tf.Tensor) -> tf.Tensor:
  """Squared L2 distances [..., N, d] x [..., K, d] -> [..., N, K].

  Explicit differences, not the ||a||^2 - 2ab + ||b||^2 expansion, so each
  row's result does not depend on the other rows of the batch (inference is
  batch independent bit for bit).
  """
  return tf.reduce_sum(tf.math.squared_difference(
      points[..., :, None, :], book[..., None, :, :]), -1)


def _kmeanspp_fill(points, valid, book, filled, start: int, end: int, seed):
  """k-means++ seeding of rows [start, end) of `book` [V, K, d] from `points`
  [V, N, d] (only rows where `valid` [N]), for every view at once.

  Rows already `filled` [K] count as existing centres. Each new centre is a
  valid point drawn with probability proportional to its squared distance to
  the nearest centre so far (uniformly if none yet). Stateless random with
  `seed`, so every replica given the same points and seed picks the same.
  """
  views = tf.shape(points)[0]
  dist = tf.where(filled[None, None, :], _sq_dist(points, book), np.inf)
  min_dist = tf.reduce_min(dist, -1)
  has_centre = tf.reduce_any(filled)
  for i in range(start, end):  # runs once (seeding): unrolled is fine
    logits = tf.where(has_centre, tf.math.log(min_dist + 1e-30),
                      tf.zeros_like(min_dist))
    logits = tf.where(valid[None, :], logits, -np.inf)
    index = tf.random.stateless_categorical(
        logits, 1, seed=tf.random.experimental.stateless_fold_in(seed, i),
        dtype=tf.int32)[:, 0]
    centre = tf.gather(points, index, batch_dims=1)  # [V, d]
    rows = tf.stack([tf.range(views), tf.fill([views], i)], 1)
    book = tf.tensor_scatter_nd_update(book, rows, centre)
    filled = tf.tensor_scatter_nd_update(filled, [[i]], [True])
    min_dist = tf.minimum(min_dist, tf.reduce_sum(
        tf.math.squared_difference(points, centre[:, None, :]), -1))
    has_centre = tf.constant(True)
  return book, filled


def _lloyd(points, valid, book, start: int, end: int, iterations: int):
  """Lloyd iterations on rows [start, end) of `book` [V, K, d]: assign valid
  points among those rows, move each row to its points' mean (empty rows
  stay)."""
  size = book.shape[1]
  in_slice = tf.constant([start <= k < end for k in range(size)])
  weight = tf.cast(valid, points.dtype)[None, :, None]
  for _ in range(iterations):
    dist = tf.where(in_slice, _sq_dist(points, book), np.inf)
    one_hot = tf.one_hot(tf.argmin(dist, -1), size, dtype=points.dtype) * weight
    counts = tf.reduce_sum(one_hot, 1)  # [V, K]
    sums = tf.einsum("vnk,vnd->vkd", one_hot, points)
    book = tf.where((counts > 0)[..., None],
                    sums / tf.maximum(counts, 1.0)[..., None], book)
  return book


class _Chain(NamedTuple):
  """A residual chain (`ResidualQuantizer._quantize`). Per-level tensors stay
  a list: stacking them copies, and a training step needs no stack of them."""
  codes: tf.Tensor  # [B, V, D] int32
  rows: List[tf.Tensor]  # per level [B, V] int32 rows of the flat books: v K + code
  inputs: List[tf.Tensor]  # per level its input r_{l-1} [B, V, d] (r_0 = x)
  partial_sums: tf.Tensor  # s_1..s_D [B, V, D, d]
  total: tf.Tensor  # s_D [B, V, d]
  squares: tf.Tensor  # sum_l ||r_l||^2, l = 1..D (the commitment sum)
  residual_sum: tf.Tensor  # sum_l r_l [B, V, d]: the commitment sum's
  # gradient in x is 2 sum_l r_l


def nearest(dist: tf.Tensor) -> tf.Tensor:
  """argmin of `dist` over its last axis (int32), the lower index on ties: as
  TopK of the negation, which CPU runs faster than ArgMin (161 vs 121 us on
  [8192, 8], a level's distances at batch 4096 with 2 views)."""
  return tf.math.top_k(-dist, 1).indices[..., 0]


def _perplexity(codes: np.ndarray, size: int) -> float:
  p = np.bincount(codes, minlength=size) / max(len(codes), 1)
  p = p[p > 0]
  return float(np.exp(-(p * np.log(p)).sum()))


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
    num_levels: depth D of the residual chain.
    codebook_size: codes per level K.
    shared_codebook: one codebook for all levels instead of one per level.
    codebook_update: "ema" or "loss" (VQ-VAE codebook loss, trainable books).
    decay: EMA decay of code counts and sums.
    epsilon: Laplace smoothing of the EMA counts.
    beta: commitment cost of the commitment loss.
    commitment_weight: lambda, weight of the quantization losses.
    warmup_steps: training calls that pass x through before seeding.
    kmeans_iterations: Lloyd iterations after k-means++ seeding.
    restart_after_steps: restart a code unused for this many steps (0: never).
    buffer_size: rows of real vectors kept for seeding.
    seed: seed of the stateless random ops.
    **kwargs: base Layer arguments.

  Variables (all replica-synchronised under tf.distribute; shapes shown for
  view inputs, without the leading `views` axis for [batch, d] inputs):
    codebooks [views, books, K, d] (books = 1 if shared else D), ema_counts
    [views, books, K] (code usage), ema_sums [views, books, K, d] ("ema"),
    last_used [views, books, K] step each code was last chosen, buffer
    [views, buffer_size, d] and buffer_rows (seeding), initialized, step.
  """

  def __init__(self,
               num_levels: int = 4,
               codebook_size: int = 8,
               shared_codebook: bool = False,
               codebook_update: str = "ema",
               decay: float = 0.99,
               epsilon: float = 1e-5,
               beta: float = 0.25,
               commitment_weight: float = 1.0,
               warmup_steps: int = 0,
               kmeans_iterations: int = 5,
               restart_after_steps: int = 100,
               buffer_size: int = 2048,
               seed: int = 0,
               **kwargs):
    super().__init__(**kwargs)
    if int(num_levels) < 1:
      raise ValueError(f"`num_levels` must be >= 1, got {num_levels!r}.")
    if int(codebook_size) < 2:
      raise ValueError(f"`codebook_size` must be >= 2, got {codebook_size!r}.")
    if codebook_update not in CODEBOOK_UPDATES:
      raise ValueError(f"`codebook_update` must be one of {CODEBOOK_UPDATES}, "
                       f"got {codebook_update!r}.")
    if not 0.0 < float(decay) < 1.0:
      raise ValueError(f"`decay` must be in (0, 1), got {decay!r}.")
    for name, value in (("epsilon", epsilon), ("beta", beta),
                        ("commitment_weight", commitment_weight),
                        ("warmup_steps", warmup_steps),
                        ("kmeans_iterations", kmeans_iterations),
                        ("restart_after_steps", restart_after_steps)):
      if float(value) < 0.0:
        raise ValueError(f"`{name}` must be >= 0, got {value!r}.")
    if int(buffer_size) < int(codebook_size):
      raise ValueError(f"`buffer_size` must be >= codebook_size "
                       f"({codebook_size}), got {buffer_size!r}.")
    self.num_levels = int(num_levels)
    self.codebook_size = int(codebook_size)
    self.shared_codebook = bool(shared_codebook)
    self.codebook_update = codebook_update
    self.decay = float(decay)
    self.epsilon = float(epsilon)
    self.beta = float(beta)
    self.commitment_weight = float(commitment_weight)
    self.warmup_steps = int(warmup_steps)
    self.kmeans_iterations = int(kmeans_iterations)
    self.restart_after_steps = int(restart_after_steps)
    self.buffer_size = int(buffer_size)
    self.seed = int(seed)
    self._num_books = 1 if self.shared_codebook else self.num_levels
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
    books, size, dim = self._num_books, self.codebook_size, self._dim
    # Assignments happen in replica context; ONLY_FIRST_REPLICA lets them
    # (and the values are computed identically on every replica anyway).
    sync = dict(synchronization=tf.VariableSynchronization.ON_WRITE,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.codebooks = self.add_weight(
        "codebooks", shape=self._lead(books, size, dim),
        initializer=tf.keras.initializers.RandomNormal(
            stddev=0.01, seed=self.seed),
        trainable=self.codebook_update == "loss", **sync)
    self.ema_counts = self.add_weight(
        "ema_counts", shape=self._lead(books, size), initializer="zeros",
        trainable=False, **sync)
    self.ema_sums = None
    if self.codebook_update == "ema":
      self.ema_sums = self.add_weight(
          "ema_sums", shape=self._lead(books, size, dim), initializer="zeros",
          trainable=False, **sync)
    self.last_used = self.add_weight(
        "last_used", shape=self._lead(books, size), dtype=tf.int64,
        initializer="zeros", trainable=False, **sync)
    self.buffer = self.add_weight(
        "buffer", shape=self._lead(self.buffer_size, dim), initializer="zeros",
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
    return 0 if self.shared_codebook else level

  # -- the residual chain -----------------------------------------------------
  def _quantize(self, x: tf.Tensor, books: tf.Tensor, exact: bool = True):
    """Residual chain of x [B, V, d] with fixed books [V, books, K, d], as a
    `_Chain`: codes [B, V, D], each level's chosen rows and input r_{l-1}
    (lists, never stacked in a training step), partial sums s_1..s_D
    [B, V, D, d] (for the outputs only), s_D, sum_l ||r_l||^2 (the
    commitment, gradient into x through the chain) and sum_l r_l. One
    distance computation per level for all views.

    `exact` (inference, diagnostics): explicit differences, so each row's
    codes do not depend on the other rows of the batch, bit for bit. Training
    (`exact=False`) scores the codes by ||e||^2 - 2 r.e, one MatMul per level
    against a block-diagonal matrix of every view's codes (no [B, V, K, d]
    intermediate); it differs from the exact form only at rounding-level
    near-ties. Training also takes s_l as x - r_l (one op for s_D), where the
    exact form adds up the chosen codes: the two differ by float rounding.
    """
    size, views, dim = self.codebook_size, self._views, self._dim
    offsets = tf.range(views) * size  # row of view v's book in the flat books
    flat = tf.reshape(tf.transpose(books, (1, 0, 2, 3)),
                      (self._num_books, views * size, dim))
    if not exact:
      # weights[b]: [V*d, V*K], -2 e_{v,k} in block (v, v), zeros elsewhere.
      # (A broadcast product, not an einsum: oneDNN's einsum is slow at
      # these tiny shapes.)
      weights = tf.transpose(books, (1, 0, 3, 2))  # [books, V, d, K]
      if views > 1:
        weights = (weights[:, :, :, None, :] *
                   tf.eye(views, dtype=books.dtype)[:, None, :, None])
      weights = tf.reshape(weights * -2.0,
                           (self._num_books, views * dim, views * size))
      norms = tf.unstack(tf.reduce_sum(tf.square(flat), -1))  # [V*K] per book
      weights = tf.unstack(weights)
    flat = tf.unstack(flat)  # one op, not a slice per level
    residual = x
    codes, rows, inputs, chosen_codes = [], [], [], []
    for level in range(self.num_levels):  # D is small: an unrolled chain
      b = self._book(level)
      if exact:
        dist = tf.reduce_sum(tf.math.squared_difference(
            residual[:, :, None, :], books[:, b][None]), -1)
      else:
        dist = tf.reshape(tf.nn.bias_add(tf.matmul(
            tf.reshape(residual, (-1, views * dim)), weights[b]), norms[b]),
                          (-1, views, size))
      code = nearest(dist)
      row = code + offsets
      chosen = tf.gather(flat[b], row)
      codes.append(code)
      rows.append(row)
      inputs.append(residual)
      chosen_codes.append(chosen)
      residual = residual - chosen  # r_l = x - sg(s_l)
    left = inputs[1:] + [residual]  # r_1..r_D
    if exact:  # s_l as the sum of the chosen codes themselves
      partial_sums = [chosen_codes[0]]
      for chosen in chosen_codes[1:]:
        partial_sums.append(partial_sums[-1] + chosen)
      total = partial_sums[-1]
    else:  # s_l = x - r_l: one op for s_D (the partial sums are outputs only)
      total = x - residual
      partial_sums = [x - r for r in left[:-1]] + [total]
    # One AddN over the levels (not a chain of adds), squares by L2Loss (one
    # pass, not a square and a sum).
    return _Chain(codes=tf.stack(codes, -1), rows=rows, inputs=inputs,
                  partial_sums=tf.stack(partial_sums, 2), total=total,
                  squares=2.0 * tf.add_n([tf.nn.l2_loss(r) for r in left]),
                  residual_sum=tf.add_n(left))

  def _chain_statistics(self, x: tf.Tensor, books: tf.Tensor):
    """Training's residual chain of x [B, V, d] (no gradient) and the local
    batch's code statistics: codes, level inputs, partial sums, counts, sums
    (see `_quantize` and `_statistics`), the commitment sum
    sum_l ||x - s_l||^2 and sum_l (x - s_l), half its gradient in x."""
    chain = self._quantize(x, books, exact=False)
    counts, sums = self._statistics(chain.rows, chain.inputs)
    return chain, counts, sums

  # -- seeding ----------------------------------------------------------------
  def _kmeans_init(self, points: tf.Tensor, valid: tf.Tensor, seed) -> tf.Tensor:
    """k-means seeding level by level, for all views: level l from the
    residuals left by the seeded levels. A shared book gives each level its
    own slice of the K codes (earlier levels get the remainder), and later
    levels see the codes seeded so far. points [V, N, d] -> [V, books, K, d]."""
    size, dim, levels = self.codebook_size, self._dim, self.num_levels
    views = self._views
    residual = points
    if self.shared_codebook:
      bounds = [level * (size // levels) + min(level, size % levels)
                for level in range(levels + 1)]
      book = tf.zeros((views, size, dim), points.dtype)
      filled = tf.zeros((size,), tf.bool)
      for level in range(levels):
        start, end = bounds[level], bounds[level + 1]
        if end > start:
          book, filled = _kmeanspp_fill(
              residual, valid, book, filled, start, end,
              tf.random.experimental.stateless_fold_in(seed, level))
          book = _lloyd(residual, valid, book, start, end,
                        self.kmeans_iterations)
        dist = tf.where(filled, _sq_dist(residual, book), np.inf)
        residual -= tf.gather(book, tf.argmin(dist, -1), batch_dims=1)
      return book[:, None]
    books = []
    for level in range(levels):
      book, _ = _kmeanspp_fill(
          residual, valid, tf.zeros((views, size, dim), points.dtype),
          tf.zeros((size,), tf.bool), 0, size,
          tf.random.experimental.stateless_fold_in(seed, level))
      book = _lloyd(residual, valid, book, 0, size, self.kmeans_iterations)
      residual -= tf.gather(book, tf.argmin(_sq_dist(residual, book), -1),
                            batch_dims=1)
      books.append(book)
    return tf.stack(books, 1)

  # -- training-time state ----------------------------------------------------
  def _statistics(self, rows, inputs):
    """Per-book assignment counts [V, books, K] and residual sums
    [V, books, K, d] of the local batch, from each level's chosen rows of the
    flat books (`_Chain.rows`: view v's codes are rows v K..v K + K - 1) and
    its input (a shared book adds up its levels). Per level, ONE MatMul of the
    one-hot assignments over its own V K rows (CPU's segment sum, or a one-hot
    over every level's rows, is several times slower at these shapes)."""
    size, views, dim = self.codebook_size, self._views, self._dim
    counts, sums = [], []
    for row, residual in zip(rows, inputs):
      one_hot = tf.one_hot(tf.reshape(row, [-1]), views * size,
                           dtype=residual.dtype)  # [B V, V K]
      sums.append(tf.matmul(one_hot, tf.reshape(residual, (-1, dim)),
                            transpose_a=True))  # [V K, d]
      counts.append(tf.reduce_sum(one_hot, 0))
    if self.shared_codebook:
      counts, sums = [tf.add_n(counts)], [tf.add_n(sums)]
    books = self._num_books
    return (tf.transpose(tf.reshape(tf.stack(counts), (books, views, size)),
                         (1, 0, 2)),
            tf.transpose(tf.reshape(tf.stack(sums), (books, views, size, dim)),
                         (1, 0, 2, 3)))

  def _initial_state(self, books, num_rows, step):
    """State right after seeding: a uniform-usage prior of one global batch,
    sums matching the seeded codes, every code just used."""
    levels_per_book = self.num_levels // self._num_books
    share = (tf.cast(num_rows * levels_per_book, books.dtype) /
             self.codebook_size)
    counts = tf.fill(tf.shape(books)[:-1], share)
    return books, counts, books * share, tf.fill(tf.shape(books)[:-1], step)

  def _updated_state(self, books, counts, sums, rows, step, seed,
                     ema_counts, ema_sums, last_used):
    """EMA update with Laplace smoothing, then restarts of the codes unused
    for `restart_after_steps` steps, from `rows` (level inputs [D, N, V, d]
    of rows of the global batch; rearranged only when a code restarts).
    The state's previous values are passed in (read once per step)."""
    decay, size = self.decay, self.codebook_size
    ema_counts = decay * ema_counts + (1.0 - decay) * counts
    total = tf.reduce_sum(ema_counts, -1, keepdims=True)
    if self.codebook_update == "ema":
      ema_sums = decay * ema_sums + (1.0 - decay) * sums
      smoothed = ((ema_counts + self.epsilon) /
                  (total + size * self.epsilon) * total)
      books = ema_sums / smoothed[..., None]
    else:
      ema_sums = tf.zeros_like(books)
    last_used = tf.where(counts > 0, step, last_used)
    if not self.restart_after_steps:
      return books, ema_counts, ema_sums, last_used
    dead = step - last_used >= self.restart_after_steps

    def restart():
      # A random permutation of the pool rows per book (without replacement
      # when the pool has at least K rows).
      pool = self._pool(rows)
      pool_size = tf.shape(pool)[2]
      noise = tf.random.stateless_uniform(tf.shape(pool)[:3], seed=seed)
      picks = tf.gather(tf.argsort(noise, axis=-1),
                        tf.range(size) % pool_size, axis=2)
      candidates = tf.gather(pool, picks, batch_dims=2)
      share = tf.broadcast_to(total / size, tf.shape(ema_counts))
      return (tf.where(dead[..., None], candidates, books),
              tf.where(dead, share, ema_counts),
              tf.where(dead[..., None], candidates * share[..., None], ema_sums),
              tf.where(dead, step, last_used))

    return tf.cond(tf.reduce_any(dead), restart,
                   lambda: (books, ema_counts, ema_sums, last_used))

  def _pool(self, rows: tf.Tensor) -> tf.Tensor:
    """Level inputs [D, N, V, d] (or a list of D [N, V, d]) -> restart pool
    per book [V, books, N', d]."""
    if isinstance(rows, (list, tuple)):
      rows = tf.stack(rows)
    if self.shared_codebook:
      return tf.reshape(tf.transpose(rows, (2, 0, 1, 3)),
                        (self._views, 1, -1, self._dim))
    return tf.transpose(rows, (2, 0, 1, 3))

  def _train_step(self, x: tf.Tensor):
    """Warm-up (buffer), seeding or codebook update from the global batch;
    quantizes x with the codebooks as they were at the start of the step
    (or as just seeded). Returns codes, residuals, partial sums, the
    commitment sum, the live
    codebooks and whether x was quantized."""
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
                              step >= self.warmup_steps)
    active = tf.logical_or(was_initialized, seed_now)
    variable = self._read(self.codebooks)
    global_x = all_gather(tf.stop_gradient(x))  # [N, V, d]
    num_rows = tf.shape(global_x, out_type=tf.int64)[0]
    buffer_rows = tf.convert_to_tensor(self.buffer_rows)

    def fill_buffer():  # ring buffer of the latest rows
      rows = tf.transpose(global_x, (1, 0, 2))[:, -self.buffer_size:]
      n = tf.shape(rows, out_type=tf.int64)[1]
      at = (buffer_rows + tf.range(n)) % self.buffer_size
      values = tf.transpose(self._read(self.buffer), (1, 0, 2))
      values = tf.tensor_scatter_nd_update(
          values, at[:, None], tf.transpose(rows, (1, 0, 2)))
      return tf.transpose(values, (1, 0, 2)), buffer_rows + n

    buffer, new_buffer_rows = tf.cond(
        was_initialized, lambda: (self._read(self.buffer), buffer_rows),
        fill_buffer)
    valid = tf.range(self.buffer_size, dtype=tf.int64) < new_buffer_rows
    # The seeding runs once; as a call that is not inlined, the branch not
    # taken on every later step is one node, not the unrolled k-means.
    kmeans = tf.function(self._kmeans_init, autograph=False,
                         experimental_attributes={"_noinline": True})
    books = tf.stop_gradient(tf.cond(
        seed_now, lambda: kmeans(buffer, valid, seed), lambda: variable))
    # The chain sees no gradient: the commitment, the only gradient into x,
    # gets its value from the chain and its gradient 2 sum_l (x - s_l)
    # (r_l = x - sg(s_l)) as one product, not back through every level.
    chain, counts, sums = self._chain_statistics(tf.stop_gradient(x), books)
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
        lambda: self._updated_state(
            books, counts, sums, pool, step,
            tf.random.experimental.stateless_fold_in(seed, self.num_levels),
            ema_counts, ema_sums, last_used),
        lambda: tf.cond(seed_now, lambda: self._initial_state(
            books, num_rows, step), keep))
    # Every assignment sits outside control flow: under MirroredStrategy each
    # one is a cross-replica synchronisation point.
    updates = [self.codebooks.assign(self._write(new_books)),
               self.ema_counts.assign(self._write(new_counts)),
               self.last_used.assign(self._write(new_last_used)),
               self.buffer.assign(self._write(buffer)),
               self.buffer_rows.assign(new_buffer_rows),
               self.initialized.assign(active),
               self.step.assign_add(1)]
    if self.ema_sums is not None:
      updates.append(self.ema_sums.assign(self._write(new_sums)))
    with tf.control_dependencies(updates):
      codes = tf.identity(codes)
    return (codes, residuals, chain.partial_sums, chain.total, squares, live,
            active)

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
      chain = self._quantize(x, tf.stop_gradient(variable))
      return (chain.codes, chain.inputs, chain.partial_sums, chain.total,
              chain.squares, variable, tf.convert_to_tensor(self.initialized))

    if tf.is_tensor(training):  # symbolic flag: default strategy only, as
      # MirroredStrategy cannot synchronise inside control flow.
      codes, residuals, partial_sums, total, squares, live, active = tf.cond(
          training, lambda: self._train_step(x), infer)
    elif training:
      (codes, residuals, partial_sums, total, squares, live,
       active) = self._train_step(x)
    else:
      codes, residuals, partial_sums, total, squares, live, active = infer()

    # Before seeding: x passes through, codes 0, partial sums 0, no loss.
    # (Level-major partial sums [D, B, V, d]; the transposed output is pruned
    # from a training step that does not read it.)
    codes = tf.where(active, codes, tf.zeros_like(codes))
    batch = tf.cast(tf.shape(x)[0], x.dtype)
    # ||r_{l-1} - sg(e_l)||^2 = ||x - sg(s_l)||^2, gradient into x only;
    # mean over rows and levels, summed over views.
    on = tf.cast(active, x.dtype)
    commitment = on * squares / (batch * self.num_levels)
    self.add_loss(self.commitment_weight * self.beta * commitment)
    if self.codebook_update == "loss":
      size, books = self.codebook_size, self._num_books
      index = (tf.transpose(codes, (2, 0, 1)) +
               tf.range(self._views) * books * size +
               tf.constant([self._book(l) * size
                            for l in range(self.num_levels)])[:, None, None])
      chosen = tf.gather(tf.reshape(live, (-1, self._dim)), index)
      codebook_loss = on * tf.reduce_sum(tf.square(
          tf.stop_gradient(tf.stack(residuals)) - chosen)) / (batch * self.num_levels)
      self.add_loss(self.commitment_weight * codebook_loss)
    # x + sg(s_D - x) once seeded, x before (a 0/1 factor, not a select: the
    # gradient is the identity either way, with no select in the backward).
    quantized = x + tf.stop_gradient(on * (total - x))
    partial_sums = tf.where(active, partial_sums, 0.0)
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
    chain = self._quantize(x, self._read(self.codebooks))
    codes, partial_sums = chain.codes, chain.partial_sums
    codes, x = codes.numpy(), x.numpy()
    partial_sums = partial_sums.numpy()
    norm = np.sqrt((x ** 2).sum((0, 2)))  # [V]
    left = np.sqrt(((x[:, :, None] - partial_sums) ** 2).sum((0, 3)))  # [V, D]
    ratio = left / np.maximum(norm[:, None], 1e-12)
    size = self.codebook_size
    perplexity = np.array([[_perplexity(codes[:, v, l], size)
                            for l in range(self.num_levels)]
                           for v in range(self._views)])
    dead = np.array([[size - len(np.unique(codes[:, v, l]))
                      for l in range(self.num_levels)]
                     for v in range(self._views)], np.int64)
    previous = self._probe_codes
    if previous is not None and previous.shape == codes.shape:
      flips = (previous != codes).mean(0)
    else:
      flips = np.full(codes.shape[1:], np.nan)
    self._probe_codes = codes
    out = {"residual_ratio": ratio, "perplexity": perplexity,
           "dead_codes": dead, "flip_share": flips}
    return {k: v[0] for k, v in out.items()} if self._single else out

  def compute_output_shape(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    lead = input_shape[:-1]
    return {"quantized": input_shape,
            "partial_sums": lead.concatenate(
                [self.num_levels, input_shape[-1]]),
            "codes": lead.concatenate([self.num_levels])}

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
                  warmup_steps=self.warmup_steps,
                  kmeans_iterations=self.kmeans_iterations,
                  restart_after_steps=self.restart_after_steps,
                  buffer_size=self.buffer_size,
                  seed=self.seed)
    return config
