"""The dashboard inside ``goatclaw serve``, in Chromium: a password and TOTP login, and a read user who changes nothing.

The real server app (``build_app`` with the dashboard mounted at ``/ui``) on uvicorn on
127.0.0.1, users added with argon2 passwords and TOTP secrets, codes from pyotp; skipped
where this goatclaw has no server yet.
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO / "benchmarks"))  # last: benchmarks/dask.py must not shadow dask (spawned workers too)
from ui_harness import CHROMIUM, chromium, run_pipeline, served  # noqa: E402

pytest.importorskip("goatclaw.server.auth", reason="this goatclaw has no server (goatclaw serve) yet")
pytest.importorskip("playwright", reason="playwright is not installed (it is in the dev extra)")
pyotp = pytest.importorskip("pyotp")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing")]

from goatclaw.server import accounts  # noqa: E402
from goatclaw.server.app import build_app  # noqa: E402
from goatclaw.server.ui.served import dashboard_mount  # noqa: E402
from goatclaw.store import Store  # noqa: E402

ARTIFACTS = REPO / "tests" / "artifacts" / "ui"
ADMIN_SECRET, READER_SECRET = pyotp.random_base32(), pyotp.random_base32()
FAILING = """
version: 1
name: nightly
tasks:
  fetch: {uses: echo, with: {value: ok}}
  publish: {uses: shell, needs: fetch, with: {run: ["false"]}}
"""


@pytest.fixture
def server(project: Path, store_path: Path) -> Iterator[tuple[str, str]]:
    (project / "nightly.yaml").write_text(textwrap.dedent(FAILING).lstrip())
    failed = run_pipeline(project / "nightly.yaml", store=str(store_path))
    accounts.add_user(store_path, "ann", "correct horse battery", ["admin"], totp_secret=ADMIN_SECRET)
    accounts.add_user(store_path, "rob", "staple paper clip", ["read"], totp_secret=READER_SECRET)
    app = build_app({"demo": project}, extra_routes=[dashboard_mount(store_path, project="demo")])
    with served(app, lifespan="on") as url:
        yield url, failed.run_id


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def sign_in(browser: Any, url: str, path: str, user: str, password: str, secret: str) -> Any:
    page = browser.new_context().new_page()
    page.goto(url + path)
    assert "/ui/login" in page.url  # not signed in: to the login page, which remembers where to go
    page.get_by_label("User").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_label("Code from the authenticator app").fill("000000")  # a wrong code first
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("#login-error:not([hidden])")
    assert "wrong" in page.locator("#login-error").inner_text()
    page.get_by_label("Code from the authenticator app").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(url + path)
    return page


def test_login_with_totp_then_the_buttons_work(browser: Any, server: tuple[str, str], store_path: Path) -> None:
    url, run_id = server
    page = sign_in(browser, url, f"/ui/runs/{run_id}", "ann", "correct horse battery", ADMIN_SECRET)
    assert "user:ann" in page.locator("header .who").inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-admin-run.png"), full_page=True)
    page.get_by_role("button", name="Re-run").click()
    page.wait_for_load_state("load")
    new = page.url.rsplit("/", 1)[1]
    assert new != run_id
    with Store.open(store_path) as db:
        assert db.run(new) is not None


def test_a_read_user_sees_everything_and_changes_nothing(browser: Any, server: tuple[str, str],
                                                         store_path: Path) -> None:
    url, run_id = server
    page = sign_in(browser, url, f"/ui/runs/{run_id}", "rob", "staple paper clip", READER_SECRET)
    assert page.locator("form[method=post]").count() == 0
    assert page.locator('details.task[data-task="publish"] pre.error').is_visible()
    for where in ("/ui/dead-letters", "/ui/breakers", "/ui/approvals", "/ui/costs", "/ui/audit"):
        page.goto(url + where)
        assert page.locator("form[method=post]").count() == 0, where
    page.screenshot(path=str(ARTIFACTS / "serve-read-user.png"), full_page=True)
    status = page.evaluate("""async (path) => (await fetch(path, {method: 'POST', body: new URLSearchParams(
        {csrf: 'x'})})).status""", f"/ui/runs/{run_id}/rerun")
    assert status == 403
    with Store.open(store_path) as db:
        assert len(db.runs(limit=10)) == 1


def test_re_run_and_cancel_go_through_the_servers_queue(browser: Any, server: tuple[str, str], project: Path,
                                                        store_path: Path) -> None:
    url, _ = server
    slow = project / "slow.yaml"
    slow.write_text("version: 1\nname: slow\ntasks:\n  wait: {uses: shell, with: {run: [sleep, '0']}}\n")
    first = run_pipeline(slow, store=str(store_path))
    slow.write_text("version: 1\nname: slow\ntasks:\n  wait: {uses: shell, with: {run: [sleep, '60']}}\n")
    page = sign_in(browser, url, f"/ui/runs/{first.run_id}", "ann", "correct horse battery", ADMIN_SECRET)
    page.get_by_role("button", name="Re-run").click()
    page.wait_for_selector('#run[data-status="running"]')
    new = page.url.rsplit("/", 1)[1]
    assert new != first.run_id
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_load_state("load")
    assert "cancelled run" in page.locator(".flash.ok").inner_text()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with Store.open(store_path) as db:
            row = db.run(new)
        if row is not None and row.status == "cancelled":
            break
        time.sleep(0.1)
    assert row is not None and row.status == "cancelled"  # resumable, like any cancelled run
