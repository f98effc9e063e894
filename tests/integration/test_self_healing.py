"""``make serve`` heals itself: the launcher runs the stub watchdog beside Triton, so a
primary whose stub process was killed is reloaded and decides again, without the chaos
harness."""

from __future__ import annotations

import os
import signal
import time
import urllib.request

from tests.conftest import serving_repository
from tests.support import wait_until


def test_killed_primary_stub_is_reloaded_under_the_serve_launcher(
    tiny_build, tmp_path, redis_service, monkeypatch
) -> None:
    from client.launcher import start_in_background, stop
    from client.local.services import free_port, stub_pids
    from client.local.triton import Ports
    from client.scoring import FraudClient

    # As after `make serve` returns: Feast's import pointed prometheus_client at a temporary
    # folder that is gone now; the watchdog must neither inherit it nor die of it.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "gone"))
    repository = serving_repository(tiny_build, tmp_path, primary="triton")
    env = {"FEATURE_STORE": "redis", "REDIS_URL": f"redis://127.0.0.1:{redis_service.port}/2"}
    metrics_port = free_port()
    server = start_in_background(
        Ports.free(),
        env,
        repository,
        state_dir=tmp_path,
        log=print,
        watchdog_metrics_port=metrics_port,
    )
    client = FraudClient(server.grpc_url)
    row = {"card_id": 1, "terminal_id": 1, "amount": 12.0, "ts_ms": int(time.time() * 1000)}

    def path(i: int) -> str:
        return client.score([{**row, "transaction_id": f"heal-{i}"}])[0].path

    try:
        assert path(0) == "primary"
        stubs = stub_pids("fraud_primary", server.process.pid)
        assert stubs, "the primary's stub processes were found"
        for pid in stubs:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        paths = []

        def reloaded() -> bool:
            paths.append(path(len(paths) + 1))
            return paths[-1] == "primary" and "fraud_primary reloaded" in _log(tmp_path)

        wait_until(
            reloaded,
            10,
            what=lambda: f"the primary reloaded and deciding (last paths {paths[-10:]})",
            interval_s=0.2,
        )
        back_s = time.monotonic() - killed_at
        assert "fallback" in paths, "the kill was seen: decisions fell back meanwhile"
        print(f"primary back {back_s:.1f} s after its stubs were killed")
        # The reload is on the watchdog's metrics (the FraudWatchdogReloading alert's series).
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as answer:
            metrics = answer.read().decode()
        assert 'fraud_watchdog_reloads_total{model="fraud_primary"} 1.0' in metrics, metrics
    finally:
        client.close()
        watchdog_pid = server.watchdog.pid
        assert stop(log=print, state_dir=tmp_path)
    assert server.process.poll() is not None and not (tmp_path / "server.pid").exists()
    assert _gone(watchdog_pid), "make stop stops the watchdog too"


def _log(state_dir) -> str:
    path = state_dir / "watchdog.log"
    return path.read_text() if path.exists() else ""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (this test's child, not yet reaped) is gone for our purpose.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] == "Z"
