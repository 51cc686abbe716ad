import dataclasses
import datetime
import itertools
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from goatclaw.engine.state import to_json
from goatclaw.errors import TaskError
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


# -- task outputs: goatclaw.engine.state.to_json (orjson, with the stdlib deciding the edge cases) --

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5) | st.integers(), inner,
                                                                max_size=4),
    max_leaves=20)


@given(_JSON)
def test_outputs_encode_exactly_as_the_strict_stdlib_decides(value: object) -> None:
    try:
        expected = json.loads(json.dumps(value, allow_nan=False, ensure_ascii=False))
    except ValueError:  # NaN or an infinity somewhere: refused, as before
        with pytest.raises(TaskError, match="not JSON-serialisable"):
            to_json(value)
        return
    assert json.loads(to_json(value)) == expected


@dataclasses.dataclass
class _Point:
    x: int


@pytest.mark.parametrize("value", [datetime.datetime(2026, 1, 1), datetime.date(2026, 1, 1), _Point(1),
                                   {"x": math.inf}, [math.nan], {1, 2}])
def test_outputs_orjson_would_accept_are_still_refused(value: object) -> None:
    with pytest.raises(TaskError, match="not JSON-serialisable"):
        to_json(value)


def test_outputs_past_64_bits_and_int_keys_encode_like_the_stdlib() -> None:
    assert json.loads(to_json({"n": 2**70, 3: "x"})) == {"n": 2**70, "3": "x"}


# -- lone surrogates: every text made here is storable (UTF-8), and JSON keeps the value ------------

#: Text with lone surrogates among other characters (st.text leaves surrogates out whatever its alphabet).
_ODD_TEXT = st.lists(st.one_of(st.characters(categories=["Cs"]), st.characters()), max_size=12).map("".join)


def _no_pairs(text: str) -> bool:
    """No high surrogate right before a low one (JSON would read the two escapes back as one character)."""
    return not any("\ud800" <= a <= "\udbff" and "\udc00" <= b <= "\udfff" for a, b in itertools.pairwise(text))


@given(st.lists(_ODD_TEXT, max_size=4).filter(lambda xs: all(map(_no_pairs, xs))))
def test_json_text_with_lone_surrogates_is_storable_and_reads_back_the_same(strings: list[str]) -> None:
    value = {"items": strings, "first": strings[0] if strings else None}
    for text in (to_json(value), dumps(value)):
        text.encode()  # UTF-8 can hold it (and so SQLite)
        assert json.loads(text) == value


def test_storable_escapes_only_lone_surrogates() -> None:
    from goatclaw.jsontext import storable

    assert storable("plain ascii") == "plain ascii"
    assert storable("ünï \ud800 \udfff ✓") == "ünï \\ud800 \\udfff ✓"
