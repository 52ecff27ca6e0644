"""Builds and loads the CPU kernels (custom_ops/cpu/) as a torch C++ extension.

The extension is compiled on first use with ``torch.utils.cpp_extension.load``
and cached, so only the first run on a machine pays the build (about half a
minute). It registers private ops under ``torch.ops.ipu_snn_cpu``; the public
``ipu_snn::`` ops call them through the backend registry.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
from pathlib import Path

import torch

from ipu_snn.errors import DeviceError

EXTENSION_NAME = "ipu_snn_cpu_ops"

#: Environment variable that overrides where the compiled extension is cached.
BUILD_DIR_ENV = "IPU_SNN_EXT_DIR"

#: Sources live next to the package in a source checkout (custom_ops/ is not
#: Python and is not copied into a wheel).
CUSTOM_OPS_DIR = Path(__file__).resolve().parents[2] / "custom_ops"

# Built for the host CPU: the gathers are bound by vector loads, and AVX2/AVX-512
# roughly double their throughput over the baseline x86-64 target. -fopenmp is
# required, not an optimisation: at::parallel_for is an inline template whose
# OpenMP pragmas compile to a serial loop without it.
_CFLAGS = ["-O3", "-march=native", "-std=c++17", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]


#: The shared compute cores the sources include (also compiled into the Poplar codelets).
HEADERS = ("spike_core.h", "neuron_core.h")


def _sources() -> list[Path]:
    sources = sorted((CUSTOM_OPS_DIR / "cpu").glob("*.cpp"))
    headers = [CUSTOM_OPS_DIR / "include" / name for name in HEADERS]
    if not sources or not all(header.is_file() for header in headers):
        raise DeviceError(
            f"The cpu spike-matmul backend builds its kernels from {CUSTOM_OPS_DIR}, "
            "which is missing or incomplete. Install ipu_snn from a source checkout "
            "(pip install -e .) or use backend='reference'."
        )
    return sources


def _check_toolchain() -> None:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise DeviceError(
            f"The cpu spike-matmul backend compiles a C++ extension, but the C++ "
            f"compiler '{compiler}' was not found. Install one (e.g. apt-get install g++), "
            "point CXX at it, or use backend='reference'."
        )
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        raise DeviceError(
            "The cpu spike-matmul backend builds with ninja, which was not found. "
            "Install it (pip install ninja) or use backend='reference'."
        )


def build_directory() -> Path:
    """Where the compiled extension is cached.

    The directory is keyed by torch version, architecture and the host's CPU
    flags, because the build is ABI-bound to torch and uses -march=native: a
    home directory shared by different machines must not share one binary.
    """
    root = os.environ.get(BUILD_DIR_ENV)
    base = Path(root) if root else Path.home() / ".cache" / "ipu_snn" / "ext"
    key = hashlib.sha256(
        f"{torch.__version__}|{platform.machine()}|{_cpu_flags()}".encode()
    ).hexdigest()[:12]
    return base / f"{EXTENSION_NAME}-{key}"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


@functools.cache
def load_cpu_ops():
    """Compile (once) and load the extension; returns ``torch.ops.ipu_snn_cpu``."""
    sources = _sources()
    _check_toolchain()
    from torch.utils.cpp_extension import load

    build_dir = build_directory()
    build_dir.mkdir(parents=True, exist_ok=True)
    load(
        name=EXTENSION_NAME,
        sources=[str(s) for s in sources],
        extra_include_paths=[str(CUSTOM_OPS_DIR / "include")],
        extra_cflags=_CFLAGS,
        extra_ldflags=_LDFLAGS,
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.ipu_snn_cpu
