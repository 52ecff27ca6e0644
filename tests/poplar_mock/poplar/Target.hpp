// Mock of <poplar/Target.hpp> (Poplar 3.x): the device's description.
#pragma once
namespace poplar_mock {
struct GraphData;
}
namespace poplar {
class Target {
public:
  unsigned getNumTiles() const;
  unsigned getNumWorkerContexts() const;

private:
  friend struct ::poplar_mock::GraphData;
  unsigned tiles_ = 0;
  unsigned bytesPerTile_ = 0;
};
}  // namespace poplar
