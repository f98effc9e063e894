"""TensorRT engine path without a GPU: command construction, config generation, the skip
path. The real build is ``tests/integration/test_tensorrt_build.py``."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2

from build_engines.model_config import parse
from build_engines.tensorrt import POLYGRAPHY, engine_command, tensorrt_availability
from build_engines.triton_config import fallback_config, primary_config
from python_backend.fraud.contract import MAX_BATCH_SIZE, PRIMARY, TABULAR


def _polygraphy_run_flags() -> set[str]:
    help_text = subprocess.run(
        [POLYGRAPHY, "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(re.findall(r"(--[a-z0-9-]+)", help_text))


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_command_uses_only_flags_polygraphy_knows(precision: str) -> None:
    cmd = engine_command(Path("m.onnx"), Path("model.plan"), PRIMARY, precision)
    known = _polygraphy_run_flags()
    unknown = [arg for arg in cmd if arg.startswith("--") and arg not in known]
    assert not unknown, f"polygraphy run does not accept {unknown}"
    assert cmd[:3] == [POLYGRAPHY, "run", "m.onnx"]
    assert {"--onnxrt", "--trt", "--save-engine"} <= set(cmd)
    assert ("--int8" in cmd) == (precision == "int8")


def test_engine_profile_spans_batch_one_to_max() -> None:
    cmd = engine_command(Path("m.onnx"), Path("p.plan"), PRIMARY, "fp16")

    def shapes(flag: str) -> list[str]:
        start = cmd.index(flag) + 1
        return cmd[start : start + len(PRIMARY.inputs)]

    width = TABULAR.dims[0]
    assert shapes("--trt-min-shapes") == [
        f"TABULAR:[1,{width}]",
        "SEQUENCE:[1,5,4]",
        "CATEGORICAL:[1,3]",
    ]
    assert shapes("--trt-max-shapes")[0] == f"TABULAR:[{MAX_BATCH_SIZE},{width}]"
    assert "CATEGORICAL:[0,6]" in cmd, "embedding indices must stay inside the vocabulary"


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        engine_command(Path("m.onnx"), Path("p.plan"), PRIMARY, "int4")


def test_tensorrt_config_serves_the_plan_on_the_gpu() -> None:
    config = primary_config("tensorrt")
    assert 'platform: "tensorrt_plan"' in config and "KIND_GPU" in config
    assert "backend" not in config
    batching = parse(config).dynamic_batching
    assert list(batching.preferred_batch_size) == [16, 64]
    policy = batching.default_queue_policy
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    assert policy.allow_timeout_override
    assert policy.default_timeout_microseconds > 0
    fallback = fallback_config("tensorrt")
    assert 'backend: "onnxruntime"' in fallback and "KIND_CPU" in fallback


def test_cpu_config_runs_onnx_runtime_in_the_python_backend() -> None:
    config = primary_config("cpu")
    assert 'backend: "python"' in config and "KIND_CPU" in config
    assert "tensorrt_plan" not in config and "KIND_GPU" not in config
    assert 'backend: "python"' in fallback_config("cpu")
    with pytest.raises(ValueError, match="variant"):
        primary_config("tpu")


def test_availability_explains_itself() -> None:
    availability = tensorrt_availability()
    assert availability.reason
    if not availability.ok:
        assert (
            "TensorRT" in availability.reason
            or "GPU" in availability.reason
            or "driver" in availability.reason
        )


@pytest.mark.parametrize("variant", ["cpu", "tensorrt"])
def test_generated_configs_parse_as_triton_model_configs(variant: str) -> None:
    """Each generated config is a valid ``inference.ModelConfig`` (Triton's own protobuf
    schema, shipped with tritonclient), with the contract's tensors."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from python_backend.fraud.contract import FALLBACK

    for contract, text in (
        (PRIMARY, primary_config(variant)),
        (FALLBACK, fallback_config(variant)),
    ):
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        assert config.name == contract.name
        assert config.max_batch_size == MAX_BATCH_SIZE
        assert [i.name for i in config.input] == [s.name for s in contract.inputs]
        assert [tuple(i.dims) for i in config.input] == [s.dims for s in contract.inputs]
        assert [o.name for o in config.output] == [s.name for s in contract.outputs]
    primary = text_format.Parse(primary_config(variant), model_config_pb2.ModelConfig())
    policy = primary.dynamic_batching.default_queue_policy
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    assert policy.allow_timeout_override
