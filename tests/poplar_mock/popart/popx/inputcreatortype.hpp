// Mock of <popart/popx/inputcreatortype.hpp> (PopART 3.x,
// willow/include/popart/popx/inputcreatortype.hpp; included by opx.hpp).
#pragma once
namespace popart {
namespace popx {
enum class InputCreatorType {
  CanCreate = 0,
  CanUnwind,
  CanCreateOrUnwind,
  Deadend,
  CanDelegate,
  CanDelegateOrUnwind
};
}  // namespace popx
}  // namespace popart
