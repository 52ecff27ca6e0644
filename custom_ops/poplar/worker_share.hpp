// What the MultiVertex codelets share (popc compiles this into their .gp):
// word-aligned vector fields, and each worker's share of a range in whole
// 32-bit words (custom_ops/include/work_split.h says why).
#pragma once

#include <poplar/Vertex.hpp>

#include "work_split.h"

// A vector field that starts on a 32-bit word (Poplar's MinAlign, in bytes).
template <typename T>
using AlignedVector = poplar::Vector<T, poplar::VectorLayout::SPAN, 4>;

// Worker `worker`'s share of n items of T, in whole words of T.
template <typename T>
inline ipu_snn::core::Span<unsigned> share(unsigned n, unsigned workers, unsigned worker) {
  return ipu_snn::core::worker_span<unsigned>(n, workers, worker,
                                              ipu_snn::core::kWordItems<T>);
}
