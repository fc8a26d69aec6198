"""Several labels, one per task, and `after` (a task observed only after another)."""
import pytest
import yaml

from hmdn.features import spec as spec_lib
from spec_cases import BASE, _spec  # noqa: E402  (the spec these tests vary)

PURCHASE = {"name": "purchase", "kind": "numeric", "role": "label", "after": "click"}


def test_a_second_label_after_the_first_is_a_second_task():
  spec = _spec(BASE + [PURCHASE])
  assert [f.name for f in spec.labels] == ["click", "purchase"]
  assert spec.label.name == "click" and spec["purchase"].after == "click"
  written = yaml.safe_dump(spec.to_dict())
  assert "after: click" in written
  assert spec_lib.spec_from_yaml(written, "t.yaml").to_dict() == spec.to_dict()


def test_independent_labels_and_a_chain_are_accepted():
  cart = {"name": "cart", "kind": "numeric", "role": "label", "after": "click"}
  buy = {"name": "buy", "kind": "numeric", "role": "label", "after": "cart"}
  like = {"name": "like", "kind": "numeric", "role": "label"}
  spec = _spec(BASE + [cart, buy, like])
  assert [f.after for f in spec.labels] == [None, "click", "cart", None]


@pytest.mark.parametrize("change, words", [
    ({"after": "nothing"}, ["'purchase'", "after", "'nothing'", "not a field"]),
    ({"after": "price"}, ["'purchase'", "'price'", "not a label"]),
    ({"after": "purchase"}, ["'purchase'", "names the field itself"]),
    ({"after": 1}, ["'purchase'", "after"]),
    ({"after": ["click"]}, ["'purchase'", "after"]),
])
def test_a_bad_after_is_refused_naming_the_field(change, words):
  with pytest.raises(spec_lib.SpecError) as e:
    _spec(BASE + [dict(PURCHASE, **change)])
  for w in words:
    assert w in str(e.value), str(e.value)


def test_after_on_a_feature_is_refused():
  features = [dict(f) for f in BASE]
  features[3]["after"] = "click"  # price
  with pytest.raises(spec_lib.SpecError, match="'price'.*after is for labels only"):
    _spec(features)


def test_a_cycle_of_afters_is_refused_naming_it():
  a = {"name": "a", "kind": "numeric", "role": "label", "after": "b"}
  b = {"name": "b", "kind": "numeric", "role": "label", "after": "a"}
  with pytest.raises(spec_lib.SpecError, match="cycle: a -> b -> a"):
    _spec(BASE + [a, b])


def test_two_labels_of_one_name_are_refused():
  with pytest.raises(spec_lib.SpecError, match="declared twice"):
    _spec(BASE + [dict(BASE[0])])


def test_a_spec_without_a_label_is_refused():
  with pytest.raises(spec_lib.SpecError, match="role 'label'"):
    _spec(BASE[1:])


@pytest.mark.parametrize("click, purchase, ok", [
    (1.0, 1.0, True), (1.0, 0.0, True), (0.0, 0.0, True), (0.0, 1.0, False)])
def test_a_task_positive_without_its_prerequisite_is_refused(click, purchase, ok):
  spec = _spec(BASE + [PURCHASE])
  record = {"click": click, "purchase": purchase}
  if ok:
    spec_lib.check_tasks(spec, record)
  else:
    with pytest.raises(spec_lib.SpecError, match="'purchase'.*1 where 'click' is 0"):
      spec_lib.check_tasks(spec, record)


# --- An oracle per task ---------------------------------------------------------------
CTR = {"name": "true_ctr", "kind": "numeric", "role": "oracle"}
CVR = {"name": "true_cvr", "kind": "numeric", "role": "oracle", "task": "purchase"}


def test_an_oracle_without_a_task_is_the_first_tasks():
  spec = _spec(BASE + [PURCHASE, CTR])
  assert spec.oracle.name == "true_ctr"
  assert {t: f.name for t, f in spec.oracles.items()} == {"click": "true_ctr"}


def test_each_task_has_its_own_oracle_and_the_task_key_round_trips():
  spec = _spec(BASE + [PURCHASE, CTR, CVR])
  assert {t: f.name for t, f in spec.oracles.items()} == {
      "click": "true_ctr", "purchase": "true_cvr"}
  assert spec.oracle.name == "true_ctr"
  written = yaml.safe_dump(spec.to_dict())
  assert "task: purchase" in written and written.count("task:") == 1
  assert spec_lib.spec_from_yaml(written, "t.yaml").to_dict() == spec.to_dict()


def test_a_spec_with_only_a_later_tasks_oracle_has_no_first_task_oracle():
  spec = _spec(BASE + [PURCHASE, CVR])
  assert spec.oracle is None and list(spec.oracles) == ["purchase"]


def test_a_spec_without_an_oracle_has_none():
  spec = _spec(BASE + [PURCHASE])
  assert spec.oracle is None and spec.oracles == {}


@pytest.mark.parametrize("extra, words", [
    ([dict(CVR, task="cart")], ["'true_cvr'", "task", "'cart'", "not a label"]),
    ([dict(CVR, task="price")], ["'true_cvr'", "task", "'price'", "not a label"]),
    ([CTR, dict(CTR, name="p2")], ["'p2'", "two oracles", "'click'", "'true_ctr'"]),
    ([CTR, dict(CTR, name="p2", task="click")], ["'p2'", "two oracles", "'click'"]),
    ([CVR, dict(CVR, name="p2")], ["'p2'", "two oracles", "'purchase'", "'true_cvr'"]),
    ([dict(CVR, task=1)], ["'true_cvr'", "task", "1"]),
    ([dict(CVR, task=["purchase"])], ["'true_cvr'", "task"]),
])
def test_a_bad_oracle_task_is_refused_naming_the_field_and_value(extra, words):
  with pytest.raises(spec_lib.SpecError) as e:
    _spec(BASE + [PURCHASE] + extra)
  for w in words:
    assert w in str(e.value), str(e.value)


def test_task_on_a_non_oracle_is_refused():
  with pytest.raises(spec_lib.SpecError, match="'purchase'.*task is for oracles only"):
    _spec(BASE + [dict(PURCHASE, task="click")])
