// Test-only: runs the programs recorded by the mock Poplar graph
// (HostGraph.hpp) on the host, each vertex's compute() from the real codelet
// sources (custom_ops/poplar/*_codelets.cpp), as Poplar's runtime would: fields
// are gathered from the connected tensors, wherever they live (the exchange),
// and written back after the vertex ran.
//
// It refuses (poplar_mock::Error) a vertex type it does not know, a vertex
// without a tile, a field left unconnected (or a scalar without a value), a
// connection to an unknown field or of the wrong element type, an element
// mapped to no tile, and a vertex that reads one of its Output fields or
// leaves part of one unwritten: every vertex runs twice, its Output fields
// filled with two different byte patterns, and the results must agree.
#pragma once
#include <cstddef>
#include <poplar/Program.hpp>
#include "HostGraph.hpp"
namespace poplar_mock {
// Checks the graph (every element mapped, every vertex complete) and sets
// constants and initial values; run() calls it once.
void initialise(GraphData &g);
void run(GraphData &g, const poplar::program::Program &p);
// Host access to a tensor's elements, in its row-major order (bytes of its type).
void write(GraphData &g, const poplar::Tensor &t, const void *src);
void read(const GraphData &g, const poplar::Tensor &t, void *dst);
RunStats &stats(GraphData &g);
}  // namespace poplar_mock
