"""Tasks' ``inputs:`` globs: what they match, and the task cache keyed on the matched files' contents."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import goatclaw
from goatclaw.engine.inputs import InputGlobs, glob_problem
from goatclaw.errors import SpecError


def _tree(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)


@pytest.mark.parametrize(("patterns", "expected"), [
    (["*.csv"], ["a.csv"]),
    (["**/*.csv"], ["a.csv", "data/b.csv", "data/sub/c.csv"]),
    (["data/*.csv"], ["data/b.csv"]),
    (["data/"], ["data/b.csv", "data/n.txt", "data/sub/c.csv"]),
    (["data/**"], ["data/b.csv", "data/n.txt", "data/sub/c.csv"]),
    (["data/.*"], ["data/.e.csv"]),
    (["data/[bn]*"], ["data/b.csv", "data/n.txt"]),
    (["data/[!b]*"], ["data/n.txt"]),
    (["data/?.csv", "a.csv"], ["a.csv", "data/b.csv"]),
    (["data/sub/c.csv"], ["data/sub/c.csv"]),
    (["missing/*.csv"], []),
])
def test_globs_match_like_the_shell_and_skip_hidden_folders(tmp_path: Path, patterns: list[str],
                                                            expected: list[str]) -> None:
    _tree(tmp_path, "a.csv", "data/b.csv", "data/sub/c.csv", "data/n.txt", "data/.e.csv", ".git/x.csv",
          "data/.hid/d.csv")
    globs = InputGlobs(patterns, tmp_path)
    found = [p.relative_to(globs.root).as_posix() for p in globs.files()]
    assert found == expected
    for rel in expected:  # what the walk finds, the matcher (used on watch events) agrees with
        assert globs.matches(tmp_path / rel)
    assert not globs.matches(tmp_path / ".git" / "x.csv")


def test_folders_to_watch_cover_every_possible_match(tmp_path: Path) -> None:
    _tree(tmp_path, "data/sub/c.csv", "data/b.csv")
    root = tmp_path.resolve()
    assert InputGlobs(["data/**/*.csv"], tmp_path).folders() == {root / "data", root / "data" / "sub"}
    assert InputGlobs(["*.md"], tmp_path).folders() == {root}
    # a folder that does not exist yet is watched through its nearest existing parent
    assert InputGlobs(["later/x/*.csv"], tmp_path).folders() == {root}


def test_digest_follows_contents_not_modification_times(tmp_path: Path) -> None:
    _tree(tmp_path, "data/b.csv")
    globs = InputGlobs(["data/*.csv"], tmp_path)
    before = globs.digest()
    file = tmp_path / "data" / "b.csv"
    os.utime(file, (1, 1))  # touched, same bytes
    assert globs.digest() == before
    file.write_text("other")
    assert globs.digest() != before
    file.write_text("data/b.csv")
    assert globs.digest() == before
    (tmp_path / "data" / "new.csv").write_text("")  # a new match changes it too
    assert globs.digest() != before


def test_a_symlink_out_of_the_project_is_not_an_input(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    root = tmp_path / "proj"
    root.mkdir()
    (root / "link.txt").symlink_to(outside)
    assert InputGlobs(["*.txt"], root).files() == []


@pytest.mark.parametrize(("pattern", "why"), [
    ("../x", "leaves the project folder"),
    ("a/../../x", "leaves the project folder"),
    ("/etc/passwd", "is absolute"),
    ("~/x", "is absolute"),
    ("a[z-b]", "not a valid glob"),
])
def test_bad_globs_are_refused(pattern: str, why: str) -> None:
    problem = glob_problem(pattern)
    assert problem is not None and why in problem


def test_validate_locates_a_glob_that_leaves_the_project(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a:
            uses: echo
            inputs: [data/*.csv, ../secrets.txt]
            with: {value: 1}
    """)
    with pytest.raises(SpecError) as err:
        goatclaw.load(path)
    assert str(err.value.problems[0]).startswith(f"{path}:5:26: tasks.a.inputs[1]: '../secrets.txt' leaves")


PIPELINE = """
version: 1
tasks:
  rows:
    uses: echo
    inputs: [data/*.csv]
    with: {value: rows}
  count:
    uses: shell
    cache: true
    inputs: [data/b.csv]
    with: {run: [wc, -c, data/b.csv]}
  report:
    uses: echo
    needs: count
    with: {value: "${{ tasks.count.output.stdout }}"}
  untouched:
    uses: echo
    with: {value: constant}
  always:
    uses: shell
    with: {run: ["true"]}
"""


def _statuses(path: Path) -> dict[str, str]:
    result = goatclaw.run(path)
    assert result.ok, result.error
    return {tid: t.status.value for tid, t in result.tasks.items()}


def test_editing_an_input_reruns_the_tasks_that_read_it_and_dependents_whose_inputs_change(
        write_pipeline: Callable[..., Path], project: Path) -> None:
    _tree(project, "data/a.csv", "data/b.csv")
    path = write_pipeline(PIPELINE)
    first = _statuses(path)
    assert set(first.values()) == {"succeeded"}
    assert _statuses(path) == {"rows": "cached", "count": "cached", "report": "cached", "untouched": "cached",
                               "always": "succeeded"}  # shell without cache: true + inputs: always runs
    (project / "data" / "a.csv").write_text("changed")  # only rows reads a.csv
    assert _statuses(path) == {"rows": "succeeded", "count": "cached", "report": "cached", "untouched": "cached",
                               "always": "succeeded"}
    (project / "data" / "b.csv").write_text("a longer line")  # rows and count read it; wc's output changes
    assert _statuses(path) == {"rows": "succeeded", "count": "succeeded", "report": "succeeded",
                               "untouched": "cached", "always": "succeeded"}
    (project / "data" / "b.csv").write_text("same length!!")  # count re-runs, its output is the same: report hits
    assert _statuses(path) == {"rows": "succeeded", "count": "succeeded", "report": "cached", "untouched": "cached",
                               "always": "succeeded"}


def test_cache_true_without_inputs_does_not_cache_a_shell_task(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        defaults: {cache: true}
        tasks:
          t:
            uses: shell
            inputs: [x.txt]
            with: {run: ["true"]}
          u:
            uses: shell
            cache: true
            with: {run: ["true"]}
    """)
    _statuses(path)
    # defaults do not opt a side-effect task in, nor does cache: true without inputs:
    assert _statuses(path) == {"t": "succeeded", "u": "succeeded"}
