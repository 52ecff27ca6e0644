"""RLIF: the LIF neuron (`lif`) with all-to-all recurrent weights; the same kernel."""

from __future__ import annotations

from dataclasses import replace

from .lif import LIF

RLIF = replace(LIF, name="rlif", recurrent=True, doc="leaky integrate-and-fire with recurrent weights")
