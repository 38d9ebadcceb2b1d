"""The persistent kernels' own paths, on the devices that run them (simt, cuda).

Module and op parity on the persistent path are the ``*-persistent`` cases of
test_parity / test_ops. Here: the tiling plan forced (debug override) to several units
per block, a partial last block and several batch tiles, at small sizes, forward and
backward; the fallback when a size does not fit on chip; the grid-barrier
micro-benchmark.
"""

from __future__ import annotations

import math

import pytest
import torch

from fusedrnn import ops, reference
from test_ops import TOL, assert_close_all, grads_of, layer_case, leaves_on

# H = 13 over at most 3 blocks: 5 units per block, the last block 3; B = 10 in tiles of
# 4 rows: three tiles, the last with 2 rows (a partial group of the kernel's 4).
STEPS, HIDDEN, BATCH, MAX_BLOCKS, TILE = 7, 13, 10, 3, 4
LENGTHS = [7, 3, 6, 1, 7, 5, 2, 4, 7, 3]


def simt_launches():
    """SIMT launches so far, summed over kernels (None on CUDA)."""
    if ops.backend() != "simt":
        return None
    return sum(torch.ops.fusedrnn_simt_debug.launch_counts()[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("gates", [4, 3, 1], ids=["LSTM", "GRU", "RNN"])
def test_tiling_override_forces_every_path(gates, dtype, persistent_device):
    debug = persistent_device.debug
    debug.set_persistent_tiling(MAX_BLOCKS, TILE)
    units, tile, blocks, shared = debug.persistent_plan(dtype, gates, HIDDEN, BATCH)
    assert units > 1, "several units per block"
    assert HIDDEN % units != 0 and blocks == math.ceil(HIDDEN / units), "a partial last block"
    assert tile == TILE and math.ceil(BATCH / tile) > 1 and BATCH % tile != 0, "partial tiles"
    elem = 8 if dtype == torch.float64 else 4
    assert shared == (gates * units + tile) * HIDDEN * elem
    debug.set_persistent_tiling(0, 0)
    assert debug.persistent_plan(dtype, gates, HIDDEN, BATCH)[:2] != [units, tile]  # it mattered


@pytest.mark.parametrize("lengths,reverse", [(None, False), (LENGTHS, True)],
                         ids=["full", "lengths-reverse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_forced_tiling_matches_reference(mode, dtype, lengths, reverse, persistent_device):
    """Outputs, final states and every gradient, forward and backward each in one
    persistent launch (the backward reads the gates and cells the forward saved)."""
    persistent_device.debug.set_persistent_tiling(MAX_BLOCKS, TILE)
    inputs, lens, layer, ref_layer = layer_case(mode, STEPS, BATCH, HIDDEN, dtype, lengths)
    on_device = leaves_on(persistent_device, inputs)
    before = simt_launches()
    fused = layer(*on_device, lens, reverse)
    if before is not None:  # one launch: the persistent kernel, not the step loop
        assert simt_launches() == before + 1
    expected = ref_layer(*inputs, lens, reverse)
    assert_close_all(fused, expected, TOL[dtype])
    before = simt_launches()
    grads = grads_of(fused, on_device)
    if before is not None:  # the persistent backward, not a launch per step
        assert simt_launches() == before + 1
    assert_close_all(grads, grads_of(expected, inputs), TOL[dtype])


def test_fallback_when_too_large(persistent_device):
    """Hidden beyond what fits on chip: the call says it fell back (persistent_fallbacks, on
    every device), and gives the standard kernels' answer (one launch per step on SIMT,
    where the launches can be counted)."""
    torch.manual_seed(0)
    H = persistent_device.debug.persistent_max_hidden(torch.float32, 4) + 1
    assert persistent_device.debug.persistent_plan(torch.float32, 4, H, 1)[2] == 0
    on = persistent_device.to
    x = torch.randn(3, 2, 8)
    w_ih = torch.randn(4 * H, 8) * 0.1
    w = torch.randn(4 * H, H) * 0.01
    h0 = torch.randn(2, H)
    c0 = torch.randn(2, H)
    before, fallbacks = simt_launches(), persistent_device.debug.persistent_fallbacks()
    with torch.no_grad():
        got = ops.lstm_layer(on(x), on(w_ih), None, on(w), None, on(h0), on(c0))
    assert persistent_device.debug.persistent_fallbacks() == fallbacks + 1
    if before is not None:
        assert simt_launches() == before + x.shape[0]
    expected = reference.lstm_layer(x, w_ih, None, w, None, h0, c0)
    assert_close_all(got, expected, 5e-5)


def test_barrier_microbenchmark_runs(kernel_device):
    blocks = torch.cuda.get_device_properties(0).multi_processor_count \
        if kernel_device.name == "cuda" else 2
    steps = 1000 if kernel_device.name == "cuda" else 20
    us = kernel_device.debug.persistent_barrier_us(steps, blocks)
    assert 0 < us < 1e6
    with pytest.raises(RuntimeError, match="co-resident"):
        kernel_device.debug.persistent_barrier_us(1, 100000)


@pytest.mark.parametrize("max_blocks,batch_tile", [(-1, 0), (0, 6), (0, -4)])
def test_tiling_override_refuses_bad_values(max_blocks, batch_tile, kernel_device):
    with pytest.raises(RuntimeError, match="set_persistent_tiling"):
        kernel_device.debug.set_persistent_tiling(max_blocks, batch_tile)
