"""The core the other packages share: spikes as packed bits (bits.py) and the device table (ipu_snn.devices).

It imports nothing of ipu_snn but ``errors``; docs/architecture.md gives the layers.
"""
