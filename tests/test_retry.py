"""Backoff formulas and retry decisions, as properties (hypothesis) rather than examples.

Each strategy's promise from docs/retries.md is checked over many policies: which
strategies grow, that ``max_delay`` caps every delay (unless a ``Retry-After`` hint asks
for more), that jitter stays within its band, that decorrelated jitter stays within
``[delay, 3 * previous]``, and that adaptive backoff follows repeats and successes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from itertools import pairwise

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from goatclaw.engine.retry import Backoff, should_retry
from goatclaw.spec.model import RetryPolicy

STRATEGIES = ("fixed", "linear", "exponential", "fibonacci", "decorrelated", "adaptive")
GROWING = ("fixed", "linear", "exponential", "fibonacci")
DEFAULT_NEVER = ("auth", "invalid_input", "permission_denied", "context_length", "validation", "breaker_open")
TRANSIENT = ("timeout", "rate_limit", "server_error", "connection")

delays = st.floats(0.0, 30.0, allow_nan=False)
caps = st.floats(0.0, 120.0, allow_nan=False)
multipliers = st.floats(1.0, 4.0, allow_nan=False)
fractions = st.floats(0.0, 1.0, allow_nan=False)
seeds = st.integers(0, 2**32 - 1)
retries = st.integers(1, 30)
classes = st.sampled_from(TRANSIENT)


def policy(backoff: str, delay: float, cap: float, multiplier: float = 2.0, jitter: float = 0.0) -> RetryPolicy:
    return RetryPolicy(attempts=50, backoff=backoff, delay=delay, max_delay=cap, multiplier=multiplier, jitter=jitter)


def series(backoff: Backoff, n: int, error_classes: Sequence[str] | str = "server_error",
           hints: Sequence[float | None] | None = None) -> list[float]:
    """The delays before retries 1..n, as the engine asks for them."""
    out = []
    for retry in range(1, n + 1):
        cls = error_classes if isinstance(error_classes, str) else error_classes[retry - 1]
        hint = hints[retry - 1] if hints is not None else None
        out.append(backoff.next_delay(retry, cls, hint))
    return out


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def fib(n: int) -> int:
    """1, 2, 3, 5, 8 … (the sequence the docs promise)."""
    a, b = 1, 2
    for _ in range(n - 1):
        a, b = b, a + b
    return a


# -- the formulas, without jitter ------------------------------------------------------


@given(d=delays, cap=caps, m=multipliers, n=retries)
def test_each_formula_matches_the_docs(d: float, cap: float, m: float, n: int) -> None:
    expected = {
        "fixed": lambda k: d,
        "linear": lambda k: d * k,
        "exponential": lambda k: d * m ** (k - 1),
        "fibonacci": lambda k: d * fib(k),
    }
    for name, formula in expected.items():
        got = series(Backoff(policy(name, d, cap, m), random.Random(0)), n)
        assert all(close(g, min(formula(k), cap)) for k, g in enumerate(got, 1)), (name, got)


def test_fibonacci_is_the_documented_sequence() -> None:
    got = series(Backoff(policy("fibonacci", 1.0, 1000.0), random.Random(0)), 8)
    assert got == [1, 2, 3, 5, 8, 13, 21, 34]


@given(d=delays, cap=caps, n=retries, seed=seeds)
def test_fixed_is_constant(d: float, cap: float, n: int, seed: int) -> None:
    got = series(Backoff(policy("fixed", d, cap), random.Random(seed)), n)
    assert len(set(got)) == 1
    assert close(got[0], min(d, cap))


@given(name=st.sampled_from(GROWING), d=delays, cap=caps, m=multipliers, n=retries, seed=seeds)
def test_growing_strategies_never_shrink(name: str, d: float, cap: float, m: float, n: int, seed: int) -> None:
    got = series(Backoff(policy(name, d, cap, m), random.Random(seed)), n)
    assert all(a <= b for a, b in pairwise(got)), got


@given(name=st.sampled_from(("linear", "exponential", "fibonacci")), d=st.floats(0.001, 10.0),
       m=st.floats(1.01, 4.0), n=st.integers(2, 30))
def test_growing_strategies_strictly_increase_until_the_cap(name: str, d: float, m: float, n: int) -> None:
    got = series(Backoff(policy(name, d, math.inf, m), random.Random(0)), n)
    assert all(a < b for a, b in pairwise(got)), got
    # and once the cap is reached they stay on it
    capped = series(Backoff(policy(name, d, d * 2.5, m), random.Random(0)), 300)
    first = capped.index(max(capped))
    assert all(c == d * 2.5 for c in capped[first:])


@given(name=st.sampled_from(STRATEGIES), d=delays, cap=caps, m=multipliers, j=fractions, n=retries, seed=seeds,
       cls=st.lists(classes, min_size=30, max_size=30), successes=st.integers(0, 5))
def test_no_delay_exceeds_max_delay_without_a_hint(name: str, d: float, cap: float, m: float, j: float, n: int,
                                                    seed: int, cls: list[str], successes: int) -> None:
    backoff = Backoff(policy(name, d, cap, m, j), random.Random(seed), successes=lambda: successes)
    got = series(backoff, n, cls)
    assert all(0.0 <= g <= cap for g in got), got


# -- jitter ----------------------------------------------------------------------------


@given(name=st.sampled_from(GROWING), d=delays, cap=caps, m=multipliers, j=fractions, n=retries, seed=seeds)
def test_jitter_stays_within_its_band(name: str, d: float, cap: float, m: float, j: float, n: int,
                                      seed: int) -> None:
    plain = series(Backoff(policy(name, d, cap, m), random.Random(0)), n)
    jittered = series(Backoff(policy(name, d, cap, m, j), random.Random(seed)), n)
    for base, got in zip(plain, jittered, strict=True):
        assert (1 - j) * base - 1e-9 <= got <= base + 1e-9, (base, got, j)


def test_jitter_actually_varies_the_delay() -> None:
    rng = random.Random(7)
    got = {Backoff(policy("fixed", 10.0, 60.0, jitter=0.5), rng).next_delay(1, "timeout") for _ in range(50)}
    assert len(got) > 40
    assert min(got) >= 5.0 and max(got) <= 10.0
    assert min(got) < 6.0 and max(got) > 9.0  # the band is used, not just a corner of it


# -- decorrelated jitter ---------------------------------------------------------------


@given(d=st.floats(0.0, 10.0), cap=caps, n=retries, seed=seeds)
def test_decorrelated_stays_between_delay_and_three_times_the_previous(d: float, cap: float, n: int,
                                                                       seed: int) -> None:
    backoff = Backoff(policy("decorrelated", d, cap), random.Random(seed))
    previous = 0.0
    for retry in range(1, n + 1):
        got = backoff.next_delay(retry, "rate_limit")
        assert got <= cap + 1e-12
        low, high = min(d, cap), min(max(d, 3 * previous), cap)
        assert low - 1e-9 <= got <= high + 1e-9, (retry, previous, got)
        previous = got


def test_decorrelated_spreads_and_grows() -> None:
    runs = [series(Backoff(policy("decorrelated", 1.0, 1e6), random.Random(seed)), 8) for seed in range(20)]
    assert len({r[-1] for r in runs}) == 20  # decorrelated: every seed takes its own path
    assert sum(r[-1] for r in runs) / 20 > 10  # and on average it grows well past the base delay


# -- Retry-After -----------------------------------------------------------------------


@given(name=st.sampled_from(STRATEGIES), d=delays, cap=caps, m=multipliers, j=fractions, seed=seeds,
       hints=st.lists(st.one_of(st.none(), st.floats(0.0, 600.0)), min_size=10, max_size=10))
def test_a_retry_after_hint_is_a_floor(name: str, d: float, cap: float, m: float, j: float, seed: int,
                                       hints: list[float | None]) -> None:
    backoff = Backoff(policy(name, d, cap, m, j), random.Random(seed))
    got = series(backoff, 10, "rate_limit", hints)
    for hint, delay in zip(hints, got, strict=True):
        if hint is None:
            assert delay <= cap + 1e-9
        else:
            assert delay >= hint  # even past max_delay: the server said when to come back


@given(name=st.sampled_from([s for s in STRATEGIES if s != "adaptive"]), d=st.floats(5.0, 30.0),
       hint=st.floats(0.0, 4.9), seed=seeds)
def test_a_short_hint_does_not_shorten_the_delay(name: str, d: float, hint: float, seed: int) -> None:
    without = Backoff(policy(name, d, 60.0), random.Random(seed)).next_delay(1, "rate_limit")
    with_hint = Backoff(policy(name, d, 60.0), random.Random(seed)).next_delay(1, "rate_limit", hint)
    assert with_hint == without


# -- adaptive --------------------------------------------------------------------------


@given(d=st.floats(0.001, 5.0), m=st.floats(1.1, 3.0), n=st.integers(2, 12))
def test_adaptive_grows_faster_while_the_same_error_repeats(d: float, m: float, n: int) -> None:
    cap = math.inf
    same = series(Backoff(policy("adaptive", d, cap, m), random.Random(0)), n, "rate_limit")
    alternating = series(Backoff(policy("adaptive", d, cap, m), random.Random(0)), n,
                         ["rate_limit" if k % 2 else "server_error" for k in range(n)])
    exponential = series(Backoff(policy("exponential", d, cap, m), random.Random(0)), n)
    assert all(close(a, e) for a, e in zip(alternating, exponential, strict=True))  # no streak: plain exponential
    assert all(s >= a for s, a in zip(same, alternating, strict=True))
    assert same[-1] > alternating[-1]
    ratios = [b / a for a, b in pairwise(same)]
    assert all(r == pytest.approx(m * m) for r in ratios)  # one extra step per repeat


@given(d=st.floats(0.01, 5.0), m=st.floats(1.0, 3.0), n=st.integers(1, 8), k=st.integers(0, 50))
def test_adaptive_shrinks_as_the_breaker_sees_successes(d: float, m: float, n: int, k: int) -> None:
    cap = 1e9
    before = series(Backoff(policy("adaptive", d, cap, m), random.Random(0), successes=lambda: k), n)
    after = series(Backoff(policy("adaptive", d, cap, m), random.Random(0), successes=lambda: k + 1), n)
    assert all(b < a for a, b in zip(before, after, strict=True))
    assert all(close(b * (k + 2), a * (k + 1)) for a, b in zip(before, after, strict=True))  # divided by 1 + s


def test_adaptive_reads_successes_at_each_delay() -> None:
    seen = [0]
    backoff = Backoff(policy("adaptive", 8.0, 1000.0, 1.0), random.Random(0), successes=lambda: seen[0])
    first = backoff.next_delay(1, "timeout")
    seen[0] = 3
    second = backoff.next_delay(2, "server_error")  # a different class: no streak
    assert (first, second) == (8.0, 2.0)


@given(d=st.floats(0.0, 5.0), hint=st.floats(0.0, 100.0), k=st.integers(0, 9))
def test_adaptive_follows_retry_after(d: float, hint: float, k: int) -> None:
    backoff = Backoff(policy("adaptive", d, 10.0), random.Random(0), successes=lambda: k)
    assert backoff.next_delay(1, "rate_limit", hint) == hint


@given(d=st.floats(0.5, 5.0), m=st.floats(1.5, 3.0), n=st.integers(1, 8))
def test_adaptive_honours_retry_after_zero(d: float, m: float, n: int) -> None:
    # the server says "come back now": a repeating rate_limit does not climb past it
    backoff = Backoff(policy("adaptive", d, 60.0, m), random.Random(0))
    assert series(backoff, n, "rate_limit", [0.0] * n) == [0.0] * n


# -- robustness: any schema-valid policy gives a finite delay ---------------------------


def test_a_large_multiplier_is_capped_not_an_overflow() -> None:
    # attempts: 100 and multiplier: 100 pass the schema; a run of the same error class then asks for 100 ** 196
    p = RetryPolicy(attempts=100, backoff="adaptive", delay=1.0, max_delay=60.0, multiplier=100.0)
    backoff = Backoff(p, random.Random(0))
    assert series(backoff, 99, "rate_limit")[-1] == 60.0


@given(name=st.sampled_from(STRATEGIES), d=delays, cap=caps, m=st.floats(0.01, 8.0), j=fractions,
       n=st.integers(1, 99), seed=seeds, k=st.integers(0, 1000))
def test_every_delay_is_finite_and_non_negative(name: str, d: float, cap: float, m: float, j: float, n: int,
                                               seed: int, k: int) -> None:
    backoff = Backoff(policy(name, d, cap, m, j), random.Random(seed), successes=lambda: k)
    for retry in range(1, n + 1):
        got = backoff.next_delay(retry, "timeout")
        assert math.isfinite(got) and 0.0 <= got <= cap


# -- should_retry ----------------------------------------------------------------------

ANY_CLASS = st.one_of(st.sampled_from((*TRANSIENT, *DEFAULT_NEVER, "internal", "invalid_output", "upstream")),
                      st.from_regex(r"\A[A-Z][A-Za-z]{0,20}(Error|Exception)\Z"))


def test_the_default_policy_refuses_the_permanent_classes() -> None:
    p = RetryPolicy(attempts=3)
    assert set(p.never_on) == set(DEFAULT_NEVER)
    for cls in DEFAULT_NEVER:
        assert not should_retry(p, cls), cls
    for cls in TRANSIENT:
        assert should_retry(p, cls), cls


def test_a_retry_mapping_keeps_the_default_never_on() -> None:
    p = RetryPolicy.from_data({"attempts": 5, "backoff": "fibonacci"})
    assert not should_retry(p, "auth") and not should_retry(p, "invalid_input")
    assert should_retry(p, "rate_limit")


@given(on=st.lists(ANY_CLASS, max_size=4), never_on=st.lists(ANY_CLASS, max_size=4), cls=ANY_CLASS)
def test_never_on_wins_and_on_is_an_allow_list(on: list[str], never_on: list[str], cls: str) -> None:
    p = RetryPolicy(attempts=3, on=tuple(on), never_on=tuple(never_on))
    expected = cls not in never_on and (not on or cls in on)
    assert should_retry(p, cls) is expected


@given(cls=st.sampled_from(TRANSIENT), other=st.sampled_from(TRANSIENT))
def test_on_restricts_to_the_listed_classes(cls: str, other: str) -> None:
    assume(cls != other)
    p = RetryPolicy.from_data({"attempts": 3, "on": [cls]})
    assert should_retry(p, cls)
    assert not should_retry(p, other)


def test_exception_names_are_error_classes() -> None:
    p = RetryPolicy.from_data({"attempts": 3, "on": ["ConnectionResetError", "timeout"]})
    assert should_retry(p, "ConnectionResetError") and should_retry(p, "timeout")
    assert not should_retry(p, "ValueError") and not should_retry(p, "server_error")
    q = RetryPolicy.from_data({"attempts": 3, "never_on": ["KeyError"]})
    assert not should_retry(q, "KeyError") and should_retry(q, "ValueError")


def test_never_on_replaces_the_defaults_when_given() -> None:
    q = RetryPolicy.from_data({"attempts": 3, "never_on": ["timeout"]})
    assert q.never_on == ("timeout",)
    assert not should_retry(q, "timeout")


def test_an_explicit_on_beats_the_default_never_on() -> None:
    p = RetryPolicy.from_data({"attempts": 3, "on": ["auth"]})
    assert should_retry(p, "auth")


def test_retry_false_means_one_attempt() -> None:
    assert RetryPolicy.from_data(False).attempts == 1
