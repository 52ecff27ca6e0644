"""Issue 22, failures 4 and 5: `plan` and `train` refuse, from arithmetic alone and in bounded time, the
networks and sequences that do not fit, instead of allocating or recursing until they crash."""

import resource
import subprocess
import sys
import time

import pytest

#: CPU seconds a refusal may take (the child's own, so that a loaded machine does not decide): starting
#: Python and importing torch is most of it
CPU_SECONDS = 10


def refused(*args, tmp_path=None):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "ipu_snn.cli", *args], capture_output=True, text=True,
                            timeout=300)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert cpu < CPU_SECONDS, (cpu, wall)
    return lines[0]


@pytest.mark.parametrize("measure", [[], ["--no-measure"]])
def test_plan_refuses_a_huge_layer_before_measuring(measure):
    # used to allocate 40 GB in the measuring step and die with a traceback
    message = refused("plan", "configs/tiny.yaml", "model.layers.0.size=100000", "--budget-gib", "16", *measure)
    assert "no BPTT schedule fits cpu" in message and "100000 neurons" in message and "data.batch_size=" in message


@pytest.mark.parametrize("command", ["plan", "train"])
def test_a_very_long_sequence_is_refused_not_recursed(command, tmp_path):
    # used to end in a RecursionError in the revolve schedule after about 45 s
    out = ["--out", str(tmp_path / "run")] if command == "train" else []
    message = refused(command, "configs/tiny.yaml", "data.steps=10000000", "bptt.schedule=revolve", *out)
    assert "T=10000000" in message and "bptt.window" in message
    assert not (tmp_path / "run").exists()


def test_a_tiny_step_is_refused_in_bounded_time():
    # data.dt = 1e-9 s over 1 s: T = 10^9, which used to grow memory without bound
    message = refused("plan", "configs/tiny.yaml", "data.steps=null", "data.dt=1e-9")
    assert "T=1000000000" in message
