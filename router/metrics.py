"""Prometheus metrics in a registry of the app's own (no global registry), rendered by prometheus_client."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                   80.0, 160.0, 640.0, 2560.0)
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                     2.5, 5.0, 10.0, 20.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.time_to_first_token = Histogram(
            "gpupool_time_to_first_token_seconds", "Admission to first token.", buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token_latency = Histogram(
            "gpupool_inter_token_latency_seconds", "Gap between a request's successive deltas, per token.",
            buckets=TOKEN_GAP_BUCKETS, registry=r)
        self.e2e_request_latency = Histogram(
            "gpupool_e2e_request_latency_seconds", "Admission to the end of the response.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.request_queue_time = Histogram(
            "gpupool_request_queue_time_seconds", "Admission to dispatch to a worker.",
            buckets=LATENCY_BUCKETS, registry=r)
        worker = ["worker"]
        self.num_requests_running = Gauge(
            "gpupool_num_requests_running", "Sequences running on the worker.", worker, registry=r)
        self.num_requests_waiting = Gauge(
            "gpupool_num_requests_waiting", "Sequences waiting in the worker's scheduler.", worker, registry=r)
        self.kv_cache_usage_ratio = Gauge(
            "gpupool_kv_cache_usage_ratio", "Used over total KV blocks.", worker, registry=r)
        self.kv_cache_blocks_used = Gauge(
            "gpupool_kv_cache_blocks_used", "KV blocks held by sequences.", worker, registry=r)
        self.worker_outstanding = Gauge(
            "gpupool_worker_outstanding_requests", "Requests the router has sent to the worker, not yet ended.",
            worker, registry=r)
        self.worker_up = Gauge(
            "gpupool_worker_up", "1 while the worker is handshaken and supervised as healthy.", worker, registry=r)
        self.worker_steps = Gauge("gpupool_worker_steps_done", "Engine steps the worker reports.", worker, registry=r)
        self.router_queue = Gauge(
            "gpupool_router_queue_length", "Requests admitted by the router, not yet dispatched.", registry=r)
        self.prompt_tokens = Counter("gpupool_prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.generation_tokens = Counter("gpupool_generation_tokens", "Tokens generated.", registry=r)
        self.requests = Counter(
            "gpupool_requests", "Requests by outcome and HTTP status.", ["outcome", "status"], registry=r)
        self.worker_restarts = Counter("gpupool_worker_restarts", "Worker restarts.", registry=r)
        self.worker_failures = Counter(
            "gpupool_worker_failures", "Worker deaths by cause.", ["reason"], registry=r)
        self.bad_frames = Counter("gpupool_bad_frames", "Frames dropped as malformed or unexpected, by the router or (from their stats) the workers.",
            registry=r)
        self.stale_frames = Counter(
            "gpupool_stale_frames", "Frames dropped because their worker epoch is not the live one.", registry=r)

    def add_worker(self, label: str) -> None:
        for gauge in (self.num_requests_running, self.num_requests_waiting, self.kv_cache_usage_ratio,
                      self.kv_cache_blocks_used, self.worker_outstanding, self.worker_up, self.worker_steps):
            gauge.labels(label).set(0)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
