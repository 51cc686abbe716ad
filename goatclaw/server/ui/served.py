"""The dashboard inside ``goatclaw serve``: the server's principals, its login, its CSRF token.

``goatclaw serve`` authenticates every request in its gate (API tokens, the session cookie
of a user who logged in with a password and a TOTP code) and puts the principal in the
request's scope; :class:`ServeAuth` reads it from there, so the pages see exactly what the
API sees, scopes and projects included. Signing in is the server's ``POST /auth/login``
(rate limits, threat score and audit row included): the dashboard's ``/login`` page is a
form that ``ui.js`` sends there as JSON. A form's CSRF token is the session's, the one the
gate checks as ``X-CSRF-Token``.

Mount it with :func:`dashboard_mount`, one store (the home project's)::

    app = build_app(folders, extra_routes=[dashboard_mount(home_store, project="demo")])
"""

from __future__ import annotations

import os
from typing import Any

from starlette.routing import Mount

from goatclaw.server.auth import principal_of
from goatclaw.server.ui.access import Principal
from goatclaw.server.ui.actions import Actions
from goatclaw.server.ui.pages import ui_routes

__all__ = ["ServeAuth", "dashboard_mount"]


class ServeAuth:
    """The dashboard's :class:`~goatclaw.server.ui.access.Auth` over the server's gate.

    ``project`` is the served project the pages show: a principal limited to other projects
    sees nothing (403), as in the API.
    """

    login_endpoint = "/auth/login"

    def __init__(self, project: str | None = None) -> None:
        self.project = project

    def principal(self, request: Any) -> Principal | None:
        """The gate's principal as the pages' (its label, its scopes); ``None`` for nobody."""
        who = principal_of(request)
        if who.kind == "anonymous":
            return None
        if not who.in_project(self.project):
            return Principal(who.label, frozenset())
        return Principal(who.label, frozenset(who.scopes))

    def csrf_token(self, request: Any) -> str:
        """The session's CSRF token (a bearer token has none: its forms are refused)."""
        return principal_of(request).csrf or ""

    def login_url(self, request: Any) -> str | None:
        """The dashboard's login page, under the mount."""
        return str(request.scope.get("root_path") or "").rstrip("/") + "/login"


def dashboard_mount(store: str | os.PathLike[str], *, project: str | None = None, path: str = "/ui",
                    actions: Actions | None = None) -> Mount:
    """The dashboard's routes over ``store`` at ``path``, signed in through the server."""
    return Mount(path, routes=ui_routes(store, auth=ServeAuth(project), actions=actions))
