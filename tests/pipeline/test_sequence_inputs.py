"""Sequence inputs: tf.data densifies them, the serving signatures truncate over-long
histories to the last max_length and accept empty ones, and `hmdn predict`'s request
parser checks every element, naming the instance, the feature and the position."""
import base64
import json

import numpy as np
import pytest
import tensorflow as tf

from hmdn.features import spec as spec_lib
from hmdn.pipeline import data, export, serving_request
from hmdn.pipeline.serving_request import RequestError

SPEC = spec_lib.spec_from_dict({"name": "t", "features": [
    {"name": "click", "kind": "numeric", "role": "label"},
    {"name": "ts", "kind": "numeric", "role": "passthrough"},
    {"name": "user_id", "kind": "categorical"},
    {"name": "item_id", "kind": "categorical"},
    {"name": "hist", "kind": "sequence", "vocab_from": "item_id", "max_length": 3,
     "derived": {"kind": "history", "source": "user_id", "of": "item_id",
                 "order_by": "ts"}},
    {"name": "clicked", "kind": "sequence", "vocab_from": "item_id", "max_length": 2}]})
GOOD = {"user_id": "u1", "item_id": "i1", "hist": ["a", "b"], "clicked": []}


def _example(values, ints=()):
  """A serialized tf.Example; the fields named in `ints` as int64 lists."""
  example = tf.train.Example()
  for name, value in values.items():
    feature = example.features.feature[name]
    if name in ints:
      feature.int64_list.value.extend(int(v) for v in
                                      (value if isinstance(value, list) else [value]))
    elif isinstance(value, float):
      feature.float_list.value.append(value)
    elif isinstance(value, list):
      feature.bytes_list.value.extend(v.encode() for v in value)
    else:
      feature.bytes_list.value.append(value.encode())
  return example.SerializeToString()


def _b64(serialized):
  return {"examples": {"b64": base64.b64encode(serialized).decode()}}


def _text(x):
  return [[v.decode() for v in row] for row in np.asarray(x)]


def test_parse_batch_densifies_keeping_the_last_values_padded_at_the_end():
  rows = [dict(GOOD, hist=["a", "b", "c", "d", "e"], clicked=["x"]),
          dict(GOOD, hist=[], clicked=[]), dict(GOOD, hist=["z"], clicked=["p", "q", "r"])]
  parsed = data.parse_batch(tf.constant([_example(r) for r in rows]), SPEC,
                            for_serving=True)
  assert _text(parsed["hist"]) == [["c", "d", "e"], ["", "", ""], ["z", "", ""]]
  assert _text(parsed["clicked"]) == [["x", ""], ["", ""], ["q", "r"]]
  empty = data.parse_batch(tf.constant([_example(dict(GOOD, hist=[]))]), SPEC,
                           for_serving=True)
  assert _text(empty["hist"]) == [[""]]  # at least one column, all padding


def test_dense_sequence_drops_empty_strings_and_is_per_row():
  x = tf.constant([["a", "", "b", "c"], ["d", "", "", ""]])
  assert _text(data.dense_sequence(x, 2)) == [["b", "c"], ["d", ""]]
  assert _text(data.dense_sequence(tf.constant([["d"]]), 2)) == [["d"]]


class _SeenModel(tf.keras.Model):
  """Reports what it received instead of a probability: width * 1e6 + the row's
  history length * 1e3 + a hash of its most recent value (< 1000; exact in float32)."""

  def call(self, inputs, training=False):
    hist = inputs["hist"]
    length = tf.reduce_sum(tf.cast(tf.not_equal(hist, ""), tf.int64), 1)
    last = tf.gather(hist, tf.maximum(length - 1, 0), batch_dims=1)
    width = tf.cast(tf.shape(hist)[1], tf.int64)
    seen = width * 1_000_000 + length * 1000 + tf.strings.to_hash_bucket_fast(last, 1000)
    return {"probability": tf.cast(seen, tf.float32)}


def _seen(out):
  """(width, length, hash of the last value) per row, from `_SeenModel`'s output."""
  return [(int(v) // 1_000_000, int(v) // 1000 % 1000, int(v) % 1000)
          for v in out["probability"].numpy()]


def _hash(value):
  return int(tf.strings.to_hash_bucket_fast(value, 1000))


@pytest.fixture(scope="module")
def module():
  return export.ServingModule(_SeenModel(), SPEC)


def test_raw_signature_truncates_to_the_most_recent_and_accepts_empty(module):
  long = [f"v{k}" for k in range(10)]
  tensors = serving_request.tensors_from_instances(SPEC, [
      dict(GOOD, hist=long), dict(GOOD, hist=[]), dict(GOOD, hist=["a"])])
  seen = _seen(module.serve_tensors(tensors))
  # max_length 3: the last three of ten, width 3; an empty history is all padding
  assert seen == [(3, 3, _hash("v9")), (3, 0, _hash("")),
                  (3, 1, _hash("a"))]


def test_example_signature_truncates_the_same_way(module):
  seen = _seen(module.serve_examples(tf.constant([
      _example(dict(GOOD, hist=[f"v{k}" for k in range(10)])), _example(GOOD)])))
  assert seen == [(3, 3, _hash("v9")), (3, 2, _hash("b"))]


def test_a_row_scores_the_same_alone_and_beside_a_max_length_history(module):
  row = dict(GOOD, hist=["a"])
  alone = module.serve_tensors(serving_request.tensors_from_instances(SPEC, [row]))
  batch = module.serve_tensors(serving_request.tensors_from_instances(
      SPEC, [row, dict(GOOD, hist=["x", "y", "z", "w"])]))
  (w1, n1, h1), (w2, n2, h2) = _seen(alone)[0], _seen(batch)[0]
  assert (n1, h1) == (n2, h2) == (1, _hash("a")) and (w1, w2) == (1, 3)


@pytest.mark.parametrize("change,message", [
    (dict(hist=["a", {"id": 1}]),
     r"instances\[0\]: field 'hist' position 1: \{'id': 1\} is not a categorical"),
    (dict(hist=["a", "b", float("nan")]),
     r"instances\[0\]: field 'hist' position 2: nan is not a categorical value"),
    (dict(hist=["a", "", "b"]), r"instances\[0\]: field 'hist' position 1: empty value"),
    (dict(hist=["", "a"]), r"instances\[0\]: field 'hist' position 0: empty value"),
    (dict(hist=[None]), r"instances\[0\]: field 'hist' position 0: None is not"),
    (dict(hist=[["a"]]), r"instances\[0\]: field 'hist' position 0: \['a'\] is not"),
    (dict(hist="a|b"), r"instances\[0\]: feature 'hist' must be a list of values"),
    (dict(hist={"a": 1}), r"instances\[0\]: feature 'hist' must be a list of values"),
])
def test_request_lists_are_checked_element_by_element(change, message):
  with pytest.raises(RequestError, match=message):
    serving_request.tensors_from_instances(SPEC, [GOOD, dict(GOOD, **change)][1:])


def test_a_nan_in_a_json_request_list_is_one_line_error():
  body = json.dumps({"signature_name": "predict", "instances": [
      GOOD, dict(GOOD, hist=["a", float("nan")])]})
  request = serving_request.parse_request(body)
  with pytest.raises(RequestError, match=r"^instances\[1\]: field 'hist' position 1: "
                                         r"nan is not a categorical value$"):
    serving_request.signature_inputs(SPEC, request)


def test_good_requests_pad_lists_and_take_missing_as_empty():
  tensors = serving_request.tensors_from_instances(SPEC, [
      {"user_id": "u", "item_id": "i", "hist": ["a", "b", "c", "d"]},
      {"user_id": "u", "item_id": "i", "hist": [1, 2]}])
  assert tensors["hist"].tolist() == [["a", "b", "c", "d"], ["1", "2", "", ""]]
  assert tensors["clicked"].shape == (2, 1) and tensors["clicked"].tolist() == [[""], [""]]


def test_a_request_padded_for_tf_serving_is_the_same_request():
  """TF Serving's row format pads a batch's lists with "" to one length; hmdn predict
  takes that request as it takes the unpadded one."""
  rows = [{"user_id": "u", "item_id": "i", "hist": ["a", "b", "c"]},
          {"user_id": "u", "item_id": "i", "hist": []}]
  padded = [dict(rows[0]), dict(rows[1], hist=["", "", ""])]
  plain = serving_request.tensors_from_instances(SPEC, rows)
  again = serving_request.tensors_from_instances(SPEC, padded)
  assert plain.keys() == again.keys()
  for name in plain:
    np.testing.assert_array_equal(plain[name], again[name])


def test_examples_with_sequences_are_checked():
  serving_request.examples_from_instances([_b64(_example(GOOD))], SPEC)
  with pytest.raises(RequestError, match=r"instances\[0\]: field 'hist' position 1: "
                                         r"empty value"):
    serving_request.examples_from_instances([_b64(_example(dict(GOOD, hist=["a", ""])))],
                                            SPEC)
  ex = tf.train.Example()
  ex.features.feature["user_id"].bytes_list.value.append(b"u")
  ex.features.feature["item_id"].bytes_list.value.append(b"i")
  ex.features.feature["hist"].int64_list.value.extend([1, 2])  # ids as ints: accepted
  serving_request.examples_from_instances([_b64(ex.SerializeToString())], SPEC)
  ex.features.feature["hist"].float_list.value.extend([1.0, 2.0])
  with pytest.raises(RequestError, match=r"^instances\[0\]: feature 'hist' is a "
                                         r"float_list, the spec needs a bytes_list or "
                                         r"an int64_list \(ids\)$"):
    serving_request.examples_from_instances([_b64(ex.SerializeToString())], SPEC)


def test_instances_from_examples_keep_sequences_as_lists():
  inst = serving_request.instances_from_examples(SPEC, [_example(GOOD)], raw=True)
  assert inst == [{"user_id": "u1", "item_id": "i1", "hist": ["a", "b"], "clicked": []}]
  inst = serving_request.instances_from_examples(
      SPEC, [_example(INTS, ints=("item_id", "hist"))], raw=True)
  assert inst == [dict(INTS)]


def test_unknown_ids_in_a_history_are_sent_as_they_are(module):
  """An id the vocabulary never saw is no request error: the model's lookup makes it
  OOV (the vocabulary is vocab_from's, so nothing here knows it)."""
  tensors = serving_request.tensors_from_instances(
      SPEC, [dict(GOOD, hist=["never_seen_1", "never_seen_2"])])
  assert tensors["hist"].tolist() == [["never_seen_1", "never_seen_2"]]
  assert _seen(module.serve_tensors(tensors)) == [(2, 2, _hash("never_seen_2"))]


INTS = dict(GOOD, user_id="7", item_id="123", hist=["123", "-4", "9007199254740993"],
            clicked=["0"])


def test_int64_ids_in_an_example_read_as_their_decimal_strings():
  """Every categorical, multi-valued or sequence input given as an int64_list parses
  to the strings a bytes_list of its decimal ids gives, each example on its own (a
  batch mixing both forms, an empty int64 list, ids beyond float64's exact range)."""
  as_bytes = _example(INTS)
  as_ints = _example(INTS, ints=("user_id", "item_id", "hist", "clicked"))
  empty = _example(dict(INTS, hist=[]), ints=("hist",))
  parse = lambda rows: data.parse_batch(  # noqa: E731
      data.int_ids_as_bytes(tf.constant(rows), SPEC), SPEC, for_serving=True)
  want, got = parse([as_bytes, as_bytes, _example(dict(INTS, hist=[]))]), parse(
      [as_ints, as_bytes, empty])
  assert sorted(got) == sorted(want)
  for name in want:
    assert np.asarray(got[name]).tolist() == np.asarray(want[name]).tolist(), name
  assert _text(got["hist"])[0] == ["123", "-4", "9007199254740993"]
  unchanged = tf.constant([as_bytes])  # nothing to rewrite: the same bytes
  assert data.int_ids_as_bytes(unchanged, SPEC).numpy().tolist() == [as_bytes]


def test_int64_ids_score_as_their_strings_through_the_signatures(module):
  rows = [_example(INTS), _example(INTS, ints=("hist", "item_id"))]
  assert len(set(_seen(module.serve_examples(tf.constant(rows))))) == 1
  scores = module.classify(tf.constant(rows))["scores"].numpy()
  np.testing.assert_array_equal(scores[0], scores[1])


@pytest.mark.parametrize("name", ["hist", "item_id"])
def test_a_float_list_id_is_refused_naming_the_feature(module, name):
  """A float_list for a string field: 3.0 may be "3", but float32 cannot tell 16777217
  from 16777216, so it is refused, not rounded."""
  ex = tf.train.Example.FromString(_example(INTS))
  ex.features.feature[name].float_list.value.extend([123.0])
  rows = tf.constant([_example(INTS), ex.SerializeToString()])
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=f"feature {name} is a float_list at instance 1; a categorical "
                           "or sequence feature takes its ids as a bytes_list or an "
                           "int64_list"):
    module.serve_examples(rows)


def test_bytes_that_are_no_example_keep_parse_examples_error(module):
  """The int64 check decodes the proto after parse_example has checked its framing:
  bytes that are no tf.Example get parse_example's InvalidArgumentError, as before."""
  for bad in (b"abc", b"\x0a\x05\x0a\x03"):
    with pytest.raises(tf.errors.InvalidArgumentError, match="Could not parse example"):
      module.serve_examples(tf.constant([_example(GOOD), bad]))
