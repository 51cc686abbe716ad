"""Serving the app with uvicorn, and the SIGTERM drain.

On SIGTERM (or SIGINT) the server stops listening at once, starts no new run (a trigger
would get 503, :func:`/health` says ``stopping``), gives the runs in flight the grace period
(``server.grace``, ``--grace``) to finish, then cancels the rest, which the engine records
``cancelled``: ``POST …/runs/{id}/resume`` (or ``goatclaw apply --resume``) takes them up
later and what finished stays finished. Only then are the open connections (event streams,
which end when their run ends) closed and the process exits. A second signal cuts the grace
period short.
"""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

__all__ = ["DrainingServer", "serve"]

log = logging.getLogger("goatclaw.server")


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which drains goatclaw's run queue before it closes the connections."""

    def __init__(self, config: uvicorn.Config, goatclaw_server: Any) -> None:
        super().__init__(config)
        self.goatclaw = goatclaw_server

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        """Stop listening, drain the runs (grace, then cancel), then uvicorn's own shutdown."""
        for server in getattr(self, "servers", []):
            server.close()
        queue = self.goatclaw.queue
        grace = self.goatclaw.settings.grace
        log.warning("goatclaw serve: stopping; %d runs in flight get %.0fs to finish, %d queued are not started",
                    queue.running, grace, queue.queued)
        done = await queue.drain(grace, force=lambda: self.force_exit)
        if done["cancelled"] or done["not_started"]:
            log.warning("goatclaw serve: %d runs cancelled, %d never started: both can be resumed",
                        done["cancelled"], done["not_started"])
        self.goatclaw.stopped = True
        await super().shutdown(sockets)


def serve(app: Any, *, host: str = "127.0.0.1", port: int = 8750, log_level: str = "info",
          proxy_headers: bool = False) -> None:
    """Serve ``app`` (from :func:`goatclaw.server.app.build_app`) until SIGTERM/SIGINT, then drain."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            proxy_headers=proxy_headers, timeout_graceful_shutdown=5, server_header=False)
    DrainingServer(config, app.state.goatclaw).run()
