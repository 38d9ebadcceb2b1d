"""`python -m fusedrnn.demo`: train fusedrnn.LSTM and torch.nn.LSTM side by side.

The task is one-step-ahead forecasting of an hourly load curve (daily and
weekly seasonality, a slow trend and noise; generated here, since this
project ships no data). Both models start from the same weights, see the
same batches and use the same optimiser, so their losses should agree to
float precision; the demo prints both, their largest difference, and the
time each took.
"""

import argparse
import math
import time

import torch

import fusedrnn


def load_curve(hours: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(hours, dtype=torch.float32)
    daily = torch.sin(2 * math.pi * t / 24) + 0.3 * torch.sin(4 * math.pi * t / 24)
    weekly = 0.5 * torch.sin(2 * math.pi * t / (24 * 7))
    trend = t / hours
    return daily + weekly + trend + 0.1 * torch.randn(hours, generator=g)


class Forecaster(torch.nn.Module):
    def __init__(self, rnn_cls, hidden):
        super().__init__()
        self.rnn = rnn_cls(1, hidden, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out)


def batches(series, window, batch, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(series) - window - 1, (batch,), generator=g)
        idx = starts[:, None] + torch.arange(window + 1)
        seq = series[idx].unsqueeze(-1)
        yield seq[:, :-1], seq[:, 1:]


def train(model, series, args):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    start = time.perf_counter()
    for x, y in batches(series, args.window, args.batch, args.steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--window", type=int, default=96)
    p.add_argument("--hidden", type=int, default=64)
    args = p.parse_args(argv)

    series = load_curve(24 * 7 * 20)
    torch.manual_seed(0)
    reference = Forecaster(torch.nn.LSTM, args.hidden)
    fused = Forecaster(fusedrnn.LSTM, args.hidden)
    fused.load_state_dict(reference.state_dict())

    print(f"fusedrnn backend: {fusedrnn.backend()} ({fusedrnn.build_info()}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"task: next-hour load forecast, window {args.window} h, batch {args.batch}, "
          f"2-layer LSTM, hidden {args.hidden}, {args.steps} Adam steps")
    loss_ref, t_ref = train(reference, series, args)
    loss_fused, t_fused = train(fused, series, args)
    for i in range(0, args.steps, max(1, args.steps // 5)):
        print(f"  step {i:4d}: loss torch.nn {loss_ref[i]:.6f}  fusedrnn {loss_fused[i]:.6f}")
    print(f"  final   : loss torch.nn {loss_ref[-1]:.6f}  fusedrnn {loss_fused[-1]:.6f}")
    loss_diff = max(abs(a - b) for a, b in zip(loss_ref, loss_fused))
    param_diff = max((a - b).abs().max().item()
                     for a, b in zip(reference.parameters(), fused.parameters()))
    print(f"agreement: largest loss difference {loss_diff:.2e}, "
          f"largest parameter difference after training {param_diff:.2e}")
    print(f"time: torch.nn {t_ref:.2f} s, fusedrnn {t_fused:.2f} s "
          f"(ratio fusedrnn / torch.nn = {t_fused / t_ref:.2f})")


if __name__ == "__main__":
    main()
