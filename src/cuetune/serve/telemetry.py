"""Prometheus metrics of one server (`GET /metrics`): a registry of its own, not the global one,
so two servers in one process (tests) do not share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cuetune_requests", "HTTP requests by adapter, endpoint and status",
                                ["adapter", "endpoint", "status"], registry=r)
        self.latency = Histogram("cuetune_request_seconds", "Request latency per adapter", ["adapter"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("cuetune_batch_rows", "Rows per forward (classify, decode step, "
                                    "generate apart)", ["kind"], buckets=ROW_BUCKETS, registry=r)
        self.batch_adapters = Histogram("cuetune_batch_adapters", "Distinct adapters per forward",
                                        ["kind"], buckets=ROW_BUCKETS, registry=r)
        self.queue_depth = Gauge("cuetune_queue_depth", "Rows waiting for the worker", registry=r)
        self.cancelled = Counter("cuetune_cancelled", "Requests dropped because their client left",
                                 ["adapter"], registry=r)
        self.tokens = Counter("cuetune_generated_tokens", "Tokens written per adapter", ["adapter"],
                              registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
