"""torchrun with gloo against one process: same global batches, same parameters; resume; rank 0 writes."""

import os
import subprocess
import sys

import pytest
import torch
import yaml
from rich.console import Console
from safetensors.torch import load_file

from ipu_snn.cli import main
from ipu_snn.config import validate_config
from ipu_snn.distributed import DistContext, GlobalBatchSampler
from ipu_snn.training import train

RAW = {
    "model": {"layers": [{"type": "rlif", "size": 24, "tau": 0.1}], "readout": {"reduce": "mean"}},
    "data": {"steps": 20, "channel_pooling": 20, "batch_size": 32, "val_split": 0.2,
             "synthetic": {"n_train": 120, "n_test": 20, "n_classes": 4}},  # 3 optimizer steps an epoch
    "training": {"epochs": 2, "lr": 0.01, "seed": 3},
    # one process plans for a batch of 32, two for 16 each: a fixed window keeps them on the same windows
    "bptt": {"window": 10},
}


def test_ranks_split_the_same_global_batches():
    single = list(GlobalBatchSampler(103, 20, DistContext(), seed=1))
    ranks = [list(GlobalBatchSampler(103, 20, DistContext(r, 3), accumulation=2, seed=1)) for r in range(3)]
    assert all(len(r) == 2 * 5 for r in ranks)  # every rank takes part in every step
    for step, batch in enumerate(single[:5]):
        parts = [i for r in ranks for i in r[2 * step] + r[2 * step + 1]]
        assert sorted(parts) == sorted(batch)
    # training drops only a last batch too small to give all 6 micro-batches a sample (3 < 3 ranks x 2)
    assert sum(map(len, single)) == 103 and len(single) == 6
    assert len(list(GlobalBatchSampler(101, 20, DistContext(0, 3), accumulation=3, seed=1))) == 5 * 3
    evaluation = [i for r in range(3) for b in GlobalBatchSampler(103, 20, DistContext(r, 3), shuffle=False) for i in b]
    assert sorted(evaluation) == list(range(103))


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
    quiet = Console(quiet=True)
    full = train(validate_config(RAW), tmp_path / "full", console=quiet)
    accumulated = train(validate_config({**RAW, "training": {**RAW["training"], "grad_accumulation": 4}}),
                        tmp_path / "acc", console=quiet)
    assert accumulated["train_loss"] == pytest.approx(full["train_loss"], rel=1e-5)
    a = load_file(tmp_path / "full/checkpoints/epoch-0002/model.safetensors")
    b = load_file(tmp_path / "acc/checkpoints/epoch-0002/model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def launch(tmp_path, name, nproc, *args):
    config = tmp_path / f"{name}.yaml"
    if not config.exists():
        config.write_text(yaml.safe_dump(RAW))
    out = tmp_path / name
    if nproc == 1:  # the reference run, in this process: a subprocess would add only an interpreter
        assert main(["train", str(config), "--out", str(out), *args]) == 0
        return out
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "--log-dir", str(tmp_path / f"{name}-logs"), "--redirects", "3", "-m", "ipu_snn.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd + ["train", str(config), "--out", str(out), *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def weights(run, epoch):
    return load_file(run / f"checkpoints/epoch-{epoch:04d}/model.safetensors")


def rank_logs(tmp_path, name, rank, stream):
    return "".join(p.read_text() for p in (tmp_path / f"{name}-logs").rglob(f"{rank}/{stream}.log"))


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [["bptt.schedule=store_all"], ["bptt.schedule=revolve"],
                                       ["model.sparse=true", "model.sparse_capacity=1.0"]],
                         ids=["store_all", "revolve-engine", "sparse-ops"])
def test_two_processes_match_one(tmp_path, overrides):
    """DDP's gradient hooks fire through the engine's autograd Function and the custom ops alike."""
    one = launch(tmp_path, "one", 1, *overrides)
    two = launch(tmp_path, "two", 2, *overrides)
    w1, w2 = weights(one, 2), weights(two, 2)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    # only rank 0 reports; rank 1 prints nothing
    assert "done:" in rank_logs(tmp_path, "two", 0, "stdout")
    assert rank_logs(tmp_path, "two", 1, "stdout").strip() == ""
    files = sorted(p.name for p in two.iterdir())
    assert files == [".lock", "checkpoints", "config.yaml", "curves.png", "metrics.csv", "rates.png", "spikes.png",
                     "summary.json"]


@pytest.mark.slow
def test_resume_under_two_processes(tmp_path):
    straight = launch(tmp_path, "straight", 2)
    resumed = launch(tmp_path, "resumed", 2, "training.epochs=1")
    assert not (resumed / "checkpoints/epoch-0002").exists()
    launch(tmp_path, "resumed", 2, "--resume")
    w1, w2 = weights(straight, 2), weights(resumed, 2)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-6, atol=1e-7)
