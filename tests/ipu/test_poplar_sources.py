"""The IPU sources without the Poplar SDK: the build refuses clearly, every C++
file is complete C++ against the SDK's headers, and the vertices compute the
right numbers when run tile by tile and worker by worker as the Opx lay them
out.

The PopART op sources (*_op.cpp) are compiled with the Makefile's own flags
(`make print-op-cxxflags`) against the real public PopART 3.4, PopLibs and
poprithms headers, vendored in tests/ipu_sdk_headers/; only Poplar's own headers,
which are not public, come from tests/poplar_mock/. The codelets include only
Poplar's Vertex.hpp and HalfFloat.hpp and are compiled against the mock. So a
call with a wrong signature, a missing flag or include, or a template that does
not instantiate for float and half fails here.

The behavioural check builds tests/poplar_harness/codelet_harness.cpp, which
includes the codelet sources as they are and runs each vertex on the host (the
mock's vertex fields are a pointer and a size, as Poplar's vertex state is),
for a column split over 2-3 tiles with boundaries inside a packed spike byte,
stitching the tiles' outputs as grow() maps them. A MultiVertex runs with every
worker id, and the harness fails if two workers write the same 32-bit word or
the result depends on their order. Its results are compared with references
computed here in torch (autograd through ipu_snn.neuron.reference),
so a wrong field convention, stride, split, worker share or bit offset in the
glue fails. The mock's half is a float, so half rounding is not emulated: the
half instantiations are checked for the same glue, not precision.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from ipu_snn.neuron.reference import step as reference_step
from ipu_snn.neuron.spec import RESET_CODES, NeuronSpec
from ipu_snn.neuron.surrogates import SURROGATES as SURROGATE_TABLE
from ipu_snn.neuron.surrogates import surrogate as surrogate_row
from ipu_snn.ipu.emulator_backend import split_even

ROOT = Path(__file__).resolve().parents[2]
CUSTOM_OPS = ROOT / "custom_ops"
POPLAR_SOURCES = CUSTOM_OPS / "poplar"
MOCK = Path(__file__).resolve().parents[1] / "poplar_mock"
SDK_HEADERS = Path(__file__).resolve().parents[1] / "ipu_sdk_headers"
SDK_INCLUDE_DIRS = [SDK_HEADERS / "popart", SDK_HEADERS / "poplibs", SDK_HEADERS / "poprithms"]
HARNESS = Path(__file__).resolve().parents[1] / "poplar_harness" / "codelet_harness.cpp"
CODELETS = ["neuron_codelets.cpp", "network_codelets.cpp"]
OPS = ["network_op.cpp"]

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

# Codes of neuron_core.h's enums (Reset, SurrogateKind), as the Opx pass them: the spec's and the table's.
RESETS = RESET_CODES
SURROGATES = {name: row.code for name, row in SURROGATE_TABLE.items()}


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
def test_make_ipu_builds_every_source_into_one_codelet_file_and_one_library():
    # A dry run with a stand-in popc shows the commands without running them.
    result = subprocess.run(["make", "-n", "-C", str(CUSTOM_OPS), "ipu", "POPC=true", "BUILD=/nonexistent"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    commands = result.stdout.replace("\\\n", " ").splitlines()  # join continued lines
    popc = [line for line in commands if line.startswith("true ")]
    cxx = [line for line in commands if "-shared" in line]
    assert len(popc) == 1 and len(cxx) == 1, result.stdout
    assert all(name in popc[0] for name in CODELETS)
    assert "network_op.cpp" in cxx[0] and "network_graph.cpp" in cxx[0] and "-lpopart" in cxx[0]
    assert "_op.cpp" not in cxx[0].replace("network_op.cpp", "")  # one op library: the network op


@needs_make
def test_make_cpu_explains_runtime_build():
    result = subprocess.run(["make", "-s", "-C", str(CUSTOM_OPS), "cpu"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0
    assert "cpu_ext.py" in result.stdout


@needs_gxx
def test_network_graph_functions_compile_against_poplar_alone():
    # Plain functions over a poplar::Graph: Poplar's headers (the mock's) and the shared cores, no PopART.
    result = subprocess.run(
        ["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", f"-I{MOCK}",
         f"-I{CUSTOM_OPS / 'include'}", str(POPLAR_SOURCES / "network_graph.cpp")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "popart" not in (POPLAR_SOURCES / "network_graph.cpp").read_text()


@needs_gxx
@pytest.mark.parametrize("source", CODELETS)
def test_codelets_are_complete_cpp_against_the_vertex_api(source):
    result = subprocess.run(
        # -Wdouble-promotion: a float that meets a double on the tile path is software arithmetic there
        ["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Wdouble-promotion", "-Werror",
         f"-I{MOCK}", f"-I{CUSTOM_OPS / 'include'}", str(POPLAR_SOURCES / source)],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr


def _op_cxxflags() -> list[str]:
    result = subprocess.run(["make", "-s", "-C", str(CUSTOM_OPS), "print-op-cxxflags"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def _compile_op(source: str, flags: list[str], *extra: str) -> subprocess.CompletedProcess:
    """g++ -fsyntax-only in custom_ops/ (where the Makefile's -I paths point), the
    vendored SDK headers as system headers (their own warnings are not ours), Poplar mocked."""
    system = [arg for d in SDK_INCLUDE_DIRS for arg in ("-isystem", str(d))]
    return subprocess.run(
        ["g++", *flags, "-fsyntax-only", "-Wall", "-Wextra", "-Werror", *system, f"-I{MOCK}", *extra,
         str(POPLAR_SOURCES / source)],
        cwd=CUSTOM_OPS, capture_output=True, text=True, timeout=60,
    )


@needs_gxx
@needs_make
@pytest.mark.parametrize("source", OPS)
def test_op_source_compiles_with_the_makefile_flags_against_real_popart_headers(source):
    flags = _op_cxxflags()
    assert "-DONNX_NAMESPACE=onnx" in flags
    result = _compile_op(source, flags)
    assert result.returncode == 0, result.stderr


@needs_gxx
@needs_make
def test_real_popart_headers_need_the_onnx_namespace_flag():
    # The check above is only worth something if the real headers catch what the mock did not.
    flags = [f for f in _op_cxxflags() if not f.startswith("-DONNX_NAMESPACE")]
    result = _compile_op(OPS[0], flags)
    assert result.returncode != 0 and "ONNX_NAMESPACE" in result.stderr


@needs_gxx
@needs_make
def test_vendored_sdk_headers_are_exactly_what_the_op_sources_include():
    used: set[Path] = set()
    for source in OPS:
        result = _compile_op(source, _op_cxxflags(), "-M")
        assert result.returncode == 0, result.stderr
        deps = result.stdout.replace("\\\n", " ").split()
        used |= {Path(d).resolve() for d in deps if d.endswith((".hpp", ".h"))}
    vendored = {p.resolve() for p in SDK_HEADERS.rglob("*") if p.suffix in (".hpp", ".h")}
    assert vendored <= used, f"vendored but never included: {sorted(map(str, vendored - used))}"
    mocked = {p.resolve() for p in MOCK.rglob("*") if p.suffix in (".hpp", ".h")}
    assert used & mocked, "Poplar's headers come from the mock"
    for top in ("popart", "poplibs", "poprithms"):
        assert (SDK_HEADERS / top / "LICENSE.txt").is_file(), top


def test_sources_use_only_sdk_headers():
    # The mock's field binder is a test device, not SDK API.
    for path in POPLAR_SOURCES.iterdir():
        if path.suffix in (".cpp", ".hpp", ".h"):
            assert "poplar_mock" not in path.read_text(), path.name


# source: (core header, core functions it calls, vertices: base class)
VERTICES = {
    "neuron_codelets.cpp": ("neuron_core.h",
                            ("neuron_forward", "pack_bits", "repack_bits", "neuron_backward_of"),
                            {"NeuronForward": "MultiVertex", "PackSpikes": "MultiVertex",
                             "NeuronBackward": "MultiVertex"}),
}


@pytest.mark.parametrize("source", sorted(VERTICES))
def test_codelets_take_their_arithmetic_from_the_shared_core(source):
    header, functions, vertices = VERTICES[source]
    text = (POPLAR_SOURCES / source).read_text()
    assert f'#include "{header}"' in text
    for fn in functions:
        assert re.search(rf"core::{fn}\b", text), fn
    for vertex, base in vertices.items():
        assert f"class {vertex} : public poplar::{base} {{" in text, vertex
        if base == "MultiVertex":
            assert re.search(rf"class {vertex} .*?bool compute\(unsigned worker\)", text, re.S), vertex
        for dtype in ("float", "half"):
            assert f"template class {vertex}<{dtype}>;" in text, (vertex, dtype)
    assert len(re.findall(r"class \w+ : public poplar::", text)) == len(vertices)


def test_tile_path_has_no_64_bit_or_double_arithmetic():
    # The codelets pass the core unsigned indices and float scalars (a tile runs
    # 64-bit division and double in software); the core's functions take the types
    # they are given, so a hard-wired int64_t or double in the codelets is the bug.
    for source in CODELETS + ["worker_share.hpp"]:
        code = re.sub(r"//.*", "", (POPLAR_SOURCES / source).read_text())
        for word in ("int64_t", "double", "long"):
            assert not re.search(rf"\b{word}\b", code), (source, word)


def test_op_names_match_the_poptorch_calls():
    op = (POPLAR_SOURCES / "network_op.cpp").read_text()
    calls = (ROOT / "ipu_snn" / "ipu" / "custom_ops.py").read_text()
    # Network: bits, at least one layer's three parameters and the readout's three; its grad op NetworkGrad
    assert '{"ipu_snn", "Network", 1, {7, -1}, -1}' in op and '"Network", DOMAIN, DOMAIN_VERSION' in calls
    assert '{"ipu_snn", "NetworkGrad", 1, {9, -1}, -1}' in op
    assert "popart::OpCreator<NetworkOp>" in op and "NetworkOp::getGradOps" in op
    for creator in ("OpxCreator<NetworkOpx>", "OpxCreator<NetworkGradOpx>"):
        assert creator in op
    # every attribute the Python call sets is declared and read
    for name in re.findall(r'"(\w+)": ', calls.split("def attributes", 1)[1].split("def carried", 1)[0]):
        assert f'{{"{name}", {{"*"}}}}' in op and f'"{name}"' in op.split("network::NetworkSpec readSpec", 1)[1], name
    # thin wrappers: each Opx builds its pass with buildNetwork over PopART's tensors and adds its program;
    # nothing is copied into the op's graph (no second copy of the inputs or the carried state)
    for opx, pass_, program in (("class NetworkOpx ", "Forward", "net.forward"),
                                ("class NetworkGradOpx ", "Backward", "net.backward")):
        body = op.split(opx, 1)[1].split("\n};\n", 1)[0]
        grow = body.split("void grow(", 1)[1].split("\n  }\n", 1)[0]
        assert f"network::buildNetwork(graph(), spec, network::Pass::{pass_}, given, remote)" in grow, opx
        assert f"prog.add({program});" in grow and "given.inputs = opInputs(" in grow, opx
    assert "Copy(" not in op and "getInTensor(first + " in op
    # the forward Opx lays out its inputs with the graph's own layout function
    forward = op.split("class NetworkOpx ", 1)[1].split("\n};\n", 1)[0]
    assert "InputCreatorType::CanCreate" in forward and "network::createInput(graph()," in forward
    # the carried state goes out of the op and back into its grad op (GradOpInType::Out)
    assert "popart::GradOpInType::Out" in op and "net.carried" in op
    # the remote buffers are shared through the lowering's registry, as PopART's remote exchange does
    assert "bundle().createRemoteBuffer(graph(), id, {row})" in op and "bundle().getRemoteBuffer(id).first" in op
    assert "getExchangeBundle()" in op
    # codelets are added by every Opx's constructor (as PopTorch's custom ops do), never remembered per graph
    ctor = op.split("NetworkOpxBase(popart::Op *op, popart::popx::Devicex *devicex)", 1)[1].split("\n  }", 1)[0]
    assert "graph().addCodelets(" in ctor and "static" not in ctor


def _opx_classes(code: str) -> dict[str, tuple[list[str], str]]:
    """Each class of a source: its base classes and its body (comments dropped)."""
    code = re.sub(r"//.*", "", code)
    classes = {}
    for match in re.finditer(r"\bclass (\w+)\s*:\s*([^{;]*)\{", code):
        bases = re.findall(r"(?:public|protected|private)\s+([\w:]+)", match.group(2))
        classes[match.group(1)] = ([b.split("::")[-1] for b in bases], code[match.end():].split("\n};", 1)[0])
    return classes


def test_every_opx_that_creates_inputs_says_what_must_exist_and_what_it_equals():
    # PopART asks every creator candidate what must exist before it creates (IrLowering's
    # getInitTensorCreators, removeNonDependencyFreeCreators) and Opx's defaults of that and of
    # createsEquiv throw (graphcore/popart willow/src/popx/opx.cpp at sdk/poplar/3.4.0), so an Opx that
    # answers CanCreate must override both, itself or through a base class in its file.
    creators = []
    for path in sorted(POPLAR_SOURCES.glob("*.cpp")):
        classes = _opx_classes(path.read_text())

        def bodies(name: str) -> str:
            bases, body = classes.get(name, ([], ""))
            return body + "".join(bodies(b) for b in bases)

        for name in classes:
            body = bodies(name)
            if re.search(r"InputCreatorType::CanCreate\b", body):
                creators.append(name)
                for method in ("mustExistBeforeCreate", "createsEquiv"):
                    assert re.search(rf"\b{method}\s*\([^)]*\)\s*const\s+(?:final|override)\b", body), \
                        f"{path.name}: {name} returns CanCreate but does not override {method}"
    assert "NetworkOpx" in creators  # the scan sees the network op's creator


# ----------------------------------------------------------------- behaviour --


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    exe = tmp_path_factory.mktemp("poplar_harness") / "codelet_harness"
    result = subprocess.run(
        ["g++", "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{MOCK}",
         f"-I{CUSTOM_OPS / 'include'}", f"-I{POPLAR_SOURCES}", str(HARNESS), "-o", str(exe)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return exe


def _run(exe: Path, tokens: list) -> list[np.ndarray]:
    text = " ".join(str(t) for t in tokens)
    result = subprocess.run([str(exe)], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return [np.array(line.split(), dtype=np.float64) for line in result.stdout.splitlines()]


def _values(t: torch.Tensor) -> list[str]:
    # float32 values printed exactly, so harness and reference see the same inputs
    return [repr(float(x)) for x in t.to(torch.float32).flatten().tolist()]


def test_split_is_the_emulators_split_even(harness):
    pairs = [(n, parts) for n in range(0, 40, 3) for parts in range(1, 9)]
    lines = _run(harness, ["split", len(pairs)] + [x for p in pairs for x in p])
    for (n, parts), line in zip(pairs, lines):
        assert [tuple(r) for r in line.astype(int).reshape(-1, 2).tolist()] == split_even(n, parts), (n, parts)


def test_worker_shares_partition_the_range_in_whole_words(harness):
    triples = [(n, workers, grain) for n in (0, 1, 5, 12, 13, 37, 100) for workers in (1, 6) for grain in (1, 2, 4)]
    lines = _run(harness, ["workers", len(triples)] + [x for t in triples for x in t])
    for (n, workers, grain), line in zip(triples, lines):
        spans = line.astype(int).reshape(-1, 2).tolist()
        assert len(spans) == workers
        assert spans[0][0] == 0 and spans[-1][1] == n, (n, workers, grain, spans)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), spans  # contiguous, in order
        for begin, end in spans:
            if begin < end:  # an empty share sits at n
                assert begin % grain == 0 and (end % grain == 0 or end == n), (grain, spans)
        grains = [-(-(e - b) // grain) for b, e in spans]
        assert max(grains) - min(grains) <= 1, spans  # balanced to a grain


@pytest.mark.parametrize("which", ["shared", "ordered"])
def test_harness_rejects_workers_that_share_a_word_or_depend_on_order(harness, which):
    result = subprocess.run([str(harness)], input=f"selfcheck {which}", capture_output=True, text=True, timeout=30)
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert ("write word" if which == "shared" else "worker order") in result.stderr


# Tolerances against float64 references: float32 arithmetic, and for half the
# 11-bit storage of outputs (and of d, which the backward reads), as the mock's
# half rounds like the IPU's.
TOLERANCE = {"float": 1e-5, "half": 4e-3}


def _as_stored(t: torch.Tensor, dtype: str) -> torch.Tensor:
    """t as the harness holds it in that type (it reads float32 and converts), in float64."""
    return (t.to(torch.float16) if dtype == "half" else t.to(torch.float32)).double()


def _reference_step(alif, reset, surrogate, threshold, adapt, scale, current, v_prev, a_prev, beta, rho,
                    grad_z, grad_v, grad_a):
    """Forward outputs, d and input gradients by autograd through ipu_snn.neuron.reference, in float64."""
    cur, vp, ap = (t.double().requires_grad_(True) for t in (current, v_prev, a_prev))
    spec = NeuronSpec("alif" if alif else "lif", threshold, adapt if alif else 0.0, reset, surrogate, scale)
    v_new, a_new, z = reference_step(spec, beta.double(), rho.double() if alif else None, vp, ap if alif else None,
                                     cur)
    if alif:
        x = beta.double() * vp + cur - (threshold + adapt * rho.double() * ap)
    else:
        a_new = torch.zeros_like(v_new)
        x = beta.double() * vp + cur - threshold
    loss = (grad_z.double() * z).sum() + (grad_v.double() * v_new).sum() + (grad_a.double() * a_new).sum()
    grads = torch.autograd.grad(loss, (cur, vp, ap), allow_unused=True)
    grads = [torch.zeros_like(cur) if gr is None else gr for gr in grads]
    return [t.detach() for t in (v_new, a_new, z, surrogate_row(surrogate).grad(x.detach(), scale))], grads


def _check_neuron_step(harness, kind, reset, surrogate, neurons_, tiles, missing=()):
    """Runs the neuron vertices through the harness and compares every output with autograd.
    `missing`: gradients (z, v, a) that arrive as zeros (an output nothing downstream reads):
    the harness gets zeros there, and the reference leaves those outputs out of the loss."""
    # 13 samples share out over 6 workers unevenly, by elements forward and by (pairs
    # of, for half) rows backward.
    g = torch.Generator().manual_seed(len(kind) * 100 + RESETS[reset] * 10 + SURROGATES[surrogate] + neurons_)
    batch, alif = 13, kind == "alif"
    threshold, adapt, scale = 0.8, (1.5 if alif else 0.0), 4.0
    shape = (batch, neurons_)
    current, v_prev = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    a_prev = torch.rand(shape, generator=g) * 0.5
    beta = torch.rand(neurons_, generator=g) * 0.5 + 0.45
    rho = torch.rand(neurons_, generator=g) * 0.5 + 0.45
    grads_in = {name: torch.randn(shape, generator=g) for name in ("z", "v", "a")}
    if not alif:
        grads_in["a"] = torch.zeros(shape)  # LIF has no a to take a gradient from
    for name in missing:
        grads_in[name] = torch.zeros(shape)
    inputs = (current, v_prev, a_prev, beta, rho, grads_in["z"], grads_in["v"], grads_in["a"])

    out = _run(harness, ["neuron", batch, neurons_, tiles, int(alif), RESETS[reset], SURROGATES[surrogate],
                         threshold, adapt, scale, *(x for t in inputs for x in _values(t))])
    assert len(out) == 16

    names = ("v_new", "a_new", "z", "d", "bits", "grad_current", "grad_v_prev", "grad_a_prev")
    for offset, dtype in ((0, "float"), (8, "half")):
        # The reference starts from the inputs as the harness holds them in that type.
        (v_new, a_new, z, d), grads = _reference_step(alif, reset, surrogate, threshold, adapt, scale,
                                                      *(_as_stored(t, dtype) for t in inputs))
        bits = np.packbits(z.numpy().astype(np.uint8), axis=1, bitorder="little")
        assert z.sum() > 0 and z.sum() < z.numel(), "the case must have spikes and silent neurons"
        wants = (v_new, a_new, z, d, torch.from_numpy(bits), *grads)
        tol = TOLERANCE[dtype]
        for name, want, got in zip(names, wants, out[offset:offset + 8]):
            exact = name in ("z", "bits")
            np.testing.assert_allclose(got.reshape(want.shape), want.double().numpy(), rtol=0 if exact else tol,
                                       atol=0 if exact else tol,
                                       err_msg=f"{name} ({kind}, {reset}, {surrogate}, {dtype}, missing {missing})")


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("reset", sorted(RESETS))
@pytest.mark.parametrize("kind", ["lif", "alif"])
@pytest.mark.parametrize("neurons_,tiles", [(21, 3), (5, 3)])
def test_neuron_vertices_over_a_column_split_match_autograd(harness, kind, reset, surrogate, neurons_, tiles):
    # 21 over 3 tiles puts boundaries at neurons 7 and 14, inside packed bytes;
    # 5 over 3 leaves tiles that own no byte start.
    _check_neuron_step(harness, kind, reset, surrogate, neurons_, tiles)


@pytest.mark.parametrize("kind,missing", [("alif", ("v", "a")), ("alif", ("z",)), ("lif", ("v",))])
def test_neuron_backward_with_gradients_popart_leaves_out(harness, kind, missing):
    # The last step (no gradient reaches v_new or a_new), or a z nothing reads.
    _check_neuron_step(harness, kind, "subtract", "fast_sigmoid", 21, 3, missing)
