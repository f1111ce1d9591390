"""The one command shape of the local services: `facebeam es|redis|flink|spark up|down|status`.

A service module says, per action, what it does and what the command prints (`Action`);
`run_action` runs it and returns the command's summary: `{"ok": bool, ...}`, `ok` False only
for a status that finds nothing running (exit 1). A setup problem raises `UserError` with one
line, as every facebeam command fails (exit 2); what a problem brings along (a log tail, the
command that failed) is logged just before it. `running()` is the context manager tests and
benchmarks use: start if needed, stop afterwards only what it started.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from facebeam.pipelines.local import job_server, toolkit, workers
from facebeam.transforms.errors import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Action:
    do: Callable[[], Any]
    #: what the command prints for `do`'s answer ('' prints nothing)
    say: Callable[[Any], str]
    #: False: the command exits 1 (a status that finds nothing running)
    ok: Callable[[Any], bool] = lambda answer: True


def run_action(service: str, action: str, actions: dict) -> dict:
    """Run `actions[action]` of `facebeam <service>`; print what it says; its summary."""
    try:
        answer = actions[action].do()
    except UserError as e:
        first, _, details = str(e).partition("\n")
        if not details.strip():
            raise
        log.warning("facebeam %s %s: %s", service, action, details.strip())
        raise type(e)(first) if _rebuildable(e) else UserError(first) from None
    text = actions[action].say(answer)
    if text:
        print(text)
    summary = dict(answer) if isinstance(answer, dict) else {"answer": answer}
    return {**summary, "ok": bool(actions[action].ok(answer))}


def _rebuildable(e: Exception) -> bool:
    try:
        type(e)("x")
    except TypeError:
        return False
    return True


@contextlib.contextmanager
def running(already_up: bool, up, down, **kwargs):
    """For tests and jobs: `up(**kwargs)`, yield its answer, then `down()` unless it was `already_up`."""
    info = up(**kwargs)
    try:
        yield info
    finally:
        if not already_up:
            down()


def pool_line(pool: dict | None, versions: bool = False) -> str:
    """A worker pool in one phrase, for `facebeam flink|spark status`."""
    if not pool:
        return "not running"
    line = f"localhost:{pool['port']} pid {pool['pid']} ({pool['workers']} workers"
    if versions:
        line += f", facebeam {pool['facebeam_version']}, Beam {pool['beam_version']}"
    return line + ")"


def pids_words(pids: dict) -> str:
    """{daemon: [pid, ...]} -> "standalonesession pid 12, taskexecutor pids 13 14", or "no process of it left"."""
    said = [f"{daemon} pid{'s' if len(found) > 1 else ''} {' '.join(map(str, found))}"
            for daemon, found in pids.items() if found]
    return ", ".join(said) if said else "no process of it left"


def pool_where(pool: dict | None) -> str:
    """Where `up` put the worker pool, for `facebeam flink|spark up`."""
    if not pool:
        return "; no worker pool"
    return (f"; worker pool on localhost:{pool['port']} (pid {pool['pid']}, {pool['workers']} harness "
            f"processes per job)")


def stop_cluster(kind: str, daemons: list, timeout: float) -> bool:
    """`facebeam flink|spark down`: the job server, the worker pool, then each daemon
    (pids, main class, pid files) in order; True if something was stopped."""
    stopped = ["job server"] if job_server.stop(kind) else []
    stopped += ["worker pool"] if workers.stop_pool(kind) else []
    for pids, main_class, pid_files in daemons:
        stopped += toolkit.stop_processes(pids, main_class, timeout=timeout)
        for f in pid_files:
            f.unlink(missing_ok=True)
    if stopped:
        log.info("stopped %s processes %s", kind.capitalize(), stopped)
    return bool(stopped)
