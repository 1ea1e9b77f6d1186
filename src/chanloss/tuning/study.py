"""Opening a study: the storage checked against the config, the first trials queued, the trials
of killed processes rerun."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chanloss.config import ConfigError, TrainConfig
from chanloss.config.search import Dimension, low_end_params, start_params
from chanloss.core.masking import mask_secrets
from chanloss.core.text import pid_alive
from chanloss.tuning.common import SearchFacts
from chanloss.tuning.output import search_stuck_text
from chanloss.tuning.pruners import make_pruner, seed_noise_by_epoch
from chanloss.tuning.stats import (
    STUCK_POINTS,
    noise_text,
    pooled_seed_std,
    stuck_flags,
    without_stuck,
)
from chanloss.tuning.storage import (
    STUDY_NAME,
    fingerprint,
    identity,
    open_storage,
    resolved_identity,
)

__all__ = [
    "NOISE_ORIGIN",
    "THIRD_ORIGIN",
    "NoiseWatch",
    "StudyPlace",
    "counts",
    "durations",
    "open_study",
    "recover",
    "search_facts",
    "search_stuck",
    "seed_groups",
    "set_study_attr",
    "settings",
]

NOISE_ORIGIN = "config, noise seed"
THIRD_ORIGIN = "config, third seed"  # when the two seeds disagree by a stuck run's gap


@dataclass(frozen=True)
class StudyPlace:
    """Where a tune's study lives: ``spec`` (the storage URL), ``shown_spec`` (the same without
    a password: what is printed and stored), ``out_dir`` (its ``study.db`` when ``local``) and
    whether this invocation continues it (``resume``)."""

    spec: str
    shown_spec: str
    out_dir: Path
    local: bool
    resume: bool


def open_study(
    place: StudyPlace,
    config: TrainConfig,
    dims: list[Dimension],
    fixed: dict[tuple[str | int, ...], Any],
    *,
    trials: int | None,
    pruner: str,
    noise_seed: int,
    log: Callable[[str], None],
) -> Any:
    """The study of ``config`` in its storage (``place``): checked against the config (a
    storage holding a study of another config is refused), created with the config as written
    (on its seed and on ``noise_seed``) and the losses almost off as its first trials, and
    with the trials of killed processes queued again. ``trials``: the --trials target (the
    sampler's start-up trials), ``pruner``: its name."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _check_place(place)
    storage = open_storage(place.spec)
    try:
        names = optuna.study.get_all_study_names(storage)
    except Exception as err:
        raise ConfigError(mask_secrets(f"--storage {place.spec}: cannot read it ({err})")) from None
    if place.resume and STUDY_NAME not in names:
        raise ConfigError(f"--resume: the storage {place.shown_spec} holds no chanloss study")
    ident = identity(config, dims, fixed)
    existing = optuna.study.get_all_study_summaries(storage) if names else []
    known = {s.study_name: s for s in existing}
    if STUDY_NAME in known:
        _check_identity(known[STUDY_NAME].user_attrs, ident, place.shown_spec)
    previous = known[STUDY_NAME].n_trials if STUDY_NAME in known else 0
    sampler = optuna.samplers.TPESampler(
        seed=config.seed + previous,
        n_startup_trials=max(3, min(10, (trials or 30) // 3)),
        constant_liar=True,
    )
    study = optuna.create_study(
        storage=storage,
        study_name=STUDY_NAME,
        direction="maximize",
        sampler=sampler,
        pruner=make_pruner(pruner, config.epochs),
        load_if_exists=True,
    )
    if "chanloss_fingerprint" not in study.user_attrs:
        study.set_user_attr("chanloss_fingerprint", fingerprint(ident))
        study.set_user_attr("chanloss_identity", ident)
    first = start_params(config, dims)
    starts = [("config", first, config.seed), (NOISE_ORIGIN, first, noise_seed)]
    low = low_end_params(config, dims)
    if low != first:
        starts.append(("losses off", low, config.seed))
    _queue_missing(study, starts)
    recover(study, log)
    return study


def _check_place(place: StudyPlace) -> None:
    """A local study.db is continued with --resume only, and --resume needs one."""
    db = place.out_dir / "study.db"
    if place.local and db.exists() and not place.resume:
        raise ConfigError(
            f"{place.out_dir} already holds a study (study.db); add --resume to continue it "
            "or choose another --out"
        )
    if place.local and place.resume and not db.exists():
        raise ConfigError(
            f"--resume: {place.out_dir} holds no study (study.db); run without --resume to "
            "start one"
        )


def _check_identity(attrs: dict[str, Any], ident: dict[str, Any], shown_spec: str) -> None:
    """A stored study of another config (``attrs``: its user attributes) is refused."""
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
            f"the storage {shown_spec} holds a study of a different config (differs in "
            f"{', '.join(keys) or 'its identity'}); use the same config, or another "
            "--out/--storage"
        )


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


def settings(study: Any) -> list[dict[str, Any]]:
    """The complete settings (params) with their trials and scores, best mean score first."""
    from optuna.trial import TrialState

    by: dict[str, dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        key = json.dumps(t.params, sort_keys=True)
        entry = by.setdefault(key, {"params": t.params, "trials": [], "scores": []})
        entry["trials"].append(t.number)
        entry["scores"].append(t.value)
    rows = [{**e, "search_score": sum(e["scores"]) / len(e["scores"])} for e in by.values()]
    return sorted(rows, key=lambda e: -e["search_score"])


def counts(study: Any) -> dict[str, int]:
    """The number of trials in each state (``COMPLETE``, ``PRUNED``, ``RUNNING``, ...)."""
    out = {s: 0 for s in ("COMPLETE", "PRUNED", "RUNNING", "FAIL", "WAITING")}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def durations(study: Any) -> list[float]:
    """The seconds of the complete trials (what the reserve and the ETA are made of)."""
    from optuna.trial import TrialState

    return [
        t.user_attrs["time_s"]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "time_s" in t.user_attrs
    ]


def pruned_early(study: Any, epochs: int) -> tuple[int, int]:
    """The finished trials pruned before half of ``epochs``, and the finished trials."""
    from optuna.trial import TrialState

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    early = sum(
        t.state == TrialState.PRUNED and t.user_attrs.get("epochs", 0) < epochs / 2
        for t in finished
    )
    return early, len(finished)


@dataclass
class NoiseWatch:
    """The seed noise of the score, kept in the study as the search goes: ``first`` (the
    config's params as written), ``third_seed`` (the seed queued when its two seeds disagree)
    and ``said`` (the stuck trials already logged)."""

    first: dict[str, Any]
    third_seed: int
    log: Callable[[str], None]
    said: set[int] = field(default_factory=set)

    def update(self, study: Any) -> None:
        """The seed noise of the score, from the settings trained on several seeds without
        their stuck runs, kept in the study (``noise_std``: the pruner reads it); stuck trials
        said once; a third seed of the config queued when its two seeds lie a stuck run's gap
        apart (with two, neither can be told stuck)."""
        for record in search_stuck(study):
            if record["trial"] not in self.said:
                self.said.add(record["trial"])
                self.log(f"stuck: {search_stuck_text(record)}; left out of the noise")
        groups = seed_groups(study)
        std, dof = pooled_seed_std(without_stuck(list(groups.values())))
        if dof and (study.user_attrs.get("noise_dof"), study.user_attrs.get("noise_std")) != (
            dof,
            std,
        ):
            set_study_attr(study, "noise_std", std)
            set_study_attr(study, "noise_dof", dof)
            self.log(
                f"noise: on this split, the seed standard deviation of a trial's score is "
                f"{noise_text(std, dof)}; differences below ±{200 * std:.2f} points are noise"
            )
        self._third_seed(study, groups)

    def _third_seed(self, study: Any, groups: dict[str, list[float]]) -> None:
        first = json.dumps(self.first, sort_keys=True)
        twins = groups.get(first, [])
        origins = {t.user_attrs.get("origin") for t in study.get_trials(deepcopy=False)}
        if (
            len(twins) == 2
            and abs(twins[0] - twins[1]) >= STUCK_POINTS
            and THIRD_ORIGIN not in origins
        ):
            study.enqueue_trial(json.loads(first), user_attrs={"origin": THIRD_ORIGIN,
                                                               "seed": self.third_seed})  # fmt: skip
            self.log(
                f"noise: the config's two seeds lie {100 * abs(twins[0] - twins[1]):.1f} points "
                f"apart; a third seed ({self.third_seed}) is queued to tell a stuck run from noise"
            )


def search_facts(study: Any, epochs: int) -> SearchFacts:
    """:class:`SearchFacts` of ``study`` (a search of ``epochs`` epochs per trial)."""
    from optuna.trial import TrialState

    early, finished = pruned_early(study, epochs)
    noise, dof = pooled_seed_std(without_stuck(list(seed_groups(study).values())))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return SearchFacts(counts=counts(study), stuck=search_stuck(study), early=early,
                       finished=finished, settings=settings(study), noise_std=noise, dof=dof,
                       num_classes=study.user_attrs.get("num_classes", 1),
                       by_epoch=seed_noise_by_epoch(complete),
                       durations=durations(study))  # fmt: skip
