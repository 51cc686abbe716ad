import json
from pathlib import Path

from goatclaw.jsontext import dumps


def test_plain_values_round_trip() -> None:
    value = {"a": 1, "b": [1.5, None, True], "c": "ünïcode ✓", "d": {"e": "x"}}
    assert json.loads(dumps(value)) == value
    assert "ü" in dumps(value)  # not escaped: the store keeps text readable


def test_what_json_cannot_hold_becomes_text() -> None:
    assert json.loads(dumps({"p": Path("/tmp/x")})) == {"p": "/tmp/x"}
    assert json.loads(dumps({1: "int key"})) == {"1": "int key"}


def test_integers_past_64_bits_fall_back_to_the_stdlib() -> None:
    big = 2**70
    assert json.loads(dumps({"n": big})) == {"n": big}


def test_pretty_text_matches_the_stdlib_indentation() -> None:
    from goatclaw.jsontext import dumps_pretty

    value = {"a": [1, {"b": "ü"}], "c": None}
    assert dumps_pretty(value) == json.dumps(value, indent=2, ensure_ascii=False)
    assert json.loads(dumps_pretty({"n": 2**70})) == {"n": 2**70}
