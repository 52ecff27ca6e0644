// Mock of <poplar/Type.hpp> (Poplar 3.x): element types.
#pragma once
namespace poplar {
class Type {
public:
  bool operator==(const Type &) const;
  bool operator!=(const Type &) const;
};
extern Type BOOL, UNSIGNED_CHAR, INT, UNSIGNED_INT, HALF, FLOAT;
}  // namespace poplar
