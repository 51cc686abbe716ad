"""``goatclaw mcp serve``: this project's pipelines, runs and memory as tools of an MCP server.

Registered on the ``mcp`` group (:mod:`goatclaw.cli.mcp_group`) by importing this module; the
server itself is :mod:`goatclaw.server.mcp` (the ``mcp`` extra). Over stdio by default (what
Claude Desktop, Cursor or VS Code start), or streamable HTTP with ``--http HOST:PORT`` at
``/mcp``. Exit codes: 0 the client went away, 2 an invalid command line or exposed pipeline,
1 the ``mcp`` extra is missing.
"""


import ipaddress
import os
from pathlib import Path
from typing import Annotated

import typer

from goatclaw.cli.app import _err, handles_errors
from goatclaw.cli.mcp_group import mcp_app

__all__ = ["mcp_serve", "parse_http"]


def parse_http(value: str | None) -> str | None:
    """``--http``: ``HOST:PORT``, ``:PORT`` or ``PORT`` (the host defaults to 127.0.0.1)."""
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise typer.BadParameter(f"expected HOST:PORT with a port from 1 to 65535, got '{value}'")
    return f"{host}:{int(port)}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@mcp_app.command("serve")
@handles_errors
def mcp_serve(
    http: Annotated[str | None, typer.Option(
        "--http", metavar="HOST:PORT", callback=parse_http,
        help="Serve streamable HTTP at http://HOST:PORT/mcp instead of stdio (HOST defaults to 127.0.0.1).")] = None,
    project: Annotated[Path | None, typer.Option(
        "--project", metavar="DIR", exists=True, file_okay=False, dir_okay=True,
        help="The project folder to serve (default: the current folder); no path outside it is read or run.")
    ] = None,
    expose: Annotated[list[Path] | None, typer.Option(
        "--expose", metavar="FILE", help="Also offer this pipeline as a tool of its own, run_<name>, its vars as "
        "the parameters. Repeatable.")] = None,
    store: Annotated[Path | None, typer.Option("--store", help="The store file (default from goatclaw.yaml).")
                     ] = None,
) -> None:
    """Serve the project to MCP clients: list, validate, plan and apply its pipelines, read runs and memory."""
    from goatclaw.server.mcp import build_server, serve

    root = (project or Path.cwd()).resolve()
    os.chdir(root)  # relative paths (the project file's, each task's) start where a shell in the project would
    server = build_server(root, store=store.resolve() if store is not None else None,
                          expose=[str(f) for f in expose or []])
    if http is None:
        serve(server)
        return
    host, _, port = http.rpartition(":")
    if not _loopback(host):
        _err().print(f"warning: serving on {host}, not only this machine: any client that reaches it can run "
                     "this project's pipelines (there is no authentication)", soft_wrap=True, markup=False)
    _err().print(f"goatclaw mcp: serving {root} at http://{host}:{port}/mcp", soft_wrap=True, markup=False,
                 highlight=False)
    serve(server, http=(host, int(port)))
