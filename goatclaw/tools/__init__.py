"""Where a model's tools come from: a task plugin's argument schema, a pipeline's vars, or an MCP server's tools.

A ``tools:`` entry of an ``llm`` task (``{uses, with, name, description}``) becomes a
:class:`Tool`: its parameters are the plugin's ``with:`` arguments as a JSON Schema, from
the same source ``goatclaw validate`` checks ``with:`` against (the declared ``schema=``,
else the signature), without the arguments the entry fixes. A :class:`Toolbox` holds the
tools a task may offer and runs the model's calls through the function the engine gives
it, so that every call is an attempt of the task. :mod:`goatclaw.tools.mcp` holds the MCP
client (the SDK's client half): the servers of ``goatclaw.yaml``'s ``mcp_servers:``.
"""

from __future__ import annotations

from goatclaw.tools.pipelines import pipeline_tool, vars_schema
from goatclaw.tools.plugins import (
    MAX_RESULT_CHARS,
    Tool,
    Toolbox,
    mcp_tool,
    parameters_of,
    plugin_tool,
    schema_of_hint,
)

__all__ = ["MAX_RESULT_CHARS", "Tool", "Toolbox", "mcp_tool", "parameters_of", "pipeline_tool", "plugin_tool",
           "schema_of_hint", "vars_schema"]
