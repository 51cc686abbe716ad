"""The server room: goatclaw's faces for other programs, over the public API only.

Today it holds the MCP server (:mod:`goatclaw.server.mcp`, ``goatclaw mcp serve``); the
HTTP API, its auth and the dashboard come here too (DESIGN.md, rooms). Nothing in this room
reaches into the engine: it calls :mod:`goatclaw` and :mod:`goatclaw.api` like a user would.
"""
