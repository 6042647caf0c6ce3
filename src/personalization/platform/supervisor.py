"""The supervisor: runs a node's children, restarts the crashed ones, stops them in order.

* Every child is a process of its own (its own process group, so a Ctrl-C in the terminal
  reaches only the supervisor, which then stops the children in order), started with the
  Linux parent-death signal armed (:mod:`personalization.platform.parentdeath`): a SIGKILL
  of the supervisor leaves no child running.  The kernel sends that signal when the
  *thread* that started the child exits, so :meth:`Supervisor.run` (which starts and
  restarts every child) must run on the main thread, or one that lives as long.
* A child that exits unexpectedly is started again after an exponential back-off
  (``initial * 2**(n-1)`` up to a maximum, ``n`` the crashes in a row; a child that stayed
  up long enough starts from the initial delay again).  Restarts are counted; a child that
  crashed ``failing_after`` times in a row is reported as ``failing`` (and still retried).
  Exit code 2 is the project's "bad input or configuration": restarting cannot help, so
  the child is ``failed`` and stays down, reported with its last output lines.
* Shutdown (``stop`` set, e.g. by SIGTERM) goes stage by stage (:class:`ChildSpec`
  ``stop_stage``): SIGTERM to every child of the stage, SIGKILL to those still running
  after their grace time, the whole within the shutdown bound.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from personalization.platform import parentdeath
from personalization.platform.components import ChildSpec
from personalization.platform.logs import LogSink, OutputPump
from personalization.platform.state import ChildRecord, PlatformState, write_state

# Exit code of a child that was given bad input or configuration (cli.common.ExitCode.BAD_INPUT).
_CONFIG_ERROR = 2
# A child counts as up once it has run this long (the API: once /healthz answers).
_UP_AFTER_S = 1.0
_POLL_S = 0.1


@dataclass(frozen=True)
class RestartPolicy:
    """Back-off and reporting of crashed children."""

    initial_s: float = 0.5
    max_s: float = 30.0
    stable_after_s: float = 30.0
    failing_after: int = 5

    def delay(self, crashes_in_a_row: int) -> float:
        """Seconds to wait before the next start after ``crashes_in_a_row`` crashes."""
        return float(min(self.max_s, self.initial_s * 2 ** max(0, crashes_in_a_row - 1)))


@dataclass
class _Child:
    spec: ChildSpec
    record: ChildRecord
    proc: subprocess.Popen[bytes] | None = None
    pump: OutputPump | None = None
    log_file: IO[bytes] | None = None
    generation: int = 0
    crashes_in_a_row: int = 0
    started_mono: float = 0.0
    next_start_mono: float | None = None
    ready_deadline: float = 0.0
    term_sent_mono: float | None = None
    tail: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


@dataclass
class SupervisorConfig:
    """Everything the supervisor needs besides its children."""

    directory: Path
    env: Mapping[str, str]
    roles: list[str]
    services: dict[str, str]
    embedded_stack: bool
    api_url: str | None
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    stop_timeout_s: float = 60.0
    api_start_timeout_s: float = 120.0
    log_dir: Path | None = None


class Supervisor:
    """Runs ``children`` until ``stop`` is set; see the module docstring."""

    def __init__(self, children: Sequence[ChildSpec], config: SupervisorConfig, sink: LogSink) -> None:
        """Prepare the children; nothing starts until :meth:`run`."""
        self.config = config
        self.sink = sink
        self.children = [
            _Child(spec, ChildRecord(name=spec.name, role=spec.role, state="starting", url=spec.url, lag=spec.lag))
            for spec in children
        ]
        self.state = PlatformState(
            pid=os.getpid(), started_at=time.time(), state="starting", roles=config.roles,
            services=dict(config.services), embedded_stack=config.embedded_stack, api_url=config.api_url,
            children=[c.record for c in self.children],
        )

    # ------------------------------------------------------------------ run
    def run(self, stop: threading.Event, on_ready: Callable[[], None] | None = None) -> int:
        """Start every child, supervise until ``stop`` is set, then shut down; returns 0."""
        self._save()
        try:
            for child in self.children:
                self._spawn(child)
            announced = False
            while not stop.is_set():
                for child in self.children:
                    self._check(child)
                if not announced and all(c.record.state == "up" for c in self.children if c.spec.lag == "http"):
                    announced = True
                    self.state.state = "running"
                    self._save()
                    if on_ready is not None:
                        on_ready()
                stop.wait(_POLL_S)
        finally:
            self._shutdown()
        return 0

    def _check(self, child: _Child) -> None:
        now = time.monotonic()
        if child.proc is not None and child.running:
            code = child.proc.poll()
            if code is not None:
                self._on_exit(child, code)
            elif child.record.state == "starting":
                self._check_ready(child, now)
        elif (child.record.state in ("backoff", "failing") and child.next_start_mono is not None
              and now >= child.next_start_mono):
            child.record.restarts += 1
            self._spawn(child)

    def _check_ready(self, child: _Child, now: float) -> None:
        if child.spec.lag == "http" and child.spec.url is not None:
            ok = False
            with contextlib.suppress(httpx.HTTPError):
                ok = httpx.get(child.spec.url + "/healthz", timeout=0.5).status_code == 200
            if not ok:
                if now > child.ready_deadline:
                    # Alive but never serving: treated as a crash (killed, then restarted).
                    self.sink.event(f"{child.spec.name} did not answer /healthz in time; restarting it",
                                    level="error", child=child.spec.name)
                    assert child.proc is not None
                    child.proc.kill()
                return
        elif now - child.started_mono < _UP_AFTER_S:
            return
        child.record.state = "up"
        self.sink.event(f"{child.spec.name} is up", child=child.spec.name, pid=child.record.pid)
        self._save()

    # ---------------------------------------------------------------- spawn
    def _spawn(self, child: _Child) -> None:
        launch = child.spec.launch(child.generation)
        child.generation += 1
        env = {**self.config.env, **launch.env}
        stdout: int | IO[bytes] = subprocess.PIPE
        if self.config.log_dir is not None:
            self.config.log_dir.mkdir(parents=True, exist_ok=True)
            if child.log_file is None:
                child.log_file = open(self.config.log_dir / f"{child.spec.name}.log", "ab")  # noqa: SIM115
            stdout = child.log_file
        try:
            proc = subprocess.Popen(
                launch.argv, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
                process_group=0, close_fds=True, preexec_fn=parentdeath.preexec(signal.SIGKILL),
            )
        except OSError as exc:
            self.sink.event(f"cannot start {child.spec.name}: {exc}", level="error", child=child.spec.name)
            child.proc = None
            child.started_mono = time.monotonic()
            self._schedule_restart(child, None)
            return
        child.proc = proc
        if proc.stdout is not None:
            child.pump = OutputPump(child.spec.name, proc.stdout, self.sink)
        now = time.monotonic()
        child.started_mono = now
        child.ready_deadline = now + self.config.api_start_timeout_s
        child.next_start_mono = None
        rec = child.record
        rec.pid, rec.started_at, rec.state, rec.next_start_at = proc.pid, time.time(), "starting", None
        rec.detail = dict(launch.detail)
        self.sink.event(f"started {child.spec.name}", child=child.spec.name, pid=proc.pid,
                        generation=child.generation - 1)
        self._save()

    # ----------------------------------------------------------------- exit
    def _on_exit(self, child: _Child, code: int) -> None:
        rec = child.record
        if child.pump is not None:
            child.pump.join(1.0)
            child.tail = child.pump.tail()
        rec.last_exit_code, rec.last_exit_at, rec.pid = code, time.time(), None
        rec.last_output = child.tail[-10:]
        if code == _CONFIG_ERROR:
            rec.state = "failed"
            self.sink.event(
                f"{child.spec.name} exited with code 2 (bad input or configuration): not restarted; fix the "
                "configuration and start the platform again", level="error", child=child.spec.name,
                last_output=rec.last_output,
            )
            self._save()
            return
        self._schedule_restart(child, code)

    def _schedule_restart(self, child: _Child, code: int | None) -> None:
        rec = child.record
        if time.monotonic() - child.started_mono >= self.config.policy.stable_after_s:
            child.crashes_in_a_row = 0
        child.crashes_in_a_row += 1
        delay = self.config.policy.delay(child.crashes_in_a_row)
        child.next_start_mono = time.monotonic() + delay
        rec.next_start_at = time.time() + delay
        failing = child.crashes_in_a_row >= self.config.policy.failing_after
        rec.state = "failing" if failing else "backoff"
        if code is not None and code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        if failing:
            message = (f"{child.spec.name} keeps crashing ({child.crashes_in_a_row} times in a row, last: {how}); "
                       f"retrying in {delay:g} s")
        else:
            message = f"{child.spec.name} {how}; restarting in {delay:g} s"
        self.sink.event(message, level="error" if failing else "warning", child=child.spec.name, exit_code=code,
                        restarts=rec.restarts, crashes_in_a_row=child.crashes_in_a_row,
                        last_output=rec.last_output[-3:])
        self._save()

    # ------------------------------------------------------------- shutdown
    def _shutdown(self) -> None:
        deadline = time.monotonic() + self.config.stop_timeout_s
        self.state.state = "stopping"
        self.sink.event("stopping", bound_s=self.config.stop_timeout_s)
        for child in self.children:
            if not child.running:
                child.next_start_mono = None
                if child.record.state != "failed":
                    child.record.state = "stopped"
        self._save()
        for stage in sorted({c.spec.stop_stage for c in self.children}):
            self._stop_stage([c for c in self.children if c.spec.stop_stage == stage and c.running], deadline)
        for child in self.children:
            if child.pump is not None:
                child.pump.join(max(0.1, min(2.0, deadline - time.monotonic())))
            if child.log_file is not None:
                child.log_file.close()
                child.log_file = None
        self.state.state = "stopped"
        self._save()
        self.sink.event("stopped")

    def _stop_stage(self, members: list[_Child], deadline: float) -> None:
        now = time.monotonic()
        for child in members:
            assert child.proc is not None
            child.record.state = "stopping"
            child.term_sent_mono = now
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
            self.sink.event(f"stopping {child.spec.name}", child=child.spec.name, pid=child.proc.pid)
        self._save()
        pending = list(members)
        while pending:
            now = time.monotonic()
            for child in list(pending):
                assert child.proc is not None and child.term_sent_mono is not None
                code = child.proc.poll()
                if code is None and (now >= deadline or now - child.term_sent_mono >= child.spec.stop_grace_s):
                    self.sink.event(f"{child.spec.name} did not stop in time: SIGKILL", level="warning",
                                    child=child.spec.name)
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.kill()
                    code = child.proc.wait()
                if code is not None:
                    pending.remove(child)
                    rec = child.record
                    rec.state, rec.last_exit_code, rec.last_exit_at, rec.pid = "stopped", code, time.time(), None
                    # uvicorn re-raises the SIGTERM it handled once it has shut down: -15 is clean too.
                    self.sink.event(f"{child.spec.name} stopped", child=child.spec.name, exit_code=code,
                                    clean=code in (0, -signal.SIGTERM), seconds=round(now - child.term_sent_mono, 2))
                    self._save()
            if pending:
                time.sleep(0.05)

    def _save(self) -> None:
        try:
            write_state(self.config.directory, self.state)
        except OSError as exc:
            # A full disk must not take the children down; status just sees older data.
            self.sink.event(f"cannot write the state file: {exc}", level="error")
