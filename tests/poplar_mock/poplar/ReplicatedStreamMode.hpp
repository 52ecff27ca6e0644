// Mock of <poplar/ReplicatedStreamMode.hpp> (Poplar 3.x): the enum, which
// PopART's IrLowering returns (popart/popx/irlowering.hpp,
// getReplicatedStreamMode).
#pragma once
namespace poplar {
enum class ReplicatedStreamMode;
}  // namespace poplar
