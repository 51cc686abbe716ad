"""The auto-fix loop's pieces (``fix: {attempts, mode, model}``): feedback, repair requests, diffs.

* ``feedback`` (the default, for ``llm`` tasks): the task is asked again with its previous
  answer and every failed rule's message appended to the conversation;
* ``repair`` (any task): an LLM rewrites the rejected output into JSON that passes the rules;
* ``rerun``: the task runs again unchanged.

The engine (:mod:`goatclaw.engine.runner`) runs the loop: each fix attempt runs under the
task's retry policy, is an event ``task.fix`` with a unified diff of the output's JSON, and
a fixed output is stored only once it passes every rule.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from typing import Any

from goatclaw.spec.model import Rule, Task
from goatclaw.template import Compiled
from goatclaw.validation import Rejected

__all__ = ["CascadeInputs", "FeedbackInputs", "diff", "feedback_kwargs", "fix_llm", "repair_messages"]


def _text(output: Any) -> str:
    return json.dumps(output, ensure_ascii=False, indent=2, sort_keys=True, default=str)


def diff(before: Any, after: Any) -> str:
    """A unified diff of two outputs' JSON text."""
    return "".join(difflib.unified_diff(_text(before).splitlines(keepends=True), _text(after).splitlines(keepends=True),
                                        "rejected", "fixed", n=2))


def _complaints(rejected: Rejected) -> str:
    return "\n".join(f"- {v.message}" for v in rejected.failed)


def feedback_kwargs(kwargs: Mapping[str, Any], rejected: Rejected) -> dict[str, Any]:
    """An ``llm`` task's inputs with its rejected answer and the failed rules' messages appended."""
    out = dict(kwargs)
    prompt = out.pop("prompt", None)
    messages = list(out.get("messages") or [])
    if prompt is not None:
        messages.append({"role": "user", "content": prompt})
    previous = rejected.output.get("text") if isinstance(rejected.output, Mapping) else None
    messages.append({"role": "assistant", "content": previous if isinstance(previous, str) else _text(rejected.output)})
    messages.append({"role": "user", "content": "Your answer was rejected because:\n" + _complaints(rejected)
                     + "\nAnswer again, fixing every point."})
    out["messages"] = messages
    return out


class FeedbackInputs(Compiled):
    """A task's compiled ``with:`` whose rendering carries the feedback on a rejected answer."""

    __slots__ = ("_inner", "_rejected")

    def __init__(self, inner: Compiled, rejected: Rejected) -> None:
        self._inner = inner
        self._rejected = rejected
        self.value = inner.value
        self._render = None
        self.is_constant = False

    def render(self, context: Mapping[str, Any], *, limit: float | None = None) -> Any:
        """The inputs, rendered (within ``limit`` seconds, see :meth:`Compiled.render`), with the feedback appended."""
        return feedback_kwargs(self._inner.render(context, limit=limit), self._rejected)


class CascadeInputs(Compiled):
    """A task's compiled ``with:`` whose ``model`` is one stage of a cascade (with feedback: the last rejection)."""

    __slots__ = ("_at", "_cascade", "_inner", "_rejected")

    def __init__(self, inner: Compiled, cascade: Mapping[str, Any], at: int, rejected: Rejected | None) -> None:
        self._inner = inner
        self._cascade = cascade
        self._at = at
        self._rejected = rejected
        self.value = inner.value
        self._render = None
        self.is_constant = False

    def render(self, context: Mapping[str, Any], *, limit: float | None = None) -> Any:
        """The inputs, rendered, with ``model: {cascade, at}`` (and the feedback on the rejected answer, if any)."""
        kwargs = dict(self._inner.render(context, limit=limit))
        kwargs["model"] = {**self._cascade, "at": self._at}
        return feedback_kwargs(kwargs, self._rejected) if self._rejected is not None else kwargs


def repair_messages(rules: tuple[Rule, ...], rejected: Rejected) -> list[dict[str, str]]:
    """The chat messages asking an LLM to rewrite a rejected output so that it passes ``rules``."""
    wanted = "\n".join(f"- {r.kind}: {json.dumps(r.arg, default=str)}" + (f" ({r.message})" if r.message else "")
                       for r in rules)
    return [
        {"role": "system", "content": "You repair the JSON output of a pipeline task so that it passes every "
                                      "rule. Keep what is right, change only what the rules require. Answer "
                                      "with the repaired output as JSON only."},
        {"role": "user", "content": f"Rules:\n{wanted}\n\nThe output was rejected because:\n{_complaints(rejected)}"
                                    f"\n\nOutput:\n{_text(rejected.output)}"},
    ]


def fix_llm(task: Task, kwargs: Mapping[str, Any], explicit: str | None,
            default: str | None) -> tuple[str | None, str | None, str | None]:
    """``(model, api_base, api_key)`` for a judge or a repair.

    The model: ``explicit`` (the rule's or the fix's ``model``), else an ``llm`` task's
    own ``model`` (a cascade's last), else the project's ``default``. ``api_base``/``api_key`` come from an
    ``llm`` task's ``with:`` (otherwise litellm reads the provider's environment).
    """
    is_llm = task.uses == "llm"
    own = kwargs.get("model") if is_llm else None
    if isinstance(own, Mapping) and isinstance(own.get("cascade"), list) and own["cascade"]:
        own = own["cascade"][-1]  # a cascade's answers are judged by its strongest model
    if isinstance(own, list):
        own = own[0] if own else None
    if isinstance(own, Mapping):  # a model entry {name, api_base, api_key}: its name
        own = own.get("name")
    model = explicit or (own if isinstance(own, str) and own else None) or default
    base = kwargs.get("api_base") if is_llm else None
    key = kwargs.get("api_key") if is_llm else None
    return model, base if isinstance(base, str) else None, key if isinstance(key, str) else None
