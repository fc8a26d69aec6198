"""Tests of the HMDRR residual quantizer."""
import os


import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from hmdn.models.quantizer import ResidualQuantizer  # noqa: E402


def _mixture(n, dim=4, clusters=6, seed=0):
  """Rows drawn from a mixture of well separated gaussians."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(scale=4.0, size=(clusters, dim))
  labels = rng.integers(0, clusters, size=n)
  return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32)


def _residual_inputs(x, partial_sums):
  """r_0..r_{D-1}: what each level quantized, [B, D, d]."""
  x = np.asarray(x)
  partial_sums = np.asarray(partial_sums)
  return np.concatenate([x[:, None], x[:, None] - partial_sums[:, :-1]], 1)


def _min_row_distance(points, rows):
  """For each point, the distance to the nearest row of `rows`."""
  return np.sqrt(((points[:, None] - rows[None]) ** 2).sum(-1)).min(-1)


def test_output_shapes_and_code_range():
  layer = ResidualQuantizer(num_levels=3, codebook_size=5)
  x = _mixture(32, dim=6)
  for training in (True, False):
    out = layer(x, training=training)
    assert out["quantized"].shape == (32, 6)
    assert out["partial_sums"].shape == (32, 3, 6)
    assert out["codes"].shape == (32, 3)
    assert out["codes"].dtype == tf.int32
    codes = out["codes"].numpy()
    assert codes.min() >= 0 and codes.max() < 5
  np.testing.assert_allclose(out["quantized"], out["partial_sums"][:, -1],
                             atol=1e-5)


def test_runs_before_initialisation_at_inference():
  layer = ResidualQuantizer(num_levels=2, codebook_size=4)
  out = layer(_mixture(8), training=False)
  assert not bool(layer.initialized.numpy())
  assert np.all(np.isfinite(out["quantized"].numpy()))
  assert int(layer.step.numpy()) == 0


def test_residual_norm_does_not_grow_with_depth():
  x = _mixture(512, dim=4)
  layer = ResidualQuantizer(num_levels=4, codebook_size=8, decay=0.8)
  for _ in range(15):
    layer(x, training=True)
  out = layer(x, training=False)
  partial = out["partial_sums"].numpy()
  norms = [np.linalg.norm(x, axis=1).mean()] + [
      np.linalg.norm(x - partial[:, level], axis=1).mean()
      for level in range(4)]
  for coarse, fine in zip(norms[:-1], norms[1:]):
    assert fine <= coarse * 1.02, norms
  assert norms[-1] < 0.5 * norms[0], norms


def test_straight_through_gradient_reaches_inputs():
  x = tf.constant(_mixture(16, dim=4))
  dense = tf.keras.layers.Dense(4)
  layer = ResidualQuantizer(num_levels=2, codebook_size=4)
  layer(dense(x), training=True)  # seed the codebooks
  upstream = tf.random.stateless_normal((16, 4), seed=(1, 2))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    hidden = dense(x)
    quantized = layer(hidden, training=True)["quantized"]
    loss = tf.reduce_sum(quantized * upstream)
  np.testing.assert_allclose(tape.gradient(loss, hidden), upstream, atol=1e-6)
  kernel_grad = tape.gradient(loss, dense.kernel)
  assert np.abs(kernel_grad.numpy()).max() > 0
  assert np.abs(tape.gradient(loss, x).numpy()).max() > 0
  # The commitment loss pulls the encoder output toward the codes.
  with tf.GradientTape() as tape:
    layer(dense(x), training=False)
    commitment = tf.add_n(layer.losses)
  assert np.abs(tape.gradient(commitment, dense.kernel).numpy()).max() > 0


def test_data_dependent_init_uses_batch_residuals():
  x = _mixture(128, dim=4)
  layer = ResidualQuantizer(num_levels=3, codebook_size=8, seed=7,
                            kmeans_iterations=0)  # k-means++ alone: batch rows
  layer(x, training=False)  # builds; codebooks still random and small
  assert np.abs(layer.codebooks.numpy()).max() < 0.1
  out = layer(x, training=True)
  assert bool(layer.initialized.numpy())
  books = layer.codebooks.numpy()
  residuals = _residual_inputs(x, out["partial_sums"])
  for level in range(3):
    assert _min_row_distance(books[level], residuals[:, level]).max() < 1e-5
  assert len(np.unique(books[0], axis=0)) == 8  # k-means++ picks distinct rows
  # A uniform-usage prior of one batch, consistent with the codes.
  np.testing.assert_allclose(layer.ema_counts.numpy(), 128 / 8)
  np.testing.assert_allclose(layer.ema_sums.numpy(), books * 16, rtol=1e-6)


def test_shared_codebook_is_one_variable_for_all_levels():
  x = _mixture(64, dim=4)
  layer = ResidualQuantizer(num_levels=3, codebook_size=8,
                            shared_codebook=True, kmeans_iterations=0)
  layer(x, training=True)
  assert [v.shape for v in layer.weights if "codebooks" in v.name] == [
      (1, 8, 4)]
  assert layer.ema_counts.shape == (1, 8)
  book = layer.codebooks.numpy()[0]
  # Seeding gives levels the slices [0, 3), [3, 6), [6, 8) of the book, each
  # from the residuals left by the codes seeded before it.
  residual = x
  for start, end in ((0, 3), (3, 6), (6, 8)):
    assert _min_row_distance(book[start:end], residual).max() < 1e-5
    seeded = book[:end]
    nearest = ((residual[:, None] - seeded[None]) ** 2).sum(-1).argmin(-1)
    residual = residual - seeded[nearest]
  out = layer(x, training=False)
  partial = np.concatenate(
      [np.zeros((64, 1, 4), np.float32), out["partial_sums"].numpy()], 1)
  codes = out["codes"].numpy()
  for level in range(3):
    np.testing.assert_allclose(partial[:, level + 1] - partial[:, level],
                               book[codes[:, level]], atol=1e-5)


def test_ema_statistics_per_view_and_level():
  """Each (view, level) book's EMA counts and sums follow its own rows' codes
  and level inputs: the fused statistics keep views and levels apart."""
  x = np.stack([_mixture(256, dim=4), _mixture(256, dim=4, seed=2) * 3.0], 1)
  layer = ResidualQuantizer(num_levels=3, codebook_size=6, decay=0.9,
                            restart_after_steps=0)
  layer(x, training=True)
  x2 = np.stack([_mixture(256, dim=4, seed=1),
                 _mixture(256, dim=4, seed=3) * 3.0], 1)
  out = layer(x2, training=False)
  codes, partial = out["codes"].numpy(), out["partial_sums"].numpy()
  old_counts, old_sums = layer.ema_counts.numpy(), layer.ema_sums.numpy()
  layer(x2, training=True)
  for v in range(2):
    inputs = _residual_inputs(x2[:, v], partial[:, v])  # [B, D, d]
    for level in range(3):
      c = codes[:, v, level]
      counts = np.bincount(c, minlength=6)
      sums = np.stack([inputs[c == k, level].sum(0) for k in range(6)])
      np.testing.assert_allclose(layer.ema_counts.numpy()[v, level],
                                 0.9 * old_counts[v, level] + 0.1 * counts,
                                 rtol=1e-5)
      np.testing.assert_allclose(layer.ema_sums.numpy()[v, level],
                                 0.9 * old_sums[v, level] + 0.1 * sums,
                                 rtol=1e-4, atol=1e-4)


def test_ema_step_moves_code_toward_assigned_mean():
  x = _mixture(256, dim=4)
  layer = ResidualQuantizer(num_levels=2, codebook_size=6, decay=0.9,
                            restart_after_steps=0)
  layer(x, training=True)
  x2 = _mixture(256, dim=4, seed=1)  # same centres, new noise
  codes = layer(x2, training=False)["codes"].numpy()[:, 0]
  old_book = layer.codebooks.numpy()[0]
  old_counts = layer.ema_counts.numpy()[0]
  old_sums = layer.ema_sums.numpy()[0]
  layer(x2, training=True)
  new_book = layer.codebooks.numpy()[0]
  counts = np.bincount(codes, minlength=6).astype(np.float64)
  sums = np.stack([x2[codes == k].sum(0) for k in range(6)])
  for k in np.flatnonzero(counts):
    mean = sums[k] / counts[k]
    if np.linalg.norm(old_book[k] - mean) > 1e-3:
      assert (np.linalg.norm(new_book[k] - mean) <
              np.linalg.norm(old_book[k] - mean))
  # Exactly the Laplace-smoothed EMA rule.
  ema_counts = 0.9 * old_counts + 0.1 * counts
  ema_sums = 0.9 * old_sums + 0.1 * sums
  total = ema_counts.sum()
  smoothed = (ema_counts + 1e-5) / (total + 6 * 1e-5) * total
  np.testing.assert_allclose(layer.ema_counts.numpy()[0], ema_counts,
                             rtol=1e-5)
  np.testing.assert_allclose(new_book, ema_sums / smoothed[:, None],
                             rtol=1e-4, atol=1e-5)


def test_dead_code_is_restarted_to_a_batch_residual():
  x = _mixture(128, dim=4)
  layer = ResidualQuantizer(num_levels=2, codebook_size=6, decay=0.9,
                            restart_after_steps=3)
  layer(x, training=True)
  books = layer.codebooks.numpy()
  books[0, 3] = 1e3  # never the nearest code
  layer.codebooks.assign(books)
  sums = layer.ema_sums.numpy()
  sums[0, 3] = 1e3 * layer.ema_counts.numpy()[0, 3]  # the EMA keeps it there
  layer.ema_sums.assign(sums)
  for _ in range(2):  # unused for 1, 2 steps: not yet restarted
    out = layer(x, training=True)
    assert np.all(out["codes"].numpy()[:, 0] != 3)
    assert np.abs(layer.codebooks.numpy()[0, 3] - 1e3).max() < 1.0
  before = layer.ema_counts.numpy()[0, 3]
  out = layer(x, training=True)  # unused for 3 steps: restarted
  assert np.all(out["codes"].numpy()[:, 0] != 3)
  assert int(layer.last_used.numpy()[0, 3]) == 3
  restarted = layer.codebooks.numpy()[0, 3]
  assert np.abs(restarted - 1e3).max() > 1.0
  assert _min_row_distance(restarted[None], x)[0] < 1e-5
  # It gets the uniform share back so it is not dead again at once.
  new_counts = layer.ema_counts.numpy()[0]
  others = new_counts.sum() - new_counts[3]
  np.testing.assert_allclose(new_counts[3], (others + 0.9 * before) / 6,
                             rtol=1e-5)
  # Live codes are not restarted.
  assert _min_row_distance(layer.codebooks.numpy()[0, :3], x).min() > 1e-4


def test_inference_is_batch_independent_and_read_only():
  x = _mixture(64, dim=4)
  layer = ResidualQuantizer(num_levels=3, codebook_size=8)
  layer(x, training=True)
  layer(x[::-1], training=True)
  before = [v.numpy().copy() for v in layer.weights]
  batch = layer(x, training=False)
  alone = layer(x[5:6], training=False)
  with_others = layer(np.concatenate([_mixture(9, seed=3), x[5:6]]),
                      training=False)
  for out in (alone, with_others):
    np.testing.assert_array_equal(out["codes"][-1], batch["codes"][5])
    np.testing.assert_array_equal(out["quantized"][-1], batch["quantized"][5])
  for old, var in zip(before, layer.weights):
    np.testing.assert_array_equal(old, var.numpy())


def test_loss_mode_trains_codebooks_with_codebook_loss():
  x = tf.constant(_mixture(64, dim=4))
  layer = ResidualQuantizer(num_levels=2, codebook_size=4,
                            codebook_update="loss", commitment_weight=0.5)
  layer(x, training=True)
  assert layer.codebooks.trainable
  assert any(v is layer.codebooks for v in layer.trainable_weights)
  assert layer.ema_sums is None
  with tf.GradientTape() as tape:
    out = layer(x, training=True)
    losses = list(layer.losses)
    total_loss = tf.add_n(losses)
  assert len(losses) == 2
  partial = out["partial_sums"].numpy()
  x_np = x.numpy()
  # Averaged over levels (here 2) as well as rows.
  commitment = ((x_np[:, None] - partial) ** 2).sum((1, 2)).mean() / 2
  np.testing.assert_allclose(losses[0], 0.5 * 0.25 * commitment, rtol=1e-5)
  np.testing.assert_allclose(losses[1], 0.5 * commitment, rtol=1e-5)
  grad = tape.gradient(total_loss, layer.codebooks)
  grad = tf.convert_to_tensor(grad).numpy()
  assert np.abs(grad).max() > 0
  codes = out["codes"].numpy()
  for level in range(2):  # only chosen codes get codebook-loss gradient
    unused = np.setdiff1d(np.arange(4), codes[:, level])
    assert np.all(grad[level, unused] == 0)
  # EMA mode: only the commitment loss; codebooks are not trainable.
  ema = ResidualQuantizer(num_levels=2, codebook_size=4)
  ema(x, training=True)
  assert len(ema.losses) == 1 and not ema.codebooks.trainable
  assert not ema.trainable_weights


@pytest.fixture(scope="module")
def strategy(mirrored_strategy):
  return mirrored_strategy  # shared by the session (tests/conftest.py)


def _distributed_batches(steps, sizes=(24, 16)):
  """Per step, one batch per replica: different sizes and distributions."""
  return [[_mixture(size, dim=3, seed=10 * step + replica) + replica
           for replica, size in enumerate(sizes)] for step in range(steps)]


def test_replica_consistent_and_equal_to_global_batch_update(strategy):
  config = dict(num_levels=2, codebook_size=4, decay=0.8, seed=3,
                restart_after_steps=1)  # so restarts happen
  with strategy.scope():
    mirrored = ResidualQuantizer(**config)
    mirrored.build((None, 3))
  single = ResidualQuantizer(**config)
  single.build((None, 3))

  @tf.function
  def distributed_step(batch):
    return strategy.run(lambda v: mirrored(v, training=True)["codes"],
                        args=(batch,))

  for batches in _distributed_batches(4):
    distributed_step(strategy.experimental_distribute_values_from_function(
        lambda context, b=batches: tf.constant(
            b[context.replica_id_in_sync_group])))
    single(np.concatenate(batches), training=True)
  assert int(single.step.numpy()) == 4
  # Restarts add mass above the global batch size of 40: they did happen.
  assert single.ema_counts.numpy().sum(-1).max() > 40.5
  for var, reference in zip(mirrored.weights, single.weights):
    first, second = [v.numpy() for v in var.values]
    np.testing.assert_array_equal(first, second, err_msg=var.name)
    np.testing.assert_allclose(first.astype(np.float64),
                               reference.numpy().astype(np.float64),
                               rtol=1e-4, atol=1e-4, err_msg=var.name)


def test_keras_fit_under_mirrored_strategy_keeps_replicas_in_sync(strategy):
  x = _mixture(128, dim=4)
  y = x.sum(1, keepdims=True)
  with strategy.scope():
    inputs = tf.keras.Input((4,))
    quantizer = ResidualQuantizer(num_levels=2, codebook_size=4)
    hidden = quantizer(tf.keras.layers.Dense(4)(inputs))["quantized"]
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(1)(hidden))
    model.compile(tf.keras.optimizers.SGD(0.01), "mse")
  model.fit(x, y, batch_size=32, epochs=1, verbose=0)
  assert int(quantizer.step.numpy()) == 4
  assert bool(quantizer.initialized.numpy())
  # Counts are all-reduced: each level's EMA counts sum to the global batch.
  np.testing.assert_allclose(quantizer.ema_counts.numpy().sum(-1), 32,
                             rtol=1e-4)
  for var in quantizer.weights:
    first, second = [v.numpy() for v in var.values]
    np.testing.assert_array_equal(first, second, err_msg=var.name)


def test_config_round_trip():
  layer = ResidualQuantizer(num_levels=2, codebook_size=3,
                            shared_codebook=True, codebook_update="loss",
                            decay=0.5, epsilon=1e-3, beta=0.1,
                            commitment_weight=2.0, warmup_steps=3,
                            kmeans_iterations=2, restart_after_steps=7,
                            buffer_size=64, seed=11, name="rq")
  config = layer.get_config()
  clone = ResidualQuantizer.from_config(config)
  assert clone.get_config() == config
  for key, value in dict(num_levels=2, codebook_size=3, shared_codebook=True,
                         codebook_update="loss", decay=0.5, epsilon=1e-3,
                         beta=0.1, commitment_weight=2.0, warmup_steps=3,
                         kmeans_iterations=2, restart_after_steps=7,
                         buffer_size=64, seed=11).items():
    assert config[key] == value


@pytest.mark.parametrize("option, value", [
    ("codebook_size", 1), ("num_levels", 0), ("codebook_update", "kmeans"),
    ("decay", 1.0), ("decay", 0.0), ("beta", -0.1), ("warmup_steps", -1),
    ("restart_after_steps", -1), ("buffer_size", 4)])
def test_invalid_config_raises(option, value):
  with pytest.raises(ValueError, match=option):
    ResidualQuantizer(**{option: value})


@pytest.mark.parametrize("shape", [(4, 3, 2, 1), (4,)])
def test_input_rank_is_checked(shape):
  with pytest.raises(ValueError, match=r"\[batch_size, dim\].*received"):
    ResidualQuantizer()(tf.zeros(shape))
  layer = ResidualQuantizer()
  layer(tf.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"\[batch_size, 3\]"):
    layer.call(tf.zeros((2, 5)))


def test_saved_model_round_trip(tmp_path):
  x = _mixture(32, dim=4)
  inputs = tf.keras.Input((4,))
  outputs = ResidualQuantizer(num_levels=2, codebook_size=4, name="rq")(
      tf.keras.layers.Dense(4)(inputs))
  model = tf.keras.Model(inputs, outputs)
  model(x, training=True)  # seed the codebooks
  expected = model(x, training=False)
  path = str(tmp_path / "model")
  tf.saved_model.save(model, path)
  restored = tf.saved_model.load(path)
  got = restored(tf.constant(x), training=False)
  np.testing.assert_array_equal(got["codes"], expected["codes"])
  np.testing.assert_allclose(got["quantized"], expected["quantized"],
                             atol=1e-6)
  keras_path = str(tmp_path / "keras_model")
  model.save(keras_path, save_format="tf")
  reloaded = tf.keras.models.load_model(
      keras_path, custom_objects={"ResidualQuantizer": ResidualQuantizer})
  got = reloaded(x, training=False)
  np.testing.assert_array_equal(got["codes"], expected["codes"])
  np.testing.assert_allclose(got["quantized"], expected["quantized"],
                             atol=1e-6)


def test_warmup_passes_inputs_through_then_seeds_from_the_buffer():
  layer = ResidualQuantizer(num_levels=2, codebook_size=4, warmup_steps=3,
                            buffer_size=64, seed=1)
  batches = [_mixture(16, dim=4, seed=s) for s in range(4)]
  for step, x in enumerate(batches[:3]):
    out = layer(x, training=True)
    np.testing.assert_array_equal(out["quantized"], x)  # not quantized
    assert np.all(out["codes"].numpy() == 0)
    assert float(tf.add_n(layer.losses)) == 0.0
    assert not bool(layer.initialized.numpy())
    assert int(layer.buffer_rows.numpy()) == 16 * (step + 1)
  np.testing.assert_array_equal(layer.buffer.numpy()[:48],
                                np.concatenate(batches[:3]))
  before = layer(batches[0], training=False)  # inference passes through too
  np.testing.assert_array_equal(before["quantized"], batches[0])
  out = layer(batches[3], training=True)  # seeded now, quantized at once
  assert bool(layer.initialized.numpy())
  assert np.abs(out["quantized"].numpy() - batches[3]).max() > 1e-3
  np.testing.assert_allclose(out["quantized"], out["partial_sums"][:, -1],
                             atol=1e-5)
  assert int(layer.buffer_rows.numpy()) == 64  # the seeding step's rows too
  assert np.abs(layer.codebooks.numpy()).max() > 1.0  # data scale, not init


def test_kmeans_seeding_reduces_distortion_vs_kmeanspp_alone():
  x = _mixture(512, dim=4, clusters=12, seed=3)

  def distortion(iterations):
    layer = ResidualQuantizer(num_levels=1, codebook_size=8, seed=5,
                              kmeans_iterations=iterations)
    out = layer(x, training=True)
    return float(((x - out["quantized"].numpy()) ** 2).sum(1).mean())

  plain, lloyd = distortion(0), distortion(5)
  assert lloyd < 0.95 * plain, (plain, lloyd)


def test_diagnostics_are_in_range_and_count_flips():
  x = _mixture(256, dim=4)
  layer = ResidualQuantizer(num_levels=3, codebook_size=8, decay=0.5)
  layer(x, training=True)
  first = layer.diagnostics(x[:100])
  assert np.all(np.isnan(first["flip_share"]))  # nothing to compare with yet
  weights = [v.numpy().copy() for v in layer.weights]
  again = layer.diagnostics(x[:100])
  np.testing.assert_array_equal(again["flip_share"], 0.0)  # same books
  # On data like the training data the residual shrinks level by level.
  ratio = again["residual_ratio"]
  assert np.all((ratio > 0) & (ratio < 1.0)) and np.all(np.diff(ratio) <= 1e-6)
  for old, var in zip(weights, layer.weights):  # diagnostics update nothing
    np.testing.assert_array_equal(old, var.numpy())
  for _ in range(3):
    layer(_mixture(256, dim=4, seed=9) * 2.0, training=True)
  report = layer.diagnostics(x[:100])
  for key in ("residual_ratio", "perplexity", "dead_codes", "flip_share"):
    assert report[key].shape == (3,), key
  assert np.all(report["residual_ratio"] >= 0)
  assert np.all((report["perplexity"] >= 1) & (report["perplexity"] <= 8))
  assert np.all((report["dead_codes"] >= 0) & (report["dead_codes"] <= 7))
  assert np.all((report["flip_share"] >= 0) & (report["flip_share"] <= 1))
  assert report["flip_share"].max() > 0  # the codebooks moved


def _per_view_reference(x, books, levels):
  """The old per-view path: one quantizer chain per view, numpy."""
  codes, sums = [], []
  for v in range(x.shape[1]):
    residual, total, c, s = x[:, v], np.zeros_like(x[:, v]), [], []
    for level in range(levels):
      book = books[v, level]
      code = ((residual[:, None] - book[None]) ** 2).sum(-1).argmin(-1)
      residual = residual - book[code]
      total = total + book[code]
      c.append(code)
      s.append(total)
    codes.append(np.stack(c, 1))
    sums.append(np.stack(s, 1))
  return np.stack(codes, 1), np.stack(sums, 1)


def test_fused_views_equal_the_per_view_path():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 3, 5)).astype(np.float32)
  fused = ResidualQuantizer(num_levels=3, codebook_size=6)
  fused(x, training=True)
  assert fused.codebooks.shape == (3, 3, 6, 5)
  out = fused(x, training=False)
  codes, sums = _per_view_reference(x, fused.codebooks.numpy(), 3)
  np.testing.assert_array_equal(out["codes"], codes)
  np.testing.assert_allclose(out["partial_sums"], sums, atol=1e-6)
  # And each view equals a single-view quantizer holding that view's books.
  for v in range(3):
    single = ResidualQuantizer(num_levels=3, codebook_size=6)
    single(x[:, v], training=False)
    single.codebooks.assign(fused.codebooks.numpy()[v])
    single.initialized.assign(True)
    alone = single(x[:, v], training=False)
    np.testing.assert_array_equal(alone["codes"], out["codes"][:, v])
    np.testing.assert_array_equal(alone["quantized"], out["quantized"][:, v])


def test_fused_views_inference_is_batch_independent():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(40, 2, 4)).astype(np.float32)
  layer = ResidualQuantizer(num_levels=2, codebook_size=4, shared_codebook=True)
  layer(x, training=True)
  batch = layer(x, training=False)
  alone = layer(x[7:8], training=False)
  np.testing.assert_array_equal(alone["codes"][0], batch["codes"][7])
  np.testing.assert_array_equal(alone["quantized"][0], batch["quantized"][7])


def test_commitment_gradient_is_its_exact_derivative():
  """The commitment's gradient (attached in one product, not back through the
  chain) equals d/dx of lambda beta mean_rows sum_l ||x - sg(s_l)||^2 / D."""
  x = tf.constant(_mixture(64, dim=4))
  layer = ResidualQuantizer(num_levels=3, codebook_size=4, beta=0.3,
                            commitment_weight=0.7, restart_after_steps=0)
  layer(x, training=True)  # seeds the codebooks
  with tf.GradientTape() as tape:
    tape.watch(x)
    out = layer(x, training=True)
    commitment = layer.losses[0]
  partial = out["partial_sums"].numpy()  # s_1..s_D the step quantized with
  x_np = x.numpy()
  expected_value = 0.7 * 0.3 * ((x_np[:, None] - partial) ** 2).sum((1, 2)).mean() / 3
  np.testing.assert_allclose(commitment, expected_value, rtol=1e-5)
  expected = 0.7 * 0.3 * 2 * (x_np[:, None] - partial).sum(1) / (64 * 3)
  np.testing.assert_allclose(tape.gradient(commitment, x), expected,
                             rtol=1e-4, atol=1e-7)
