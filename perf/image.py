"""``make perf-image``: the image API's latency, per stage and end to end, with real photos.

Starts Triton with the image models and the web API on free loopback ports, then:
1. drives ``POST /classify`` with JPEG photos shipped in scikit-image (a 224x224 crop of the
   cat, the cat and the coffee cup at full size) at several concurrencies, collecting the
   server-side stages of every answer and the client's own end-to-end time;
2. runs perf_analyzer straight against the ``image_pipeline`` ensemble with the same JPEG, so
   the gateway's own cost (HTTP, multipart, JSON) is visible beside Triton's.
Writes ``perf/results/image/summary.json``, ``report.md`` and ``latency.png``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from client.image_api import multipart
from python_backend.paths import BUILD, PERF_RESULTS

OUT = PERF_RESULTS / "image"
STAGES = ("upload_read", "decode_preprocess", "triton_queue_and_transport", "inference", "total")


def photos() -> dict[str, bytes]:
    """JPEG files: ``cat_224`` (224x224 center crop, the target's case) and two full photos."""
    from PIL import Image

    from build_engines.image import jpeg_bytes, photo

    cat = Image.fromarray(photo("chelsea"))
    side = min(cat.size)
    left, top = (cat.size[0] - side) // 2, (cat.size[1] - side) // 2
    cat224 = cat.crop((left, top, left + side, top + side)).resize((224, 224))
    return {
        "cat_224": jpeg_bytes(np.asarray(cat224)),
        "cat_451x300": jpeg_bytes(photo("chelsea")),
        "coffee_600x400": jpeg_bytes(photo("coffee")),
    }


async def drive(url: str, body: bytes, content_type: str, concurrency: int, requests: int):
    """``requests`` uploads with ``concurrency`` in flight: client ms and server stages."""
    import aiohttp

    client_ms: list[float] = []
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    errors = 0
    queue = list(range(requests))
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal errors
            while queue:
                queue.pop()
                t0 = time.perf_counter()
                async with session.post(
                    url, data=body, headers={"Content-Type": content_type}
                ) as response:
                    answer = await response.json()
                if response.status != 200:
                    errors += 1
                    continue
                client_ms.append((time.perf_counter() - t0) * 1000)
                for s in STAGES:
                    stages[s].append(answer["latency_ms"][s])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return np.asarray(client_ms), {k: np.asarray(v) for k, v in stages.items()}, errors, seconds


def _pct(values: np.ndarray) -> dict[str, float]:
    return {
        "p50": round(float(np.percentile(values, 50)), 3),
        "p99": round(float(np.percentile(values, 99)), 3),
        "mean": round(float(np.mean(values)), 3),
    }


def perf_analyzer_ensemble(binary, env, url: str, jpeg: bytes, concurrency: int, work: Path):
    from perf.analyzer import perf_analyzer

    data = work / "image_input.json"
    # b64 content is the tensor's raw form: for BYTES, each element is length-prefixed
    # (4 bytes, little-endian).
    raw = len(jpeg).to_bytes(4, "little") + jpeg
    encoded = {"b64": base64.b64encode(raw).decode()}
    data.write_text(json.dumps({"data": [{"IMAGE": {"content": encoded, "shape": [1]}}]}))
    path = work / f"image_pipeline_c{concurrency}.csv"
    row = perf_analyzer(binary, env, url, "image_pipeline", data, path, 100, concurrency)
    if "error" in row:
        return row
    return {
        "concurrency": concurrency,
        "throughput_rps": round(row["Inferences/Second"], 1),
        "p50_ms": round(row["p50 latency"] / 1000, 3),
        "p99_ms": round(row["p99 latency"] / 1000, 3),
    }


def run(quick: bool = False, out: Path = OUT, log=print) -> dict:
    from build_engines.image import build_image
    from client.launcher import IMAGE_MODELS, start_image_api
    from client.local.services import free_port, stop_process
    from client.local.triton import Ports, start
    from perf.tools import ensure_perf_analyzer

    concurrencies = (1, 4) if quick else (1, 2, 4, 8)
    per_level = 40 if quick else 200
    out.mkdir(parents=True, exist_ok=True)
    work = BUILD / "perf"
    work.mkdir(parents=True, exist_ok=True)
    binary, env = ensure_perf_analyzer(log=log)
    build_image(log=log)
    files = photos()
    server = start(
        ports=Ports.free(), models=list(IMAGE_MODELS), log_path=work / "image_server.log"
    )
    port = free_port()
    api = start_image_api(server.grpc_url, port, work / "image_api.log")
    url = f"http://127.0.0.1:{port}/classify"
    results: dict = {"api": {}, "perf_analyzer": [], "top1": {}}
    try:
        loop = asyncio.new_event_loop()
        for name, jpeg in files.items():  # warm up every path, check the answers
            body, ctype = multipart(f"{name}.jpg", jpeg, "image/jpeg")
            loop.run_until_complete(drive(url, body, ctype, 1, 5))
        steps = len(files) * len(concurrencies) + len(concurrencies)
        with tqdm(total=steps, desc="perf-image", unit="run", file=sys.stderr) as progress:
            for name, jpeg in files.items():
                body, ctype = multipart(f"{name}.jpg", jpeg, "image/jpeg")
                for c in concurrencies:
                    progress.set_description(f"perf-image {name} c={c}")
                    client_ms, stages, errors, seconds = loop.run_until_complete(
                        drive(url, body, ctype, c, per_level)
                    )
                    results["api"].setdefault(name, []).append(
                        {
                            "concurrency": c,
                            "requests": per_level,
                            "errors": errors,
                            "throughput_rps": round(len(client_ms) / seconds, 1),
                            "client_end_to_end_ms": _pct(client_ms),
                            "server_ms": {s: _pct(v) for s, v in stages.items()},
                            "bytes": len(jpeg),
                        }
                    )
                    progress.update(1)
            for c in concurrencies:
                progress.set_description(f"perf_analyzer image_pipeline c={c}")
                results["perf_analyzer"].append(
                    perf_analyzer_ensemble(binary, env, server.grpc_url, files["cat_224"], c, work)
                )
                progress.update(1)
        loop.close()
    finally:
        stop_process(api, grace_s=5)
        server.stop()
    summary = summarize(results, files)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(markdown(summary))
    plot(summary, out / "latency.png")
    log(markdown(summary))
    return summary


def summarize(results: dict, files: dict[str, bytes]) -> dict:
    c1 = results["api"]["cat_224"][0]
    server = c1["server_ms"]
    model_ms = server["inference"]["mean"]
    gateway_ms = (
        c1["client_end_to_end_ms"]["mean"] - server["total"]["mean"] + server["upload_read"]["mean"]
    )
    pa_c1 = next((p for p in results["perf_analyzer"] if p.get("concurrency") == 1), {})
    return {
        "api": results["api"],
        "perf_analyzer_ensemble": results["perf_analyzer"],
        "target_p99_c1_224_jpeg_ms": {
            "value": c1["client_end_to_end_ms"]["p99"],
            "target": 60.0,
            "met": c1["client_end_to_end_ms"]["p99"] <= 60.0,
        },
        "ratios_at_c1": {
            "gateway_to_model": round(gateway_ms / model_ms, 3),
            "preprocess_to_model": round(server["decode_preprocess"]["mean"] / model_ms, 3),
            "api_p50_over_direct_triton_p50": round(
                c1["client_end_to_end_ms"]["p50"] / pa_c1["p50_ms"], 3
            )
            if pa_c1.get("p50_ms")
            else None,
        },
        "gateway_ms_mean_at_c1": round(gateway_ms, 3),
        "photos": {k: len(v) for k, v in files.items()},
    }


def markdown(s: dict) -> str:
    lines = [
        "# Image API latency (server-side stages and client end to end, ms)",
        "",
        "| photo | c | rps | e2e p50 | e2e p99 | upload p50 | preprocess p50 | queue+transport p50 "
        "| inference p50 | server total p50 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, levels in s["api"].items():
        for level in levels:
            sv = level["server_ms"]
            lines.append(
                f"| {name} | {level['concurrency']} | {level['throughput_rps']} | "
                f"{level['client_end_to_end_ms']['p50']:.2f} | "
                f"{level['client_end_to_end_ms']['p99']:.2f} | {sv['upload_read']['p50']:.2f} | "
                f"{sv['decode_preprocess']['p50']:.2f} | "
                f"{sv['triton_queue_and_transport']['p50']:.2f} | {sv['inference']['p50']:.2f} | "
                f"{sv['total']['p50']:.2f} |"
            )
    lines += ["", "perf_analyzer straight to `image_pipeline` (cat_224):", ""]
    for p in s["perf_analyzer_ensemble"]:
        lines.append(f"- {json.dumps(p)}")
    t = s["target_p99_c1_224_jpeg_ms"]
    lines += [
        "",
        f"Target: end-to-end p99 at concurrency 1, 224x224 JPEG: {t['value']:.2f} ms "
        f"(goal {t['target']:.0f}, met: {t['met']}).",
        f"Ratios at concurrency 1: {json.dumps(s['ratios_at_c1'])}.",
        "",
    ]
    return "\n".join(lines)


def plot(s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = s["api"]["cat_224"]
    labels = [f"c={lv['concurrency']}" for lv in levels]
    parts = ("upload_read", "decode_preprocess", "triton_queue_and_transport", "inference")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bottom = np.zeros(len(levels))
    for k, part in enumerate(parts):
        values = np.array([lv["server_ms"][part]["mean"] for lv in levels])
        ax.bar(labels, values, bottom=bottom, label=part.replace("_", " "), color=f"C{k}")
        bottom += values
    gateway = np.array([lv["client_end_to_end_ms"]["mean"] for lv in levels]) - np.array(
        [lv["server_ms"]["total"]["mean"] for lv in levels]
    )
    ax.bar(labels, gateway, bottom=bottom, label="HTTP client + gateway", color="C7")
    ax.plot(
        labels, [lv["client_end_to_end_ms"]["p99"] for lv in levels], "k^--", label="end-to-end p99"
    )
    ax.set_ylabel("ms per request (mean, stacked)")
    ax.set_title("Image API, 224x224 JPEG: where the time goes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
