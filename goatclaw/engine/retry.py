"""Retry decisions and backoff delays. Each strategy's formula is in docs/retries.md.

With ``n`` the number of the retry (1 for the first retry), ``d`` the base ``delay``,
``m`` the ``multiplier`` and ``cap`` the ``max_delay``:

* ``fixed``: ``d``
* ``linear``: ``d * n``
* ``exponential``: ``d * m ** (n - 1)``
* ``fibonacci``: ``d * F(n)`` with F(1) = 1, F(2) = 2, F(3) = 3, F(4) = 5 …
* ``decorrelated``: ``uniform(d, previous * 3)`` (AWS "decorrelated jitter")
* ``adaptive``: exponential whose exponent grows by one extra step for each repeat of
  the same error class in a row, divided by ``1 + s`` where ``s`` is the number of
  successes the task's shared breaker has seen since its last failure

All are capped at ``cap``; ``jitter`` j (0..1) then scales the delay by a uniform factor
in ``[1 - j, 1]``; a ``Retry-After`` hint raises the delay to at least the hint, and
``adaptive`` takes the hint as the delay (``Retry-After: 0`` retries at once): the
server said when it can take the call again, which is what adaptive backoff adapts to.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from goatclaw.spec.model import RetryPolicy

__all__ = ["Backoff", "should_retry"]

TRANSIENT = frozenset({"timeout", "rate_limit", "server_error", "connection"})


def should_retry(policy: RetryPolicy, error_class: str) -> bool:
    """Whether an error of ``error_class`` may be retried under ``policy``."""
    if error_class in policy.never_on:
        return False
    return error_class in policy.on if policy.on else True


def _fib(n: int) -> int:
    a, b = 1, 2
    for _ in range(n - 1):
        a, b = b, a + b
    return a


def _power(base: float, exponent: int) -> float:
    """``base ** exponent``, infinite instead of an OverflowError (the cap applies next)."""
    try:
        return float(base**exponent)
    except OverflowError:
        return float("inf")


def _float(n: int) -> float:
    try:
        return float(n)
    except OverflowError:
        return float("inf")


@dataclass
class Backoff:
    """Delay computation for one task's retries (keeps the state that some strategies need)."""

    policy: RetryPolicy
    rng: random.Random
    previous: float = 0.0
    streak: int = 0
    last_class: str | None = None
    successes: Callable[[], int] | None = None

    def next_delay(self, retry: int, error_class: str, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        p = self.policy
        self.streak = self.streak + 1 if error_class == self.last_class else 1
        self.last_class = error_class
        if p.backoff == "fixed":
            delay = p.delay
        elif p.backoff == "linear":
            delay = p.delay * retry
        elif p.backoff == "fibonacci":
            delay = p.delay * _float(_fib(retry))
        elif p.backoff == "decorrelated":
            delay = self.rng.uniform(p.delay, max(p.delay, self.previous * 3))
        elif p.backoff == "adaptive":
            delay = p.delay * _power(p.multiplier, retry - 1 + max(0, self.streak - 1))
            delay /= 1 + (self.successes() if self.successes is not None else 0)
        else:
            delay = p.delay * _power(p.multiplier, retry - 1)
        delay = min(delay, p.max_delay) if delay == delay else p.max_delay  # inf * 0 is nan
        if p.jitter:
            delay *= 1 - p.jitter * self.rng.random()
        if retry_after is not None:
            hint = max(0.0, retry_after)
            delay = hint if p.backoff == "adaptive" else max(delay, hint)
        self.previous = delay
        return max(0.0, delay)
