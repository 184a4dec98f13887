"""Optional Prometheus metrics on a loopback port (`metrics.listen`; off by default).

Counters and the latency histogram live in memory and count since the process started;
gauges (queue depths, quota left) are read from the journal at scrape time, so they are
right even for work done by an earlier process. The text format is Prometheus' 0.0.4,
written by hand: a few dozen lines do not justify a dependency.
"""

from __future__ import annotations

import bisect
import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from watchd import journal as j
from watchd.journal import Journal
from watchd.quota import QuotaGate

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

GaugeValues = dict[str, dict[tuple[tuple[str, str], ...], float]]
Gauges = Callable[[], GaugeValues]


def journal_gauges(journal: Journal, services: Sequence[QuotaGate]) -> GaugeValues:
    """The journal's view: files per state, queue depths, and quota use per service."""
    counts = journal.counts()
    paused = {pause.name for pause in journal.pauses()}
    return {
        # Not `watchd_files`: that is the family of the counter `watchd_files_total`.
        "watchd_files_in_state": {(("state", state),): float(n) for state, n in counts.items()},
        "watchd_queue": {
            (("queue", "uploads"),): float(counts[j.PENDING] + counts[j.UPLOADING] + counts[j.UPLOADED]),
            (("queue", "baidu_push"),): float(journal.outbox_depth("push")),
            (("queue", "baidu_delete"),): float(journal.outbox_depth("delete")),
        },
        "watchd_quota_used_today": {(("service", g.service),): float(g.used_today()) for g in services},
        "watchd_quota_remaining": {
            (("service", g.service),): float(left) for g in services if (left := g.remaining()) is not None
        },
        "watchd_service_paused": {(("service", g.service),): float(g.service in paused) for g in services},
    }


def _number(value: float) -> str:
    """A sample value in full: `:g` would print 1234567 as 1.23457e+06."""
    return str(int(value)) if value.is_integer() else repr(value)


class Metrics:
    """What the engine reports; `render` is the text Prometheus scrapes."""

    def __init__(self, gauges: Gauges) -> None:
        self._gauges = gauges
        self._lock = threading.Lock()
        self._outcomes: Counter[str] = Counter()
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self._latency_count = 0

    def observe(self, outcome: str, seconds: float | None) -> None:
        """One file handled: its outcome and, when known, how long it took."""
        with self._lock:
            self._outcomes[outcome] += 1
            if seconds is not None and outcome == "done":
                self._buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
                self._latency_sum += seconds
                self._latency_count += 1

    def render(self) -> str:
        lines = [
            "# HELP watchd_files_total Files handled by this process, by outcome.",
            "# TYPE watchd_files_total counter",
        ]
        with self._lock:
            outcomes = dict(self._outcomes)
            buckets, total, count = list(self._buckets), self._latency_sum, self._latency_count
        for outcome in sorted({"done", "failed", "retry", "paused", *outcomes}):
            lines.append(f'watchd_files_total{{outcome="{outcome}"}} {outcomes.get(outcome, 0)}')
        lines += [
            "# HELP watchd_publish_seconds From dispatch to sidecar on disk, per published file.",
            "# TYPE watchd_publish_seconds histogram",
        ]
        cumulative = 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
            cumulative += n
            label = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'watchd_publish_seconds_bucket{{le="{label}"}} {cumulative}')
        lines += [f"watchd_publish_seconds_sum {total:.6f}", f"watchd_publish_seconds_count {count}"]
        for name, series in self._gauges().items():
            lines.append(f"# TYPE {name} gauge")
            for labels, value in series.items():
                text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels)
                shown = _number(value)
                lines.append(f"{name}{{{text}}} {shown}" if text else f"{name} {shown}")
        return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves `GET /metrics` on `host:port` from a daemon thread."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"metrics": metrics})
        server = _IPv6Server if ":" in host else ThreadingHTTPServer  # "::1" from "[::1]:9465"
        self._server = server((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/metrics":
            self.send_error(404, "only /metrics is served here")
            return
        body = self.metrics.render().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("metrics: " + format, *args)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
