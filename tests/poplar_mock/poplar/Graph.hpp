// Mock of <poplar/Graph.hpp> (Poplar 3.x): the Graph class and what its
// declarations need. Programs are only forward-declared (see Program.hpp).
//
// It records what is added to it (poplar_mock::GraphData: variables with
// their tile mappings, compute sets, vertices with their connections, initial
// values and tiles, remote buffers), so tests/poplar_mock/poplar_mock/ can
// count and interpret it on the host.
#pragma once
#include <cstddef>
#include <cstdint>
// poplibs' poplin/Convolution.hpp uses std::numeric_limits having included
// only Poplar headers, <set> and <tuple>: the real ones bring in <limits>.
#include <limits>
#include <memory>
#include <string>
#include <vector>
#include <poplar/ArrayRef.hpp>
#include <poplar/DataStream.hpp>
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
  template <typename T>
  Tensor addConstant(const Type &type, ArrayRef<std::size_t> shape, T val,
                     const DebugContext &debugContext = {}) {
    return addConstantValue(type, shape, static_cast<double>(val), debugContext);
  }
  void setTileMapping(const Tensor &t, unsigned tileNum);
  void setTileMapping(VertexRef v, unsigned tileNum);
  ComputeSet addComputeSet(const DebugContext &debugContext = {});
  VertexRef addVertex(ComputeSet cs, StringRef vertexType);
  void connect(FieldRef field, const Tensor &tensor);
  template <typename T> void setInitialValue(FieldRef field, T val) {
    setFieldValue(field, static_cast<double>(val));
  }
  template <typename T> void setInitialValue(const Tensor &t, T val) {
    setTensorValue(t, static_cast<double>(val));
  }
  template <typename T> void setInitialValue(const Tensor &t, ArrayRef<T> values) {
    std::vector<double> v(values.begin(), values.end());
    setTensorValues(t, v);
  }
  void setPerfEstimate(const VertexRef &v, std::uint64_t cycles);
  bool addCodelets(StringRef src, const OptionFlags &options = {},
                   StringRef compileFlags = "");
  RemoteBuffer addRemoteBuffer(const std::string &handle, const Type &elementType,
                               std::size_t numElements, std::size_t repeats = 1,
                               bool rearrangeOnHost = false, bool optimiseMemory = false);

private:
  friend struct ::poplar_mock::GraphData;
  // The mock's one way in for the templates above (the SDK's are its own).
  Tensor addConstantValue(const Type &type, ArrayRef<std::size_t> shape, double val,
                          const DebugContext &debugContext);
  void setFieldValue(FieldRef field, double val);
  void setTensorValue(const Tensor &t, double val);
  void setTensorValues(const Tensor &t, const std::vector<double> &vals);
  std::shared_ptr<::poplar_mock::GraphData> data_;
};
}  // namespace poplar
