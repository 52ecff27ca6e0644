"""The IPU path's outer surface: every PopTorch/PopDist call, and every PopART call of the network op,
is one checked against the public 3.x sources (the tables in ipu_snn/ipu/README.md; the PopART names
are also checked against the vendored PopART headers), the POD16 config is valid, and ``device: ipu``
without the SDK stops at start-up with a message naming it."""

import importlib.util
import io
import re
import tokenize
from pathlib import Path

import pytest

from ipu_snn.cli import EXIT_USER_ERROR, main
from ipu_snn.config import load_config
from ipu_snn.ipu.options import micro_batch_size, samples_per_step

ROOT = Path(__file__).resolve().parents[2]
IPU = ROOT / "ipu_snn" / "ipu"

# What a call looks like in the code: PopTorch and PopDist module attributes (PopTorch also as a
# parameter or attribute named poptorch), methods of poptorch.Options (always named opts), of the
# executors (training_model, inference_model) and of TensorLocationSettings.
_CALL_PATTERNS = [
    re.compile(r"(?<!popdist\.)(?<![A-Za-z0-9])(poptorch\.(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*)"),
    re.compile(r"(?<![\w.])(popdist\.(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*)"),
    re.compile(r"(?<![\w.])(opts\.(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*)"),
    re.compile(r"(?<![A-Za-z0-9])((?:training|inference)_model\.[A-Za-z_]\w*)"),
    re.compile(r"(TensorLocationSettings\(\)\.[A-Za-z_]\w*)"),
]


def _code_without_comments_and_strings(path: Path) -> str:
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return " ".join(t.string for t in tokens if t.type not in (tokenize.COMMENT, tokenize.STRING))


def calls_in_code() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted(IPU.glob("*.py")):
        code = re.sub(r"\s*\.\s*", ".", _code_without_comments_and_strings(path))
        code = re.sub(r"\s*\(\s*", "(", code)
        code = re.sub(r"\(\s*\)", "()", code)
        for pattern in _CALL_PATTERNS:
            for call in pattern.findall(code):
                found.setdefault(call, set()).add(path.name)
    # modules (poptorch.optim, popdist.poptorch) and the Options sections are not calls of their own
    sections = ("poptorch.optim", "popdist.poptorch", "opts.Training", "opts.TensorLocations", "opts._Popart")
    return {c: files for c, files in found.items() if c not in sections}


def _fidelity_table() -> str:
    return (IPU / "README.md").read_text().split("## API fidelity", 1)[1].split("\n## ", 1)[0]


def checked_calls() -> set[str]:
    """The first column of the API-fidelity table, argument lists dropped."""
    table = _fidelity_table()
    calls = set()
    for line in table.splitlines():
        match = re.match(r"\|\s*`([^`]+)`\s*\|", line)
        if match:
            text = match.group(1)
            while re.search(r"\([^()]*\)", text):
                text = re.sub(r"\([^()]*\)", "#", text)
            calls.add(text.replace("#.", "().").rstrip("#"))
    return calls


def test_every_sdk_call_is_in_the_fidelity_table():
    found = calls_in_code()
    unchecked = {call: sorted(files) for call, files in found.items() if call not in checked_calls()}
    assert not unchecked, f"add these to the API-fidelity table of ipu_snn/ipu/README.md once checked: {unchecked}"


def test_the_scan_sees_the_calls():
    # a scanner that finds nothing would pass the test above vacuously
    found = calls_in_code()
    for call in ("poptorch.trainingModel", "poptorch.custom_op", "opts.Training.gradientAccumulation",
                 "popdist.getNumTotalReplicas", "training_model.detachFromDevice"):
        assert call in found, call
    assert "poptorch.Options" in checked_calls() and "poptorch.custom_op" in checked_calls()


OP_SOURCE = ROOT / "custom_ops" / "poplar" / "network_op.cpp"
POPART_HEADERS = ROOT / "tests" / "ipu_sdk_headers" / "popart"
# Calls of the C++ language and library, and of the op's own helpers, that the PopART headers also use.
_NOT_POPART = {"add", "back", "begin", "emplace_back", "empty", "end", "for", "if", "insert", "int", "move",
               "push_back", "size", "InIndex", "OutIndex", "Attributes"}


def _popart_declares(name: str, headers: str) -> bool:
    return re.search(rf"\b{name}\s*\(", headers) is not None or re.search(rf"\b(class|using|struct) {name}\b", headers)


def popart_calls_of_the_op() -> set[str]:
    """Names the op source calls (``name(`` or ``name<...>(``) that the vendored PopART headers declare."""
    source = re.sub(r"//.*", "", OP_SOURCE.read_text())
    headers = "\n".join(p.read_text() for p in POPART_HEADERS.rglob("*.hpp"))
    called = set(re.findall(r"\b(\w+)\s*(?:<[^<>()]*>)?\(", source))
    return {n for n in called - _NOT_POPART if re.search(rf"\b{n}\s*\(", headers)}


def checked_popart_calls() -> set[str]:
    table = _fidelity_table().split("**The PopART calls of the network op**", 1)[1]
    return set(re.findall(r"^\|\s*`(\w+)`\s*\|", table, re.M))


def test_every_popart_call_of_the_network_op_is_in_the_fidelity_table():
    found = popart_calls_of_the_op()
    # the scan sees the op's PopART surface: the registry calls, the grad-op wiring, the Opx calls
    assert {"createRemoteBuffer", "getRemoteBuffer", "getExchangeBundle", "gradInputInfo", "setOutTensor",
            "getInTensor", "setRemoteBufferInfo", "getInputCreatorType", "createInput", "mustExistBeforeCreate",
            "createsEquiv"} <= found
    unchecked = sorted(found - checked_popart_calls())
    assert not unchecked, f"add these PopART calls of network_op.cpp to ipu_snn/ipu/README.md's table: {unchecked}"


def test_every_row_of_the_popart_table_is_a_call_the_headers_declare():
    headers = "\n".join(p.read_text() for p in POPART_HEADERS.rglob("*.hpp"))
    source = OP_SOURCE.read_text()
    for name in checked_popart_calls():
        assert re.search(rf"\b{name}\b", source), f"{name}: listed but network_op.cpp does not use it"
        assert _popart_declares(name, headers), f"{name}: the vendored PopART 3.4 headers do not declare it"


def test_pod16_config_is_valid():
    cfg = load_config(ROOT / "configs" / "ipu_pod16.yaml")
    assert cfg.device == "ipu"
    # under poprun --num-replicas 16 the global batch splits into equal micro-batches
    micro = micro_batch_size(cfg, 16)
    assert micro * 16 * cfg.training.grad_accumulation == cfg.data.batch_size
    assert samples_per_step(cfg, 16) == cfg.data.batch_size * cfg.ipu.device_iterations


needs_no_sdk = pytest.mark.skipif(importlib.util.find_spec("poptorch") is not None,
                                  reason="PopTorch is installed here")


@needs_no_sdk
@pytest.mark.parametrize("device", ["ipu", "ipu-model"])
def test_ipu_without_poptorch_stops_at_start_naming_the_sdk(device, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(ROOT / "configs" / "tiny.yaml"), f"device={device}", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR
    assert "Poplar SDK" in err and f"device: {device}" in err and "Traceback" not in err
    assert not out.exists()  # nothing was started


def test_every_poplar_call_of_the_network_graph_has_a_checked_source():
    # The network op's graph functions call Poplar only; each call is in the mock table of
    # custom_ops/poplar/README.md with the public code it was checked against.
    poplar_sources = Path(__file__).resolve().parents[2] / "custom_ops" / "poplar"
    source = (poplar_sources / "network_graph.cpp").read_text()
    table = (poplar_sources / "README.md").read_text().split("## Poplar mock declarations", 1)[1]
    calls = {f"{name}" for name in re.findall(r"\bg_\.(\w+)(?:<\w+>)?\(", source)}
    calls |= {f"program::{name}" for name in re.findall(r"program::(\w+)\(", source)}
    calls |= {f"poplar::{name}" for name in re.findall(r"poplar::(concat)\(", source)}
    op = (poplar_sources / "network_op.cpp").read_text()  # the op's own Poplar calls
    calls |= {f"program::{name}" for name in re.findall(r"program::(\w+)\(", op)}
    calls |= set(re.findall(r"graph\(\)\.(\w+)\(", op))
    assert {"addRemoteBuffer", "program::Repeat", "program::Copy", "addConstant"} <= calls
    missing = sorted(c for c in calls if c.split("::")[-1] not in table)
    assert not missing, f"add these Poplar calls to custom_ops/poplar/README.md's mock table with a source: {missing}"
