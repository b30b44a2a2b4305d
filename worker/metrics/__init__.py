"""Metrics: the scheduler's rollup of the append-only logs (:mod:`worker.metrics.rollup`) and the provider health
the console shows (:mod:`worker.metrics.health`), both below the bootstrap. The Prometheus collector /metrics
serves needs the whole app, so it lives with the web layer (:mod:`worker.web.metrics_collector`)."""
