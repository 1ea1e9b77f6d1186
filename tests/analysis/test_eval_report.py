"""``chanloss eval``: the per-class table in the terminal and one output folder per split."""

from __future__ import annotations

import csv
import json

import torch
from tiny_config import TINY

from chanloss.analysis.evaluate import class_report, most_confused, worst_classes
from chanloss.cli import main
from chanloss.config import load_config
from chanloss.run.session import train


def reference_worst(confusion: list[list[int]], count: int) -> list[tuple[int, float, int]]:
    rows = [(i, row[i] / sum(row), sum(row)) for i, row in enumerate(confusion) if sum(row) > 0]
    return sorted(rows, key=lambda r: (r[1], r[0]))[:count]


def reference_confused(confusion: list[list[int]], count: int) -> list[tuple[int, int, int]]:
    pairs = [
        (t, p, n) for t, row in enumerate(confusion) for p, n in enumerate(row) if t != p and n > 0
    ]
    return sorted(pairs, key=lambda r: (-r[2], r[0], r[1]))[:count]


def test_worst_classes_and_confused_pairs_match_a_plain_reference():
    gen = torch.Generator().manual_seed(0)
    for k in (1, 2, 7):
        for _ in range(5):
            confusion = torch.randint(0, 4, (k, k), generator=gen)
            confusion[torch.rand(k, generator=gen) < 0.2] = 0  # classes without samples
            plain = confusion.tolist()
            for count in (1, 3, 10):
                assert worst_classes(confusion, count) == [
                    (i, float(a), n) for i, a, n in reference_worst(plain, count)
                ]
                assert most_confused(confusion, count) == reference_confused(plain, count)


def test_class_report_names_the_worst_classes_and_pairs():
    names = ["cat", "dog", "hippopotamus"]
    confusion = torch.tensor([[8, 2, 0], [5, 5, 0], [0, 1, 9]])
    lines = class_report(names, confusion, count=2).splitlines()
    assert lines[0] == "worst 2 of 3 classes:"
    assert lines[2].split() == ["dog", "50.00%", "10"]
    assert lines[3].split() == ["cat", "80.00%", "10"]
    assert lines[4] == "most confused pairs:"
    assert lines[6].split() == ["dog", "->", "cat", "5", "50.00%"]
    assert lines[7].split() == ["cat", "->", "dog", "2", "20.00%"]
    assert len(lines) == 8
    perfect = class_report(["a", "b"], torch.tensor([[3, 0], [0, 2]]))
    assert perfect.splitlines()[-1] == "no image was confused with another class"


def test_eval_prints_the_table_and_keeps_one_folder_per_split(tmp_path, capsys):
    run = tmp_path / "run"
    raw = {**TINY, "data": {"name": "digits", "val_fraction": 0.2}}
    train(load_config(raw=raw), run, verbose=0)
    assert main(["eval", str(run / "last.pt"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.splitlines()
    test_dir = run / "eval-last" / "test"
    assert printed[0].endswith(f"-> {test_dir}")
    assert printed[1] == "worst 5 of 10 classes:"
    result = json.loads((test_dir / "eval.json").read_text())
    per_class = result["per_class_accuracy"]
    worst = sorted(per_class, key=lambda c: (per_class[c], int(c)))[:5]
    assert [line.split()[0] for line in printed[3:8]] == worst
    # eval.json holds what the terminal showed: the worst classes and the most confused pairs
    assert [c["class"] for c in result["worst_classes"]] == worst
    assert [c["accuracy"] for c in result["worst_classes"]] == [per_class[c] for c in worst]
    confusion = list(csv.reader((test_dir / "confusion_matrix.csv").open()))[1:]
    pairs = sorted(
        (
            (-int(n), i, j)
            for i, row in enumerate(confusion)
            for j, n in enumerate(row[1:])
            if i != j and int(n) > 0
        )
    )[:5]
    assert [(c["true"], c["predicted"], c["images"]) for c in result["most_confused"]] == [
        (confusion[i][0], confusion[j][0], -n) for n, i, j in pairs
    ]
    assert main(["eval", str(run / "last.pt"), "--split", "val", "--device", "cpu"]) == 0
    capsys.readouterr()
    val = json.loads((run / "eval-last" / "val" / "eval.json").read_text())
    assert (val["split"], val["samples"]) == ("val", 288)
    assert json.loads((test_dir / "eval.json").read_text()) == result  # not overwritten
    assert sorted(p.name for p in (run / "eval-last").iterdir()) == ["test", "val"]
    out = tmp_path / "mine"
    assert main(["eval", str(run / "best.pt"), "--out", str(out), "--device", "cpu"]) == 0
    assert (out / "test" / "confusion_matrix.png").is_file()
