"""The IPU path: PopTorch options and trainer, the PopART custom ops, the tile model and emulator (see README.md).

PopTorch and PopDist ship with the Graphcore Poplar SDK and are imported lazily,
only when an IPU run starts.
"""
