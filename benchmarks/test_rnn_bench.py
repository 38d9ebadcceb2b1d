"""fusedrnn vs torch.nn under pytest-benchmark (see conftest.py for options).

One test per (configuration, peer); the configuration is the benchmark group,
so ``--benchmark-compare`` tracks each peer's time per shape across runs.
"""

from fusedrnn.bench import metrics


def test_rnn(benchmark, rnn_config, rnn_peer, rnn_timed_call):
    call, note = rnn_timed_call
    cfg = rnn_config
    benchmark.group = cfg.id
    benchmark.extra_info.update(config=cfg.to_dict(), peer=rnn_peer, note=note, flops=cfg.flops)
    benchmark(call)
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is not None:
        median = stats.stats.median
        benchmark.extra_info["us_per_step"] = metrics.us_per_step(median, cfg.T)
        benchmark.extra_info["tflops"] = metrics.tflops(cfg.flops, median)
