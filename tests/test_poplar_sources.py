"""The IPU sources without the Poplar SDK: the build refuses clearly, and both
C++ files are complete C++ that include the shared compute core.

The syntax check compiles custom_ops/poplar/*.cpp against declaration-only mock
headers (tests/poplar_mock/) that mirror the public Poplar/PopART 3.x signatures
the sources use, so a call with a wrong signature, a missing include or a
template that does not instantiate for float and half fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUSTOM_OPS = ROOT / "custom_ops"
POPLAR_SOURCES = CUSTOM_OPS / "poplar"
MOCK = Path(__file__).resolve().parent / "poplar_mock"

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _path_without_popc() -> str:
    """PATH with every directory that holds a popc removed."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if d and not (Path(d) / "popc").exists())


@needs_make
def test_make_ipu_without_sdk_names_the_sdk(tmp_path):
    env = dict(os.environ, PATH=_path_without_popc())
    result = subprocess.run(
        ["make", "-C", str(CUSTOM_OPS), "ipu", f"BUILD={tmp_path / 'build'}"],
        env=env, capture_output=True, text=True, timeout=20,
    )
    assert result.returncode != 0
    assert "Poplar SDK" in result.stderr
    assert "popc" in result.stderr
    assert not (tmp_path / "build").exists(), "nothing may be built without the SDK"


@needs_make
def test_make_cpu_explains_runtime_build():
    result = subprocess.run(["make", "-s", "-C", str(CUSTOM_OPS), "cpu"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0
    assert "cpu_ext.py" in result.stdout


@needs_gxx
@pytest.mark.parametrize("source", ["spike_codelets.cpp", "spike_matmul_op.cpp"])
def test_source_is_complete_cpp_against_sdk_signatures(source):
    result = subprocess.run(
        ["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
         f"-I{MOCK}", f"-I{CUSTOM_OPS / 'include'}", str(POPLAR_SOURCES / source)],
        capture_output=True, text=True, timeout=20,
    )
    assert result.returncode == 0, result.stderr


def test_codelets_take_their_arithmetic_from_the_shared_core():
    text = (POPLAR_SOURCES / "spike_codelets.cpp").read_text()
    assert '#include "spike_core.h"' in text
    for fn in ("build_neuron_index", "forward_rows", "grad_weight_rows",
               "grad_input_rows", "compact_row"):
        assert f"core::{fn}" in text, fn
    for vertex in ("SpikeMatmulForward", "SpikeMatmulGradWeight", "SpikeMatmulGradInput", "SpikeSelect"):
        for dtype in ("float", "half"):
            assert f"template class {vertex}<{dtype}>;" in text


def test_op_names_match_the_poptorch_call():
    text = (POPLAR_SOURCES / "spike_matmul_op.cpp").read_text()
    assert '{"ipu_snn", "SpikeMatmul", 1,' in text
    assert "addCodelets" in text
    for name in ("SpikeMatmulForward", "SpikeMatmulGradWeight", "SpikeMatmulGradInput", "SpikeSelect"):
        assert f'vertexName("{name}"' in text
