import pytest

from tests.conftest import tiny_spec
from transforms.spec import SpecError, load_spec, spec_from_dict


def test_parses_and_round_trips(tiny_root):
    spec = tiny_spec(tiny_root)
    assert [f.name for f in spec.item_features] == ["item_id", "genre", "year"]
    assert spec.item_feature("genre").multivalued
    assert spec.query_item_features == ("item_id", "genre", "year")
    assert spec.has_spans
    assert spec.log_columns() == ("seed", "item", "device", "user")
    assert spec_from_dict(spec.to_dict()) == spec
    assert spec.cold_item_percent == 0
    assert tiny_spec(tiny_root, split__cold_item_percent=10).cold_item_percent == 10


@pytest.mark.parametrize("overrides, message", [
    ({"catalog__idd": "x"}, "unknown key(s) ['idd']"),
    ({"split__eval_percent": 80}, "split.eval_percent must be in [1, 50]"),
    ({"split__cold_item_percent": 60}, "split.cold_item_percent must be in [0, 50]"),
    ({"on_bad_input__unknown_item": "drop"}, "allowed values are ['reject', 'error']"),
    ({"logs__pattern": "{SPAN}.csv"}, "spans must be folders named 'span-{SPAN}/'"),
    ({"query__item_features": ["nope"]}, "['nope'] are not catalog features"),
    ({"catalog__features": [{"name": "t", "multivalued": True, "separator": ","}]},
     "separator other than ','"),
    ({"catalog__features": [{"name": "bad name"}]}, "must start with a letter"),
    ({"vocabulary__frequency_threshold": 0}, "frequency_threshold must be an int >= 1"),
])
def test_bad_specs_name_the_key(tiny_root, overrides, message):
    with pytest.raises(SpecError) as e:
        tiny_spec(tiny_root, **overrides)
    assert message in str(e.value)


def test_missing_required_key(tiny_root):
    with pytest.raises(SpecError, match="logs: missing required key 'item'"):
        tiny_spec(tiny_root, logs={"path": "logs", "query_item": "seed"})


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(str(tmp_path / "nope.yaml"))
