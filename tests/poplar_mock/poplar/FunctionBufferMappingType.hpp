// Mock of <poplar/FunctionBufferMappingType.hpp> (Poplar 3.x): the enum, which
// PopART only passes around (popart/popx/irlowering.hpp, popprograms.hpp
// forward-declares it as `enum class FunctionBufferMappingType;`).
#pragma once
namespace poplar {
enum class FunctionBufferMappingType;
}  // namespace poplar
