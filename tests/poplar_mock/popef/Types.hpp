// Stand-in for <popef/Types.hpp> (PopEF, shipped with the SDK): the program
// index type that PopART's popprograms.hpp keys a map with
// (popef::ProgramFlow::ProgramIndexType).
#pragma once
#include <cstdint>
namespace popef {
struct ProgramFlow {
  using ProgramIndexType = uint64_t;
};
}  // namespace popef
