"""Dense or sparse: how each spike product runs (`SparsePolicy`), from a crossover measured on the machine
it runs on (`measure_crossover`, cached per machine and shape by ``ipu_snn.calibration``), or where none was
measured, the documented default (`DEFAULT_CROSSOVERS`). docs/spike_products.md gives the design.
"""

from __future__ import annotations

import hashlib
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.bits import pack_spikes
from .visits import ListedVisits

MODES = ("dense", "sparse", "auto")
#: rows timed for a window's products: enough that neither side is all call overhead, as in a real window
WINDOW_ROWS = 2048
#: samples of a recurrent step as timed: a step's dense product is small, and its overhead moves the crossover
STEP_ROWS = 32
#: the two densities the sparse cost's line is fit through: spanning where crossovers were measured
#: (docs/benchmarks/unified_loop.md: sparse wins below a few percent on the CPU), so the line interpolates
_DENSITIES = (0.02, 0.2)

#: The crossover of a ``model.sparse: auto`` product given no measured one (a direct
#: `ipu_snn.network.build_network` call; ``ipu-snn train`` and ``ipu_snn.build`` pass the calibration step's),
#: by the torch device type of its tensors. ``cpu`` (the C++ kernels): 0.08, just below the smallest crossover
#: measured for the current kernels, 0.086, W2-small's readout (256 -> 20), in docs/benchmarks/unified_loop.md
#: (2026-12-06, 2 CPU cores; its other products measured 0.154-0.588), so the lists are taken only where every
#: product measured there was faster sparse. ``cuda`` (the Triton kernels): 0, dense (lists only for a window
#: without spikes), since no GPU crossover has been measured in this repository. Either way the products are
#: exact; the crossover only decides their speed.
DEFAULT_CROSSOVERS: dict[str, float] = {"cpu": 0.08, "cuda": 0.0}


@dataclass(frozen=True)
class SparsePolicy:
    """How one spike product runs (see the module docstring)."""

    mode: str = "dense"
    capacity: int = 0  # spike-list length K per row (sparse and auto)
    overflow: str = "error"  # sparse: "error" | "drop_and_count"
    max_density: float = 0.0  # auto: sparse at or below this spike density
    listed_grad: bool = False  # the input gradient only at listed neurons (model.sparse_grad: spikes or auto)
    # the exact listed backward (model.sparse_grad: auto): lists as long as the listed neurons need, and
    # under auto only where their density is at most max_density (else the dense adjoint)
    exact_lists: bool = False
    backend: str | None = None  # spike-matmul kernels (ops.registry); None: the tensors' device default
    # where the listed backward counts what it visited (the metrics' backward sparsity); None: nowhere
    visits: ListedVisits | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"SparsePolicy.mode must be one of {MODES}, got {self.mode!r}")
        if self.mode != "dense" and self.capacity < 1:
            raise ValueError(f"SparsePolicy: a {self.mode} product needs a capacity >= 1, got {self.capacity}")
        if self.mode == "dense" and self.listed_grad:
            raise ValueError("SparsePolicy: a dense product has no spike lists to restrict its gradient to")
        if self.exact_lists and not self.listed_grad:
            raise ValueError("SparsePolicy: exact_lists applies to the listed backward (listed_grad)")

    def list_length(self, counts: torch.Tensor, n_in: int, fixed_lists: bool = False) -> int | None:
        """The one dense/sparse decision of a product: its spike-list length, or None to run it dense.

        Parameters
        ----------
        counts : Tensor
            Spikes per row of the product (int [R]).
        n_in : int
            Neurons per row.
        fixed_lists : bool
            The lists are preallocated at ``capacity`` (the recurrent product inside the window loop):
            ``auto`` then runs dense a product whose rows do not all fit. Otherwise ``auto``'s lists are
            as long as a row can be (``n_in``), so it never drops a spike.

        Returns
        -------
        int or None
            ``dense``: None. ``sparse``: ``capacity`` (what overflows is the policy's ``overflow``'s).
            ``auto``: the list length where the spike density is at most ``max_density``, else None.

        custom_ops/cpu/layer_window.cpp applies the same rule per step, with ``fixed_lists``, to the mode
        it is given by name (`PRODUCT_MODE_CODES`); tests/unit/test_products.py holds the two together.
        """
        if self.mode == "dense":
            return None
        if self.mode == "sparse":
            return self.capacity
        if not self.sparse_enough(float(counts.sum()), counts.numel(), n_in) or (fixed_lists and int(counts.max()) > self.capacity):
            return None
        return self.capacity if fixed_lists else n_in


    def grad_capacity(self, listed: int, rows: int, n_in: int) -> int | None:
        """The list length with which the input gradient of ``rows`` rows of ``n_in`` neurons, ``listed`` of
        them listed, runs the listed backward; None: the dense adjoint."""
        if not self.listed_grad:
            return None
        if not self.exact_lists:
            return self.capacity
        if self.mode == "auto" and not self.sparse_enough(listed, rows, n_in):
            return None
        return n_in

    def count_visits(self, capacity: int | None, listed: int, total: int) -> None:
        """Record in `visits` what an input gradient visited: the listed neurons, or with the dense adjoint
        (``capacity`` None) all ``total``."""
        if self.visits is not None:
            self.visits.add(total if capacity is None else min(listed, total), total)

    def sparse_enough(self, spikes: float, rows: int, n_in: int) -> bool:
        """``auto``'s rule: ``spikes`` over ``rows`` rows of ``n_in`` neurons are at most ``max_density``."""
        return rows > 0 and spikes <= self.max_density * rows * n_in


#: Each mode by name -> its value of the CPU window loop's ``RecMode`` (custom_ops/cpu/layer_window.cpp),
#: which runs the recurrent product per step by `SparsePolicy.list_length`'s rule; a test reads the enum.
PRODUCT_MODE_CODES = {"dense": 0, "sparse": 1, "auto": 2}


def machine_key(device: torch.device) -> str:
    """This machine as measurements depend on it: torch, the CPU's flags and threads, or the GPU."""
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        flags = ""
        try:
            flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                          if line.startswith(("flags", "Features"))), "")
        except OSError:
            pass
        what = f"{platform.machine()}|{flags}|{torch.get_num_threads()} threads"
    return hashlib.sha256(f"{torch.__version__}|{what}".encode()).hexdigest()[:16]


def _best_ms(fn, sync, calls: int = 1, repeats: int = 7) -> float:
    """The fastest of ``repeats`` timings of ``calls`` calls, per call: the least disturbed by other jobs."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e3


def _measure(device: torch.device, n_in: int, n_out: int, backend: str | None, per_step: bool,
             repeats: int = 7) -> float:
    from .registry import get_kernels, resolve_backend

    kernels = get_kernels(resolve_backend(backend, device))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator(device="cpu").manual_seed(0)
    rows = STEP_ROWS if per_step else WINDOW_ROWS
    calls = 50 if per_step else 1
    weight = torch.randn(n_in, n_out, generator=gen).to(device)
    grad = torch.randn(rows, n_out, generator=gen).to(device)
    out = torch.empty(rows, n_out, device=device)

    def spikes(density):
        return (torch.rand(rows, n_in, generator=gen) < density).float().to(device)

    z = spikes(0.1)
    if per_step:
        dense = _best_ms(lambda: torch.addmm(grad, z, weight, out=out), sync, calls, repeats)
    else:
        dense = _best_ms(lambda: (z @ weight, z.t() @ grad), sync, calls, repeats)
    sparse = []
    for density in _DENSITIES:
        bits = pack_spikes(spikes(density))

        def run():
            if per_step:
                kernels.bits_forward(bits, n_in, weight, None, n_in)
            else:
                kernels.count_bits(bits)
                kernels.bits_forward(bits, n_in, weight, None, n_in)
                kernels.bits_grad_weight(bits, n_in, grad, n_in)

        sparse.append(_best_ms(run, sync, calls, repeats))
    (d0, d1), (s0, s1) = _DENSITIES, sparse
    slope = max((s1 - s0) / (d1 - d0), 1e-9)
    return float(min(1.0, max(0.0, (dense - (s0 - slope * d0)) / slope)))


def default_crossover(device_type: str) -> float:
    """`DEFAULT_CROSSOVERS`' value for tensors of ``device_type`` (0, dense, for a type it has no entry for)."""
    return DEFAULT_CROSSOVERS.get(device_type, 0.0)


def crossover_key(n_in: int, n_out: int, per_step: bool = False) -> str:
    """How a product's crossover is named in a RunPlan: its shape, and whether it runs per step."""
    return f"{n_in}x{n_out}|{'step' if per_step else 'window'}"


def measure_crossover(device: torch.device, n_in: int, n_out: int, backend: str | None = None,
                      per_step: bool = False, repeats: int = 7) -> float:
    """The spike density at or below which the sparse product of this shape beats the dense one here:
    a window's product, or with ``per_step`` the recurrent product of one step, each side the fastest of
    ``repeats`` timings. Measured now (a fraction of a second on a quiet machine); `ipu_snn.calibration`
    caches it per machine and shape."""
    return _measure(torch.device(device), n_in, n_out, backend, per_step, repeats)
