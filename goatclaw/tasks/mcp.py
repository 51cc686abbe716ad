"""``mcp``: call one tool of an MCP server, without a model.

::

    fetch_time:
      uses: mcp
      permissions: {mcp: [time]}          # or [time:get_current_time]
      with:
        server: time                      # a name in goatclaw.yaml's mcp_servers:
        tool: get_current_time
        arguments: {timezone: Europe/Paris}

The output is ``{server, tool, text, content, structured}``: the text blocks joined, every
content block as the server sent it, and its structured content (``null`` when it gave
none). A tool that answers with an error fails the task (class ``tool_error``). The output
is untrusted (it comes from outside), like an ``http`` or ``llm`` output; each call is in the
audit chain (``mcp.called``), and the server starts on the run's first use of it.
"""

from __future__ import annotations

from typing import Any

from goatclaw.plugin import TaskContext, fail, task

__all__ = ["mcp"]


@task(cacheable=False, permissions=("mcp",), untrusted_output=True)
async def mcp(ctx: TaskContext, *, server: str, tool: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """Call ``tool`` of the MCP server ``server`` with ``arguments``; its result (text, content, structured)."""
    if not isinstance(server, str) or not server or not isinstance(tool, str) or not tool:
        fail("server and tool must be non-empty names", error_class="invalid_input")
    if arguments is not None and not isinstance(arguments, dict):
        fail("arguments must be a mapping", error_class="invalid_input")
    if ctx.permissions is not None:
        ctx.permissions.check_mcp(server, tool)
    if ctx.mcp is None:
        fail("mcp: needs a local run of the engine (the run owns its MCP servers)", error_class="invalid_input")
    try:
        result = await ctx.mcp.call(server, tool, arguments or {})
    except Exception as exc:
        ctx.audit("mcp.called", server=server, tool=tool, status="failed",
                  error_class=getattr(exc, "error_class", type(exc).__name__))
        raise
    ctx.audit("mcp.called", server=server, tool=tool, status="failed" if result["is_error"] else "succeeded")
    if result["is_error"]:
        fail(f"mcp server '{server}': tool '{tool}' answered with an error: {result['text'][:2000]}",
             error_class="tool_error")
    return {"server": server, "tool": tool, "text": result["text"], "content": result["content"],
            "structured": result["structured"]}
