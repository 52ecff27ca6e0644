// How one vertex shares its elements out over a tile's worker threads.
//
// A Poplar MultiVertex runs compute(workerId) once on each of the tile's
// worker contexts (6 on Mk1 and Mk2), all at once and with no barrier between
// them, so each worker must own what it writes. IPU stores narrower than 32
// bits are not atomic (a write of one half or one byte rewrites its whole
// word), so two workers may not even write neighbouring halves or bytes of
// one word: shares are whole grains of kWordItems<T> items, and the field
// they index must start on a word (the vertices declare such fields with a
// minimum alignment of 4). Pure C++, shared by the codelets and the host
// harness; no allocation.
#pragma once

namespace ipu_snn {
namespace core {

template <typename I>
struct Span {
  I begin;
  I end;
};

// Items of T in one 32-bit word (1 for 32-bit and wider types).
template <typename T>
constexpr unsigned kWordItems = sizeof(T) >= 4 ? 1u : unsigned(4 / sizeof(T));

// Worker `worker`'s share of [0, n) among `workers`: contiguous, in whole
// grains of `grain` items (only the last grain of [0, n) may be short), the
// first workers taking one grain more than the rest. Empty for workers past
// the last grain.
template <typename I>
Span<I> worker_span(I n, I workers, I worker, I grain) {
  const I grains = (n + grain - 1) / grain;
  const I base = grains / workers, extra = grains - base * workers;
  const I first = worker * base + (worker < extra ? worker : extra);
  const I last = first + base + (worker < extra ? I(1) : I(0));
  const I begin = first * grain, end = last * grain;
  return Span<I>{begin < n ? begin : n, end < n ? end : n};
}

// The most items worker_span gives any one worker: what a per-worker scratch
// region must hold.
template <typename I>
I worker_span_bound(I n, I workers, I grain) {
  const I grains = (n + grain - 1) / grain;
  const I most = (grains + workers - 1) / workers * grain;
  return most < n ? most : n;
}

// Bytes of a per-worker scratch slice of `rows` rows of n packed bits
// (ceil(n / 8) bytes a row), rounded up to whole words so that slices laid
// end to end stay word-aligned.
template <typename I>
I packed_slice_bytes(I rows, I n) {
  return (rows * ((n + 7) / 8) + 3) / 4 * 4;
}

}  // namespace core
}  // namespace ipu_snn
