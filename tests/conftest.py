"""Shared helpers for the module-level tests.

The pattern of every parity test:

    ref, fused = make_pair("LSTM", 5, 7, num_layers=2, dtype=torch.float64)
    expected = run(ref, x, hx)          # outputs + gradients (input, h0, c0, every parameter)
    actual = run(fused, x, hx)
    assert_results_close(actual, expected, TOL[torch.float64])

The kernel tests take a device parameter (tests/devices.py): ``cpu``, ``simt`` (the CUDA
kernel sources run on the CPU) and ``cuda``.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

import fusedrnn
from fusedrnn import ops, reference
from fusedrnn.reference import module_forward as reference_forward  # noqa: F401  (used by tests)

from devices import (SANITIZER, device, device_path, kernel_device,  # noqa: F401 (fixtures)
                     persistent_device)

# The project's tolerances (docs/design.md, Tolerances): fp64 within 1e-10; fp32 within 5e-5
# absolute at T <= 64.
TOL = reference.TOLERANCE

COVERAGE_TEST = "test_every_cuda_kernel_was_launched"


def pytest_configure(config):
    config.addinivalue_line("markers", "simt: runs the CUDA kernel sources on the CPU (csrc/simt/)")
    config.addinivalue_line("markers", "harness: builds and checks the SIMT harness itself")
    if SANITIZER:
        torch.set_num_threads(1)  # the kernels' own threads are what the sanitizers watch


# tests/run_sanitized.sh runs the slow sanitizer builds in shards, one process per core:
# FUSEDRNN_TEST_SHARD="k/n" keeps every n-th test from the k-th (the coverage check runs
# afterwards, on the launches the shards logged to FUSEDRNN_SIMT_LAUNCH_LOG).
SHARD = os.environ.get("FUSEDRNN_TEST_SHARD", "")
LAUNCH_LOG = os.environ.get("FUSEDRNN_SIMT_LAUNCH_LOG", "")


def pytest_collection_modifyitems(config, items):
    """The SIMT kernel-coverage check reads what the tests before it launched: run it last
    (a shard leaves it out: tests/run_sanitized.sh runs it after the shards)."""
    last = [item for item in items if item.name == COVERAGE_TEST]
    items[:] = [item for item in items if item.name != COVERAGE_TEST]
    if SHARD:
        k, n = (int(v) for v in SHARD.split("/"))
        items[:] = items[k::n]
    else:
        items += last


def pytest_sessionfinish(session, exitstatus):
    """A shard logs the SIMT launches it made, for the coverage check after the shards."""
    if LAUNCH_LOG:
        with ops.using_backend("simt"):  # loaded by the shard's tests already
            offsets, counts = torch.ops.fusedrnn_simt_debug.launch_counts()
        with open(LAUNCH_LOG, "w") as log:
            json.dump(dict(zip(offsets, counts)), log)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny models (examples, harness smoke tests): one thread is fastest, and
    steadier on a busy machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# The kinds the tests name beyond torch.nn's class names: the Elman RNN's relu form.
KIND_ALIASES = {"RNN_RELU": ("RNN", {"nonlinearity": "relu"}),
                "RNNCell_RELU": ("RNNCell", {"nonlinearity": "relu"})}


def kind_class(kind: str) -> tuple:
    """``(class name, constructor keywords)`` of a test's ``kind`` (KIND_ALIASES)."""
    return KIND_ALIASES.get(kind, (kind, {}))


def make_pair(kind: str, *args, seed: int = 0, **kwargs):
    """``(torch.nn.<kind>, fusedrnn.<kind>)`` built with the same arguments and state_dict
    (``kind`` a class name or one of KIND_ALIASES)."""
    name, extra = kind_class(kind)
    kwargs = {**extra, **kwargs}
    torch.manual_seed(seed)
    ref = getattr(torch.nn, name)(*args, **kwargs)
    fused = getattr(fusedrnn, name)(*args, **kwargs)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _flat(obj) -> list:
    """Tensors of a module's return value, in order (a PackedSequence gives its data)."""
    if isinstance(obj, PackedSequence):
        return [obj.data]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _flat(item)]
    return [obj]


def _leaf(t):
    """A fresh leaf sharing ``t``'s storage and strides (non-contiguous stays non-contiguous)."""
    return t.detach().requires_grad_(True)


def run(module, x, hx=None, *, wrap=None, forward=None) -> dict:
    """Forward + backward of ``module`` (or ``forward(input, hx)``, using ``module``'s parameters).

    ``x`` and the tensors in ``hx`` become fresh leaves (same strides); ``wrap`` turns the ``x``
    leaf into the real input (e.g. packs it or takes a strided view). The loss is a fixed random
    weighting of every returned tensor, so each output and final state gets a distinct,
    non-trivial gradient. Returns
    ``{name: tensor}`` of outputs ("out0", "out1", ...) and gradients ("grad_input",
    "grad_h0", "grad_c0", "grad_<param name>").
    """
    x = _leaf(x)
    if hx is None:
        states = []
    elif isinstance(hx, tuple):
        hx = tuple(_leaf(t) for t in hx)
        states = list(hx)
    else:
        hx = _leaf(hx)
        states = [hx]
    inp = wrap(x) if wrap is not None else x
    result = (forward or module)(inp, hx)
    outs = _flat(result)
    gen = torch.Generator().manual_seed(1234)
    # bf16-representable weights, so that a bf16 run and its fp32 baseline use the same loss.
    loss = sum((o * torch.randn(o.shape, generator=gen).bfloat16().to(o.device, o.dtype)).sum()
               for o in outs)
    module.zero_grad(set_to_none=True)
    loss.backward()
    res = {f"out{i}": o.detach() for i, o in enumerate(outs)}
    if isinstance(result, tuple) and isinstance(result[0], PackedSequence):
        packed = result[0]
        res["batch_sizes"] = packed.batch_sizes
        if packed.sorted_indices is not None:
            res["sorted_indices"] = packed.sorted_indices
    res["grad_input"] = x.grad
    for name, s in zip(("h0", "c0"), states):
        res[f"grad_{name}"] = s.grad
    for name, p in module.named_parameters():
        res[f"grad_{name}"] = p.grad
    return res


def assert_results_close(actual: dict, expected: dict, atol: float, what: str = "") -> None:
    """Same keys, shapes and dtypes; every tensor within ``atol`` (absolute)."""
    assert actual.keys() == expected.keys(), f"{what}: {sorted(actual)} != {sorted(expected)}"
    for key in expected:
        a, e = actual[key], expected[key]
        assert a is not None and e is not None, f"{what}: {key} is None ({a is None}, {e is None})"
        a, e = a.cpu(), e.cpu()
        assert a.shape == e.shape, f"{what}: {key} shape {tuple(a.shape)} != {tuple(e.shape)}"
        assert a.dtype == e.dtype, f"{what}: {key} dtype {a.dtype} != {e.dtype}"
        if not a.is_floating_point():
            assert torch.equal(a, e), f"{what}: {key} {a.tolist()} != {e.tolist()}"
            continue
        assert torch.isfinite(e).all(), f"{what}: expected {key} is not finite"
        err = (a.double() - e.double()).abs().max().item() if a.numel() else 0.0
        assert err <= atol, f"{what}: {key} max abs error {err:.3e} > {atol:.0e}"


def assert_within_twice_reference_error(actual: dict, low: dict, exact: dict,
                                        what: str = "") -> None:
    """The rule where no fixed bound applies (docs/design.md, Tolerances): every tensor of
    ``actual`` no further from ``exact`` (fp64) than twice the error of ``low`` (the
    reference in the same precision), and never held to less than the fp32 bound."""
    assert actual.keys() == exact.keys(), f"{what}: {sorted(actual)} != {sorted(exact)}"
    for key, e in exact.items():
        if not e.is_floating_point():
            assert torch.equal(actual[key].cpu(), e.cpu()), f"{what}: {key} differs"
            continue
        err, theirs = ((r[key].cpu().double() - e.cpu()).abs().max().item() if e.numel() else 0.0
                       for r in (actual, low))
        bound = max(TOL[torch.float32], reference.low_precision_tolerance(theirs))
        assert err <= bound, (f"{what}: {key} error {err:.3e} > {bound:.1e} "
                              f"(the reference's own {theirs:.1e})")


def assert_results_equal(actual: dict, expected: dict, what: str = "") -> None:
    """Bit-identical (torch.equal) tensors under the same keys."""
    assert actual.keys() == expected.keys(), f"{what}: {sorted(actual)} != {sorted(expected)}"
    for key in expected:
        assert torch.equal(actual[key].cpu(), expected[key].cpu()), f"{what}: {key} differs"
