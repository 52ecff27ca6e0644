"""The IPU path on PopTorch 3.4's torch (2.0.1), which lacks ``torch.library.custom_op`` and ``torch.compiler``:
a dense IPU training run must not need them. Run in a subprocess with both taken away, as on torch 2.0.1,
and the PopTorch stand-in as poptorch."""

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SCRIPT = r"""
import sys, tempfile
from pathlib import Path

import torch
import torch.library

# torch 2.0.1 has neither: a module that uses them at import fails there
del torch.library.custom_op
sys.modules["torch.compiler"] = None
del torch.compiler
sys.path.insert(0, sys.argv[1])
import poptorch_standin
sys.modules["poptorch"] = poptorch_standin.make_poptorch()
from test_ipu_trainer import tiny
from ipu_snn.train import train

with tempfile.TemporaryDirectory() as out:
    summary = train(tiny(training={"epochs": 1}), Path(out) / "run")
assert not {"ipu_snn.ops.library", "ipu_snn.neuron.ops", "ipu_snn.ops.spike_matmul"} & set(sys.modules)
print("trained", summary["train_loss"])
"""


def test_dense_ipu_training_imports_no_torch_2_4_custom_ops(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(TESTS)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained" in result.stdout
