"""Data-driven seeding of the quantizer's codebooks: k-means++ and Lloyd
iterations on the warm-up buffer, level by level on the residuals, so the
codes start where the data is instead of at random."""
import numpy as np
import tensorflow as tf


def sq_dist(points: tf.Tensor, book: tf.Tensor) -> tf.Tensor:
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
  dist = tf.where(filled[None, None, :], sq_dist(points, book), np.inf)
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
    dist = tf.where(in_slice, sq_dist(points, book), np.inf)
    one_hot = tf.one_hot(tf.argmin(dist, -1), size, dtype=points.dtype) * weight
    counts = tf.reduce_sum(one_hot, 1)  # [V, K]
    sums = tf.einsum("vnk,vnd->vkd", one_hot, points)
    book = tf.where((counts > 0)[..., None],
                    sums / tf.maximum(counts, 1.0)[..., None], book)
  return book


def kmeans_init(points: tf.Tensor, valid: tf.Tensor, seed, *,
                num_levels: int, codebook_size: int, shared_codebook: bool,
                kmeans_iterations: int) -> tf.Tensor:
  """k-means seeding level by level, for all views: level l from the
  residuals left by the seeded levels. A shared book gives each level its
  own slice of the K codes (earlier levels get the remainder), and later
  levels see the codes seeded so far. points [V, N, d] (rows where `valid`
  [N]) -> [V, books, K, d]."""
  size, levels = codebook_size, num_levels
  views, dim = points.shape[0], points.shape[-1]
  residual = points
  if shared_codebook:
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
        book = _lloyd(residual, valid, book, start, end, kmeans_iterations)
      dist = tf.where(filled, sq_dist(residual, book), np.inf)
      residual -= tf.gather(book, tf.argmin(dist, -1), batch_dims=1)
    return book[:, None]
  books = []
  for level in range(levels):
    book, _ = _kmeanspp_fill(
        residual, valid, tf.zeros((views, size, dim), points.dtype),
        tf.zeros((size,), tf.bool), 0, size,
        tf.random.experimental.stateless_fold_in(seed, level))
    book = _lloyd(residual, valid, book, 0, size, kmeans_iterations)
    residual -= tf.gather(book, tf.argmin(sq_dist(residual, book), -1),
                          batch_dims=1)
    books.append(book)
  return tf.stack(books, 1)
