// What the PopART ops of ipu_snn share: the tile-range attributes, the column
// split of a layer's neurons over those tiles, and the codelet loading.
//
// Mapping (ipu_snn/ipu/tiles.py, module docstring): each tile of an op's range
// owns a contiguous range of postsynaptic neurons, split by
// tiling::splitEven. A tile holds everything of its neurons: the weight
// columns W[:, own] of every matrix feeding them, the columns of the matmul
// output and of its gradient, and the neuron state. Tensors laid out that way
// are built as one variable per tile, concatenated along the neuron axis, so a
// tile's slice is a single contiguous block that its vertex reads without any
// exchange or rearrangement.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include <popart/error.hpp>
#include <popart/op.hpp>
#include <popart/opmanager.hpp>
#include <popart/opserialiser.hpp>

#include <poplar/Graph.hpp>
#include <poplar/Program.hpp>
#include <popops/Cast.hpp>

#include "tile_split.hpp"

// Where `make ipu` puts the compiled codelets; the Makefile passes the real path.
#ifndef IPU_SNN_CODELETS_PATH
#define IPU_SNN_CODELETS_PATH "spike_codelets.gp"
#endif

namespace ipu_snn {
namespace popart_ops {

// ------------------------------------------------------------------ IR side --

// The tile range an op's neurons are spread over (attributes tile_begin,
// tile_end; tile_end <= 0 means up to the graph's last tile).
struct TileRange {
  int64_t begin = 0;
  int64_t end = 0;
};

inline TileRange readTileRange(const popart::OpCreatorInfo &info) {
  TileRange range;
  range.begin = info.attributes.getAttribute<popart::Attributes::Int>("tile_begin", 0);
  range.end = info.attributes.getAttribute<popart::Attributes::Int>("tile_end", 0);
  return range;
}

// Every op here carries its tile range, which is part of its identity for
// outlining, and is worth outlining (high subgraph value).
class TiledOp : public popart::Op {
public:
  TiledOp(const popart::OperatorIdentifier &opid, TileRange tiles,
          const popart::Op::Settings &settings)
      : popart::Op(opid, settings), tiles_(tiles) {}

  void appendOutlineAttributes(popart::OpSerialiserBase &os) const override {
    popart::Op::appendOutlineAttributes(os);
    os.appendAttribute("tile_begin", tiles_.begin);
    os.appendAttribute("tile_end", tiles_.end);
  }

  float getSubgraphValue() const override { return getHighSubgraphValue(); }

  const TileRange &tiles() const { return tiles_; }

private:
  TileRange tiles_;
};

// ------------------------------------------------------------ Poplar side --

// Adds the codelets to the graph an Opx grows into. Every Opx calls it in its
// constructor, as PopTorch's own custom ops do (graphcore/poptorch
// popart_compiler/source/custom_operations/FastGatherLastDim.cpp: each Opx
// constructor calls graph().addCodelets), so nothing is remembered between
// graphs or compiles.
inline void addCodelets(poplar::Graph &graph) {
  const char *env = std::getenv("IPU_SNN_CODELETS");
  graph.addCodelets(env != nullptr ? env : IPU_SNN_CODELETS_PATH);
}

// The vertex type name for an element type, e.g. "NeuronForward<half>".
inline std::string vertexName(const std::string &base, const poplar::Type &type) {
  return base + (type == poplar::HALF ? "<half>" : "<float>");
}

// The Poplar type of a float tensor of the IR; the ops define no other.
inline poplar::Type floatType(popart::DataType type) {
  if (type == popart::DataType::FLOAT16) return poplar::HALF;
  if (type == popart::DataType::FLOAT) return poplar::FLOAT;
  throw popart::error("ipu_snn: expected a float32 or float16 tensor");
}

// t in `type`: itself when it already is, else cast (popops::cast keeps the
// tile mapping). Mixed precision meets the vertices, which take one type.
inline poplar::Tensor castTo(poplar::Graph &graph, const poplar::Tensor &t,
                             const poplar::Type &type, poplar::program::Sequence &prog,
                             const poplar::DebugContext &dc) {
  if (t.elementType() == type) return t;
  return popops::cast(graph, t, type, prog, dc);
}

// Elements of a float type in one 32-bit word: the grain in which the
// vertices share work out over workers (work_split.h's kWordItems).
inline unsigned wordItems(const poplar::Type &type) { return type == poplar::HALF ? 2 : 1; }

// The worker contexts each tile runs a MultiVertex on.
inline unsigned workersPerTile(const poplar::Graph &graph) {
  return graph.getTarget().getNumWorkerContexts();
}

// A MultiVertex's cycle estimate (IPU Model only): `cycles` of work shared by
// the tile's workers, plus a fixed start-up.
inline std::uint64_t perWorkerCycles(const poplar::Graph &graph, std::uint64_t cycles) {
  const unsigned workers = workersPerTile(graph);
  return (cycles + workers - 1) / workers + 20;
}

// A layer's neurons (weight columns) over an op's tile range. Only tiles that
// own neurons are listed: with more tiles than neurons, splitEven leaves the
// trailing tiles empty, and they get no vertex and no memory.
struct ColumnSplit {
  unsigned firstTile = 0;
  std::vector<tiling::Range> columns;  // columns[j]: neurons of tile firstTile + j, non-empty

  unsigned tile(std::size_t j) const { return firstTile + static_cast<unsigned>(j); }
};

// The tiles [first, first + count) a range means on a graph.
struct TileSpan {
  unsigned first;
  unsigned count;
};

inline TileSpan resolveTiles(const poplar::Graph &graph, const TileRange &range) {
  const unsigned numTiles = graph.getTarget().getNumTiles();
  const unsigned begin = static_cast<unsigned>(range.begin < 0 ? 0 : range.begin);
  unsigned end = numTiles;
  if (range.end > 0 && static_cast<uint64_t>(range.end) < numTiles) {
    end = static_cast<unsigned>(range.end);
  }
  if (begin >= end) {
    throw popart::error("ipu_snn: empty tile range [{}, {}) on a graph of {} tiles",
                        range.begin, range.end, numTiles);
  }
  return TileSpan{begin, end - begin};
}

inline ColumnSplit splitColumns(const poplar::Graph &graph, const TileRange &range,
                                std::size_t neurons) {
  const TileSpan span = resolveTiles(graph, range);
  if (neurons == 0) throw popart::error("ipu_snn: a layer needs at least one neuron");
  ColumnSplit split;
  split.firstTile = span.first;
  for (const tiling::Range &r : tiling::splitEven(neurons, span.count)) {
    if (!r.empty()) split.columns.push_back(r);  // empty ranges are all at the end
  }
  return split;
}

// A [prefix..., neurons] tensor built column-split: one variable
// [prefix..., own columns] per tile of the split, concatenated along the
// last axis. Tile j's slice is then exactly its variable.
inline poplar::Tensor addColumnMapped(poplar::Graph &graph, const poplar::Type &type,
                                      const std::vector<std::size_t> &prefix,
                                      const ColumnSplit &split,
                                      const poplar::DebugContext &dc) {
  std::vector<poplar::Tensor> parts;
  for (std::size_t j = 0; j < split.columns.size(); ++j) {
    std::vector<std::size_t> shape = prefix;
    shape.push_back(split.columns[j].size());
    poplar::Tensor part = graph.addVariable(type, shape, dc);
    graph.setTileMapping(part, split.tile(j));
    parts.push_back(part);
  }
  return poplar::concat(parts, static_cast<unsigned>(prefix.size()));
}

// Per-tile scratch: [tiles, width], row j on tile j of the range.
inline poplar::Tensor addScratch(poplar::Graph &graph, const poplar::Type &type,
                                 const ColumnSplit &split, std::size_t width,
                                 const poplar::DebugContext &dc) {
  const std::size_t tiles = split.columns.size();
  poplar::Tensor t = graph.addVariable(type, {tiles, width}, dc);
  for (std::size_t j = 0; j < tiles; ++j) graph.setTileMapping(t[j], split.tile(j));
  return t;
}

// Columns [range) of a [rows, cols] tensor as the flat [rows * width] block a
// vertex field expects.
inline poplar::Tensor columnBlock(const poplar::Tensor &t, const tiling::Range &range) {
  return t.slice(range.begin, range.end, 1).flatten();
}

}  // namespace popart_ops
}  // namespace ipu_snn
