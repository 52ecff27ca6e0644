"""The first-use build of the C++ kernels under abuse: killed midway, or waited on forever."""

import csv
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from ipu_snn.errors import DeviceError
from ipu_snn.files import held_lock
from ipu_snn.ops import cpu_ext


BUILD_TIMEOUT_S = 400  # a build takes about 30 s alone; a hang (the defect) fails here instead of forever


@pytest.mark.slow
def test_a_build_killed_midway_does_not_stop_the_next_run(tmp_path, small_run):
    env = os.environ | {cpu_ext.BUILD_DIR_ENV: str(tmp_path / "ext")}
    build = subprocess.Popen([sys.executable, "-c", "from ipu_snn.ops.cpu_ext import load_cpu_ops; load_cpu_ops()"],
                             env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while not list((tmp_path / "ext").rglob("build.ninja")):
            assert build.poll() is None and time.monotonic() < deadline, "the build never started"
            time.sleep(0.05)
        time.sleep(1.0)  # the compilers are running
        os.killpg(build.pid, signal.SIGKILL)  # the run, its ninja and its compilers, as a kill -9 of the job
    finally:
        build.wait(timeout=60)
    assert build.returncode == -signal.SIGKILL, "the build finished before it could be killed"

    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({**small_run, "training": {**small_run["training"], "epochs": 1}}))
    run = subprocess.run([sys.executable, "-m", "ipu_snn.cli", "train", str(config), "--out", str(tmp_path / "run")],
                         env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert run.returncode == 0, run.stderr
    assert "building the C++ kernels (first use, about 30 s)" in run.stderr
    built_s = float(re.search(r"built the C\+\+ kernels in (\d+) s", run.stderr).group(1))
    # the build happened before the first epoch's clock started
    (row,) = csv.DictReader((tmp_path / "run" / "metrics.csv").open())
    assert float(row["epoch_s"]) < built_s
    assert not list((tmp_path / "ext").glob(".*.build-*"))  # the killed build's folder is gone


def test_a_build_lock_held_too_long_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(cpu_ext.BUILD_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(cpu_ext, "BUILD_WAIT_S", 0.5)
    final = cpu_ext.build_directory()
    lock = final.with_name(final.name + ".lock")
    with held_lock(lock):  # as a live process building would; this process, through another descriptor
        started = time.monotonic()
        with pytest.raises(DeviceError, match=f"waited 0.5 s for pid {os.getpid()} on .* to finish building"):
            cpu_ext._build(cpu_ext._sources(), final, final / "lib.so")
    assert 0.5 <= time.monotonic() - started < 10
    assert f"waiting for pid {os.getpid()}" in capsys.readouterr().err
    assert not final.exists()
