"""The one-line wording of a failed collective in a multi-process run."""

from __future__ import annotations

import pytest

from chanloss.cli.support import distributed_failure


@pytest.mark.parametrize(
    "message",
    [
        "Application timeout caused pair closure",  # gloo, a peer stopped mid-broadcast
        "[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1234",
        "Timed out waiting 3000ms for recv operation to complete",
        "NCCL communicator was aborted",
    ],
)
def test_a_stopped_peer_is_one_line_naming_the_timeout_key(monkeypatch, message):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    line = distributed_failure(RuntimeError(message))
    assert line is not None and line.startswith("process 0: a collective operation"), line
    assert "distributed.timeout_minutes" in line and "\n" not in line


def test_other_errors_and_single_process_runs_are_not_collective_failures(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed_failure(RuntimeError("Application timeout caused pair closure")) is None
