"""compare's verdict (the same rule as demo's): each config's test-accuracy gap to the first,
beyond or within two Welch standard errors of the seeds."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml
from tiny_config import TINY

from chanloss.cli import main
from chanloss.config import load_config
from chanloss.experiments.comparison import ConfigResult
from chanloss.experiments.verdict import compare_verdict, gap_line


def result(label: str, accs: list[float], losses: list[str]) -> ConfigResult:
    raw = copy.deepcopy(TINY)
    raw["losses"] = [{"name": n} for n in losses]
    raw["epochs"] = 9
    config = load_config(raw=raw)
    n = len(accs)
    return ConfigResult(label, config, list(range(n)), accs, [1.0] * n, 10, [Path("x")] * n)


def test_the_gap_is_beyond_noise_only_past_two_welch_standard_errors():
    ce = result("ce", [0.90, 0.91, 0.92], ["ce"])
    far = result("mc", [0.95, 0.96, 0.97], ["ce", "mc"])
    near = result("cc", [0.90, 0.915, 0.93], ["ce", "cc"])
    # the reference by hand: sample std 0.01 each, 3 seeds each
    se = 100 * math.sqrt(0.01**2 / 3 + 0.01**2 / 3)
    assert gap_line(ce, far) == (
        f"mc - ce: +5.00 test-accuracy points after 9 epochs, more than 2 standard errors "
        f"({2 * se:.2f} points): beyond seed noise."
    )
    assert "+0.50 test-accuracy points" in gap_line(ce, near)
    assert "within 2 standard errors" in gap_line(ce, near)
    one = result("one", [0.99], ["ce", "mc"])
    assert "one seed each, so no error bar" in gap_line(ce, one)
    text = compare_verdict([ce, far, near])
    assert text.splitlines()[0] == "Against ce (the first config):"
    assert text.splitlines()[1].startswith("  mc - ce: +5.00")
    assert text.splitlines()[2].startswith("  cc - ce: +0.50")
    assert "nothing to compare" in compare_verdict([ce])


def test_compare_ends_with_the_verdict_and_labels_ce_vs_mc_by_their_losses(tmp_path, capsys):
    a = tmp_path / "ce.yaml"
    a.write_text(yaml.safe_dump(TINY))
    b = tmp_path / "mc.yaml"
    b.write_text(yaml.safe_dump({**TINY, "losses": [{"name": "ce"}, {"name": "mc"}]}))
    out = tmp_path / "cmp"
    argv = ["compare", "-c", str(a), "-c", str(b), "--seeds", "2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| ce | convnet_small | ce | losses=ce |" in printed
    assert "| mc | convnet_small | ce + mc | losses=ce + mc |" in printed
    tail = printed[printed.index("Against ce (the first config):") :]
    assert "  mc - ce: " in tail and "test-accuracy points after 1 epoch, " in tail
    assert ("beyond seed noise" in tail) or ("not a reliable difference" in tail)
    assert tail.splitlines()[-1] == f"results in {out}"
    assert "Against ce (the first config):" in (out / "results.md").read_text()


def test_the_one_rule_from_values_and_from_summaries():
    from chanloss.experiments.verdict import gap, gap_of

    a, b = [0.95, 0.96, 0.97], [0.90, 0.91, 0.92]
    found = gap(a, b)
    se = math.sqrt(0.01**2 / 3 + 0.01**2 / 3)  # by hand: sample std 0.01, 3 seeds each
    assert found.diff == pytest.approx(0.05) and found.se == pytest.approx(se)
    assert found.beyond is True and found.threshold == pytest.approx(2 * se)
    assert gap(b, a).beyond is True and gap(b, a).diff == pytest.approx(-0.05)
    near = gap([0.90, 0.915, 0.93], b)
    assert near.beyond is False  # 0.5 points against 2 SE of about 2 points
    one = gap([0.99], b)
    assert one.beyond is None and math.isnan(one.se) and one.diff == pytest.approx(0.08)
    # summaries: 2 SE = 2 * sqrt(0.1**2 / 4 * 2) = 0.141 > 0.1; with std 0.05, 0.071 < 0.1
    assert gap_of(0.5, 0.1, 4, 0.4, 0.1, 4).beyond is False
    assert gap_of(0.5, 0.05, 4, 0.4, 0.05, 4).beyond is True
    assert gap_of(0.5, 0.0, 1, 0.4, 0.05, 4).beyond is None


def test_compare_keeps_a_diverged_run_out_of_the_means_and_says_so(tmp_path):
    from chanloss.experiments.comparison import compare

    raw = copy.deepcopy(TINY)
    bad = copy.deepcopy(TINY)
    bad["optim"] = {"lr": 1e30, "momentum": 0.0}
    configs = [("ce", load_config(raw=raw)), ("bad", load_config(raw=bad))]
    with pytest.raises(Exception, match="training diverged"):
        compare(configs, seeds=1, out_dir=tmp_path / "strict", verbose=0)
    results = compare(configs, seeds=2, out_dir=tmp_path / "kept", verbose=0, keep_diverged=True)
    ce, diverged = results
    assert ce.seeds == [0, 1] and len(ce.test_acc) == 2 and not ce.diverged
    assert diverged.diverged == [0, 1] and diverged.test_acc == [] and math.isnan(diverged.mean)
    assert (tmp_path / "kept" / "bad" / "seed0" / "diverged.json").is_file()
    text = (tmp_path / "kept" / "results.md").read_text()
    assert "bad - ce: every run of a side diverged, nothing to compare (bad: 2 diverged" in text
    assert (tmp_path / "kept" / "accuracy.png").is_file()
