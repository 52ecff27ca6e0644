// Mock of <poplar/Graph.hpp> (Poplar 3.x): the Graph class and what its
// declarations need. Programs are only forward-declared (see Program.hpp).
#pragma once
#include <cstddef>
#include <cstdint>
// poplibs' poplin/Convolution.hpp uses std::numeric_limits having included
// only Poplar headers, <set> and <tuple>: the real ones bring in <limits>.
#include <limits>
#include <poplar/ArrayRef.hpp>
#include <poplar/DebugContext.hpp>
#include <poplar/GraphElements.hpp>
#include <poplar/OptionFlags.hpp>
#include <poplar/StringRef.hpp>
#include <poplar/Target.hpp>
#include <poplar/Tensor.hpp>
#include <poplar/Type.hpp>
namespace poplar {
namespace program {
class Program;
}
class Graph {
public:
  const Target &getTarget() const;
  Tensor addVariable(const Type &type, ArrayRef<std::size_t> shape,
                     const DebugContext &debugContext = {});
  void setTileMapping(const Tensor &t, unsigned tileNum);
  void setTileMapping(VertexRef v, unsigned tileNum);
  ComputeSet addComputeSet(const DebugContext &debugContext = {});
  VertexRef addVertex(ComputeSet cs, StringRef vertexType);
  void connect(FieldRef field, const Tensor &tensor);
  template <typename T> void setInitialValue(FieldRef field, T val);
  template <typename T> void setInitialValue(const Tensor &t, T val);
  void setPerfEstimate(const VertexRef &v, std::uint64_t cycles);
  bool addCodelets(StringRef src, const OptionFlags &options = {},
                   StringRef compileFlags = "");
};
}  // namespace poplar
