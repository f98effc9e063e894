"""Prometheus's HTTP API, the two calls the tooling makes: an instant query and the scrape
targets' health. ``stack`` (the processes), ``dashboards`` (their check against live series)
and the tests read Prometheus through it."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request


def query(port: int, expr: str) -> list[dict]:
    """An instant PromQL query's result (``data.result``); raises on a query error."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.loads(answer.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body.get('error', body)}")
    return body["data"]["result"]


def targets_up(port: int) -> dict[str, str]:
    """Each scrape job's health as Prometheus sees it (``up``, ``down``, ``unknown``)."""
    url = f"http://127.0.0.1:{port}/api/v1/targets"
    with urllib.request.urlopen(url, timeout=10) as answer:
        active = json.loads(answer.read())["data"]["activeTargets"]
    return {t["labels"]["job"]: t["health"] for t in active}
