"""The image pipeline: a real EfficientNet-Lite0 build, the ensemble on a real Triton over gRPC,
the web API with real photo uploads and bad ones, and its page in a real headless Chromium."""

from __future__ import annotations

import io
import json
import shutil
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from python_backend.image import IMAGE, IMAGE_PIPELINE, MAX_IMAGE_BYTES
from python_backend.paths import MODEL_REPOSITORY
from tests.support import wait_for_live_panels

pytestmark = pytest.mark.slow


def _names(ids: set[int]) -> set[str]:
    from build_engines.image import class_names

    names = class_names()
    return {names[i] for i in ids}


#: ImageNet classes the photos may be given (the build checks the same): cats, coffee cups.
CAT_IDS = {281, 282, 283, 285, 287}
COFFEE_IDS = {967, 968, 504}
CAT_CLASSES = _names(CAT_IDS)
COFFEE_CLASSES = _names(COFFEE_IDS)


@pytest.fixture(scope="module")
def image_build(tmp_path_factory):
    from build_engines.image import build_image

    root = tmp_path_factory.mktemp("image")
    repository = root / "model_repository"
    report = build_image(repository=repository, build_dir=root / "build", log=lambda _m: None)
    for model in ("image_preprocess", "image_classifier", "image_postprocess"):
        (repository / model / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(MODEL_REPOSITORY / model / "1" / "model.py", repository / model / "1")
    return repository, report


@pytest.fixture(scope="module")
def image_service(image_build, tmp_path_factory):
    """Triton with the image models and the web API in front of it, on free ports."""
    from client.launcher import IMAGE_MODELS, start_image_api
    from client.local.services import free_port, stop_process
    from client.local.triton import Ports, running

    repository, _ = image_build
    logs = tmp_path_factory.mktemp("image-logs")
    with running(
        repository=repository,
        ports=Ports.free(),
        models=list(IMAGE_MODELS),
        log_path=logs / "t.log",
    ) as server:
        port = free_port()
        api = start_image_api(server.grpc_url, port, logs / "api.log")
        try:
            yield server, f"http://127.0.0.1:{port}"
        finally:
            stop_process(api, grace_s=5)


def _jpeg(name: str) -> bytes:
    from build_engines.image import jpeg_bytes, photo

    return jpeg_bytes(photo(name))


def _encoded(name: str, fmt: str) -> bytes:
    from PIL import Image

    from build_engines.image import photo

    out = io.BytesIO()
    Image.fromarray(photo(name)).save(out, format=fmt)
    return out.getvalue()


def _upload(url: str, data: bytes, content_type: str = "image/jpeg", name: str = "x.jpg"):
    from client.image_api import multipart

    body, ctype = multipart(name, data, content_type)
    request = urllib.request.Request(f"{url}/classify", data=body, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def test_build_checks_parity_and_the_photos(image_build) -> None:
    _, report = image_build
    assert report["onnx_parity_max_abs_diff"] < 1e-3
    assert report["top1_on_photos"]["chelsea"] in CAT_CLASSES
    assert report["top1_on_photos"]["coffee"] in COFFEE_CLASSES
    assert report["tensorrt"]["built"] or "TensorRT" in report["tensorrt"]["reason"]


def test_ensemble_over_grpc_classifies_real_photos(image_service) -> None:
    server, _ = image_service
    client = grpcclient.InferenceServerClient(server.grpc_url)
    image = grpcclient.InferInput(IMAGE.name, [2, 1], IMAGE.wire_dtype)
    image.set_data_from_numpy(np.array([[_jpeg("chelsea")], [_jpeg("coffee")]], dtype=object))
    result = client.infer(IMAGE_PIPELINE.name, [image])
    labels = result.as_numpy("LABELS")
    probabilities = result.as_numpy("PROBABILITIES")
    assert labels.shape == (2, 5) and probabilities.shape == (2, 5)
    assert labels[0, 0].decode() in CAT_CLASSES
    assert labels[1, 0].decode() in COFFEE_CLASSES
    assert np.all(np.diff(probabilities, axis=1) <= 0), "best first"
    assert np.all(result.as_numpy("INFER_US") > 0) and np.all(result.as_numpy("PREPROCESS_US") > 0)


def test_ensemble_refuses_what_is_not_an_image_and_stays_up(image_service) -> None:
    server, _ = image_service
    client = grpcclient.InferenceServerClient(server.grpc_url)
    bad = grpcclient.InferInput(IMAGE.name, [1, 1], IMAGE.wire_dtype)
    bad.set_data_from_numpy(np.array([[b"%PDF-1.4 not an image"]], dtype=object))
    with pytest.raises(InferenceServerException, match="IMAGE: not a readable"):
        client.infer(IMAGE_PIPELINE.name, [bad])
    good = grpcclient.InferInput(IMAGE.name, [1, 1], IMAGE.wire_dtype)
    good.set_data_from_numpy(np.array([[_jpeg("chelsea")]], dtype=object))
    assert client.infer(IMAGE_PIPELINE.name, [good]).as_numpy("LABELS")[0, 0].decode() in (
        CAT_CLASSES
    )


@pytest.mark.parametrize(
    ("fmt", "ctype"), [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")]
)
def test_api_answers_top5_with_a_latency_breakdown(image_service, fmt, ctype) -> None:
    _, url = image_service
    status, body, headers = _upload(url, _encoded("chelsea", fmt), ctype, f"cat.{fmt.lower()}")
    assert status == 200, body
    assert body["top5"][0]["label"] in CAT_CLASSES
    assert len(body["top5"]) == 5
    latency = body["latency_ms"]
    assert set(latency) == {
        "upload_read",
        "decode_preprocess",
        "triton_queue_and_transport",
        "inference",
        "total",
    }
    assert 0 < latency["inference"] < latency["total"]
    assert latency["decode_preprocess"] > 0
    assert "inference;dur=" in headers["Server-Timing"]


def test_api_refuses_bad_uploads_clearly(image_service) -> None:
    _, url = image_service
    status, body, _ = _upload(url, b"hello", "text/plain", "notes.txt")
    assert status == 415 and "content type" in body["error"]
    corrupt = _jpeg("coffee")[:300]  # a truncated JPEG
    status, body, _ = _upload(url, corrupt, "image/jpeg")
    assert status == 422 and body["error"].startswith("file: not a readable"), body
    status, body, _ = _upload(url, b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png")
    assert status == 422, body
    status, body, _ = _upload(url, b"\xff" * (MAX_IMAGE_BYTES + 1), "image/jpeg")
    assert status == 413 and "limit" in body["error"]
    status, body, _ = _upload(url, _jpeg("coffee"), "image/jpeg", "coffee.jpg")
    assert status == 200 and body["top5"][0]["label"] in COFFEE_CLASSES, "still serving"


def _png_bomb(side: int = 30_000) -> bytes:
    """A PNG whose header declares ``side`` x ``side`` pixels: a few dozen bytes that would
    decode to 900 million pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_a_422_with_the_rule_and_fails_alone(image_service) -> None:
    server, url = image_service
    status, body, _ = _upload(url, _png_bomb(), "image/png", "bomb.png")
    assert status == 422, body
    assert "decompression bomb" in body["error"] and "per side" in body["error"], body
    # Sent beside a good image (the dynamic batcher may put them in one batch), only the
    # bomb fails.
    client = grpcclient.InferenceServerClient(server.grpc_url)
    good = grpcclient.InferInput(IMAGE.name, [1, 1], IMAGE.wire_dtype)
    good.set_data_from_numpy(np.array([[_jpeg("chelsea")]], dtype=object))
    bomb = grpcclient.InferInput(IMAGE.name, [1, 1], IMAGE.wire_dtype)
    bomb.set_data_from_numpy(np.array([[_png_bomb()]], dtype=object))
    results: dict = {}

    def call(name, image) -> None:
        try:
            results[name] = client.infer(IMAGE_PIPELINE.name, [image])
        except InferenceServerException as err:
            results[name] = err

    import threading

    threads = [threading.Thread(target=call, args=a) for a in (("good", good), ("bomb", bomb))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert isinstance(results["bomb"], InferenceServerException)
    assert results["good"].as_numpy("LABELS")[0, 0].decode() in CAT_CLASSES


def _raw_post(url: str, headers: dict, body_parts) -> tuple[int, dict, bool]:
    """POST /classify over one HTTP/1.1 connection (``http.client``), sending ``body_parts``
    as they come (chunked without a Content-Length); the status, the JSON, and whether the
    same connection then answers a second request (it was not reset)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request(
        "POST",
        "/classify",
        body=body_parts,
        headers=headers,
        encode_chunked="Content-Length" not in headers,
    )
    response = connection.getresponse()
    status, body = response.status, json.loads(response.read())
    try:
        connection.request("GET", "/health")
        alive = connection.getresponse().status == 200
    except (ConnectionError, http.client.HTTPException):
        alive = False
    connection.close()
    return status, body, alive


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_oversized_upload_gets_its_413_not_a_reset(image_service, framing) -> None:
    from client.image_api import multipart

    _, url = image_service
    body, ctype = multipart("big.jpg", b"\xff" * (12 * 1024 * 1024), "image/jpeg")
    headers = {"Content-Type": ctype}
    if framing == "content-length":
        headers["Content-Length"] = str(len(body))
        payload = body
    else:
        payload = iter([body[i : i + 256 * 1024] for i in range(0, len(body), 256 * 1024)])
    status, answer, alive = _raw_post(url, headers, payload)
    assert status == 413, answer
    assert f"{MAX_IMAGE_BYTES:,} bytes per image" in answer["error"], answer
    assert alive, "the connection was closed after the 413 instead of kept open"


def test_metrics_expose_stage_histograms(image_service) -> None:
    _, url = image_service
    _upload(url, _jpeg("chelsea"))
    metrics = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    for stage in ("upload_read", "decode_preprocess", "inference", "total"):
        assert f'image_api_stage_seconds_bucket{{le="0.1",stage="{stage}"}}' in metrics
    assert 'image_api_requests_total{status="200"}' in metrics


def test_page_uploads_a_photo_in_headless_chromium(image_service, tmp_path) -> None:
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("needs Debian's chromium and chromium-driver (`make setup` installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    _, url = image_service
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(_jpeg("chelsea"))
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(f"{url}/")
        browser.find_element(By.ID, "file").send_keys(str(photo))
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 30).until(
            expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, "tr.prediction"))
        )
        rows = browser.find_elements(By.CSS_SELECTOR, "tr.prediction")
        assert len(rows) == 5
        assert rows[0].find_elements(By.TAG_NAME, "td")[0].text in CAT_CLASSES
        timings = browser.find_element(By.ID, "timings").text
        assert "inference" in timings and "total" in timings
        assert browser.find_element(By.ID, "error").text == ""
    finally:
        browser.quit()


def test_image_dashboard_panels_return_live_series(image_service, tmp_path) -> None:
    """Prometheus scraping this Triton and the web API while photos are classified: every
    panel of the image dashboard has data."""
    from client.local.services import free_port
    from client.observe import stack

    server, url = image_service
    prometheus = stack.start_prometheus(
        free_port(),
        tmp_path / "prometheus",
        {
            "triton": [f"127.0.0.1:{server.ports.metrics}"],
            "image-api": [url.removeprefix("http://")],
        },
        interval_s=1,
    )
    try:
        photo = _jpeg("chelsea")
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            assert _upload(url, photo)[0] == 200
        wait_for_live_panels(prometheus.port, "image-api")
    finally:
        prometheus.stop()
