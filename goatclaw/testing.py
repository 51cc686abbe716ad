"""Pipeline tests: ``*.test.yaml`` files next to a pipeline, run by ``goatclaw test`` or from pytest.

A test file names its pipeline and holds test cases. Each case runs the pipeline with
its ``vars``, with some tasks stubbed (a stubbed task does not run; its output is
given) or its ``llm`` tasks answered from a cassette, then checks what it expects:
the run's status, each named task's status, output, error or error class, and
``asserts`` in the expression language of ``if:`` and ``expr:``::

    # quickstart.test.yaml
    version: 1
    pipeline: quickstart.yaml
    tests:
      oldest-of-two:
        vars: {topics: [go, python]}
        expect:
          status: succeeded
          tasks: {oldest: {output: 1991}, report: succeeded}
          asserts:
            - "tasks.profile.outputs | length == 2"

From Python (pytest)::

    from goatclaw.testing import collect, run_pipeline_test

    def test_quickstart():
        run_pipeline_test("pipelines/quickstart.test.yaml")   # AssertionError listing what failed

    @pytest.mark.parametrize("case", collect("pipelines"), ids=str)
    def test_pipeline(case):
        case.check()

The steps of one case: load (and check) the pipeline once per file, run it without a
store or task cache (a test never reads or changes the project's runs), then judge
each expectation. A failed assertion shows the values of the expression's operands.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import shutil
import tempfile
import time
import tokenize
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from goatclaw.assertions import Observation, Outcome, call_cost, evaluate, is_assertion
from goatclaw.assertions import parse as parse_assertion
from goatclaw.assertions import problems as assertion_problems
from goatclaw.datasets import Regression, Summary, Tolerances, compare, load_baseline, summarise
from goatclaw.datasets import render as render_report
from goatclaw.engine.state import RunResult
from goatclaw.errors import GoatclawError, Location, Problem, SpecError, TemplateError, error_line
from goatclaw.spec.loader import Document, dotted, load_file
from goatclaw.spec.model import Pipeline
from goatclaw.spec.schema import check_document
from goatclaw.template import compile_expression
from goatclaw.userfile import is_file

__all__ = ["CaseResult", "Check", "PipelineTest", "PipelineTestFailed", "Regression", "Summary", "Tolerances",
           "collect", "compare", "discover", "load_baseline", "load_tests", "render_report", "run_pipeline_test",
           "run_tests", "summarise"]

SUFFIX = ".test.yaml"
_SKIP_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "node_modules", "__pycache__", ".goatclaw", ".tox", ".mypy_cache",
              ".pytest_cache", ".ruff_cache", ".hypothesis"}


class PipelineTestFailed(AssertionError):
    """A pipeline test case did not hold (what pytest shows: every failed check)."""


@dataclass(frozen=True)
class Check:
    """One failed expectation: what was expected, where it is written, and what was found."""

    message: str
    location: Location | None = None
    details: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return "\n".join([f"{where}{self.message}", *(f"  {d}" for d in self.details)])


@dataclass(frozen=True)
class PipelineTest:
    """One test case of a test file, ready to run (built by :func:`load_tests`)."""

    file: Path
    name: str
    pipeline: Pipeline = field(repr=False)
    vars: Mapping[str, Any] = field(default_factory=dict)
    stubs: Mapping[str, Any] = field(default_factory=dict)
    llm: str | None = None
    cassette: Path | None = None
    only: tuple[str, ...] = ()
    expect: Mapping[str, Any] = field(default_factory=dict, repr=False)
    doc: Document | None = field(default=None, repr=False, compare=False)
    #: A case of a dataset: the name of the case in the file it came from (its rows are named ``name[id]``).
    dataset: str | None = None
    #: The dataset row this case runs (its columns are among ``vars``).
    row: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def spec_name(self) -> str:
        """The case's name in the file (a dataset row's case: the dataset's)."""
        return self.dataset or self.name

    def __str__(self) -> str:
        return f"{self.file}::{self.name}"

    @property
    def tape(self) -> Path | None:
        """The cassette the run replays or records (``None``: live, or the pipeline's own ``NAME.cassette.json``)."""
        return self.cassette if self.llm in ("replay", "record") else None

    def with_llm(self, mode: str | None) -> PipelineTest:
        """The case with its LLM mode overridden (``goatclaw test --llm record`` records the cassette)."""
        return self if mode is None else dataclasses.replace(self, llm=mode)

    def locate(self, *path: str | int) -> Location | None:
        """Where ``tests.<name>.<path>`` is written in the test file."""
        return None if self.doc is None else self.doc.locate(("tests", self.spec_name, *path))

    async def arun(self) -> CaseResult:
        """Run the case on the running event loop and judge it."""
        return await _arun_case(self)

    def run(self) -> CaseResult:
        """Run the case and judge it."""
        return asyncio.run(self.arun())

    def check(self) -> CaseResult:
        """Run the case; raise :class:`PipelineTestFailed` (an ``AssertionError``) unless it passed."""
        result = self.run()
        if not result.passed:
            raise PipelineTestFailed(result.explain())
        return result


@dataclass(frozen=True)
class CaseResult:
    """How one test case went: passed or not, the failed checks, the run, the time taken."""

    case: PipelineTest
    failures: tuple[Check, ...]
    duration: float
    run: RunResult | None = None
    #: Every assertion's outcome (expressions too), in the order written: what a dataset's summary counts.
    outcomes: tuple[Outcome, ...] = ()
    #: What the run's LLM calls cost in dollars (a replayed answer at what it cost when recorded).
    cost_usd: float = 0.0
    #: LLM tokens, prompt and completion.
    tokens: int = 0

    @property
    def passed(self) -> bool:
        """Whether every expectation held."""
        return not self.failures

    @property
    def name(self) -> str:
        """``file::case``."""
        return str(self.case)

    def explain(self) -> str:
        """The failed checks as text (empty when it passed)."""
        return "\n".join([f"{self.case} failed:", *(str(f) for f in self.failures)]) if self.failures else ""


# -- finding and loading test files -----------------------------------------------------------


def discover(paths: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """Test files: each file given, and every ``*.test.yaml`` under each folder (default: the cwd)."""
    found: list[Path] = []
    for raw in list(paths) or [Path()]:
        path = Path(raw)
        if path.is_dir():
            found += sorted(_walk(path))
        elif path.exists():
            found.append(path)
        else:
            raise GoatclawError(f"{path}: no such file or folder")
    return list(dict.fromkeys(found))


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(SUFFIX):
                yield Path(root) / name


def load_tests(path: str | os.PathLike[str]) -> list[PipelineTest]:
    """The test cases of one test file, with its pipeline loaded and checked.

    Raises :class:`SpecError` listing every problem, each at file:line:col: the test file
    against its schema, its pipeline, and names of tasks that the pipeline does not have.
    """
    file = Path(path)
    doc = load_file(file)
    problems = doc.problems + check_document(doc, "test")
    if _errors(problems):
        raise SpecError(problems)
    data: dict[str, Any] = doc.data
    pipeline_file = _pipeline_file(file, data)
    pipeline = _load_pipeline(doc, pipeline_file)
    cases = [_case(file, doc, pipeline, data, name, spec) for name, spec in data["tests"].items()]
    problems = [p for case in cases for p in _case_problems(case)]
    if problems:
        raise SpecError(problems)
    return [row for case in cases for row in _expand(case, data["tests"][case.name])]


def _errors(problems: Sequence[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def _pipeline_file(file: Path, data: Mapping[str, Any]) -> Path:
    if "pipeline" in data:
        return file.parent / str(data["pipeline"])
    return file.with_name(file.name.removesuffix(SUFFIX) + ".yaml")


def _load_pipeline(doc: Document, pipeline_file: Path) -> Pipeline:
    from goatclaw.api import check

    where = doc.locate(("pipeline",)) if "pipeline" in doc.data else doc.locate(())
    if not is_file(pipeline_file):
        raise SpecError([Problem(where, "pipeline", f"no pipeline file {pipeline_file}")])
    pipeline, problems = check(pipeline_file)
    errors = _errors(problems)
    if errors or pipeline is None:
        raise SpecError([Problem(where, "pipeline", f"{pipeline_file} is invalid"), *(errors or problems)])
    return pipeline


def _case(file: Path, doc: Document, pipeline: Pipeline, data: Mapping[str, Any], name: str,
          spec: Mapping[str, Any]) -> PipelineTest:
    cassette = spec.get("cassette", data.get("cassette"))
    llm = spec.get("llm", data.get("llm")) or ("replay" if cassette else None)
    return PipelineTest(
        file=file, name=name, pipeline=pipeline,
        vars={**data.get("vars", {}), **spec.get("vars", {})},
        stubs={**data.get("stubs", {}), **spec.get("stubs", {})},
        llm=llm, cassette=None if cassette is None else file.parent / str(cassette),
        only=tuple(spec.get("only", ())), expect=spec["expect"], doc=doc,
    )


def _expand(case: PipelineTest, spec: Mapping[str, Any]) -> list[PipelineTest]:
    """A case with ``cases:`` becomes one case per dataset row (``name[id]``), each row's columns as vars."""
    if "cases" not in spec:
        return [case]
    from goatclaw.datasets import read_rows

    where = case.doc.locate(("tests", case.name, "cases")) if case.doc is not None else None
    rows = read_rows(spec["cases"], case.file.parent, where, f"tests.{case.name}.cases")
    return [dataclasses.replace(case, name=f"{case.name}[{row_id}]", vars={**case.vars, **row}, dataset=case.name,
                                row=row) for row_id, row in rows]


def _case_problems(case: PipelineTest) -> list[Problem]:
    """Task names the pipeline does not have, asserts that do not compile, a cassette that is missing."""
    known = {*case.pipeline.tasks, *case.pipeline.on_failure, *case.pipeline.finally_}
    problems = []
    named = [(("stubs", t), t) for t in case.stubs] + [(("only", i), t) for i, t in enumerate(case.only)]
    named += [(("expect", "tasks", t), t) for t in case.expect.get("tasks", {})]
    for path, tid in named:
        if tid not in known:
            problems.append(_problem(case, path, f"the pipeline '{case.pipeline.name}' has no task '{tid}'",
                                     key=True))
    for i, item in enumerate(case.expect.get("asserts", ())):
        problems += _assert_problems(case, i, item, known)
    if case.cassette is not None and case.llm == "replay" and not is_file(case.cassette):
        problems.append(_problem(case, ("cassette",), f"no cassette file {case.cassette}"))
    return problems


def _assert_problems(case: PipelineTest, i: int, item: Any, known: set[str]) -> list[Problem]:
    """An expression that does not compile; an assertion's bad pattern or template, or unknown task."""
    path: tuple[str | int, ...] = ("expect", "asserts", i)
    if is_assertion(item):
        assertion = parse_assertion(item)
        found = [_problem(case, (*path, *sub), why) for sub, why in assertion_problems(assertion)]
        if assertion.task is not None and assertion.task not in known:
            found.append(_problem(case, (*path, "task"), f"the pipeline '{case.pipeline.name}' has no task "
                                                          f"'{assertion.task}'"))
        return found
    source = item if isinstance(item, str) else item["that"]
    try:
        compile_expression(source)
    except TemplateError as exc:
        return [_problem(case, path, exc.message)]
    return []


def _problem(case: PipelineTest, path: tuple[str | int, ...], message: str, *, key: bool = False) -> Problem:
    full = ("tests", case.spec_name, *path)
    spec_path = full if _has(case, full) else tuple(path)
    loc = case.doc.locate(spec_path, key=key) if case.doc is not None else None
    return Problem(loc, dotted(spec_path), message)


def _has(case: PipelineTest, path: tuple[str | int, ...]) -> bool:
    return case.doc is not None and path in case.doc.locations


# -- running -------------------------------------------------------------------------------------


async def _arun_case(case: PipelineTest) -> CaseResult:
    from goatclaw.api import arun
    from goatclaw.events import Bus

    started = time.perf_counter()
    events: list[tuple[str, str | None, Mapping[str, Any]]] = []
    bus = Bus()
    for topic in ("llm.call", "tool.started"):
        bus.subscribe(topic, lambda e: events.append((e.topic, e.task, e.data)))
    try:
        with scratch_workspace(case.pipeline) as workspace:
            run = await arun(case.pipeline, vars=case.vars, stubs=case.stubs, only=case.only, store=False,
                             cache=False, llm=case.llm, cassette=case.tape, workspace=workspace, bus=bus)
    except GoatclawError as exc:  # the run could not start (a bad cassette, an unknown --only …)
        return CaseResult(case, (Check(f"the run did not start: {exc}", case.locate()),),
                          time.perf_counter() - started)
    seconds = time.perf_counter() - started
    failures, outcomes = await _judge_all(case, run, Observation(run, tuple(events), seconds))
    cost = sum(call_cost(data) for topic, _task, data in events if topic == "llm.call")
    tokens = sum(int((data.get("usage") or {}).get("total_tokens") or 0) for topic, _t, data in events
                 if topic == "llm.call")
    return CaseResult(case, tuple(failures), seconds, run, tuple(outcomes), cost, tokens)


@contextlib.contextmanager
def scratch_workspace(pipeline: Pipeline) -> Iterator[Path]:
    """A temporary copy of the pipeline's project folder for one case, removed afterwards.

    A test reads what the project holds and writes only into the copy, so ``goatclaw test``
    never changes the repository (a pre-commit hook that did would fail with "files were
    modified"). Version-control folders, virtual environments, caches and the store are
    not copied (:data:`_SKIP_DIRS`).
    """
    from goatclaw.api import load_project_for

    project = pipeline.project or load_project_for(pipeline.file)
    with tempfile.TemporaryDirectory(prefix="goatclaw-test-") as scratch:
        workspace = Path(scratch) / (project.root.name or "workspace")
        shutil.copytree(project.root, workspace, symlinks=True,
                        ignore=lambda _folder, names: [n for n in names if n in _SKIP_DIRS])
        yield workspace


def judge(case: PipelineTest, run: RunResult) -> Iterator[Check]:
    """Every expectation of ``case`` that ``run`` does not meet (expressions only: see :func:`ajudge` for the rest)."""
    expect = case.expect
    yield from _judge_status(case, run)
    context = assert_context(run, {**case.pipeline.vars, **case.vars})
    for i, item in enumerate(expect.get("asserts", ())):
        if is_assertion(item):
            continue
        source, message = (item, None) if isinstance(item, str) else (item["that"], item.get("message"))
        failure = check_assert(source, context, message)
        if failure is not None:
            yield Check(failure[0], case.locate("expect", "asserts", i), failure[1])


def _judge_status(case: PipelineTest, run: RunResult) -> Iterator[Check]:
    expect = case.expect
    if "status" in expect and run.status.value != expect["status"]:
        failed = [f"{tid}: {t.status.value}: {error_line(t.error_class, t.error)}" for tid, t in run.tasks.items()
                  if t.status.value in ("failed", "upstream_failed", "cancelled")]
        why = [f"run error: {run.error}"] if run.error else []
        yield Check(f"expected the run to be {expect['status']}, it {run.status.value}",
                    case.locate("expect", "status"), tuple(why + failed))
    for tid, want in expect.get("tasks", {}).items():
        yield from _judge_task(case, run, tid, want if isinstance(want, Mapping) else {"status": want})


async def _judge_all(case: PipelineTest, run: RunResult, seen: Observation) -> tuple[list[Check], list[Outcome]]:
    """The failed checks and every assertion's outcome: status and tasks, then each ``asserts`` item in order."""
    failures = list(_judge_status(case, run))
    context = assert_context(run, {**case.pipeline.vars, **case.vars})
    items = list(case.expect.get("asserts", ()))
    judged = dataclasses.replace(seen, context=context, last_task=_last_task(case, run), embed=_embedder(case))
    outcomes: list[Outcome] = []
    async with _judging(case, items) as judge_fn:
        judged = dataclasses.replace(judged, judge=judge_fn)
        for i, item in enumerate(items):
            outcome, check = await _judge_item(case, i, item, context, judged)
            outcomes.append(outcome)
            if check is not None:
                failures.append(check)
    return failures, outcomes


async def _judge_item(case: PipelineTest, i: int, item: Any, context: Mapping[str, Any],
                      seen: Observation) -> tuple[Outcome, Check | None]:
    where = case.locate("expect", "asserts", i)
    if is_assertion(item):
        outcome = await evaluate(parse_assertion(item), seen)
        if outcome.passed:
            return outcome, None
        details = tuple(d for d in (outcome.found, outcome.message) if d)
        return outcome, Check(f"assert {outcome.label}: failed", where, details)
    source, message = (item, None) if isinstance(item, str) else (item["that"], item.get("message"))
    failure = check_assert(source, context, message)
    label = message or source
    if failure is None:
        return Outcome(label, True), None
    return Outcome(label, False, None, "; ".join(failure[1]), failure[0]), Check(failure[0], where, failure[1])


def _embedder(case: PipelineTest) -> Any:
    """What ``similar`` embeds with: the project's memory embedder (``memory.embedder``; default wordllama)."""
    project = case.pipeline.project
    settings = project.data.get("memory") if project is not None and isinstance(project.data, Mapping) else None
    name = settings.get("embedder") if isinstance(settings, Mapping) else None

    def embed(texts: Sequence[str]) -> Any:
        from goatclaw.memory.embedders import embedder_for

        return embedder_for(str(name) if name else None).embed(list(texts))

    return embed


def _last_task(case: PipelineTest, run: RunResult) -> str | None:
    """The last task of the plan that is part of the run: what an assertion without ``task:`` checks."""
    from goatclaw.api import plan

    order = [t for t in plan(case.pipeline).order if t in run.tasks]
    return order[-1] if order else None


@contextlib.asynccontextmanager
async def _judging(case: PipelineTest, items: Sequence[Any]) -> Any:
    """The judge ``llm_rubric`` assertions ask (in the case's LLM mode and cassette), or ``None`` without any."""
    if not any(isinstance(i, Mapping) and "llm_rubric" in i for i in items):
        yield None
        return
    from goatclaw import llm as room
    from goatclaw.api import llm_session, load_project_for

    project = case.pipeline.project or load_project_for(case.pipeline.file)
    session = llm_session(case.pipeline, project, case.llm, None, cassette=case.tape, cache=False)
    async with room.using(session):
        yield _rubric_judge(session)


def _rubric_judge(session: Any) -> Any:
    """``(rubric, value, options) -> (passed, score, why)`` through the validation room's judge prompt."""
    from goatclaw import llm as room
    from goatclaw.validation import JUDGE_SCHEMA, judge_messages, judge_verdict

    async def ask(rubric: str, value: Any, options: Mapping[str, Any]) -> tuple[bool, float | None, str]:
        model = options.get("model") or session.model
        if not model:
            raise GoatclawError("llm_rubric needs a model: give it model:, or set model: in goatclaw.yaml")
        request = room.Request(models=(str(model),), messages=tuple(judge_messages(rubric, value)), temperature=0,
                               output="json", schema=JUDGE_SCHEMA, api_base=options.get("api_base"),
                               api_key=options.get("api_key"))
        response = await room.complete(request)
        passed, why = judge_verdict(response.data, float(options.get("threshold", 0.5)))
        score = response.data.get("score") if isinstance(response.data, Mapping) else None
        return passed, float(score) if isinstance(score, (int, float)) else None, why

    return ask


def _judge_task(case: PipelineTest, run: RunResult, tid: str, want: Mapping[str, Any]) -> Iterator[Check]:
    res = run.tasks.get(tid)
    where = case.locate("expect", "tasks", tid)
    if res is None:
        yield Check(f"task '{tid}' was not part of the run (see only:)", where)
        return
    if "status" in want and res.status.value != want["status"]:
        why = (error_line(res.error_class, res.error),) if res.error else ()
        yield Check(f"tasks.{tid}.status: expected {want['status']}, got {res.status.value}", where, why)
    if "output" in want and res.output != want["output"]:
        yield Check(f"tasks.{tid}.output: not the expected output", where,
                    (f"expected: {_show(want['output'])}", f"actual:   {_show(res.output)}"))
    if "error" in want and want["error"] not in (res.error or ""):
        yield Check(f"tasks.{tid}.error: expected it to contain {want['error']!r}", where,
                    (f"actual: {res.error!r}",))
    if "error_class" in want and res.error_class != want["error_class"]:
        yield Check(f"tasks.{tid}.error_class: expected {want['error_class']}, got {res.error_class}", where)


def assert_context(run: RunResult, vars: Mapping[str, Any]) -> dict[str, Any]:
    """What ``asserts`` see: ``tasks.<id>`` (status, output, outputs, error, error_class, attempts), vars, run."""
    tasks = {tid: {**t.view(), "error_class": t.error_class, "attempts": t.attempts} for tid, t in run.tasks.items()}
    return {"tasks": tasks, "vars": dict(vars),
            "run": {"id": run.run_id, "pipeline": run.pipeline, "status": run.status.value, "error": run.error}}


def check_assert(source: str, context: Mapping[str, Any], message: str | None = None
                 ) -> tuple[str, tuple[str, ...]] | None:
    """``None`` if the expression is true in ``context``; else what failed and its operands' values."""
    title = f"assert {source}"
    try:
        value = compile_expression(source).evaluate(context)
    except TemplateError as exc:
        return f"{title}: {exc.message}", ()
    if value:
        return None
    details = [f"{operand} = {_show(found)}" for operand, found in _operand_values(source, context)]
    head = f"{title} is {_show(value)}" + (f": {message}" if message else "")
    return head, tuple(details)


def _operand_values(source: str, context: Mapping[str, Any]) -> list[tuple[str, Any]]:
    out = []
    for operand in operands(source):
        try:
            out.append((operand, compile_expression(operand).evaluate(context)))
        except TemplateError as exc:
            out.append((operand, f"<{exc.message}>"))
    return out


_SPLIT_OPS = {"==", "!=", "<", ">", "<=", ">="}
_SPLIT_WORDS = {"and", "or", "not", "in", "is"}


def operands(source: str) -> list[str]:
    """The parts of an expression worth showing when it is false.

    They are the sides of its top-level comparisons and of ``and``/``or``/``not``, literals
    left out: ``a.b | length == 3`` gives ``["a.b | length"]``.
    """
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return []
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    depth = 0
    parts: list[str] = []
    start = 0
    names = test_name = False
    for tok in tokens:
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        at = offsets[tok.start[0] - 1] + tok.start[1] if tok.start[0] <= len(lines) else len(source)
        split = depth == 0 and ((tok.type == tokenize.OP and tok.string in _SPLIT_OPS)
                                or (tok.type == tokenize.NAME and tok.string in _SPLIT_WORDS))
        if split or tok.type == tokenize.ENDMARKER:
            piece = source[start:at].strip()
            if piece and names and not test_name:
                parts.append(piece)
            start = offsets[tok.end[0] - 1] + tok.end[1] if tok.end[0] <= len(lines) else len(source)
            names = False
            test_name = tok.string == "is" or (test_name and tok.string == "not")  # `x is defined`: a test
        elif tok.type == tokenize.NAME and tok.string not in ("true", "false", "none", "True", "False", "None"):
            names = True
    return list(dict.fromkeys(p for p in parts if p != source.strip()))


def _show(value: Any, limit: int = 300) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- many files ----------------------------------------------------------------------------------


def collect(*paths: str | os.PathLike[str]) -> list[PipelineTest]:
    """Every test case under ``paths`` (files or folders; default the cwd), for ``pytest.mark.parametrize``.

    An invalid test file raises :class:`SpecError`.
    """
    return [case for file in discover(paths) for case in load_tests(file)]


def run_tests(cases: Iterable[PipelineTest]) -> list[CaseResult]:
    """Run test cases one after another (each on its own event loop) and return their results."""
    return [case.run() for case in cases]


def run_pipeline_test(path: str | os.PathLike[str], case: str | None = None, *, check: bool = True
                      ) -> list[CaseResult]:
    """Run the cases of one test file (or only ``case``); with ``check``, raise unless all passed.

    The error is a :class:`PipelineTestFailed` (an ``AssertionError``, so pytest reports it
    as a failed test) listing every failed check with the values found.
    """
    cases = load_tests(path)
    if case is not None:
        cases = [c for c in cases if c.name == case]
        if not cases:
            raise GoatclawError(f"{path}: no test case '{case}'")
    results = run_tests(cases)
    failed = [r for r in results if not r.passed]
    if check and failed:
        raise PipelineTestFailed("\n".join(r.explain() for r in failed))
    return results
