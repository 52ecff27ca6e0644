"""The IPU path: PopTorch options (and, later, custom ops and the tile emulator).

PopTorch and PopDist ship with the Graphcore Poplar SDK and are imported lazily,
only when an IPU run starts.
"""
