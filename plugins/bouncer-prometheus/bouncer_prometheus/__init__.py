"""Prometheus metrics for bouncer: pgbouncer_exporter's metric names, read straight from the
pooler, plus what an exporter on the admin console cannot see (wait-time histograms per pool,
login failures by reason) and a ``/healthz`` for load balancers.

The hooks are in :mod:`bouncer_prometheus.plugin` (the entry point); the metrics in
:mod:`~bouncer_prometheus.collector`, the health verdict in :mod:`~bouncer_prometheus.health`,
the HTTP listener in :mod:`~bouncer_prometheus.http`.
"""

__version__ = "0.1.0"
