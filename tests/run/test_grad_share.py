"""The gradient-share record (issue 30): values against a hand-made autograd computation, no
effect on the trained weights, the metrics.csv columns, the epoch line and the analyze figure."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import torch
from tiny_config import TINY

from chanloss.analysis.grad_share import plot_grad_share, read_grad_share
from chanloss.config import load_config
from chanloss.run.builders import build_losses, build_model
from chanloss.run.grad_share import GradShare, reference_column
from chanloss.run.session import train


def _config(losses, **changes):
    raw = copy.deepcopy(TINY)
    raw.update(losses=losses, **changes)
    return load_config(raw=raw)


def _parts(losses):
    config = _config(losses)
    torch.manual_seed(0)
    model = build_model(config, num_classes=4, in_channels=1)
    slots = build_losses(config, model, 4)
    x = torch.rand(12, 1, 8, 8)
    y = torch.arange(12) % 4
    out = model(x)
    terms = [s.loss.terms(getattr(out, s.loss.consumes), y) for s in slots]
    return model, slots, out, terms


def test_values_match_a_manual_autograd_grad():
    losses = [{"name": "ce"}, {"name": "mc", "weight": 0.5}, {"name": "cc", "weight": 0.3}]
    model, slots, out, terms = _parts(losses)
    record = GradShare(slots, 1, gated=True)
    point = record.record(out, terms, step=0)

    def norm(value, tensor):
        (g,) = torch.autograd.grad(value, tensor, retain_graph=True, allow_unused=True)
        return 0.0 if g is None else float(g.norm())

    ce = terms[0]["ce"]
    for name, slot, term in (("mc_dis", 1, "dis"), ("mc_div", 1, "div"), ("cc", 2, "cc")):
        weighted = slots[slot].weight * slots[slot].loss.weights[term] * terms[slot][term]
        for suffix, tensor in (
            ("", out.features),
            ("_emb", out.embedding),
            ("_att", out.attention),
        ):
            expected = norm(weighted, tensor) / norm(ce, tensor)
            assert point[f"gshare_{name}{suffix}"] == pytest.approx(expected, rel=1e-5), suffix
    assert point["gnorm_ce"] == pytest.approx(norm(ce, out.features), rel=1e-6)
    assert point["gshare_cc_emb"] == 0.0 and point["gshare_mc_dis_att"] == 0.0
    assert record.columns == [*point]


def test_reference_is_the_first_ce_term_else_the_first_term():
    _, slots, _, _ = _parts([{"name": "mc"}, {"name": "ce"}])
    assert reference_column(slots) == "ce"
    _, slots, _, _ = _parts([{"name": "label_smoothing"}, {"name": "center"}])
    assert reference_column(slots) == "label_smoothing"
    record = GradShare(slots, 10, gated=False)
    assert record.columns == ["gshare_center", "gshare_center_emb", "gnorm_label_smoothing"]
    assert [record.due(s) for s in (0, 5, 10, 20)] == [True, False, True, True]
    assert not GradShare(slots, 0, gated=False).enabled
    assert not GradShare(slots[:1], 1, gated=False).enabled  # one term: nothing to compare


def test_epoch_means_average_the_points_and_restart():
    _, slots, out, terms = _parts([{"name": "ce"}, {"name": "cc", "placement": "branch"}])
    record = GradShare(slots, 1, gated=False)
    a = record.record(out, terms, step=0)
    b = record.record(out, terms, step=1)
    means = record.epoch_means()
    assert means["gshare_cc"] == pytest.approx((a["gshare_cc"] + b["gshare_cc"]) / 2)
    assert record.epoch_means() == dict.fromkeys(record.columns)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    return {**state["model"], **{f"loss.{k}": v for p in state["losses"] for k, v in p.items()}}


@pytest.mark.parametrize("placement", ["gate", "branch"])
def test_recording_does_not_change_the_trained_weights(tmp_path, capsys, placement):
    losses = [{"name": "ce"}, {"name": "cc", "placement": placement}]
    train(_config(losses, epochs=2, grad_share_every=0), tmp_path / "off", verbose=0)
    train(_config(losses, epochs=2, grad_share_every=1), tmp_path / "on", verbose=2)
    off, on = _weights(tmp_path / "off"), _weights(tmp_path / "on")
    assert off.keys() == on.keys()
    for key in off:
        assert torch.equal(off[key], on[key]), key
    with open(tmp_path / "on" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(math.isfinite(float(r["gshare_cc"])) for r in rows)
    assert float(rows[0]["gshare_cc"]) > 0
    assert ("gshare_cc_att" in rows[0]) == (placement == "gate")
    with open(tmp_path / "off" / "metrics.csv", newline="") as f:
        assert not any(k.startswith("gshare") for k in next(csv.DictReader(f)))
    printed = capsys.readouterr()
    assert "grad share cc " in printed.out + printed.err


def test_analyze_figure_from_the_runs_metrics(tmp_path):
    losses = [{"name": "ce"}, {"name": "cc"}]
    train(_config(losses, grad_share_every=2), tmp_path / "run", verbose=0)
    series = read_grad_share(tmp_path / "run" / "metrics.csv")
    assert set(series) == {"gshare_cc", "gshare_cc_emb", "gshare_cc_att"}
    assert plot_grad_share(tmp_path / "g.png", [("cc", tmp_path / "run" / "metrics.csv")])
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    train(_config([{"name": "ce"}]), tmp_path / "ce", verbose=0)
    assert not plot_grad_share(tmp_path / "none.png", [("ce", tmp_path / "ce" / "metrics.csv")])
    assert not (tmp_path / "none.png").exists()


def test_grad_share_every_is_validated():
    from chanloss.core.errors import ConfigError

    with pytest.raises(ConfigError, match="grad_share_every"):
        _config([{"name": "ce"}], grad_share_every=-1)


def test_tensorboard_gets_every_recorded_point(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = _config(
        [{"name": "ce"}, {"name": "center"}],
        tensorboard=True,
        grad_share_every=5,
        data={"name": "digits", "val_fraction": 0.2},
    )
    train(config, tmp_path, verbose=0)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"grad_share/gshare_center", "grad_share/gshare_center_emb"} <= tags
    assert "grad_share/gnorm_ce" in tags
    # 1149 training images in full batches of 128: 8 steps, recorded at steps 0 and 5
    assert [e.step for e in events.Scalars("grad_share/gshare_center_emb")] == [0, 5]
    assert all(e.value > 0 for e in events.Scalars("grad_share/gshare_center_emb"))
