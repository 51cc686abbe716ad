"""JSON Schema checks for pipeline and project files, with errors at file:line:col.

The schemas (``schemas/pipeline.schema.json``, ``schemas/goatclaw.schema.json``) are
Draft 2020-12 and ship inside the package. Valid files take a fast path: the schema is
compiled once to Python code by fastjsonschema (the schemas keep to keywords whose
meaning is the same in draft 7), about ten times faster than jsonschema on a large
pipeline. A file that fails it is checked again by jsonschema, which finds every error;
each is mapped back to the line and column of the offending node.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import marshal
import os
import re
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastjsonschema

if TYPE_CHECKING:  # jsonschema is imported only when a document has problems to explain (about 70 ms)
    import jsonschema
    from jsonschema.exceptions import ValidationError

from goatclaw.codecache import cache_dir
from goatclaw.errors import Problem
from goatclaw.regex import RegexError, compile_linear
from goatclaw.spec.loader import Document, dotted

__all__ = ["GENERATED", "check_document", "check_instance", "load_schema", "schema_problems", "schema_text",
           "without_generated"]

#: The ``$comment`` that marks a task's ``with:`` branch generated from its plugin (``goatclaw schema``)
#: in the pipeline schema. Editors read them; validation leaves them out, because each plugin checks its
#: own ``with:`` (templated values, missing extras) with better messages, and a mistake is reported once.
GENERATED = "generated from the task's with: arguments (goatclaw schema); validate checks with: per plugin"

SCHEMAS = ("pipeline", "goatclaw", "test")
_TYPE_ORDER = ("number", "integer", "string", "boolean", "object", "array", "null")
_DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$"


def schema_text(name: str = "pipeline") -> str:
    """The raw text of a shipped schema (``pipeline`` or ``goatclaw``)."""
    if name not in SCHEMAS:
        raise ValueError(f"unknown schema '{name}' (use one of {', '.join(SCHEMAS)})")
    shipped = Path(__file__).resolve().parent.parent / "schemas" / f"{name}.schema.json"
    if shipped.is_file():  # an installed package's files (importlib.resources, for a zip, costs 6 ms of imports)
        return shipped.read_text(encoding="utf-8")
    from importlib import resources

    return resources.files("goatclaw").joinpath("schemas", f"{name}.schema.json").read_text(encoding="utf-8")


@cache
def load_schema(name: str = "pipeline") -> dict[str, Any]:
    """A shipped schema as data, as validation uses it (without the :data:`GENERATED` editor branches)."""
    data: dict[str, Any] = json.loads(schema_text(name))
    return without_generated(data)


def without_generated(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without the generated per-task ``with:`` branches (``schema`` itself is left as it is)."""
    task = schema.get("$defs", {}).get("task")
    if not isinstance(task, dict) or not any(b.get("$comment") == GENERATED for b in task.get("allOf", [])):
        return schema
    kept = [b for b in task["allOf"] if b.get("$comment") != GENERATED]
    return {**schema, "$defs": {**schema["$defs"], "task": {**task, "allOf": kept}}}


@cache
def _fast(name: str) -> Callable[[Any], Any]:
    """The schema compiled to Python by fastjsonschema, from the code cache when it is there.

    Generating the validator for the pipeline schema takes a few hundred milliseconds, so
    the generated code is kept, marshalled, in the user's cache folder (like ``__pycache__``)
    under a key made of the schema text, the fastjsonschema version and Python's bytecode
    magic; any change makes a new key. A cache that cannot be read or written is skipped.
    """
    schema = dict(load_schema(name))
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    path = _cache_file(name)
    try:
        func_name, code = marshal.loads(path.read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        # use_default=False: by default fastjsonschema writes every schema `default` into the
        # data it checks, which would make a task's `retry: {delay: 2s}` shadow `defaults.retry`.
        source = fastjsonschema.compile_to_code(schema, use_default=False)
        func_name = _FIRST_DEF.search(source).group(1)  # type: ignore[union-attr]
        code = compile(source, f"<goatclaw {name} schema validator>", "exec")
        _write_atomic(path, marshal.dumps((func_name, code)))
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # code generated from our own shipped schema
    return namespace[func_name]  # type: ignore[no-any-return]


@cache
def _cache_file(name: str) -> Path:
    """Where the compiled validator of ``name`` is cached: keyed by the schema text, fastjsonschema and Python."""
    key = hashlib.sha256("\0".join((schema_text(name), fastjsonschema.VERSION,
                                     importlib.util.MAGIC_NUMBER.hex())).encode()).hexdigest()[:32]
    return cache_dir() / f"schema-{name}-{key}.bin"


_FIRST_DEF = re.compile(r"^def (\w+)\(", re.MULTILINE)




def _write_atomic(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: compile each time


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """``pattern`` with ECMA-262's ``$`` (end of string), as fastjsonschema has it.

    jsonschema uses Python's ``re.search``, whose ``$`` also matches before a final
    newline, so a duration of ``10s`` plus a newline would pass the slow path and fail
    the fast one.
    """
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not _ecma_search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def _compiled_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"(?<!\\)\$$", r"\\Z", pattern))


def _ecma_search(pattern: str, text: str) -> bool:
    return _compiled_pattern(pattern).search(text) is not None


@cache
def _full(name: str) -> jsonschema.Draft202012Validator:
    import jsonschema

    validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})
    return validator(load_schema(name))  # type: ignore[no-any-return]


def check_document(doc: Document, name: str = "pipeline") -> list[Problem]:
    """Every schema problem in ``doc``, located and sorted (empty when valid).

    The fast validator checks first: its compiled code is loaded from the code cache
    (about 3 ms), or compiled and cached by the first check on a machine (about 60 ms
    for the project schema, 120 ms for the pipeline's). jsonschema (about 70 ms to
    import, so imported only then) explains a document the fast one rejects.
    """
    try:
        _fast(name)(doc.data)
        return []
    except fastjsonschema.JsonSchemaException:
        pass
    return schema_problems(doc, _full(name).iter_errors(doc.data))


def check_instance(instance: Any, schema: dict[str, Any],
                   formats: Mapping[str, Callable[[str], bool]] | None = None, *, root: str | None = None) -> list[str]:
    """Validate plain data against a user-supplied schema; messages with their paths.

    The schema and the data are both the user's, so ``pattern`` and ``patternProperties``
    run on RE2 (linear time: ``^(a+)+$`` cannot stall a run), and ``format`` is enforced
    by ``formats`` (name -> check; unknown formats are annotations, as the spec says).
    ``root`` names the data in every message (``payload.a.b: ...``, ``payload: ...``).
    """
    validator = _instance_validator(schema, formats)
    out = []
    for err in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path))):
        where = dotted(tuple(err.absolute_path))
        if root is not None:
            where = f"{root}{'' if not where or where.startswith('[') else '.'}{where}"
        out.append(f"{where}: {err.message}" if where else err.message)
    return out


def _instance_validator(schema: dict[str, Any], formats: Mapping[str, Callable[[str], bool]] | None) -> Any:
    import jsonschema

    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    linear = _linear_validators(base)
    checker = jsonschema.FormatChecker(formats={})
    for name, check in (formats or {}).items():
        checker.checks(name)(check)
    return linear(schema, format_checker=checker)


@cache
def _linear_validators(base: Any) -> Any:
    """``base`` with ``pattern`` and ``patternProperties`` on RE2."""
    import jsonschema

    return jsonschema.validators.extend(base, {"pattern": _re2_pattern, "patternProperties": _re2_pattern_properties})


def _re2_search(pattern: str, text: str) -> bool:
    try:
        return compile_linear(pattern).search(text) is not None
    except RegexError:
        return False  # a pattern RE2 refuses matches nothing (goatclaw validate reports it)


def _re2_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not _re2_search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _re2_pattern_properties(validator: Any, pattern_properties: Any, instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        for key, value in instance.items():
            if _re2_search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def check_schema(schema: Any) -> str | None:
    """``None`` if ``schema`` is a valid JSON Schema, else why not."""
    import jsonschema

    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return exc.message
    return None


def schema_problems(doc: Document, errors: Any) -> list[Problem]:
    """Turn jsonschema errors into located, readable problems (one per real mistake)."""
    problems: dict[tuple[str, str], Problem] = {}
    for err in errors:
        for problem in _explain(doc, err):
            problems.setdefault((problem.path, problem.message), problem)
    return sorted(problems.values(), key=Problem.sort_key)


def _explain(doc: Document, err: ValidationError) -> list[Problem]:
    path = tuple(err.absolute_path)
    kind = err.validator
    if kind == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        extras = [k for k in err.instance if k not in allowed]
        return [Problem(doc.locate((*path, k), key=True), dotted((*path, k)),
                        _habit(path, k, err.instance[k]) or f"unknown field '{k}'{_did_you_mean(k, allowed)}")
                for k in extras]
    if kind == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        # at the mapping's key (``a:``), not at its first field, which may be far below
        return [Problem(doc.locate(path, key=True), dotted(path), f"missing required field '{missing}'")]
    if kind == "propertyNames" or "propertyNames" in err.relative_schema_path:
        # jsonschema reports a bad key at its mapping, with the key as the instance
        bad = err.instance
        return [Problem(doc.locate((*path, bad), key=True) if isinstance(bad, str) else doc.locate(path),
                        dotted((*path, bad)) if isinstance(bad, str) else dotted(path),
                        f"invalid name '{bad}': {_short(err)}")]
    if kind in ("oneOf", "anyOf") and err.context:
        return _alternatives(doc, err)
    if kind == "oneOf" and isinstance(err.instance, dict) and _one_required_each(err.validator_value):
        # valid under several branches that each require one field: a rule with two kinds
        kinds = [b["required"][0] for b in err.validator_value if b["required"][0] in err.instance]
        return [Problem(doc.locate(path), dotted(path),
                        f"has {' and '.join(repr(k) for k in kinds)}; use exactly one of them")]
    if kind == "pattern" and err.validator_value == _DURATION_PATTERN:
        return [Problem(doc.locate(path), dotted(path),
                        f"{_json(err.instance)} is not a duration (use 500ms, 10s, 2m, 1h or a number of seconds)")]
    return [Problem(doc.locate(path), dotted(path), err.message)]


_TASK_GROUPS = ("tasks", "on_failure", "finally")


def _habit(path: tuple[Any, ...], key: str, value: Any) -> str | None:
    """An unknown field that is a GitHub Actions habit, said the goatclaw way (``run:`` on a task)."""
    if key == "run" and len(path) == 2 and path[0] in _TASK_GROUPS:
        if isinstance(value, list):
            shown = f"with: {{run: {_json(value)}}}"
        else:
            shown = f"with: {{script: {_json(value) if isinstance(value, str) else '…'}}}"
        return f"unknown field 'run': a command goes under `with:` of a `uses: shell` task: `{shown}`"
    return None


def _one_required_each(branches: Any) -> bool:
    return isinstance(branches, list) and all(
        isinstance(b, dict) and list(b) == ["required"] and len(b["required"]) == 1 for b in branches)


def _short(err: ValidationError) -> str:
    import jsonschema

    if err.context:
        return jsonschema.exceptions.best_match(err.context).message
    return err.message


def _alternatives(doc: Document, err: ValidationError) -> list[Problem]:
    """A oneOf/anyOf failure, said plainly: the types wanted, or the closest branch's errors."""
    path = tuple(err.absolute_path)
    here = [e for e in err.context if not e.relative_path]
    if here and all(e.validator in ("type", "const") for e in here) and len(here) == len(err.context):
        wanted: list[str] = []
        for e in here:
            if e.validator == "type":
                types = e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]
                wanted += [t for t in types if t not in wanted]
        wanted.sort(key=lambda t: _TYPE_ORDER.index(t) if t in _TYPE_ORDER else len(_TYPE_ORDER))
        shown = [repr(t) for t in wanted] + [_json(e.validator_value) for e in here if e.validator == "const"]
        message = f"{_json(err.instance)} is not of type {' or '.join(shown)}"
        return [Problem(doc.locate(path), dotted(path), message)]
    deeper = [e for e in err.context if e.relative_path or e.validator in ("additionalProperties", "required")]
    if not deeper:
        import jsonschema

        # the branch of the value's own type says most (`retry: 0` is below 1, rather than "not false")
        informative = [e for e in err.context if e.validator not in ("type", "const")] or [
            e for e in err.context if e.validator != "type"] or list(err.context)
        return _explain(doc, jsonschema.exceptions.best_match(informative))
    # explain the branch that got furthest (the one whose errors are deepest), all of its errors
    branch = max({e.schema_path[0] for e in deeper},
                 key=lambda b: max(len(e.relative_path) for e in deeper if e.schema_path[0] == b))
    problems: list[Problem] = []
    for e in deeper:
        if e.schema_path[0] == branch:
            problems += _explain(doc, e)
    return problems


def _json(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _did_you_mean(name: str, options: set[str]) -> str:
    import difflib  # only for a mistake

    close = difflib.get_close_matches(name, sorted(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
