// Mock of <poplar/ArrayRef.hpp> (Poplar 3.x): a non-owning view of a list,
// built from a braced list or a std::vector.
#pragma once
#include <initializer_list>
#include <vector>
namespace poplar {
template <typename T> class ArrayRef {
public:
  ArrayRef(std::initializer_list<T>);
  ArrayRef(const std::vector<T> &);
};
}  // namespace poplar
