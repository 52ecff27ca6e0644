// Mock of <poplin/MatMul.hpp> (poplibs 3.x, include/poplin/MatMul.hpp): the
// matMul overload with an explicit output type.
#pragma once
#include <poplar/Graph.hpp>
namespace poplin {
class PlanningCache;
poplar::Tensor matMul(poplar::Graph &graph, const poplar::Tensor &A,
                      const poplar::Tensor &B, poplar::program::Sequence &prog,
                      const poplar::Type &outputType,
                      const poplar::DebugContext &debugContext = {},
                      const poplar::OptionFlags &options = {},
                      PlanningCache *cache = nullptr);
}  // namespace poplin
