// Mock of <poplar/Engine.hpp> (Poplar 3.x): only the class, which PopART's
// Devicex holds through a std::unique_ptr (popart/popx/devicex.hpp).
#pragma once
namespace poplar {
class Engine {
public:
  ~Engine();
};
}  // namespace poplar
