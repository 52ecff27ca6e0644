// Mock of <poplar/Vertex.hpp> (Poplar 3.x): vertex base classes (Vertex, and
// MultiVertex, whose compute(workerId) each of a tile's worker contexts runs)
// and the field wrappers Input/Output/InOut over Vector, with element access
// and size().
//
// The public surface is the SDK's (operator[], size(), operator* for scalar
// fields; Vector<T, VectorLayout, MinAlign, Interleaved>), as used by the
// vertices in graphcore/poplibs lib/*/codelets. It is also minimally
// functional: like Poplar's vertex state, a field is a pointer and a size, so
// the host harness (tests/poplar_harness/) can point fields at buffers and run
// compute(). Only poplar_mock/FieldAccess.hpp, which no source includes, can
// set them (a friend, not a public member); it also checks a buffer's
// alignment against the field's MinAlign.
#pragma once
#include <cstddef>
namespace poplar_mock {
struct FieldAccess;
}
namespace poplar {
enum class VectorLayout { ONE_PTR, SPAN };
template <typename T, VectorLayout L = VectorLayout::SPAN, unsigned MinAlign = alignof(T),
          bool Interleaved = false>
class Vector {
public:
  T &operator[](std::size_t i) { return data_[i]; }
  const T &operator[](std::size_t i) const { return data_[i]; }
  std::size_t size() const { return size_; }

private:
  friend struct ::poplar_mock::FieldAccess;
  static constexpr unsigned kMinAlign = MinAlign;
  T *data_ = nullptr;
  std::size_t size_ = 0;
};
template <typename T> class Input {
public:
  const T &operator*() const { return *data_; }

private:
  friend struct ::poplar_mock::FieldAccess;
  static constexpr unsigned kMinAlign = alignof(T);
  const T *data_ = nullptr;
};
template <typename T, VectorLayout L, unsigned A, bool I> class Input<Vector<T, L, A, I>> {
public:
  const T &operator[](std::size_t i) const { return data_[i]; }
  std::size_t size() const { return size_; }

private:
  friend struct ::poplar_mock::FieldAccess;
  static constexpr unsigned kMinAlign = A;
  const T *data_ = nullptr;
  std::size_t size_ = 0;
};
template <typename T> class Output {
public:
  T &operator*() const { return *data_; }

private:
  friend struct ::poplar_mock::FieldAccess;
  static constexpr unsigned kMinAlign = alignof(T);
  T *data_ = nullptr;
};
template <typename T, VectorLayout L, unsigned A, bool I> class Output<Vector<T, L, A, I>> {
public:
  T &operator[](std::size_t i) const { return data_[i]; }
  std::size_t size() const { return size_; }

private:
  friend struct ::poplar_mock::FieldAccess;
  static constexpr unsigned kMinAlign = A;
  T *data_ = nullptr;
  std::size_t size_ = 0;
};
template <typename T> class InOut {
public:
  T &operator*() const { return *data_; }

private:
  friend struct ::poplar_mock::FieldAccess;
  static constexpr unsigned kMinAlign = alignof(T);
  T *data_ = nullptr;
};
template <typename T, VectorLayout L, unsigned A, bool I> class InOut<Vector<T, L, A, I>> {
public:
  T &operator[](std::size_t i) const { return data_[i]; }
  std::size_t size() const { return size_; }

private:
  friend struct ::poplar_mock::FieldAccess;
  static constexpr unsigned kMinAlign = A;
  T *data_ = nullptr;
  std::size_t size_ = 0;
};
class Vertex {};
class MultiVertex {
public:
  // Mk1 and Mk2 tiles have 6 worker contexts (Target::getNumWorkerContexts).
  static unsigned numWorkers() { return 6; }
};
}  // namespace poplar
