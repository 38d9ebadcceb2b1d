"""pytest-benchmark suite for fusedrnn, on the shapes of ``python -m fusedrnn.bench``.

    pytest benchmarks/ --benchmark-only                          # default preset, this device
    pytest benchmarks/ --benchmark-only --rnn-preset quick
    pytest benchmarks/ --benchmark-only --benchmark-autosave     # save a run ...
    pytest benchmarks/ --benchmark-only --benchmark-compare      # ... and compare with it later

Options (also as environment variables FUSEDRNN_BENCH_PRESET, ..._DEVICE, ..._DTYPE):
  --rnn-preset NAME     a preset of ``python -m fusedrnn.bench`` (``--help`` lists them;
                        default: default)
  --rnn-device DEV      cpu | cuda (default: cuda when available)
  --rnn-dtype LIST      comma-separated dtypes (default: the preset's)
  --rnn-cell C          lstm | gru | both;  --rnn-mode M: train | infer | both
  --rnn-peers LIST      comma-separated, from torch.nn, fusedrnn, reference (default: torch.nn,fusedrnn)

Each configuration is one benchmark group holding one test per peer, so the
pytest-benchmark table compares fusedrnn with torch.nn directly.  Before a
non-baseline peer is timed it must pass the same correctness gate as in the
harness; a wrong kernel fails its test instead of being timed.  The timed
call is the harness's (``fusedrnn.bench.make_timed_call``); pytest-benchmark
does the timing.
"""

import os

import pytest
import torch


from fusedrnn import bench

PEERS = {bench.BASELINE: None, "fusedrnn": bench.FusedRNNPeer, "reference": bench.ReferencePeer}


def pytest_addoption(parser):
    g = parser.getgroup("fusedrnn benchmarks")
    env = os.environ.get
    g.addoption("--rnn-preset", default=env("FUSEDRNN_BENCH_PRESET", "default"),
                choices=sorted(bench.PRESETS), help="shapes (fusedrnn.bench presets)")
    g.addoption("--rnn-device", default=env("FUSEDRNN_BENCH_DEVICE"), choices=("cpu", "cuda"))
    g.addoption("--rnn-dtype", default=env("FUSEDRNN_BENCH_DTYPE"), help="comma-separated dtypes")
    g.addoption("--rnn-cell", default="both", choices=("lstm", "gru", "both"))
    g.addoption("--rnn-mode", default="both", choices=("train", "infer", "both"))
    g.addoption("--rnn-peers", default="torch.nn,fusedrnn", help="comma-separated peers")


def _configs(config):
    opt = config.getoption
    device = opt("--rnn-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = bench.parse_dtypes(opt("--rnn-dtype")) if opt("--rnn-dtype") else None
    cells = ("lstm", "gru") if opt("--rnn-cell") == "both" else (opt("--rnn-cell"),)
    modes = ("train", "infer") if opt("--rnn-mode") == "both" else (opt("--rnn-mode"),)
    return bench.preset_configs(opt("--rnn-preset"), device, dtypes, cells, modes)


def pytest_generate_tests(metafunc):
    if "rnn_config" in metafunc.fixturenames:
        configs = _configs(metafunc.config)
        metafunc.parametrize("rnn_config", configs, ids=[c.id for c in configs])
    if "rnn_peer" in metafunc.fixturenames:
        names = [n.strip() for n in metafunc.config.getoption("--rnn-peers").split(",") if n.strip()]
        unknown = [n for n in names if n not in PEERS]
        if unknown:
            raise pytest.UsageError(f"--rnn-peers: unknown {unknown}; choose from {list(PEERS)}")
        metafunc.parametrize("rnn_peer", names)


class _CaseCache:
    """Weights, inputs and baseline results of the current configuration,
    shared by its peers (the tests run configuration by configuration)."""

    def __init__(self):
        self.key, self.case = None, None

    def get(self, cfg):
        if self.key != cfg.id:
            self.case = None  # release the previous configuration first
            self.case = bench.Case(cfg)
            self.key = cfg.id
        return self.case


@pytest.fixture(scope="session")
def _case_cache():
    return _CaseCache()


@pytest.fixture
def rnn_case(rnn_config, _case_cache):
    if rnn_config.device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return _case_cache.get(rnn_config)


@pytest.fixture
def rnn_timed_call(rnn_config, rnn_peer, rnn_case):
    """The timed call for (configuration, peer), after the correctness gate,
    and the row's note."""
    cfg, train = rnn_config, rnn_config.mode == "train"
    if rnn_peer == bench.BASELINE:
        built, note = rnn_case.built_baseline(), "baseline"
    else:
        try:
            built, gate = bench.check_peer(PEERS[rnn_peer](), rnn_case, train)
        except Exception as e:  # noqa: BLE001  (the test fails with the peer's error)
            pytest.fail(f"{rnn_peer}: {bench.describe_error(e)}", pytrace=False)
        if not gate.passed:
            pytest.fail(f"{rnn_peer} {cfg.label}: {gate.summary()}", pytrace=False)
        note = built.note
    call = bench.make_timed_call(built, rnn_case, train)
    if cfg.device == "cuda":
        unsynchronized = call

        def call():
            unsynchronized()
            torch.cuda.synchronize()
    return call, note
