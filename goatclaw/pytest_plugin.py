"""A pytest plugin for pipeline tests: ``*.test.yaml`` files collected as tests, and a fixture.

Turn it on in a ``conftest.py`` (``pytest_plugins = ["goatclaw.pytest_plugin"]``) or with
``pytest -p goatclaw.pytest_plugin``. Then ``pytest pipelines/`` runs every case of every
``*.test.yaml`` file as a pytest test (``quickstart.test.yaml::default-topics``), and
the ``pipeline_test`` fixture is :func:`goatclaw.testing.run_pipeline_test`.

pytest is not a dependency of goatclaw: only this module imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from goatclaw.errors import GoatclawError
from goatclaw.testing import SUFFIX, PipelineTest, PipelineTestFailed, load_tests, run_pipeline_test

__all__ = ["PipelineTestFile", "PipelineTestItem", "pipeline_test", "pytest_collect_file"]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Collect ``*.test.yaml`` files."""
    if file_path.name.endswith(SUFFIX):
        return PipelineTestFile.from_parent(parent, path=file_path)  # type: ignore[no-any-return]
    return None


class PipelineTestFile(pytest.File):
    """A ``*.test.yaml`` file: one item per test case (an invalid file is a collection error)."""

    def collect(self) -> Iterator[pytest.Item]:
        """The file's test cases."""
        try:
            cases = load_tests(self.path)
        except GoatclawError as exc:
            raise self.CollectError(str(exc)) from None
        for case in cases:
            yield PipelineTestItem.from_parent(self, name=case.name, case=case)


class PipelineTestItem(pytest.Item):
    """One test case: runs its pipeline and fails with every check that did not hold."""

    def __init__(self, *, case: PipelineTest, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        """Run the case; raise :class:`PipelineTestFailed` unless it passed."""
        self.case.check()

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        """The failed checks, not a traceback through goatclaw."""
        if isinstance(excinfo.value, PipelineTestFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """Where the case is, for pytest's report."""
        return self.path, None, f"{self.path.name}::{self.name}"


@pytest.fixture
def pipeline_test() -> Callable[..., Any]:
    """:func:`goatclaw.testing.run_pipeline_test`: ``pipeline_test("x.test.yaml")`` runs a file, raising on failure."""
    return run_pipeline_test
