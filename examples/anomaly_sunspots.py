"""Flag the unusual years of the sunspot record with a one-step-ahead fusedrnn.GRU.

The model learns to predict next year's sunspot number from the years before
(examples/data/sunspots_yearly.csv, 1700-2008), trained by truncated BPTT
(``fusedrnn.tbptt``). It then reads the record as a stream (``rnn.step``),
one year at a time as a monitor would, and flags the years whose prediction
error is extreme: more than ``THRESHOLD`` robust standard deviations (median
absolute deviation x 1.4826) from the median error.

    python examples/anomaly_sunspots.py [--epochs 60]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import fusedrnn

DATA = Path(__file__).parent / "data" / "sunspots_yearly.csv"
THRESHOLD = 5.0


def load_sunspots(path: Path = DATA):
    """``(years, sunspot numbers)``, oldest first."""
    years, values = [], []
    for line in path.read_text().splitlines():
        if line.startswith("#") or line.startswith("year"):
            continue
        year, value = line.split(",")
        years.append(int(year))
        values.append(float(value))
    return torch.tensor(years), torch.tensor(values)


def scaled(series: torch.Tensor) -> torch.Tensor:
    """The square root steadies the variance of counts; then zero mean, unit spread."""
    root = series.clamp(min=0).sqrt()
    return (root - root.mean()) / root.std()


class Predictor(torch.nn.Module):
    def __init__(self, hidden: int = 24):
        super().__init__()
        self.rnn = fusedrnn.GRU(1, hidden)
        self.head = torch.nn.Linear(hidden, 1)

    def step(self, x_t, state=None):
        h_t, state = self.rnn.step(x_t, state)
        return self.head(h_t), state


def train(model, series: torch.Tensor, epochs: int, k: int = 40, lr: float = 1e-2) -> float:
    """One-step-ahead regression on the whole record by truncated BPTT."""
    inputs, targets = series[:-1, None], series[1:]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        losses, start = [], 0
        for out, _ in fusedrnn.tbptt(model.rnn, inputs, k):
            target = targets[start:start + out.shape[0]]
            start += out.shape[0]
            loss = torch.nn.functional.mse_loss(model.head(out).squeeze(-1), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return sum(losses) / len(losses)


@torch.no_grad()
def streaming_errors(model, series: torch.Tensor) -> torch.Tensor:
    """The error of each one-step prediction, computed step by step as data arrives
    (entry t is the error on year t + 1)."""
    state, errors = None, []
    for t in range(series.shape[0] - 1):
        pred, state = model.step(series[t:t + 1], state)
        errors.append(series[t + 1] - pred[0])
    return torch.stack(errors)


def deviations(errors: torch.Tensor) -> torch.Tensor:
    """Each error's distance from the median error, in robust standard deviations
    (median and MAD: the anomalies themselves barely move them)."""
    median = errors.median()
    spread = 1.4826 * (errors - median).abs().median()
    return (errors - median).abs() / spread


def detect(series: torch.Tensor, epochs: int = 60, seed: int = 0):
    """``(flagged positions, deviation per position)`` for ``series`` (raw counts);
    the first position, which nothing predicts, has deviation 0."""
    torch.manual_seed(seed)
    x = scaled(series)
    model = Predictor()
    train(model, x, epochs)
    deviation = torch.cat([torch.zeros(1), deviations(streaming_errors(model.eval(), x))])
    return torch.nonzero(deviation > THRESHOLD).flatten(), deviation


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args(argv)
    years, sunspots = load_sunspots()
    flagged, deviation = detect(sunspots, args.epochs)
    print(f"{len(flagged)} of {len(years)} years flagged (error above {THRESHOLD} robust "
          "deviations):")
    for i in flagged.tolist():
        print(f"  {years[i].item()}: {sunspots[i].item():.1f} sunspots")
    print("largest errors:", ", ".join(f"{years[i].item()} ({deviation[i]:.1f})"
                                        for i in deviation.topk(3).indices.tolist()))
    return flagged


if __name__ == "__main__":
    main()
