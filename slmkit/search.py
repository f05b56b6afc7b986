"""`slm run --search N`: an Optuna study over students, whose best trials join the ladder as candidates.

A trial is a ladder entry drawn from the search space (`SearchConfig`): the student's kind and dimensions, the
distillation temperature and KD/CE weights, the learning rate, the epochs and the augmentation size, written as
an ordinary `--student` entry (`trial_entry`), e.g.

    cnn:filters=128,embed=64 lr=0.00123 epochs=4 augment=2 temperature=3.1 kd=0.7 ce=0.3

It runs through the pipeline's own stages — `pipeline.student_stages` (distill → ONNX export → int8) and a
one-model `pipeline.bench_stage` on the eval split — in the run's stage cache (`stages/<stage>-trial-<n>-<key>`).
Two objectives, both measured on the int8 model: eval accuracy (maximize) and batch-1 p50 latency on this CPU
(minimize); the size budget is a constraint (bytes on disk over the budget, `selection.violations`), so the
Pareto front (`study.best_trials`) holds feasible trials only. The test split is never looked at: the run's
final benchmark measures the Pareto trials on it beside the ladder, and `selection.select` picks among them all.

Pruning: Optuna's pruners need `Trial.report`, which Optuna 5 refuses for multi-objective studies
(NotImplementedError). So the rule is ours (`should_prune`): after an epoch that is not the trial's last, a
student whose eval accuracy is more than `prune_drop` points below the teacher's is stopped (a pruned trial);
distill's staging directory is removed, so the cache holds no partial stage.

Storage: any SQLAlchemy URL; by default `sqlite:///<out>/search.db`. Workers on several machines share one study
by pointing at one storage (`--storage postgresql://...`); `work` runs trials until the study holds `trials`
finished ones, counting every worker's, so a rerun of a finished search runs none and an interrupted one goes on.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from slmkit.config import SearchConfig
from slmkit.errors import UserError

if TYPE_CHECKING:
    import optuna

DEFAULT_DB = "search.db"  # in the run directory
DIRECTIONS = ("maximize", "minimize")  # eval accuracy, batch-1 p50 latency (ms)
# log-uniform learning-rate ranges per kind: drop students start from the teacher's layers (fine-tuning rates, the
# ladder's 1e-4), the others from PCA-projected embeddings (the ladder's 1e-3; CNNs and BiLSTMs take more)
LR_RANGES = {"drop": (2e-5, 3e-4), "transformer": (2e-4, 3e-3), "cnn": (3e-4, 1e-2), "bilstm": (3e-4, 1e-2)}
TEMPERATURE_RANGE = (1.0, 8.0)  # log-uniform KD temperature
KD_RANGE = (0.1, 1.0)  # weight of the KD term; the CE term gets 1 - kd
SQLITE_TIMEOUT_S = 60  # how long a worker waits for another's SQLite write lock before failing
HEARTBEAT_S = 60  # a running trial's heartbeat; one silent for GRACE_S (a killed worker's) is marked failed
GRACE_S = 180
CREATE_TRIES = 5  # workers that set up a new storage at once: the losers of the race retry
FINISHED = ("COMPLETE", "PRUNED")  # trial states that count towards --search N
INSTALL_HINT = "optuna is needed for --search: pip install 'slmkit[search]'"


class TrialFailed(Exception):
    """A trial's stage failed with an error that is not the user's (a bug, or a student the exporter cannot
    handle): the trial is recorded as failed with the reason and the search goes on."""


# ------------------------------------------------------------------------------------------ the space


def suggest(trial: "optuna.Trial", space: SearchConfig) -> dict:
    """Draw one point of the search space; parameter names are prefixed by kind where they depend on it."""
    kind = trial.suggest_categorical("kind", list(space.kinds))
    params: dict[str, Any] = {"kind": kind}
    if kind == "cnn":
        params["cnn_filters"] = trial.suggest_categorical("cnn_filters", list(space.widths))
        params["cnn_embed"] = trial.suggest_categorical("cnn_embed", list(space.embeds))
    elif kind == "bilstm":
        params["bilstm_hidden"] = trial.suggest_categorical("bilstm_hidden", list(space.widths))
        params["bilstm_embed"] = trial.suggest_categorical("bilstm_embed", list(space.embeds))
    elif kind == "transformer":
        params["transformer_layers"] = trial.suggest_categorical("transformer_layers", list(space.layers))
        params["transformer_hidden"] = trial.suggest_categorical("transformer_hidden", list(space.widths))
    else:  # drop: every k-th of the teacher's layers, counted from the top
        params["drop_every"] = trial.suggest_int("drop_every", 2, 3)
    params["lr"] = trial.suggest_float("lr", *LR_RANGES[kind], log=True)
    params["epochs"] = trial.suggest_int("epochs", 1, space.max_epochs)
    params["augment"] = trial.suggest_int("augment", 0, space.max_augment)
    params["temperature"] = trial.suggest_float("temperature", *TEMPERATURE_RANGE, log=True)
    params["kd"] = trial.suggest_float("kd", *KD_RANGE)
    return params


def trial_entry(params: dict) -> str:
    """A trial's parameters as a ladder entry (a `--student` value: reproducible by hand).

    Floats keep 3 significant digits: the entry, not the raw draw, is what is trained and what the stage keys hash.
    Transformer students get heads = hidden // 64 (at least 1) and ffn = 4 × hidden, BERT's proportions."""
    kind = params["kind"]
    if kind == "cnn":
        spec = f"cnn:filters={params['cnn_filters']},embed={params['cnn_embed']}"
    elif kind == "bilstm":
        spec = f"bilstm:hidden={params['bilstm_hidden']},embed={params['bilstm_embed']}"
    elif kind == "transformer":
        hidden = params["transformer_hidden"]
        heads = max(1, hidden // 64)
        while hidden % heads:
            heads -= 1
        spec = f"transformer:layers={params['transformer_layers']},hidden={hidden},heads={heads},ffn={4 * hidden}"
    elif kind == "drop":
        spec = f"drop:every={params['drop_every']}"
    else:
        raise ValueError(f"unknown student kind {kind!r}")
    kd = float(f"{params['kd']:.3g}")
    ce = float(f"{1 - kd:.3g}")
    return (f"{spec} lr={params['lr']:.3g} epochs={params['epochs']} augment={params['augment']} "
            f"temperature={params['temperature']:.3g} kd={kd:g} ce={ce:g}")


def should_prune(epoch: int, epochs: int, accuracy: float, teacher_accuracy: float, prune_drop: float | None) -> bool:
    """Stop a trial after `epoch` (of `epochs`) when its eval accuracy is more than `prune_drop` points below the
    teacher's. Never after the last epoch: the trial's work is done, and its measurement is worth keeping."""
    if prune_drop is None or epoch >= epochs:
        return False
    return 100 * (teacher_accuracy - accuracy) > prune_drop


# ------------------------------------------------------------------------------------------ storage


def storage_url(space: SearchConfig, out: Path) -> str:
    """The study's storage: --storage, or SQLite in the run directory."""
    return space.storage or f"sqlite:///{(out / DEFAULT_DB).resolve()}"


def shown_url(url: str) -> str:
    """The URL with its password hidden (it goes into run.json, the report and error messages)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_storage(url: str) -> "optuna.storages.RDBStorage":
    """Connect to (and, when new, set up) the study storage, or one line naming --storage and the fix."""
    try:
        import optuna
        import sqlalchemy.exc
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    try:
        for attempt in range(CREATE_TRIES):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat options
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as e:
                # another worker set up the new storage's tables at the same moment: they exist now
                racing = isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in str(e)
                if not racing or attempt == CREATE_TRIES - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except (ImportError, ValueError, OSError, sqlalchemy.exc.SQLAlchemyError) as e:
        cause = e.__cause__ if isinstance(e, ImportError) and e.__cause__ else e  # optuna rewraps a missing driver
        reason = " ".join(str(cause).split("\n")[0].split())[:200] or type(cause).__name__
        raise UserError(
            f"--storage {shown_url(url)!r}: cannot open the study storage ({reason}): pass a SQLAlchemy URL that this machine "
            "can reach and write, such as sqlite:///runs/project/search.db or postgresql://user:password@host/db (with its driver "
            "installed), or leave out --storage for SQLite in the run directory"
        ) from None


def open_study(storage: "optuna.storages.RDBStorage", name: str, seed: int | None = None) -> "optuna.Study":
    """The study `name` in `storage`, created on first use; every worker of a run opens the same one."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the pipeline prints its own line per trial, failures included
    # TPE handles the conditional space (each kind has its own dimensions) and reads each trial's constraint
    # (Trial.set_constraint: Optuna 5 deprecates the sampler's constraints_func for it). Unseeded by default:
    # concurrent workers must not draw the same trials.
    sampler = optuna.samplers.TPESampler(seed=seed)
    try:
        return optuna.create_study(storage=storage, study_name=name, directions=list(DIRECTIONS), sampler=sampler, load_if_exists=True)
    except ValueError as e:  # a study of that name with other directions
        raise UserError(f"search.study_name {name!r}: {e}: choose another --set search.study_name") from None


def finished(study: "optuna.Study") -> list["optuna.trial.FrozenTrial"]:
    import optuna

    return study.get_trials(deepcopy=False, states=tuple(getattr(optuna.trial.TrialState, s) for s in FINISHED))


def work(study: "optuna.Study", objective: Callable[["optuna.Trial"], tuple[float, float]], trials: int, timeout: float | None = None) -> int:
    """The worker: run trials until the study holds `trials` finished ones (every worker's count), or `timeout`
    seconds pass; returns how many this call ran. Concurrent workers may each finish one trial past the count.
    At most as many trials as were missing are tried: failed ones (`TrialFailed`) leave the study short."""
    import optuna

    remaining = trials - len(finished(study))
    if remaining <= 0:
        return 0
    ran = 0

    def counted(trial: "optuna.Trial") -> tuple[float, float]:
        nonlocal ran
        ran += 1
        return objective(trial)

    states = tuple(getattr(optuna.trial.TrialState, s) for s in FINISHED)
    # n_trials bounds this worker; the callback stops it once the others have brought the study to `trials`
    # a failed trial (TrialFailed) does not count: a rerun replaces it; any other error (bad input) stops the search
    study.optimize(counted, n_trials=remaining, timeout=timeout, callbacks=[optuna.study.MaxTrialsCallback(trials, states=states)], catch=(TrialFailed,))
    return ran


# ------------------------------------------------------------------------------------------ results


@dataclass
class SearchResult:
    study_name: str
    storage: str  # the URL, password hidden
    counts: dict[str, int]  # trials by state: complete, pruned, fail, running, waiting
    ran: int  # trials this worker ran
    pareto: list[dict]  # the Pareto front, by eval accuracy: number, name, entry, accuracy, latency_ms, bytes, parameters, dirs

    def to_dict(self) -> dict:
        return {"study": self.study_name, "storage": self.storage, "trials": self.counts, "pareto": self.pareto}


def summarize(study: "optuna.Study", storage: str, ran: int) -> SearchResult:
    """The study's trial counts and its Pareto front (feasible trials only), most accurate first."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    front = sorted(study.best_trials, key=lambda t: (-t.values[0], t.values[1], t.number))
    pareto = [
        {"number": t.number, "name": t.user_attrs["name"], "entry": t.user_attrs["entry"], "accuracy": t.values[0], "latency_ms": t.values[1],
         "bytes": t.user_attrs["bytes"], "parameters": t.user_attrs.get("parameters")}
        for t in front
    ]
    return SearchResult(study.study_name, storage, counts, ran, pareto)


def trial_figures(results: dict) -> dict:
    """A one-model bench on the eval split (the trial's int8 model) as the trial's measurements."""
    threads = results["timing"]["pareto_threads"]
    entry = next(e for e in results["entries"] if e["kind"] == "model")
    if entry["status"] != "ok":
        raise RuntimeError(f"the trial's benchmark failed: {entry.get('error')}")
    return {"accuracy": entry["metrics"]["accuracy"], "latency_ms": entry["speed"][threads]["p50_ms"]["median"], "bytes": entry["bytes"],
            "parameters": entry["parameters"]}
