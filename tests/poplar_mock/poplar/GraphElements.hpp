// Mock of <poplar/GraphElements.hpp> (Poplar 3.x): handles of compute sets,
// vertices and vertex fields; Function and FunctionBuffer, which PopART's
// popprograms.hpp and irlowering.hpp hold by value.
#pragma once
#include <string>
#include <poplar/StringRef.hpp>
namespace poplar_mock {
struct GraphData;
}
namespace poplar {
class ComputeSet {
private:
  friend struct ::poplar_mock::GraphData;
  unsigned id_ = ~0u;
};
class FieldRef {
private:
  friend struct ::poplar_mock::GraphData;
  unsigned vertex_ = ~0u;
  std::string name_;
};
class Function {
private:
  unsigned id_ = ~0u;
};
class FunctionBuffer {
private:
  unsigned id_ = ~0u;
};
class VertexRef {
public:
  FieldRef operator[](StringRef name) const;

private:
  friend struct ::poplar_mock::GraphData;
  unsigned id_ = ~0u;
};
}  // namespace poplar
