// Runs the Poplar vertices of custom_ops/poplar/ on the host, tile by tile, the
// way the Opx lay them out, and prints the stitched results.
//
// Built by tests/test_poplar_sources.py with g++ against the mock SDK headers
// (tests/poplar_mock/: a vertex field there is a pointer and a size, as in
// Poplar's vertex state). For every tile of the column split it copies the
// tile's blocks out of the global tensors (what connecting
// `columnBlock(tensor, columns)` to a field gives the vertex), runs the
// vertex's compute(), and puts the outputs back where the Opx maps them; the
// input-gradient partials are summed over the tiles as popops::reduce does.
// The split is tile_split.hpp's, the one the Opx use. The test compares the
// output with torch references computed independently in Python.
//
// Protocol (whitespace-separated tokens on stdin, results on stdout):
//   split   <count> then <n> <parts> pairs  -> one line per pair: begin end ...
//   matmul  <B> <K> <nIn> <nOut> <tiles> ids[B*K] counts[B] weight[nIn*nOut]
//           gradOut[B*nOut]                 -> per type (float, half):
//           out[B*nOut] gradWeight[nIn*nOut] values[B*K] gradZ[B*nIn], one
//           line each (gradZ: the values scattered to rows by ScatterListed,
//           one vertex per sample, as SpikeLinearGradSpikes with dense_grad 0)
//   neuron  <B> <N> <tiles> <adaptive> <reset> <surrogate> <threshold>
//           <adapt_strength> <scale> current vPrev aPrev [B*N] beta rho [N]
//           gradZ gradV gradA [B*N]         -> per type (float, half):
//           vNew aNew z d bits gradCurrent gradVPrev gradAPrev, one line each
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <poplar_mock/FieldAccess.hpp>

#include "neuron_codelets.cpp"
#include "spike_codelets.cpp"
#include "tile_split.hpp"

namespace {

using ipu_snn::tiling::Range;
using poplar_mock::bind;
using poplar_mock::bindScalar;

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

struct MatmulCase {
  std::size_t batch, capacity, nIn, nOut, tiles;
  std::vector<int> ids, counts;
  std::vector<float> weight, gradOut;
};

template <typename T>
void runMatmul(MatmulCase &m) {
  const std::vector<T> weight = convert<T>(m.weight), gradOut = convert<T>(m.gradOut);
  std::vector<float> out(m.batch * m.nOut), gradWeight(m.nIn * m.nOut);
  std::vector<float> values(m.batch * m.capacity, 0.0f);  // the reduce over tiles
  for (const Range &cols : ownedColumns(m.nOut, m.tiles)) {
    // Scratch and blocks of this tile, as SpikeMatmul*Opx::grow allocate them.
    std::vector<int> offsets(m.nIn + 1), samples(m.batch * m.capacity),
        slots(m.batch * m.capacity);
    std::vector<T> wBlock = block(weight, m.nOut, cols), gBlock = block(gradOut, m.nOut, cols);

    SpikeMatmulForward<T> fwd;
    std::vector<float> outBlock(m.batch * cols.size(), -1.0f);  // vertex must overwrite
    bind(fwd.ids, m.ids); bind(fwd.counts, m.counts); bind(fwd.weight, wBlock);
    bind(fwd.offsets, offsets); bind(fwd.samples, samples); bind(fwd.out, outBlock);
    fwd.capacity = m.capacity; fwd.colBegin = cols.begin; fwd.colEnd = cols.end;
    fwd.compute();
    unblock(out, m.nOut, cols, outBlock);

    SpikeMatmulGradWeight<T> gw;
    std::vector<float> gwBlock(m.nIn * cols.size(), -1.0f);
    bind(gw.ids, m.ids); bind(gw.counts, m.counts); bind(gw.gradOut, gBlock);
    bind(gw.offsets, offsets); bind(gw.samples, samples); bind(gw.gradWeight, gwBlock);
    gw.capacity = m.capacity; gw.colBegin = cols.begin; gw.colEnd = cols.end;
    gw.compute();
    unblock(gradWeight, m.nOut, cols, gwBlock);

    SpikeMatmulGradInput<T> gi;
    std::vector<T> partial(m.batch * m.capacity, T(-1.0f));
    bind(gi.ids, m.ids); bind(gi.counts, m.counts); bind(gi.weight, wBlock);
    bind(gi.gradOut, gBlock); bind(gi.offsets, offsets); bind(gi.samples, samples);
    bind(gi.slots, slots); bind(gi.partial, partial);
    gi.capacity = m.capacity; gi.colBegin = cols.begin; gi.colEnd = cols.end;
    gi.compute();
    for (std::size_t i = 0; i < values.size(); ++i) values[i] += float(partial[i]);
  }
  // ScatterListed, one vertex per sample, on the reduced values (in T, as the
  // reduce returns them); every row element must be written.
  std::vector<float> gradZ(m.batch * m.nIn);
  for (std::size_t b = 0; b < m.batch; ++b) {
    std::vector<T> row(values.begin() + b * m.capacity, values.begin() + (b + 1) * m.capacity);
    std::vector<int> ids(m.ids.begin() + b * m.capacity, m.ids.begin() + (b + 1) * m.capacity);
    int count = m.counts[b];
    std::vector<T> rowOut(m.nIn, T(-1.0f));
    ScatterListed<T> sc;
    bind(sc.values, row); bind(sc.ids, ids); bindScalar(sc.count, count); bind(sc.out, rowOut);
    sc.compute();
    std::copy(rowOut.begin(), rowOut.end(), gradZ.begin() + b * m.nIn);
  }
  printLine(out);
  printLine(gradWeight);
  printLine(values);
  printLine(gradZ);
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
    std::vector<T> v(size, T(-7.0f)), a(size, T(-7.0f)), zb(size, T(-7.0f)), db(size, T(-7.0f));
    NeuronForward<T> f;
    bind(f.current, current); bind(f.vPrev, vPrev); bind(f.aPrev, aPrev);
    bind(f.beta, beta); bind(f.rho, rho);
    bind(f.vNew, v); bind(f.aNew, a); bind(f.z, zb); bind(f.d, db);
    f.threshold = c.threshold; f.adaptStrength = c.adaptStrength; f.scale = c.scale;
    f.reset = c.reset; f.surrogate = c.surrogate; f.adaptive = c.adaptive;
    f.colBegin = cols.begin; f.colEnd = cols.end;
    f.compute();
    unblock(vNew, n, cols, v); unblock(aNew, n, cols, a);
    unblock(z, n, cols, zb); unblock(d, n, cols, db);
  }
  // Compute set 2: PackSpikes, each byte by the tile of its first neuron.
  for (const Range &cols : split) {
    const Range bytes = ipu_snn::tiling::ownedBytes(cols);
    if (bytes.empty()) continue;
    const Range zCols{8 * bytes.begin, std::min(8 * bytes.end, n)};
    std::vector<T> zBlock = block(z, n, zCols);
    std::vector<unsigned char> bitBlock(c.batch * bytes.size(), 0x55);
    PackSpikes<T> p;
    bind(p.z, zBlock); bind(p.bits, bitBlock);
    p.numNeurons = zCols.size();
    p.compute();
    unblock(bits, rowBytes, bytes, bitBlock);
  }
  // NeuronBackward, reading the stitched bits.
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
    std::vector<unsigned char> spikeRow(8 * bytes.size()),
        ownBits(c.batch * ((cols.size() + 7) / 8));
    const std::size_t size = c.batch * cols.size();
    std::vector<T> gc(size, T(-7.0f)), gvp(size, T(-7.0f)), gap(size, T(-7.0f));
    NeuronBackward<T> b;
    bind(b.gradZ, gz); bind(b.gradV, gv); bind(b.gradA, ga); bind(b.bits, bitBlock);
    bind(b.d, dBlock); bind(b.beta, beta); bind(b.rho, rho);
    bind(b.gradCurrent, gc); bind(b.gradVPrev, gvp); bind(b.gradAPrev, gap);
    bind(b.spikeRow, spikeRow); bind(b.ownBits, ownBits);
    b.adaptStrength = c.adaptStrength; b.reset = c.reset; b.adaptive = c.adaptive;
    b.colBegin = cols.begin; b.colEnd = cols.end;
    b.compute();
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
  } else if (mode == "matmul") {
    MatmulCase m;
    std::cin >> m.batch >> m.capacity >> m.nIn >> m.nOut >> m.tiles;
    m.ids = readValues<int>(m.batch * m.capacity);
    m.counts = readValues<int>(m.batch);
    m.weight = readValues<float>(m.nIn * m.nOut);
    m.gradOut = readValues<float>(m.batch * m.nOut);
    runMatmul<float>(m);
    runMatmul<half>(m);
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
