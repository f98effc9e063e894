"""Envoy in front of two real Triton replicas (``client.mesh``): routing by load and health,
draining, a crashed replica, the callers' API against the operator's, TLS, per-client limits."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from dataclasses import replace

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from python_backend.fraud.contract import DECISIONS
from tests.support import transaction

pytestmark = pytest.mark.slow


def _row(i: int) -> dict:
    return transaction("mesh", i, 12.5)


@pytest.fixture(scope="module")
def mesh(serving, tmp_path_factory):
    from client.launcher import warm_up
    from client.local.services import free_port
    from client.local.triton import FRAUD_MODELS, Ports, start
    from client.mesh.config import MeshConfig
    from client.mesh.mesh import Mesh

    work = tmp_path_factory.mktemp("mesh")

    def start_replica(replica):
        return start(
            repository=serving.repository,
            ports=replica.ports,
            nice=replica.nice,
            models=list(FRAUD_MODELS),
            env=serving.env,
            log_path=work / f"replica-{replica.index}.log",
        )

    config = MeshConfig(listen_port=free_port(), admin_port=free_port())
    mesh = Mesh(
        work,
        config,
        [Ports.free(), Ports.free()],
        start_replica,
        lambda s: warm_up(s, 20),
        log=lambda _m: None,
    )
    mesh.start()
    yield mesh
    mesh.stop()


def _score(url: str, n: int, **client_kwargs) -> list[dict]:
    from client.scoring import FraudClient

    client = FraudClient(url, **client_kwargs)
    try:
        return [client.score([_row(i)])[0] for i in range(n)]
    finally:
        client.close()


def _requests_by_host(mesh) -> dict[str, int]:
    return {h: int(s.get("rq_total", 0)) for h, s in mesh.envoy.hosts().items()}


def test_envoy_balances_over_both_replicas_and_answers_what_triton_answers(mesh) -> None:
    before = _requests_by_host(mesh)
    answers = _score(mesh.url, 60)
    after = _requests_by_host(mesh)
    assert all(a.decision in DECISIONS for a in answers)
    assert all(a.path == "primary" for a in answers), {a.path for a in answers}
    served = {h: after[h] - before.get(h, 0) for h in after}
    assert len(served) == 2 and all(n > 0 for n in served.values()), served
    # Active gRPC health checks saw both replicas serving.
    assert mesh.envoy.healthy() == {r.address for r in mesh.replicas}


def test_a_drained_replica_gets_no_new_requests_and_is_readmitted(mesh) -> None:
    drained = mesh.replicas[0]
    mesh.drain(drained)
    try:
        before = _requests_by_host(mesh)
        _score(mesh.url, 30)
        after = _requests_by_host(mesh)
        assert after[drained.address] == before[drained.address], "a drained replica was sent work"
        other = mesh.replicas[1].address
        assert after[other] - before[other] >= 30
    finally:
        mesh.admit(drained)
    before = _requests_by_host(mesh)
    _score(mesh.url, 40)
    assert _requests_by_host(mesh)[drained.address] > before[drained.address]


PLAIN_ADMIN_CALLS = {
    "unload_model": lambda c: c.unload_model("fraud_primary"),
    "load_model": lambda c: c.load_model("fraud_primary"),
    "get_model_repository_index": lambda c: c.get_model_repository_index(),
    "get_model_config": lambda c: c.get_model_config("fraud_primary"),
    "get_inference_statistics": lambda c: c.get_inference_statistics(),
    "update_trace_settings": lambda c: c.update_trace_settings(settings={"trace_rate": "1"}),
    "update_log_settings": lambda c: c.update_log_settings(settings={"log_verbose_level": 3}),
    "get_system_shared_memory_status": lambda c: c.get_system_shared_memory_status(),
    "register_system_shared_memory": lambda c: c.register_system_shared_memory("x", "/x", 64),
}


@pytest.mark.parametrize("through", ["envoy", "replica"])
def test_a_plain_caller_gets_the_callers_api_only_and_changes_nothing(mesh, through) -> None:
    from client.local.operator import admin_client

    url = mesh.url if through == "envoy" else mesh.replicas[0].address
    operator = admin_client(mesh.replicas[0].address)
    logs_before = operator.get_log_settings(as_json=True)
    trace_before = operator.get_trace_settings(as_json=True)
    plain = grpcclient.InferenceServerClient(url)
    try:
        refused = {}
        for name, call in PLAIN_ADMIN_CALLS.items():
            with pytest.raises(InferenceServerException) as err:
                call(plain)
            refused[name] = err.value.status()
        expected = (
            "StatusCode.PERMISSION_DENIED" if through == "envoy" else "StatusCode.UNAVAILABLE"
        )
        assert set(refused.values()) == {expected}, refused
        # The callers' API still works for the same caller.
        assert plain.is_server_live() and plain.is_server_ready()
        assert plain.is_model_ready("fraud_scoring")
        assert plain.get_model_metadata("fraud_scoring", as_json=True)["name"] == "fraud_scoring"
    finally:
        plain.close()
    # Nothing changed: the primary is loaded and serving, the settings are as they were.
    assert operator.is_model_ready("fraud_primary")
    assert operator.get_log_settings(as_json=True) == logs_before
    assert operator.get_trace_settings(as_json=True) == trace_before
    assert _score(mesh.url, 3)[0].path == "primary"
    # The operator's key passes Envoy and Triton.
    via = admin_client(url)
    names = {m["name"] for m in via.get_model_repository_index(as_json=True)["models"]}
    assert "fraud_primary" in names
    via.close()
    operator.close()


def test_the_operator_key_must_be_the_right_one(mesh) -> None:
    from client.local.operator import GRPC_HEADER

    wrong = grpcclient.InferenceServerClient(mesh.url)
    with pytest.raises(InferenceServerException, match="restricted"):
        wrong.get_model_repository_index(headers={GRPC_HEADER: "not-the-key"})
    wrong.close()


def test_triton_http_admin_api_needs_the_key(mesh) -> None:
    import urllib.error
    import urllib.request

    from client.local.operator import http_headers

    url = f"http://127.0.0.1:{mesh.replicas[0].ports.http}/v2/repository/index"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, data=b"{}", timeout=5)
    assert err.value.code == 403
    request = urllib.request.Request(url, data=b"{}", headers=http_headers())
    with urllib.request.urlopen(request, timeout=5) as response:
        assert any(m["name"] == "fraud_primary" for m in json.loads(response.read()))


@pytest.fixture
def second_envoy(mesh, tmp_path):
    """Another Envoy over the same replicas (the same endpoint file), with other settings."""
    from client.local.services import free_port
    from client.mesh import envoy

    started = []

    def make(**changes):
        config = replace(mesh.config, listen_port=free_port(), admin_port=free_port(), **changes)
        proxy = envoy.start(config, tmp_path / f"envoy-{len(started)}")
        started.append(proxy)
        proxy.wait_hosts(
            lambda h: len([s for s in h.values() if s.get("health_flags") == "healthy"]) == 2
        )
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


def test_tls_for_callers_with_a_self_signed_certificate(second_envoy, tmp_path) -> None:
    from client.mesh.config import Tls

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    proxy = second_envoy(tls=Tls(str(cert), str(key)))
    secure = grpcclient.InferenceServerClient(
        f"localhost:{proxy.config.listen_port}", ssl=True, root_certificates=str(cert)
    )
    assert secure.is_model_ready("fraud_scoring")
    secure.close()
    answers = _score(
        f"localhost:{proxy.config.listen_port}", 3, ssl=True, root_certificates=str(cert)
    )
    assert all(a.path == "primary" for a in answers)
    plain = grpcclient.InferenceServerClient(f"127.0.0.1:{proxy.config.listen_port}")
    with pytest.raises(InferenceServerException):
        plain.is_server_live(client_timeout=3)
    plain.close()


def test_per_client_rate_and_size_limits(second_envoy) -> None:
    from client.mesh.config import Limits
    from client.scoring import build_inputs

    proxy = second_envoy(limits=Limits(rps_per_client=5, burst=5, max_request_bytes=4096))
    client = grpcclient.InferenceServerClient(proxy.url)
    outcomes = []
    for i in range(30):
        try:
            client.infer("fraud_scoring", build_inputs([_row(i)]))
            outcomes.append("ok")
        except InferenceServerException as err:
            outcomes.append(err.status())
    assert outcomes.count("ok") >= 5
    assert "StatusCode.RESOURCE_EXHAUSTED" in outcomes, outcomes
    limited = proxy.stats("callers.http_local_rate_limit")
    assert limited.get("callers.http_local_rate_limit.rate_limited", 0) > 0, limited
    time.sleep(1.2)  # the bucket refills
    big = build_inputs([{**_row(i), "transaction_id": f"big-{i}-" + "x" * 60} for i in range(100)])
    _assert_refused_for_size(client, big, 4096)
    client.close()


def _assert_refused_for_size(client, inputs, limit: int) -> None:
    """A request over the mesh's size limit: RESOURCE_EXHAUSTED, with the limit in bytes."""
    with pytest.raises(InferenceServerException) as err:
        client.infer("fraud_scoring", inputs)
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED", str(err.value)
    assert f"limit of {limit} bytes" in err.value.message(), str(err.value)
    assert "max_request_bytes" in err.value.message(), str(err.value)


def test_four_rows_with_a_1_mib_transaction_id_get_resource_exhausted_naming_the_limit(
    mesh,
) -> None:
    """The reported case, at the mesh's default limit: it was UNKNOWN "Payload Too Large"."""
    from client.mesh.config import Limits
    from client.scoring import build_inputs, parse

    limit = Limits().max_request_bytes
    assert mesh.config.limits.max_request_bytes == limit
    rows = [_row(i) for i in range(4)]
    rows[0]["transaction_id"] = "t" * (1 << 20)
    client = grpcclient.InferenceServerClient(mesh.url)
    try:
        _assert_refused_for_size(client, build_inputs(rows), limit)
        # The same caller's next request of a normal size is served.
        served = client.infer("fraud_scoring", build_inputs(rows[1:]))
        answers = parse(served, [r["transaction_id"] for r in rows[1:]])
        assert [a.decision in DECISIONS for a in answers] == [True] * 3, answers
    finally:
        client.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (an HTTP/2 client)")
def test_a_plain_http_caller_over_the_size_limit_gets_a_413_naming_it(mesh) -> None:
    limit = mesh.config.limits.max_request_bytes
    done = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-X", "POST", "--data-binary", "@-",
         "-w", "\n%{http_code}", f"http://{mesh.url}/v2/models/fraud_scoring/infer"],
        input=b"x" * (limit + 1), capture_output=True, timeout=30,
    )  # fmt: skip
    body, _, code = done.stdout.decode().rpartition("\n")
    assert code == "413", (done.stdout, done.stderr)
    assert f"limit of {limit} bytes" in body, body


def test_a_crashed_replica_is_routed_around_and_rejoins(mesh) -> None:
    """kill -9 of a whole replica under load: Envoy retries what it had sent there on the
    other one, health checks take it out, and it rejoins once started and warm."""
    from client.scoring import FraudClient

    victim = mesh.replicas[1]
    results: list[tuple[float, bool]] = []
    stop = threading.Event()

    def load() -> None:
        client = FraudClient(mesh.url, timeout_s=1.0)
        i = 0
        while not stop.is_set():
            started = time.perf_counter()
            try:
                client.score([_row(i)])
                results.append((started, True))
            except Exception:
                results.append((started, False))
            i += 1
            time.sleep(0.01)
        client.close()

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    killed = time.perf_counter()
    mesh.crash(victim)
    mesh.envoy.wait_hosts(
        lambda h: h.get(victim.address, {}).get("health_flags", "healthy") != "healthy", 5
    )
    out_after_s = time.perf_counter() - killed
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join()
    after = [ok for t, ok in results if t >= killed]
    assert len(after) > 50
    failed = after.count(False)
    assert failed <= 0.01 * len(after), f"{failed} of {len(after)} failed after the crash"
    assert out_after_s < 3.0, f"the dead replica stayed in rotation {out_after_s:.1f} s"
    mesh.stop_replica(victim)
    mesh.boot(victim)
    assert victim.address in mesh.envoy.healthy()
    assert np.isfinite([a.score for a in _score(mesh.url, 5)]).all()


def _waited_by_source(mesh) -> dict[str, float]:
    """``fraud_request_waited_seconds_count`` summed over the replicas, by source."""
    import re

    sample = re.compile(r'^fraud_request_waited_seconds_count\{.*source="(\w+)".*\} (\S+)$')
    counts: dict[str, float] = {}
    for replica in mesh.replicas:
        url = f"http://127.0.0.1:{replica.ports.metrics}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        for line in text.splitlines():
            found = sample.match(line)
            if found:
                counts[found[1]] = counts.get(found[1], 0.0) + float(found[2])
    return counts


def test_the_deadline_reaches_the_bls_directly_and_through_envoy(mesh) -> None:
    """A caller's arrival stamp a second old: called directly, the BLS takes it (nothing left
    of the budget: the rules decide at once, both models shed); through Envoy, the edge's own
    stamp replaces it (the primary decides) and is what the BLS counted."""
    from client.scoring import build_inputs, parse
    from tests.support import wait_until

    def call(url: str, row: dict):
        client = grpcclient.InferenceServerClient(url)
        try:
            stamp = {"x-request-start": f"t={time.time() - 1:.6f}"}
            result = client.infer(
                "fraud_scoring", build_inputs([row]), headers=stamp, client_timeout=5
            )
            return parse(result, [row["transaction_id"]])[0]
        finally:
            client.close()

    before = _waited_by_source(mesh)
    direct = call(mesh.replicas[0].address, _row(0))
    assert direct.path == "rules", direct
    assert {"DEADLINE_SHED:primary", "DEADLINE_SHED:fallback"} <= set(direct.reasons)
    through = [call(mesh.url, _row(i)) for i in range(1, 6)]
    assert all(d.path == "primary" for d in through), through
    assert not any(r.startswith("DEADLINE_SHED") for d in through for r in d.reasons)

    def stamped() -> float:
        return _waited_by_source(mesh).get("stamp", 0.0) - before.get("stamp", 0.0)

    wait_until(
        lambda: stamped() >= 6, timeout_s=15, what=lambda: f"{_waited_by_source(mesh)} counted"
    )
