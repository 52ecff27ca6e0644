// Runs the Poplar vertices of custom_ops/poplar/ on the host, tile by tile, the
// way the Opx lay them out, and prints the stitched results.
//
// Built by tests/ipu/test_poplar_sources.py with g++ against the mock SDK headers
// (tests/poplar_mock/: a vertex field there is a pointer and a size, as in
// Poplar's vertex state). For every tile of the column split it copies the
// tile's blocks out of the global tensors (what connecting
// `columnBlock(tensor, columns)` to a field gives the vertex), runs the
// vertex, and puts the outputs back where the Opx maps them.
// The split is tile_split.hpp's, the one the Opx use. The test compares the
// output with torch references computed independently in Python.
//
// A MultiVertex runs as on a tile: compute(w) for every worker w of
// MultiVertex::numWorkers(). runWorkers checks what a tile needs of it: no two
// workers write the same 32-bit word of any field the vertex writes (each
// worker is run alone on outputs filled with two patterns; a byte it changes
// in either run is one it writes), every byte of an output is written (scratch
// may keep unused bytes), and what was written does not depend on the order
// the workers run in (all in order from one filling, all in reverse from the
// other, compared byte for byte). A failure exits with code 4.
//
// Protocol (whitespace-separated tokens on stdin, results on stdout):
//   split   <count> then <n> <parts> pairs  -> one line per pair: begin end ...
//   neuron  <B> <N> <tiles> <adaptive> <reset> <surrogate> <threshold>
//           <adapt_strength> <scale> current vPrev aPrev [B*N] beta rho [N]
//           gradZ gradV gradA [B*N]         -> per type (float, half):
//           vNew aNew z d bits gradCurrent gradVPrev gradAPrev, one line each
//   workers <count> then <n> <workers> <grain> triples -> one line per triple:
//           begin end of each worker's work_split.h span
//   selfcheck shared|ordered  -> runs a deliberately wrong MultiVertex (two
//           workers writing halves of one word; a worker reading another's
//           output), which runWorkers must reject with exit code 4
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include <poplar_mock/FieldAccess.hpp>

#include "neuron_codelets.cpp"
#include "tile_split.hpp"

namespace {

using ipu_snn::tiling::Range;
using poplar_mock::bind;

template <typename T>
std::vector<T> readValues(std::size_t n) {
  std::vector<T> values(n);
  for (std::size_t i = 0; i < n; ++i) {
    double x;
    std::cin >> x;
    values[i] = T(static_cast<float>(x));
  }
  return values;
}

template <typename T>
void printLine(const std::vector<T> &values) {
  for (std::size_t i = 0; i < values.size(); ++i) {
    std::printf(i ? " %.9g" : "%.9g", static_cast<double>(static_cast<float>(values[i])));
  }
  std::printf("\n");
}

// The Opx's split: splitEven over the tile range, empty (trailing) tiles dropped.
std::vector<Range> ownedColumns(std::size_t n, std::size_t tiles) {
  std::vector<Range> owned;
  for (const Range &r : ipu_snn::tiling::splitEven(n, tiles)) {
    if (!r.empty()) owned.push_back(r);
  }
  return owned;
}

// columnBlock(t, cols) of a row-major [rows, n] tensor: the flat [rows, width] block.
template <typename T>
std::vector<T> block(const std::vector<T> &t, std::size_t n, const Range &cols) {
  const std::size_t rows = t.size() / n;
  std::vector<T> out;
  out.reserve(rows * cols.size());
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = cols.begin; c < cols.end; ++c) out.push_back(t[r * n + c]);
  }
  return out;
}

// The inverse: writes a tile's [rows, width] block back into its columns.
template <typename T, typename U>
void unblock(std::vector<T> &t, std::size_t n, const Range &cols, const std::vector<U> &b) {
  const std::size_t rows = t.size() / n, width = cols.size();
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = 0; c < width; ++c) t[r * n + cols.begin + c] = T(b[r * width + c]);
  }
}

template <typename T>
std::vector<T> convert(const std::vector<float> &v) {
  return std::vector<T>(v.begin(), v.end());
}

// The bytes of a buffer a vertex writes (an Output or InOut field's); every
// byte of it must be written unless it is scratch.
struct Written {
  unsigned char *data;
  std::size_t bytes;
  bool scratch;
};

template <typename T>
Written written(std::vector<T> &buffer, bool scratch = false) {
  return Written{reinterpret_cast<unsigned char *>(buffer.data()), buffer.size() * sizeof(T),
                 scratch};
}

[[noreturn]] void fail(const std::string &what) {
  std::fprintf(stderr, "%s\n", what.c_str());
  std::exit(4);
}

void fill(const std::vector<Written> &outputs, unsigned char pattern) {
  for (const Written &o : outputs) std::memset(o.data, pattern, o.bytes);
}

std::vector<std::vector<unsigned char>> snapshot(const std::vector<Written> &outputs) {
  std::vector<std::vector<unsigned char>> copy;
  for (const Written &o : outputs) copy.emplace_back(o.data, o.data + o.bytes);
  return copy;
}

// Runs a MultiVertex as a tile does, with the checks in the header comment;
// leaves the outputs as all workers, in order, wrote them.
template <typename V>
void runWorkers(V &vertex, const std::vector<Written> &outputs, const char *name) {
  const unsigned workers = poplar::MultiVertex::numWorkers();
  constexpr unsigned char kFillA = 0xA5, kFillB = 0x5A;
  std::vector<std::vector<int>> word(outputs.size());   // writing worker per word, -1 none
  std::vector<std::vector<bool>> byte(outputs.size());  // whether any worker writes the byte
  for (std::size_t o = 0; o < outputs.size(); ++o) {
    word[o].assign((outputs[o].bytes + 3) / 4, -1);
    byte[o].assign(outputs[o].bytes, false);
  }
  for (unsigned w = 0; w < workers; ++w) {
    fill(outputs, kFillA);
    vertex.compute(w);
    const auto a = snapshot(outputs);
    fill(outputs, kFillB);
    vertex.compute(w);
    const auto b = snapshot(outputs);
    for (std::size_t o = 0; o < outputs.size(); ++o) {
      for (std::size_t i = 0; i < outputs[o].bytes; ++i) {
        if (a[o][i] == kFillA && b[o][i] == kFillB) continue;
        byte[o][i] = true;
        int &who = word[o][i / 4];
        if (who >= 0 && who != int(w)) {
          fail(std::string(name) + ": workers " + std::to_string(who) + " and " +
               std::to_string(w) + " write word " + std::to_string(i / 4) + " of output " +
               std::to_string(o));
        }
        who = int(w);
      }
    }
  }
  for (std::size_t o = 0; o < outputs.size(); ++o) {
    for (std::size_t i = 0; i < outputs[o].bytes && !outputs[o].scratch; ++i) {
      if (!byte[o][i]) {
        fail(std::string(name) + ": no worker writes byte " + std::to_string(i) + " of output " +
             std::to_string(o));
      }
    }
  }
  // Compares what the workers wrote after running them in reverse from one
  // filling and in order from the other.
  auto writtenBytes = [&]() {
    std::vector<unsigned char> kept;
    for (std::size_t o = 0; o < outputs.size(); ++o) {
      for (std::size_t i = 0; i < outputs[o].bytes; ++i) {
        if (byte[o][i]) kept.push_back(outputs[o].data[i]);
      }
    }
    return kept;
  };
  fill(outputs, kFillB);
  for (unsigned w = workers; w-- > 0;) vertex.compute(w);
  const auto reversed = writtenBytes();
  fill(outputs, kFillA);
  for (unsigned w = 0; w < workers; ++w) vertex.compute(w);
  if (writtenBytes() != reversed) fail(std::string(name) + ": result depends on worker order");
}

// Wrong on purpose, to show runWorkers' checks catch it: worker w writes the
// halves w, w + workers, ..., so neighbouring halves of a word have two writers.
class SharesWords : public poplar::MultiVertex {
public:
  poplar::Output<poplar::Vector<half>> out;
  bool compute(unsigned worker) {
    for (unsigned i = worker; i < out.size(); i += numWorkers()) out[i] = half(float(i));
    return true;
  }
};

// Wrong on purpose: each worker writes its own word, from its neighbour's.
class ReadsOthers : public poplar::MultiVertex {
public:
  poplar::InOut<poplar::Vector<float>> out;
  bool compute(unsigned worker) {
    const unsigned next = (worker + 1) % numWorkers();
    out[worker] = out[next] + 1.0f;
    return true;
  }
};

void runSelfCheck() {
  std::string which;
  std::cin >> which;
  if (which == "shared") {
    std::vector<half> buffer(12);
    SharesWords v;
    bind(v.out, buffer);
    runWorkers(v, {written(buffer)}, "SharesWords");
  } else if (which == "ordered") {
    std::vector<float> buffer(poplar::MultiVertex::numWorkers());
    ReadsOthers v;
    bind(v.out, buffer);
    runWorkers(v, {written(buffer)}, "ReadsOthers");
  }
  std::printf("not caught\n");
}

void runWorkerSpans() {
  std::size_t count;
  std::cin >> count;
  for (std::size_t i = 0; i < count; ++i) {
    unsigned n, workers, grain;
    std::cin >> n >> workers >> grain;
    for (unsigned w = 0; w < workers; ++w) {
      const ipu_snn::core::Span<unsigned> s =
          ipu_snn::core::worker_span<unsigned>(n, workers, w, grain);
      std::printf("%u %u ", s.begin, s.end);
    }
    std::printf("\n");
  }
}

void runSplit() {
  std::size_t count;
  std::cin >> count;
  for (std::size_t i = 0; i < count; ++i) {
    std::size_t n, parts;
    std::cin >> n >> parts;
    for (const Range &r : ipu_snn::tiling::splitEven(n, parts)) {
      std::printf("%zu %zu ", r.begin, r.end);
    }
    std::printf("\n");
  }
}

struct NeuronCase {
  std::size_t batch, neurons, tiles;
  unsigned adaptive, reset, surrogate;
  float threshold, adaptStrength, scale;
  std::vector<float> current, vPrev, aPrev, beta, rho, gradZ, gradV, gradA;
};

template <typename T>
void runNeuron(const NeuronCase &c) {
  const std::size_t n = c.neurons, rowBytes = (n + 7) / 8;
  const std::vector<Range> split = ownedColumns(n, c.tiles);
  std::vector<T> vNew(c.batch * n), aNew(c.batch * n), z(c.batch * n), d(c.batch * n);
  std::vector<unsigned char> bits(c.batch * rowBytes, 0xAA);  // every byte must be written

  // Compute set 1: NeuronForward on every tile's columns.
  for (const Range &cols : split) {
    std::vector<T> current = block(convert<T>(c.current), n, cols),
                   vPrev = block(convert<T>(c.vPrev), n, cols),
                   aPrev = block(convert<T>(c.aPrev), n, cols),
                   beta = block(convert<T>(c.beta), n, cols),
                   rho = block(convert<T>(c.rho), n, cols);
    const std::size_t size = c.batch * cols.size();
    std::vector<T> v(size), a(size), zb(size), db(size);
    NeuronForward<T> f;
    bind(f.current, current); bind(f.vPrev, vPrev); bind(f.aPrev, aPrev);
    bind(f.beta, beta); bind(f.rho, rho);
    bind(f.vNew, v); bind(f.aNew, a); bind(f.z, zb); bind(f.d, db);
    f.threshold = c.threshold; f.adaptStrength = c.adaptStrength; f.scale = c.scale;
    f.reset = c.reset; f.surrogate = c.surrogate; f.kind = c.adaptive;  // 0 LIF, 1 ALIF
    bind(f.thresholds, beta); f.perNeuron = 0;  // the layer's scalar threshold
    f.colBegin = cols.begin; f.colEnd = cols.end;
    runWorkers(f, {written(v), written(a), written(zb), written(db)}, "NeuronForward");
    unblock(vNew, n, cols, v); unblock(aNew, n, cols, a);
    unblock(z, n, cols, zb); unblock(d, n, cols, db);
  }
  // Compute set 2: PackSpikes, each byte by the tile of its first neuron.
  for (const Range &cols : split) {
    const Range bytes = ipu_snn::tiling::ownedBytes(cols);
    if (bytes.empty()) continue;
    const Range zCols{8 * bytes.begin, std::min(8 * bytes.end, n)};
    std::vector<T> zBlock = block(z, n, zCols);
    std::vector<unsigned char> bitBlock(c.batch * bytes.size());
    PackSpikes<T> p;
    bind(p.z, zBlock); bind(p.bits, bitBlock);
    p.numNeurons = zCols.size();
    runWorkers(p, {written(bitBlock)}, "PackSpikes");
    unblock(bits, rowBytes, bytes, bitBlock);
  }
  // NeuronBackward, reading the stitched bits; each worker has its own slice
  // of re-packed spikes, sized as network_graph.cpp sizes a part's ownBits.
  const unsigned workers = poplar::MultiVertex::numWorkers();
  const unsigned rowsPerWorker = ipu_snn::core::worker_span_bound<unsigned>(
      c.batch, workers, ipu_snn::core::kWordItems<T>);
  std::vector<T> gradCurrent(c.batch * n), gradVPrev(c.batch * n), gradAPrev(c.batch * n);
  for (const Range &cols : split) {
    const Range bytes{cols.begin / 8, (cols.end + 7) / 8};
    std::vector<T> gz = block(convert<T>(c.gradZ), n, cols),
                   gv = block(convert<T>(c.gradV), n, cols),
                   ga = block(convert<T>(c.gradA), n, cols),
                   dBlock = block(d, n, cols),
                   beta = block(convert<T>(c.beta), n, cols),
                   rho = block(convert<T>(c.rho), n, cols);
    std::vector<unsigned char> bitBlock = block(bits, rowBytes, bytes);
    const unsigned ownSlice =
        ipu_snn::core::packed_slice_bytes<unsigned>(rowsPerWorker, cols.size());
    std::vector<unsigned char> ownBits(workers * ownSlice);
    const std::size_t size = c.batch * cols.size();
    std::vector<T> gc(size), gvp(size), gap(size), gvPre(size);
    NeuronBackward<T> b;
    bind(b.gradZ, gz); bind(b.gradV, gv); bind(b.gradA, ga); bind(b.bits, bitBlock);
    bind(b.d, dBlock); bind(b.beta, beta); bind(b.rho, rho);
    bind(b.gradCurrent, gc); bind(b.gradVPrev, gvp); bind(b.gradAPrev, gap);
    bind(b.gradVPre, gvPre);  // CUBA's: not written for LIF and ALIF
    bind(b.ownBits, ownBits);
    b.adaptStrength = c.adaptStrength; b.reset = c.reset; b.kind = c.adaptive;
    b.colBegin = cols.begin; b.colEnd = cols.end; b.ownSlice = ownSlice;
    runWorkers(b, {written(gc), written(gvp), written(gap), written(ownBits, true)},
               "NeuronBackward");
    unblock(gradCurrent, n, cols, gc); unblock(gradVPrev, n, cols, gvp);
    unblock(gradAPrev, n, cols, gap);
  }
  for (const auto *t : {&vNew, &aNew, &z, &d}) printLine(*t);
  printLine(std::vector<float>(bits.begin(), bits.end()));
  for (const auto *t : {&gradCurrent, &gradVPrev, &gradAPrev}) printLine(*t);
}

}  // namespace

int main() {
  std::string mode;
  std::cin >> mode;
  if (mode == "split") {
    runSplit();
  } else if (mode == "workers") {
    runWorkerSpans();
  } else if (mode == "selfcheck") {
    runSelfCheck();
  } else if (mode == "neuron") {
    NeuronCase c;
    std::cin >> c.batch >> c.neurons >> c.tiles >> c.adaptive >> c.reset >> c.surrogate >>
        c.threshold >> c.adaptStrength >> c.scale;
    const std::size_t size = c.batch * c.neurons;
    c.current = readValues<float>(size);
    c.vPrev = readValues<float>(size);
    c.aPrev = readValues<float>(size);
    c.beta = readValues<float>(c.neurons);
    c.rho = readValues<float>(c.neurons);
    c.gradZ = readValues<float>(size);
    c.gradV = readValues<float>(size);
    c.gradA = readValues<float>(size);
    runNeuron<float>(c);
    runNeuron<half>(c);
  } else {
    std::fprintf(stderr, "unknown mode '%s'\n", mode.c_str());
    return 2;
  }
  return std::cin.fail() ? 3 : 0;
}
