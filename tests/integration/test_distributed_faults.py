"""A distributed run whose peer dies or stops: every surviving rank ends, within the configured timeout, with
exit 2 and one message naming its rank (not a hang, not a gloo traceback labelled as a bug)."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

RAW = {
    "model": {"layers": [{"type": "lif", "size": 8, "tau": 0.1}], "fused": False},
    "data": {"steps": 8, "channel_pooling": 70, "batch_size": 16, "val_split": 0.25,
             "synthetic": {"n_train": 64, "n_test": 16, "n_classes": 2}},
    "training": {"epochs": 4, "lr": 0.01, "seed": 1},
    "bptt": {"schedule": "store_all", "window": 8},
    "distributed": {"timeout_s": 5},
}

# rank 1: trains like any rank, then after epoch 1 dies (SIGKILL) or stops (SIGSTOP) as a peer can
PEER = """
import os, signal, sys
from rich.console import Console
from ipu_snn.config import load_config
from ipu_snn.training import train

def fault(epoch, row, network):
    if epoch == 1:
        os.kill(os.getpid(), getattr(signal, sys.argv[2]))

train(load_config(sys.argv[1]), sys.argv[3], console=Console(quiet=True), on_epoch_end=fault)
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
def test_a_lost_or_stuck_peer_ends_the_other_rank_with_exit_2_naming_it(tmp_path, fault):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(RAW))
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    main = subprocess.Popen([sys.executable, "-m", "ipu_snn.cli", "train", str(config), "--out", str(tmp_path / "run")],
                            env={**env, "RANK": "0", "LOCAL_RANK": "0"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peer = subprocess.Popen([sys.executable, "-c", PEER, str(config), fault, str(tmp_path / "run")],
                            env={**env, "RANK": "1", "LOCAL_RANK": "1"})
    start = time.monotonic()
    try:
        out, err = main.communicate(timeout=240)
    finally:
        for p in (main, peer):
            if p.poll() is None:
                p.kill()
                p.wait()
    err = " ".join(err.split())
    print(err)
    assert main.returncode == 2, err[-3000:]
    assert "Traceback" not in err and err.count("error:") == 1, err[-3000:]
    assert "rank 0 of 2: lost contact with the other processes" in err and "distributed.timeout_s" in err
    if fault == "SIGSTOP":  # waited about the timeout, not torch's 30 minutes
        assert time.monotonic() - start < 200
    # the run folder keeps its last checkpoint for a --resume
    assert (tmp_path / "run" / "checkpoints" / "epoch-0001").is_dir()
