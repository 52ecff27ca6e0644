"""ipu_snn: BPTT training of spiking and sparse recurrent networks on long sequences.

The Python API (docs/python_api.md) is imported on first use, so that ``import ipu_snn.config`` stays light::

    import ipu_snn
    cfg = ipu_snn.load_config("configs/tiny.yaml")
    net = ipu_snn.build(cfg)
"""

__version__ = "0.1.0"

#: The top-level API, each name from ipu_snn.api
API = ("Config", "NetworkOutput", "Objective", "Recording", "SpikingNetwork", "Taps", "batches", "build",
       "evaluate_run", "load_config", "load_data", "make_objective", "train")


def __getattr__(name: str):
    if name in API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'ipu_snn' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(API))


__all__ = list(API)
