"""The statistics and the pruner of ``chanloss tune``, against plain references: a trial's
score, the pooled seed noise, the paired k-fold test, the stratified folds, the noise-margin
pruner, and the once-per-command messages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chanloss.data.base import stratified_folds
from chanloss.tuning.stats import curve_score, paired_fold_test, pooled_seed_std, smoothed


def test_a_score_is_the_mean_of_the_last_three_epochs() -> None:
    assert curve_score([0.1, 0.5, 0.6, 0.7]) == pytest.approx(0.6)
    assert curve_score([0.4, 0.6]) == pytest.approx(0.5)  # shorter curves: all of it
    assert smoothed([0.1, 0.5, 0.6, 0.7]) == pytest.approx([0.1, 0.3, 0.4, 0.6])
    with pytest.raises(ValueError, match="at least one evaluated epoch"):
        curve_score([])


def test_pooled_seed_noise_is_the_within_setting_standard_deviation() -> None:
    groups = [[0.80, 0.84], [0.70, 0.71, 0.75], [0.9]]  # the single value adds nothing
    std, dof = pooled_seed_std(groups)
    ss = sum(((np.array(g) - np.mean(g)) ** 2).sum() for g in groups)
    assert dof == 3 and std == pytest.approx(math.sqrt(ss / 3))
    assert math.isnan(pooled_seed_std([[0.5], [0.6]])[0]) and pooled_seed_std([])[1] == 0


def test_the_paired_fold_test_is_the_paired_t_test_with_the_corrected_one_beside_it() -> None:
    from scipy import stats

    tuned = [0.86, 0.84, 0.88, 0.85, 0.87]
    base = [0.84, 0.83, 0.85, 0.845, 0.85]
    # the verdict: scipy's paired t-test on the per-fold differences
    got = paired_fold_test(tuned, base)
    ref = stats.ttest_rel(tuned, base)
    assert got["t"] == pytest.approx(ref.statistic) and got["p"] == pytest.approx(ref.pvalue)
    d = np.array(tuned) - np.array(base)
    se = math.sqrt(d.var(ddof=1) / 5)
    assert got["diff"] == pytest.approx(d.mean()) and got["se"] == pytest.approx(se)
    t4 = stats.t.ppf(0.975, 4)
    assert got["threshold"] == pytest.approx(t4 * se)
    assert got["detectable"] == pytest.approx((t4 + stats.t.ppf(0.8, 4)) * se)
    assert got["beyond"] is True and got["folds"] == 5
    # beside it, Nadeau-Bengio (5 folds: n_val / n_train = 1/4): the variance grows by
    # (1/5 + 1/4) / (1/5), and this gain is no longer beyond noise
    se_nb = math.sqrt((1 / 5 + 1 / 4) * d.var(ddof=1))
    assert got["se_corrected"] == pytest.approx(se_nb)
    assert got["p_corrected"] == pytest.approx(2 * stats.t.sf(d.mean() / se_nb, 4))
    assert got["beyond_corrected"] is False
    # ten folds: n_val / n_train = 1/9 by default, or as given
    d10 = np.tile(d, 2)
    ten = paired_fold_test(tuned * 2, base * 2, val_share=0.5)
    assert ten["se_corrected"] == pytest.approx(math.sqrt((1 / 10 + 0.5) * d10.var(ddof=1)))
    assert paired_fold_test(tuned * 2, base * 2)["se_corrected"] == pytest.approx(
        math.sqrt((1 / 10 + 1 / 9) * d10.var(ddof=1))
    )
    # identical arms: no difference; one fold: no verdict; unequal lengths: an error
    same = paired_fold_test(base, base)
    assert same["diff"] == 0 and same["beyond"] is False and same["p"] == 1.0
    assert paired_fold_test([0.9], [0.8])["beyond"] is None
    with pytest.raises(ValueError, match="paired folds"):
        paired_fold_test([0.9, 0.8], [0.8])


def test_stratified_folds_partition_the_split_with_every_class_in_each() -> None:
    labels = np.repeat(np.arange(3), [10, 7, 5])
    folds = stratified_folds(labels, 5, seed=0, what="x")
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(labels)))
    for held in folds:
        counts = np.bincount(labels[held], minlength=3)
        assert counts[0] == 2 and (counts >= 1).all()  # 10 of class 0 over 5 folds
    assert [f.tolist() for f in stratified_folds(labels, 5, 0, "x")] == [
        f.tolist() for f in folds
    ]  # the same seed, the same folds
    with pytest.raises(
        ValueError, match="6 folds need at least 6 images of every class; class 2 has 5"
    ):
        stratified_folds(labels, 6, 0, "x")


def test_data_folds_validate_on_every_training_image_once() -> None:
    from chanloss.data import build_datasets

    whole = build_datasets("digits")
    held = []
    for fold in range(3):
        bundle = build_datasets("digits", folds=3, fold=fold, split_seed=4, seed=9)
        assert len(bundle.train) + len(bundle.val) == len(whole.train)
        held.append(bundle.val.images.flatten(1))
    rows = {tuple(r.tolist()) for r in np.concatenate([h.numpy() for h in held])}
    assert len(rows) == len({tuple(r.tolist()) for r in whole.train.images.flatten(1).numpy()})
    # the split seed, not the run's seed, draws the validation split
    a = build_datasets("digits", val_fraction=0.2, seed=1, split_seed=7)
    b = build_datasets("digits", val_fraction=0.2, seed=2, split_seed=7)
    assert (a.val.labels == b.val.labels).all() and (a.val.images == b.val.images).all()
    with pytest.raises(ValueError, match="folds"):
        build_datasets("digits", folds=3, val_fraction=0.2)


def _study_with(curves: list[list[float]], noise: float | None):  # noqa: ANN202
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    if noise is not None:
        study.set_user_attr("noise_std", noise)
    for curve in curves:
        trial = study.ask()
        for epoch, value in enumerate(curve, 1):
            trial.report(value, epoch)
        study.tell(trial, curve_score(curve))
    return study


def _pruned_at(study, pruner, curve: list[float]) -> int | None:  # noqa: ANN001
    """The epoch at which ``pruner`` stops a new trial reporting ``curve``; None if never."""
    trial = study.ask()
    for epoch, value in enumerate(curve, 1):
        trial.report(value, epoch)
        if pruner.prune(study, study._storage.get_trial(trial._trial_id)):
            return epoch
    return None


@pytest.mark.parametrize(
    ("noise", "curve", "pruned_at"),
    [
        (0.01, [0.5, 0.5, 0.5, 0.5, 0.5, 0.5], 4),  # 30 points below: pruned after the warm-up
        (0.01, [0.78, 0.78, 0.78, 0.78, 0.78, 0.78], None),  # 2 below, within 2 x 1.5 noise
        (0.2, [0.5, 0.5, 0.5, 0.5, 0.5, 0.5], None),  # below, but the noise is larger
        (None, [0.1, 0.1, 0.1, 0.1, 0.1, 0.1], None),  # noise not measured yet: no pruning
        (0.01, [0.8, 0.8, 0.8, 0.74, 0.8, 0.8], None),  # one bad epoch, smoothed away
        (0.01, [0.2, 0.2, 0.2, 0.79, 0.81, 0.81], 4),  # judged on its mean of 3 epochs
    ],
)
def test_the_noise_margin_pruner(
    noise: float | None, curve: list[float], pruned_at: int | None
) -> None:
    from chanloss.tuning.pruners import NoiseMarginPruner, make_pruner

    refs = [[0.6, 0.7, 0.8, 0.8, 0.8, 0.8], [0.6, 0.72, 0.79, 0.8, 0.81, 0.8],
            [0.58, 0.7, 0.8, 0.81, 0.8, 0.79]]  # fmt: skip
    study = _study_with(refs, 0.015 if noise == 0.01 else noise)  # margin 2 x 0.015
    pruner = make_pruner("noise", epochs=6)
    assert isinstance(pruner, NoiseMarginPruner) and pruner.warmup == 3
    assert _pruned_at(study, pruner, curve) == pruned_at


def test_pruning_before_half_of_the_epochs_is_counted_and_worded() -> None:
    import optuna
    from optuna.trial import TrialState

    from chanloss.tuning.output import pruned_early_line
    from chanloss.tuning.study import pruned_early

    study = optuna.create_study(direction="maximize")
    for state, epochs in [("PRUNED", 2), ("PRUNED", 3), ("PRUNED", 7), ("COMPLETE", 10)]:
        trial = study.ask()
        trial.set_user_attr("epochs", epochs)
        if state == "PRUNED":
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, 0.9)
    assert pruned_early(study, 10) == (2, 4)  # epochs 2 and 3 are before half of 10
    line = pruned_early_line(3, 4, "median")
    assert line.startswith("pruning: 3 of 4 finished trials were pruned before half of the epochs")
    assert "--pruner noise" in line and "--pruner none" in line


def _complete(params: dict[str, float], seed: int | None, curve: list[float]):  # noqa: ANN202
    import optuna

    return optuna.trial.create_trial(
        params=params,
        distributions={k: optuna.distributions.FloatDistribution(0.0, 10.0) for k in params},
        value=curve_score(curve),
        intermediate_values=dict(enumerate(curve, 1)),
        user_attrs={} if seed is None else {"seed": seed},
    )


def test_the_seed_noise_by_epoch_is_the_pooled_spread_of_smoothed_curves_made_non_increasing() -> (
    None
):
    import statistics

    from chanloss.tuning.pruners import seed_noise_by_epoch

    a0 = [0.1, 0.2, 0.5, 0.3, 0.8, 0.8]
    a1 = [0.1, 0.4, 0.3, 0.6, 0.8, 0.9]
    b0 = [0.2, 0.3, 0.3, 0.4, 0.5, 0.6]
    b1 = [0.2, 0.3, 0.4, 0.4, 0.5, 0.6]
    trials = [_complete({"x": 1.0}, 0, a0), _complete({"x": 1.0}, 1, a1),
              _complete({"x": 2.0}, 0, b0), _complete({"x": 2.0}, 1, b1),
              _complete({"x": 3.0}, 0, [0.0] * 6),  # one seed: no spread
              _complete({"x": 1.0}, None, [0.9] * 6)]  # fmt: skip  # no seed: left out

    def smooth(curve: list[float], step: int) -> float:
        window = curve[max(0, step - 3) : step]
        return sum(window) / len(window)

    raw = {}
    for step in range(1, 7):
        ss = sum(statistics.variance([smooth(c0, step), smooth(c1, step)])
                 for c0, c1 in ((a0, a1), (b0, b1)))  # fmt: skip  # one dof per pair
        raw[step] = (ss / 2) ** 0.5
    expected = {s: max(raw[t] for t in range(s, 7)) for s in raw}
    got = seed_noise_by_epoch(trials)
    assert got.keys() == expected.keys()
    for step in expected:
        assert got[step] == pytest.approx(expected[step])
    assert got[1] >= got[3] >= got[6] and got[2] > raw[2]  # step 2's 0 is lifted by later steps
    assert seed_noise_by_epoch(trials[4:]) == {}


@pytest.mark.parametrize(("config", "twin", "pruned_at"), [
    # the config as written is low half-way on seed 0 and ends level with seed 1: judged at the end
    ([0.3, 0.55, 0.3, 0.35, 0.8, 0.81], [0.3, 0.55, 0.85, 0.8, 0.81, 0.8], 6),
    # the two seeds agree all along: pruned right after the warm-up
    ([0.3, 0.55, 0.85, 0.8, 0.81, 0.8], [0.3, 0.56, 0.84, 0.8, 0.8, 0.81], 4),
])  # fmt: skip
def test_the_noise_pruner_waits_while_the_seed_twins_disagree(
    config: list[float], twin: list[float], pruned_at: int
) -> None:
    import optuna

    from chanloss.tuning.pruners import make_pruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("noise_std", 0.005)  # the final scores of the twins agree in both cases
    for params, seed, curve in [({"x": 1.0}, 0, config), ({"x": 1.0}, 1, twin),
                                ({"x": 2.0}, 0, [0.3, 0.6, 0.8, 0.8, 0.8, 0.8])]:  # fmt: skip
        study.add_trial(_complete(params, seed, curve))
    pruner = make_pruner("noise", epochs=6)
    assert _pruned_at(study, pruner, [0.3, 0.5, 0.55, 0.55, 0.55, 0.5]) == pruned_at


def test_a_winner_that_drops_on_its_fresh_seed_is_reported() -> None:
    from chanloss.tuning.output import rerun_drop_line

    # 83.42 -> 74.83 with a seed noise of 1 point: far beyond 2 x the noise
    line = rerun_drop_line({"search_score": 0.8342, "rerun_score": 0.7483}, 0.01)
    assert line.startswith("re-run: the chosen setting scored 83.42% in the search and 74.83%")
    assert "8.59 points lower (noise ±2.00)" in line and "data.val_fraction" in line
    assert rerun_drop_line({"search_score": 0.8342, "rerun_score": 0.82}, 0.01) == ""  # within
    assert rerun_drop_line({"search_score": 0.8342, "rerun_score": 0.90}, 0.01) == ""  # higher
    assert rerun_drop_line({"search_score": 0.8342, "rerun_score": None}, 0.01) == ""  # no re-run
    assert rerun_drop_line({"search_score": 0.8342, "rerun_score": 0.7}, None) == ""  # no noise


def test_a_fold_run_is_stretched_to_the_whole_splits_number_of_steps() -> None:
    from chanloss.config import load_config
    from chanloss.tuning.confirm import fold_schedule

    base = {"model": {"name": "convnet_small"}, "data": {"name": "digits"},
            "losses": [{"name": "ce"}], "epochs": 15,
            "schedule": {"name": "cosine", "warmup_epochs": 1.0}}  # fmt: skip
    five = fold_schedule(base, 5)  # 4/5 of the images per epoch: 5/4 of the epochs
    assert five["epochs"] == 19 and five["schedule"]["warmup_epochs"] == pytest.approx(1.25)
    assert base["epochs"] == 15 and base["schedule"]["warmup_epochs"] == 1.0  # not modified
    assert load_config(raw=five).epochs == 19
    two = fold_schedule({**base, "schedule": {"name": "step", "milestones": [5, 10]}}, 2)
    assert two["epochs"] == 30 and two["schedule"]["milestones"] == [10, 20]
    assert two["schedule"]["warmup_epochs"] == 0.0
    steps = fold_schedule({**base, "epochs": 8, "schedule": {"name": "step", "step_size": 3}}, 4)
    assert steps["epochs"] == round(8 * 4 / 3) and steps["schedule"]["step_size"] == 4
    # the steps of a fold's run match the whole split's within half an epoch
    images, batch = 4000, 64
    fold_steps = five["epochs"] * (images * 4 // 5 // batch)
    assert abs(fold_steps - 15 * (images // batch)) <= (images * 4 // 5 // batch) / 2
