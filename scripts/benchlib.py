"""Shared by the benchmark scripts: timing, memory, child processes, a description of the machine, the
targets table and the report files."""

from __future__ import annotations

import ctypes
import datetime as _dt
import gc
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def command_line() -> str:
    return shlex.join(["python"] + sys.argv)  # quoted: an argument with a space stays one


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: how busy the machine was around a measurement."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def time_ms(fn, *, warmup: int = 2, repeats: int = 10, sync=None) -> dict:
    """Median and spread of wall time per call, in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "max_ms": max(samples),
            "repeats": repeats}


# ------------------------------------------------------------------------------ memory


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_growth_bytes(fn, device: torch.device) -> tuple[int, str]:
    """How far memory rises above its level before ``fn()`` while it runs, and how that was measured.

    CUDA: the caching allocator's peak above what was allocated before. CPU: the process's peak
    resident set (VmHWM, reset through /proc/self/clear_refs) above its resident set before; freed heap
    memory is returned to the system first (malloc_trim), so that the rise counts every page ``fn``
    touches rather than pages an earlier call left mapped."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, "torch.cuda.max_memory_allocated"
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - base) * 1024, "VmHWM - VmRSS (Linux /proc)"
    except (OSError, TypeError):
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()  # ru_maxrss never goes down: a rise below an earlier peak reads as 0
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, "ru_maxrss rise"


# ------------------------------------------------------------------------------ child processes


@dataclass
class ChildRun:
    returncode: int
    wall_s: float
    peak_rss_bytes: int  # the child's own peak resident set (ru_maxrss of wait4)
    timed_out: bool
    output: str  # stdout and stderr, interleaved


def run_child(argv: list[str], *, log: Path, timeout_s: float) -> ChildRun:
    """Run a command in its own process (and session), its output into ``log``; its peak RSS comes from
    wait4, so it is that process's alone. Past ``timeout_s`` its process group is killed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout_s and not timed_out:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(proc.returncode, time.perf_counter() - start, usage.ru_maxrss * 1024, timed_out,
                    log.read_text(errors="replace"))


def die_with_parent() -> None:
    """Let the kernel end this process when the one that started it dies (Linux; elsewhere a no-op), so
    that a benchmark killed at its time limit leaves no worker of its own running."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def fresh_cache(folder: Path) -> str:
    """An empty ipu_snn cache folder (for $IPU_SNN_CACHE) for the processes a benchmark starts, so that
    sparse=auto measures its dense/sparse crossovers during the run instead of reading an earlier one's."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return str(folder.resolve())


def tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ------------------------------------------------------------------------------ targets


@dataclass
class Target:
    """One target of an issue and what a run measured for it. ``value`` is the measured ratio (or
    quantity), compared with ``limit`` as ``at_most`` says; None: not measured in this run (``detail``
    says why)."""

    text: str
    value: float | None
    limit: float
    at_most: bool
    detail: str
    unit: str = "x"

    @property
    def status(self) -> str:
        if self.value is None:
            return "not measured"
        ok = self.value <= self.limit if self.at_most else self.value >= self.limit
        return "PASS" if ok else "MISS"

    def shortfall(self) -> str:
        """For a miss, by how much: the factor between what was measured and what the target needs."""
        if self.status != "MISS":
            return ""
        if self.at_most:
            return f"{self.value / self.limit:.2f}x over the limit" if self.limit > 0 else "above zero"
        return f"{self.limit / self.value:.2f}x short" if self.value > 0 else "none measured"

    def row(self) -> str:
        shown = "" if self.value is None else f"{self.value:.3g}{self.unit}"
        need = f"{'≤' if self.at_most else '≥'} {self.limit:.3g}{self.unit}"
        return f"| {self.text} | {shown} | {need} | **{self.status}** | {self.shortfall()} | {self.detail} |"

    def to_json(self) -> dict:
        return {"target": self.text, "value": self.value, "limit": self.limit, "at_most": self.at_most,
                "unit": self.unit, "detail": self.detail, "status": self.status, "shortfall": self.shortfall()}

    @classmethod
    def from_json(cls, d: dict) -> "Target":
        return cls(d["target"], d["value"], d["limit"], d["at_most"], d["detail"], d["unit"])


def ratio_target(text: str, num: dict | None, den: dict | None, limit: float, at_most: bool, value,
                 label, missing: str = "not measured") -> Target:
    """The Target of ``value(num) / value(den)`` between two measured rows (the detail names both with
    ``label``), or not measured when either row is missing. A zero denominator (no growth) counts as 1."""
    if num is None or den is None:
        return Target(text, None, limit, at_most, missing)
    return Target(text, value(num) / (value(den) or 1), limit, at_most, f"{label(num)} / {label(den)}")


def failed_cell(message: str) -> str:
    """A table cell for a contender that failed: the end of its error, on one line."""
    return "FAILED: " + message.replace("\n", " ").replace("|", "/")[-300:]


def targets_table(targets: list[Target]) -> list[str]:
    return ["| target | measured | required | status | miss by | from |", "|---|---|---|---|---|---|",
            *[t.row() for t in targets]]


# ------------------------------------------------------------------------------ report files


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def machine_lines(info: dict, command: str | None = None) -> list[str]:
    device = info.get("gpu") or f"{info['cpu']} ({info['cores']} cores, {info['torch_threads']} torch threads)"
    return [f"- Command: `{command or command_line()}`", f"- Device: {device}",
            f"- torch {info['torch']}, Python {info['python']}", f"- Date: {info['date']}"]


def notes_block(path: Path, what: str) -> list[str]:
    """The hand-written notes (why each miss happened) kept next to a generated doc, or a marked place
    for them; the generator never writes that file."""
    if path.exists():
        return [path.read_text().rstrip(), ""]
    return [f"> **Why (notes): not written yet.** The reasons for each miss of {what} go in "
            f"`{path.name}` beside this file; the generator includes it here and never overwrites it.", ""]
