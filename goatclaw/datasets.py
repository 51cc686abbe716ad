"""Datasets of pipeline tests: rows read from CSV or JSONL, the summary of their results, baselines.

A test case with ``cases: {from: data/cases.csv}`` runs once per row with the row's columns
as vars (:func:`read_rows`). After the run, :func:`summarise` groups the case results by the
case they came from and gives each group's pass rate per assertion, cost, latency and worst
rows; :func:`render` writes a JSON document (also the baseline format) or Markdown, and
:func:`compare` holds a summary against a saved baseline::

    rows ─▶ one case per row ─▶ CaseResults ─▶ summarise ─▶ render json|markdown
                                                          └▶ compare(baseline, tolerances) ─▶ regressions
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from goatclaw.errors import GoatclawError, Location, Problem, SpecError
from goatclaw.userfile import is_file, read_bytes

__all__ = ["MAX_DATASET_BYTES", "Regression", "Summary", "Tolerances", "compare", "load_baseline", "read_rows",
           "render", "summarise"]

#: The largest dataset file read.
MAX_DATASET_BYTES = 64 * 1024 * 1024
#: How many of a dataset's worst rows a summary names.
WORST = 3


# -- reading rows ---------------------------------------------------------------------------------


def read_rows(spec: Any, base: Path, where: Location | None = None, path: str = "cases"
              ) -> list[tuple[str, dict[str, Any]]]:
    """``(id, vars)`` per row of a dataset: rows given inline, or a ``.csv``/``.jsonl`` file relative to ``base``.

    A row's ``id`` (else ``name``) column names it; otherwise its number from 1. CSV values
    stay text; JSONL keeps JSON's types. A problem is a :class:`SpecError` at ``where``, named ``path``.
    """
    if isinstance(spec, list):
        rows, limit = list(spec), None
    else:
        rows, limit = _read_file(base / str(spec["from"]), where, f"{path}.from"), spec.get("limit")
    rows = rows[:limit] if limit else rows
    if not rows:
        raise SpecError([Problem(where, path, "the dataset has no rows")])
    named = [(str(r.get("id", r.get("name", i))), r) for i, r in enumerate(rows, start=1)]
    seen: set[str] = set()
    for row_id, _row in named:
        if row_id in seen:
            raise SpecError([Problem(where, path, f"two rows of the dataset have the id '{row_id}'")])
        seen.add(row_id)
    return named


def _read_file(path: Path, where: Location | None, name: str) -> list[dict[str, Any]]:
    if not is_file(path):
        raise SpecError([Problem(where, name, f"no dataset file {path}")])
    try:
        text = read_bytes(path, limit=MAX_DATASET_BYTES).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError, GoatclawError) as exc:
        raise SpecError([Problem(where, name, f"cannot read {path}: {exc}")]) from None
    if path.suffix == ".csv":
        return _csv_rows(text, path, where, name)
    return _jsonl_rows(text, path, where, name)


def _csv_rows(text: str, path: Path, where: Location | None, name: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    bad = [c for c in columns if not c or not c.strip()]
    if not columns or bad:
        raise SpecError([Problem(where, name, f"{path}: the first row must name every column")])
    rows = []
    for row in reader:
        if None in row:
            raise SpecError([Problem(where, name, f"{path}:{reader.line_num}: more values than columns")])
        rows.append({k.strip(): ("" if v is None else v) for k, v in row.items()})
    return rows


def _jsonl_rows(text: str, path: Path, where: Location | None, name: str) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_no_constant)
        except ValueError as exc:
            raise SpecError([Problem(where, name, f"{path}:{number}: not JSON: {exc}")]) from None
        if not isinstance(row, dict):
            raise SpecError([Problem(where, name, f"{path}:{number}: a row must be a JSON object")])
        rows.append(row)
    return rows


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# -- summaries -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """One dataset's (or plain case's) results: how many rows passed, each assertion's pass rate, cost, latency."""

    name: str  # file::case
    cases: int
    passed: int
    #: assertion label -> ``{passed, total, rate, score}`` (``score``: the mean of those that have one).
    assertions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    cost_usd: float = 0.0
    tokens: int = 0
    latency_ms: Mapping[str, float] = field(default_factory=dict)  # mean, p50, p95, max
    worst: tuple[Mapping[str, Any], ...] = ()  # {case, failed, score, why}

    @property
    def pass_rate(self) -> float:
        """Rows that passed every assertion, as a fraction."""
        return self.passed / self.cases if self.cases else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (what a baseline file holds per dataset)."""
        return {"name": self.name, "cases": self.cases, "passed": self.passed, "pass_rate": round(self.pass_rate, 6),
                "assertions": {k: dict(v) for k, v in self.assertions.items()}, "cost_usd": round(self.cost_usd, 8),
                "tokens": self.tokens, "latency_ms": dict(self.latency_ms), "worst": [dict(w) for w in self.worst]}


def summarise(results: Sequence[Any]) -> list[Summary]:
    """Case results (:class:`goatclaw.testing.CaseResult`) grouped by the case of the file they came from."""
    groups: dict[str, list[Any]] = {}
    for r in results:
        groups.setdefault(f"{r.case.file}::{r.case.spec_name}", []).append(r)
    return [_summary(name, rs) for name, rs in groups.items()]


def _summary(name: str, results: list[Any]) -> Summary:
    stats: dict[str, dict[str, Any]] = {}
    for r in results:
        for o in r.outcomes:
            row = stats.setdefault(o.label, {"passed": 0, "total": 0, "scores": []})
            row["total"] += 1
            row["passed"] += int(o.passed)
            if o.score is not None:
                row["scores"].append(o.score)
    assertions = {label: {"passed": s["passed"], "total": s["total"], "rate": round(s["passed"] / s["total"], 6),
                          "score": round(sum(s["scores"]) / len(s["scores"]), 6) if s["scores"] else None}
                  for label, s in stats.items()}
    ms = sorted(r.duration * 1000 for r in results)
    latency = {"mean": round(sum(ms) / len(ms), 1), "p50": round(_quantile(ms, 0.5), 1),
               "p95": round(_quantile(ms, 0.95), 1), "max": round(ms[-1], 1)} if ms else {}
    return Summary(name=name, cases=len(results), passed=sum(1 for r in results if r.passed),
                   assertions=assertions, cost_usd=sum(r.cost_usd for r in results),
                   tokens=sum(r.tokens for r in results), latency_ms=latency, worst=_worst(results))


def _worst(results: list[Any]) -> tuple[dict[str, Any], ...]:
    """The rows that failed most (then scored lowest), at most :data:`WORST` of them; passing rows are not worst."""
    def score(r: Any) -> float:
        scores = [o.score if o.score is not None else float(o.passed) for o in r.outcomes]
        return sum(scores) / len(scores) if scores else float(r.passed)

    failing = [r for r in results if not r.passed]
    failing.sort(key=lambda r: (-len(r.failures), score(r), r.case.name))
    return tuple({"case": r.case.name, "failed": len(r.failures), "score": round(score(r), 6),
                  "why": r.failures[0].message if r.failures else ""} for r in failing[:WORST])


def _quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values`` (nearest rank)."""
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


# -- reports ---------------------------------------------------------------------------------------


def render(summaries: Sequence[Summary], fmt: str, *, results: Sequence[Any] = (),
           regressions: Sequence[Regression] = ()) -> str:
    """A test run as ``json`` (the baseline format: every dataset and case) or ``markdown`` (the summary table)."""
    if fmt == "json":
        doc = {"version": 1, "datasets": {s.name: s.to_dict() for s in summaries},
               "cases": [_case_dict(r) for r in results],
               "regressions": [r.to_dict() for r in regressions]}
        return json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n"
    if fmt == "markdown":
        return _markdown(summaries, regressions)
    raise GoatclawError(f"no test report format '{fmt}' (junit, json, markdown)")


def _case_dict(r: Any) -> dict[str, Any]:
    return {"name": r.name, "passed": r.passed, "duration_ms": round(r.duration * 1000, 1),
            "cost_usd": round(r.cost_usd, 8), "tokens": r.tokens, "outcomes": [o.to_dict() for o in r.outcomes],
            "failures": [str(f) for f in r.failures]}


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(summaries: Sequence[Summary], regressions: Sequence[Regression]) -> str:
    lines = ["## goatclaw test", "", "| test | cases | passed | cost | tokens | latency p50 / p95 |",
             "|---|---:|---:|---:|---:|---:|"]
    for s in summaries:
        lat = s.latency_ms
        lines.append(f"| {_cell(s.name)} | {s.cases} | {s.passed} ({s.pass_rate:.0%}) | ${s.cost_usd:.4f} | {s.tokens} "
                     f"| {lat.get('p50', 0):.0f} / {lat.get('p95', 0):.0f} ms |")
    for s in (s for s in summaries if s.cases > 1):
        lines += ["", f"### {_cell(s.name)}", "", "| assertion | pass rate | mean score |", "|---|---:|---:|"]
        for label, a in s.assertions.items():
            mean = "" if a["score"] is None else f"{a['score']:.3f}"
            lines.append(f"| {_cell(label)} | {a['passed']}/{a['total']} ({a['rate']:.0%}) | {mean} |")
        if s.worst:
            lines += ["", "Worst cases: " + "; ".join(f"`{_cell(w['case'])}` ({w['failed']} failed: {_cell(w['why'])})"
                                                      for w in s.worst)]
    if regressions:
        lines += ["", "### Regressions against the baseline", "", "| test | what | baseline | now |",
                  "|---|---|---:|---:|"]
        lines += [f"| {_cell(r.dataset)} | {_cell(r.what)} | {r.baseline:g} | {r.now:g} |" for r in regressions]
    return "\n".join(lines) + "\n"


# -- baselines ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerances:
    """How much worse than the baseline is not a regression.

    ``score``: the most a pass rate (or a mean score) may drop, as a fraction (0.05: five points);
    ``cost`` and ``latency``: the most they may rise, as a fraction of the baseline's (0.2: 20%),
    or ``None``: not compared (a test run's wall time moves with the machine's load).
    """

    score: float = 0.0
    cost: float | None = None
    latency: float | None = None


@dataclass(frozen=True)
class Regression:
    """One score that dropped, or one cost or latency that rose, past its tolerance."""

    dataset: str
    what: str
    baseline: float
    now: float

    def __str__(self) -> str:
        return f"{self.dataset}: {self.what} {self.baseline:g} → {self.now:g}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"dataset": self.dataset, "what": self.what, "baseline": self.baseline, "now": self.now}


def load_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The datasets of a baseline: a JSON report written by ``goatclaw test --report json:PATH``."""
    try:
        doc = json.loads(read_bytes(path, limit=MAX_DATASET_BYTES))
    except (OSError, ValueError, GoatclawError) as exc:
        raise GoatclawError(f"cannot read the baseline {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), dict):
        raise GoatclawError(f"{path} is not a baseline: write one with goatclaw test --report json:{path}")
    return dict(doc["datasets"])


def compare(summaries: Sequence[Summary], baseline: Mapping[str, Any], tolerances: Tolerances = Tolerances()
            ) -> list[Regression]:
    """Every pass rate or score that dropped, and every cost or latency that rose, past ``tolerances``.

    Only what both hold is compared: a dataset or assertion new since the baseline is not a
    regression (nor is one the baseline had that is gone; the JSON report lists both).
    """
    found: list[Regression] = []
    for s in summaries:
        base = baseline.get(s.name)
        if not isinstance(base, Mapping):
            continue
        found += _dropped(s.name, "pass rate", base.get("pass_rate"), s.pass_rate, tolerances.score)
        for label, now in s.assertions.items():
            old = (base.get("assertions") or {}).get(label)
            if isinstance(old, Mapping):
                found += _dropped(s.name, f"{label}: pass rate", old.get("rate"), now["rate"], tolerances.score)
                found += _dropped(s.name, f"{label}: mean score", old.get("score"), now["score"], tolerances.score)
        found += _rose(s.name, "cost ($)", base.get("cost_usd"), s.cost_usd, tolerances.cost)
        found += _rose(s.name, "latency p95 (ms)", (base.get("latency_ms") or {}).get("p95"),
                       s.latency_ms.get("p95"), tolerances.latency)
    return found


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _dropped(name: str, what: str, old: Any, now: Any, tolerance: float) -> list[Regression]:
    a, b = _number(old), _number(now)
    if a is None or b is None or a - b <= tolerance + 1e-9:
        return []
    return [Regression(name, what, round(a, 6), round(b, 6))]


def _rose(name: str, what: str, old: Any, now: Any, tolerance: float | None) -> list[Regression]:
    a, b = _number(old), _number(now)
    if tolerance is None or a is None or b is None or b <= a * (1 + tolerance) + 1e-9:
        return []
    return [Regression(name, what, round(a, 6), round(b, 6))]
