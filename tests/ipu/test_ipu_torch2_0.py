"""The IPU path on PopTorch 3.4's torch (2.0.1), which lacks ``torch.library.custom_op``: an IPU training
run (the network op, on the stand-in) must not import the modules that define custom ops. Run in a subprocess with those modules made
unimportable, as they are on torch 2.0.1, and the PopTorch stand-in as poptorch."""

import json
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SCRIPT = r"""
import _ctypes, os, sys, tempfile
from pathlib import Path

os.environ["IPU_SNN_IPU_OPS"] = _ctypes.__file__  # a loadable library where the op library would be

# the modules that register torch.library custom ops (torch >= 2.4) when imported, and those importing them
CUSTOM_OPS = {"ipu_snn.ops.library", "ipu_snn.ops.spikes", "ipu_snn.ops.product",
              "ipu_snn.neuron.ops"}

class NoCustomOps:
    def find_spec(self, name, path=None, target=None):
        if name in CUSTOM_OPS:
            raise ImportError(f"{name} is not importable on torch 2.0.1")
        return None

sys.meta_path.insert(0, NoCustomOps())
sys.path.insert(0, sys.argv[1])
import poptorch_standin
sys.modules["poptorch"] = poptorch_standin.make_poptorch()
import json
from ipu_snn.config import validate_config
from ipu_snn.training import train

with tempfile.TemporaryDirectory() as out:
    summary = train(validate_config(json.loads(sys.argv[2])), Path(out) / "run")
assert not CUSTOM_OPS & set(sys.modules)
print("trained", summary["train_loss"])
"""


def test_dense_ipu_training_imports_no_torch_2_4_custom_ops(tmp_path, tiny_raw):
    raw = {**tiny_raw, "training": {**tiny_raw["training"], "epochs": 1}}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(TESTS), json.dumps(raw)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained" in result.stdout
