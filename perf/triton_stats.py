"""Triton's per-model statistics, read before and after a load level."""

from __future__ import annotations


def model_statistics(client, models: tuple[str, ...]) -> dict[str, dict]:
    out = {}
    for name in models:
        stats = client.get_inference_statistics(model_name=name, as_json=True)
        entry = stats["model_stats"][0]
        inf = entry["inference_stats"]
        out[name] = {
            "inference_count": int(entry.get("inference_count", 0)),
            "execution_count": int(entry.get("execution_count", 0)),
            **{
                k: (int(inf[k].get("count", 0)), int(inf[k].get("ns", 0)))
                for k in ("success", "queue", "compute_input", "compute_infer", "compute_output")
            },
        }
    return out


def statistics_delta(before: dict, after: dict) -> dict[str, dict]:
    """Per model: requests, average batch, and mean µs per request in each server stage."""
    out = {}
    for name, a in after.items():
        b = before[name]
        requests = a["success"][0] - b["success"][0]
        executions = a["execution_count"] - b["execution_count"]
        inferences = a["inference_count"] - b["inference_count"]
        row = {
            "requests": requests,
            "avg_batch": round(inferences / executions, 2) if executions else None,
        }
        for k in ("queue", "compute_input", "compute_infer", "compute_output"):
            n = a[k][0] - b[k][0]
            row[f"{k}_us"] = round((a[k][1] - b[k][1]) / n / 1000, 1) if n else None
        out[name] = row
    return out


def served(client, model: str) -> int:
    """Requests ``model`` has answered successfully so far."""
    return model_statistics(client, (model,))[model]["success"][0]
