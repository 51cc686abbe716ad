"""``file.copy/move/delete/mkdir/archive/extract`` on real files and real archives (zip-slip, tar-slip)."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

import goatclaw
from goatclaw.errors import TaskError
from goatclaw.plugin import TaskContext
from goatclaw.security.permissions import build_grant
from goatclaw.spec.model import Permissions
from goatclaw.tasks.fileops import archive, copy, delete, extract, mkdir, move


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "src" / "sub").mkdir(parents=True)
    (root / "src" / "a.txt").write_text("a")
    (root / "src" / "sub" / "b.txt").write_text("b")
    (root / "out").mkdir()
    (tmp_path / "secret.txt").write_text("hunter2")
    return root


def ctx_for(ws: Path) -> TaskContext:
    perms = Permissions(files_read=("src/", "out/"), files_write=("out/",))
    return TaskContext(run_id="r", task_id="t", workspace=ws, permissions=build_grant([(perms, "test")], ws))


def fails(fn, error_class: str) -> TaskError:  # type: ignore[no-untyped-def]
    with pytest.raises(TaskError) as info:
        fn()
    assert info.value.error_class == error_class, info.value.message
    return info.value


def test_copy_move_delete_mkdir(ws: Path) -> None:
    c = ctx_for(ws)
    out = copy(c, source="src", destination="out/copy")
    assert sorted(out["files"]) == ["out/copy/a.txt", "out/copy/sub/b.txt"]
    assert (ws / "out/copy/sub/b.txt").read_text() == "b"
    fails(lambda: copy(c, source="src/a.txt", destination="out/copy/a.txt"), "invalid_input")  # exists
    move(c, source="out/copy/a.txt", destination="out/moved.txt")
    assert (ws / "out/moved.txt").read_text() == "a" and not (ws / "out/copy/a.txt").exists()
    fails(lambda: delete(c, path="out/copy"), "invalid_input")  # a folder needs recursive
    delete(c, path="out/copy", recursive=True)
    assert not (ws / "out/copy").exists()
    assert mkdir(c, path="out/x/y")["path"] == "out/x/y" and (ws / "out/x/y").is_dir()
    fails(lambda: copy(c, source="src/a.txt", destination="src/b.txt"), "permission_denied")  # not writable
    fails(lambda: delete(c, path="src/a.txt"), "permission_denied")
    fails(lambda: copy(c, source="../secret.txt", destination="out/s.txt"), "permission_denied")


def test_links_never_carry_an_operation_out(ws: Path, tmp_path: Path) -> None:
    c = ctx_for(ws)
    (ws / "src" / "out_link").symlink_to(tmp_path / "secret.txt")
    fails(lambda: copy(c, source="src", destination="out/c"), "permission_denied")
    fails(lambda: archive(c, source="src", output="out/a.zip"), "permission_denied")
    (ws / "out" / "escape").symlink_to(tmp_path)
    fails(lambda: mkdir(c, path="out/escape/new"), "permission_denied")
    delete(c, path="out/escape")  # the link itself goes; what it points at stays
    assert not (ws / "out/escape").is_symlink() and (tmp_path / "secret.txt").exists()


@pytest.mark.parametrize("suffix", ["zip", "tar", "tar.gz"])
def test_archive_and_extract_round_trip(ws: Path, suffix: str) -> None:
    c = ctx_for(ws)
    out = archive(c, source="src", output=f"out/src.{suffix}")
    assert sorted(out["members"]) == ["src/a.txt", "src/sub/b.txt"]
    got = extract(c, archive=f"out/src.{suffix}", destination="out/unpacked")
    assert (ws / "out/unpacked/src/sub/b.txt").read_text() == "b" and got["bytes"] == 2


def _zip(path: Path, name: str, *, link: bool = False) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo(name)
        if link:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd" if link else "pwned")


def _tar(path: Path, name: str, kind: bytes = tarfile.REGTYPE) -> None:
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.REGTYPE:
            info.size = 5
            tf.addfile(info, io.BytesIO(b"pwned"))
        else:
            info.linkname = "/etc/passwd"
            tf.addfile(info)


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "a/../../evil.txt", "C:/evil.txt"])
def test_zip_slip_and_tar_slip_are_refused(ws: Path, tmp_path: Path, name: str) -> None:
    c = ctx_for(ws)
    _zip(ws / "out/bad.zip", name)
    _tar(ws / "out/bad.tar", name)
    for bad in ("out/bad.zip", "out/bad.tar"):
        fails(lambda bad=bad: extract(c, archive=bad, destination="out/x"), "permission_denied")
    assert not (tmp_path / "evil.txt").exists() and not (ws / "out/evil.txt").exists()
    assert not (ws / "out/x").exists()  # nothing written at all


def test_links_in_archives_are_refused(ws: Path) -> None:
    c = ctx_for(ws)
    _zip(ws / "out/link.zip", "passwd", link=True)
    _tar(ws / "out/sym.tar", "passwd", tarfile.SYMTYPE)
    _tar(ws / "out/hard.tar", "passwd", tarfile.LNKTYPE)
    for bad in ("out/link.zip", "out/sym.tar", "out/hard.tar"):
        fails(lambda bad=bad: extract(c, archive=bad, destination="out/x"), "permission_denied")
    assert not (ws / "out/x/passwd").exists()


def test_extracting_through_a_link_in_the_destination_is_refused(ws: Path, tmp_path: Path) -> None:
    c = ctx_for(ws)
    (tmp_path / "elsewhere").mkdir()
    (ws / "out" / "dest").mkdir()
    (ws / "out" / "dest" / "sub").symlink_to(tmp_path / "elsewhere")
    _zip(ws / "out/ok.zip", "sub/f.txt")
    fails(lambda: extract(c, archive="out/ok.zip", destination="out/dest"), "permission_denied")
    assert not (tmp_path / "elsewhere" / "f.txt").exists()


@pytest.mark.parametrize("op", ["copy-to", "move-from", "move-to", "delete-in", "mkdir-in", "archive-to",
                                "extract-to", "extract-into"])
def test_every_operation_refuses_a_link_out_of_its_grant(ws: Path, tmp_path: Path, op: str) -> None:
    """out/escape is a link inside the write grant to a folder outside the workspace: nothing may go through it."""
    c = ctx_for(ws)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept.txt").write_text("kept")
    (ws / "out" / "escape").symlink_to(outside)
    _zip(ws / "out/ok.zip", "f.txt")
    calls = {
        "copy-to": lambda: copy(c, source="src/a.txt", destination="out/escape/a.txt"),
        "move-from": lambda: move(c, source="out/escape/kept.txt", destination="out/kept.txt"),
        "move-to": lambda: move(c, source="out/ok.zip", destination="out/escape/ok.zip"),
        "delete-in": lambda: delete(c, path="out/escape/kept.txt"),
        "mkdir-in": lambda: mkdir(c, path="out/escape/new"),
        "archive-to": lambda: archive(c, source="src", output="out/escape/src.zip"),
        "extract-to": lambda: extract(c, archive="out/ok.zip", destination="out/escape"),
        "extract-into": lambda: extract(c, archive="out/ok.zip", destination="out/escape/sub"),
    }
    fails(calls[op], "permission_denied")
    assert sorted(p.name for p in outside.iterdir()) == ["kept.txt"] and (outside / "kept.txt").read_text() == "kept"
    assert (ws / "out/ok.zip").exists() and not (ws / "out/kept.txt").exists()


def test_moving_a_link_moves_the_link_not_what_it_names(ws: Path, tmp_path: Path) -> None:
    c = ctx_for(ws)
    (ws / "out" / "escape").symlink_to(tmp_path / "secret.txt")
    move(c, source="out/escape", destination="out/still-a-link")
    assert (ws / "out/still-a-link").is_symlink() and (tmp_path / "secret.txt").read_text() == "hunter2"
    fails(lambda: copy(c, source="out/still-a-link", destination="out/copied.txt"), "permission_denied")


def test_file_operations_through_the_front_door(project: Path, write_pipeline: Callable[..., Path]) -> None:
    """A pipeline packs, unpacks, copies, moves and deletes inside its grants; a link out fails the task."""
    (project / "site" / "css").mkdir(parents=True)
    (project / "site" / "index.html").write_text("<h1>hi</h1>")
    (project / "site" / "css" / "a.css").write_text("h1 {}")
    (project / "elsewhere").mkdir()
    path = write_pipeline("""
        version: 1
        permissions: {files: {read: [site/, build/], write: [build/]}}
        tasks:
          folder: {uses: file.mkdir, with: {path: build/stage}}
          pack:
            uses: file.archive
            needs: folder
            with: {source: site, output: build/site.zip}
          unpack:
            uses: file.extract
            needs: pack
            with: {archive: build/site.zip, destination: build/stage}
          keep:
            uses: file.copy
            needs: unpack
            with: {source: build/stage/site/index.html, destination: build/index.html}
          rename:
            uses: file.move
            needs: keep
            with: {source: build/index.html, destination: build/home.html}
          tidy:
            uses: file.delete
            needs: rename
            with: {path: build/stage, recursive: true}
          found:
            uses: file.glob
            needs: tidy
            with: {patterns: "build/**"}
        """)
    assert goatclaw.check(path)[1] == []
    result = goatclaw.run(path)
    assert result.ok, {t: r.error for t, r in result.tasks.items() if r.error}
    assert result.outputs["unpack"]["members"] == ["site/css/a.css", "site/index.html"]
    assert result.outputs["found"]["paths"] == ["build/home.html", "build/site.zip"]
    assert (project / "build/home.html").read_text() == "<h1>hi</h1>"
    (project / "build" / "out").symlink_to(project / "elsewhere")
    leak = write_pipeline("""
        version: 1
        permissions: {files: {read: [site/], write: [build/]}}
        tasks:
          leak: {uses: file.copy, with: {source: site/index.html, destination: build/out/index.html}}
        """, name="leak.yaml")
    failed = goatclaw.run(leak)
    assert failed.tasks["leak"].error_class == "permission_denied", failed.tasks["leak"].error
    assert list((project / "elsewhere").iterdir()) == []
