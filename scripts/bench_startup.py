"""What a CPU training run holds before its first step: peak RSS, and the heavy modules imported by then.

Runs ``ipu-snn train`` in this process and stops it where the first epoch would start (everything before
it done: imports, data, planning with its window-cost calibration, the network and optimizer), printing
VmRSS / VmHWM and which of torch's optional subsystems were imported. Each call is one process, so run
it once per setting to compare.

    python scripts/bench_startup.py configs/tiny.yaml
    python scripts/bench_startup.py configs/tiny.yaml model.sparse=auto
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch._dynamo", "torch._inductor", "triton", "sympy", "torch.fx.experimental.symbolic_shapes",
         "torch._functorch.aot_autograd", "matplotlib", "h5py", "scipy")


class _Stop(BaseException):  # past the CLI's handlers
    pass


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    start = time.perf_counter()
    import ipu_snn.loop as loop
    from ipu_snn.cli import main as cli_main

    found = {}

    def first_epoch(*args, **kwargs):
        found.update(rss_mib=round(status_mib("VmRSS"), 1), peak_rss_mib=round(status_mib("VmHWM"), 1),
                     seconds=round(time.perf_counter() - start, 2),
                     imported=[m for m in HEAVY if m in sys.modules])
        raise _Stop

    loop.train_epoch = first_epoch
    with tempfile.TemporaryDirectory() as out:
        try:
            cli_main(["train", *sys.argv[1:2], "--out", str(Path(out) / "run"), *sys.argv[2:]])
        except _Stop:
            pass
    print(json.dumps(found))


if __name__ == "__main__":
    main()
