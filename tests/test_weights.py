"""Weights files (ablate.weights): a plain state dict that round-trips, read as data only, errors that name the file."""

from __future__ import annotations

import pickle

import pytest
import torch

from ablate.config import ModelSpec
from ablate.models import build_model
from ablate.weights import WeightsError, load_weights, save_weights, weights_from_checkpoint


class Payload:
    def __reduce__(self):
        return (print, ("ran",))


def test_weights_round_trip_from_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelSpec(n=1, base_width=4))
    torch.save({"model": model.state_dict(), "optimizer": {}, "position": {"iteration": 3}}, tmp_path / "checkpoint.pt")
    path = save_weights(weights_from_checkpoint(tmp_path / "checkpoint.pt"), tmp_path / "weights.pt")
    state = torch.load(path, weights_only=True)
    assert set(state) == set(model.state_dict())  # the model alone: no optimiser, no position
    torch.manual_seed(1)
    other = load_weights(path, build_model(ModelSpec(n=1, base_width=4)))
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(other.eval()(x), model.eval()(x))


def test_damaged_or_foreign_files_are_one_error_naming_them(tmp_path, capsys):
    model = build_model(ModelSpec(n=1, base_width=4))
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"empty\.pt: unreadable"):
        load_weights(tmp_path / "empty.pt", model)
    with pytest.raises(WeightsError, match=r"missing\.pt: no such file"):
        load_weights(tmp_path / "missing.pt", model)
    (tmp_path / "code.pt").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(WeightsError, match=r"code\.pt: unreadable"):
        load_weights(tmp_path / "code.pt", model)
    assert "ran" not in capsys.readouterr().out  # read as data: nothing in it ran
    torch.save({"stem.conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match=r"other\.pt: weights of another net"):
        load_weights(tmp_path / "other.pt", model)
    torch.save({"model": 3}, tmp_path / "checkpoint.pt")
    with pytest.raises(WeightsError, match=r"checkpoint\.pt: not a checkpoint written by ablate"):
        weights_from_checkpoint(tmp_path / "checkpoint.pt")
