"""``run_study``: a study on Ray Tune, one trial per configuration and seed, recorded in MLflow.

Operation order: check everything the user passed before anything moves or starts (the Ray Tune
state ``<storage>/<study name>`` that ``--resume`` needs, the data sets, the tracking store, the
cluster address) -> set an earlier run's Ray Tune state aside (a fresh run) -> join Ray (the one
already running in this process, else ``address`` / ``$RAY_ADDRESS``, else a local one listening on
loopback only) -> open the parent run -> build the Tuner (grid:
``tune.grid_search`` over the study's trials; tpe/random: :class:`~ablate.search.sampling.StudySearcher`)
or restore it -> ``fit`` with Ray's own output silenced and the :mod:`~ablate.search.callbacks`
recording and printing progress -> end the parent run as finished, interrupted or failed (whatever
happens, including Ctrl-C) -> print a summary.

Fusing (the study's ``fuse`` above 1): one Ray trial per pack of :meth:`~ablate.study.Study.packs`,
its members trained at once by :func:`ablate.fused.train_fused` and recorded as separate child runs.

Scheduling: ``resources.cpu``/``resources.gpu`` per Ray trial (``tune.with_resources``; a gpu fraction
shares one device), ``max_concurrent`` trials at once, ASHA early stopping on the trainer's
``iteration`` when ``early_stopping`` is set (with several ``objectives``: the multi-objective ASHA of
:mod:`ablate.search.moasha`, which keeps the best 1/eta at each rung by non-dominated rank), and up to
:data:`MAX_FAILURES` restarts of a failed trial, each from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler

from ablate.errors import UserError
from ablate.metrics import Status
from ablate.paths import project_root
from ablate.search.callbacks import Progress, Recorder
from ablate.search.sampling import StudySearcher, objective_keys, study_trial_params
from ablate.search.trainable import OBJECTIVE, PACK, train_trial
from ablate.study import Study, train_iterations
from ablate.tracking.layout import default_tracking_uri
from ablate.tracking.store import check_store
from ablate.tracking.writer import StudyWriter

__all__ = ["ClusterError", "EXIT_FAILED_TRIALS", "EXIT_INTERRUPTED", "EXIT_USAGE", "MAX_FAILURES", "run_study"]

EXIT_FAILED_TRIALS = 1  # the study ran to its end but some trials failed
EXIT_USAGE = 2  # nothing to resume
EXIT_INTERRUPTED = 130  # Ctrl-C: the state is saved, `--resume` continues
MAX_FAILURES = 2  # restarts of a failed trial, each from its last checkpoint, before it counts as failed
KEEP_CHECKPOINTS = 1  # per trial: the latest is all a restart needs
STORAGE_DIR = "ray_results"  # default storage, at the project root
# environment while a study runs (see _quiet_ray)
_QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",  # a failed trial's traceback goes to its error file and MLflow, not the terminal
}
_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"  # its notice on a local start: see _connect_ray
ASHA_UNBOUNDED = 2**31  # max_t of a sampled study: above any run length, so ASHA never cuts a run at max_t


class ClusterError(UserError):
    """The Ray cluster cannot run the study: an address that is not supported or not reachable, too few CPUs."""


def run_study(
    study: Study,
    *,
    resume: bool = False,
    address: str | None = None,
    tracking_uri: str | None = None,
    storage_path: str | os.PathLike | None = None,
    confirm: Callable[[Study], None] | None = None,
) -> int:
    """Run ``study`` on Ray Tune and record it in MLflow; returns the exit status.

    0: every trial ended (finished, diverged or stopped early); 1: some trials failed; 2: ``resume``
    with nothing to resume; 130: interrupted (``resume=True`` continues without redoing ended trials).
    ``address`` (else $RAY_ADDRESS, else a local Ray) is used only when this process runs no Ray yet;
    ``storage_path`` defaults to ``<project root>/ray_results``, ``tracking_uri`` to
    :func:`ablate.tracking.layout.default_tracking_uri`. ``confirm`` is called once the inputs are checked
    (data, cluster address), before anything is written or started; it raises to stop (the CLI's wall-time
    check).

    Example::

        >>> from ablate.study import load_study
        >>> run_study(load_study("studies/quickstart.yaml", ["trainer.iterations=200"]))  # doctest: +SKIP
        0
    """
    storage = Path(storage_path).resolve() if storage_path else project_root() / STORAGE_DIR
    experiment = storage / study.name
    if resume and not tune.Tuner.can_restore(str(experiment)):
        print(
            f"ablate run: error: nothing to resume: no Ray Tune state of study {study.name!r} in {experiment}; "
            "run it without --resume, or pass the --storage-path it ran with",
            file=sys.stderr,
        )
        return EXIT_USAGE
    target = _cluster_address(address)
    _check_data(study)
    tracking_uri = tracking_uri or default_tracking_uri()
    if confirm is not None:
        check_store(tracking_uri)  # a bad store is named before the question
        confirm(study)
    writer = StudyWriter(tracking_uri)  # the store checked (TrackingError) before anything moves or starts
    if not resume:
        _set_aside(experiment)
    started_ray = _connect_ray(target)
    try:
        trainable = tune.with_resources(train_trial, _resources(study))  # checked before anything is recorded
        return _run(study, writer, trainable, experiment=experiment, resume=resume)
    finally:
        if started_ray:
            ray.shutdown()


def _run(study: Study, writer: StudyWriter, trainable, *, experiment: Path, resume: bool) -> int:
    """Parent run open -> fit -> parent run ended as finished | interrupted | failed, whatever happens."""
    writer.start_study(
        study.name, question=study.question, metric=study.metric.name, mode=study.metric.mode,
        study_yaml=study.resolved_yaml(), overrides=dict(item.partition("=")[::2] for item in study.overrides),
        outline=_outline(study), compared=[axis.key for axis in study.axes], source=str(study.origin.file),
    )
    if writer.abandoned:
        print(f"closed {len(writer.abandoned)} earlier invocation(s) of {study.name!r} whose driver had died "
              "(now recorded as interrupted)", flush=True)
    print(writer.where_to_look(), flush=True)
    recorder = Recorder(writer, expected=study.num_trials, resumed=resume)
    progress = Progress(metric=study.metric.name, mode=study.metric.mode, total=study.num_trials, restarts=MAX_FAILURES)
    callbacks = [recorder, progress]
    status = Status.FAILED
    try:
        with _quiet_ray():
            build = _restore if resume else _tuner
            tuner = build(study, trainable, experiment, callbacks)
            tuner.fit()
        status = Status.FINISHED if recorder.complete else Status.INTERRUPTED
    except KeyboardInterrupt:
        status = Status.INTERRUPTED
        raise
    finally:
        writer.end_study(status)
    return _summary(study, recorder, status, writer)


def _outline(study: Study) -> dict[str, str]:
    """The parent run's params: the study file, method, seeds, trial count and each axis's domain."""
    return {
        "study.file": str(study.origin.file),
        "search.method": study.search.method,
        "seeds": ", ".join(map(str, study.seeds)),
        "trials": str(study.num_trials),
        **{f"space.{axis.key}": axis.describe() for axis in study.axes},
        **({"objectives": ", ".join(f"{o.name} {o.mode}" for o in study.objectives)} if study.objectives else {}),
        **({"design_spaces": ", ".join(space.name for space in study.design_spaces)} if study.design_spaces else {}),
    }


# -- the Tuner ----------------------------------------------------------------------------------------


def _check_data(study: Study) -> None:
    """Load every data set the study trains on once, here, before any trial starts or anything is recorded.

    A missing or corrupt file is then one error (``DatasetError``, exit status 2) instead of every trial
    failing and being retried; a download happens once, into the cache, instead of racing in parallel
    trials. Data sets named by a sampled axis are checked by the trials themselves.
    """
    from ablate.data import load_dataset

    configs = {study.base.data} if study.sampled else {trial.config.data for trial in study.trials()}
    for data in configs:
        load_dataset(data)


def _resources(study: Study) -> dict[str, float]:
    """The study's per-trial resources, checked against the cluster: a request it can never meet would
    leave every trial pending forever. A GPU share on a cluster without GPUs is dropped with a note (the
    trainer then runs on CPU); more CPUs per trial than the cluster has is an error."""
    cluster = ray.cluster_resources()
    cpu, gpu = study.resources.cpu, study.resources.gpu
    if gpu and not cluster.get("GPU"):
        print(f"note: the study asks for {gpu:g} GPU per trial but the Ray cluster has none; "
              "running on CPU (set resources.gpu=0 to silence this)", flush=True)
        gpu = 0
    if cpu > cluster.get("CPU", 0):
        raise ClusterError(
            f"resources.cpu: each trial asks for {cpu:g} CPUs but the Ray cluster has {cluster.get('CPU', 0):g}; "
            f"use --set resources.cpu=N with N <= {cluster.get('CPU', 0):g}"
        )
    return {"cpu": cpu, "gpu": gpu}


def _tuner(study: Study, trainable, experiment: Path, callbacks: list[tune.Callback]) -> tune.Tuner:
    if study.sampled:
        param_space, num_samples = {}, study.num_trials
        search_alg = StudySearcher(study, metric=OBJECTIVE, mode=study.metric.mode)
    else:
        param_space = {"trial": tune.grid_search([study_trial_params(study, trial) for trial in study.trials()])}
        if study.fuse > 1:  # one Ray trial per pack, its members trained fused
            packs = [[study_trial_params(study, trial) for trial in pack] for pack in study.packs()]
            param_space = {PACK: tune.grid_search(packs)}
        num_samples, search_alg = 1, None
    tune_config = tune.TuneConfig(
        num_samples=num_samples, search_alg=search_alg, scheduler=_scheduler(study),
        max_concurrent_trials=study.max_concurrent, trial_dirname_creator=_trial_dirname,
    )
    run_config = tune.RunConfig(
        name=experiment.name, storage_path=str(experiment.parent), callbacks=callbacks, verbose=0,
        failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def _restore(study: Study, trainable, experiment: Path, callbacks: list[tune.Callback]) -> tune.Tuner:
    """The interrupted Tuner, continuing unfinished and errored trials from their last checkpoints."""
    _restore_deleted_checkpoints(experiment)
    tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
    # Tune brings back the RunConfig pickled by the first invocation, callbacks included, and has no
    # public way to replace them (ray-project/ray#41364): this invocation records through its own writer.
    local = getattr(tuner, "_local_tuner", None)
    if local is None:
        raise RuntimeError(f"ray {ray.__version__}: cannot attach the MLflow recorder to a restored Tuner")
    local.get_run_config().callbacks = callbacks
    return tuner


def _scheduler(study: Study) -> tune.schedulers.TrialScheduler | None:
    """ASHA on the trainer's ``iteration`` (multi-objective with several ``objectives``, ranked by the
    result keys of :func:`~ablate.search.sampling.objective_keys`); None (first in, first out) without
    ``early_stopping``."""
    if study.early_stopping is None:
        return None
    longest = ASHA_UNBOUNDED if study.sampled else max(train_iterations(t.config) for t in study.trials())
    rungs = dict(max_t=longest, grace_period=study.early_stopping.grace_period,
                 reduction_factor=study.early_stopping.reduction_factor)
    if study.objectives:
        from ablate.search.moasha import MultiObjectiveASHA  # only studies with several objectives need it

        return MultiObjectiveASHA(objectives=objective_keys(study), time_attr="iteration", **rungs)
    return ASHAScheduler(time_attr="iteration", metric=OBJECTIVE, mode=study.metric.mode, **rungs)


def _trial_dirname(trial: Trial) -> str:
    """The trial's folder under the experiment: its id (Tune's default spells out the whole config)."""
    return trial.trial_id


# -- around the run -------------------------------------------------------------------------------------


def _cluster_address(address: str | None) -> str | None:
    """The cluster to join: ``address``, else $RAY_ADDRESS, else None (a local Ray); Ray Client refused."""
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target and target.startswith("ray://"):
        raise ClusterError(
            f"address {target!r}: Ray Client addresses are not supported (this process writes the MLflow "
            "records); run `ablate run` on a node of the cluster with --address auto or HOST:PORT"
        )
    return target


def _connect_ray(target: str | None) -> bool:
    """Use the Ray this process already runs; else join ``target``; else start a local Ray on loopback only.

    A local Ray never joins a cluster that happens to run on the machine (``address="local"``), listens on
    127.0.0.1 only and keeps Ray's token authentication, without Ray's notice about it. Returns whether
    Ray was started here (and is to be shut down after).
    """
    if ray.is_initialized():
        return False
    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if target is None:
        notice = logging.getLogger(_AUTH_LOGGER)
        notice.addFilter(_no_token_notice)
        try:
            with _loopback_only():
                ray.init(address="local", **options)
        finally:
            notice.removeFilter(_no_token_notice)
        return True
    try:
        ray.init(address=target, **options)
    except ConnectionError as err:
        raise ClusterError(f"address {target!r}: no Ray cluster answered ({err}); start one with `ray start --head` "
                           "or leave out --address and RAY_ADDRESS for a local Ray") from None
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    cpus = ray.cluster_resources().get("CPU", 0)
    print(f"joined the Ray cluster at {target}: {len(nodes)} node(s), {cpus:g} CPUs", flush=True)
    return True


def _no_token_notice(record: logging.LogRecord) -> bool:
    """Drops Ray's "Token authentication is enabled ... Set RAY_AUTH_MODE=disabled to opt out" notice.

    A local Ray keeps token authentication (on by default); the notice asks nothing of the user. Setting
    RAY_AUTH_MODE=token instead would not do: Ray reads it once, at import.
    """
    return "Token authentication is enabled" not in record.getMessage()


@contextmanager
def _loopback_only() -> Iterator[None]:
    """Ray's node IP resolved to 127.0.0.1 while a local Ray starts, so that all its servers bind to loopback.

    ``ray.init(_node_ip_address="127.0.0.1")`` is turned back into the machine's address by Ray; Ray's
    own rule for machines without cluster support (macOS, Windows) is to use loopback, and that rule is
    what is switched on here, for the start only.
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _set_aside(experiment: Path) -> None:
    """A fresh run starts from an empty folder: an earlier run's Ray Tune state is renamed, not deleted."""
    if not experiment.exists():
        return
    kept = experiment.with_name(f"{experiment.name}.{time.strftime('%Y%m%d-%H%M%S')}")
    experiment.rename(kept)
    print(f"an earlier run of {experiment.name!r} left Ray Tune state; moved it to {kept} "
          "(`ablate run --resume` continues a run instead)", flush=True)


@contextmanager
def _quiet_ray() -> Iterator[None]:
    """Ray's and Optuna's own terminal output off while the study runs; the progress line replaces it.

    ``verbose=0`` is honoured by Tune's legacy output engine (the new one prints its configuration table
    even when silent), selected by ``RAY_AIR_NEW_OUTPUT=0``; Tune's warning about frequent experiment
    snapshots (forced by ``num_to_keep`` at every checkpoint of short trials) is off; Tune's INFO lines and
    Optuna's per-trial lines go below WARNING; a failed trial's traceback is not printed (the Progress line
    says what happened; the error goes to the trial's error file and MLflow); Tune's own "Tuner.restore(...)"
    hint after a Ctrl-C is dropped (the summary says how to continue). Everything is put back afterwards.
    """
    saved_env = {key: os.environ.get(key) for key in _QUIET_ENV}
    tune_logger = logging.getLogger("ray.tune")
    tune_level, optuna_level = tune_logger.level, optuna.logging.get_verbosity()
    restore_hint = logging.getLogger("ray.tune.tune")
    os.environ.update(_QUIET_ENV)
    tune_logger.setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    restore_hint.addFilter(_no_restore_hint)
    try:
        yield
    finally:
        restore_hint.removeFilter(_no_restore_hint)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        tune_logger.setLevel(tune_level)
        optuna.logging.set_verbosity(optuna_level)


def _restore_deleted_checkpoints(experiment: Path) -> None:
    """Put back a checkpoint that Tune's saved state names but Tune itself deleted, from the trial's newest.

    With ``num_to_keep``, Tune deletes a trial's previous checkpoint as soon as it registers the next one,
    and only then saves the experiment state that names the new one: a driver killed in between leaves a
    state naming a checkpoint that is gone, and every restore of that trial fails ("Could not recover
    from checkpoint as it does not exist on storage anymore"), on every ``--resume``. The trial's newest
    checkpoint (the one registered just before the kill) is copied under the missing name; the trainable
    resumes from the position stored inside it, and Tune deletes the copy at the trial's next checkpoint.

    Reads the JSON fields of Tune's newest state file only (no unpickling): per trial its status, its
    directory and the checkpoint of its last result, which every report of ours carries (a diverged one
    ends the trial). Names that are not a trial directory and a ``checkpoint_N`` inside it are ignored.
    """
    states = sorted(experiment.glob("experiment_state-*.json"))  # Tune restores from the newest
    if not states:
        return
    try:
        trials = [(json.loads(trial), json.loads(metadata))
                  for trial, metadata in json.loads(states[-1].read_text())["trial_data"]]
        named = [(trial["relative_logdir"], (metadata.get("last_result") or {}).get("checkpoint_dir_name"))
                 for trial, metadata in trials if trial.get("status") != Trial.TERMINATED]
    except (ValueError, KeyError, TypeError) as error:  # Tune's own restore reports a state it cannot read
        print(f"note: could not check the trials' checkpoints before resuming ({type(error).__name__}: {error})",
              flush=True)
        return
    for trial_dir, name in named:
        if not (isinstance(trial_dir, str) and isinstance(name, str) and re.fullmatch(r"[\w.-]+", trial_dir)
                and trial_dir not in (".", "..") and re.fullmatch(r"checkpoint_\d+", name)):
            continue
        missing = experiment / trial_dir / name
        kept = sorted(missing.parent.glob("checkpoint_*"))
        if not missing.exists() and kept:
            shutil.copytree(kept[-1], missing)
            print(f"{trial_dir}: its checkpoint {name} was deleted by Tune before a kill could save the state "
                  f"naming {kept[-1].name}; resuming from {kept[-1].name}", flush=True)


def _no_restore_hint(record: logging.LogRecord) -> bool:
    """Drops Tune's "Resume experiment with: Tuner.restore(...)" warning."""
    return "Tuner.restore(" not in record.getMessage()


def _summary(study: Study, recorder: Recorder, status: str, writer: StudyWriter) -> int:
    """Print how the invocation ended and where the records are; returns the exit status."""
    counts = Counter(recorder.ended.values())
    ended = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"
    before = f", {recorder.done_before} ended in earlier runs" if recorder.done_before else ""
    print(f"study {study.name}: {status}; trials of this run: {ended}{before} (of {study.num_trials})")
    print(f"records: MLflow experiment {study.name!r} at {writer.tracking_uri}")
    print(writer.where_to_look())
    if status == Status.INTERRUPTED:
        sets = "".join(f" --set {item}" for item in study.overrides)
        print(f"continue with: ablate run {study.origin.file}{sets} --resume")
        return EXIT_INTERRUPTED
    return EXIT_FAILED_TRIALS if counts[Status.FAILED] else 0
