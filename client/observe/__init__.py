"""Observability tooling: the span collector (``collector``), reading traces (``traces``:
one decision's waterfall, the per-stage breakdown of a load run), Prometheus started on
the project's rules (``prometheus``), the Grafana dashboards (``dashboards``) and
``make observe`` (``stack``)."""
