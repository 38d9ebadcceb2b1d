"""DistributedDataParallel trains fusedrnn models like torch.nn ones.

Two worker processes (this file run as a script) train under DDP with the gloo
backend, rendezvous through a file store, each on its half of every batch. The
test then checks, step by step, that the ranks hold identical weights and that
the all-reduced gradients equal those of one process: on the whole batch
without dropout, and with inter-layer dropout the mean of each rank's shard
gradient under that rank's own seed. Only gloo on the CPU is tested here;
NCCL on GPUs runs the same code but is untested.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import warnings
from datetime import timedelta

import pytest
import torch
import torch.nn.functional as F

import fusedrnn
from conftest import TOL

WORLD_SIZE = 2
STEPS = 3
BATCH, SEQ, FEATURES = 8, 5, 6
# Bounds for a hang (a normal run takes seconds; the CI machine may be loaded).
STORE_TIMEOUT_S = 60  # every collective gives up after this
RUN_TIMEOUT_S = 120  # the whole two-process run is killed after this
LR = 0.1
# kind -> constructor arguments; each is also trained with inter-layer dropout.
MODELS = {
    "LSTM": dict(hidden_size=8, num_layers=2, bidirectional=True, proj_size=4),
    "GRU": dict(hidden_size=8, num_layers=2, bidirectional=True),
}
CASES = [(kind, dropout) for kind in MODELS for dropout in (0.0, 0.4)]


class Tagger(torch.nn.Module):
    """A recurrent layer and a linear read-out of every step's output."""

    def __init__(self, kind: str, dropout: float):
        super().__init__()
        self.rnn = getattr(fusedrnn, kind)(FEATURES, batch_first=True, dropout=dropout,
                                           **MODELS[kind])
        width = self.rnn.proj_size or self.rnn.hidden_size
        self.head = torch.nn.Linear(2 * width, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out)


def build(kind: str, dropout: float) -> Tagger:
    torch.manual_seed(0)  # the same initial weights in every process
    return Tagger(kind, dropout)


def batches() -> list:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, SEQ, FEATURES, generator=gen),
             torch.randn(BATCH, SEQ, 3, generator=gen)) for _ in range(STEPS)]


def rank_seed(rank: int) -> int:
    return 100 + rank


def shard(tensor: torch.Tensor, rank: int) -> torch.Tensor:
    return tensor.chunk(WORLD_SIZE)[rank]


def train_step(model, x, y, optimizer) -> dict:
    """One SGD step; returns the gradients it applied."""
    optimizer.zero_grad(set_to_none=True)
    F.mse_loss(model(x), y).backward()
    grads = {n: p.grad.detach().clone() for n, p in _named(model)}
    optimizer.step()
    return grads


def _named(model):
    module = getattr(model, "module", model)
    return module.named_parameters()


# ------------------------------------------------------------------ worker


def worker(rank: int, init_file: str, result_file: str) -> None:
    """One DDP rank: train every case, save per-step gradients and weights."""
    from torch import distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD_SIZE, timeout=timedelta(seconds=STORE_TIMEOUT_S))
    results = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kind, dropout in CASES:
            model = build(kind, dropout)
            model.rnn.flatten_parameters()
            ddp = DDP(model, find_unused_parameters=False)
            ddp.module.rnn.flatten_parameters()
            optimizer = torch.optim.SGD(ddp.parameters(), lr=LR)
            torch.manual_seed(rank_seed(rank))  # dropout masks differ per rank
            steps = []
            for x, y in batches():
                grads = train_step(ddp, shard(x, rank), shard(y, rank), optimizer)
                weights = {n: p.detach().clone() for n, p in _named(ddp)}
                steps.append({"grads": grads, "weights": weights})
            results[(kind, dropout)] = {"steps": steps,
                                        "state_dict": ddp.module.rnn.state_dict()}
    results["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    torch.save(results, result_file)
    dist.destroy_process_group()


# ------------------------------------------------------------------- test

ATOL = TOL[torch.float32]
# The workers import the same fusedrnn as this process.
_FUSEDRNN_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fusedrnn.__file__)))


def _launch(tmp_path) -> list:
    """Run the ranks as separate processes; kill them all if they overrun."""
    init_file = tmp_path / "store"
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([_FUSEDRNN_ROOT, os.environ.get("PYTHONPATH", "")]))
    procs, logs = [], []
    for rank in range(WORLD_SIZE):
        log = open(tmp_path / f"rank{rank}.log", "w+")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, __file__, str(rank), str(init_file), str(tmp_path / f"rank{rank}.pt")],
            stdout=log, stderr=subprocess.STDOUT, env=env))
    try:
        for proc in procs:
            proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failures = []
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        log.seek(0)
        if proc.returncode != 0:
            failures.append(f"rank {rank} exited with {proc.returncode}:\n{log.read()[-3000:]}")
        log.close()
    assert not failures, "\n".join(failures)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("ddp"))


@functools.lru_cache(maxsize=None)
def _single_process_grads(kind: str, dropout: float) -> list:
    """The gradients DDP must apply, computed in this one process.

    Without dropout: the whole batch at once. With dropout: each rank's shard
    under that rank's random stream, averaged (what DDP's all-reduce computes).
    """
    model = build(kind, dropout)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    streams = []
    for rank in range(WORLD_SIZE):
        torch.manual_seed(rank_seed(rank))
        streams.append(torch.get_rng_state())
    expected = []
    for x, y in batches():
        if dropout == 0:
            expected.append(train_step(model, x, y, optimizer))
            continue
        per_rank = []
        for rank in range(WORLD_SIZE):
            torch.set_rng_state(streams[rank])
            optimizer.zero_grad(set_to_none=True)
            F.mse_loss(model(shard(x, rank)), shard(y, rank)).backward()
            per_rank.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
            streams[rank] = torch.get_rng_state()
        mean = {n: sum(g[n] for g in per_rank) / WORLD_SIZE for n in per_rank[0]}
        for n, p in model.named_parameters():
            p.grad = mean[n].clone()
        optimizer.step()
        expected.append(mean)
    return expected


def _max_diff(a: dict, b: dict) -> tuple:
    assert a.keys() == b.keys()
    return max(((a[n] - b[n]).abs().max().item(), n) for n in a)


@pytest.mark.parametrize("kind,dropout", CASES, ids=[f"{k}-dropout{d}" for k, d in CASES])
def test_ddp_matches_one_process(ranks, kind, dropout):
    got = [r[(kind, dropout)]["steps"] for r in ranks]
    expected = _single_process_grads(kind, dropout)
    for step, want in enumerate(expected):
        for rank in range(1, WORLD_SIZE):
            for name, w in got[0][step]["weights"].items():
                assert torch.equal(w, got[rank][step]["weights"][name]), \
                    f"step {step}: {name} differs between rank 0 and rank {rank}"
        err, name = _max_diff(got[0][step]["grads"], want)
        assert err <= ATOL, f"step {step}: grad of {name} off by {err:.2e} > {ATOL:.0e}"


def test_dropout_masks_differ_per_rank():
    """The dropout cases test something: per-rank masks change the gradients."""
    with_dropout = _single_process_grads("LSTM", 0.4)[0]
    without = _single_process_grads("LSTM", 0.0)[0]
    err, _ = _max_diff(with_dropout, without)
    assert err > 1e-3


def test_state_dict_of_module_loads_into_torch_nn(ranks):
    for kind, dropout in CASES:
        state = ranks[0][(kind, dropout)]["state_dict"]
        for name, tensor in ranks[1][(kind, dropout)]["state_dict"].items():
            assert torch.equal(tensor, state[name]), f"{kind}: {name} differs between ranks"
        twin = getattr(torch.nn, kind)(FEATURES, batch_first=True, **MODELS[kind])
        twin.load_state_dict(state)
        fused = getattr(fusedrnn, kind)(FEATURES, batch_first=True, **MODELS[kind])
        fused.load_state_dict(state)
        x = torch.randn(3, SEQ, FEATURES)
        err = (twin(x)[0] - fused(x)[0]).abs().max().item()
        assert err <= ATOL, f"{kind}: {err:.2e}"


def test_no_warnings_in_workers(ranks):
    for rank, result in enumerate(ranks):
        assert result["warnings"] == [], f"rank {rank} warned: {result['warnings']}"


if __name__ == "__main__":
    worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])
