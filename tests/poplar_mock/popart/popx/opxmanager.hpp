// Mock of <popart/popx/opxmanager.hpp> (PopART 3.x).
#pragma once
#include <vector>
#include <popart/op.hpp>
namespace popart {
namespace popx {
template <class OPX> class OpxCreator {
public:
  OpxCreator(OperatorIdentifier opid);
  OpxCreator(std::vector<OperatorIdentifier> opids);
};
}  // namespace popx
}  // namespace popart
