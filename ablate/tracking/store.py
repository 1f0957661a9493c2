"""Opening the tracking store safely, and closing the records of drivers that died.

:func:`open_store` is how the writer and the readers reach MLflow: it checks the store before anything
else happens (a URI MLflow cannot use, a SQLite file that is not a database, a server that does not
answer) and turns each failure into one :class:`TrackingError`. A fresh SQLite store is created under
a file lock (``<file>-lock``), because MLflow creates its tables without one and two ``ablate run``
starting at the same moment would otherwise both try ("table ... already exists").

A driver that is killed (kill -9, a lost machine) cannot end its parent run, which would then stay
RUNNING for ever. Every run the writer opens or reopens therefore carries ``layout.TAG_DRIVER``
(``host:pid:start`` of the driver); the next ``ablate run`` of the study and ``ablate studies`` call
:func:`close_abandoned_runs`, which ends a RUNNING run as interrupted (MLflow KILLED) once its driver
is gone: same host, and no process with that pid and start time. Runs of a driver on another host
are left alone (they are closed when the study is next run or listed on that host).

Example::

    >>> client = open_store("sqlite:///mlflow.db")        # doctest: +SKIP
    >>> open_store("http://127.0.0.1:1")                  # doctest: +SKIP
    TrackingError: tracking store http://127.0.0.1:1: no answer (Connection refused); ...
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from mlflow import MlflowClient

from ablate.errors import UserError
from ablate.metrics import Status
from ablate.tracking import layout

__all__ = ["PROBE_RETRIES", "PROBE_TIMEOUT_S", "TrackingError", "check_store", "close_abandoned_runs", "driver_id", "open_store"]

PROBE_TIMEOUT_S = 10  # seconds per HTTP request while checking a tracking server
PROBE_RETRIES = 1  # retries of that request: a server that does not answer fails in about 25 s
LOCK_TIMEOUT_S = 120  # seconds to wait for another process creating the same SQLite store
_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_TIMEOUT": PROBE_TIMEOUT_S, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": PROBE_RETRIES}


class TrackingError(UserError):
    """The tracking store cannot be used: an unsupported URI, a damaged database, a server that does not answer."""


def open_store(tracking_uri: str) -> MlflowClient:
    """A client on ``tracking_uri``, after one request has gone through; :class:`TrackingError` otherwise.

    A SQLite store that does not exist yet is created (tables and all) under a file lock; an HTTP
    server gets :data:`PROBE_TIMEOUT_S` seconds and :data:`PROBE_RETRIES` retry for that first request.
    """
    from filelock import FileLock, Timeout
    from sqlalchemy.exc import SQLAlchemyError

    from mlflow.exceptions import MlflowException

    database = layout.sqlite_path(tracking_uri)
    lock = nullcontext()
    if database is not None:
        if database.exists() and not database.is_file():
            raise TrackingError(f"tracking store {tracking_uri}: {database} is not a file")
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingError(f"tracking store {tracking_uri}: cannot create {database.parent}: {err}") from None
        lock = FileLock(f"{database}-lock", timeout=LOCK_TIMEOUT_S)
    try:
        with lock, _bounded_http():
            client = MlflowClient(tracking_uri)
            client.search_experiments(max_results=1)
    except Timeout:
        raise TrackingError(
            f"tracking store {tracking_uri}: another process has held {database}-lock for {LOCK_TIMEOUT_S} s"
        ) from None
    except (MlflowException, SQLAlchemyError, OSError) as err:
        raise TrackingError(f"tracking store {tracking_uri}: {_reason(err, tracking_uri)}") from None
    return client


def check_store(tracking_uri: str) -> None:
    """:func:`open_store`'s checks, without creating a SQLite store that does not exist yet (the study creates
    it when it starts; a run refused before then leaves nothing behind)."""
    database = layout.sqlite_path(tracking_uri)
    if database is not None and not database.exists():
        return
    open_store(tracking_uri)


@contextmanager
def _bounded_http() -> Iterator[None]:
    """MLflow's HTTP timeout and retries bounded (its defaults retry for minutes) while the store is checked."""
    saved = {key: os.environ.get(key) for key in _HTTP_ENV}
    os.environ.update({key: str(value) for key, value in _HTTP_ENV.items()})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _reason(err: BaseException, uri: str) -> str:
    """What went wrong, in a line: the OS or SQLite error underneath MLflow's wrapping."""
    text = str(err)
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if "unsupported URI" in text or "Unexpected URI scheme" in text or "Could not find a registered" in text:
        return (f"MLflow cannot use URIs of the scheme {scheme!r}; use sqlite:///PATH, http(s)://HOST:PORT "
                "or a database URI (postgresql://, mysql://)")
    if scheme in ("http", "https"):
        cause = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text) or re.search(r"(timed out)", text)
        status = re.search(r"(\d{3} Client Error|\d{3} Server Error|Response code \d{3})", text)
        detail = cause.group(1).strip() if cause else status.group(1) if status else _first_line(text)
        return (f"no usable answer from the MLflow server ({detail}); start it (mlflow server --host ...), "
                "or pass another --tracking-uri")
    sqlite = re.search(r"\(sqlite3\.\w+\) ([^\n\[]+)", text)
    if sqlite:
        return f"not a usable MLflow database ({sqlite.group(1).strip()}); move it aside or name another file"
    return _first_line(text)


def _first_line(text: str) -> str:
    line = next((line.strip() for line in text.splitlines() if line.strip()), "unknown error")
    return line if len(line) <= 200 else line[:197] + "..."


# -- drivers that died --------------------------------------------------------------------------------


def driver_id(pid: int | None = None) -> str:
    """``host:pid:start`` of a process (default: this one); ``start`` tells a pid reused later apart."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or ''}"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def driver_gone(driver: str) -> bool:
    """Whether the process ``driver`` (a :func:`driver_id`) has surely ended; False when it cannot be told."""
    host, _, rest = driver.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return bool(start) and _start_time(pid) not in (None, start)


def close_abandoned_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """End the experiment's RUNNING runs (parents and trials) whose driver is gone, as interrupted.

    As a Ctrl-C would have left them (MLflow KILLED); ``--resume`` continues the study and reopens its
    trials. Returns the ids of the parent runs closed.
    """
    gone: dict[str, bool] = {}
    closed = []
    token = None
    while True:
        page = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000, page_token=token)
        for run in page:
            driver = run.data.tags.get(layout.TAG_DRIVER)
            if driver is None or not gone.setdefault(driver, driver_gone(driver)):
                continue
            client.set_tag(run.info.run_id, layout.TAG_STATUS, Status.INTERRUPTED)
            client.set_terminated(run.info.run_id, layout.MLFLOW_STATUS[Status.INTERRUPTED])
            if run.data.tags.get(layout.TAG_ROLE) == layout.ROLE_STUDY:
                closed.append(run.info.run_id)
        token = page.token
        if not token:
            return closed
