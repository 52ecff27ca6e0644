"""Storage tiers that hold BPTT checkpoints (tuples of tensors) by step index.

A `Tier` owns the bytes of a checkpoint between ``store(n)`` and ``free(n)`` and
counts them, so the engine can report peak memory per tier and tests can hold it
to what the schedule predicts. Three kinds:

* `LocalStore` keeps the tensors where they are (device memory). It does not
  copy: the engine never modifies a state in place, so holding a reference is
  enough.
* `HostStore` copies to CPU memory; on a CPU-only machine it stands in for
  off-chip memory.
* `CudaHostStore` copies a CUDA state into preallocated pinned host buffers
  with asynchronous copies on a side stream, and can `prefetch` the next
  checkpoint back while the engine recomputes the current segment.
"""

from __future__ import annotations

import torch

Tensors = tuple[torch.Tensor, ...]


def tensors_bytes(tensors: Tensors) -> int:
    """Bytes held by ``tensors``, counting each underlying storage once."""
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


class Tier:
    """Checkpoints by step index, with byte and slot accounting.

    Subclasses implement ``_put``, ``_get`` and ``_drop``; this class keeps the
    books so that every tier reports the same way.
    """

    def __init__(self) -> None:
        self._bytes: dict[int, int] = {}
        self.bytes = 0
        self.peak_bytes = 0
        self.peak_slots = 0

    @property
    def slots(self) -> int:
        return len(self._bytes)

    def __contains__(self, n: int) -> bool:
        return n in self._bytes

    def store(self, n: int, tensors: Tensors) -> None:
        if n in self._bytes:
            raise KeyError(f"checkpoint {n} is already stored")
        self._bytes[n] = self._put(n, tensors)
        self.bytes += self._bytes[n]
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        self.peak_slots = max(self.peak_slots, self.slots)

    def load(self, n: int) -> Tensors:
        if n not in self._bytes:
            raise KeyError(f"checkpoint {n} is not stored")
        return self._get(n)

    def free(self, n: int) -> None:
        self.bytes -= self._bytes.pop(n)
        self._drop(n)

    def prefetch(self, n: int) -> None:
        """Start bringing checkpoint ``n`` back early; tiers without latency ignore it."""

    def clear(self) -> None:
        for n in list(self._bytes):
            self.free(n)

    def _put(self, n: int, tensors: Tensors) -> int:
        raise NotImplementedError

    def _get(self, n: int) -> Tensors:
        raise NotImplementedError

    def _drop(self, n: int) -> None:
        raise NotImplementedError


class LocalStore(Tier):
    """Checkpoints left in place on their device (references, no copy)."""

    def __init__(self) -> None:
        super().__init__()
        self._held: dict[int, Tensors] = {}

    def _put(self, n: int, tensors: Tensors) -> int:
        self._held[n] = tensors
        return tensors_bytes(tensors)

    def _get(self, n: int) -> Tensors:
        return self._held[n]

    def _drop(self, n: int) -> None:
        del self._held[n]


class HostStore(Tier):
    """Checkpoints copied to CPU memory, and copied back to their device on load."""

    def __init__(self) -> None:
        super().__init__()
        self._held: dict[int, tuple[Tensors, tuple[torch.device, ...]]] = {}

    def _put(self, n: int, tensors: Tensors) -> int:
        copies = tuple(t.detach().to("cpu", copy=True) for t in tensors)
        self._held[n] = (copies, tuple(t.device for t in tensors))
        return tensors_bytes(copies)

    def _get(self, n: int) -> Tensors:
        copies, devices = self._held[n]
        # a CPU "load" must still copy: the caller may hand the tensors to code
        # that keeps them, and the stored checkpoint has to stay intact
        return tuple(c.to(d, copy=True) for c, d in zip(copies, devices))

    def _drop(self, n: int) -> None:
        del self._held[n]


class CudaHostStore(Tier):
    """Checkpoints of CUDA tensors in preallocated pinned host memory.

    ``capacity`` pinned buffer sets, shaped like the first stored state, are
    allocated on the first store (every checkpoint of a recurrence has the same
    shapes). Copies run on a side stream so they overlap compute:

    * store: the side stream waits for the compute stream (the state must be
      finished), copies device to host, and ``record_stream`` keeps the caching
      allocator from reusing the source before the copy is done;
    * prefetch: device buffers are allocated on the compute stream, the side
      stream waits for it (the memory may have just been freed by compute
      kernels) and copies host to device; an event marks completion;
    * load: the compute stream waits for that event (prefetching first if that
      was not done), so the copy never blocks the host.

    All copies touching one pinned buffer run on the same side stream, so a
    buffer reused after ``free`` is never overwritten while still being read.
    Bytes are counted per occupied slot; ``reserved_bytes`` is the whole
    preallocation.
    """

    def __init__(self, capacity: int, device: torch.device | str | int | None = None) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"CudaHostStore needs a capacity of at least 1, got {capacity}")
        self.capacity = capacity
        self.device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        self._stream = torch.cuda.Stream(device=self.device)
        self._buffers: list[Tensors] = []
        self._free_slots: list[int] = []
        self._slot: dict[int, int] = {}
        self._ready: dict[int, tuple[torch.cuda.Event, Tensors]] = {}
        self.reserved_bytes = 0

    def _allocate(self, like: Tensors) -> None:
        self._buffers = [
            tuple(torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in like) for _ in range(self.capacity)
        ]
        self._free_slots = list(range(self.capacity - 1, -1, -1))
        self.reserved_bytes = self.capacity * sum(b.nbytes for b in self._buffers[0])

    def _put(self, n: int, tensors: Tensors) -> int:
        if not self._buffers:
            self._allocate(tensors)
        if not self._free_slots:
            raise RuntimeError(f"CudaHostStore is full ({self.capacity} checkpoints)")
        slot = self._free_slots.pop()
        self._slot[n] = slot
        compute = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(compute)
        with torch.cuda.stream(self._stream):
            for buf, t in zip(self._buffers[slot], tensors):
                buf.copy_(t.detach(), non_blocking=True)
        for t in tensors:
            t.record_stream(self._stream)
        return sum(b.nbytes for b in self._buffers[slot])

    def prefetch(self, n: int) -> None:
        if n not in self._slot or n in self._ready:
            return
        compute = torch.cuda.current_stream(self.device)
        host = self._buffers[self._slot[n]]
        dev = tuple(torch.empty(b.shape, dtype=b.dtype, device=self.device) for b in host)
        self._stream.wait_stream(compute)
        with torch.cuda.stream(self._stream):
            for d, b in zip(dev, host):
                d.copy_(b, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._stream)
        for d in dev:
            # if the prefetch is dropped unused, its memory must not be reused
            # while the side stream is still writing it
            d.record_stream(self._stream)
        self._ready[n] = (done, dev)

    def _get(self, n: int) -> Tensors:
        self.prefetch(n)
        done, dev = self._ready.pop(n)
        torch.cuda.current_stream(self.device).wait_event(done)
        return dev

    def _drop(self, n: int) -> None:
        self._ready.pop(n, None)
        self._free_slots.append(self._slot.pop(n))
