"""``chanloss tune``'s verdict: stuck runs found and rerun, the floor under the paired test, the
five answers, the recommendation that follows them, the ETA of the whole command."""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path
from typing import Any

import pytest
from tiny_config import TUNE_TINY as TINY

from chanloss.config import load_config
from chanloss.tuning.budget import eta_seconds, fold_power_ratio, short_budget_line
from chanloss.tuning.recommend import decide, unstable_at, useful_gain
from chanloss.tuning.stats import (
    paired_fold_test,
    pooled_seed_std,
    stuck_flags,
    without_stuck,
)


# -- stuck runs ----------------------------------------------------------------------------------
def _stuck_reference(values: list[float]) -> list[bool]:
    """Leave-one-out robust z, written out: median and 1.4826 MAD of the other values."""
    out = []
    for i, v in enumerate(values):
        others = values[:i] + values[i + 1 :]
        if len(others) < 2:
            out.append(False)
            continue
        med = statistics.median(others)
        scale = 1.4826 * statistics.median([abs(o - med) for o in others])
        z = (v - med) / scale if scale else (-math.inf if v < med else 0.0)
        out.append(z < -3 and med - v >= 0.05)
    return out


def test_a_run_far_below_its_siblings_is_stuck() -> None:
    # the fold scores: fold 3 stuck at 57 % while the others reached 91-95 %
    assert stuck_flags([0.93, 0.91, 0.95, 0.57, 0.92]) == [False, False, False, True, False]
    # two stuck of five are both found (one stuck run does not hide the other)
    assert stuck_flags([0.93, 0.58, 0.95, 0.57, 0.92]) == [False, True, False, True, False]
    # far in robust units but less than 5 points: not stuck; a wide spread: nothing stuck
    assert stuck_flags([0.930, 0.931, 0.929, 0.90]) == [False] * 4
    assert stuck_flags([0.50, 0.90, 0.70, 0.60, 0.40]) == [False] * 5
    # with one sibling either may be the stuck one: never flagged
    assert stuck_flags([0.95, 0.10]) == [False, False]
    # a fold 6.5 points below tight siblings: stuck, unless 200 validation images per fold make
    # that gap less than 4 binomial standard deviations (a harder fold, not a stuck run)
    hard = [0.80, 0.86, 0.84, 0.78, 0.85]
    assert stuck_flags(hard) == [False, False, False, True, False]
    assert 4 * math.sqrt(0.845 * 0.155 / 200) > 0.065
    assert stuck_flags(hard, n_val=200) == [False] * 5
    assert stuck_flags([0.93, 0.91, 0.95, 0.57, 0.92], n_val=200)[3] is True
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 7)
        values = [rng.choice([rng.gauss(0.9, 0.02), rng.uniform(0.1, 0.9)]) for _ in range(n)]
        assert stuck_flags(values) == _stuck_reference(values), values


def test_the_seed_noise_leaves_stuck_runs_out() -> None:
    groups = [[0.90, 0.92, 0.60], [0.80, 0.81]]
    assert without_stuck(groups) == [[0.90, 0.92], [0.80, 0.81]]
    std, dof = pooled_seed_std(without_stuck(groups))
    assert dof == 2
    assert std == pytest.approx(math.sqrt((2 * 0.01**2 + 2 * 0.005**2) / 2))


# -- the floor under the paired test ---------------------------------------------------------------
def test_two_folds_alone_give_no_verdict() -> None:
    g = paired_fold_test([0.25498, 0.24095], [0.25452, 0.24048])  # +0.05 points: one image
    assert g["beyond"] is not True
    assert g["beyond"] is None and "at least 3" in g["reason"]
    assert decide(g)["answer"] == "cannot tell"


def test_the_threshold_never_falls_below_one_image_or_the_seed_noise() -> None:
    # three near-identical differences of one image (1/2000): without a floor "beyond"
    tuned, base = [0.2550, 0.2410, 0.2480], [0.2545, 0.24049, 0.24752]
    assert paired_fold_test(tuned, base)["beyond"] is True
    g = paired_fold_test(tuned, base, resolution=1 / 2000)
    assert g["beyond"] is False and g["threshold"] >= 1 / 2000 and g["floor"] == "one image"
    # the seed noise floor: the SE is at least sqrt(2 / K) * noise
    tuned = [0.92, 0.921, 0.919, 0.92, 0.92]
    base = [0.90, 0.90, 0.90, 0.90, 0.90]
    assert paired_fold_test(tuned, base)["beyond"] is True
    g = paired_fold_test(tuned, base, noise=0.03)
    assert g["se"] == pytest.approx(math.sqrt(2 / 5) * 0.03)
    assert g["se_observed"] < g["se"] and g["floor"] == "seed noise"
    assert g["beyond"] is False and g["threshold"] > 0.02
    # a clear gain stays a gain, and without a floor nothing changes
    g = paired_fold_test([0.95, 0.97, 0.94, 0.96, 0.95], [0.90, 0.90, 0.91, 0.89, 0.90],
                         noise=0.005, resolution=1 / 2000)  # fmt: skip
    assert g["beyond"] is True and g["floor"] is None


# -- the five answers --------------------------------------------------------------------------------
def _gain(diff: float, beyond: bool | None, detectable: float) -> dict[str, Any]:
    return {"diff": diff, "beyond": beyond, "detectable": detectable, "threshold": 0.01}


def test_the_verdict_has_three_answers_and_says_when_it_cannot_tell() -> None:
    assert useful_gain(None) == 0.02 and useful_gain(0.005) == 0.02
    assert useful_gain(0.03) == pytest.approx(0.06)
    v = decide(_gain(0.05, True, 0.03))
    assert v["answer"] == "gain" and v["use"] == "best.yaml" and "use best.yaml" in v["text"]
    v = decide(_gain(-0.05, True, 0.03))
    assert v["answer"] == "worse" and v["use"] == "ce.yaml"
    # within noise and the confirmation could see a useful gain: CE alone is as good
    v = decide(_gain(0.004, False, 0.018))
    assert v["answer"] == "no difference" and "CE alone is as good" in v["text"]
    assert v["use"] == "ce.yaml"
    # within noise but blind below 28 points: cannot tell, never "as good"
    v = decide(_gain(0.004, False, 0.28))
    assert (
        v["answer"] == "cannot tell"
        and "a gain smaller than 28.0 points would be missed" in v["text"]
    )
    assert "as good" not in v["text"] and v["use"] == "ce.yaml"
    # the useful size grows with the seed noise: 3 points detectable, noise 2 points
    assert decide(_gain(0.0, False, 0.03))["answer"] == "cannot tell"
    assert decide(_gain(0.0, False, 0.03), noise=0.02)["answer"] == "no difference"


def test_stuck_runs_that_keep_appearing_make_the_verdict_unstable() -> None:
    assert unstable_at(10) == 2 and unstable_at(20) == 4 and unstable_at(4) == 2
    v = decide(_gain(0.05, True, 0.03), stuck=1, runs=10)
    assert v["answer"] == "gain"  # one stuck run (rerun) is not a pattern
    v = decide(_gain(0.05, True, 0.03), stuck=2, runs=10)
    assert v["answer"] == "unstable" and v["use"] == "ce.yaml"
    for advice in ("lower learning rate", "warm-up", "more epochs"):
        assert advice in v["text"]
    assert "+5.00 points" in v["text"]


# -- the k-fold confirmation reruns a pair with a stuck run --------------------------------------------
def _fake_runs(monkeypatch: pytest.MonkeyPatch, score: Any) -> list[tuple[str, int, int]]:
    """confirm_runs replaced by ``score(arm dir, fold, seed)``; returns the runs asked for."""
    import chanloss.tuning.confirm as confirm
    from chanloss.tuning.trials import RunOutcome

    asked: list[tuple[str, int, int]] = []

    def confirm_runs(tasks, *, jobs=1, log=None, labels=None, read_test=True, after_s=0.0):  # noqa: ANN001, ANN202
        out = []
        for raw, run_dir in tasks:
            arm, fold = run_dir.parent.name, raw["data"]["fold"]
            asked.append((arm, fold, raw["seed"]))
            s = score(arm, fold, raw["seed"])
            out.append(RunOutcome(seed=raw["seed"], score=s, curve=[s], test_acc=None, time_s=1.0))
        return out

    monkeypatch.setattr(confirm, "confirm_runs", confirm_runs)
    return asked


def test_a_fold_pair_with_a_stuck_run_is_rerun_on_a_fresh_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chanloss.tuning.confirm import cross_validate

    def score(arm: str, fold: int, seed: int) -> float:
        if arm == "tuned" and seed == 7 + 3:  # fold 3 of the tuned arm sticks on its seed
            return 0.57
        return (0.93 if arm == "tuned" else 0.90) + 0.01 * (fold % 2)

    asked = _fake_runs(monkeypatch, score)
    raw = {**TINY, "seed": 7}
    lines: list[str] = []
    res = cross_validate(raw, raw, 5, tmp_path, names=("tuned", "ce"), log=lines.append,
                         train_size=1000)  # fmt: skip
    # the pair of fold 3 rerun on seed 7 + 1000 + 3, both arms
    assert asked[10:] == [("tuned", 3, 1010), ("ce", 3, 1010)]
    assert res["reruns"] == [3]
    assert res["first"]["tuned"][3] == 0.57 and res["tuned"][3] == pytest.approx(0.94)
    assert res["ce"][3] == pytest.approx(0.91)
    assert res["stuck"] == [{"fold": 3, "arm": "tuned", "seed": 10, "score": 0.57,
                             "others": [0.93, pytest.approx(0.94)], "rerun": False}]  # fmt: skip
    assert res["gain"]["diffs"] == pytest.approx([0.03] * 5)
    assert res["gain_first"]["diffs"][3] == pytest.approx(0.57 - 0.91)
    assert res["resolution"] == pytest.approx(5 / 1000)
    stuck = next(line for line in lines if line.startswith("stuck:"))
    assert "fold 3, tuned arm, seed 10 (run): stuck at 57.0 % while the other folds reached " \
           "93.0-94.0 %" in stuck  # fmt: skip


def test_a_rerun_that_sticks_again_counts_and_the_verdict_is_unstable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chanloss.tuning.confirm import cross_validate

    def score(arm: str, fold: int, seed: int) -> float:
        if arm == "ce" and fold == 1:  # stuck on every seed
            return 0.40
        return 0.92 + 0.005 * fold

    _fake_runs(monkeypatch, score)
    raw = {**TINY, "seed": 0}
    lines: list[str] = []
    res = cross_validate(raw, raw, 5, tmp_path, log=lines.append, train_size=1000)
    assert [(r["fold"], r["arm"], r["rerun"]) for r in res["stuck"]] == [
        (1, "ce", False),
        (1, "ce", True),
    ]
    assert any(line.startswith("stuck again:") for line in lines)
    v = decide(res["gain"], stuck=len(res["stuck"]), runs=res["runs"])
    assert v["answer"] == "unstable"


# -- the ETA covers the whole command -----------------------------------------------------------------
def test_the_eta_counts_the_search_and_every_run_after_it() -> None:
    # 4 trials left of 60 s, 2 at a time, then 15 runs' worth (900 s) after the search
    assert eta_seconds(now=0, deadline=None, trials_left=4, trial_s=60, jobs=2, after_s=900) == 1020
    assert eta_seconds(now=0, deadline=None, trials_left=3, trial_s=60, jobs=2, after_s=0) == 120
    # with a deadline: the search stops when the time left is what the runs after it need
    assert eta_seconds(now=100, deadline=3600, trials_left=None, trial_s=60, jobs=1,
                       after_s=1200) == pytest.approx(3500)  # fmt: skip
    assert eta_seconds(now=100, deadline=3600, trials_left=2, trial_s=60, jobs=1,
                       after_s=1200) == pytest.approx(1320)  # fmt: skip
    # past the search's end: only the runs after it are left
    assert eta_seconds(now=3000, deadline=3600, trials_left=None, trial_s=60, jobs=1,
                       after_s=1200) == pytest.approx(1200)  # fmt: skip


def test_the_reserve_and_the_stage_times_count_folds_and_final_runs(tmp_path: Path) -> None:
    from chanloss.tuning import Tuner

    tuner = Tuner(load_config(raw=TINY), tmp_path, 4, folds=5, top=3)
    # 3 re-runs at 100 s, then 12 runs on the whole split (100 / 0.75 s each)
    assert tuner.reserve([100.0]) == pytest.approx(3 * 100 + 12 * 100 / 0.75)

    class _Study:
        def get_trials(self, deepcopy: bool = False, states: Any = None) -> list[Any]:
            from types import SimpleNamespace

            return [SimpleNamespace(user_attrs={"time_s": 100.0})]

    assert tuner.after_s("choose", _Study()) == pytest.approx(12 * 100 / 0.75)
    assert tuner.after_s("folds", _Study()) == pytest.approx(2 * 100 / 0.75)
    assert tuner.after_s("final", _Study()) == 0


def test_a_short_budget_says_what_three_folds_would_buy_and_cost() -> None:
    from scipy import stats

    def detectable(k: int) -> float:
        return (stats.t.ppf(0.975, k - 1) + stats.t.ppf(0.8, k - 1)) / math.sqrt(k)

    assert fold_power_ratio(3, 5) == pytest.approx(detectable(3) / detectable(5))
    # the second folder: 2.5-minute trials, one hour, 10 % validation
    line = short_budget_line(timeout_s=3600, trial_s=150, top=3, folds=5, jobs=1, whole=1 / 0.9)
    assert line == (
        "budget: the runs after the search (3 re-runs, 10 fold runs, 2 final runs; about 41 min) "
        "leave the search about 7 trials of the --timeout; --folds 3 would leave about 12, but a "
        "gain must then be about 1.9 times larger to be found beyond noise"
    )
    # a budget that leaves 10 trials or more, or 3 folds already: nothing to say
    assert short_budget_line(timeout_s=3600, trial_s=60, top=3, folds=5, jobs=1, whole=1.25) == ""
    assert short_budget_line(timeout_s=3600, trial_s=150, top=3, folds=3, jobs=1, whole=1.1) == ""
    # two jobs: runs in rounds of two, trials bought twice as fast
    line = short_budget_line(timeout_s=3600, trial_s=300, top=3, folds=5, jobs=2, whole=1.0)
    assert "about 35 min) leave the search about 10" not in line


def test_the_seed_confirmation_flags_a_stuck_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chanloss.tuning.confirm as confirm
    from chanloss.tuning import Tuner
    from chanloss.tuning.trials import RunOutcome

    def confirm_runs(tasks, *, jobs=1, log=None, labels=None, read_test=True, after_s=0.0):  # noqa: ANN001, ANN202
        out = []
        for raw, run_dir in tasks:
            tuned = run_dir.parent.name.startswith("trial-")
            score = 0.40 if tuned and raw["seed"] == 5 else (0.90 if tuned else 0.88)
            score += 0.001 * raw["seed"]
            out.append(RunOutcome(seed=raw["seed"], score=score, curve=[score], test_acc=0.8,
                                  time_s=1.0))  # fmt: skip
        return out

    monkeypatch.setattr(confirm, "confirm_runs", confirm_runs)
    tuner = Tuner(load_config(raw=TINY), tmp_path, 4, folds=0, confirm_seeds=3)
    conf = tuner.confirmation().on_seeds({"trial": 2, "params": {}})
    assert conf["runs"] == 6
    (record,) = conf["stuck"]
    assert (record["arm"], record["seed"], record["fold"]) == ("tuned", 5, None)
    from chanloss.tuning.output import stuck_text

    assert stuck_text(record) == (
        "tuned arm, seed 5 (run): stuck at 40.5 % while the other seeds reached 90.3-90.4 %"
    )


def test_the_table_lists_stuck_runs_and_the_gain_without_their_reruns() -> None:
    from chanloss.tuning.output import confirmation_table

    tuned, ce = [0.93, 0.94, 0.93, 0.94, 0.93], [0.90, 0.91, 0.90, 0.91, 0.90]
    first = [0.93, 0.94, 0.93, 0.57, 0.93]
    gain = paired_fold_test(tuned, ce)
    conf = {
        "mode": "folds", "folds": 5, "trial": 3, "runs": 10,
        "val": {"tuned": tuned, "ce": ce, "gain": gain, "reruns": [3],
                "gain_first": paired_fold_test(first, ce)},
        "test": {"tuned": [0.9], "ce": [0.88], "gain": {"diff": 0.02, "beyond": None}},
        "stuck": [{"fold": 3, "arm": "tuned", "seed": 10, "score": 0.57, "others": [0.93, 0.94],
                   "rerun": False}],
    }  # fmt: skip
    conf["verdict"] = decide(gain, stuck=1, runs=10)
    text = confirmation_table(conf)
    assert "stuck: fold 3, tuned arm, seed 10 (run): stuck at 57.0 % while the other folds " \
           "reached 93.0-94.0 %" in text  # fmt: skip
    assert "reruns: fold(s) 3 rerun on a fresh seed; the verdict uses the reruns; with the " \
           "first runs instead: -4.40 pts" in text  # fmt: skip
    assert text.splitlines()[-1] == "verdict: " + conf["verdict"]["text"]
