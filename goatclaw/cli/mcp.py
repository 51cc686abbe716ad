"""``goatclaw mcp tools SERVER``: what an MCP server of goatclaw.yaml offers, with each tool's schema.

Registered on the app by importing this module (``goatclaw.cli.app`` does). The server is
started for the question (over stdio or streamable HTTP, as ``mcp_servers:`` says) and
stopped after it; the tools come from :func:`goatclaw.api.mcp_tools`.
"""


import json
from typing import Annotated

import typer

from goatclaw.cli.app import JsonOption, _err, _out, handles_errors
from goatclaw.cli.lines import escape
from goatclaw.cli.mcp_group import mcp_app

__all__ = ["mcp_app"]


@mcp_app.command("tools")
@handles_errors
def mcp_tools(
    server: Annotated[str, typer.Argument(help="A server's name in goatclaw.yaml's mcp_servers:.")],
    as_json: JsonOption = False,
) -> None:
    """List the tools an MCP server offers (its tools/list): name, description and input schema."""
    from goatclaw.api import load_project_for
    from goatclaw.api import mcp_tools as listed
    from goatclaw.errors import TaskError

    project = load_project_for(None)
    if server not in project.mcp_servers:
        known = ", ".join(sorted(project.mcp_servers)) or "none"
        where = project.file or "no goatclaw.yaml found"
        _err().print(f"[red]error:[/] no MCP server '{escape(server)}' in mcp_servers: of {escape(str(where))} "
                     f"(servers: {escape(known)})", markup=True, soft_wrap=True)
        raise typer.Exit(2)
    import asyncio

    try:
        tools = asyncio.run(listed(server, project=project))
    except TaskError as exc:
        _err().print(f"[red]error:[/] {escape(exc.message)}", markup=True, soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        _out().print_json(json.dumps(tools))
        return
    console = _out()
    if not tools:
        console.print(f"{escape(server)} lists no tools")
        return
    for tool in tools:
        schema = tool["inputSchema"]
        props = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        params = ", ".join(f"{name}{'' if name in required else '?'}: {spec.get('type', 'any')}"
                           for name, spec in props.items() if isinstance(spec, dict))
        console.print(f"[bold]{escape(tool['name'])}[/]({escape(params)})", markup=True, soft_wrap=True)
        if tool["description"]:
            console.print("  " + escape(tool["description"].strip().splitlines()[0]), markup=True, soft_wrap=True)
