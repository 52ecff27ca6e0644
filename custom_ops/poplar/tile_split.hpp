// How the PopART ops share a layer's neurons out over a tile range.
//
// Pure C++ (no Poplar), so the test harness (tests/ipu/test_poplar_sources.py)
// runs the very split the Opx uses and checks it against the Python planner.
//
// The rule is ipu_snn.ipu.tiles.split_even: n items over `parts` tiles in
// contiguous ranges whose sizes differ by at most one, the first n % parts
// tiles taking one extra. The tile plan, the emulator and the Poplar graph all
// use it, so neuron j of a layer sits on the same tile in all three.
#pragma once

#include <cstddef>
#include <vector>

namespace ipu_snn {
namespace tiling {

// Items [begin, end) of one tile; empty when there are more tiles than items.
struct Range {
  std::size_t begin;
  std::size_t end;
  std::size_t size() const { return end - begin; }
  bool empty() const { return end == begin; }
};

// Contiguous ranges of n items over `parts` tiles, sizes differing by at most
// one (the first n % parts ranges are one longer). parts must be positive.
inline std::vector<Range> splitEven(std::size_t n, std::size_t parts) {
  std::vector<Range> ranges;
  ranges.reserve(parts);
  const std::size_t base = n / parts, extra = n % parts;
  std::size_t start = 0;
  for (std::size_t j = 0; j < parts; ++j) {
    const std::size_t end = start + base + (j < extra ? 1 : 0);
    ranges.push_back(Range{start, end});
    start = end;
  }
  return ranges;
}

// Bytes of packed spike bits (bit j % 8 of byte j / 8) that a tile owning
// neurons `columns` writes: the bytes whose first neuron is one of its own.
// Every byte has exactly one writer, so no two tiles write the same byte even
// when a tile boundary falls inside one; the writer reads the few (< 8) spikes
// of the byte that the next tile owns.
inline Range ownedBytes(const Range &columns) {
  return Range{(columns.begin + 7) / 8, (columns.end + 7) / 8};
}

}  // namespace tiling
}  // namespace ipu_snn
