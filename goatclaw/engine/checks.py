"""Checking a task's output and fixing what its rules reject: the runner's validation stage.

:class:`OutputChecks` is the part of the runner that judges an output by the task's
``validate:`` rules (a ``judge`` rule asks an LLM) and, with ``fix:``, runs the fix loop:
``feedback`` re-asks an ``llm`` task with the failed rules, ``repair`` asks an LLM to
rewrite the output, ``rerun`` runs the task again. The engine's own LLM calls here are
made on the task's behalf: its network grant, its secrets, its ``llm.call`` events.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from goatclaw.engine.guard import Guard
from goatclaw.engine.recorder import Recorder
from goatclaw.engine.retry import Backoff, should_retry
from goatclaw.engine.state import RunResult, TaskResult, to_json
from goatclaw.errors import TaskError, TemplateError
from goatclaw.fix import CascadeInputs, FeedbackInputs, diff, fix_llm, repair_messages
from goatclaw.registry import Plugin, Registry
from goatclaw.spec.model import Pipeline, Task
from goatclaw.template import Compiled, check_value, compile_value
from goatclaw.validation import (
    JUDGE_SCHEMA,
    JudgeFn,
    Rejected,
    acheck_output,
    check_output,
    judge_messages,
    judge_verdict,
)
from goatclaw.validation import failure as validation_failure

__all__ = ["OutputChecks"]


class OutputChecks:
    """Validation and the fix loop, mixed into the runner.

    The runner provides what is declared here, and ``_inputs(task)`` (the compiled
    ``with:``), ``_run_attempts(...)`` (a task's attempts under its retry policy) and
    ``_task_context(...)`` (the context the engine's own LLM calls are checked against).
    """

    recorder: Recorder | None
    pipeline: Pipeline
    opts: Any  # RunOptions
    registry: Registry
    guard: Guard
    result: RunResult
    rng: random.Random

    async def _check_output(self, task: Task, output: Any, context: Mapping[str, Any], index: int | None,
                            kwargs: Mapping[str, Any]) -> None:
        """Judge ``output`` by the task's ``validate:`` rules (judge rules last); every verdict is an event."""
        assert self.recorder is not None
        base = self.pipeline.file.parent if self.pipeline.file is not None else self.opts.workspace
        judge = self._judge(task, kwargs, index) if any(r.kind == "judge" for r in task.validate) else None
        verdicts = await acheck_output(task.validate, output, context, base=base,
                                       validator=lambda name: self.registry.validator(name).fn, judge=judge)
        for verdict in verdicts:
            self.recorder.event("task.rule", task.id, {"item": index, **verdict.to_dict()})
        error = validation_failure(verdicts, output)
        if error is not None:
            raise error

    def _cached_output_holds(self, task: Task, output: Any, context: Mapping[str, Any], index: int | None) -> bool:
        """Whether a cached ``output`` still meets ``task``'s rules in this run's context.

        The rules' text is part of the cache key, but a rule can read the run (``expr:
        output.n >= vars.min``): the cheap rules are checked again, and a cached output that
        fails one is not reused (event ``task.cache.stale``), so the task runs. Judge rules
        are not asked again (an LLM call per hit); the output passed them when it was stored.
        """
        cheap = [(i, r) for i, r in enumerate(task.validate) if r.kind != "judge"]
        if not cheap:
            return True
        assert self.recorder is not None
        base = self.pipeline.file.parent if self.pipeline.file is not None else self.opts.workspace
        verdicts = check_output(tuple(r for _, r in cheap), output, context, base=base,
                                validator=lambda name: self.registry.validator(name).fn,
                                places=[i for i, _ in cheap])  # rule 3 stays rule 3 in the stale reason
        error = validation_failure(verdicts, output)
        if error is None:
            return True
        self.recorder.event("task.cache.stale", task.id, {"item": index, "reason": error.message})
        return False

    def _llm_emit(self, task: Task, index: int | None) -> Callable[..., None]:
        """``emit`` for the engine's own LLM calls (judge, repair): ``llm.call`` events count their cost."""
        assert self.recorder is not None
        task_event = self.recorder.task_event
        return lambda topic, **data: task_event(topic, {"task": task.id, "item": index, **data})

    def _judge(self, task: Task, kwargs: Mapping[str, Any], index: int | None) -> JudgeFn:
        """How this task's judge rules ask their LLM (provider errors are the task's, and retried)."""
        from goatclaw import llm as room

        async def judge(rule: Any, criterion: str, output: Any) -> tuple[bool | None, str]:
            model, base, key = fix_llm(task, kwargs, rule.options.get("model"), room.session().model)
            if not model:
                raise TaskError("a judge rule needs a model: give it model:, or set model: in goatclaw.yaml",
                                error_class="invalid_input")
            if task.uses == "llm" and isinstance(output, Mapping):  # the answer, not its cost, latency or source
                output = output.get("text") if output.get("data") is None else output["data"]
            request = room.Request(models=(model,), messages=tuple(judge_messages(criterion, output)),
                                   temperature=0, output="json", schema=JUDGE_SCHEMA, api_base=base, api_key=key)
            self._task_context(task, 1, None, index).require_models(request.models, base, key)  # its network grant
            response = await room.complete(request, emit=self._llm_emit(task, index),
                                           secrets=list(self.opts.secrets.values()))
            return judge_verdict(response.data, float(rule.options.get("threshold", 0.5)))

        return judge

    def _cascade_of(self, task: Task, context: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """``{cascade, feedback}`` when ``task`` is an ``llm`` task with a cascade (its own or the project's).

        A templated ``model:`` (``${{ vars.models }}``, or ``{cascade: ${{ vars.models }}}``) is
        rendered with the task's ``context`` first: a cascade that a var or an upstream output
        gives is a cascade too. A template that cannot render here is left to the task's
        attempt, which reports it.
        """
        if task.uses != "llm" or not task.validate or not isinstance(task.with_, Mapping):
            return None
        model = task.with_.get("model")
        if context is not None and any(True for _ in check_value(model)):
            try:
                model = compile_value(model).render(context)
            except TemplateError:
                return None
        if model is None:
            from goatclaw import llm as room

            s = room.session()
            return {"cascade": list(s.cascade), "feedback": s.cascade_feedback} if len(s.cascade) > 1 else None
        if isinstance(model, Mapping) and isinstance(model.get("cascade"), list) and len(model["cascade"]) > 1:
            return {k: v for k, v in model.items() if k in ("cascade", "feedback")}
        return None

    async def _cascade_loop(self, task: Task, plugin: Plugin, res: TaskResult, context: Mapping[str, Any],
                            index: int | None, cascade: dict[str, Any]) -> tuple[Any, str]:
        """Ask each model of the cascade in turn until an answer passes the rules (event ``task.cascade``).

        A model whose answer is rejected, or that lacks what the task needs, is passed over
        (``task.escalate``, with the reason); errors follow the fallback chain inside each
        call. The kept output gains ``cascade.passed_over``; ``task.cascade`` records what
        was paid and what the kept answer would have cost at the last model's prices.
        """
        assert self.recorder is not None
        compiled = self._inputs(task)
        names = [str(e.get("name") if isinstance(e, Mapping) else e) for e in cascade["cascade"]]
        passed_over: list[dict[str, Any]] = []
        rejected: Rejected | None = None
        paid = 0.0
        for at, name in enumerate(names):
            use = CascadeInputs(compiled, cascade, at, rejected if cascade.get("feedback") else None)
            last = at + 1 == len(names)
            try:
                if last and task.fix is not None:  # fix: applies to the last model's answer
                    output, text = await self._fix_loop(task, plugin, res, context, index, use)
                else:
                    output, text = await self._run_attempts(task, plugin, res, context, index, use)
            except Rejected as exc:
                answer = exc.output if isinstance(exc.output, Mapping) else {}
                cost = float(answer.get("cost_usd") or 0.0)
                if_last = float((answer.get("cascade") or {}).get("if_last_usd") or cost)
                reason, rejected = exc.message, exc
            except TaskError as err:
                if not err.details.get("incapable") or last:
                    raise
                answer, cost, if_last, reason = {}, 0.0, 0.0, err.message
            else:
                paid += float(output.get("cost_usd") or 0.0) if isinstance(output, Mapping) else 0.0
                if_last = float(((output.get("cascade") or {}) if isinstance(output, Mapping) else {}).get(
                    "if_last_usd") or 0.0)
                self.recorder.event("task.cascade", task.id, {"item": index, "answered_by": name, "at": at,
                                                              "passed_over": passed_over, "paid_usd": paid,
                                                              "if_last_usd": if_last})
                if isinstance(output, Mapping) and isinstance(output.get("cascade"), Mapping):
                    output = {**output, "cascade": {**output["cascade"], "passed_over": passed_over}}
                    text = to_json(output)
                return output, text
            paid += cost
            passed_over.append({"model": name, "reason": reason, "cost_usd": cost})
            if last:
                self.recorder.event("task.cascade", task.id, {"item": index, "answered_by": None, "at": at,
                                                              "passed_over": passed_over, "paid_usd": paid,
                                                              "if_last_usd": if_last})
                raise Rejected(f"{reason} (every model of the cascade was passed over: {', '.join(names)})",
                               answer, rejected.verdicts if rejected is not None else [])
            self.recorder.event("task.escalate", task.id, {"item": index, "model": name, "to": names[at + 1],
                                                           "reason": reason, "cost_usd": cost})
        raise AssertionError("unreachable: a cascade has at least two models")

    async def _fix_loop(self, task: Task, plugin: Plugin, res: TaskResult, context: Mapping[str, Any],
                        index: int | None, compiled: Compiled | None = None) -> tuple[Any, str]:
        """Run the task; while its output is rejected, fix it (``fix.attempts`` times, apart from retries).

        ``compiled`` is the inputs to run with (a cascade's last stage), else the task's own.
        """
        assert task.fix is not None and self.recorder is not None
        compiled = compiled or self._inputs(task)
        try:
            return await self._run_attempts(task, plugin, res, context, index, compiled)
        except Rejected as exc:
            rejected = exc
        mode = task.fix.mode if task.fix.mode in ("feedback", "repair", "rerun") else "feedback"
        if mode == "feedback" and task.uses != "llm":
            mode = "repair"  # only an llm task can take feedback; any output can be repaired
        for n in range(1, task.fix.attempts + 1):
            res.fixes = max(res.fixes, n)
            data: dict[str, Any] = {"item": index, "attempt": n, "mode": mode, "rejected": rejected.message}
            try:
                if mode == "repair":
                    output = await self._repair(task, res, context, index, rejected)
                    result = output, to_json(output)
                else:
                    use = FeedbackInputs(compiled, rejected) if mode == "feedback" else compiled
                    result = await self._run_attempts(task, plugin, res, context, index, use)
            except Rejected as again:
                self.recorder.event("task.fix", task.id, {**data, "passed": False, "diff": diff(rejected.output,
                                                                                                 again.output)})
                rejected = again
                continue
            self.recorder.event("task.fix", task.id, {**data, "passed": True, "diff": diff(rejected.output, result[0])})
            return result
        raise Rejected(f"{rejected.message} (still rejected after {task.fix.attempts} fix attempts)", rejected.output,
                       rejected.verdicts)

    async def _repair(self, task: Task, res: TaskResult, context: Mapping[str, Any], index: int | None,
                      rejected: Rejected) -> Any:
        """Ask an LLM to rewrite a rejected output (under the task's retry policy), then check every rule."""
        from goatclaw import llm as room

        assert task.fix is not None and self.recorder is not None
        try:
            kwargs = self._inputs(task).render(context)
        except TemplateError:
            kwargs = {}
        model, base, key = fix_llm(task, kwargs, task.fix.model, room.session().model)
        if not model:
            raise TaskError("fix: {mode: repair} needs a model: give fix.model, or set model: in goatclaw.yaml",
                            error_class="invalid_input")
        request = room.Request(models=(model,), messages=tuple(repair_messages(task.validate, rejected)),
                               temperature=0, output="json", api_base=base, api_key=key)
        self._task_context(task, 1, None, index).require_models(request.models, base, key)  # the task's network grant
        policy, attempt = task.retry, 1
        backoff = Backoff(policy, self.rng)
        while True:
            try:
                response = await room.complete(request, emit=self._llm_emit(task, index),
                                               secrets=list(self.opts.secrets.values()))
                break
            except TaskError as err:
                if attempt >= policy.attempts or not should_retry(policy, err.error_class):
                    raise
                delay = backoff.next_delay(attempt, err.error_class, err.retry_after)
                self.recorder.event("task.retrying", task.id, {"attempt": attempt, "item": index, "delay": round(
                    delay, 3), "error_class": err.error_class, "error": err.message, "fix": True})
                await self.opts.sleep(delay)
                attempt += 1
                res.attempts = max(res.attempts, attempt)
        await self._check_output(task, response.data, context, index, kwargs)
        return response.data
