"""The compiled templates' code cache (goatclaw/codecache.py): a second process compiles nothing, and gets the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from goatclaw.codecache import KEEP, CodeCache

REPO = Path(__file__).resolve().parent.parent

#: In a fresh process: how many times Jinja2 compiled, and what the templates gave (values, errors, refs).
PROBE = """
import json, sys
import jinja2
real = jinja2.Environment.compile
count = [0]
def counting(self, *args, **kwargs):
    count[0] += 1
    return real(self, *args, **kwargs)
jinja2.Environment.compile = counting
from goatclaw.errors import TemplateError
from goatclaw.template import check_value, compile_expression, compile_value
context = {"tasks": {"a": {"output": {"n": 2, "items": [1, 2, 3]}}}, "vars": {"who": "x"}}
seen = []
for source in ("tasks.a.output.n + 1", "tasks.a.output['items'] | map('string') | join(',')", "[vars.who] * 2",
               "tasks.a.output.n > 1 and vars.who == 'x'"):
    seen.append(compile_expression(source).evaluate(context))
seen.append(compile_value({"t": "n=${{ tasks.a.output.n }} {% for i in tasks.a.output['items'] %}${{ i }}{% endfor %}",
                           "whole": "${{ tasks.a.output['items'] | length }}"}).render(context))
for bad in ("tasks.a.output.n +", "x ||| y", "nope + 1"):
    try:
        seen.append(compile_expression(bad).evaluate(context))
    except TemplateError as exc:
        seen.append("error: " + str(exc))
text = {"a": "${{ tasks.b.output.x ~ vars.y }} ${{ run.errors }}"}
seen.append([[list(path), sorted(refs.names), list(refs.tasks), list(refs.vars), [list(f) for f in refs.task_fields],
              refs.run_errors] for path, refs in check_value(text)])
print(json.dumps({"compiled": count[0], "seen": seen}))
"""


def _probe(cache: Path) -> dict[str, object]:
    env = {**os.environ, "GOATCLAW_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_a_second_process_compiles_nothing_and_gets_the_same(tmp_path: Path) -> None:
    first = _probe(tmp_path)
    assert first["compiled"] >= 5  # the probe sees Jinja2 compile
    assert len(list((tmp_path / "templates").glob("*/*.bin"))) >= 5
    second = _probe(tmp_path)
    assert second["seen"] == first["seen"]
    assert second["compiled"] == 0  # each expression, template and refs from the cache; errors were not kept
    assert "error: " in json.dumps(first["seen"]) and first["seen"][4] == {"t": "n=2 123", "whole": 3}


def test_without_a_cache_folder_templates_still_compile(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cold = _probe(blocker / "cache")  # mkdir fails (even for root): compile each time
    assert cold["compiled"] >= 5
    assert _probe(blocker / "cache")["compiled"] == cold["compiled"]
    assert blocker.read_text() == "not a folder"
    assert cold["seen"] == _probe(tmp_path / "ok")["seen"]


def test_an_entry_is_only_ever_the_value_of_its_own_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOATCLAW_CACHE_DIR", str(tmp_path))
    cache = CodeCache("t", "salt")
    cache.put("expression", "a + 1", ("kept",))
    assert cache.get("expression", "a + 1") == ("kept",)
    assert cache.get("expression", "a + 2") is None and cache.get("refs", "a + 1") is None
    [entry] = (tmp_path / "t").glob("*/*.bin")
    entry.write_bytes(b"\x00garbage")  # a truncated or foreign file is a miss, then replaced
    assert cache.get("expression", "a + 1") is None
    cache.put("expression", "a + 1", ("again",))
    assert cache.get("expression", "a + 1") == ("again",)
    assert CodeCache("t", "another salt").get("expression", "a + 1") is None  # another compiler: another key
    cache.put("expression", "b", object())  # what marshal cannot keep is not kept
    assert cache.get("expression", "b") is None


def test_a_new_salt_removes_the_old_entries_but_the_last_few(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOATCLAW_CACHE_DIR", str(tmp_path))
    caches = [CodeCache("t", f"jinja2 {n}") for n in range(KEEP + 2)]
    for n, cache in enumerate(caches):
        assert cache.get("template", "x") is None  # another compiler: not the other's entry
        cache.put("template", "x", n)
        os.utime(cache.folder, ns=(n * 10**9, n * 10**9))  # written in this order (a coarse clock could tie them)
    newest = CodeCache("t", "jinja2 new")
    newest.put("template", "x", "new")
    kept = {p.name for p in (tmp_path / "t").iterdir()}
    assert kept == {newest.salt, *(c.salt for c in caches[-KEEP:])}  # the oldest two salts' folders are gone
    assert CodeCache("t", "jinja2 new").get("template", "x") == "new"
    assert CodeCache("t", f"jinja2 {KEEP + 1}").get("template", "x") == KEEP + 1


def test_two_installs_on_one_machine_keep_each_others_entries(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout and a release (another salt each) running by turns: neither wipes what the other compiled."""
    monkeypatch.setenv("GOATCLAW_CACHE_DIR", str(tmp_path))
    for _ in range(3):
        for salt in ("checkout", "release"):
            cache = CodeCache("t", salt)
            if cache.get("template", "x") is None:
                cache.put("template", "x", salt)
    assert CodeCache("t", "checkout").get("template", "x") == "checkout"
    assert CodeCache("t", "release").get("template", "x") == "release"
    assert CodeCache("t", "checkout").misses == 0


def test_a_process_that_misses_too_often_stops_looking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOATCLAW_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(CodeCache, "MISSES", 3)
    cache = CodeCache("t", "s")
    for i in range(4):
        assert cache.get("template", f"t{i}") is None
        cache.put("template", f"t{i}", i)
    assert cache.get("template", "t0") is None  # past the bound: not read
    assert sorted(CodeCache("t", "s").get("template", f"t{i}") for i in range(3)) == [0, 1, 2]
    assert CodeCache("t", "s").get("template", "t3") is None  # and not written
