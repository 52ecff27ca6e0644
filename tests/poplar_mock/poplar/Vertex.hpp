// Mock of <poplar/Vertex.hpp> (Poplar 3.x): vertex base classes and the field
// wrappers Input/Output/InOut over Vector, with element access and size().
#pragma once
#include <cstddef>
namespace poplar {
enum class VectorLayout { ONE_PTR, SPAN };
template <typename T, VectorLayout L = VectorLayout::SPAN> class Vector {
public:
  T &operator[](std::size_t i);
  const T &operator[](std::size_t i) const;
  std::size_t size() const;
};
template <typename T> class Input {
public:
  const T &operator*() const;
};
template <typename T, VectorLayout L> class Input<Vector<T, L>> {
public:
  const T &operator[](std::size_t i) const;
  std::size_t size() const;
};
template <typename T> class Output {
public:
  T &operator*() const;
};
template <typename T, VectorLayout L> class Output<Vector<T, L>> {
public:
  T &operator[](std::size_t i) const;
  std::size_t size() const;
};
template <typename T> class InOut {
public:
  T &operator*() const;
};
template <typename T, VectorLayout L> class InOut<Vector<T, L>> {
public:
  T &operator[](std::size_t i) const;
  std::size_t size() const;
};
class Vertex {};
class MultiVertex {
public:
  static unsigned numWorkers();
};
}  // namespace poplar
