"""``chanloss tune``'s parts: search spaces, durations, the two-standard-error rule and its
advice, and the halving pruner."""

from __future__ import annotations

import pytest
from tiny_config import TUNE_TINY

from chanloss.config import ConfigError, load_config
from chanloss.config.reference import builtin_losses
from chanloss.config.search import apply_params, low_end_params, resolve_space, start_params
from chanloss.losses import LOSSES
from chanloss.losses.search import Choice, IntRange, LogUniform, Uniform
from chanloss.tuning import advice, gain_over, parse_duration

# Digits, the narrowest ConvNet, 3 epochs: about a second per trial on one thread.
TINY = TUNE_TINY


# -- search spaces -------------------------------------------------------------------------------
def test_every_weight_range_can_switch_its_loss_almost_off() -> None:
    for name, cls in builtin_losses().items():
        for key, param in getattr(cls, "search_space", {}).items():
            assert isinstance(param, (LogUniform, Uniform, IntRange, Choice)), (name, key)
            if isinstance(param, Choice):
                assert param.values, (name, key)
            else:
                assert param.low < param.high, (name, key)
            if key == "weight" or key in ("alpha", "beta") and name == "mc":
                assert isinstance(param, LogUniform) and param.low <= 0.01, (name, key)
    assert {"form", "placement", "weight"} <= set(LOSSES["cc"].search_space)
    assert isinstance(LOSSES["mc"].search_space["keep_ratio"], Choice)
    assert isinstance(LOSSES["mc"].search_space["pool"], Choice)


def test_search_block_narrows_overrides_and_adds_optimiser_keys() -> None:
    raw = {
        **TINY,
        "search": {
            "mc": {"alpha": [0.01, 1], "keep_ratio": [0.5, 1.0], "pool": None, "beta": 5.0},
            "optim": {"lr": [0.01, 0.2], "momentum": {"low": 0.5, "high": 0.95}},
        },
    }
    config = load_config(raw=raw)
    dims, fixed = resolve_space(config)
    got = {d.name: d.param for d in dims}
    assert got == {
        "mc.alpha": LogUniform(0.01, 1.0),  # a default log range stays log
        "mc.keep_ratio": Choice((0.5, 1.0)),  # a default choice stays a choice
        "optim.lr": LogUniform(0.01, 0.2),
        "optim.momentum": Uniform(0.5, 0.95),
    }
    assert fixed == {("losses", 1, "beta"): 5.0}
    params = {"mc.alpha": 0.1, "mc.keep_ratio": 0.5, "optim.lr": 0.02, "optim.momentum": 0.8}
    out = apply_params(config.model_dump(mode="json"), dims, fixed, params)
    assert "search" not in out
    assert (out["losses"][1]["alpha"], out["losses"][1]["beta"]) == (0.1, 5.0)
    assert out["losses"][1]["keep_ratio"] == 0.5 and out["optim"]["lr"] == 0.02
    load_config(raw=out)  # a plain, valid training config
    # the first trials: the config as given, then the losses at the low ends of their ranges
    # (MC's alpha 1.5 and keep_ratio 2/3 lie outside the narrowed ranges: sampled instead)
    assert start_params(config, dims) == {"optim.lr": 0.1, "optim.momentum": 0.9}
    assert low_end_params(config, dims)["mc.alpha"] == 0.01


@pytest.mark.parametrize(
    ("search", "message"),
    [
        (
            {"mc": {"alfa": [1, 2]}},
            "mc.alfa: loss 'mc' has no parameter 'alfa' (did you mean 'alpha'?)",
        ),
        ({"cc": {"weight": [0.1, 1]}}, "cc: the config has no loss 'cc'"),
        ({"mc": {"alpha": [2.0, 1.0]}}, "mc.alpha: empty range [2.0, 1.0]"),
        ({"mc": {"alpha": [1.0, 1.0]}}, "mc.alpha: empty range"),
        ({"mc": {"pool": []}}, "mc.pool: empty choices"),
        ({"mc": {"alpha": [0.0, 1.0]}}, "a log-uniform range needs low > 0"),
        ({"mc": {"alpha": {"low": 1, "hi": 2}}}, "unknown key 'hi' (did you mean 'high'?)"),
        ({"optim": {"nesterov": [0, 1]}}, "optim.nesterov cannot be tuned"),
        ({"mc": [1, 2]}, "search.mc: Input should be a valid dictionary"),
    ],
)
def test_bad_search_blocks_are_config_errors(search: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="search") as err:
        load_config(raw={**TINY, "search": search})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_durations_and_the_two_standard_error_rule() -> None:
    assert parse_duration("2h") == 7200 and parse_duration("1h30m") == 5400
    assert parse_duration("90m") == 5400 and parse_duration("45") == 45
    for bad in ("", "2x", "0", "h"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    # means 0.9 vs 0.8, stds 0.01: SE = sqrt(2 * 1e-4 / 3) = 0.00816, far beyond 2 SE
    g = gain_over([0.89, 0.90, 0.91], [0.79, 0.80, 0.81])
    assert g["diff"] == pytest.approx(0.1) and g["se"] == pytest.approx((2e-4 / 3) ** 0.5)
    assert g["beyond"] is True
    assert gain_over([0.80, 0.90], [0.84, 0.85])["beyond"] is False
    assert gain_over([0.9], [0.8])["beyond"] is None  # one seed: no noise estimate

    # the advice follows the validation runs only
    def conf(val_gain: dict) -> dict:
        return {"val": {"gain": val_gain}, "test": {"gain": {"diff": -1.0, "beyond": True}}}

    assert "use best.yaml" in advice(conf(g))
    assert "keep CE" in advice(conf(gain_over([0.79, 0.80, 0.81], [0.89, 0.90, 0.91])))
    # within noise: "as good" only where a useful gain would have been seen
    blind = advice(conf(gain_over([0.80, 0.90], [0.84, 0.85])))
    assert blind.startswith("cannot tell: within noise, but a gain smaller than 14.3 points")
    sharp = advice(conf(gain_over([0.800, 0.801, 0.802], [0.799, 0.800, 0.801])))
    assert "CE alone is as good" in sharp
    assert advice(conf(gain_over([0.9], [0.8]))).startswith("cannot tell: one run each")


def test_the_halving_pruner_stops_trials_early() -> None:
    import optuna

    from chanloss.tuning.pruners import make_pruner

    pruner = make_pruner("halving", epochs=9)
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    stopped = []
    for accuracy in (0.9, 0.8, 0.7, 0.2, 0.1):  # later trials worse at every epoch
        trial = study.ask()
        for epoch in range(9):
            trial.report(accuracy, epoch)
            if trial.should_prune():
                stopped.append(epoch)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, accuracy)
    assert stopped and max(stopped) < 8  # the bad trials stopped before their last epoch
    with pytest.raises(ConfigError, match="--pruner: expected one of noise, median, halving"):
        make_pruner("hyperband", epochs=9)
