"""Prometheus metrics of the API process."""
from __future__ import annotations

from prometheus_client import Counter, Histogram

SEARCHES = Counter("lookalike_searches_total", "Searches served", ["option"])
SEARCH_LATENCY = Histogram("lookalike_search_seconds", "End-to-end search latency", ["option"],
                           buckets=(0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5))
REQUESTS = Counter("lookalike_http_requests_total", "HTTP requests", ["method", "endpoint", "status"])
