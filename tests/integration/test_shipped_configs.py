"""Every shipped config (configs/*.yaml) validates, and trains for an epoch at a small size through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ipu_snn.cli import main
from ipu_snn.config import SyntheticConfig, load_config
from ipu_snn.data.recordings import write_recordings
from ipu_snn.data.synthetic import generate
from ipu_snn.devices import POPTORCH_DEVICES, device

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
#: the data a config names that a test cannot have: a data.path for the validation alone
PATHS = {"nmnist": "data.path=/data/nmnist"}


def test_configs_are_shipped():
    assert len(CONFIGS) >= 8, CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_validate(path):
    raw = yaml.safe_load(path.read_text())
    load_config(path, [PATHS[raw["data"]["dataset"]]] if raw["data"]["dataset"] in PATHS else [])


def small(path: Path, tmp_path: Path) -> list[str]:
    """Overrides that train ``path``'s network briefly: one epoch, 8 steps, 16 neurons a layer, on the CPU
    unless its device runs there (a CUDA config's network; a PopTorch config's, whose own path is
    tests/test_ipu_trainer.py's, with the stand-in), on a few samples of its own data format where the test
    can write it (SHD's files), else of the synthetic set."""
    raw = yaml.safe_load(path.read_text())
    overrides = ["training.epochs=1", "data.steps=8", "data.batch_size=8", "data.val_split=0.25"]
    overrides += [f"model.layers.{i}.size=16" for i in range(len(raw["model"].get("layers", [])))]
    if device(raw.get("device", "cpu")).tensors != "cpu" or raw.get("device") in POPTORCH_DEVICES:
        overrides.append("device=cpu")
    if raw.get("bptt", {}).get("offchip_every"):
        overrides.append("bptt.offchip_every=2")
    if raw["data"]["dataset"] == "shd":
        train, test = generate(SyntheticConfig(n_train=24, n_test=8, n_classes=20, seed=1))
        write_recordings(tmp_path / "shd_train.h5", train)
        write_recordings(tmp_path / "shd_test.h5", test)
        overrides.append(f"data.path={tmp_path}")
    else:
        overrides += ["data.dataset=synthetic", "data.synthetic.n_train=24", "data.synthetic.n_test=8",
                      "data.synthetic.n_classes=4"]
    return overrides


# tiny.yaml trains in test_the_nir_config_trains_from_an_exported_run (and as the README runs it, in test_train.py)
@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem not in ("tiny", "tiny_from_nir")], ids=lambda p: p.stem)
def test_every_shipped_config_trains_briefly(path, tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(path), *small(path, tmp_path), "--out", str(out)]) == 0
    assert (out / "summary.json").is_file()


def test_the_nir_config_trains_from_an_exported_run(tmp_path):
    tiny = CONFIGS[0].parent / "tiny.yaml"  # as tiny_from_nir.yaml says: train tiny.yaml, export it
    assert main(["train", str(tiny), *small(tiny, tmp_path), "model.layers.0.reset=zero",
                 "--out", str(tmp_path / "tiny0")]) == 0
    assert main(["export", str(tmp_path / "tiny0"), "--out", str(tmp_path / "model.nir")]) == 0
    config = CONFIGS[0].parent / "tiny_from_nir.yaml"
    overrides = [o for o in small(config, tmp_path) if not o.startswith("model.layers")]
    assert main(["train", str(config), f"model.from_nir={tmp_path / 'model.nir'}", *overrides,
                 "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "summary.json").is_file()
    # and as shipped, from the graph beside it (its 20 classes)
    shipped = [o for o in overrides if "n_classes" not in o]
    assert main(["train", str(config), *shipped, "--out", str(tmp_path / "shipped")]) == 0
