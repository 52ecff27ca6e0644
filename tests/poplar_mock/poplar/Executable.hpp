// Mock of <poplar/Executable.hpp> (Poplar 3.x): the class, held by value in a
// nonstd::optional by PopART's IrLowering (popart/popx/irlowering.hpp).
#pragma once
namespace poplar {
class Executable {
public:
  Executable(Executable &&) noexcept;
  Executable &operator=(Executable &&) noexcept;
  ~Executable();
};
}  // namespace poplar
