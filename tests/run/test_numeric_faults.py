"""Non-finite losses: stop at the step (naming the term, epoch and step, keeping the last good
checkpoint) or, with ``on_nonfinite: skip``, skip the step and count it in metrics.csv."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch
import torch.nn.functional as F
from tiny_config import TINY as TINY_ONE_EPOCH
from torch import Tensor

from chanloss.cli import main
from chanloss.config import load_config
from chanloss.losses import LOSSES, Loss
from chanloss.losses.registry import register_loss
from chanloss.run.checkpoint import load_checkpoint
from chanloss.run.session import train
from chanloss.run.trainer import NonFiniteLossError, Trainer

STEPS = 1437 // 128  # digits: 1,437 training images, batches of 128 -> 11 steps per epoch
TINY = {**TINY_ONE_EPOCH, "epochs": 2}


class SpikeLoss(Loss):
    """Test-only loss: ``gate * cross_entropy`` (term ``ce``) and ``spike`` (0), where at the
    global steps ``at`` the term ``which`` is multiplied by ``value`` (NaN, inf or 0)."""

    def __init__(self, *, at: list[int], value: float = math.nan, which: str = "spike") -> None:
        super().__init__(weights={"ce": 1.0, "spike": 1.0})
        self.at, self.value, self.which = set(at), value, which
        self.step = 0

    def update_schedule(self, step: int) -> None:
        self.step = step

    def compute_terms(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> dict[str, Tensor]:
        terms = {"ce": F.cross_entropy(inputs, labels), "spike": 0.0 * inputs.sum()}
        if self.step in self.at:
            terms[self.which] = terms[self.which] * self.value
        return terms


@pytest.fixture(autouse=True)
def spike_loss():
    register_loss("test_spike")(SpikeLoss)
    yield
    LOSSES.pop("test_spike")


def config(*overrides: str, **spike: object):
    raw = copy.deepcopy(TINY)
    raw["losses"] = [{"name": "test_spike", **spike}]
    return load_config(raw=raw, overrides=list(overrides))


def metrics(run) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def finite_model(state: dict) -> bool:
    return all(
        bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point()
    )


@pytest.mark.parametrize(
    ("value", "which", "shown"),
    [(math.nan, "spike", "'test_spike_spike' (nan)"), (math.inf, "ce", "'test_spike_ce' (inf)")],
)
def test_stop_names_the_term_epoch_and_step_and_keeps_the_last_checkpoint(
    tmp_path, value, which, shown
):
    run = tmp_path / "run"
    bad = STEPS + 4  # epoch 2, step 5
    with pytest.raises(NonFiniteLossError) as info:
        train(config(at=[bad], value=value, which=which), run, verbose=0)
    message = str(info.value)
    assert (
        f"the loss term {shown} was non-finite at epoch 2, step 5/{STEPS} (global step {bad + 1})"
        in message
    )
    assert f"the last good checkpoint {run / 'last.pt'} is kept" in message
    assert "on_nonfinite: skip" in message and "\n" not in message
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 1 and state["global_step"] == STEPS and finite_model(state)
    assert len(metrics(run)) == 1
    # the same weights as a clean run stopped after epoch 1
    clean = tmp_path / "clean"
    train(config(at=[]), clean, stop_after=1, verbose=0)
    reference = load_checkpoint(clean / "last.pt")
    for key, tensor in reference["model"].items():
        assert torch.equal(tensor, state["model"][key]), key


def test_stop_in_the_first_epoch_says_there_is_no_checkpoint_yet(tmp_path):
    with pytest.raises(
        NonFiniteLossError, match=r"epoch 1, step 3/11 .*no checkpoint had been written yet"
    ):
        train(config(at=[2]), tmp_path / "run", verbose=0)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_stop_from_the_command_line_is_one_line_with_status_2(tmp_path, capsys):
    import yaml

    raw = copy.deepcopy(TINY)
    raw["losses"] = [{"name": "ce"}, {"name": "test_spike", "at": [STEPS + 1]}]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(cfg), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("chanloss: error: training diverged in epoch 2")
    assert f"'test_spike_spike' (nan) was non-finite at epoch 2, step 2/{STEPS}" in err[0]


def test_device_flag_path_reports_the_first_bad_step_at_the_next_log_point(tmp_path):
    """The accelerator path (no host sync per step), run on CPU: the flag is read every 10
    steps, yet the error names the step where the NaN happened."""
    run = tmp_path / "run"
    trainer = Trainer(config(at=[STEPS + 3, STEPS + 6]), run, verbose=0)
    trainer._check_every_step = False
    seen = []
    original = trainer._raise_first_bad

    def spy(epoch):
        seen.append(trainer.global_step)
        original(epoch)

    trainer._raise_first_bad = spy
    with pytest.raises(
        NonFiniteLossError, match=rf"epoch 2, step 4/{STEPS} \(global step {STEPS + 4}\)"
    ):
        trainer.fit()
    assert seen[-1] == STEPS + 10  # detected at the log point after step 10 of epoch 2
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


def test_skip_leaves_the_weights_as_a_zero_gradient_step_and_counts_skips(tmp_path):
    """With plain SGD (no momentum, no weight decay) a skipped step and a step with zero
    gradient leave the same weights, so the two runs must agree bit for bit."""
    plain = ("optim.momentum=0.0", "optim.weight_decay=0.0", "epochs=3")
    skipped, zeroed = tmp_path / "skipped", tmp_path / "zeroed"
    bad = [1, STEPS + 2, STEPS + 7]
    summary = train(config(*plain, "on_nonfinite=skip", at=bad, which="ce"), skipped, verbose=0)
    train(config(*plain, at=bad, value=0.0, which="ce"), zeroed, verbose=0)
    assert summary["finished"]
    a, b = load_checkpoint(skipped / "last.pt"), load_checkpoint(zeroed / "last.pt")
    assert finite_model(a)
    buffers = {k for k in a["model"] if "running_" in k or "num_batches_tracked" in k}
    assert buffers
    for key in a["model"].keys() - buffers:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # the zero-gradient steps updated the batch-norm statistics, the skipped ones did not
    tracked = [k for k in buffers if "num_batches_tracked" in k]
    assert all(int(b["model"][k]) - int(a["model"][k]) == len(bad) for k in tracked)
    assert a["global_step"] == b["global_step"] == 3 * STEPS
    rows = metrics(skipped)
    assert [r["skipped_steps"] for r in rows] == ["1", "2", "0"]
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)
    assert "skipped_steps" not in metrics(zeroed)[0]  # the column exists only with skip


def test_skip_gives_up_when_a_whole_epoch_is_non_finite(tmp_path):
    with pytest.raises(NonFiniteLossError, match="every step of epoch 1 had a non-finite loss"):
        train(config("on_nonfinite=skip", at=list(range(STEPS))), tmp_path / "run", verbose=0)


def test_on_nonfinite_is_validated():
    with pytest.raises(
        ValueError, match=r"on_nonfinite: Input should be 'stop' or 'skip', got 'ignore'"
    ):
        config("on_nonfinite=ignore", at=[])


def test_skipped_steps_leave_batch_norm_statistics_and_checkpoints_finite(tmp_path):
    """A batch that drives activations to NaN (the model diverging) is skipped: every buffer
    is as before the step (else the running statistics turn NaN and reach last.pt)."""
    trainer = Trainer(config("on_nonfinite=skip", at=[]), tmp_path / "run", verbose=0)
    bad = {2, STEPS + 5}
    entry: dict[int, dict[str, torch.Tensor]] = {}

    def poison(module, args):
        step = trainer.global_step
        entry[step] = {k: v.clone() for k, v in trainer.model.named_buffers()}
        return (args[0] * math.nan,) if step in bad else None

    trainer.model.register_forward_pre_hook(poison)
    summary = trainer.fit()
    assert summary["finished"]
    assert [r["skipped_steps"] for r in metrics(tmp_path / "run")] == ["1", "1"]
    for step in bad:
        before, after = entry[step], entry[step + 1]
        for key in before:
            assert torch.equal(before[key], after[key]), (step, key)
    key = next(k for k in entry[0] if "running_mean" in k)
    assert not torch.equal(entry[0][key], entry[1][key])  # a step that is taken updates them
    assert finite_model(load_checkpoint(tmp_path / "run" / "last.pt"))


def test_a_checkpoint_with_non_finite_weights_is_not_written(tmp_path, capsys):
    """Weights that became inf in a step whose loss was finite: the save at the end of the
    epoch is refused (one line, exit 2) and the previous checkpoint stays."""
    run = tmp_path / "run"
    trainer = Trainer(config(at=[]), run, verbose=0)
    trainer.fit(stop_after=1)
    good = (run / "last.pt").read_bytes()
    weight = next(trainer.model.parameters())

    def blow_up(optimizer, args, kwargs):
        if trainer.global_step == 2 * STEPS - 1:  # the last step: its loss was finite
            with torch.no_grad():
                weight.fill_(math.inf)

    trainer.optimizer.register_step_post_hook(blow_up)
    from chanloss.run.run_dir import NonFiniteStateError

    with pytest.raises(NonFiniteStateError) as info:
        trainer.fit()
    message = str(info.value)
    assert (
        message.startswith(f"refusing to write {run / 'last.pt'}: model.") and "\n" not in message
    )
    assert "hold NaN or inf values (epoch 2); the previous last.pt is kept" in message
    assert (run / "last.pt").read_bytes() == good
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
