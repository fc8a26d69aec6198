"""Raw-cell typing: a value that does not fit its field is rejected, never coerced."""
import pytest

from hmdn.features import spec as spec_lib

from spec_cases import BASE, _spec  # noqa: E402  (the spec these tests vary)


@pytest.fixture(scope="module")
def spec():
  return _spec(BASE)


@pytest.mark.parametrize("field,raw,message", [
    ("price", "1e39", r"'price': value '1e39' is outside the float32 range"),
    ("price", -1e39, r"'price': value -1e\+39 is outside the float32 range"),
    ("price", "nan", r"'price': value 'nan' is not a finite number"),
    ("price", "inf", r"'price': value 'inf' is not a finite number"),
    ("price", True, r"'price': boolean True is not a number"),
    ("price", {"a": 1}, r"'price': value \{'a': 1\} is not a number"),
    ("price", [1.0], r"'price': value \[1.0\] is not a number"),
    ("scenario", {"id": 3}, r"'scenario': \{'id': 3\} is not a categorical value"),
    ("scenario", ["a", "b"], r"'scenario': \['a', 'b'\] is not a categorical value"),
    ("scenario", False, r"'scenario': boolean False is not a category"),
    ("scenario", "x" * (spec_lib.MAX_CELL_CHARS + 1), r"'scenario': a cell of 10001 "
     r"characters is over the limit of 10000"),
    ("tags", ["a", ["b"]], r"'tags': \['b'\] is not a categorical value"),
    ("tags", {"a": 1}, r"'tags': a JSON object is not a list of values"),
    ("tags", ["a", True], r"'tags': True is not a categorical value"),
    ("click", True, r"'click': boolean True is not a number"),
    ("price", 10 ** 400, r"'price': value 1000.* is outside the float32 range"),
    ("click", 10 ** 400, r"'click': label 1000.* is not a number"),
    ("scenario", "\ud800", r"'scenario': '\\ud800' is not valid Unicode"),
    ("tags", ["a", "x" * (spec_lib.MAX_CELL_CHARS + 1)], r"'tags': a value of 10001 "
     r"characters is over the limit"),
])
def test_values_that_do_not_fit_are_rejected_not_coerced(spec, field, raw, message):
  with pytest.raises(spec_lib.SpecError, match=message):
    spec.parse_value(spec[field], raw)


@pytest.mark.parametrize("field,raw,expected", [
    ("price", "3.4e38", 3.4e38),
    ("price", 7, 7.0),
    ("scenario", 3.0, "3"),
    ("scenario", 3, "3"),
    ("scenario", "tab\there", "tab\there"),
    ("tags", ["a", 2, ""], ["a", "2"]),
    ("tags", "a|b", ["a", "b"]),
    ("tags", "", []),
])
def test_values_that_fit_are_typed(spec, field, raw, expected):
  assert spec.parse_value(spec[field], raw) == expected


def test_check_cell_refuses_what_a_tf_example_cannot_hold(spec):
  """A split multi-valued cell's pieces and a parsed string are checked like a cell."""
  tags = spec["tags"]
  assert spec_lib.check_cell(tags, ["a", "b"]) == ["a", "b"]
  assert spec_lib.check_cell(spec["price"], 2.5) == 2.5
  with pytest.raises(spec_lib.SpecError,
                     match=r"'tags': '\\ud800' is not valid Unicode"):
    spec_lib.check_cell(tags, spec.parse_value(tags, "a|\ud800"))
  with pytest.raises(spec_lib.SpecError, match=r"'scenario': a value of 10001 "):
    spec_lib.check_cell(spec["scenario"], "x" * (spec_lib.MAX_CELL_CHARS + 1))


# Python's float() takes each of these (it would coerce them); the strict grammar does not.
FLOAT_TAKES = ["1_000", "\uff11\uff12", "\u0661\u0662", "\u00a012", "12\n", "1\u3000"]


@pytest.mark.parametrize("field,raw", [(f, r) for f in ("price", "click")
                                       for r in FLOAT_TAKES + ["0x10", "1 000", "1e", "."]])
def test_numbers_outside_the_ascii_grammar_are_rejected(spec, field, raw):
  with pytest.raises(spec_lib.SpecError, match=rf"'{field}': (label|value) .* is not a "
                     r"number \(ASCII decimal or scientific notation"):
    spec.parse_value(spec[field], raw)


def test_float_would_have_coerced_the_rejected_numbers():
  assert [float(r) for r in FLOAT_TAKES] == [1000.0, 12.0, 12.0, 12.0, 12.0, 1.0]


@pytest.mark.parametrize("raw,expected", [
    ("12", 12.0), ("-0.5", -0.5), ("+.5", 0.5), ("5.", 5.0), ("1e3", 1000.0),
    ("1E-3", 0.001), (" 2.5\t", 2.5), ("007", 7.0),
])
def test_numbers_in_the_ascii_grammar_are_read(spec, raw, expected):
  assert spec.parse_value(spec["price"], raw) == expected
  assert spec_lib.cells.is_number_column([raw, "1"])


def test_a_column_is_numbers_only_if_every_cell_is():
  is_numbers = spec_lib.cells.is_number_column
  assert is_numbers(["1", "2.5", "-3e2"])
  assert not is_numbers(["1", "1_000"])
  assert not is_numbers(["1", "2\n3"])  # a cell holding the joining newline
  assert not is_numbers(["1", ""])
