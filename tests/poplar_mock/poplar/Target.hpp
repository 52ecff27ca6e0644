// Mock of <poplar/Target.hpp> (Poplar 3.x): the device's description.
#pragma once
namespace poplar {
class Target {
public:
  unsigned getNumTiles() const;
  unsigned getNumWorkerContexts() const;
};
}  // namespace poplar
