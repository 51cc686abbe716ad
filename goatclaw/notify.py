"""The ``notify`` hook: post a run's result to a webhook URL (Slack, Microsoft Teams, or your own).

::

    hooks:
      - use: notify
        with:
          url_secret: SLACK_WEBHOOK_URL   # the environment variable (or .env entry) holding the URL
          on: [failed]                    # the run statuses that notify (default: failed)

When the run ends with one of the ``on`` statuses, one JSON ``POST`` goes to the URL:

* ``text``: one line about the run and a line per failed task (at most 10, each error cut
  at 300 characters), with ``&``, ``<`` and ``>`` escaped as Slack asks (a task's error is
  untrusted text: ``<!channel>`` in it must not ping anybody). Slack incoming webhooks and
  Teams' Office 365 connectors show ``text``; ``format: adaptive`` sends the same text as
  an Adaptive Card, what a Teams *Workflows* webhook expects.
* ``goatclaw``: the same as data: ``pipeline``, ``run_id``, ``status``, ``duration`` (seconds),
  ``error``, ``failed`` (``[{task, error, error_class}]``) and ``cost_usd`` (what the tasks'
  outputs say they spent on models).

The URL is a secret (a Slack webhook URL lets anyone post to the channel): it is read from
``url_secret`` and never written anywhere; it and the run's declared secrets are masked in
what is sent and in any error. A request that fails (no answer within ``timeout`` seconds,
a status other than 2xx) is a hook failure: a ``hook.failed`` event and a warning in the
run's output, or a failed run with the hook's ``fail_run: true``. The request is the
pipeline author's own choice of destination: it is not a task, so ``permissions.network``
does not govern it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from goatclaw.money import usd
from goatclaw.security.secrets import Redactor

__all__ = ["STATUSES", "Notify", "message"]

#: The run statuses a notification can be sent for.
STATUSES = ("succeeded", "failed", "cancelled", "blocked", "waiting")
Status = Literal["succeeded", "failed", "cancelled", "blocked", "waiting"]
_MAX_FAILED = 10
_MAX_ERROR = 300


class Notify:
    """Posts the run's result as JSON to the URL in ``url_secret`` when it ends with a status in ``on``.

    ``timeout`` bounds the whole request (seconds, at most 60); ``format`` is ``text``
    (Slack, Teams connectors, any JSON receiver) or ``adaptive`` (a Teams Workflows webhook).
    """

    def __init__(self, *, url_secret: str, on: list[Status] | None = None, timeout: float = 10,
                 format: Literal["text", "adaptive"] = "text") -> None:
        statuses = list(on) if on is not None else ["failed"]
        unknown = [s for s in statuses if s not in STATUSES]
        if unknown:
            raise ValueError(f"on: unknown status {', '.join(map(repr, unknown))} (use {', '.join(STATUSES)})")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 60:
            raise ValueError(f"timeout must be more than 0 and at most 60 seconds, not {timeout!r}")
        self.url_secret = url_secret
        self.on = frozenset(statuses)
        self.timeout = float(timeout)
        self.format = format
        self._failed: list[dict[str, Any]] = []
        self._cost = 0.0
        self._mask: Callable[[Any], Any] = lambda value: value

    def on_run_start(self, *, mask: Callable[[Any], Any]) -> None:
        """Keep the run's secret masker; forget any earlier run."""
        self._mask = mask
        self._failed, self._cost = [], 0.0

    def after_task(self, *, task_id: str, status: str, output: Any, error: str | None,
                   error_class: str | None) -> None:
        """Note a failed task and what the task's output says it cost."""
        if status == "failed":
            self._failed.append({"task": task_id, "error": error, "error_class": error_class})
        self._cost += _cost_of(output)

    async def on_run_end(self, *, run_id: str, pipeline: str, status: str, error: str | None, duration: float,
                         workspace: Any) -> None:
        """Post the result if ``status`` is one to notify about; raise (masked) if the post fails."""
        if status not in self.on:
            return
        url = _secret(self.url_secret, workspace)
        if not url:
            raise RuntimeError(f"{self.url_secret} is not set (the environment or .env): nowhere to notify")
        own = Redactor({self.url_secret: url})
        data = {"pipeline": pipeline, "run_id": run_id, "status": status, "duration": round(duration, 3),
                "error": error, "failed": self._failed[:_MAX_FAILED], "cost_usd": round(self._cost, 10)}
        body = own.mask_data(self._mask(message(data, self.format)))
        try:
            await _post(url, body, self.timeout)
        except TimeoutError:
            raise RuntimeError(f"could not notify {self.url_secret}: no answer within {self.timeout:g}s") from None
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise RuntimeError(own.mask(self._mask(f"could not notify {self.url_secret}: {why}"))) from None


def message(data: dict[str, Any], format: str = "text") -> dict[str, Any]:
    """The JSON body for a run's ``data``: ``text`` (escaped for Slack) and ``goatclaw`` (the data itself)."""
    text = _text(data)
    if format == "adaptive":
        card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
                "version": "1.4", "body": [{"type": "TextBlock", "text": line, "wrap": True}
                                           for line in text.splitlines()]}
        return {"type": "message", "text": text, "goatclaw": data,
                "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}]}
    return {"text": text, "goatclaw": data}


def _text(data: dict[str, Any]) -> str:
    head = (f"goatclaw: {data['pipeline']} {data['status']} (run {data['run_id']}, {data['duration']:.1f}s"
            f"{', ' + usd(data['cost_usd']) if data['cost_usd'] else ''})")
    lines = [head]
    if data.get("error") and not data["failed"]:
        lines.append(f"error: {_cut(str(data['error']))}")
    for failure in data["failed"]:
        kind = f" ({failure['error_class']})" if failure.get("error_class") else ""
        lines.append(f"- {failure['task']}{kind}: {_cut(str(failure.get('error') or ''))}")
    return "\n".join(_escape(line) for line in lines)


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR else text[:_MAX_ERROR - 1] + "…"


def _escape(text: str) -> str:
    """``&``, ``<``, ``>`` as Slack's message formatting asks (so ``<!channel>`` or a link in an error is shown)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cost_of(output: Any) -> float:
    """``cost_usd`` of a task's output (an llm/agent answer), summed over a fan-out's list of outputs."""
    if isinstance(output, dict):
        value = output.get("cost_usd")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
    if isinstance(output, list):
        return sum(_cost_of(item) for item in output)
    return 0.0


def _secret(name: str, workspace: Any) -> str | None:
    """The URL: from the environment, else the project's ``.env``."""
    if os.environ.get(name):
        return os.environ[name]
    from goatclaw.providers import read_dotenv

    return read_dotenv(Path(workspace) if workspace is not None else None).get(name) or None


async def _post(url: str, body: dict[str, Any], timeout: float) -> None:
    import asyncio

    import httpx

    async with asyncio.timeout(timeout):  # the whole request, however slowly the server answers
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            response = await client.post(url, json=body)
    if not 200 <= response.status_code < 300:
        excerpt = " ".join(response.text[:200].split())
        raise RuntimeError(f"HTTP {response.status_code}{': ' + repr(excerpt) if excerpt else ''}")
