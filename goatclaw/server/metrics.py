"""``/metrics``: the server's counters in Prometheus' text exposition format (0.0.4), written by hand.

============================================  =========  ==========================================
metric                                        type       what
============================================  =========  ==========================================
``goatclaw_http_requests_total``              counter    answers by method, route and status
``goatclaw_http_request_duration_seconds``    histogram  time to answer (headers sent)
``goatclaw_http_refused_total``               counter    refused at the gate, by reason
``goatclaw_runs_total``                       counter    runs this server finished, by status
``goatclaw_runs_in_flight``                   gauge      runs running now
``goatclaw_runs_queued``                      gauge      runs waiting for a slot
``goatclaw_runs_refused_total``               counter    triggers refused: queue full, stopping
``goatclaw_clients_blocked``                  gauge      clients blocked by their threat score now
``goatclaw_client_blocks_total``              counter    blocks that began
``goatclaw_uptime_seconds``                   gauge      since the app was built
============================================  =========  ==========================================
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["exposition"]


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**pairs: object) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in pairs.items()) + "}"


def exposition(server: Any) -> str:
    """Every metric of the table above, as the text a Prometheus scrape reads."""
    c, q = server.counters, server.queue
    lines = ["# HELP goatclaw_http_requests_total HTTP answers by method, route and status.",
             "# TYPE goatclaw_http_requests_total counter"]
    lines += [f"goatclaw_http_requests_total{_labels(method=m, route=r, status=s)} {n}"
              for (m, r, s), n in sorted(c.requests.items())]
    lines += ["# HELP goatclaw_http_request_duration_seconds Time to answer a request.",
              "# TYPE goatclaw_http_request_duration_seconds histogram"]
    lines += [f'goatclaw_http_request_duration_seconds_bucket{{le="{b}"}} {n}' for b, n in zip(
        c.buckets, c.histogram, strict=True)]
    lines += [f'goatclaw_http_request_duration_seconds_bucket{{le="+Inf"}} {c.seconds_count}',
              f"goatclaw_http_request_duration_seconds_sum {c.seconds_sum:.6f}",
              f"goatclaw_http_request_duration_seconds_count {c.seconds_count}",
              "# HELP goatclaw_http_refused_total Requests refused at the gate, by reason.",
              "# TYPE goatclaw_http_refused_total counter"]
    lines += [f"goatclaw_http_refused_total{_labels(reason=r)} {n}" for r, n in sorted(c.refused.items())]
    lines += ["# HELP goatclaw_runs_total Runs this server finished, by status.", "# TYPE goatclaw_runs_total counter"]
    lines += [f"goatclaw_runs_total{_labels(status=s)} {n}" for s, n in sorted(q.counts.items())]
    lines += ["# HELP goatclaw_runs_in_flight Runs running now.", "# TYPE goatclaw_runs_in_flight gauge",
              f"goatclaw_runs_in_flight {q.running}",
              "# HELP goatclaw_runs_queued Runs waiting for a slot.", "# TYPE goatclaw_runs_queued gauge",
              f"goatclaw_runs_queued {q.queued}",
              "# HELP goatclaw_runs_refused_total Triggers refused, by reason.",
              "# TYPE goatclaw_runs_refused_total counter"]
    lines += [f"goatclaw_runs_refused_total{_labels(reason=r)} {n}" for r, n in sorted(q.refused.items())]
    lines += ["# HELP goatclaw_clients_blocked Clients blocked by their threat score now.",
              "# TYPE goatclaw_clients_blocked gauge", f"goatclaw_clients_blocked {server.threats.blocked_now()}",
              "# HELP goatclaw_client_blocks_total Blocks that began.", "# TYPE goatclaw_client_blocks_total counter",
              f"goatclaw_client_blocks_total {server.threats.blocks}",
              "# HELP goatclaw_uptime_seconds Seconds since the app was built.",
              "# TYPE goatclaw_uptime_seconds gauge", f"goatclaw_uptime_seconds {time.time() - server.started_at:.3f}"]
    return "\n".join(lines) + "\n"
