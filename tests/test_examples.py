"""The examples in examples/ run, on their real (small) data, in a few seconds, and do
what they claim: the forecast beats the no-change guess, the detector finds a planted
anomaly and little else."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_thread")


def test_data_files_are_the_real_series():
    month, ppmv = load("forecast_co2").load_co2()
    assert len(ppmv) == 526 and month[0] == 2 and month[-1] == 11  # 1958-03 .. 2001-12
    assert 310 < ppmv.min() < 320 and 365 < ppmv.max() < 375
    years, sunspots = load("anomaly_sunspots").load_sunspots()
    assert years[0] == 1700 and years[-1] == 2008 and len(years) == 309
    assert sunspots.min() == 0 and 180 < sunspots.max() < 200


def test_forecast_beats_the_no_change_guess(capsys):
    example = load("forecast_co2")
    result = example.main(["--epochs", "15"])
    for option in ("zoneout", "grad_clip"):
        assert f"{option}=" in result["model"]
    assert result["predicted"].shape == result["actual"].shape == (24,)
    assert result["mae"] < 0.5 * result["persistence_mae"]
    assert "mean absolute error" in capsys.readouterr().out


def test_anomaly_detector_finds_a_planted_spike():
    example = load("anomaly_sunspots")
    years, sunspots = example.load_sunspots()
    planted = int((years == 1810).nonzero())  # the Dalton minimum: almost no sunspots
    sunspots[planted] = 150.0
    flagged, deviation = example.detect(sunspots, epochs=30)
    assert planted in flagged.tolist()
    assert len(flagged) <= 3  # extreme errors only, not every solar maximum
    assert deviation.argmax() == planted


def test_anomaly_example_runs_on_the_record(capsys):
    flagged = load("anomaly_sunspots").main(["--epochs", "10"])
    out = capsys.readouterr().out
    assert f"{len(flagged)} of 309 years flagged" in out and "largest errors:" in out
