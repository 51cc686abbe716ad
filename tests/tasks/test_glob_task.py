"""``file.glob`` on a real tree with links that point out of the grant, and through a pipeline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import goatclaw
from goatclaw.errors import TaskError
from goatclaw.plugin import TaskContext
from goatclaw.security.permissions import build_grant
from goatclaw.spec.model import Permissions
from goatclaw.tasks.files import glob


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    for rel in ["src/app.py", "src/util/io.py", "src/util/io_test.py", "src/util/deep/x.py", "src/README.md",
                "src/node_modules/pkg/index.py", "src/.hidden.py", "docs/guide.md", "private/key.py"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    outside = tmp_path / "outside"
    (outside / "tree").mkdir(parents=True)
    (outside / "tree" / "stolen.py").write_text("secret")
    (outside / "secret.py").write_text("secret")
    os.symlink(outside / "secret.py", root / "src" / "link_out.py")  # a file link out of the workspace
    os.symlink(outside / "tree", root / "src" / "dir_out")  # a folder link out: never walked
    os.symlink(root / "src" / "app.py", root / "src" / "link_in.py")  # a link that stays inside
    os.symlink(root / "private" / "key.py", root / "src" / "link_private.py")  # inside, but not granted
    os.symlink(root / "src", root / "src" / "util" / "loop")  # a loop: never followed
    return root


def ctx_for(ws: Path, read: tuple[str, ...] = ("src/", "docs/")) -> TaskContext:
    return TaskContext(run_id="r", task_id="t", workspace=ws,
                       permissions=build_grant([(Permissions(files_read=read), "test")], ws))


def test_double_star_spans_folders_and_star_does_not(ws: Path) -> None:
    out = glob(ctx_for(ws), patterns="**/*.py", path="src", exclude=["**/node_modules", "**/*_test.py"])
    assert out["paths"] == ["src/.hidden.py", "src/app.py", "src/link_in.py", "src/util/deep/x.py", "src/util/io.py"]
    assert out["count"] == 5 and out["truncated"] is False
    assert glob(ctx_for(ws), patterns="*.py", path="src/util")["paths"] == ["src/util/io.py", "src/util/io_test.py"]


def test_several_patterns_from_the_workspace_root(ws: Path) -> None:
    out = glob(ctx_for(ws), patterns=["src/*.md", "docs/**"])
    assert out["paths"] == ["docs/guide.md", "src/README.md"]  # private/ is outside the grant


def test_links_never_carry_the_glob_out_of_the_grant(ws: Path) -> None:
    found = glob(ctx_for(ws), patterns="**", path="src")["paths"]
    assert not any("secret" in p or "stolen" in p or "dir_out" in p or "link_private" in p or "loop" in p
                   for p in found)
    assert "src/link_in.py" in found and "src/node_modules/pkg/index.py" in found


def test_limit_details_and_folders(ws: Path) -> None:
    out = glob(ctx_for(ws), patterns="**/*.py", path="src", limit=2)
    assert out["count"] == 2 and out["truncated"] is True
    detailed = glob(ctx_for(ws), patterns="docs/*.md", details=True)["paths"]
    assert detailed[0]["path"] == "docs/guide.md" and detailed[0]["bytes"] == len("docs/guide.md")
    assert detailed[0]["modified"].endswith("+00:00")
    folders = glob(ctx_for(ws), patterns="src/util/*", files_only=False)["paths"]
    assert "src/util/deep" in folders and "src/util/io.py" in folders


@pytest.mark.parametrize(("kwargs", "error_class"), [
    ({"patterns": "../*.py"}, "permission_denied"),
    ({"patterns": "/etc/*"}, "permission_denied"),
    ({"patterns": []}, "invalid_input"),
    ({"patterns": "*.py", "path": "private"}, "permission_denied"),
    ({"patterns": "*.py", "path": "nope"}, "permission_denied"),
    ({"patterns": "*.py", "limit": 0}, "invalid_input"),
])
def test_refusals(ws: Path, kwargs: dict[str, Any], error_class: str) -> None:
    with pytest.raises(TaskError) as info:
        glob(ctx_for(ws), **kwargs)
    assert info.value.error_class == error_class, info.value.message


def test_glob_in_a_pipeline(project: Path, write_pipeline: Any) -> None:
    (project / "notes" / "2024").mkdir(parents=True)
    (project / "notes" / "2024" / "a.md").write_text("a")
    (project / "notes" / "b.md").write_text("b")
    path = write_pipeline("""
        version: 1
        permissions: {files: {read: [notes/]}}
        tasks:
          find:
            uses: file.glob
            with: {patterns: "notes/**/*.md"}
        """)
    assert goatclaw.check(path)[1] == []
    result = goatclaw.run(path)
    assert result.ok and result.outputs["find"]["paths"] == ["notes/2024/a.md", "notes/b.md"]
