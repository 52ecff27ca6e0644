// Mock of <poplar/GraphElements.hpp> (Poplar 3.x): handles of compute sets,
// vertices and vertex fields.
#pragma once
#include <poplar/StringRef.hpp>
namespace poplar {
class ComputeSet {};
class FieldRef {};
class VertexRef {
public:
  FieldRef operator[](StringRef name) const;
};
}  // namespace poplar
