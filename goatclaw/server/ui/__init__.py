"""The web dashboard: server-rendered pages over the store, a ``.json`` twin of each, live runs over SSE.

``ui_routes(store, auth=...)`` returns the Starlette routes; ``goatclaw ui`` serves them alone
on 127.0.0.1 (a one-time token in the printed URL), ``goatclaw serve`` mounts them beside its
API. The pages read the store through its read methods and the public API, never the
engine; the browser gets HTML, a small script of ours and two vendored libraries (htmx and
dagre, pinned, with their licenses, under ``static/vendor``): no CDN, no build step.
See docs/ui.md.
"""

from __future__ import annotations

from goatclaw.server.ui.access import Auth, LocalAuth, Principal
from goatclaw.server.ui.actions import Actions, LocalActions
from goatclaw.server.ui.pages import ui_routes

__all__ = ["Actions", "Auth", "LocalActions", "LocalAuth", "Principal", "ui_routes"]
