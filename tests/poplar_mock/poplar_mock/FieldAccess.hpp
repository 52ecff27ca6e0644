// Test-only: points the mock's vertex fields (poplar/Vertex.hpp) at host
// buffers, the job Poplar's runtime does when it writes vertex state. Not part
// of any SDK header; custom_ops/poplar/ must never include it (the test checks).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <poplar/Vertex.hpp>
namespace poplar_mock {
struct FieldAccess {
  // Points a vector field at size elements from data, which must meet the
  // field's MinAlign, as Poplar lays a connected tensor out to.
  template <typename Field, typename T>
  static void bind(Field &field, T *data, std::size_t size) {
    if (reinterpret_cast<std::uintptr_t>(data) % Field::kMinAlign != 0) {
      std::fprintf(stderr, "poplar_mock: buffer not aligned to the field's %u bytes\n",
                   Field::kMinAlign);
      std::abort();
    }
    field.data_ = data;
    field.size_ = size;
  }
  // A scalar field (poplar::Input<int>, ...): a pointer only.
  template <typename Field, typename T>
  static void bindScalar(Field &field, T *data) {
    field.data_ = data;
  }
};
// Points a vector field at all of `buffer`.
template <typename Field, typename T>
void bind(Field &field, std::vector<T> &buffer) {
  FieldAccess::bind(field, buffer.data(), buffer.size());
}
// Points a scalar field at `value`.
template <typename Field, typename T>
void bindScalar(Field &field, T &value) {
  FieldAccess::bindScalar(field, &value);
}
}  // namespace poplar_mock
