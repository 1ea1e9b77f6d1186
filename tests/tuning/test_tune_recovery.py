"""``chanloss tune``: the seed noise measured however the last invocation ended, stuck search
trials left out of it, and the outputs that follow the verdict (best.yaml, ce.yaml, last line,
report)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_config import TUNE_TINY as TINY

from chanloss.cli import main
from chanloss.config import load_config
from chanloss.tuning import Tuner

TINY = {**TINY, "epochs": 2}  # the tiny search of test_tune_search, 2 epochs


def test_resume_after_a_failure_in_the_first_trials_measures_the_seed_noise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 33: a full disk during the first trials, then ``tune --resume``."""
    import chanloss.run.session as session

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "tune"
    argv = ["tune", "-c", str(cfg), "--out", str(out), "--trials", "5", "--confirm-seeds", "0"]
    train = session.train

    def full_disk(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(session, "train", full_disk)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 trials in a row failed" in err[0] and "No space left" in err[0]
    monkeypatch.setattr(session, "train", train)
    assert main([*argv, "--resume"]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows[:3]] == ["failed"] * 3
    done = {(r["origin"], r["seed"]) for r in rows if r["state"] == "complete"}
    # the config as written on its seed and on the noise seed, and the losses almost off, again
    assert {("config", "0"), ("config, noise seed", "1"), ("losses off", "0")} <= done
    summary = json.loads((out / "tune.json").read_text())
    assert summary["noise"]["dof"] >= 1 and summary["noise"]["std"] is not None
    assert "noise: on this split, the seed standard deviation" in printed


# -- stuck search trials ---------------------------------------------------------------------------
def _study_of(tuner: Tuner, scores: list[tuple[int, float]]) -> Any:
    """An in-memory study holding the config as written on each (seed, score)."""
    import optuna

    from chanloss.config.search import start_params
    from chanloss.tuning.storage import distribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    params = start_params(tuner.config, tuner.dims)
    dists = {d.name: distribution(d.param) for d in tuner.dims}
    for seed, score in scores:
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, value=score,
            intermediate_values={1: score, 2: score},
            user_attrs={"seed": seed, "origin": "config"}))  # fmt: skip
    return study


def test_a_stuck_search_trial_is_said_and_left_out_of_the_seed_noise(tmp_path: Path) -> None:
    from chanloss.tuning.output import trial_rows
    from chanloss.tuning.pruners import seed_noise_by_epoch
    from chanloss.tuning.study import search_stuck

    lines: list[str] = []
    tuner = Tuner(load_config(raw=TINY), tmp_path, 4, log=lines.append)
    study = _study_of(tuner, [(0, 0.90), (1, 0.60), (100, 0.91)])
    assert [(r["trial"], r["seed"]) for r in search_stuck(study)] == [(1, 1)]
    tuner.update_noise(study)
    assert lines[0] == (
        "stuck: trial 1, seed 1: stuck at 60.0 % while the same setting on other seeds reached "
        "90.0-91.0 %; left out of the noise"
    )
    # the noise of seeds 0 and 100 alone, one degree of freedom: rough
    assert study.user_attrs["noise_std"] == pytest.approx(0.01 / 2**0.5)
    assert study.user_attrs["noise_dof"] == 1
    assert "0.71 points (1 degree of freedom: rough)" in lines[1]
    by_epoch = seed_noise_by_epoch(study.get_trials(deepcopy=False))
    assert by_epoch[2] == pytest.approx(0.01 / 2**0.5)
    rows = trial_rows(study, tuner.dims, {1})
    assert [r["stuck"] for r in rows] == ["", "yes", ""]
    tuner.update_noise(study)  # said once
    assert sum(line.startswith("stuck:") for line in lines) == 1


def test_two_seeds_a_stuck_gap_apart_queue_a_third(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    lines: list[str] = []
    tuner = Tuner(load_config(raw=TINY), tmp_path, 4, log=lines.append)
    study = _study_of(tuner, [(0, 0.90), (1, 0.84)])
    tuner.update_noise(study)
    tuner.update_noise(study)  # queued once
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert len(waiting) == 1
    assert waiting[0].user_attrs == {"origin": "config, third seed", "seed": 100}
    assert any("lie 6.0 points apart; a third seed (100) is queued" in line for line in lines)
    # two seeds closer than 5 points: no third
    other = _study_of(tuner, [(0, 0.90), (1, 0.86)])
    tuner.update_noise(other)
    assert not other.get_trials(deepcopy=False, states=(TrialState.WAITING,))


# -- the outputs follow the verdict --------------------------------------------------------------
def test_best_yaml_and_the_last_line_recommend_it_only_after_a_shown_gain(tmp_path: Path) -> None:
    from chanloss.tuning.finish import last_line, write_best, write_ce
    from chanloss.tuning.recommend import decide
    from chanloss.tuning.report import _lead

    tuner = Tuner(load_config(raw=TINY), tmp_path, 4)
    winner = {"trial": 7, "search_score": 0.9, "rerun_score": 0.89,
              "params": {"mc.alpha": 1.0, "mc.beta": 5.0, "optim.lr": 0.05}}  # fmt: skip
    raw, epochs = tuner.trial_raw(winner["params"]), tuner.config.epochs
    gain = decide({"diff": 0.05, "beyond": True, "detectable": 0.03})
    none = decide({"diff": 0.0, "beyond": False, "detectable": 0.2})
    text = write_best(tmp_path, raw, winner, gain, epochs=epochs).read_text()
    assert "# Confirmed: beats CE alone" in text and "# Train it with: chanloss train" in text
    assert last_line(tmp_path, gain, True).endswith(f"chanloss train -c {tmp_path / 'best.yaml'}")
    text = write_best(tmp_path, raw, winner, none, epochs=epochs).read_text()
    assert "# NOT shown to help: the confirmation's verdict is 'cannot tell'" in text
    assert "use ce.yaml (CE alone) instead" in text and "# Train it with" not in text
    assert yaml.safe_load(text)["optim"]["lr"] == 0.05  # still the chosen setting
    line = last_line(tmp_path, none, True)
    assert line.endswith(f"chanloss train -c {tmp_path / 'ce.yaml'}") and "best.yaml is not" in line
    assert "# Not confirmed" in write_best(tmp_path, raw, winner, None, epochs=epochs).read_text()
    assert "not shown to help" in last_line(tmp_path, None, True)
    ce = write_ce(tmp_path, tuner.ce_raw())
    assert yaml.safe_load(ce.read_text())["losses"] == [{"name": "ce"}]
    # the report leads with the verdict and the config it names
    lead = "".join(_lead({"verdict": gain, "best": {}}))
    assert lead.startswith("<p class='verdict'><b>Verdict: gain:") and "href='best.yaml'" in lead
    lead = "".join(_lead({"verdict": none, "best": {}}))
    assert "Verdict: cannot tell" in lead and "href='ce.yaml'" in lead
    assert "href='best.yaml'" not in lead
