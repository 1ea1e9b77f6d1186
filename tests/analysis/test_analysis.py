"""chanloss analyze: separability metrics, CC/MC views and the report of tiny digits runs."""

from __future__ import annotations

import copy
import csv
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import chanloss.losses.mc_loss  # noqa: F401  (registers "mc")
from chanloss.analysis import (
    METRIC_COLUMNS,
    analyze,
    channel_groups,
    class_correlation,
    class_means,
    collect,
    distance_ratio,
    fisher_ratio,
    gap_attention,
    group_diversity,
    load_trainer,
    normalised_group_maps,
    separability,
    silhouette,
)
from chanloss.analysis import metrics as metrics_module
from chanloss.analysis.evaluate import evaluate_checkpoint
from chanloss.analysis.report import run_labels, subsample
from chanloss.cli import main
from chanloss.config import load_config
from chanloss.data import TensorImageDataset, to_float_images
from chanloss.losses import CCLoss
from chanloss.losses.mc_loss import MCLoss
from chanloss.run.builders import Batches
from chanloss.run.session import train

TINY = {
    "model": {"name": "convnet_small", "width": 4, "feature_channels": 20, "pools": 1},
    "data": {"name": "digits"},
    "optim": {"lr": 0.05},
    "schedule": {"name": "constant"},
    "epochs": 1,
    "batch_size": 128,
    "device": "cpu",
}
RUNS = {
    "ce": [{"name": "ce"}],
    "cc": [{"name": "ce"}, {"name": "cc", "reduction": 4}],
    "mc": [{"name": "ce"}, {"name": "mc"}],
}


# -- reference implementations (plain loops) --------------------------------------------------
def pair_ratio(x: np.ndarray, y: np.ndarray) -> float:
    intra, inter = [], []
    for i in range(len(x)):
        for j in range(len(x)):
            if i != j:
                (intra if y[i] == y[j] else inter).append(np.linalg.norm(x[i] - x[j]))
    return float(np.mean(intra) / np.mean(inter))


def per_class_means(values: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    rows = []
    for c in range(k):
        sel = values[labels == c].double()
        rows.append(sel.mean(0) if len(sel) else torch.full((values.shape[1],), float("nan")))
    return torch.stack(rows)


def group_bounds(sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    out, start = [], 0
    for s in sizes:
        out.append((start, start + s))
        start += s
    return out


# -- metrics ---------------------------------------------------------------------------------
def test_separated_clusters_give_ratio_0_silhouette_1():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [0.0, 100.0, 50.0]])
    y = torch.arange(3).repeat_interleave(40)
    x = centres[y] + 0.01 * torch.randn(120, 3, generator=gen)
    assert distance_ratio(x, y) < 1e-3
    assert silhouette(x, y) > 0.999
    assert fisher_ratio(x, y) > 1e6


def test_fully_mixed_labels_give_ratio_1_silhouette_0():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 4, generator=gen)
    y = torch.randint(0, 3, (3000,), generator=gen)
    m = separability(x, y)
    assert m["ratio"] == pytest.approx(1.0, abs=0.01)
    assert abs(m["silhouette"]) < 0.02
    assert m["fisher"] < 0.01


def test_tiny_cases_by_hand():
    # 1-D: class 0 at 0 and 1, class 1 at 3. Same-class mean 1, different-class (3+2)/2 = 2.5.
    x = [[0.0], [1.0], [3.0]]
    y = [0, 0, 1]
    assert distance_ratio(x, y) == pytest.approx(0.4, rel=1e-12)
    # silhouettes: 0 -> (3-1)/3, 1 -> (2-1)/2, the singleton class -> 0 (scikit-learn's rule)
    assert silhouette(x, y) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3, rel=1e-12)
    # Fisher: class 0 = (0,0),(2,0), class 1 = (4,2),(4,4); means (1,0),(4,3), overall (2.5,1.5)
    # tr S_B = 2*(1.5^2+1.5^2) + 2*(1.5^2+1.5^2) = 18; tr S_W = 1+1+1+1 = 4
    pts = np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 2.0], [4.0, 4.0]])
    assert fisher_ratio(pts, np.array([0, 0, 1, 1])) == pytest.approx(4.5, rel=1e-12)
    # non-contiguous label values are fine
    assert fisher_ratio(pts, np.array([7, 7, 2, 2])) == pytest.approx(4.5, rel=1e-12)


def test_distance_ratio_matches_pair_loop_across_chunks(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(37, 5, generator=gen)
    y = torch.randint(0, 4, (37,), generator=gen)
    expected = pair_ratio(x.double().numpy(), y.numpy())
    assert distance_ratio(x, y) == pytest.approx(expected, rel=1e-10)
    monkeypatch.setattr(metrics_module, "_CHUNK", 7)
    assert distance_ratio(x, y) == pytest.approx(expected, rel=1e-10)


def test_degenerate_metrics_are_nan_or_inf():
    x = torch.tensor([[0.0], [1.0], [2.0]])
    one_class = torch.zeros(3, dtype=torch.long)
    assert math.isnan(distance_ratio(x, one_class))
    assert math.isnan(silhouette(x, one_class))
    singletons = torch.arange(3)
    assert math.isnan(distance_ratio(x, singletons))
    assert math.isnan(silhouette(x, singletons))
    points = torch.tensor([[0.0], [0.0], [5.0], [5.0]])
    assert fisher_ratio(points, torch.tensor([0, 0, 1, 1])) == math.inf
    assert math.isnan(fisher_ratio(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1])))


@pytest.mark.parametrize(
    ("points", "labels", "message"),
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), "points must be a real (N, D) array"),
        (torch.zeros(4, 2), torch.zeros(4), "labels must be an integer (N,) array"),
        (torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), "got 4 points and 3 labels"),
        (torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), "need at least 2 points, got 1"),
        (torch.tensor([[0.0], [math.nan]]), torch.tensor([0, 1]), "points must be finite"),
    ],
)
def test_metric_errors_name_expected_and_received(points, labels, message):
    for fn in (distance_ratio, silhouette, fisher_ratio):
        with pytest.raises(ValueError, match=re.escape(message)):
            fn(points, labels)


# -- views -----------------------------------------------------------------------------------
def test_gap_attention_is_per_sample_max_normalised_gap():
    gen = torch.Generator().manual_seed(3)
    f = torch.relu(torch.randn(5, 6, 3, 2, generator=gen))
    f[2] = 0.0
    a = gap_attention(f)
    for i in range(5):
        z = torch.tensor([f[i, c].mean() for c in range(6)])
        expected = z / z.max() if z.max() > 0 else z
        torch.testing.assert_close(a[i], expected)
    assert float(a.min()) >= 0.0 and float(a.max()) == 1.0
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) tensor, got shape \(5, 6\)"):
        gap_attention(torch.zeros(5, 6))


def test_class_means_and_correlation_match_loops():
    gen = torch.Generator().manual_seed(4)
    v = torch.randn(30, 7, generator=gen)
    y = torch.randint(0, 3, (30,), generator=gen)  # class 3 of 4 has no sample
    m = class_means(v, y, 4)
    torch.testing.assert_close(m[:3], per_class_means(v, y, 4)[:3])
    assert bool(torch.isnan(m[3]).all())
    corr = class_correlation(m[:3])
    torch.testing.assert_close(corr, torch.from_numpy(np.corrcoef(m[:3].numpy())))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\), got values in \[0, 2\]"):
        class_means(v, y, 2)
    with pytest.raises(ValueError, match=r"labels must be a \(30,\) tensor, got \(29,\)"):
        class_means(v, y[:29], 4)
    with pytest.raises(ValueError, match=r"values must be a \(N, D\) tensor, got \(30,\)"):
        class_means(v[:, 0], y, 4)
    with pytest.raises(ValueError, match=r"matrix must be a \(K, C\) tensor, got \(7,\)"):
        class_correlation(m[0])


def test_groups_scores_and_diversity_match_loops():
    gen = torch.Generator().manual_seed(5)
    f = torch.randn(4, 7, 3, 3, generator=gen)  # 7 channels, 3 classes: groups of 2, 2, 3
    y = torch.tensor([0, 2, 1, 2])
    groups = channel_groups(7, 3)
    assert groups.group_sizes == (2, 2, 3)
    bounds = group_bounds(groups.group_sizes)
    div = group_diversity(f, groups)
    scores = groups.group_scores(f)
    for b in range(4):
        for g, (lo, hi) in enumerate(bounds):
            p = torch.softmax(f[b, lo:hi].reshape(hi - lo, -1), dim=-1)
            s = p.max(0).values.sum()
            assert float(div[b, g]) == pytest.approx(1 - float(s) / (hi - lo), rel=1e-6)
            assert float(scores[b, g]) == pytest.approx(float(f[b, lo:hi].amax(0).mean()), rel=1e-6)
    # the mean is MC-Loss's own div term
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mc = MCLoss(num_classes=3, num_channels=7).eval()
    assert float(div.mean()) == pytest.approx(float(mc.terms(f, y)["div"]), rel=1e-6)
    maps = normalised_group_maps(torch.relu(f), groups, y)
    for b, m in enumerate(maps):
        lo, hi = bounds[int(y[b])]
        ref = torch.relu(f[b, lo:hi])
        torch.testing.assert_close(m, ref / ref.max())
    with pytest.raises(ValueError, match="features must have 7 channels .* got 6"):
        group_diversity(f[:, :6], groups)
    with pytest.raises(ValueError, match="num_channels must be >= num_classes"):
        channel_groups(2, 3)


def test_subsample_and_labels():
    assert subsample(5, 10).tolist() == [0, 1, 2, 3, 4]
    idx = subsample(100, 10)
    assert idx.tolist() == sorted(set(idx.tolist())) and len(idx) == 10
    assert torch.equal(idx, subsample(100, 10))
    paths = [Path("a/ce/last.pt"), Path("b/cc/last.pt")]
    assert run_labels(paths) == ["ce", "cc"]
    assert run_labels([Path("r/last.pt"), Path("r/best.pt")]) == ["r/last", "r/best"]
    assert run_labels([Path("r/last.pt"), Path("r/last.pt")]) == ["r#1", "r#2"]
    # chanloss compare: OUT/<config name>/seed<S>/; the seed only where names repeat
    cmp = [Path(f"runs/digits/{name}/seed{s}/last.pt") for name, s in (("cc", 0), ("mc", 0))]
    assert run_labels(cmp) == ["cc", "mc"]
    cmp.append(Path("runs/digits/cc/seed1/last.pt"))
    assert run_labels(cmp) == ["cc/seed0", "mc", "cc/seed1"]
    # chanloss train's default runs/<config name>-<date>-<time>
    dated = [Path("runs/digits-cc-20260101-120000/best.pt"), Path("runs/mc-20260101-130000/b.pt")]
    assert run_labels(dated) == ["digits-cc", "mc"]
    dated[1] = Path("runs/digits-cc-20260102-090000/best.pt")
    assert run_labels(dated) == ["digits-cc-20260101-120000", "digits-cc-20260102-090000"]
    assert run_labels([Path("x/ce/last.pt"), Path("y/z/ce/last.pt")]) == ["x/ce", "z/ce"]


# -- tiny trained runs -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, losses in RUNS.items():
        raw = {**copy.deepcopy(TINY), "losses": losses}
        train(load_config(raw=raw), root / name, verbose=0)
        out[name] = root / name / "last.pt"
    return out


def test_collect_on_a_uint8_test_set_equals_its_float_copy(runs):
    results = {}
    for uint8 in (True, False):
        trainer, _ = load_trainer(runs["mc"], device="cpu")
        test = trainer.data.test
        pixels = (test.images * 255).round().to(torch.uint8)
        images = pixels.numpy().astype(np.float32) / np.float32(255)
        trainer.data.test = TensorImageDataset(
            pixels if uint8 else torch.from_numpy(images), test.labels
        )
        trainer.eval_batches["test"] = Batches(
            trainer.data.test,
            batch_size=trainer.eval_batches["test"].batch_size,
            device=trainer.device,
            train=False,
        )
        results[uint8] = collect(trainer, label="mc", checkpoint=runs["mc"], epoch=1, images=3)
    a, b = results[True], results[False]
    assert a.example_images.dtype == torch.float32 and a.example_images.shape == (3, 1, 8, 8)
    assert torch.equal(a.example_images, b.example_images) and a.example_images.max() == 1
    for name in ("labels", "predictions", "embeddings", "attention", "group_scores", "diversity"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.examples.tolist() == b.examples.tolist() and len(a.example_maps) == 3
    assert all(torch.equal(m, n) for m, n in zip(a.example_maps, b.example_maps, strict=True))


def test_collected_views_match_per_class_loops_on_a_tiny_model(runs):
    trainer, state = load_trainer(runs["cc"], device="cpu")
    run = collect(trainer, label="cc", checkpoint=runs["cc"], epoch=1, images=3)
    test = trainer.data.test
    with torch.no_grad():
        out = trainer.model(trainer.eval_aug(to_float_images(test.images)))
    cc = next(s.loss for s in trainer.slots if isinstance(s.loss, CCLoss))
    k = trainer.data.num_classes
    assert run.attention_source.startswith("CC-Loss")
    assert cc.placement == "gate" and out.attention is not None  # the default reading
    att = out.attention
    torch.testing.assert_close(run.attention, att, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(run.embeddings, out.embedding, rtol=1e-5, atol=1e-6)
    assert run.accuracy == pytest.approx(
        float((out.logits.argmax(1) == test.labels).double().mean())
    )
    # class x channel heatmap: a loop over classes and channels
    heat = class_means(run.attention, run.labels, k)
    for c in range(k):
        sel = test.labels == c
        for ch in range(att.shape[1]):
            assert float(heat[c, ch]) == pytest.approx(
                float(att[sel, ch].double().mean()), rel=1e-5
            )
    # class x group matrix: groups of 2 channels (20 channels, 10 classes), CCMP + GAP
    assert run.group_sizes == (2,) * 10
    group = class_means(run.group_scores, run.labels, k)
    feats = out.features
    for c in range(k):
        sel = feats[test.labels == c]
        for g in range(k):
            ref = sel[:, 2 * g : 2 * g + 2].amax(1).mean((1, 2)).double().mean()
            assert float(group[c, g]) == pytest.approx(float(ref), rel=1e-5)
    # example images: the first test image of classes 0, 1, 2, with their own group's maps
    assert run.examples.tolist() == sorted(int((test.labels == c).nonzero()[0]) for c in range(3))
    assert len(run.example_maps) == 3
    for i, m in zip(run.examples.tolist(), run.example_maps, strict=True):
        g = int(test.labels[i])
        ref = feats[i, 2 * g : 2 * g + 2].clamp_min(0)
        torch.testing.assert_close(m, ref / ref.max(), rtol=1e-5, atol=1e-6)


def test_analyze_command_writes_every_file(runs, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    stale = ["mc_channel_maps_1_old-run.png", "mc_channel_maps_4_gone.png", "tsne.png"]
    for name in stale:
        (out / name).write_bytes(b"an earlier analysis")
    (out / "notes.png").write_text("the user's own file")
    (out / "mc_channel_maps_7_dir.png").mkdir()  # not a file analyze wrote: kept
    argv = ["analyze", *(str(p) for p in runs.values()), "--out", str(out)]
    assert main([*argv, "--max-samples", "150", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"report in {out / 'report.html'}"
    stages = [line.split("] ", 1)[1] for line in printed[:-1]]
    paths = list(runs.values())
    assert stages[:4] == [
        f"ce (1/3): loading {paths[0]}",
        "ce (1/3): test pass over 360 images",
        "ce (1/3): separability metrics on 150 samples",
        "ce (1/3): t-SNE of 150 embeddings",
    ]
    assert stages[12:] == [
        f"removed 3 files of an earlier analysis from {out}",
        "figures",
        "report",
        f"done: {out / 'report.html'}",
    ]
    assert all(line.startswith("analyze [") for line in printed[:-1])
    assert (out / "notes.png").read_text() == "the user's own file"
    assert (out / "mc_channel_maps_7_dir.png").is_dir()
    (out / "notes.png").unlink()
    (out / "mc_channel_maps_7_dir.png").rmdir()
    expected = {
        "report.html",
        "metrics.csv",
        "tsne.png",
        "cc_class_channel.png",
        "cc_class_correlation.png",
        "mc_class_group.png",
        "mc_channel_maps_1_ce.png",
        "mc_channel_maps_2_cc.png",
        "mc_channel_maps_3_mc.png",
        "grad_share.png",  # the cc and mc runs recorded gradient shares (grad_share_every)
    }
    assert {p.name for p in out.iterdir()} == expected
    for name in expected - {"report.html", "metrics.csv"}:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    refs = re.findall(r'(?:src|href)=["\']([^"\']+)["\']', page)
    assert set(refs) == expected - {"report.html"}
    assert all((out / ref).is_file() for ref in refs)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["ce", "cc", "mc"]
    assert tuple(rows[0]) == METRIC_COLUMNS
    assert [r["losses"] for r in rows] == ["ce", "ce+cc", "ce+mc"]
    for r, ck in zip(rows, runs.values(), strict=True):
        assert r["test_samples"] == "360" and r["analysed_samples"] == "150"
        assert float(r["top1"]) == pytest.approx(
            evaluate_checkpoint(ck, tmp_path / "ev", verbose=0)["top1"]
        )
        for key in ("embedding_ratio", "attention_ratio", "embedding_fisher"):
            assert float(r[key]) > 0
        for key in ("embedding_silhouette", "attention_silhouette"):
            assert -1 <= float(r[key]) <= 1
        assert 0 <= float(r["group_diversity"]) <= 0.5  # groups of 2: div in [0, 1 - 1/2]
    assert rows[1]["attention_source"].startswith("CC-Loss")
    assert rows[0]["attention_source"].startswith("GAP")


def test_analyze_without_mc_view_and_errors(tmp_path, capsys):
    raw = {**copy.deepcopy(TINY), "losses": RUNS["ce"]}
    raw["model"]["feature_channels"] = 8  # fewer channels than the 10 classes
    train(load_config(raw=raw), tmp_path / "narrow", verbose=0)
    ck = tmp_path / "narrow" / "last.pt"
    (tmp_path / "out").mkdir()
    for name in ("mc_class_group.png", "mc_channel_maps_1_narrow.png", "report.html"):
        (tmp_path / "out" / name).write_bytes(b"an earlier analysis with an MC view")
    rows = analyze(
        [ck], tmp_path / "out", max_samples=50, images=2, progress=False, labels=["my run"]
    )
    assert rows[0]["label"] == "my run"
    assert capsys.readouterr().out == ""
    assert math.isnan(rows[0]["group_top1"])
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert not any(name.startswith("mc_") for name in files)
    assert "No MC view for my run" in (tmp_path / "out" / "report.html").read_text()
    with pytest.raises(ValueError, match=r"one label per checkpoint \(1\), got 2"):
        analyze([ck], tmp_path / "x", labels=["a", "b"])
    with pytest.raises(ValueError, match="max_samples must be an integer >= 3, got 2"):
        analyze([ck], tmp_path / "x", max_samples=2)
    with pytest.raises(ValueError, match="at least one checkpoint"):
        analyze([], tmp_path / "x")

    out = str(tmp_path / "x")  # never a relative path: it would land in the working tree

    def err(argv: list[str]) -> str:
        assert main(argv) == 2
        return capsys.readouterr().err

    assert "checkpoint not found" in err(["analyze", str(tmp_path / "no.pt"), "--out", out])
    assert "argument --max-samples: must be an integer >= 3, got '1'" in err(
        ["analyze", str(ck), "--out", out, "--max-samples", "1"]
    )
    assert "required: --out" in err(["analyze", str(ck)])
    assert "--label was given 1 times for 2 checkpoints" in err(
        ["analyze", str(ck), str(ck), "--out", out, "--label", "a"]
    )
    assert "--label names must be unique" in err(
        ["analyze", str(ck), str(ck), "--out", out, "--label", "a", "--label", "a"]
    )
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    assert "not a readable chanloss checkpoint" in err(["analyze", str(bad), "--out", out])


def test_analyze_scores_with_the_evaluator_and_builds_no_trainer(runs, tmp_path, monkeypatch):
    from chanloss.analysis import load_evaluator
    from chanloss.run.trainer import Trainer

    evaluator, state = load_evaluator(runs["cc"], device="cpu")
    assert not isinstance(evaluator, Trainer) and not hasattr(evaluator, "optimizer")
    by_evaluator = collect(evaluator, label="cc", checkpoint=runs["cc"], epoch=1, images=2)
    trainer, _ = load_trainer(runs["cc"], device="cpu")
    by_trainer = collect(trainer, label="cc", checkpoint=runs["cc"], epoch=1, images=2)
    for name in ("labels", "predictions", "embeddings", "attention", "group_scores"):
        assert torch.equal(getattr(by_evaluator, name), getattr(by_trainer, name)), name

    def no_trainer(*args, **kwargs):
        raise AssertionError("analyze built a Trainer (optimiser, schedule) to score a model")

    monkeypatch.setattr(Trainer, "__init__", no_trainer)
    rows = analyze([runs["cc"]], tmp_path / "out", max_samples=40, images=1, progress=False)
    assert rows[0]["top1"] == pytest.approx(by_evaluator.accuracy)
