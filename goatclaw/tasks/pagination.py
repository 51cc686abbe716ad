"""Following pages of an API for the ``http`` task: ``paginate:``, bounded by pages and items.

One key names how the next page is found, the others bound the harvest::

    paginate: {link: true}                                   # the Link header's rel="next" (GitHub, GitLab)
    paginate: {next_url: links.next}                         # a URL in the body (JMESPath; relative is fine)
    paginate: {cursor: meta.next_cursor, param: cursor}      # a cursor in the body, sent back as ?cursor=
    paginate: {page: page, start: 1}                         # ?page=1, 2, 3 … until a page has no items
    paginate: {offset: offset, start: 0}                     # ?offset=0, then + the items received
    # with any of them:
    items: data            # where a page's items are (JMESPath; default: the body, when it is a list)
    max_pages: 20          # at most this many requests (default 20, at most 10,000)
    max_items: 10000       # stop once this many items are in (default 10,000)

The output is ``{"items": [...], "pages": n, "truncated": bool, "stopped": why, "url": last, "status": last}``;
``stopped`` is ``end`` (no next page), ``max_pages``, ``max_items`` or ``repeat`` (a next page
that was already fetched: a server looping). ``truncated`` is true when pages were left.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from goatclaw.plugin import fail
from goatclaw.tasks.jmes import Expression, compile_expression

__all__ = ["Page", "Pager"]

_STYLES = ("link", "next_url", "cursor", "page", "offset")
_COMMON = ("items", "max_pages", "max_items")
#: The most requests and items one harvest may be told to make and keep.
PAGE_LIMIT = 10_000
ITEM_LIMIT = 1_000_000


@dataclass(frozen=True)
class Page:
    """One page as the pager needs it: the parsed body, its URL, the Link next URL, the status."""

    body: Any
    url: str
    next_link: str | None
    status: int


Fetch = Callable[[str, dict[str, Any]], Awaitable[Page]]


@dataclass(frozen=True)
class Pager:
    """How to find the next page (``style``) and when to stop."""

    style: str
    items: Expression | None
    path: Expression | None  # next_url's or cursor's expression
    param: str | None  # the query parameter of cursor, page, offset
    start: int
    max_pages: int
    max_items: int

    @classmethod
    def parse(cls, spec: Any) -> Pager:
        """``paginate:`` checked; a wrong one fails the task ``invalid_input`` before anything is sent."""
        if not isinstance(spec, Mapping):
            fail(f"paginate must be a mapping such as {{link: true}}, not {spec!r}", error_class="invalid_input")
        styles = [s for s in _STYLES if s in spec]
        if len(styles) != 1:
            fail(f"paginate needs exactly one of {', '.join(_STYLES)}", error_class="invalid_input")
        style = styles[0]
        allowed = {style, *_COMMON} | ({"param"} if style == "cursor" else set()) \
            | ({"start"} if style in ("page", "offset") else set())
        extra = sorted(set(map(str, spec)) - allowed)
        if extra:
            fail(f"paginate with {style} takes no key {', '.join(extra)} (it takes: {', '.join(sorted(allowed))})",
                 error_class="invalid_input")
        items = compile_expression(spec["items"], "paginate.items") if "items" in spec else None
        path, param = _where_next(style, spec)
        start = _count(spec.get("start", 1 if style == "page" else 0), "paginate.start", 0, 10**9)
        return cls(style, items, path, param, start, _count(spec.get("max_pages", 20), "paginate.max_pages", 1,
                                                            PAGE_LIMIT),
                   _count(spec.get("max_items", 10_000), "paginate.max_items", 1, ITEM_LIMIT))

    async def harvest(self, fetch: Fetch, url: str, params: dict[str, Any],
                      select: Expression | None = None) -> dict[str, Any]:
        """Fetch pages from ``url`` until the last one or a bound; the items, each ``select``-ed."""
        items: list[Any] = []
        seen: set[str] = set()
        params = dict(params)
        number = self.start
        if self.style in ("page", "offset"):
            params[str(self.param)] = number
        stopped, page = "end", None
        for count in range(1, self.max_pages + 1):
            page = await fetch(url, params)
            seen.add(_key(url, params))
            got = self._items_of(page)
            room = self.max_items - len(items)
            items += [select.search(i) if select is not None else i for i in got[:room]]
            upcoming = self._next(page, url, params, got, number)
            if len(got) > room or (len(items) >= self.max_items and upcoming is not None):
                stopped = "max_items"
                break
            if upcoming is None:
                break
            url, params, number = upcoming
            if _key(url, params) in seen:
                stopped = "repeat"
                break
            if count == self.max_pages:
                stopped = "max_pages"
        assert page is not None
        return {"items": items, "pages": count, "truncated": stopped in ("max_pages", "max_items"),
                "stopped": stopped, "url": page.url, "status": page.status}

    def _items_of(self, page: Page) -> list[Any]:
        """A page's items: ``items:`` picked from the body, or the body itself when it is a list."""
        found = self.items.search(page.body) if self.items is not None else page.body
        if found is None:
            return []
        if not isinstance(found, list):
            where = f"paginate.items '{self.items.text}'" if self.items is not None else "the body"
            fail(f"{page.url}: {where} is a {type(found).__name__}, not a list of items; set paginate.items "
                 "to where the page's list is", error_class="invalid_output")
        return found

    def _next(self, page: Page, url: str, params: dict[str, Any], got: list[Any],
              number: int) -> tuple[str, dict[str, Any], int] | None:
        """The next request (URL, parameters, page number or offset), or ``None`` after the last page."""
        if self.style == "link":
            return (page.next_link, {}, number) if page.next_link else None
        if self.style == "next_url":
            from urllib.parse import urljoin

            target = self.path.search(page.body) if self.path is not None else None
            return (urljoin(page.url, target), {}, number) if isinstance(target, str) and target else None
        if self.style == "cursor":
            cursor = self.path.search(page.body) if self.path is not None else None
            if cursor is None or cursor == "" or isinstance(cursor, (bool, dict, list)):
                return None
            return url, {**params, str(self.param): cursor}, number
        if not got:
            return None
        step = 1 if self.style == "page" else len(got)
        return url, {**params, str(self.param): number + step}, number + step


def _where_next(style: str, spec: Mapping[str, Any]) -> tuple[Expression | None, str | None]:
    """The expression and/or query parameter that the style uses."""
    value = spec[style]
    if style == "link":
        if value is not True:
            fail("paginate.link must be true (follow the Link header's rel=\"next\")", error_class="invalid_input")
        return None, None
    if style in ("next_url", "cursor"):
        param = spec.get("param", "cursor") if style == "cursor" else None
        if param is not None and (not isinstance(param, str) or not param):
            fail("paginate.param must be the query parameter's name", error_class="invalid_input")
        return compile_expression(value, f"paginate.{style}"), param
    if not isinstance(value, str) or not value:
        fail(f"paginate.{style} must be the query parameter's name, such as {style}", error_class="invalid_input")
    return None, value


def _count(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        fail(f"{where} must be a whole number from {low} to {high:,}, not {value!r}", error_class="invalid_input")
    return value


def _key(url: str, params: Mapping[str, Any]) -> str:
    return url + "?" + "&".join(f"{k}={v}" for k, v in sorted((str(k), str(v)) for k, v in params.items()))
