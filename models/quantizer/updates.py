"""How the quantizer's codebooks learn after seeding: the state right after
seeding, the EMA update with Laplace smoothing, and the restart of codes no
row chose for a while (so no code stays dead)."""
import tensorflow as tf


def initial_state(books, num_rows, step, *, num_levels: int,
                  codebook_size: int):
  """State right after seeding: a uniform-usage prior of one global batch,
  sums matching the seeded codes, every code just used. Returns books,
  counts, sums, last_used."""
  levels_per_book = num_levels // books.shape[1]
  share = (tf.cast(num_rows * levels_per_book, books.dtype) / codebook_size)
  counts = tf.fill(tf.shape(books)[:-1], share)
  return books, counts, books * share, tf.fill(tf.shape(books)[:-1], step)


def restart_pool(rows, shared_codebook: bool) -> tf.Tensor:
  """Level inputs [D, N, V, d] (or a list of D [N, V, d]) -> restart pool
  per book [V, books, N', d]."""
  if isinstance(rows, (list, tuple)):
    rows = tf.stack(rows)
  if shared_codebook:
    views, dim = rows.shape[2], rows.shape[3]
    return tf.reshape(tf.transpose(rows, (2, 0, 1, 3)), (views, 1, -1, dim))
  return tf.transpose(rows, (2, 0, 1, 3))


def updated_state(books, counts, sums, rows, step, seed,
                  ema_counts, ema_sums, last_used, *, codebook_update: str,
                  decay: float, epsilon: float, restart_after_steps: int,
                  shared_codebook: bool):
  """EMA update with Laplace smoothing, then restarts of the codes unused
  for `restart_after_steps` steps, from `rows` (level inputs [D, N, V, d]
  of rows of the global batch; rearranged only when a code restarts).
  The state's previous values are passed in (read once per step). Returns
  books, ema_counts, ema_sums, last_used."""
  size = books.shape[2]
  ema_counts = decay * ema_counts + (1.0 - decay) * counts
  total = tf.reduce_sum(ema_counts, -1, keepdims=True)
  if codebook_update == "ema":
    ema_sums = decay * ema_sums + (1.0 - decay) * sums
    smoothed = ((ema_counts + epsilon) / (total + size * epsilon) * total)
    books = ema_sums / smoothed[..., None]
  else:
    ema_sums = tf.zeros_like(books)
  last_used = tf.where(counts > 0, step, last_used)
  if not restart_after_steps:
    return books, ema_counts, ema_sums, last_used
  dead = step - last_used >= restart_after_steps

  def restart():
    # A random permutation of the pool rows per book (without replacement
    # when the pool has at least K rows).
    pool = restart_pool(rows, shared_codebook)
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
