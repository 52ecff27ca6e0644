// Mock of <popops/Reduce.hpp> (poplibs 3.x, include/popops/Reduce.hpp).
#pragma once
#include <poplar/Graph.hpp>
#include <popops/Operation.hpp>
namespace popops {
struct ReduceParams {
  ReduceParams() = default;
  ReduceParams(popops::Operation op, bool update = false);
};
poplar::Tensor reduce(poplar::Graph &graph, const poplar::Tensor &in,
                      const poplar::Type &outType, const std::vector<std::size_t> &dims,
                      ReduceParams params, poplar::program::Sequence &prog,
                      const poplar::DebugContext &debugContext = {""},
                      const poplar::OptionFlags &options = {});
poplar::Tensor reduce(poplar::Graph &graph, const poplar::Tensor &in,
                      const std::vector<std::size_t> &dims, ReduceParams params,
                      poplar::program::Sequence &prog,
                      const poplar::DebugContext &debugContext = {""},
                      const poplar::OptionFlags &options = {});
}  // namespace popops
