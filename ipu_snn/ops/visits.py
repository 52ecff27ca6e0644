"""How much of a layer the listed backward visited: the backward's sparsity, reported beside the activations'.

The listed backward (``model.sparse_grad``) forms the gradient of a layer's spikes only at its listed
neurons (spikes, and neurons of non-zero surrogate derivative). `ListedVisits` counts, for one spiking
layer, the neuron-steps the products over its spikes visited in backward and the neuron-steps they
would have visited densely; a product that ran its adjoint densely visited all of them.
"""

from __future__ import annotations


class ListedVisits:
    """Neuron-steps visited by the backward of the products over one layer's spikes, of all it could visit."""

    def __init__(self):
        self.visited = 0
        self.total = 0

    def add(self, visited: int, total: int) -> None:
        self.visited += int(visited)
        self.total += int(total)

    def fraction(self) -> float | None:
        """Visited over all since the last `reset`; None when no backward ran."""
        return self.visited / self.total if self.total else None

    def reset(self) -> None:
        self.visited = self.total = 0

    def __repr__(self) -> str:
        return f"ListedVisits({self.visited}/{self.total})"
