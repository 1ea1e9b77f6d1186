"""The runner: run_many runs a set of runs (in order, in processes) and a run's result is read
one way (RunResult: what train returns and read_result reads back)."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
from tiny_config import TINY

from chanloss.config import load_config
from chanloss.core.errors import ConfigError
from chanloss.experiments.runner import run_many, run_status
from chanloss.run.result import RunResult, read_result
from chanloss.run.session import train


def tiny(seed: int = 0, **changes: object):
    raw = copy.deepcopy(TINY)
    raw.update(changes, seed=seed)
    return load_config(raw=raw)


def test_train_returns_the_result_that_read_result_reads_back(tmp_path):
    run = tmp_path / "run"
    result = train(tiny(data={"name": "digits", "val_fraction": 0.2}), run, verbose=0)
    assert isinstance(result, RunResult) and result.run_dir == run
    assert result == json.loads((run / "summary.json").read_text())
    assert result.finished and result.epochs == 1 and result.best_epoch == 1
    assert result.final_test_acc == result["final_test_acc"]
    assert result.final_val_acc == result["final_val_acc"] is not None
    assert result.last_checkpoint.is_file() and result.best_checkpoint.is_file()
    assert [row["epoch"] for row in result.metrics()] == ["1"]
    back = read_result(run)
    assert back == result and back.run_dir == run
    copied = pickle.loads(pickle.dumps(result))  # crosses a process boundary intact
    assert copied == result and copied.run_dir == run and isinstance(copied, RunResult)


def test_read_result_of_a_directory_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="holds no finished run"):
        read_result(tmp_path)
    (tmp_path / "summary.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="is not a run summary"):
        read_result(tmp_path)


def test_final_val_falls_back_to_metrics_csv(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,val_acc\n1,0.5\n2,0.75\n")
    assert RunResult({"final_val_acc": None}, tmp_path).final_val_acc == 0.75
    assert RunResult({}, tmp_path / "none").final_val_acc is None


def test_run_many_returns_results_in_order_and_skips_finished_runs(tmp_path):
    runs = [(tiny(seed), tmp_path / f"seed{seed}") for seed in (0, 1)]
    seen: list[int] = []
    # (jobs > 1, in processes: the demo command test runs compare --jobs 2 through it)
    results = run_many(runs, on_finished=lambda i, r: seen.append(i))
    assert sorted(seen) == [0, 1]
    assert [r.run_dir for r in results] == [d for _, d in runs]
    assert [r["seed"] for r in results] == [0, 1]
    assert all(run_status(d, c) == "done" for c, d in runs)
    again = run_many(runs[:1])  # finished: read, not trained again
    assert again[0] == results[0]


def test_run_many_refuses_a_directory_of_another_config(tmp_path):
    run_many([(tiny(0), tmp_path / "run")])
    with pytest.raises(ConfigError, match="holds a run of a different config"):
        run_many([(tiny(0, epochs=1, batch_size=64), tmp_path / "run")])
    with pytest.raises(ConfigError, match="--jobs must be at least 1"):
        run_many([], jobs=0)


def test_a_failed_run_raises_its_error_and_keeps_the_earlier_results(tmp_path):
    bad = tiny(0, optim={"lr": 1e30, "momentum": 0.0})
    with pytest.raises(ConfigError, match="training diverged"):
        run_many([(tiny(0), tmp_path / "a"), (bad, tmp_path / "b")])
    assert read_result(tmp_path / "a").finished


def test_keep_diverged_records_a_diverged_run_and_does_not_train_it_again(tmp_path):
    from chanloss.experiments.runner import DIVERGED_FILE, KeepDiverged

    bad = tiny(0, optim={"lr": 1e30, "momentum": 0.0})
    results = run_many([(tiny(0), tmp_path / "a"), (bad, tmp_path / "b")], worker=KeepDiverged())
    assert results[0].finished and "diverged" not in results[0]
    assert "training diverged" in results[1]["diverged"]
    record = tmp_path / "b" / DIVERGED_FILE
    assert json.loads(record.read_text())["error"] == results[1]["diverged"]
    stamp = record.stat().st_mtime_ns
    again = run_many([(bad, tmp_path / "b")], worker=KeepDiverged())
    assert again[0]["diverged"] == results[1]["diverged"] and record.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="holds a run of a different config"):
        run_many([(tiny(0, batch_size=64), tmp_path / "b")], worker=KeepDiverged())
