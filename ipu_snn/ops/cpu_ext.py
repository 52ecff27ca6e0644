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
import sys
import tempfile
import time
from pathlib import Path

import torch

from ipu_snn.errors import DeviceError
from ipu_snn.files import LockBusy, held_lock, honour_umask

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

    The directory is keyed by torch version, architecture, the host's CPU flags
    and the sources with their compile flags: the build is ABI-bound to torch and
    uses -march=native, so a home directory shared by different machines must not
    share one binary, and a folder, once in place, never changes.
    """
    root = os.environ.get(BUILD_DIR_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "ipu_snn" / "ext"
    key = hashlib.sha256(
        f"{torch.__version__}|{platform.machine()}|{_cpu_flags()}|{_CFLAGS}|{_LDFLAGS}".encode()
        + _sources_digest()
    ).hexdigest()[:12]
    return base / f"{EXTENSION_NAME}-{key}"


def _sources_digest() -> bytes:
    files = sorted((CUSTOM_OPS_DIR / "cpu").glob("*.cpp")) + sorted((CUSTOM_OPS_DIR / "include").glob("*.h"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.digest()


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


#: How long a run waits for another process's build before giving up (a build takes about 30 s).
BUILD_WAIT_S = 600.0


@functools.cache
def load_cpu_ops():
    """Compile (once per machine) and load the extension; returns ``torch.ops.ipu_snn_cpu``."""
    sources = _sources()
    final = build_directory()
    library = final / f"{EXTENSION_NAME}.so"
    if library.is_file() or not _build(sources, final, library):
        torch.ops.load_library(str(library))
    return torch.ops.ipu_snn_cpu


def _build(sources: list[Path], final: Path, library: Path) -> bool:
    """Build into a temporary folder and rename it to ``final``, holding a lock that dies with this
    process, so a build killed at any moment leaves neither a stale lock nor a half-built folder in
    place. Returns whether this process built (and so already loaded) the library."""
    _check_toolchain()
    lock = final.with_name(final.name + ".lock")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with held_lock(lock, wait_s=BUILD_WAIT_S, on_wait=lambda holder: _say(
                f"waiting for {holder}, which is building the C++ kernels in {final.parent}")):
            if library.is_file():  # another process built it while this one waited
                return False
            for leftover in final.parent.glob(f".{final.name}.build-*"):  # a killed build's: no live one now
                shutil.rmtree(leftover, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.build-", dir=final.parent))
            _say("building the C++ kernels (first use, about 30 s)")
            start = time.perf_counter()
            from torch.utils.cpp_extension import load

            load(
                name=EXTENSION_NAME,
                sources=[str(s) for s in sources],
                extra_include_paths=[str(CUSTOM_OPS_DIR / "include")],
                extra_cflags=_CFLAGS,
                extra_ldflags=_LDFLAGS,
                build_directory=str(tmp),
                is_python_module=False,
                verbose=False,
            )
            honour_umask(tmp, directory=True)
            tmp.rename(final)
            _say(f"built the C++ kernels in {time.perf_counter() - start:.0f} s, cached in {final}")
            return True
    except LockBusy as busy:
        raise DeviceError(
            f"waited {BUILD_WAIT_S:g} s for {busy.holder} to finish building the C++ kernels ({lock}); "
            f"stop that process if it is stuck, or point ${BUILD_DIR_ENV} at another folder"
        ) from None
    except OSError as exc:
        raise DeviceError(
            f"cannot write the C++ kernel cache in {final.parent} ({exc.strerror}); point "
            f"${BUILD_DIR_ENV} at a writable folder"
        ) from None


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
