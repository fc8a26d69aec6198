"""The residual chain of the quantizer: each level's nearest code, the
residuals it leaves, the partial sums and the commitment sum, and the
local batch's code statistics, with the codebooks held fixed."""
from typing import List, NamedTuple

import tensorflow as tf


class Chain(NamedTuple):
  """A residual chain (`quantize`). Per-level tensors stay a list: stacking
  them copies, and a training step needs no stack of them."""
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
  TopK of the negation, which CPU runs faster than ArgMin (docs/speed.md,
  "## models")."""
  return tf.math.top_k(-dist, 1).indices[..., 0]


def book_of(level: int, num_books: int) -> int:
  """The book level `level` reads: 0 for a shared book, else its own."""
  return 0 if num_books == 1 else level


def quantize(x: tf.Tensor, books: tf.Tensor, num_levels: int,
             exact: bool = True) -> Chain:
  """Residual chain of x [B, V, d] with fixed books [V, books, K, d], as a
  `Chain`: codes [B, V, D], each level's chosen rows and input r_{l-1}
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
  views, num_books, size, dim = books.shape
  offsets = tf.range(views) * size  # row of view v's book in the flat books
  flat = tf.reshape(tf.transpose(books, (1, 0, 2, 3)),
                    (num_books, views * size, dim))
  if not exact:
    # weights[b]: [V*d, V*K], -2 e_{v,k} in block (v, v), zeros elsewhere.
    # (A broadcast product, not an einsum: oneDNN's einsum is slow at
    # these tiny shapes.)
    weights = tf.transpose(books, (1, 0, 3, 2))  # [books, V, d, K]
    if views > 1:
      weights = (weights[:, :, :, None, :] *
                 tf.eye(views, dtype=books.dtype)[:, None, :, None])
    weights = tf.reshape(weights * -2.0,
                         (num_books, views * dim, views * size))
    norms = tf.unstack(tf.reduce_sum(tf.square(flat), -1))  # [V*K] per book
    weights = tf.unstack(weights)
  flat = tf.unstack(flat)  # one op, not a slice per level
  residual = x
  codes, rows, inputs, chosen_codes = [], [], [], []
  for level in range(num_levels):  # D is small: an unrolled chain
    b = book_of(level, num_books)
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
  return Chain(codes=tf.stack(codes, -1), rows=rows, inputs=inputs,
               partial_sums=tf.stack(partial_sums, 2), total=total,
               squares=2.0 * tf.add_n([tf.nn.l2_loss(r) for r in left]),
               residual_sum=tf.add_n(left))


def statistics(rows, inputs, *, views: int, num_books: int,
               codebook_size: int):
  """Per-book assignment counts [V, books, K] and residual sums
  [V, books, K, d] of the local batch, from each level's chosen rows of the
  flat books (`Chain.rows`: view v's codes are rows v K..v K + K - 1) and
  its input (a shared book adds up its levels). Per level, ONE MatMul of the
  one-hot assignments over its own V K rows (CPU's segment sum, or a one-hot
  over every level's rows, is several times slower at these shapes)."""
  size, dim = codebook_size, inputs[0].shape[-1]
  counts, sums = [], []
  for row, residual in zip(rows, inputs):
    one_hot = tf.one_hot(tf.reshape(row, [-1]), views * size,
                         dtype=residual.dtype)  # [B V, V K]
    sums.append(tf.matmul(one_hot, tf.reshape(residual, (-1, dim)),
                          transpose_a=True))  # [V K, d]
    counts.append(tf.reduce_sum(one_hot, 0))
  if num_books == 1 and len(rows) > 1:
    counts, sums = [tf.add_n(counts)], [tf.add_n(sums)]
  return (tf.transpose(tf.reshape(tf.stack(counts), (num_books, views, size)),
                       (1, 0, 2)),
          tf.transpose(tf.reshape(tf.stack(sums),
                                  (num_books, views, size, dim)),
                       (1, 0, 2, 3)))
