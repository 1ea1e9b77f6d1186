"""A prune is plan -> prune -> one trainer: the plan checks everything and writes nothing, and
the fine-tune's trainer is built once (it also scores the kept model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_config import TINY

from chanloss.config import validate_config
from chanloss.core.errors import PruneError
from chanloss.pruning import prune_checkpoint
from chanloss.pruning.plan import check_request, plan_prune
from chanloss.run.session import train


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("plan")
    raw = {
        **TINY,
        "model": {"name": "convnet_small", "width": 8, "feature_channels": 20, "pools": 1},
        "losses": [{"name": "ce"}, {"name": "mc", "weight": 0.1}],
        "data": {"name": "digits", "val_fraction": 0.2},
        "optim": {"lr": 0.1},
        "epochs": 2,
    }
    train(validate_config(raw), base / "run", verbose=0)
    return base / "run" / "last.pt"


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _request(run: Path, **given):
    options = dict(
        method="l1",
        speedup=1.3,
        finetune_epochs=1,
        overrides=[],
        prune_features=False,
        refit=None,
        device="cpu",
    )
    return check_request(run, **{**options, **given})


def test_the_plan_checks_and_counts_and_writes_nothing(run):
    before = _files(run.parent.parent)
    plan = plan_prune(_request(run, overrides=["prune.calibration_images=40"]))
    assert _files(run.parent.parent) == before
    assert plan.calibration.size == 40 and plan.holdout_name == "validation split"
    assert [g.is_feature for g in plan.groups] == [False] * len(plan.groups)
    counts = plan.counts.counts_for(None)  # the one keep ratio, found by the plan
    assert plan.counts.uniform is counts
    assert set(counts) == {g.root for g in plan.groups}
    assert all(0 < counts[g.root] <= g.channels for g in plan.groups)
    assert plan.tune_config.epochs == 1 and plan.tune_config.optim.lr == pytest.approx(0.01)
    assert plan.model.training is False
    with pytest.raises(PruneError, match="unreachable"):  # the MAC target, checked in the plan
        plan_prune(_request(run, speedup=50.0))
    assert _files(run.parent.parent) == before


def test_one_trainer_fine_tunes_and_scores_the_kept_model(run, tmp_path, monkeypatch):
    import chanloss.run.builders as builders
    from chanloss.run.trainer import Trainer

    built, loads = [], []
    init, build_data = Trainer.__init__, builders.build_data

    def counting_init(self, *args, **kwargs):
        built.append(args[1])
        init(self, *args, **kwargs)

    def counting_build_data(config):
        loads.append(config.data.name)
        return build_data(config)

    monkeypatch.setattr(Trainer, "__init__", counting_init)
    monkeypatch.setattr(builders, "build_data", counting_build_data)
    monkeypatch.setattr("chanloss.run.build.build_data", counting_build_data)
    out = tmp_path / "p"
    result = prune_checkpoint(run, out, method="l1", speedup=1.3, finetune_epochs=2, verbose=False)
    assert len(built) == 1 and Path(built[0].path) == out / "finetune"
    # the data set is loaded once: the plan scores on it and the fine-tune trains on it
    assert loads == ["digits"]
    # a fine-tune on other data (here another validation split) loads its own
    loads.clear()
    other = ["data.val_fraction=0.3"]
    prune_checkpoint(run, tmp_path / "q", method="l1", speedup=1.3, finetune_epochs=1,
                     overrides=other, verbose=False)  # fmt: skip
    assert loads == ["digits", "digits"]
    assert len(result["accuracy"]["finetuned"]["val_curve"]) == 2
    kept = result["accuracy"]["kept"]
    if result["kept"]["epoch"] == 0:
        assert kept == result["accuracy"]["pruned"]
    else:
        assert kept["val"] == pytest.approx(result["kept"]["val"])
