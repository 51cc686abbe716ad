"""``goatclaw ui``: open the web dashboard on 127.0.0.1 (the server room's :mod:`goatclaw.server.ui`).

Registered on the app by importing this module. Prints the URL, with a one-time token that
the first visit trades for a session cookie, and serves until Ctrl-C. Exit codes: 0 after
Ctrl-C, 1 when the store is missing or the port is taken, 2 for an invalid command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from goatclaw.cli.app import StoreOption, _err, _store_file, app, handles_errors

__all__ = ["ui"]


@app.command("ui")
@handles_errors
def ui(
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="The port on 127.0.0.1 (0: any free one).")] = 8751,
    store: StoreOption = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="A session that sees everything and changes "
                                            "nothing (no buttons; POSTs refused).")] = False,
) -> None:
    """Serve the web dashboard on 127.0.0.1 and print its URL (with a one-time token)."""
    from goatclaw.errors import GoatclawError

    path: Path = _store_file(store)
    try:
        from goatclaw.server.ui.local import serve
    except ImportError as exc:
        raise GoatclawError(f"the dashboard needs starlette and uvicorn ({exc.name} is missing): "
                            "pip install 'goatclaw-pipelines[ui]'") from None

    def say(url: str) -> None:
        print(f"goatclaw dashboard on {url}", flush=True)
        _err().print("(the link works once; Ctrl-C stops the server)", markup=False, highlight=False)

    try:
        serve(path, port=port, read_only=read_only, say=say)
    except OSError as exc:
        raise GoatclawError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        return
