"""Prometheus metrics of one app, on its own registry (no process-global default)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from atoll.runtime.tracker import AgentExecutionTracker


class Metrics:
    """Runs by state, event delivery latency, open connections."""

    def __init__(self, tracker: AgentExecutionTracker) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._tracker = tracker
        self.runs = Gauge(
            "atoll_runs",
            "Runs tracked in this process, by state",
            ["state"],
            registry=self.registry,
        )
        self.runs_finished = Gauge(
            "atoll_runs_finished",
            "Runs that reached each terminal state since start",
            ["state"],
            registry=self.registry,
        )
        self.event_delivery = Histogram(
            "atoll_event_delivery_seconds",
            "From an event's timestamp to its write on a WebSocket",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.connections = Gauge(
            "atoll_websocket_connections", "Open WebSocket connections", registry=self.registry
        )
        self.error_frames = Counter(
            "atoll_ws_error_frames",
            "Error frames sent for bad client frames",
            ["code"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition, with run counts read at scrape time."""
        for state, count in self._tracker.counts().items():
            self.runs.labels(state.value).set(count)
        for state, count in self._tracker.finished_totals().items():
            self.runs_finished.labels(state.value).set(count)
        return generate_latest(self.registry)


class WorkerMetrics(Metrics):
    """A worker's metrics: its runs (as ``Metrics``), the queue and the sweeper."""

    def __init__(self, tracker: AgentExecutionTracker) -> None:
        super().__init__(tracker)
        self.held = Gauge(
            "atoll_worker_runs",
            "Runs this worker holds (executing or waiting)",
            registry=self.registry,
        )
        self.capacity = Gauge(
            "atoll_worker_capacity", "Runs this worker executes at once", registry=self.registry
        )
        self.queue_depth = Gauge(
            "atoll_queue_depth",
            "Entries in the run queue (waiting or held)",
            registry=self.registry,
        )
        self.requeued = Gauge(
            "atoll_sweeper_requeued",
            "Runs of dead workers this process re-queued since start",
            registry=self.registry,
        )
        self.dead = Gauge(
            "atoll_sweeper_dead",
            "Runs of dead workers this process ended DEAD since start",
            registry=self.registry,
        )
