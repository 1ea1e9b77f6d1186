"""Opening a study: the storage checked against the config, the first trials queued, the trials
of killed processes rerun."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chanloss.config import ConfigError
from chanloss.config.search import low_end_params, start_params
from chanloss.core.masking import mask_secrets
from chanloss.core.text import pid_alive
from chanloss.tuning.pruners import make_pruner
from chanloss.tuning.storage import (
    STUDY_NAME,
    fingerprint,
    identity,
    open_storage,
    resolved_identity,
)

if TYPE_CHECKING:
    from chanloss.tuning.tuner import Tuner

__all__ = [
    "NOISE_ORIGIN",
    "THIRD_ORIGIN",
    "open_study",
    "recover",
    "search_stuck",
    "seed_groups",
    "set_study_attr",
]

NOISE_ORIGIN = "config, noise seed"
THIRD_ORIGIN = "config, third seed"  # when the two seeds disagree by a stuck run's gap


def open_study(tuner: Tuner) -> Any:
    """The study of ``tuner`` in its storage: checked against the config (a storage holding a
    study of another config is refused), created with the config as written and the losses
    almost off as its first trials, and with the trials of killed processes queued again."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    local = tuner.storage is None
    db = tuner.out_dir / "study.db"
    if local and db.exists() and not tuner.resume:
        raise ConfigError(
            f"{tuner.out_dir} already holds a study (study.db); add --resume to continue it "
            "or choose another --out"
        )
    if local and tuner.resume and not db.exists():
        raise ConfigError(
            f"--resume: {tuner.out_dir} holds no study (study.db); run without --resume to "
            "start one"
        )
    storage = open_storage(tuner.spec)
    try:
        names = optuna.study.get_all_study_names(storage)
    except Exception as err:
        raise ConfigError(mask_secrets(f"--storage {tuner.spec}: cannot read it ({err})")) from None
    if tuner.resume and STUDY_NAME not in names:
        raise ConfigError(f"--resume: the storage {tuner.shown_spec} holds no chanloss study")
    ident = identity(tuner.config, tuner.dims, tuner.fixed)
    existing = optuna.study.get_all_study_summaries(storage) if names else []
    known = {s.study_name: s for s in existing}
    if STUDY_NAME in known:
        attrs = known[STUDY_NAME].user_attrs
        if attrs.get("chanloss_fingerprint") not in (None, fingerprint(ident)):
            stored = resolved_identity(attrs.get("chanloss_identity", {}))
        else:
            stored = ident
        if stored != ident:
            keys = sorted(
                k
                for k in set(stored.get("config", {})) | set(ident["config"])
                if stored.get("config", {}).get(k) != ident["config"].get(k)
            )
            if stored.get("space") != ident["space"] or stored.get("fixed") != ident["fixed"]:
                keys.append("search space")
            raise ConfigError(
                f"the storage {tuner.shown_spec} holds a study of a different config (differs in "
                f"{', '.join(keys) or 'its identity'}); use the same config, or another "
                "--out/--storage"
            )
    previous = known[STUDY_NAME].n_trials if STUDY_NAME in known else 0
    sampler = optuna.samplers.TPESampler(
        seed=tuner.config.seed + previous,
        n_startup_trials=max(3, min(10, (tuner.trials or 30) // 3)),
        constant_liar=True,
    )
    study = optuna.create_study(
        storage=storage,
        study_name=STUDY_NAME,
        direction="maximize",
        sampler=sampler,
        pruner=make_pruner(tuner.pruner, tuner.config.epochs),
        load_if_exists=True,
    )
    if "chanloss_fingerprint" not in study.user_attrs:
        study.set_user_attr("chanloss_fingerprint", fingerprint(ident))
        study.set_user_attr("chanloss_identity", ident)
    first = start_params(tuner.config, tuner.dims)
    seed = tuner.config.seed
    starts = [("config", first, seed), (NOISE_ORIGIN, first, tuner.noise_seed)]
    low = low_end_params(tuner.config, tuner.dims)
    if low != first:
        starts.append(("losses off", low, seed))
    _queue_missing(study, starts)
    recover(study, tuner.log)
    return study


def _queue_missing(study: Any, starts: list[tuple[str, dict[str, Any], int]]) -> None:
    """Queue each first trial (origin, params, seed) that no trial of the study holds finished,
    running or queued: on a new study all of them; on ``--resume`` those that failed (a full
    disk during the first trials), so that the seed noise is measured however the last
    invocation ended. A setting on a seed is one trial: the config and its noise seed are
    two (same params, another seed)."""
    from optuna.trial import TrialState

    alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    held = {
        (json.dumps(t.params or t.system_attrs.get("fixed_params", {}), sort_keys=True),
         t.user_attrs.get("seed"))
        for t in study.get_trials(deepcopy=False, states=alive)
    }  # fmt: skip
    for origin, params, seed in starts:
        key = (json.dumps(params, sort_keys=True), seed)
        if key not in held:
            study.enqueue_trial(params, user_attrs={"origin": origin, "seed": seed})
            held.add(key)


def recover(study: Any, log: Callable[[str], None]) -> None:
    """Trials left running by a killed process of this machine: failed, and queued again."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or not isinstance(pid, int) or pid_alive(pid):
            continue
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        attrs = {"origin": f"rerun of trial {t.number}", "seed": t.user_attrs.get("seed")}
        study.enqueue_trial(t.params, user_attrs=attrs)
        log(f"trial {t.number} was cut short by an earlier run; queued again")


def set_study_attr(study: Any, key: str, value: Any) -> None:
    """``study.set_user_attr`` that survives another worker writing the same key at the same
    moment (a unique-key race in the storage: the later write wins on the retry)."""
    for attempt in range(3):
        try:
            study.set_user_attr(key, value)
            return
        except Exception:  # noqa: BLE001 - the storage's IntegrityError, whatever the backend
            if attempt == 2:
                raise
            time.sleep(0.1 * (attempt + 1))


def seed_groups(study: Any) -> dict[str, list[float]]:
    """The scores of the complete trials, grouped by setting (the same params on several
    seeds: the config as written trained twice, trials rerun after a kill)."""
    from optuna.trial import TrialState

    groups: dict[str, dict[int, float]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        key = json.dumps(t.params, sort_keys=True)
        groups.setdefault(key, {})[int(t.user_attrs.get("seed", -1))] = t.value
    return {k: list(v.values()) for k, v in groups.items()}


def search_stuck(study: Any) -> list[dict[str, Any]]:
    """The complete trials far below the same setting on its other seeds
    (:func:`~chanloss.tuning.stats.stuck_flags`; a setting needs three seeds): ``trial``,
    ``seed``, ``score``, ``others`` (the lowest and highest of the other seeds' scores)."""
    from optuna.trial import TrialState

    from chanloss.tuning.stats import stuck_flags

    groups: dict[str, list[Any]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        groups.setdefault(json.dumps(t.params, sort_keys=True), []).append(t)
    records = []
    for trials in groups.values():
        values = [t.value for t in trials]
        for i, flagged in enumerate(stuck_flags(values)):
            if flagged:
                others = values[:i] + values[i + 1 :]
                records.append({"trial": trials[i].number, "seed": trials[i].user_attrs.get("seed"),
                                "score": values[i], "others": [min(others), max(others)]})  # fmt: skip
    return sorted(records, key=lambda r: r["trial"])


def search_stuck_text(record: dict[str, Any]) -> str:
    """``trial 1, seed 1: stuck at 57.0 % while the same setting on other seeds reached ...``."""
    lo, hi = record["others"]
    return (f"trial {record['trial']}, seed {record['seed']}: stuck at {100 * record['score']:.1f} % "
            f"while the same setting on other seeds reached {100 * lo:.1f}-{100 * hi:.1f} %")  # fmt: skip
