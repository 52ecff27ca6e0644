// Mock of <poplar/Interval.hpp> (Poplar 3.x): a half-open element range.
#pragma once
#include <cstddef>
namespace poplar {
class Interval {
public:
  Interval(std::size_t begin, std::size_t end);
  std::size_t begin() const;
  std::size_t end() const;
  std::size_t size() const;
};
}  // namespace poplar
