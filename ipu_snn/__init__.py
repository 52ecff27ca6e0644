"""ipu_snn: BPTT training of spiking and sparse recurrent networks on long sequences."""

__version__ = "0.1.0"
