"""compare's verdict (the same rule as demo's): each config's test-accuracy gap to the first,
beyond or within two Welch standard errors of the seeds."""

from __future__ import annotations

import copy
import math
from pathlib import Path

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
