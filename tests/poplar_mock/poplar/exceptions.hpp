// Mock of <poplar/exceptions.hpp> (Poplar 3.x): the exception PopART keeps by
// value in devicex_memory_allocation_err (popart/popx/irlowering.hpp).
#pragma once
#include <stdexcept>
namespace poplar {
struct poplar_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct graph_memory_allocation_error : poplar_error {
  using poplar_error::poplar_error;
};
}  // namespace poplar
