// Mock of <poplar/Type.hpp> (Poplar 3.x): element types.
#pragma once
namespace poplar_mock {
struct TypeAccess;
}
namespace poplar {
class Type {
public:
  bool operator==(const Type &) const;
  bool operator!=(const Type &) const;

private:
  friend struct ::poplar_mock::TypeAccess;
  int id_ = -1;
};
extern Type BOOL, UNSIGNED_CHAR, INT, UNSIGNED_INT, HALF, FLOAT;
}  // namespace poplar
