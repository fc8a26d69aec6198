"""Helpers shared by the Beam job's tests."""
import pytest


@pytest.fixture(scope="session")
def read_split():
  """read_split(data_dir, spec, split) -> (rows as {field: value}, serialized records)
  of a preprocessed split, read back through the trainer's parser (`split_reader`)."""
  import split_reader
  return split_reader.read_split


class _DerivedChecks:
  """Checks of a job's derived-feature tables against the model that looks them up.
  `job` is a test module's fixture: {"spec", "layout" (PreprocessedData), "expected"
  ({field: {key: value}}), "serialized" and "records" (per split)}."""

  @staticmethod
  def layer(job):
    from hmdn.models.embedding import FeatureEmbeddings
    layout = job["layout"]
    return FeatureEmbeddings(job["spec"].to_dict(), layout.vocab_dir,
                             layout.numeric_moments, layout.tables_dir)

  def model_lookup(self, job, field, users):
    """The model derives `field` of `users` as the job's table says ("" when unseen,
    the last two users here) and embeds it with the vocabulary's ids (OOV 0)."""
    import tensorflow as tf
    from hmdn.features.preprocessed import unescape_value
    layer = self.layer(job)
    batch = {"user_id": tf.constant(users), "device": tf.constant(["pc"] * len(users)),
             "hour": tf.constant([1.0] * len(users))}
    derived = layer.derived_values(batch)
    vocab = [unescape_value(v) for v in tf.io.gfile.GFile(
        job["layout"].vocab_path(field)).read().splitlines()]
    expected = [job["expected"][field].get(u, "") for u in users]
    assert [v.decode() for v in derived[field].numpy()] == expected
    ids = layer.ids(field, derived[field]).numpy().tolist()
    assert ids == [vocab.index(v) + 1 if v in vocab else 0 for v in expected]
    assert ids[-2:] == [0, 0] and min(ids[:-2]) > 0
    assert layer(batch)[field].shape == (len(users), 2)

  def recomputation(self, job):
    """Every derived value in the TFRecords equals the model's recomputation from the
    raw inputs a server would be sent."""
    import tensorflow as tf
    from hmdn.features.preprocessed import EVAL, TRAIN
    from hmdn.pipeline import data as data_lib
    layer, spec = self.layer(job), job["spec"]
    for split in (TRAIN, EVAL):
      fed = data_lib.parse_batch(tf.constant(job["serialized"][split]), spec,
                                 for_serving=True)
      assert not set(fed) & {f.name for f in spec.derived_fields}
      recomputed = layer.derived_values(fed)
      for f in spec.derived_fields:
        got = [v.decode() for v in recomputed[f.name].numpy()]
        assert got == [r[f.name] for r in job["records"][split]], (split, f.name)


@pytest.fixture(scope="session")
def derived_checks():
  return _DerivedChecks()
