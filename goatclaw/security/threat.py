"""Threat scoring: signs that a run is under attack add up to a per-run score.

What counts, and how much (:data:`WEIGHTS`):

=====================  ======  =====================================================
finding                weight  when
=====================  ======  =====================================================
``permission_denied``  1       a task attempt failed with ``permission_denied``
``permission_probe``   1       extra, for every denial after the second in the run
``high_entropy``       1       a long random-looking token in a task's output
``secret_key``         3       a known key shape in an output (``sk-``, ``AKIA``,
                               ``ghp_``, ``xoxb-``, ``AIza``, ``sk_live_``…)
``private_key``        5       a ``-----BEGIN … PRIVATE KEY-----`` block in an output
``injection``          3       each distinct prompt-injection marker in the output of
                               a task that talks to the network (``llm``, ``http``)
=====================  ======  =====================================================

The same token or marker is counted once per run. When the score reaches the
threshold (``threat_threshold`` in the pipeline, else in goatclaw.yaml, else
:data:`DEFAULT_THRESHOLD`) the engine stops the run and records it as ``blocked``.
Declared secrets are masked before outputs are scanned, so a pipeline's own keys do
not count against it. Everything here is pure: the engine feeds it and records what it
finds (``threat.*`` events and ``threat.detected`` audit rows).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from goatclaw.regex import compile_linear

__all__ = ["DEFAULT_THRESHOLD", "WEIGHTS", "Finding", "ThreatScore", "scan_injection", "scan_output", "scan_secrets"]

#: The score at which a run is blocked when neither the pipeline nor the project says.
DEFAULT_THRESHOLD = 5.0

WEIGHTS: dict[str, float] = {
    "permission_denied": 1.0,
    "permission_probe": 1.0,
    "high_entropy": 1.0,
    "secret_key": 3.0,
    "private_key": 5.0,
    "injection": 3.0,
}

#: Denials a run may have before each further one also counts as a probe.
PROBE_AFTER = 2

# Outputs are content an attacker may shape: every pattern runs on RE2 (linear time in the text),
# so a 100 KB body such as "rm -" + "r" * 100000 is scanned in a millisecond, not for minutes.
# They are compiled when a first output is scanned (a run whose plugins' outputs are never screened imports no RE2).
_KEY_SHAPES: tuple[tuple[str, str], ...] = (
    ("openai", r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"),
    ("aws_access_key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("github_token", r"\b(?:ghp|gho|ghs|ghu|ghr)_[A-Za-z0-9]{30,}|\bgithub_pat_[A-Za-z0-9_]{30,}"),
    ("slack_token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    ("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}"),
    ("stripe_key", r"\b[rs]k_live_[0-9A-Za-z]{20,}"),
)
_PRIVATE_KEY = r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----"
_TOKEN = r"[A-Za-z0-9+/_=-]{32,}"
_ENTROPY_BITS = 4.5  # per character; random base64 scores about 5, English words and hex under 4.2

_INJECTION: tuple[tuple[str, str], ...] = (
    ("ignore_instructions", r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+|your\s+)*"
                            r"(?:previous|prior|above|earlier|preceding|original)\s+"
                            r"(?:instructions|prompts?|messages|rules|directions|context)"),
    ("system_prompt", r"\b(?:system\s+prompt|developer\s+message|hidden\s+instructions)\b"),
    ("role_override", r"\byou\s+are\s+now\s+(?:in\s+)?(?:dan|developer\s+mode|jailbroken|unrestricted|an?\s+unfiltered)"
                      r"|\bnew\s+instructions\s*:"),
    ("tool_call", r"<\s*/?\s*(?:tool_call|function_call|tool_use)\b|\"(?:tool_calls|function_call)\"\s*:"),
    ("shell_payload", r"\brm\s+-[a-z]*r[a-z]*f?\s+[/~]|\b(?:curl|wget)\s+[^\n|]*\|\s*(?:ba|z)?sh\b"
                      r"|\bnc\s+-[a-z]*e\b|/etc/(?:passwd|shadow)\b|\bbase64\s+-d\s*\|"),
    ("code_exec", r"\b(?:os\.system|subprocess\.(?:run|Popen|call)|eval|exec)\s*\(|__import__\s*\("),
    ("exfiltrate", r"\b(?:send|post|upload|exfiltrate)\s+(?:the\s+|all\s+|your\s+)*(?:secrets?|api\s+keys?|"
                   r"credentials|tokens?|environment\s+variables)\b"),
)


@functools.cache
def _compiled() -> tuple[Any, tuple[tuple[str, Any], ...], Any, tuple[tuple[str, Any], ...]]:
    """The patterns on RE2, compiled once: private key, key shapes, token, injection phrases."""
    return (compile_linear(_PRIVATE_KEY), tuple((name, compile_linear(p)) for name, p in _KEY_SHAPES),
            compile_linear(_TOKEN), tuple((name, compile_linear(p, ignore_case=True)) for name, p in _INJECTION))


@dataclass(frozen=True)
class Finding:
    """One sign of a threat: its kind, weight, and a short description (never a secret's value)."""

    kind: str
    weight: float
    detail: str
    fingerprint: str = ""


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _shown(token: str) -> str:
    """A token as it may be recorded: its first four characters and its length."""
    return f"{token[:4]}… ({len(token)} chars)"


def _entropy(token: str) -> float:
    counts = Counter(token)
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def scan_secrets(text: str) -> list[Finding]:
    """Secret-shaped strings in ``text``: private keys, known key prefixes, high-entropy tokens."""
    found: list[Finding] = []
    covered: list[tuple[int, int]] = []
    private_key, key_shapes, token_shape, _ = _compiled()
    for match in private_key.finditer(text):
        found.append(Finding("private_key", WEIGHTS["private_key"], match.group(0), _fingerprint(
            text[match.start():match.start() + 200])))
        covered.append(match.span())
    for name, pattern in key_shapes:
        for match in pattern.finditer(text):
            token = match.group(0)
            found.append(Finding("secret_key", WEIGHTS["secret_key"], f"{name} {_shown(token)}", _fingerprint(token)))
            covered.append(match.span())
    covered.sort()
    starts = [start for start, _ in covered]
    for match in token_shape.finditer(text):
        token = match.group(0).strip("=")
        if _overlaps(covered, starts, match.start(), match.end()):
            continue
        if (len(token) >= 32 and token != token.lower() and token != token.upper()
                and any(map(str.isdigit, token)) and _entropy(token) >= _ENTROPY_BITS):
            found.append(Finding("high_entropy", WEIGHTS["high_entropy"], f"token {_shown(token)}",
                                 _fingerprint(token)))
    return found


def _overlaps(covered: list[tuple[int, int]], starts: list[int], start: int, end: int) -> bool:
    """Whether [start, end) overlaps a span already found (``covered`` sorted, ``starts`` its starts): O(log n)."""
    i = bisect.bisect_right(starts, start) - 1  # the last span starting at or before start
    if i >= 0 and covered[i][1] > start:
        return True
    return i + 1 < len(starts) and starts[i + 1] < end


def scan_injection(text: str) -> list[Finding]:
    """Prompt-injection markers in ``text`` (one finding per kind of marker)."""
    found = []
    for name, pattern in _compiled()[3]:
        match = pattern.search(text)
        if match is not None:
            found.append(Finding("injection", WEIGHTS["injection"], f"{name}: {match.group(0)[:80]!r}", name))
    return found


def scan_output(text: str, *, untrusted: bool) -> list[Finding]:
    """Everything found in one output: secrets, and injection markers when ``untrusted`` (linear time)."""
    found = scan_secrets(text)
    if untrusted:
        found += scan_injection(text)
    return found


@dataclass
class ThreatScore:
    """A run's threat score: findings add their weight once each; ``blocked`` at the threshold."""

    threshold: float | None = DEFAULT_THRESHOLD
    score: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    denials: int = 0
    _seen: set[tuple[str, str]] = field(default_factory=set, repr=False)

    @property
    def blocked(self) -> bool:
        """Whether the score has reached the threshold (never with no threshold or no finding)."""
        return self.threshold is not None and self.score > 0 and self.score >= self.threshold

    def denied(self, rule: str) -> list[Finding]:
        """A permission was denied (``rule``: the error message naming it); a probe after the second."""
        self.denials += 1
        new = [Finding("permission_denied", WEIGHTS["permission_denied"], rule[:200], f"denial-{self.denials}")]
        if self.denials > PROBE_AFTER:
            new.append(Finding("permission_probe", WEIGHTS["permission_probe"],
                               f"denial {self.denials} in this run", f"probe-{self.denials}"))
        return self.add(new)

    def output(self, text: str, *, untrusted: bool) -> list[Finding]:
        """Scan a task's output (declared secrets already masked); ``untrusted``: it came from the network."""
        return self.add(scan_output(text, untrusted=untrusted))

    def add(self, findings: list[Finding]) -> list[Finding]:
        """Count the findings not seen before in this run; those are returned."""
        new = []
        for f in findings:
            key = (f.kind, f.fingerprint or f.detail)
            if key in self._seen:
                continue
            self._seen.add(key)
            self.score += f.weight
            self.findings.append(f)
            new.append(f)
        return new
