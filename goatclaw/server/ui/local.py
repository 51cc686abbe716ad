"""``goatclaw ui``: the dashboard alone, on 127.0.0.1, for one person at this machine.

:func:`local_app` builds the Starlette app over one store with :class:`LocalAuth` (a one-time
token in the URL, traded for a session cookie) and :class:`LocalActions` (re-runs in this
process); :func:`serve` binds the socket first (so ``--port 0`` picks a free port and the
printed URL is the real one), says the URL, and runs uvicorn until Ctrl-C.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette

from goatclaw.server.ui.access import LocalAuth
from goatclaw.server.ui.pages import ui_routes

__all__ = ["DEFAULT_PORT", "local_app", "serve"]

#: ``goatclaw serve`` takes 8750; the dashboard alone the next one.
DEFAULT_PORT = 8751


def local_app(store: str | os.PathLike[str], auth: LocalAuth) -> Starlette:
    """The dashboard over ``store`` as an app of its own (routes at ``/``)."""
    return Starlette(routes=ui_routes(store, auth=auth))


def serve(store: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          read_only: bool = False, say: Callable[[str], None] = print) -> None:
    """Serve the dashboard until interrupted; ``say`` gets the URL with its one-time token."""
    import uvicorn

    auth = LocalAuth(scopes=frozenset({"read"}) if read_only else frozenset({"admin"}))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    sock.listen(2048)  # listening before the URL is printed: a visit that comes first waits, never refused
    server = uvicorn.Server(uvicorn.Config(local_app(Path(store), auth), log_level="warning", access_log=False))
    say(f"http://{host}:{bound}/runs?token={auth.token}")
    server.run(sockets=[sock])
