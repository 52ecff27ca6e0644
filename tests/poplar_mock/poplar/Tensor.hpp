// Mock of <poplar/Tensor.hpp> (Poplar 3.x): Tensor views and concat.
#pragma once
#include <cstddef>
#include <memory>
#include <vector>
#include <poplar/ArrayRef.hpp>
#include <poplar/Type.hpp>
namespace poplar_mock {
struct TensorData;
struct TensorAccess;
}  // namespace poplar_mock
namespace poplar {
class Tensor {
public:
  Tensor();
  Tensor operator[](std::size_t i) const;
  Tensor slice(std::size_t begin, std::size_t end, unsigned dimension) const;
  Tensor flatten() const;
  Tensor reshape(ArrayRef<std::size_t> shape) const;
  Tensor transpose() const;
  Tensor expand(ArrayRef<std::size_t> indices) const;
  Tensor broadcast(unsigned N, unsigned dim) const;
  std::size_t dim(unsigned i) const;
  std::size_t numElements() const;
  Type elementType() const;

private:
  friend struct ::poplar_mock::TensorAccess;
  std::shared_ptr<const ::poplar_mock::TensorData> data_;
};
Tensor concat(ArrayRef<Tensor> ts, unsigned dimension = 0);
}  // namespace poplar
