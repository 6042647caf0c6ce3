"""The supervisor with real child processes (small Python programs): restarts, reports, shutdown order.

These need no service: the children are ``python -c`` programs whose behaviour (crash,
exit 2, ignore SIGTERM, log lines) is the point.  They wait on the state file and on
files the children write, never on fixed sleeps.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from personalization.platform.components import ChildSpec, LagKind, Launch
from personalization.platform.logs import LogSink, structure
from personalization.platform.state import ChildRecord, PlatformLock, read_state
from personalization.platform.status import healthy, platform_status
from personalization.platform.supervisor import RestartPolicy, Supervisor, SupervisorConfig


def _program(code: str) -> Callable[[int], Launch]:
    def launch(generation: int) -> Launch:
        return Launch([sys.executable, "-c", code], env={"GENERATION": str(generation)})

    return launch


def _spec(name: str, code: str, stage: int = 0, grace: float = 5.0, lag: LagKind = "none") -> ChildSpec:
    return ChildSpec(name, name, _program(code), stage, grace, lag)


class _Run:
    """A supervisor running in a thread of the test, with its log captured."""

    def __init__(self, directory: Path, children: list[ChildSpec], **config: object) -> None:
        self.directory = directory
        self.log = io.BytesIO()
        self.sink = LogSink(self.log)
        policy = config.pop("policy", RestartPolicy(initial_s=0.05, max_s=0.2, stable_after_s=30, failing_after=3))
        cfg = SupervisorConfig(directory=directory, env={"PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin"},
                               roles=[c.role for c in children], services={}, embedded_stack=False, api_url=None,
                               policy=policy, **config)  # type: ignore[arg-type]
        self.supervisor = Supervisor(children, cfg, self.sink)
        self.lock = PlatformLock(directory)
        self.stop = threading.Event()
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.code = self.supervisor.run(self.stop)

    def __enter__(self) -> _Run:
        # As `up` does: the lock tells `status` that a supervisor runs.
        self.lock.acquire()
        self.thread.start()
        self.wait(lambda: read_state(self.directory) is not None)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        self.lock.release()

    def child(self, name: str) -> ChildRecord:
        state = read_state(self.directory)
        assert state is not None
        return next(c for c in state.children if c.name == name)

    def wait(self, what: Callable[[], bool], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not what():
            assert time.monotonic() < deadline, self.log.getvalue().decode()[-3000:]
            time.sleep(0.02)

    def events(self) -> list[dict[str, object]]:
        return [orjson.loads(line) for line in self.log.getvalue().splitlines()]


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "platform"
    d.mkdir()
    yield d


def test_crashing_child_is_restarted_with_backoff_counted_and_reported_failing(directory: Path) -> None:
    crasher = _spec("crasher", "import sys; print('boom on start', flush=True); sys.exit(1)")
    steady = _spec("steady", "import time; time.sleep(600)")
    with _Run(directory, [crasher, steady]) as run:
        run.wait(lambda: run.child("crasher").restarts >= 4)
        rec = run.child("crasher")
        assert rec.state in ("failing", "starting")
        assert rec.last_exit_code == 1
        assert rec.last_output == ["boom on start"]
        # The steady child is untouched by its neighbour's crashes.
        assert run.child("steady").restarts == 0
        run.wait(lambda: run.child("crasher").state == "failing")
        report = platform_status(directory, live=False)
        crash = next(c for c in report["components"] if c["name"] == "crasher")
        assert crash["state"] == "failing" and crash["last_exit_code"] == 1
        assert crash["last_output"] == ["boom on start"]
        assert not healthy(report)
    messages = [str(e["msg"]) for e in run.events()]
    assert any("keeps crashing" in m for m in messages), messages
    assert any("crasher exited with code 1; restarting in" in m for m in messages), messages
    # Back-off doubles from the initial delay up to the max: 0.05, 0.1, 0.2, 0.2, ...
    delays = [float(m.rsplit("in ", 1)[1].split()[0]) for m in messages if "crasher" in m and " in " in m
              and ("restarting" in m or "retrying" in m)]
    assert delays[:4] == [0.05, 0.1, 0.2, 0.2], delays


def test_configuration_error_exit_2_is_not_restarted(directory: Path) -> None:
    bad = _spec("bad", "import sys; print('error: invalid settings', file=sys.stderr); sys.exit(2)")
    clock = _spec("clock", "import sys; sys.exit(1)")
    with _Run(directory, [bad, clock]) as run:
        # The crashing neighbour's restarts are the clock: by its third, `bad` had its chance.
        run.wait(lambda: run.child("clock").restarts >= 3 and run.child("bad").state == "failed")
        rec = run.child("bad")
        assert rec.restarts == 0 and rec.last_exit_code == 2
        assert rec.last_output == ["error: invalid settings"]
    assert any("not restarted" in str(e["msg"]) for e in run.events())


def _stopper(name: str, record: Path, ignore: bool = False) -> str:
    # On SIGTERM: note the name and time, linger briefly (a drain), exit 0; or ignore it.
    handler = "signal.SIG_IGN" if ignore else "on_term"
    return (
        "import signal, sys, time\n"
        "def on_term(signum, frame):\n"
        f"    with open({str(record)!r}, 'a') as f: f.write('{name} %f\\n' % time.time())\n"
        "    time.sleep(0.2)\n"
        "    sys.exit(0)\n"
        f"signal.signal(signal.SIGTERM, {handler})\n"
        f"open({str(record) + '.' + name!r}, 'w').close()\n"
        "while True: time.sleep(1)\n"
    )


def test_shutdown_goes_stage_by_stage_and_kills_what_ignores_sigterm_within_the_bound(
    directory: Path, tmp_path: Path
) -> None:
    record = tmp_path / "terms.txt"
    children = [
        _spec("api", _stopper("api", record), stage=0),
        _spec("relay", _stopper("relay", record), stage=1),
        _spec("learner", _stopper("learner", record), stage=2),
        _spec("stubborn", _stopper("stubborn", record, ignore=True), stage=2, grace=1.0),
    ]
    run = _Run(directory, children, stop_timeout_s=20.0)
    with run:
        run.wait(lambda: all(Path(f"{record}.{c.name}").exists() for c in children))
        pids = {c.name: run.child(c.name).pid for c in children}
        began = time.monotonic()
        run.stop.set()
        run.thread.join(30)
        took = time.monotonic() - began
    assert run.code == 0
    order = [line.split()[0] for line in record.read_text().splitlines()]
    assert order == ["api", "relay", "learner"]
    # Each stage begins after the previous one has exited (each lingers 0.2 s).
    times = [float(line.split()[1]) for line in record.read_text().splitlines()]
    assert times[1] - times[0] >= 0.2 and times[2] - times[1] >= 0.2
    assert took < 1.0 + 0.2 * 3 + 3.0, took  # the stubborn one is killed after its 1 s grace
    state = read_state(directory)
    assert state is not None and state.state == "stopped"
    assert {c.name: c.state for c in state.children} == dict.fromkeys(pids, "stopped")
    assert next(c for c in state.children if c.name == "stubborn").last_exit_code == -9
    for pid in pids.values():
        assert pid is not None
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_log_lines_are_structured_with_the_component_name(directory: Path, tmp_path: Path) -> None:
    assert orjson.loads(structure("learner", "plain text\n")) | {"ts": "x"} == {
        "ts": "x", "component": "learner", "msg": "plain text"
    }
    assert orjson.loads(structure("api", '{"level": "info", "msg": "hi"}')) == {
        "component": "api", "level": "info", "msg": "hi"
    }
    talker = _spec("talker", "print('line one'); print('{\"msg\": \"two\"}', flush=True)\nimport time; time.sleep(600)")
    with _Run(directory, [talker]) as run:
        run.wait(lambda: b'"two"' in run.log.getvalue())
    lines = [e for e in run.events() if e.get("component") == "talker"]
    assert [e["msg"] for e in lines] == ["line one", "two"]
    # With a log directory each child has its own file.
    log_dir = tmp_path / "logs"
    with _Run(directory, [talker], log_dir=log_dir) as run:
        run.wait(lambda: (log_dir / "talker.log").exists() and b"two" in (log_dir / "talker.log").read_bytes())
    assert (log_dir / "talker.log").read_text().splitlines()[:2] == ["line one", '{"msg": "two"}']


def test_status_while_up_holds_the_lock_before_its_first_state_write(directory: Path) -> None:
    lock = PlatformLock(directory)
    lock.acquire()
    try:
        report = platform_status(directory)
        assert report == {"supervisor": {"pid": None, "state": "starting"}, "components": []}
        assert not healthy(report)
    finally:
        lock.release()
