"""BPTT memory engine: checkpoint schedules (pure data), the schedule classes a config names (registry),
the engine that runs them for any recurrent cell, and the storage tiers that hold checkpoints.

Exported lazily: the config reads the schedule registry, and validating a config must not import torch
(which the engine and the stores need).
"""

import importlib

_EXPORTS = {
    **dict.fromkeys(["Action", "Advance", "Costs", "Free", "Load", "Reverse", "Schedule", "ScheduleError", "Store",
                     "Summary", "beta", "check_schedule", "double", "predicted_local_bytes", "predicted_time",
                     "revolve", "revolve_forward_steps", "store_all", "summarize", "two_level_optimal", "uniform"],
                    "schedules"),
    **dict.fromkeys(["SCHEDULES", "ScheduleKind", "schedule_kind"], "registry"),
    **dict.fromkeys(["ScanStats", "scan"], "engine"),
    **dict.fromkeys(["CudaHostStore", "HostStore", "LocalStore", "Tier", "tensors_bytes"], "stores"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ipu_snn.bptt' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ipu_snn.bptt.{_EXPORTS[name]}"), name)
