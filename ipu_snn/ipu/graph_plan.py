"""The IPU plan counted from the network op's graph: what custom_ops/poplar/network_graph.cpp allocates
on each tile, built on a counting graph that holds no data, and a time model over its programs.

Time per iteration (forward program + backward program), each term from the graph:

* compute: the busiest tile's vertex work per compute set (field elements; a single-worker vertex
  counted six times), at one element per cycle, at the clock;
* exchange: the busiest tile's bytes received from other tiles per compute set and per Copy, at one
  tile's share of the exchange bandwidth;
* sync: one BSP synchronisation per exchange phase;
* host I/O: the packed input bits over the host link;
* streaming: remote-buffer copies (off-chip checkpoints) over the same link.

Constants and their sources: ipu_snn/ipu/README.md, "The plan from the graph".
"""

from __future__ import annotations

import numpy as np

from ipu_snn.devices import SPECS
from ipu_snn.executor import window_bounds
from ipu_snn.ipu.interpreter import MK2_TILE_BYTES, MK2_TILES, HostNetwork, LayerSpec
from ipu_snn.neuron.spec import RESET_CODES
from ipu_snn.neuron.surrogates import SURROGATES

#: The fewest samples per input-gradient pass the plan takes.
MIN_SAMPLES_PER_PASS = 1
_MK2 = SPECS["ipu-mk2"]
#: Estimated code per tile: the dozen small codelets the op's tiles run and the control program (a few
#: KiB each on the IPU's compact ISA); not derived from the graph, a fixed cost per tile.
CODE_BYTES = 24 * 1024
#: Estimated state of one vertex: its field pointers and sizes (Poplar's vertex state is tens of bytes),
#: rounded up for the exchange's edge lists; times the vertices the graph maps to the tile.
VERTEX_STATE_BYTES = 128
#: GC200 clock, derived: 62.5 TFLOP/s fp32 / (1472 tiles x 32 fp32 flops per tile and cycle) = 1.33 GHz.
CLOCK_HZ = _MK2.fp32_flops / (MK2_TILES * 32)
#: Inner-loop iterations a tile retires per cycle: six barrel-scheduled workers, one instruction each per
#: six cycles (IPU Programmer's Guide, "Tile architecture"), at least one instruction per iteration (a
#: lower bound on the work; a single-worker vertex retires one per six cycles, counted in the graph).
ELEMENTS_PER_CYCLE = 1.0
#: One tile's share of the GC200's 8 TB/s all-to-all IPU-Exchange (Graphcore's GC200 figure).
TILE_EXCHANGE_BYTES_PER_S = 8e12 / MK2_TILES
#: Cycles per BSP synchronisation of one IPU: an assumption (no public figure found), see the README.
SYNC_CYCLES = 150
#: The IPU's PCIe Gen4 x16 link, each way: host input and streaming memory both cross it (devices.py).
LINK_BYTES_PER_S = _MK2.offchip_bandwidth
#: Streaming memory per IPU (devices.py: the IPU-M2000's about 260 GB for its four IPUs).
STREAMING_BYTES_PER_IPU = _MK2.offchip_bytes


def layer_specs(model_cfg) -> list[LayerSpec]:
    """The network op's layers of a model config."""
    out = []
    for layer in model_cfg.layers:
        out.append(LayerSpec(layer.size, layer.is_recurrent, layer.threshold, RESET_CODES[layer.reset],
                             SURROGATES[layer.surrogate.name].code, layer.surrogate.scale,
                             learn_decay=layer.learn_decay, learn_threshold=layer.learn_threshold,
                             kind=layer.neuron.kernel_code,
                             adapt_strength=layer.param_values().get("adapt_strength", 0.0)))
    return out


def count_graph(model_cfg, n_inputs: int, n_classes: int, batch: int, steps: int, window: int, schedule,
                slots: int = 2) -> tuple[HostNetwork, int]:
    """The network op's counting graph with as many samples per input-gradient pass as fit a Mk2 tile (with
    ``slots`` optimizer buffers per parameter): the whole micro-batch if it fits, else half of it if that
    fits; else the fullest tile, about linear in the samples per pass, is extrapolated from those two
    counts to the most samples that fit, which are counted and halved until they do. When the line says
    not even one sample fits, the half batch's graph (the plan then refuses). Returns the graph and its
    samples per pass."""
    bounds = window_bounds(steps, window)

    def count(passes: int) -> tuple[HostNetwork, int]:
        host = HostNetwork(batch, steps, n_inputs, layer_specs(model_cfg), schedule, bounds, n_classes,
                           samples_per_pass=passes, holds_data=False)
        return host, int(tile_account(host, slots)["total"].max())

    host, whole = count(batch)
    half_passes = batch // 2
    if whole <= MK2_TILE_BYTES or half_passes < MIN_SAMPLES_PER_PASS:
        return host, batch
    half, fullest = count(half_passes)
    if fullest <= MK2_TILE_BYTES:
        return half, half_passes
    per_sample = (whole - fullest) / (batch - half_passes)
    passes = half_passes - int(-(-(fullest - MK2_TILE_BYTES) // per_sample)) if per_sample > 0 else 0
    while passes >= MIN_SAMPLES_PER_PASS:
        host, total = count(passes)
        if total <= MK2_TILE_BYTES:
            return host, passes
        passes //= 2
    return half, half_passes


def tile_account(host: HostNetwork, slots: int) -> dict:
    """Each tile's bytes by kind (arrays over the tiles): ``op``, the variables the op's graph maps to it
    (the interpreter's record); ``optimizer``, ``slots`` buffers per parameter on it; ``exchange``, the
    most it receives in one compute set; ``vertices`` and ``code``, the estimates above; and ``total``."""
    received, vertices = host.tile_overheads()
    used = (host.tile_bytes() > 0) | (vertices > 0)
    account = {"op": host.tile_bytes().astype(np.int64), "optimizer": slots * host.param_bytes().astype(np.int64),
               "exchange": received.astype(np.int64), "vertices": VERTEX_STATE_BYTES * vertices.astype(np.int64),
               "code": CODE_BYTES * used.astype(np.int64)}
    account["total"] = sum(account.values())
    return account


def optimizer_slots(training_cfg) -> int:
    """Buffers per parameter the optimizer keeps beside it (Adam, AdamW: 2; SGD: its momentum, if any)."""
    if training_cfg.optimizer in ("adam", "adamw"):
        return 2
    return int(training_cfg.momentum > 0)


def graph_plan(model_cfg, n_inputs: int, n_classes: int, batch: int, steps: int, window: int, schedule,
               rate: float = 0.05, slots: int = 2) -> dict:
    """The tile account and predicted time of one micro-batch's network op under ``schedule`` over the
    windows of ``window`` steps, as ``ipu-snn plan --json`` reports it under ``tiles``; ``rate``: the
    spikes per neuron and step the compute term assumes; ``slots``: the optimizer's buffers per parameter,
    which PopART lays out as their parameters, on the op's tiles (`optimizer_slots`)."""
    host, passes = count_graph(model_cfg, n_inputs, n_classes, batch, steps, window, schedule, slots)
    account = tile_account(host, slots)
    op_bytes, per_tile = account["op"], account["total"]
    fullest = int(per_tile.argmax())
    fwd, bwd = host.cost(False, rate), host.cost(True, rate)
    both = {k: fwd[k] + bwd[k] for k in fwd}
    counts = host.counts()
    input_bytes = batch * steps * ((n_inputs + 7) // 8)
    time = {"compute_s": both["work_elements"] / ELEMENTS_PER_CYCLE / CLOCK_HZ,
            "exchange_s": both["received_bytes"] / TILE_EXCHANGE_BYTES_PER_S,
            "sync_s": both["exchange_phases"] * SYNC_CYCLES / CLOCK_HZ,
            "host_io_s": input_bytes / LINK_BYTES_PER_S,
            "streaming_s": both["remote_bytes"] / LINK_BYTES_PER_S}
    time["total_s"] = sum(time.values())
    fits_tiles = int(per_tile.max()) <= MK2_TILE_BYTES
    fits_streaming = counts["remote_bytes"] <= STREAMING_BYTES_PER_IPU
    return {"source": "graph",
            "fits": fits_tiles and fits_streaming,
            "max_tile_bytes": int(per_tile.max()),
            "tile_capacity_bytes": MK2_TILE_BYTES,
            "tiles_used": int((per_tile > 0).sum()),
            "op_max_tile_bytes": int(op_bytes.max()),
            "optimizer_slots": slots,
            "fullest_tile": {"tile": fullest, "bytes": int(per_tile[fullest]),
                             "bytes_by_kind": {k: int(v[fullest]) for k, v in account.items() if k != "total"},
                             "largest": [{"name": n, "bytes": b} for n, b in host.tile_variables(fullest)[:6]]},
            "streaming_bytes": counts["remote_bytes"],
            "streaming_capacity_bytes": int(STREAMING_BYTES_PER_IPU),
            "graph": {"vertices": counts["vertices"], "compute_sets": counts["compute_sets"],
                      "variables": counts["variables"], "tape_slots": host.tape_slots,
                      "samples_per_pass": passes, "spike_rate": rate,
                      "compute_set_runs": both["compute_sets"], "exchange_phases": both["exchange_phases"],
                      "remote_bytes_moved": both["remote_bytes"], "input_bytes": input_bytes},
            "time": time}


__all__ = ["count_graph", "graph_plan", "layer_specs", "optimizer_slots"]
