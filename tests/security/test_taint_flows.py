"""Untrusted data keeps its origin through files and memory (#16.5).

An ``http`` output written with ``file.write`` and read back with ``file.read`` (in the
same run or a later one), or stored with ``memory`` and found by a search, is as
untrusted as the page itself: it cannot reach a ``script:`` without ``trust:``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from local_http import serving

import goatclaw
from goatclaw.store import Store

PAYLOAD = "touch pwned"


class _Page(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = PAYLOAD.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    """A real web page on 127.0.0.1 whose text is a shell command."""
    with serving(_Page) as url:
        yield url


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (the current directory) whose goatclaw.yaml grants nothing."""
    (tmp_path / "goatclaw.yaml").write_text("version: 1\nstore:\n  path: .goatclaw/goatclaw.db\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GOATCLAW_STORE", raising=False)
    return tmp_path


def _run(root: Path, text: str, name: str = "p.yaml", **options: Any) -> goatclaw.RunResult:
    path = root / name
    path.write_text(textwrap.dedent(text).lstrip())
    return goatclaw.run(path, **options)


def _refused(result: goatclaw.RunResult, task: str, *parts: str) -> None:
    res = result.tasks[task]
    assert res.status.value == "failed" and res.error_class == "permission_denied", (res.status, res.error)
    for part in parts:
        assert part in (res.error or ""), res.error


SAVE = """
    version: 1
    name: save
    permissions: {{network: [127.0.0.1], files: {{write: [out/]}}}}
    tasks:
      fetch: {{uses: http, with: {{url: "{web}/page", response: text}}}}
      save:
        uses: file.write
        needs: fetch
        with: {{path: out/page.txt, content: "${{{{ tasks.fetch.output.body }}}}"}}
    """

LOAD = """
    version: 1
    name: load
    permissions: {{shell: [bash], files: {{read: [out/]}}}}
    tasks:
      load: {{uses: file.read, with: {{path: {path}}}}}
      act:
        uses: shell
        needs: load{trust}
        with: {{script: "${{{{ tasks.load.output }}}}"}}
    """


def test_a_web_page_written_to_a_file_and_read_back_in_a_later_run_cannot_reach_a_script(
        root: Path, web: str) -> None:
    assert _run(root, SAVE.format(web=web)).ok
    assert (root / "out" / "page.txt").read_text() == PAYLOAD
    result = _run(root, LOAD.format(path="out/page.txt", trust=""), "load.yaml")
    _refused(result, "act", "with.script reads tasks.load, which carries output of fetch",
             "read back from out/page.txt, which an untrusted flow wrote", "add trust: [load] to task 'act'")
    assert not (root / "pwned").exists()
    with Store.open(root / ".goatclaw" / "goatclaw.db") as store:  # kept, so a resume knows it too
        assert store.untrusted_tasks(result.run_id)["load"][0] == ["fetch"]
    trusted = _run(root, LOAD.format(path="out/page.txt", trust="\n        trust: [load]"), "load.yaml")
    assert trusted.ok, trusted.tasks["act"].error  # trust: accepts the read-back explicitly
    assert (root / "pwned").exists()


def test_the_same_run_cannot_launder_a_web_page_through_a_file(root: Path, web: str) -> None:
    result = _run(root, f"""
        version: 1
        permissions: {{network: [127.0.0.1], shell: [bash], files: {{read: [out/], write: [out/]}}}}
        tasks:
          fetch: {{uses: http, with: {{url: "{web}/page", response: text}}}}
          save:
            uses: file.write
            needs: fetch
            with: {{path: out/page.txt, content: "${{{{ tasks.fetch.output.body }}}}"}}
          load: {{uses: file.read, needs: save, with: {{path: out/page.txt}}}}
          quote: {{uses: echo, needs: load, with: {{value: "${{{{ tasks.load.output }}}}"}}}}
          act: {{uses: shell, needs: quote, with: {{script: "${{{{ tasks.quote.output }}}}"}}}}
        """)
    _refused(result, "act", "with.script reads tasks.quote, which carries output of fetch", "read back from")
    assert not (root / "pwned").exists()


def test_a_copy_made_by_other_means_is_still_untrusted_and_a_clean_rewrite_is_not(root: Path, web: str) -> None:
    assert _run(root, SAVE.format(web=web)).ok
    (root / "out" / "copy.txt").write_bytes((root / "out" / "page.txt").read_bytes())  # cp, outside file.write
    _refused(_run(root, LOAD.format(path="out/copy.txt", trust=""), "load.yaml"), "act",
             "read back from out/copy.txt, which holds what an untrusted flow wrote")
    (root / "out" / "page.txt").write_text("echo edited")  # changed since the untrusted write: still suspect
    _refused(_run(root, LOAD.format(path="out/page.txt", trust=""), "load.yaml"), "act", "read back from")
    clean = _run(root, """
        version: 1
        name: clean
        permissions: {files: {write: [out/]}}
        tasks:
          save: {uses: file.write, with: {path: out/page.txt, content: "echo clean > clean.txt"}}
        """, "clean.yaml")
    assert clean.ok
    result = _run(root, LOAD.format(path="out/page.txt", trust=""), "load.yaml")
    assert result.ok, result.tasks["act"].error
    assert (root / "clean.txt").exists() and not (root / "pwned").exists()


def test_appending_clean_text_to_an_untrusted_file_leaves_it_untrusted(root: Path, web: str) -> None:
    assert _run(root, SAVE.format(web=web)).ok
    assert _run(root, """
        version: 1
        name: more
        permissions: {files: {write: [out/]}}
        tasks:
          more: {uses: file.write, with: {path: out/page.txt, content: "\\necho more", mode: append}}
        """, "more.yaml").ok
    _refused(_run(root, LOAD.format(path="out/page.txt", trust=""), "load.yaml"), "act", "carries output of fetch")


def test_a_resumed_run_still_refuses_what_was_read_back(root: Path, web: str) -> None:
    assert _run(root, SAVE.format(web=web)).ok
    first = _run(root, LOAD.format(path="out/page.txt", trust=""), "load.yaml")
    _refused(first, "act", "read back from")
    again = goatclaw.run(root / "load.yaml", resume=first.run_id)
    assert again.resumed == ("load",)  # load is not read again ...
    _refused(again, "act", "carries output of fetch")  # ... and what it carried is still known
    replay = goatclaw.run(root / "load.yaml", seed_from=again.run_id)  # how goatclaw dlq replay re-runs a task
    assert replay.resumed == ("load",)
    _refused(replay, "act", "carries output of fetch")
    assert not (root / "pwned").exists()


MEMORY = """
    version: 1
    name: {name}
    permissions: {{network: [127.0.0.1], shell: [bash]}}
    tasks:{tasks}
    """


def test_a_memory_stored_from_a_web_page_is_untrusted_when_found(root: Path, web: str) -> None:
    pytest.importorskip("sqlite_vec")
    stored = _run(root, MEMORY.format(name="keep", tasks=f"""
      fetch: {{uses: http, with: {{url: "{web}/page", response: text}}}}
      keep: {{uses: memory, needs: fetch, with: {{action: store, text: "${{{{ tasks.fetch.output.body }}}}"}}}}
      note: {{uses: memory, with: {{action: store, text: "echo from the author", kind: fix}}}}
    """), "keep.yaml")
    assert stored.ok, {t: r.error for t, r in stored.tasks.items()}
    recall = """
      recall: {{uses: memory, with: {{action: search, query: touch, k: 1, kind: {kind}}}}}
      act:
        uses: shell
        needs: recall{trust}
        with: {{script: "${{{{ tasks.recall.output.results[0].text }}}}"}}
    """
    result = _run(root, MEMORY.format(name="recall", tasks=recall.format(kind="note", trust="")), "recall.yaml")
    _refused(result, "act", "reads tasks.recall, which carries output of fetch", "a memory stored from untrusted data")
    assert result.tasks["recall"].output["results"][0]["origins"] == ["fetch"]
    assert not (root / "pwned").exists()
    clean = _run(root, MEMORY.format(name="recall", tasks=recall.format(kind="fix", trust="")), "recall.yaml")
    assert clean.ok, clean.tasks["act"].error  # the author's own memory is plain data
    assert clean.tasks["recall"].output["results"][0]["origins"] == []
    trust = "\n        trust: [recall]"
    trusted = _run(root, MEMORY.format(name="recall", tasks=recall.format(kind="note", trust=trust)), "recall.yaml")
    assert trusted.ok, trusted.tasks["act"].error
    assert (root / "pwned").exists()


def test_what_memory_learns_from_an_untrusted_task_stays_untrusted(root: Path, web: str) -> None:
    pytest.importorskip("sqlite_vec")
    (root / "goatclaw.yaml").write_text("version: 1\nstore:\n  path: .goatclaw/goatclaw.db\n"
                                        "memory: {remember: {outputs: true}}\n")
    learned = _run(root, MEMORY.format(name="learn", tasks=f"""
      fetch: {{uses: http, with: {{url: "{web}/page", response: text}}}}
      plain: {{uses: echo, with: {{value: "echo from the author"}}}}
    """), "learn.yaml")
    assert learned.ok
    recall = """
      recall: {{uses: memory, with: {{action: search, query: output, k: 1, kind: output, filters: {{task: {task}}}}}}}
      act:
        uses: shell
        needs: recall
        with: {{script: "echo ${{{{ tasks.recall.output.results[0].text | tojson }}}}"}}
    """
    seen = _run(root, MEMORY.format(name="recall", tasks=recall.format(task="fetch")),
                "recall.yaml")
    assert "fetch output" in seen.tasks["recall"].output["results"][0]["text"]
    _refused(seen, "act", "reads tasks.recall, which carries output of fetch")
    own = _run(root, MEMORY.format(name="recall", tasks=recall.format(task="plain")),
               "recall.yaml")
    assert "plain output" in own.tasks["recall"].output["results"][0]["text"]
    assert own.ok, own.tasks["act"].error  # an echo of the author's own text is not untrusted
