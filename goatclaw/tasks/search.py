"""Search providers of the ``research`` task: a question → result URLs, over the ``http`` task's path.

A provider is anything with an ``async search(ctx, query, limit) -> list[SearchHit]``
(:class:`SearchProvider`); :data:`PROVIDERS` maps a ``search: {provider: NAME}`` to a factory
taking the rest of the mapping. Shipped:

* ``searxng``: a self-hosted SearXNG instance's JSON API (``url: http://host:8888``,
  optionally ``categories``, ``engines``, ``language``); the instance must allow ``format=json``.
* ``json``: any hosted JSON search API, described by config: ``url``, ``query_param``,
  ``params``, ``headers`` (which may read secrets), ``method`` (``GET``, or ``POST`` to send the
  query and ``params`` as a JSON body), ``results`` (the dotted path of the result list in the
  answer), ``url_field``, ``title_field``, ``snippet_field``. ``brave`` and ``tavily`` (a POST)
  are presets of it (give ``headers`` with your key: ``X-Subscription-Token`` for Brave,
  ``Authorization: Bearer …`` for Tavily).

A package adds a provider with an entry point in the group ``goatclaw.search`` whose name is the
``provider:`` and whose object is a factory like the shipped ones: it takes the rest of the
``search:`` mapping and returns a :class:`SearchProvider`. A built-in name cannot be replaced.

Every request goes through :func:`goatclaw.tasks.http.http` with the task's context: the
task's ``permissions.network`` must allow the search host (and list it by name when a
header carries a secret), and it is throttled, audited and untrusted like any request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from goatclaw.plugin import TaskContext, fail
from goatclaw.tasks.http import http

__all__ = ["ENTRY_POINT_GROUP", "PROVIDERS", "JsonSearch", "SearchHit", "SearchProvider", "provider_for"]

#: The entry-point group of third-party search providers (a name -> a factory of a provider).
ENTRY_POINT_GROUP = "goatclaw.search"


@dataclass(frozen=True)
class SearchHit:
    """One search result: where it is, its title and the provider's snippet."""

    url: str
    title: str = ""
    snippet: str = ""


class SearchProvider(Protocol):
    """What a search provider implements: the result URLs for ``query``, ``limit`` of them at most."""

    async def search(self, ctx: TaskContext, query: str, limit: int) -> list[SearchHit]:
        """Search for ``query`` with the task's context (its network grant and rate limits apply)."""
        ...


@dataclass(frozen=True)
class JsonSearch:
    """A JSON search API described by config (see the module docstring); SearXNG is one of them."""

    url: str
    query_param: str = "q"
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None
    results: str = "results"
    url_field: str = "url"
    title_field: str = "title"
    snippet_field: str = "content"
    timeout: float = 20
    method: str = "GET"

    async def search(self, ctx: TaskContext, query: str, limit: int) -> list[SearchHit]:
        """The first ``limit`` results the API lists for ``query`` (GET: in the query string; POST: a JSON body)."""
        asked = {**(self.params or {}), self.query_param: query}
        if str(self.method).upper() == "POST":
            answer = await http(ctx, url=self.url, method="POST", json=asked, headers=dict(self.headers or {}),
                                response="json", timeout=self.timeout)
        else:
            answer = await http(ctx, url=self.url, params=asked, headers=dict(self.headers or {}),
                                response="json", timeout=self.timeout)
        listed = _at(answer["body"], self.results)
        if not isinstance(listed, list):
            fail(f"search: {self.url} answered without a list at '{self.results}'", error_class="invalid_output")
        hits = []
        for entry in listed:
            link = _at(entry, self.url_field) if isinstance(entry, Mapping) else None
            if isinstance(link, str) and link.lower().startswith(("http://", "https://")):
                hits.append(SearchHit(link, str(_at(entry, self.title_field) or ""),
                                      str(_at(entry, self.snippet_field) or "")))
        return list({h.url: h for h in hits}.values())[:limit]


def _at(data: Any, path: str) -> Any:
    for part in path.split(".") if path else ():
        data = data.get(part) if isinstance(data, Mapping) else None
    return data


def _searxng(config: Mapping[str, Any]) -> SearchProvider:
    base = str(config.get("url") or "").rstrip("/")
    if not base:
        fail("search: {provider: searxng} needs url: (the instance, e.g. http://127.0.0.1:8888)",
             error_class="invalid_input")
    params = {"format": "json", **{k: config[k] for k in ("categories", "engines", "language") if k in config}}
    return JsonSearch(base if base.endswith("/search") else base + "/search", params=params,
                      headers=config.get("headers"))


def _json(config: Mapping[str, Any]) -> SearchProvider:
    known = {f for f in JsonSearch.__dataclass_fields__}
    extra = sorted(set(config) - known)
    if extra or not isinstance(config.get("url"), str):
        fail("search: {provider: json} needs url: and takes " + ", ".join(sorted(known))
             + (f", not {', '.join(extra)}" if extra else ""), error_class="invalid_input")
    return JsonSearch(**dict(config))


def _preset(**defaults: Any) -> Callable[[Mapping[str, Any]], SearchProvider]:
    return lambda config: _json({**defaults, **config})


#: ``search: {provider: NAME, ...}`` → the provider; the rest of the mapping is its config.
PROVIDERS: dict[str, Callable[[Mapping[str, Any]], SearchProvider]] = {
    "searxng": _searxng,
    "json": _json,
    "brave": _preset(url="https://api.search.brave.com/res/v1/web/search", results="web.results",
                     snippet_field="description"),
    "tavily": _preset(url="https://api.tavily.com/search", method="POST", query_param="query",
                      snippet_field="content"),
}


def provider_for(search: Any) -> SearchProvider:
    """The provider a ``search:`` mapping names (``provider`` defaults to ``searxng``): shipped, or a package's."""
    if not isinstance(search, Mapping):
        fail("search must be a mapping {provider, url, ...}", error_class="invalid_input")
    config = {k: v for k, v in search.items() if k not in ("provider", "results_limit")}
    name = search.get("provider", "searxng")
    factory = PROVIDERS.get(name) if isinstance(name, str) else None
    if factory is None:
        factory = _installed(name)
    provider = factory(config)
    if not callable(getattr(provider, "search", None)):
        fail(f"search: provider '{name}' gave {type(provider).__name__}, which has no search(ctx, query, limit)",
             error_class="invalid_input")
    return provider


def _installed(name: Any) -> Callable[[Mapping[str, Any]], SearchProvider]:
    """The factory an installed package declares for ``name`` in :data:`ENTRY_POINT_GROUP`, or a clear failure."""
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if not isinstance(name, str) or name not in found:
        known = ", ".join(sorted({*PROVIDERS, *found}))
        fail(f"search: unknown provider '{name}' (known: {known})", error_class="invalid_input")
    point = found[name]
    try:
        factory = point.load()
    except Exception as exc:  # a broken third-party package: say which, never crash the run
        fail(f"search: provider '{name}' ({point.value}) failed to load: {type(exc).__name__}: {exc}",
             error_class="invalid_input")
    if not callable(factory):
        fail(f"search: provider '{name}' ({point.value}) is not a factory", error_class="invalid_input")
    return factory  # type: ignore[no-any-return]
