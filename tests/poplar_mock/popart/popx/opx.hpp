// Mock of <popart/popx/opx.hpp> (PopART 3.x, willow/include/popart/popx/opx.hpp).
#pragma once
#include <set>
#include <string>
#include <vector>
#include <poplar/Graph.hpp>
#include <popart/op.hpp>
#include <popart/popx/inputcreatortype.hpp>
namespace popart {
namespace popx {
class Devicex;
class Opx {
public:
  Opx(Op *, Devicex *);
  virtual ~Opx();
  virtual poplar::Tensor createInput(InIndex index, const poplar::DebugNameAndId &dnai) const;
  virtual InputCreatorType getInputCreatorType(InIndex index) const;
  virtual bool createsEquiv(int index0, const Opx *opx1, int index1) const;
  virtual std::set<TensorId> mustExistBeforeCreate(int index0) const;
  virtual void grow(poplar::program::Sequence &) const;
  virtual poplar::Graph &graph() const;
  poplar::DebugContext debugContext(
      const std::string name = "",
      poplar::SourceLocation loc = poplar::SourceLocation::Current()) const;
  const TensorInfo &inInfo(InIndex) const;
  const Shape &inShape(InIndex) const;
  const TensorInfo &outInfo(OutIndex) const;
  const Shape &outShape(OutIndex) const;
  template <class OP> OP &getOp() const;
  template <class OP> void verifyOp(Op *op, const OperatorIdentifier &opid);
  template <class OP> void verifyOp(Op *op, std::vector<OperatorIdentifier> opids);
  const poplar::Tensor &getInTensor(InIndex index) const;
  void setOutTensor(OutIndex index, const poplar::Tensor &tensor) const;
};
}  // namespace popx
}  // namespace popart
