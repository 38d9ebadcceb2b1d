"""Forecast Mauna Loa CO2 two years ahead with a fusedrnn.LSTM.

The series (examples/data/co2_monthly.csv, 1958-2001) is a rising trend with a
yearly cycle. The model reads one month at a time (the change since the last
month and the month of the year) and predicts the next change:

* trained by truncated BPTT over the whole history (``fusedrnn.tbptt``,
  chunks of 24 months, state carried across chunks), with ``zoneout`` as the
  regulariser and ``grad_clip`` bounding the gradient inside the recurrence;
* then run as a stream (``rnn.step``) over the history, and on from there on
  its own predictions for the last 24 months, which it never saw.

    python examples/forecast_co2.py [--epochs 40]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import fusedrnn

DATA = Path(__file__).parent / "data" / "co2_monthly.csv"
HORIZON = 24  # months forecast (and held out)


def load_co2(path: Path = DATA):
    """``(month of year 0..11, ppmv)`` per month, oldest first."""
    months, values = [], []
    for line in path.read_text().splitlines():
        if line.startswith("#") or line.startswith("month"):
            continue
        stamp, value = line.split(",")
        months.append(int(stamp[5:7]) - 1)
        values.append(float(value))
    return torch.tensor(months), torch.tensor(values, dtype=torch.float64)


def features(month: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
    """The model's input per step: the scaled change, and the month on a circle."""
    angle = 2 * math.pi * month.float() / 12
    return torch.stack([change.float(), angle.sin(), angle.cos()], dim=-1)


class Forecaster(torch.nn.Module):
    def __init__(self, hidden: int = 32):
        super().__init__()
        # zoneout regularises the recurrence; grad_clip bounds what each step sends back
        self.rnn = fusedrnn.LSTM(3, hidden, zoneout=(0.1, 0.05), grad_clip=1.0)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x, state=None):
        out, state = self.rnn(x, state)
        return self.head(out).squeeze(-1), state

    def step(self, x_t, state=None):
        h_t, state = self.rnn.step(x_t, state)
        return self.head(h_t).squeeze(-1), state


def train(model, inputs, targets, epochs: int, k: int = 24, lr: float = 1e-2) -> float:
    """Truncated BPTT over one long sequence; returns the last epoch's mean loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
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
def forecast(model, history, months_ahead, scale: float):
    """Stream the history through ``step``, then feed each prediction back in."""
    model.eval()
    state, pred = None, None
    for x_t in history:
        pred, state = model.step(x_t, state)
    changes = []
    for month in months_ahead:
        changes.append(pred.item() * scale)
        x_t = features(month, pred)
        pred, state = model.step(x_t, state)
    return torch.tensor(changes, dtype=torch.float64)


def run(epochs: int = 40, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    month, ppmv = load_co2()
    change = ppmv.diff()  # change[t] = ppmv[t+1] - ppmv[t]
    scale = change[:-HORIZON].std().item()
    x = features(month[1:], change / scale)  # step t reads change t-1 -> t
    known = x.shape[0] - HORIZON
    model = Forecaster()
    loss = train(model, x[:known - 1], (change[1:known] / scale).float(), epochs)
    predicted = ppmv[known] + forecast(model, x[:known], month[known + 1:], scale).cumsum(0)
    actual = ppmv[known + 1:]
    persistence = ppmv[known].expand_as(actual)  # the naive forecast: no change
    return {"train_loss": loss, "model": repr(model.rnn),
            "mae": (predicted - actual).abs().mean().item(),
            "persistence_mae": (persistence - actual).abs().mean().item(),
            "predicted": predicted, "actual": actual}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    result = run(args.epochs)
    print(f"model: {result['model']}")
    print(f"last {HORIZON} months, forecast from the {HORIZON + 1}th last month on:")
    print(f"  fusedrnn.LSTM   mean absolute error {result['mae']:.2f} ppmv")
    print(f"  no-change guess mean absolute error {result['persistence_mae']:.2f} ppmv")
    return result


if __name__ == "__main__":
    main()
