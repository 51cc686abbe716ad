"""The ``goatclaw mcp`` command group: goatclaw and the Model Context Protocol.

Registered on the app by importing this module; its commands live in modules of their own
that add themselves to :data:`mcp_app` (``mcp serve``: :mod:`goatclaw.cli.mcp_serve`;
``mcp tools``: :mod:`goatclaw.cli.mcp`).
"""

from __future__ import annotations

import typer

from goatclaw.cli.app import app

__all__ = ["mcp_app"]

mcp_app = typer.Typer(help="The Model Context Protocol: the tools of MCP servers in goatclaw.yaml (mcp_servers:), "
                      "and this project served to MCP clients.", no_args_is_help=True)
app.add_typer(mcp_app, name="mcp")
