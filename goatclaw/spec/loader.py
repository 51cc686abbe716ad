"""YAML → plain data with the line and column of every node.

The loader reads libyaml's event stream and builds the tree itself, without recursion,
so that it can refuse hostile or mistaken input with a located error:

* duplicate keys (PyYAML silently keeps the last one),
* any tag outside the standard JSON-like set (``!!python/object``, ``!!binary``, ``!foo``),
* alias bombs (aliases whose expansion would add more than ``max_alias_nodes`` nodes),
* files over ``max_bytes`` and nesting over ``max_depth``,
* non-finite numbers, which JSON cannot hold, and integers over 4,300 digits, which Python
  cannot turn back into text.

Scalars follow the YAML 1.2 core schema, so ``no``, ``on`` and ``yes`` stay strings and
``2024-01-01`` stays a string; only ``true``/``false`` are booleans. Mapping keys are
always strings (the key's source text). Merge keys (``<<: *defaults``) are supported.
"""

from __future__ import annotations

import gc
import math
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml

from goatclaw.errors import Location, Problem, SpecError
from goatclaw.userfile import FileTooLarge, read_bytes

__all__ = ["Document", "Limits", "dotted", "gc_frozen", "gc_paused", "load_file", "load_text"]

# libyaml's parser is several times faster; fall back to the pure-Python one where missing.
# Only its event stream is used: no constructor ever runs, so no tag can build an object.
_Parser = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Path_ = tuple[str | int, ...]

_STD = "tag:yaml.org,2002:"
_ALLOWED_TAGS = {f"{_STD}{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")} | {"!"}
_COLLECTION_TAGS = {f"{_STD}seq", f"{_STD}map"}
_NODE_NAMES = {"map": "mapping", "seq": "sequence", "scalar": "scalar"}
_TAG_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (float,), "bool": (bool,), "null": (type(None),)}
_NULL = {"", "~", "null", "Null", "NULL"}
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}
_INT = re.compile(r"[-+]?[0-9]+\Z")
_INT_OTHER = re.compile(r"0o[0-7]+\Z|0x[0-9a-fA-F]+\Z")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_NONFINITE = re.compile(r"[-+]?\.(inf|Inf|INF)\Z|\.(nan|NaN|NAN)\Z")
_MAYBE_SPECIAL = frozenset("-+.0123456789~nNtTfF")
#: The most digits an integer may have: Python refuses to convert longer ones to or from text
#: (``sys.get_int_max_str_digits()``), so a run could not store, print or template them.
MAX_INT_DIGITS = 4300
_INT_LIMIT = 10**MAX_INT_DIGITS


@dataclass(frozen=True)
class Limits:
    """Bounds that keep a hostile file from costing unbounded time or memory."""

    max_bytes: int = 16 * 1024 * 1024
    max_depth: int = 64
    max_alias_nodes: int = 100_000


@dataclass
class Document:
    """A loaded YAML document: its data, and where each node came from.

    ``locations`` maps a path (a tuple of keys and indexes from the root) to the
    (line, column) of that node's value; ``key_locations`` maps it to the position of
    its key in the parent mapping. Both are 1-based.
    """

    file: str
    data: Any
    locations: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_locations: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    text: str = ""

    def locate(self, path: Path_, *, key: bool = False) -> Location:
        """The location of ``path``, or of its nearest located ancestor."""
        path = tuple(path)
        while True:
            pos = (self.key_locations.get(path) if key else None) or self.locations.get(path)
            if pos is not None or not path:
                line, col = pos or (1, 1)
                return Location(self.file, line, col)
            path = path[:-1]


def load_file(path: str | os.PathLike[str], *, limits: Limits | None = None) -> Document:
    """Read and load a YAML file, refusing it with a located :class:`SpecError` if bad."""
    limits = limits or Limits()
    name = str(path)
    try:
        data = read_bytes(path, limit=limits.max_bytes)  # regular files only, bounded whatever stat() says
    except FileTooLarge as exc:
        size = f"{exc.size:,} bytes" if exc.size is not None else "larger than that"
        raise SpecError([Problem(Location(name, 1, 1), "",
                                 f"file is {size}, over the limit of {limits.max_bytes:,}")]) from None
    except OSError as exc:
        raise SpecError([Problem(None, "", f"{name}: cannot read: {exc.strerror or exc}")]) from None
    try:
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text() did
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(Location(name, 1, 1), "", f"not UTF-8 text: {exc.reason}")]) from None
    return load_text(text, file=name, limits=limits)


def load_text(text: str, *, file: str = "<string>", limits: Limits | None = None) -> Document:
    """Load YAML text; see the module docstring for what is refused."""
    limits = limits or Limits()
    if len(text.encode("utf-8", "surrogatepass")) > limits.max_bytes:
        raise SpecError([Problem(Location(file, 1, 1), "", f"text is over the limit of {limits.max_bytes:,} bytes")])
    builder = _Builder(file, limits)
    with gc_paused():
        try:
            parser = _Parser(text)
            try:
                builder.consume(parser)
            finally:
                parser.dispose()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
            what = " ".join(x for x in (exc.context, exc.problem) if x) or "invalid YAML"
            raise SpecError([Problem(loc, "", f"YAML syntax error: {what}")]) from None
        except yaml.YAMLError as exc:
            raise SpecError([Problem(Location(file, 1, 1), "", f"YAML error: {exc}")]) from None
    return Document(file, builder.root, builder.locations, builder.key_locations, builder.problems, text)


def dump_yaml(data: Any) -> str:
    """``data`` (plain JSON-like values) as block-style YAML text, keys in their order (``goatclaw run``'s plans).

    Safe dumping quotes what YAML 1.1 would read back as something else (``no``, ``on``, ``1e3``).
    """
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC (nested use is fine): large files load about 3x faster without it.

    The outermost block ends by freezing the heap (``gc.freeze``) before collection is on
    again: otherwise the first collection would scan every object the block built (0.8 s
    for a 100k-task check) and later ones rescan those that live on. Frozen objects are
    still freed by reference counting; only reference cycles among them wait for
    :func:`gc_frozen`'s outermost exit (the end of a run), which unfreezes the heap.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.freeze()
            gc.enable()


_frozen_lock = threading.Lock()
_frozen_depth = 0


@contextmanager
def gc_frozen() -> Iterator[None]:
    """Keep the heap as it is now out of the cyclic GC's scans for the block (a run).

    Enters with ``gc.freeze()`` (what the check and the plan built is never scanned during
    the run); the outermost exit of overlapping blocks (runs in threads) calls
    ``gc.unfreeze()``, so that what was frozen is collectable again afterwards.
    """
    global _frozen_depth
    with _frozen_lock:
        _frozen_depth += 1
        gc.freeze()
    try:
        yield
    finally:
        with _frozen_lock:
            _frozen_depth -= 1
            if _frozen_depth == 0:
                gc.unfreeze()


class _Frame:
    """A mapping or sequence under construction."""

    __slots__ = ("anchor", "container", "is_map", "key", "merge_next", "merges", "path", "weight")

    def __init__(self, container: dict[str, Any] | list[Any], path: Path_, anchor: str | None) -> None:
        self.container = container
        self.is_map = isinstance(container, dict)
        self.path = path
        self.anchor = anchor
        self.key: str | None = None  # for mappings: the key waiting for its value
        self.merge_next = False  # the waiting key is a plain '<<' merge key
        self.merges: list[dict[str, Any]] = []
        self.weight = 1  # nodes in the expanded form, for the alias-bomb guard


class _Builder:
    """Turns a YAML event stream into plain data plus location tables."""

    def __init__(self, file: str, limits: Limits) -> None:
        self.file = file
        self.limits = limits
        self.root: Any = None
        self.locations: dict[Path_, tuple[int, int]] = {}
        self.key_locations: dict[Path_, tuple[int, int]] = {}
        self.problems: list[Problem] = []
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.alias_nodes = 0
        self.documents = 0

    def fail(self, mark: Any, message: str, path: Path_ = ()) -> SpecError:
        return SpecError([Problem(self._loc(mark), dotted(path), message)])

    def _loc(self, mark: Any) -> Location:
        return Location(self.file, mark.line + 1, mark.column + 1)

    def consume(self, parser: Any) -> None:
        """Build the tree from ``parser``'s events; the scalar path is inlined for speed."""
        stack: list[_Frame] = []
        locations = self.locations
        key_locations = self.key_locations
        scalar_event, alias_event = yaml.ScalarEvent, yaml.AliasEvent
        start_events = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
        end_events = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
        get_event, check_event = parser.get_event, parser.check_event
        while check_event():
            ev = get_event()
            kind = type(ev)
            if kind is scalar_event:
                top = stack[-1] if stack else None
                if top is not None and top.is_map and top.key is None:
                    if ev.tag is not None:
                        self._check_tag(ev, stack)
                    key = ev.value
                    if key == "<<" or key in top.container:  # merges and duplicates: the careful path
                        self._key(top, key, ev)
                    else:
                        mark = ev.start_mark
                        key_locations[(*top.path, key)] = (mark.line + 1, mark.column + 1)
                        top.key = key
                    if ev.anchor:
                        self.anchors[ev.anchor] = (ev.value, 1)
                    continue
                value = ev.value
                if ev.tag is not None:
                    value = self._tagged(ev, stack)
                elif not ev.style and (not value or value[0] in _MAYBE_SPECIAL):
                    value = self._resolve(value, ev, stack)
                if ev.anchor:
                    self.anchors[ev.anchor] = (value, 1)
                if top is None:
                    self.root = value
                    locations[()] = (ev.start_mark.line + 1, ev.start_mark.column + 1)
                    continue
                mark = ev.start_mark
                top.weight += 1
                if top.is_map:
                    key = top.key
                    top.key = None
                    if top.merge_next:
                        top.merge_next = False
                        self._collect_merge(top, value, ev)
                        continue
                    locations[(*top.path, key)] = (mark.line + 1, mark.column + 1)
                    top.container[key] = value  # type: ignore[index]
                else:
                    locations[(*top.path, len(top.container))] = (mark.line + 1, mark.column + 1)
                    top.container.append(value)  # type: ignore[union-attr]
            elif kind in start_events:
                self._check_tag(ev, stack, "map" if kind is yaml.MappingStartEvent else "seq")
                if len(stack) >= self.limits.max_depth:
                    raise self.fail(ev.start_mark, f"nesting is deeper than {self.limits.max_depth} levels")
                if stack and stack[-1].is_map and stack[-1].key is None:
                    raise self.fail(ev.start_mark, "a mapping key must be a plain value, not a collection",
                                    stack[-1].path)
                path = self._child_path(stack)
                locations[path] = (ev.start_mark.line + 1, ev.start_mark.column + 1)
                stack.append(_Frame({} if kind is yaml.MappingStartEvent else [], path, ev.anchor))
            elif kind in end_events:
                frame = stack.pop()
                if frame.merges:
                    self._apply_merges(frame)
                if frame.anchor:
                    self.anchors[frame.anchor] = (frame.container, frame.weight)
                self._attach(stack, frame.container, ev, frame.weight)
            elif kind is alias_event:
                self._alias(stack, ev)
            elif kind is yaml.DocumentStartEvent:
                self.documents += 1
                if self.documents > 1:
                    raise self.fail(ev.start_mark, "a pipeline file holds one YAML document, found a second")

    # -- values ---------------------------------------------------------------------

    def _child_path(self, stack: list[_Frame]) -> Path_:
        if not stack:
            return ()
        top = stack[-1]
        if isinstance(top.container, list):
            return (*top.path, len(top.container))
        return (*top.path, top.key) if top.key is not None else top.path

    def _attach(self, stack: list[_Frame], value: Any, ev: yaml.Event, weight: int) -> None:
        if not stack:
            self.root = value
            return
        top = stack[-1]
        top.weight += weight
        if isinstance(top.container, list):
            top.container.append(value)
            return
        key = top.key
        top.key = None
        if top.merge_next:
            top.merge_next = False
            self._collect_merge(top, value, ev)
            return
        top.container[key] = value  # type: ignore[index]

    def _key(self, frame: _Frame, value: Any, ev: yaml.Event) -> None:
        if isinstance(value, (dict, list)):
            raise self.fail(ev.start_mark, "a mapping key must be a plain value, not a collection", frame.path)
        key = ev.value if isinstance(ev, yaml.ScalarEvent) else str(value)
        plain_merge = key == "<<" and isinstance(ev, yaml.ScalarEvent) and ev.style in (None, "") and not ev.tag
        mark = (ev.start_mark.line + 1, ev.start_mark.column + 1)
        path = (*frame.path, key)
        container = frame.container
        assert isinstance(container, dict)
        if key in container and not plain_merge:
            first = self.key_locations.get(path)
            where = f" (first defined at line {first[0]}, column {first[1]})" if first else ""
            self.problems.append(Problem(self._loc(ev.start_mark), dotted(path), f"duplicate key '{key}'{where}"))
        else:
            self.key_locations[path] = mark
        frame.key = key
        frame.merge_next = plain_merge

    def _tagged(self, ev: yaml.ScalarEvent, stack: list[_Frame]) -> Any:
        """A scalar with an explicit tag: only the standard JSON-like tags, and the value must fit it."""
        self._check_tag(ev, stack)
        if ev.tag in (f"{_STD}str", "!"):
            return ev.value
        value = self._resolve(ev.value, ev, stack)
        name = ev.tag.removeprefix(_STD)
        if name == "float" and type(value) is int:
            return float(value)
        if type(value) not in _TAG_TYPES.get(name, ()):
            raise self.fail(ev.start_mark, f"'{ev.value}' is not a valid !!{name}", self._child_path(stack))
        return value

    def _resolve(self, value: str, ev: yaml.ScalarEvent, stack: list[_Frame]) -> Any:
        if value and value[0] not in _MAYBE_SPECIAL:
            return value
        if value in _NULL:
            return None
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        first = value[0]
        if first.isalpha():  # n, t, f …: no number starts with a letter
            return value
        if first.isdigit() and value.isascii() and value.isdigit():  # the common integer, without a regex
            return self._integer(value, 10, ev, stack)
        if _INT.match(value):
            return self._integer(value, 10, ev, stack)
        if _INT_OTHER.match(value):
            return self._integer(value, 0, ev, stack)
        if _FLOAT.match(value):
            number = float(value)
            if not math.isfinite(number):  # 1e400 overflows to inf
                raise self.fail(ev.start_mark, f"'{value}' is too large; JSON cannot hold it", self._child_path(stack))
            return number
        if _NONFINITE.match(value):
            raise self.fail(ev.start_mark, f"'{value}' is not a finite number; JSON cannot hold it",
                            self._child_path(stack))
        return value

    def _integer(self, value: str, base: int, ev: yaml.ScalarEvent, stack: list[_Frame]) -> int:
        """``int(value, base)``, refusing what Python could not convert back to text (over 4,300 digits)."""
        # decimal text is measured before int() would refuse it; 0x… and 0o… forms after conversion
        number = int(value, base) if base != 10 or len(value.lstrip("+-")) <= MAX_INT_DIGITS else _INT_LIMIT
        if abs(number) >= _INT_LIMIT:
            raise self.fail(ev.start_mark, f"integer is too large: more than {MAX_INT_DIGITS:,} digits",
                            self._child_path(stack))
        return number

    def _check_tag(self, ev: yaml.Event, stack: list[_Frame], node: str = "scalar") -> None:
        tag = getattr(ev, "tag", None)
        if tag and tag not in _ALLOWED_TAGS:
            raise self.fail(ev.start_mark, f"tag '{tag}' is not allowed; only plain YAML values are",
                            self._child_path(stack))
        fits = tag == f"{_STD}{node}" if node != "scalar" else tag not in _COLLECTION_TAGS
        if tag and tag != "!" and not fits:
            raise self.fail(ev.start_mark, f"tag '{tag}' does not fit a {_NODE_NAMES[node]}",
                            self._child_path(stack))

    # -- aliases and merges ------------------------------------------------------------

    def _alias(self, stack: list[_Frame], ev: yaml.AliasEvent) -> None:
        if ev.anchor not in self.anchors:
            raise self.fail(ev.start_mark, f"alias '*{ev.anchor}' names no anchor defined before it",
                            self._child_path(stack))
        value, weight = self.anchors[ev.anchor]
        self.alias_nodes += weight
        if self.alias_nodes > self.limits.max_alias_nodes:
            raise self.fail(ev.start_mark, f"aliases expand to more than {self.limits.max_alias_nodes:,} nodes "
                                           "(an alias bomb?)", self._child_path(stack))
        if stack and isinstance(stack[-1].container, dict) and stack[-1].key is None:
            self._key(stack[-1], value, ev)
            return
        path = self._child_path(stack)
        self.locations[path] = (ev.start_mark.line + 1, ev.start_mark.column + 1)
        self._attach(stack, value, ev, weight)

    def _collect_merge(self, frame: _Frame, value: Any, ev: yaml.Event) -> None:
        sources = value if isinstance(value, list) else [value]
        if not all(isinstance(s, dict) for s in sources):
            raise self.fail(ev.start_mark, "'<<' merges a mapping or a list of mappings", frame.path)
        frame.merges.extend(sources)

    def _apply_merges(self, frame: _Frame) -> None:
        container = frame.container
        assert isinstance(container, dict)
        for source in frame.merges:
            for k, v in source.items():
                container.setdefault(k, v)


def dotted(path: Path_) -> str:
    """Render a path the way messages show it: ``("tasks", "a", "needs", 0)`` → ``tasks.a.needs[0]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
