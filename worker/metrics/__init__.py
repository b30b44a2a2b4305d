"""Metrics: the Prometheus collector /metrics serves (:mod:`worker.metrics.collector`) and the scheduler's rollup
of the append-only logs it reads (:mod:`worker.metrics.rollup`). Nothing is imported here, so the rollup can sit
below the bootstrap and the collector above it."""
