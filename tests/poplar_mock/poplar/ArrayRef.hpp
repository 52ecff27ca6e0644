// Mock of <poplar/ArrayRef.hpp> (Poplar 3.x): a non-owning view of a list,
// built from a braced list or a std::vector.
#pragma once
#include <cstddef>
#include <initializer_list>
#include <vector>
namespace poplar {
template <typename T> class ArrayRef {
public:
  // Like the SDK's, a view: a braced list lives until the end of the call it is passed to.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Winit-list-lifetime"
  ArrayRef(std::initializer_list<T> list) : data_(list.begin()), size_(list.size()) {}
#pragma GCC diagnostic pop
  ArrayRef(const std::vector<T> &v) : data_(v.data()), size_(v.size()) {}
  const T *begin() const { return data_; }
  const T *end() const { return data_ + size_; }
  std::size_t size() const { return size_; }
  const T &operator[](std::size_t i) const { return data_[i]; }

private:
  const T *data_;
  std::size_t size_;
};
}  // namespace poplar
