"""The SQLite store: runs, task results, attempts and the append-only event log.

One file (default ``.goatclaw/goatclaw.db``) in WAL mode, opened through sqlean.py,
whose SQLite can load extensions (sqlite-vec for memory). Writers take
``BEGIN IMMEDIATE``; a task's state change and its events commit in one transaction, so
``kill -9`` never loses a committed task. Migrations are an ordered list of named
functions recorded in the ``migrations`` table.

Tables: ``runs`` (one row a run), ``tasks`` (each task's final result: status, attempts,
timings, output or error; the successful attempt is this row), ``attempts`` (every
attempt that failed or was cancelled: the retry history), ``events`` (the append-only
log, numbered per run; see below), ``cache`` (task outputs by cache key), ``dead_letters`` (tasks
that failed for good and event subscribers that raised, with what they were given),
``audit`` and ``audit_head`` (the hash-chained record of every side effect, across runs),
``users``, ``api_tokens`` and ``sessions`` (who may use ``goatclaw serve``: only hashes of
passwords, token secrets and session cookies).

A task's ``task.started`` and its plain ``task.succeeded`` (``cached``, ``skipped``) events,
whose data is only its attempts and duration, are not stored as rows of ``events``: the
task's row keeps their numbers (``started_seq``, ``finished_seq``) and :meth:`Store.events`
reads them back in their place, with the same number, time, topic and data. One row a task
instead of three is most of what storing a run costs. A start is stored as an event of its
own when the task is still running at a commit (a reader then sees it running), and an end
with more to say (an error, a fan-out's item count) always is. A resumed run's numbered
rows are turned into events first (:meth:`Store.resume_run`), since its tasks' rows may be
written again.

:meth:`Store.commit` is the one place rows are committed: a failure that may pass (a
full disk, a busy or failing file) is tried again for about two seconds, and what stays
a failure is a :class:`~goatclaw.errors.StoreError` naming the store, what was being
written and SQLite's cause. A row UTF-8 cannot encode (a lone surrogate) is written
escaped (:func:`goatclaw.jsontext.storable`), never refused. A store whose migrations
include one this goatclaw does not know was written by a newer goatclaw: it is refused
when opened, before anything is read or written, naming both versions.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlean

from goatclaw.errors import StoreError
from goatclaw.jsontext import storable
from goatclaw.liveness import Liveness, current_owner, owner_state

__all__ = ["COMMIT_PAUSES", "LOST_ACTION", "MIGRATIONS", "UNFINISHED", "DeadLetter", "RunRow", "Store", "TaskRow",
           "describe_rows"]

Connection = Any  # sqlean.Connection; typed loosely since sqlean ships no stubs
T = TypeVar("T")
#: Pauses (seconds) before each new try of a commit that failed for a reason that may pass: about two seconds in all.
COMMIT_PAUSES: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
#: SQLite's errors that may pass (the extended names start with these): a full disk, an I/O error.
_TRANSIENT = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_PROTOCOL")
#: ... and a busy store, when SQLite answered at once (after the 30 s busy timeout, trying again only waits longer).
_BUSY = ("SQLITE_BUSY", "SQLITE_LOCKED")
#: Links pending audit rows after the head ``(seq, hash)``: goatclaw.security.audit.seal (passed in by the engine).
AuditSeal = Callable[[int, "str | None", Sequence[tuple[Any, ...]]], list[tuple[Any, ...]]]


def _script(db: Connection, sql: str) -> None:
    """Run several statements inside the caller's transaction (``executescript`` would commit it)."""
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def _m001_core(db: Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            pipeline TEXT NOT NULL,
            file TEXT,
            digest TEXT,
            status TEXT NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL,
            vars TEXT,
            error TEXT,
            summary TEXT
        );
        CREATE INDEX runs_by_pipeline ON runs (pipeline, started_at);
        CREATE INDEX runs_by_start ON runs (started_at);
        CREATE TABLE tasks (
            run_id TEXT NOT NULL,
            task_id TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            started_at REAL,
            finished_at REAL,
            output TEXT,
            error TEXT,
            error_class TEXT,
            PRIMARY KEY (run_id, task_id)
        ) WITHOUT ROWID;
        CREATE TABLE attempts (
            run_id TEXT NOT NULL,
            task_id TEXT NOT NULL,
            item INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            status TEXT NOT NULL,
            started_at REAL,
            finished_at REAL,
            error_class TEXT,
            error TEXT,
            PRIMARY KEY (run_id, task_id, item, attempt)
        ) WITHOUT ROWID;
        CREATE TABLE events (
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            ts REAL NOT NULL,
            topic TEXT NOT NULL,
            task_id TEXT,
            data TEXT,
            PRIMARY KEY (run_id, seq)
        ) WITHOUT ROWID;
        """
    )


def _m002_breakers(db: Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE breakers (
            key TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            failures TEXT NOT NULL DEFAULT '[]',
            opened_at REAL,
            probe_until REAL,
            successes INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        )
        """,
    )


def _m003_cache(db: Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE cache (
            key TEXT PRIMARY KEY,
            plugin TEXT NOT NULL,
            output TEXT NOT NULL,
            created_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
    )


def _m004_dead_letters(db: Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            run_id TEXT,
            task_id TEXT,
            topic TEXT,
            inputs TEXT,
            error_class TEXT,
            error TEXT,
            created_at REAL NOT NULL,
            replayed_at REAL,
            replay_status TEXT
        );
        CREATE INDEX dead_letters_by_run ON dead_letters (run_id)
        """,
    )


def _m005_memory(db: Connection) -> None:
    # The vec0 vector table is made by goatclaw.memory on first use: it needs sqlite-vec
    # loaded and the embedder's dimension.
    _script(
        db,
        """
        CREATE TABLE memories (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            text TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}',
            count INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL,
            last_seen REAL NOT NULL
        );
        CREATE INDEX memories_by_kind ON memories (kind, last_seen);
        CREATE TABLE memory_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        CREATE TABLE memory_entities (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            UNIQUE (kind, name)
        );
        CREATE TABLE memory_relations (
            source INTEGER NOT NULL REFERENCES memory_entities (id) ON DELETE CASCADE,
            relation TEXT NOT NULL,
            target INTEGER NOT NULL REFERENCES memory_entities (id) ON DELETE CASCADE,
            count INTEGER NOT NULL DEFAULT 1,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            PRIMARY KEY (source, relation, target)
        ) WITHOUT ROWID
        """,
    )


def _m006_llm_cache(db: Connection) -> None:
    # LLM answers by request hash (goatclaw.llm): model, messages and parameters, never the key
    _script(
        db,
        """
        CREATE TABLE llm_cache (
            key TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            response TEXT NOT NULL,
            created_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
    )


def _m007_audit(db: Connection) -> None:
    # One hash chain across all runs (goatclaw.security.audit); audit_head holds the newest
    # (seq, hash) so that removing the last rows shows. seq >= 1: numbers are the chain's.
    _script(
        db,
        """
        CREATE TABLE audit (
            seq INTEGER PRIMARY KEY CHECK (seq >= 1),
            ts REAL NOT NULL,
            run_id TEXT,
            task_id TEXT,
            action TEXT NOT NULL,
            detail TEXT NOT NULL,
            prev TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX audit_by_run ON audit (run_id, seq);
        CREATE TABLE audit_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq INTEGER NOT NULL,
            hash TEXT NOT NULL
        )
        """,
    )


def _m008_task_plugin(db: Connection) -> None:
    # Which plugin ran each task: per-plugin stats without the pipeline file.
    db.execute("ALTER TABLE tasks ADD COLUMN plugin TEXT")


def _m009_run_owner(db: Connection) -> None:
    # The process running each run (goatclaw.liveness): runs can say a run was interrupted.
    db.execute("ALTER TABLE runs ADD COLUMN owner TEXT")


def _m011_rate_windows(db: Connection) -> None:
    # Sliding-window rate limits shared by the processes using this store (goatclaw.security.ratelimit):
    # one row per admitted event, wall-clock time; rows leave as they leave their window.
    _script(
        db,
        """
        CREATE TABLE rate_events (
            name TEXT NOT NULL,
            at REAL NOT NULL,
            weight INTEGER NOT NULL
        );
        CREATE INDEX rate_events_by_name ON rate_events (name, at)
        """,
    )


def _m016_taint(db: Connection) -> None:
    # Where untrusted data went (goatclaw.security.taint): every file file.write wrote, with the
    # untrusted tasks its content came from ([] for a clean write), and each memory's origins.
    _script(
        db,
        """
        CREATE TABLE file_origins (
            path TEXT NOT NULL,
            sha256 TEXT,
            origins TEXT NOT NULL,
            run_id TEXT,
            task_id TEXT,
            written_at REAL NOT NULL
        );
        CREATE INDEX file_origins_by_path ON file_origins (path, written_at);
        CREATE INDEX file_origins_by_hash ON file_origins (sha256);
        ALTER TABLE memories ADD COLUMN origins TEXT NOT NULL DEFAULT '[]'
        """,
    )


def _m017_task_logs(db: Connection) -> None:
    # What each task attempt logged (goatclaw.engine.tasklogs): Python logging records, a shell
    # task's stderr lines, warnings; masked and bounded before they get here. ``id`` is the order.
    _script(
        db,
        """
        CREATE TABLE task_logs (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL,
            task_id TEXT NOT NULL,
            item INTEGER NOT NULL DEFAULT -1,
            attempt INTEGER NOT NULL,
            ts REAL NOT NULL,
            level INTEGER NOT NULL,
            source TEXT NOT NULL,
            message TEXT NOT NULL
        );
        CREATE INDEX task_logs_by_run ON task_logs (run_id, task_id, id)
        """,
    )


def _m018_approvals(db: Connection) -> None:
    # A run waiting for a person (issue 21): one row per request, its evidence (upstream outputs,
    # cost, permissions, the inputs' JSON Schema) as JSON; ``decision`` stays NULL until decided.
    _script(
        db,
        """
        CREATE TABLE approvals (
            run_id TEXT NOT NULL,
            task_id TEXT NOT NULL,
            requested_at REAL NOT NULL,
            timeout REAL,
            evidence TEXT NOT NULL DEFAULT '{}',
            decision TEXT,
            decided_by TEXT,
            decided_at REAL,
            inputs TEXT,
            reason TEXT,
            PRIMARY KEY (run_id, task_id)
        );
        CREATE INDEX approvals_waiting ON approvals (decision, requested_at)
        """,
    )


def _m020_server_auth(db: Connection) -> None:
    # Who may use `goatclaw serve` (goatclaw.server.auth): users (argon2 password hash, TOTP secret),
    # API tokens (only the SHA-256 of the secret part is kept) and browser sessions (the SHA-256 of
    # the cookie). Scopes and projects are JSON lists; projects NULL means every project.
    _script(
        db,
        """
        CREATE TABLE users (
            name TEXT PRIMARY KEY,
            password TEXT NOT NULL,
            totp_secret TEXT,
            totp_step INTEGER NOT NULL DEFAULT 0,
            scopes TEXT NOT NULL,
            projects TEXT,
            created_at REAL NOT NULL,
            disabled_at REAL
        );
        CREATE TABLE api_tokens (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            hash TEXT NOT NULL,
            scopes TEXT NOT NULL,
            projects TEXT,
            created_at REAL NOT NULL,
            created_by TEXT,
            expires_at REAL,
            revoked_at REAL
        );
        CREATE TABLE sessions (
            hash TEXT PRIMARY KEY,
            user TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            revoked_at REAL,
            client TEXT
        );
        CREATE INDEX sessions_by_user ON sessions (user, expires_at)
        """,
    )


def _m021_schedules(db: Connection) -> None:
    # What the server's scheduler remembers per schedule (issue 21): ``done_until`` is the scheduled
    # time up to which every fire was handled (fired or skipped), so a restart knows what it missed;
    # the last fire, its run and how it ended are for `goatclaw schedules list`.
    _script(
        db,
        """
        CREATE TABLE schedules (
            pipeline TEXT NOT NULL,
            schedule TEXT NOT NULL,
            cron TEXT NOT NULL,
            done_until REAL NOT NULL,
            last_fire REAL,
            last_run TEXT,
            last_status TEXT,
            updated_at REAL NOT NULL,
            PRIMARY KEY (pipeline, schedule)
        )
        """,
    )


def _m025_dashboard_indexes(db: Connection) -> None:
    # The dashboard (issue 22): the runs list filtered by status stays an index range at 10,000 runs, and
    # the cost of a page of runs or of a month reads only LLM-call events (partial: no other event pays;
    # the one by time covers the costs page's scan, so its rows are read in index order, not looked up).
    _script(
        db,
        """
        CREATE INDEX runs_by_status ON runs (status, started_at);
        CREATE INDEX events_llm_by_run ON events (run_id) WHERE topic = 'llm.call';
        CREATE INDEX events_llm_by_ts ON events (ts, run_id, data) WHERE topic = 'llm.call'
        """,
    )


def _m026_task_event_seqs(db: Connection) -> None:
    # A task's start and plain end are kept in its row (see the module docstring): one row a task, not three.
    _script(db, "ALTER TABLE tasks ADD COLUMN started_seq INTEGER; ALTER TABLE tasks ADD COLUMN finished_seq INTEGER")


#: The topics of the events a task row can stand for (a plain end: attempts and duration, nothing else).
DERIVED_ENDS = frozenset({"succeeded", "cached", "skipped"})
#: A run's events: the stored ones and those its task rows stand for, merged by number (see the module docstring).
#: Each row ends with what it is (:data:`_STORED`, :data:`_A_START` or :data:`_AN_END`), then an end's attempts
#: and duration, from which its data is written (:func:`plain_end`).
_EVENTS_SQL = (
    "SELECT seq, ts, topic, task_id, data, 0, 0, 0 FROM events WHERE run_id = ?1 AND seq > ?2 "
    "UNION ALL SELECT started_seq, started_at, 'task.started', task_id, NULL, 1, 0, 0 FROM tasks "
    "WHERE run_id = ?1 AND started_seq > ?2 "
    "UNION ALL SELECT finished_seq, finished_at, 'task.' || status, task_id, NULL, 2, attempts, "
    "finished_at - started_at FROM tasks WHERE run_id = ?1 AND finished_seq > ?2 ORDER BY 1")
_STORED, _A_START, _AN_END = 0, 1, 2


def plain_end(attempts: int, duration: float | None) -> str:
    """The data of a task's plain end event as stored JSON text (what a task row stands for)."""
    return f'{{"attempts": {attempts}, "duration": {"null" if duration is None else f"{duration:.6f}"}}}'


#: Ordered, named migrations; each runs once, in its own transaction.
MIGRATIONS: Sequence[tuple[str, Callable[[Connection], None]]] = (
    ("001_core", _m001_core),
    ("002_breakers", _m002_breakers),
    ("003_cache", _m003_cache),
    ("004_dead_letters", _m004_dead_letters),
    ("005_memory", _m005_memory),
    ("006_llm_cache", _m006_llm_cache),
    ("007_audit", _m007_audit),
    ("008_task_plugin", _m008_task_plugin),
    ("009_run_owner", _m009_run_owner),
    ("011_rate_windows", _m011_rate_windows),
    ("016_taint", _m016_taint),
    ("017_task_logs", _m017_task_logs),
    ("018_approvals", _m018_approvals),
    ("020_server_auth", _m020_server_auth),
    ("021_schedules", _m021_schedules),
    ("025_dashboard_indexes", _m025_dashboard_indexes),
    ("026_task_event_seqs", _m026_task_event_seqs),
)

#: The audit action of the row that records rows of a run lost when the store failed for good (with counts and cause).
LOST_ACTION = "store.lost"

#: Run statuses a resume picks up by default (a run killed mid-way is still ``running``; ``waiting``: at an approval).
UNFINISHED = ("running", "failed", "cancelled", "waiting")


@dataclass(frozen=True)
class RunRow:
    """A stored run."""

    id: str
    pipeline: str
    file: str | None
    digest: str | None
    status: str
    started_at: float
    finished_at: float | None
    vars: dict[str, Any]
    error: str | None
    summary: dict[str, Any]
    owner: str | None = None  # the process running it (goatclaw.liveness)

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, if finished."""
        return None if self.finished_at is None else self.finished_at - self.started_at

    @property
    def interrupted(self) -> bool:
        """Stored as running, but the process that ran it on this machine is gone (a kill -9, a reboot)."""
        return self.status == "running" and owner_state(self.owner) is Liveness.GONE


@dataclass(frozen=True)
class TaskRow:
    """A task's stored result within a run."""

    run_id: str
    task_id: str
    status: str
    attempts: int
    started_at: float | None
    finished_at: float | None
    output: Any
    error: str | None
    error_class: str | None
    plugin: str | None = None


class Store:
    """A connection to the store file; create with :meth:`open`, close with :meth:`close`."""

    def __init__(self, db: Connection, path: Path) -> None:
        self.db = db
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Store:
        """Open (creating and migrating if needed) the store at ``path``."""
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            db = sqlean.connect(str(p), isolation_level=None, check_same_thread=False, timeout=30)
            _set_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            store = cls(db, p)
            store._migrate()
        except sqlean.DatabaseError as exc:
            raise StoreError(f"cannot open the store {p}: {exc}") from None
        except OSError as exc:
            raise StoreError(f"cannot create the store folder {p.parent}: {exc.strerror or exc}") from None
        return store

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite)."""
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on error, a failed ``COMMIT`` included)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # SQLite rolls back by itself after some errors (a full disk)
                try:
                    self.db.execute("ROLLBACK")
                except sqlean.Error:
                    pass  # the error that brought us here is the one to report
            raise

    def commit(self, write: Callable[[Connection], T], *, what: str | Callable[[], str],
               pauses: Sequence[float] = COMMIT_PAUSES) -> T:
        """``write(db)`` in one ``BEGIN IMMEDIATE`` transaction, committed; what ``write`` returns.

        A failure that may pass (a full disk, a busy store, an I/O error) is tried again
        after each of ``pauses``; any other, and the last, raise :class:`StoreError`
        naming the store, ``what`` was being written (text, or a function making it) and
        SQLite's cause.
        """
        started = time.monotonic()
        for tries, pause in enumerate((*pauses, None), 1):
            began = time.monotonic()
            try:
                with self.transaction() as db:
                    return write(db)
            except sqlean.Error as exc:
                if pause is None or not _transient(exc, time.monotonic() - began):
                    took = f" (tried {tries} times over {time.monotonic() - started:.1f}s)" if tries > 1 else ""
                    said = what if isinstance(what, str) else what()
                    raise StoreError(f"cannot write {said} to the store {self.path}: {exc}{took}") from None
            time.sleep(pause)
        raise AssertionError("unreachable")  # the last pause is None

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        done = {row[0] for row in self.db.execute("SELECT name FROM migrations")}
        unknown = done - {name for name, _ in MIGRATIONS}
        if unknown:
            raise StoreError(_newer_store(self.path, unknown))
        for name, migration in MIGRATIONS:
            if name in done:
                continue
            with self.transaction() as db:
                if db.execute("SELECT 1 FROM migrations WHERE name = ?", (name,)).fetchone():
                    continue  # another process migrated meanwhile
                migration(db)
                db.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))

    # -- writing ---------------------------------------------------------------------

    def create_run(self, run_id: str, pipeline: str, *, file: str | None, digest: str | None,
                   vars: dict[str, Any], started_at: float, events: Sequence[tuple[Any, ...]] = ()) -> None:
        """Record a new run as ``running``, owned by this process, with its first ``events`` (one transaction)."""
        row = (run_id, storable(pipeline), None if file is None else storable(file), digest, "running", started_at,
               json.dumps(vars, default=str), current_owner())

        def write(db: Connection) -> None:
            db.execute("INSERT INTO runs (id, pipeline, file, digest, status, started_at, vars, owner) "
                       "VALUES (?,?,?,?,?,?,?,?)", row)
            if events:
                db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?)", events)

        try:
            self.commit(write, what=f"run {run_id}'s start")
        except UnicodeEncodeError:  # a lone surrogate in an event: escaped, as write_batch does
            events = [_storable_row(e) for e in events]
            self.commit(write, what=f"run {run_id}'s start")

    def resume_run(self, run_id: str) -> int:
        """Mark a stored run ``running`` again, by this process; its last event number (events continue from it)."""
        def write(db: Connection) -> int:
            db.execute("UPDATE runs SET status = 'running', finished_at = NULL, error = NULL, owner = ? WHERE id = ?",
                       (current_owner(), run_id))
            _materialise(db, run_id)  # its tasks' rows may be written again: their events become rows of their own
            return int(db.execute("SELECT MAX(seq) FROM events WHERE run_id = ?", (run_id,)).fetchone()[0] or 0)

        return self.commit(write, what=f"run {run_id}'s resumption")

    def write_batch(self, *, events: Sequence[tuple[Any, ...]] = (), tasks: Sequence[tuple[Any, ...]] = (),
                    attempts: Sequence[tuple[Any, ...]] = (), run: tuple[Any, ...] | None = None,
                    cache: Sequence[tuple[Any, ...]] = (), dead: Sequence[tuple[Any, ...]] = (),
                    audit: Sequence[tuple[Any, ...]] = (), seal: AuditSeal | None = None,
                    origins: Sequence[tuple[Any, ...]] = (), logs: Sequence[tuple[Any, ...]] = (),
                    pauses: Sequence[float] = COMMIT_PAUSES) -> None:
        """Append events and upsert task, attempt, cache and dead-letter rows in one transaction.

        Rows are tuples in table column order (``dead`` without the id and replay
        columns). ``run`` is ``(status, finished_at, error, summary_json, run_id)`` to
        finish the run in the same transaction. ``audit`` rows ``(ts, run_id, task_id,
        action, detail_json)`` are appended to the audit chain, linked by ``seal``; ``origins`` are
        :meth:`record_file_origins` rows; ``logs`` are task log rows ``(run_id, task_id, item, attempt,
        ts, level, source, message)``.
        Committed by :meth:`commit` (tried again after each of ``pauses``); rows with
        text UTF-8 cannot encode are written escaped.
        """
        batch = {"events": events, "tasks": tasks, "attempts": attempts, "cache": cache, "dead": dead,
                 "audit": audit, "origins": origins, "logs": logs}
        def what() -> str:
            return f"{_count(batch)} of run {run[4]}" if run is not None else _count(batch)

        try:
            self.commit(lambda db: self._insert(db, run=run, seal=seal, **batch), what=what, pauses=pauses)
        except UnicodeEncodeError:  # a lone surrogate: escaped (the engine's JSON text never has one)
            batch = {name: [_storable_row(r) for r in rows] for name, rows in batch.items()}
            run = None if run is None else _storable_row(run)
            self.commit(lambda db: self._insert(db, run=run, seal=seal, **batch), what=what, pauses=pauses)

    def _insert(self, db: Connection, *, events: Sequence[tuple[Any, ...]], tasks: Sequence[tuple[Any, ...]],
                attempts: Sequence[tuple[Any, ...]], run: tuple[Any, ...] | None, cache: Sequence[tuple[Any, ...]],
                dead: Sequence[tuple[Any, ...]], audit: Sequence[tuple[Any, ...]], seal: AuditSeal | None,
                origins: Sequence[tuple[Any, ...]] = (), logs: Sequence[tuple[Any, ...]] = ()) -> None:
        """:meth:`write_batch`'s statements, inside its transaction."""
        if audit:
            self._append_audit(db, audit, seal)
        if origins:
            db.executemany("INSERT INTO file_origins VALUES (?,?,?,?,?,?)", origins)
        if cache:
            db.executemany("INSERT OR REPLACE INTO cache VALUES (?,?,?,?)", cache)
        if dead:
            db.executemany("INSERT INTO dead_letters (kind, run_id, task_id, topic, inputs, error_class, error, "
                           "created_at) VALUES (?,?,?,?,?,?,?,?)", dead)
        if tasks:
            db.executemany("INSERT OR REPLACE INTO tasks VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", tasks)
        if attempts:
            db.executemany("INSERT OR REPLACE INTO attempts VALUES (?,?,?,?,?,?,?,?,?)", attempts)
        if events:
            db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?)", events)
        if logs:
            db.executemany("INSERT INTO task_logs (run_id, task_id, item, attempt, ts, level, source, message) "
                           "VALUES (?,?,?,?,?,?,?,?)", logs)
        if run is not None:
            db.execute("UPDATE runs SET status = ?, finished_at = ?, error = ?, summary = ? WHERE id = ?", run)

    def fail_run(self, run_id: str, error: str, *, unstored: dict[str, int] | None = None,
                 pauses: Sequence[float] = COMMIT_PAUSES) -> None:
        """Mark a run as failed after the fact (it went over ``max_cost``; its rows could not all be stored).

        ``unstored`` counts, by kind (``events``, ``tasks``, ``audit``, …), rows of the
        run that were lost: kept in its summary, where :meth:`incomplete_runs` finds them.
        """
        error = storable(error)
        if unstored is None:
            sql, args = "UPDATE runs SET status = 'failed', error = ? WHERE id = ?", (error, run_id)
        else:
            sql = ("UPDATE runs SET status = 'failed', finished_at = COALESCE(finished_at, ?), error = ?, "
                   "summary = json_set(COALESCE(summary, '{}'), '$.unstored', json(?)) WHERE id = ?")
            args = (time.time(), error, json.dumps(unstored), run_id)
        self.commit(lambda db: db.execute(sql, args), what=f"run {run_id}'s failure", pauses=pauses)

    def append_audit(self, rows: Sequence[tuple[Any, ...]], seal: AuditSeal) -> None:
        """Append ``(ts, run_id, task_id, action, detail_json)`` rows to the audit chain (own transaction)."""
        self.write_batch(audit=rows, seal=seal)

    @staticmethod
    def _append_audit(db: Connection, rows: Sequence[tuple[Any, ...]], seal: AuditSeal | None) -> None:
        # The head is read inside the writer's BEGIN IMMEDIATE: concurrent runs extend one chain in commit order.
        if seal is None:
            raise StoreError("audit rows need the chain's seal function")
        head = db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        sealed = seal(0, None, rows) if head is None else seal(head[0], head[1], rows)
        db.executemany("INSERT INTO audit VALUES (?,?,?,?,?,?,?,?)", sealed)
        db.execute("INSERT OR REPLACE INTO audit_head (id, seq, hash) VALUES (1, ?, ?)", (sealed[-1][0], sealed[-1][7]))

    def record_file_origins(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Record files written: ``(real_path, sha256 or None, origins_json, run_id, task_id, written_at)`` rows."""
        self.commit(lambda db: db.executemany("INSERT INTO file_origins VALUES (?,?,?,?,?,?)", rows),
                    what=f"{len(rows)} file origin rows")

    def file_origins(self, path: str, sha256: str) -> tuple[frozenset[str], bool] | None:
        """What a file read back carries: the untrusted origins of its last recorded write, and whether it is unchanged.

        ``None`` when goatclaw never wrote that path and no untrusted write made that content.
        A file changed since its last write (copied over, edited) also carries the origins of
        every untrusted write of the same content elsewhere.
        """
        last = self.db.execute("SELECT sha256, origins FROM file_origins WHERE path = ? ORDER BY written_at DESC, "
                               "rowid DESC LIMIT 1", (path,)).fetchone()
        if last is not None and last[0] == sha256:
            return frozenset(json.loads(last[1])), True
        same = self.db.execute("SELECT origins FROM file_origins WHERE sha256 = ? AND origins != '[]'", (sha256,))
        found = frozenset().union(*(json.loads(r[0]) for r in same))
        if last is None and not found:
            return None
        return found | (frozenset(json.loads(last[1])) if last is not None else frozenset()), False

    # -- reading ---------------------------------------------------------------------

    def request_approval(self, run_id: str, task_id: str, evidence: Mapping[str, Any], *,
                         timeout: float | None = None, now: float | None = None) -> None:
        """Store (or renew, undecided) the approval request of ``task_id`` in ``run_id``."""
        row = (run_id, task_id, time.time() if now is None else now, timeout, json.dumps(evidence, default=str))
        self.commit(lambda db: db.execute(
            "INSERT INTO approvals (run_id, task_id, requested_at, timeout, evidence) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (run_id, task_id) DO UPDATE SET requested_at = excluded.requested_at, "
            "timeout = excluded.timeout, evidence = excluded.evidence WHERE decision IS NULL", row),
            what=f"the approval request of {run_id}/{task_id}")

    def approvals(self, run_id: str | None = None, *, waiting: bool = True) -> list[dict[str, Any]]:
        """Approval requests (only undecided ones unless ``waiting=False``), oldest first."""
        sql, args = "SELECT * FROM approvals WHERE 1 = 1", []
        if waiting:
            sql += " AND decision IS NULL"
        if run_id is not None:
            sql += " AND run_id = ?"
            args.append(run_id)
        cur = self.db.execute(sql + " ORDER BY requested_at", args)
        names = [c[0] for c in cur.description]
        out = []
        for r in cur.fetchall():
            row = dict(zip(names, r, strict=True))
            row["evidence"] = _loads_or(row["evidence"])
            row["inputs"] = _loads(row["inputs"])
            out.append(row)
        return out

    def decide_approval(self, run_id: str, task_id: str, decision: str, *, by: str,
                        inputs: Mapping[str, Any] | None = None, reason: str | None = None,
                        now: float | None = None, audit: tuple[Any, ...] | None = None,
                        seal: AuditSeal | None = None) -> bool:
        """Record ``approved``/``rejected`` on an undecided request; False if none was waiting.

        ``audit`` is the decision's audit row ``(ts, run_id, task_id, action, detail_json)``,
        linked by ``seal`` and committed in the same transaction, only if the decision was recorded.
        """
        if decision not in ("approved", "rejected"):
            raise ValueError(f"decision must be approved or rejected, not {decision!r}")
        row = (decision, by, time.time() if now is None else now,
               None if inputs is None else json.dumps(dict(inputs), default=str), reason, run_id, task_id)

        def write(db: Connection) -> bool:
            cur = db.execute("UPDATE approvals SET decision = ?, decided_by = ?, decided_at = ?, inputs = ?, "
                             "reason = ? WHERE run_id = ? AND task_id = ? AND decision IS NULL", row)
            if cur.rowcount and audit is not None:
                self._append_audit(db, [audit], seal)
            return bool(cur.rowcount)

        return self.commit(write, what=f"the approval decision of {run_id}/{task_id}")

    # -- who may use the server (goatclaw.server.auth) ----------------------------------------

    def add_user(self, name: str, password: str, totp_secret: str | None, scopes: Sequence[str],
                 projects: Sequence[str] | None, *, now: float | None = None) -> bool:
        """Add a user (``password``: its argon2 hash); False when the name is taken."""
        row = (name, password, totp_secret, json.dumps(list(scopes)),
               None if projects is None else json.dumps(list(projects)), time.time() if now is None else now)
        cur = self.commit(lambda db: db.execute(
            "INSERT INTO users (name, password, totp_secret, scopes, projects, created_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO NOTHING", row), what=f"the user {name}")
        return bool(cur.rowcount)

    def user(self, name: str) -> dict[str, Any] | None:
        """One user's row (``scopes`` and ``projects`` parsed), or None."""
        rows = self._auth_rows("SELECT * FROM users WHERE name = ?", (name,))
        return rows[0] if rows else None

    def users(self) -> list[dict[str, Any]]:
        """Every user, by name."""
        return self._auth_rows("SELECT * FROM users ORDER BY name", ())

    def set_user(self, name: str, *, password: str | None = None, disabled_at: float | bool | None = False,
                 totp_secret: str | None = None) -> bool:
        """Change a user's password hash, disabled time (``None``: enabled again) or TOTP secret; False if none."""
        sets: list[str] = []
        args: list[Any] = []
        if password is not None:
            sets.append("password = ?")
            args.append(password)
        if totp_secret is not None:
            sets.append("totp_secret = ?")
            args.append(totp_secret)
        if disabled_at is not False:
            sets.append("disabled_at = ?")
            args.append(disabled_at)
        if not sets:
            return self.user(name) is not None
        cur = self.commit(lambda db: db.execute(f"UPDATE users SET {', '.join(sets)} WHERE name = ?", (*args, name)),
                          what=f"the user {name}")
        return bool(cur.rowcount)

    def use_totp_step(self, name: str, step: int) -> bool:
        """Take TOTP time step ``step`` for ``name`` once: False when it (or a later one) was used already."""
        cur = self.commit(lambda db: db.execute("UPDATE users SET totp_step = ? WHERE name = ? AND totp_step < ?",
                                                (step, name, step)), what=f"the user {name}'s last code")
        return bool(cur.rowcount)

    def add_token(self, token_id: str, name: str, digest: str, scopes: Sequence[str],
                  projects: Sequence[str] | None, *, created_by: str | None = None,
                  expires_at: float | None = None, now: float | None = None) -> None:
        """Store an API token by its public id (``digest``: the SHA-256 of its secret, never the secret)."""
        row = (token_id, name, digest, json.dumps(list(scopes)),
               None if projects is None else json.dumps(list(projects)), time.time() if now is None else now,
               created_by, expires_at)
        self.commit(lambda db: db.execute(
            "INSERT INTO api_tokens (id, name, hash, scopes, projects, created_at, created_by, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row), what=f"the token {name}")

    def token(self, token_id: str) -> dict[str, Any] | None:
        """One token's row by its public id, or None."""
        rows = self._auth_rows("SELECT * FROM api_tokens WHERE id = ?", (token_id,))
        return rows[0] if rows else None

    def tokens(self) -> list[dict[str, Any]]:
        """Every token (revoked ones too), oldest first."""
        return self._auth_rows("SELECT * FROM api_tokens ORDER BY created_at, id", ())

    def revoke_token(self, ref: str, *, now: float | None = None) -> int:
        """Revoke the tokens whose id or name is ``ref`` (not yet revoked); how many."""
        when = time.time() if now is None else now
        cur = self.commit(lambda db: db.execute(
            "UPDATE api_tokens SET revoked_at = ? WHERE (id = ? OR name = ?) AND revoked_at IS NULL",
            (when, ref, ref)), what=f"the revocation of token {ref}")
        return int(cur.rowcount)

    def add_session(self, digest: str, user: str, *, expires_at: float, client: str | None = None,
                    now: float | None = None) -> None:
        """Store a browser session by the SHA-256 of its cookie."""
        row = (digest, user, time.time() if now is None else now, expires_at, client)
        self.commit(lambda db: db.execute("INSERT INTO sessions (hash, user, created_at, expires_at, client) "
                                          "VALUES (?, ?, ?, ?, ?)", row), what=f"a session of {user}")

    def session(self, digest: str) -> dict[str, Any] | None:
        """A session's row by the SHA-256 of its cookie, or None."""
        cur = self.db.execute("SELECT hash, user, created_at, expires_at, revoked_at, client FROM sessions "
                              "WHERE hash = ?", (digest,))
        row = cur.fetchone()
        return None if row is None else dict(zip(("hash", "user", "created_at", "expires_at", "revoked_at",
                                                  "client"), row, strict=True))

    def revoke_sessions(self, *, digest: str | None = None, user: str | None = None,
                        now: float | None = None) -> int:
        """Revoke one session (by its hash) or every session of ``user``; how many were live."""
        if (digest is None) == (user is None):
            raise ValueError("give exactly one of digest and user")
        column, value = ("hash", digest) if digest is not None else ("user", user)
        when = time.time() if now is None else now
        cur = self.commit(lambda db: db.execute(
            f"UPDATE sessions SET revoked_at = ? WHERE {column} = ? AND revoked_at IS NULL AND expires_at > ?",
            (when, value, when)), what="a session's revocation")
        return int(cur.rowcount)

    def _auth_rows(self, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        cur = self.db.execute(sql, args)
        names = [c[0] for c in cur.description]
        out = []
        for r in cur.fetchall():
            row = dict(zip(names, r, strict=True))
            row["scopes"] = _loads(row["scopes"]) or []
            row["projects"] = _loads(row["projects"])
            out.append(row)
        return out
    def schedule_state(self, pipeline: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        """What the scheduler remembers, by ``(pipeline, schedule)`` (of one pipeline file's key, or all)."""
        sql, args = "SELECT * FROM schedules", ()
        if pipeline is not None:
            sql, args = sql + " WHERE pipeline = ?", (pipeline,)
        cur = self.db.execute(sql, args)
        names = [c[0] for c in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        return {(r["pipeline"], r["schedule"]): r for r in rows}

    def mark_schedule(self, pipeline: str, schedule: str, *, cron: str, done_until: float,
                      fired: float | None = None, run: str | None = None, status: str | None = None,
                      now: float | None = None) -> None:
        """Record that every fire of a schedule up to ``done_until`` is handled; ``fired``: one was started then.

        ``done_until`` never moves back. ``run``/``status`` are the last fired run's id and how it
        ended: a new ``fired`` clears them unless given; a call without ``fired`` fills them in.
        """
        row = (pipeline, schedule, cron, done_until, fired, run, status, time.time() if now is None else now)
        self.commit(lambda db: db.execute(
            "INSERT INTO schedules (pipeline, schedule, cron, done_until, last_fire, last_run, last_status, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pipeline, schedule) DO UPDATE SET "
            "cron = excluded.cron, done_until = MAX(done_until, excluded.done_until), "
            "last_run = CASE WHEN excluded.last_fire IS NOT NULL THEN excluded.last_run "
            "ELSE COALESCE(excluded.last_run, last_run) END, "
            "last_status = CASE WHEN excluded.last_fire IS NOT NULL THEN excluded.last_status "
            "ELSE COALESCE(excluded.last_status, last_status) END, "
            "last_fire = COALESCE(excluded.last_fire, last_fire), updated_at = excluded.updated_at", row),
            what=f"the state of schedule {pipeline}#{schedule}")

    def runs(self, *, limit: int = 20, pipeline: str | None = None) -> list[RunRow]:
        """The latest runs, newest first."""
        sql = "SELECT * FROM runs"
        args: tuple[Any, ...] = ()
        if pipeline:
            sql += " WHERE pipeline = ?"
            args = (pipeline,)
        sql += " ORDER BY started_at DESC LIMIT ?"
        return [_run_row(r) for r in self.db.execute(sql, (*args, limit))]

    def running(self) -> list[RunRow]:
        """The runs stored as ``running`` (some may be :attr:`RunRow.interrupted`), newest first."""
        return [_run_row(r) for r in self.db.execute("SELECT * FROM runs WHERE status = 'running' "
                                                     "ORDER BY started_at DESC")]

    def run(self, ref: str) -> RunRow | None:
        """A run by id, unique id prefix, or ``last`` (the latest run that is not a pipeline tool's child run)."""
        if ref in ("last", "latest"):
            row = self.db.execute("SELECT * FROM runs r WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.run_id = r.id"
                                  " AND e.topic = 'run.parent') ORDER BY started_at DESC LIMIT 1").fetchone()
            return _run_row(row) if row else None
        pattern = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self.db.execute("SELECT * FROM runs WHERE id = ? OR id LIKE ? ESCAPE '\\' ORDER BY started_at DESC "
                               "LIMIT 2", (ref, pattern)).fetchall()
        exact = [r for r in rows if r[0] == ref]
        if exact:
            return _run_row(exact[0])
        if len(rows) > 1:
            raise StoreError(f"run id prefix '{ref}' is ambiguous")
        return _run_row(rows[0]) if rows else None

    def tasks(self, run_id: str) -> list[TaskRow]:
        """Every stored task result of a run, in the order they started."""
        rows = self.db.execute("SELECT * FROM tasks WHERE run_id = ? ORDER BY started_at IS NULL, started_at, task_id",
                               (run_id,))
        return [TaskRow(r[0], r[1], r[2], r[3], r[4], r[5], _loads(r[6]), r[7], r[8], r[9]) for r in rows]

    def attempts(self, run_id: str, task_id: str | None = None) -> list[dict[str, Any]]:
        """Attempt rows of a run (optionally one task)."""
        sql = "SELECT * FROM attempts WHERE run_id = ?" + (" AND task_id = ?" if task_id else "")
        args = (run_id, task_id) if task_id else (run_id,)
        cols = ("run_id", "task_id", "item", "attempt", "status", "started_at", "finished_at", "error_class", "error")
        return [dict(zip(cols, r, strict=True)) for r in self.db.execute(sql + " ORDER BY started_at", args)]

    def events(self, run_id: str, *, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Events of a run with ``seq > after``, in order (those its task rows stand for included)."""
        sql = _EVENTS_SQL + (f" LIMIT {int(limit)}" if limit else "")
        return [{"seq": s, "ts": ts, "topic": t, "task": task,
                 "data": json.loads(plain_end(attempts, duration)) if kind == _AN_END else _loads(d) or {}}
                for s, ts, t, task, d, kind, attempts, duration in self.db.execute(sql, (run_id, after))]

    def logs(self, run_id: str, task_id: str | None = None, *, after: int = 0) -> list[dict[str, Any]]:
        """A run's task log lines (optionally one task's) with ``id > after``, in the order they were logged."""
        sql = ("SELECT id, task_id, item, attempt, ts, level, source, message FROM task_logs "
               "WHERE run_id = ? AND id > ?" + (" AND task_id = ?" if task_id else "") + " ORDER BY id")
        args = (run_id, after, task_id) if task_id else (run_id, after)
        cols = ("id", "task", "item", "attempt", "ts", "level", "source", "message")
        rows = [dict(zip(cols, r, strict=True)) for r in self.db.execute(sql, args)]
        for row in rows:
            row["item"] = None if row["item"] == -1 else row["item"]
        return rows

    def untrusted_tasks(self, run_id: str) -> dict[str, tuple[list[str], str]]:
        """Per task of a run: the untrusted origins its output carried at run time, and how (``task.untrusted``)."""
        rows = self.db.execute("SELECT task_id, data FROM events WHERE run_id = ? AND topic = 'task.untrusted' "
                               "ORDER BY seq", (run_id,))
        out: dict[str, tuple[list[str], str]] = {}
        for task_id, data in rows:
            got = _loads(data) or {}
            out[task_id] = (list(got.get("origins") or ()), str(got.get("how") or ""))
        return out

    def last_unfinished(self, pipeline: str) -> RunRow | None:
        """The newest run of ``pipeline`` that did not succeed (what ``--resume`` picks)."""
        row = self.db.execute(f"SELECT * FROM runs WHERE pipeline = ? AND status IN ({','.join('?' * len(UNFINISHED))})"
                              " ORDER BY started_at DESC LIMIT 1", (pipeline, *UNFINISHED)).fetchone()
        return _run_row(row) if row else None

    # -- the task cache ----------------------------------------------------------------

    def cached(self, key: str, ttl: float | None = None) -> str | None:
        """The stored output JSON under ``key`` (younger than ``ttl`` seconds if given), else None."""
        if ttl is None:
            row = self.db.execute("SELECT output FROM cache WHERE key = ?", (key,)).fetchone()
        else:
            row = self.db.execute("SELECT output FROM cache WHERE key = ? AND created_at >= ?",
                                  (key, time.time() - ttl)).fetchone()
        return None if row is None else str(row[0])

    def llm_cached(self, key: str, ttl: float | None = None) -> str | None:
        """The cached LLM answer (JSON text) for a request hash (younger than ``ttl`` seconds if given), if any."""
        if ttl is None:
            row = self.db.execute("SELECT response FROM llm_cache WHERE key = ?", (key,)).fetchone()
        else:
            row = self.db.execute("SELECT response FROM llm_cache WHERE key = ? AND created_at >= ?",
                                  (key, time.time() - ttl)).fetchone()
        return row[0] if row else None

    def llm_cache_put(self, key: str, model: str, response: str) -> None:
        """Cache an LLM answer (JSON text) under its request hash."""
        row = (key, model, storable(response), time.time())
        self.commit(lambda db: db.execute("INSERT OR REPLACE INTO llm_cache (key, model, response, created_at) "
                                          "VALUES (?, ?, ?, ?)", row), what=f"an LLM answer ({model})")

    # -- rate windows ------------------------------------------------------------------

    def rate_window(self, name: str, window: float, decide: Callable[[list[tuple[float, int]], float], float],
                    weight: int) -> float:
        """Admit one event of ``weight`` to the window ``name`` if ``decide(events, now)`` says 0; that wait.

        One ``BEGIN IMMEDIATE`` transaction: events older than ``window`` seconds go, the
        rest (oldest first) are read, and the event is recorded when it may go now, so
        processes sharing the store admit events one at a time against the same rows.
        """
        def admit(db: Connection) -> float:
            now = time.time()
            db.execute("DELETE FROM rate_events WHERE name = ? AND at <= ?", (name, now - window))
            events = [(float(at), int(w)) for at, w in db.execute(
                "SELECT at, weight FROM rate_events WHERE name = ? ORDER BY at", (name,))]
            wait = decide(events, now)
            if wait <= 0:
                db.execute("INSERT INTO rate_events (name, at, weight) VALUES (?, ?, ?)", (name, now, weight))
            return wait

        return self.commit(admit, what=f"the rate window {name}")

    def cache_entries(self, kind: str | None = None, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Both caches' rows, newest first: ``{kind: task|llm, key, name (plugin or model), bytes, created_at}``."""
        parts = []
        if kind in (None, "task"):
            parts.append("SELECT 'task', key, plugin, length(output), created_at FROM cache")
        if kind in (None, "llm"):
            parts.append("SELECT 'llm', key, model, length(response), created_at FROM llm_cache")
        sql = " UNION ALL ".join(parts) + " ORDER BY 5 DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return [{"kind": k, "key": key, "name": name, "bytes": int(size or 0), "created_at": created}
                for k, key, name, size, created in self.db.execute(sql)]

    def clear_caches(self, kind: str | None = None, *, older_than: float | None = None) -> dict[str, int]:
        """Forget cached task outputs and/or LLM answers (all, or older than ``older_than`` seconds); counts."""
        tables = {"task": "cache", "llm": "llm_cache"}
        counts = {}
        with self.transaction() as db:
            for name, table in tables.items():
                if kind not in (None, name):
                    continue
                if older_than is None:
                    counts[name] = int(db.execute(f"DELETE FROM {table}").rowcount)
                else:
                    counts[name] = int(db.execute(f"DELETE FROM {table} WHERE created_at < ?",
                                                  (time.time() - older_than,)).rowcount)
        return counts

    def cached_many(self, keys: Sequence[str]) -> dict[str, tuple[str, float]]:
        """Stored ``(output JSON, created_at)`` for those of ``keys`` that the cache holds (batched reads)."""
        found: dict[str, tuple[str, float]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            for key, output, created in self.db.execute(
                    f"SELECT key, output, created_at FROM cache WHERE key IN ({','.join('?' * len(chunk))})", chunk):
                found[key] = (output, created)
        return found

    def clear_cache(self, *, older_than: float | None = None) -> int:
        """Forget cached outputs (all, or those older than ``older_than`` seconds); how many."""
        with self.transaction() as db:
            if older_than is None:
                return int(db.execute("DELETE FROM cache").rowcount)
            return int(db.execute("DELETE FROM cache WHERE created_at < ?", (time.time() - older_than,)).rowcount)

    # -- dead letters ----------------------------------------------------------------

    def dead_letters(self, *, limit: int = 50, run_id: str | None = None) -> list[DeadLetter]:
        """The newest dead letters (of one run if given)."""
        sql = f"SELECT {_DEAD_COLS} FROM dead_letters" + (" WHERE run_id = ?" if run_id else "")
        args: tuple[Any, ...] = (run_id,) if run_id else ()
        return [_dead(r) for r in self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))]

    def dead_letter(self, letter_id: int) -> DeadLetter | None:
        """One dead letter by id."""
        row = self.db.execute(f"SELECT {_DEAD_COLS} FROM dead_letters WHERE id = ?", (letter_id,)).fetchone()
        return _dead(row) if row else None

    def mark_replayed(self, letter_id: int, status: str) -> None:
        """Note that a dead letter was replayed, and how that went."""
        row = (time.time(), status, letter_id)
        self.commit(lambda db: db.execute("UPDATE dead_letters SET replayed_at = ?, replay_status = ? WHERE id = ?",
                                          row), what=f"dead letter {letter_id}'s replay")

    # -- circuit breakers --------------------------------------------------------------

    def breakers(self) -> list[dict[str, Any]]:
        """Every breaker's stored state."""
        cols = ("key", "state", "failures", "opened_at", "probe_until", "successes", "updated_at")
        rows = [dict(zip(cols, r, strict=True)) for r in self.db.execute(f"SELECT {', '.join(cols)} FROM breakers "
                                                                         "ORDER BY key")]
        for r in rows:
            r["failures"] = json.loads(r["failures"])
        return rows

    def update_breaker(self, key: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]) -> Any:
        """Read a breaker, apply ``change`` and write the result, in one ``BEGIN IMMEDIATE`` transaction.

        ``change`` gets the current row (or ``None``) and returns the new row (or ``None``
        to leave it); the new row is returned.
        """
        def write(db: Connection) -> Any:
            row = db.execute("SELECT state, failures, opened_at, probe_until, successes FROM breakers WHERE key = ?",
                             (key,)).fetchone()
            current = None if row is None else {"key": key, "state": row[0], "failures": json.loads(row[1]),
                                                "opened_at": row[2], "probe_until": row[3], "successes": row[4]}
            new = change(current)
            if new is not None:
                db.execute("INSERT OR REPLACE INTO breakers (key, state, failures, opened_at, probe_until, successes, "
                           "updated_at) VALUES (?,?,?,?,?,?,?)",
                           (key, new["state"], json.dumps(new["failures"]), new.get("opened_at"),
                            new.get("probe_until"), new.get("successes", 0), time.time()))
            return new if new is not None else current

        return self.commit(write, what=f"the breaker {key}")

    def reset_breakers(self, key: str | None = None) -> int:
        """Close (forget) one breaker, or all of them; how many were reset."""
        with self.transaction() as db:
            cur = db.execute("DELETE FROM breakers" + (" WHERE key = ?" if key else ""), (key,) if key else ())
            return int(cur.rowcount)

    def audit_rows(self, *, run_id: str | None = None, after: int = 0,
                   limit: int | None = None) -> Iterator[tuple[Any, ...]]:
        """Audit rows ``(seq, ts, run_id, task_id, action, detail, prev, hash)`` in chain order (one run's if given)."""
        sql = "SELECT seq, ts, run_id, task_id, action, detail, prev, hash FROM audit WHERE seq > ?"
        args: tuple[Any, ...] = (after,)
        if run_id is not None:
            sql += " AND run_id = ?"
            args += (run_id,)
        sql += " ORDER BY seq" + (f" LIMIT {int(limit)}" if limit else "")
        yield from self.db.execute(sql, args)

    def audit_head(self) -> tuple[int, str] | None:
        """The chain's recorded head ``(seq, hash)``, or ``None`` before the first row."""
        row = self.db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def incomplete_runs(self) -> list[tuple[str, str]]:
        """Runs whose rows are not all in the store, newest first: ``(run id, why)``.

        A run whose last commit failed for good says so: an audit row ``store.lost``
        (in the chain, so it cannot be removed unseen) and ``unstored`` in its summary
        count what was lost. A run left ``running`` by a process that is gone (a kill -9,
        or a full disk that took even the run's failure) may have lost what it had not
        committed yet; until it is resumed it is incomplete too.
        """
        found: dict[str, str] = {}
        for run_id, detail in self.db.execute("SELECT run_id, detail FROM audit WHERE action = ? ORDER BY seq DESC",
                                              (LOST_ACTION,)):
            data = _loads_or(detail)
            found.setdefault(str(run_id), f"lost {_lost_text(data.get('lost'))} ({data.get('cause', 'cause unknown')})")
        for run_id, summary in self.db.execute("SELECT id, summary FROM runs WHERE summary LIKE '%\"unstored\"%' "
                                               "ORDER BY started_at DESC"):
            lost = _loads_or(summary).get("unstored")
            if lost is not None:
                found.setdefault(str(run_id), f"lost {_lost_text(lost)} (a commit failed for good)")
        for run in self.running():
            if run.interrupted:
                found.setdefault(run.id, "it was interrupted (its process is gone) before it finished storing its "
                                         "rows; --resume finishes it")
        return list(found.items())

    def integrity(self) -> str:
        """``PRAGMA integrity_check``'s answer (``ok`` when healthy)."""
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])


@dataclass(frozen=True)
class DeadLetter:
    """A task that failed for good (``kind`` ``task``) or a subscriber that raised (``subscriber``).

    ``inputs`` are the task's rendered ``with:`` arguments (secrets masked), or the event
    the subscriber was given.
    """

    id: int
    kind: str
    run_id: str | None
    task_id: str | None
    topic: str | None
    inputs: Any
    error_class: str | None
    error: str | None
    created_at: float
    replayed_at: float | None
    replay_status: str | None


_DEAD_COLS = ("id, kind, run_id, task_id, topic, inputs, error_class, error, created_at, replayed_at, "
              "replay_status")


def _materialise(db: Connection, run_id: str) -> None:
    """The events ``run_id``'s task rows stand for, stored as rows of ``events`` (the rows' numbers cleared)."""
    rows = [(run_id, seq, ts, topic, task_id, plain_end(attempts, duration) if kind == _AN_END else None)
            for seq, ts, topic, task_id, _, kind, attempts, duration in db.execute(_EVENTS_SQL, (run_id, 0))
            if kind != _STORED]
    if rows:
        db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?)", rows)
        db.execute("UPDATE tasks SET started_seq = NULL, finished_seq = NULL WHERE run_id = ? "
                   "AND (started_seq IS NOT NULL OR finished_seq IS NOT NULL)", (run_id,))


def _dead(r: Sequence[Any]) -> DeadLetter:
    return DeadLetter(r[0], r[1], r[2], r[3], r[4], _loads(r[5]), r[6], r[7], r[8], r[9], r[10])


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _loads_or(text: str | None) -> dict[str, Any]:
    """JSON text that should hold an object, as one (``{}`` for anything else)."""
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _lost_text(lost: Any) -> str:
    """``{"events": 3, "audit": 1}`` as ``3 events, 1 audit row``."""
    if not isinstance(lost, dict) or not lost:
        return "rows"
    return describe_rows({name: n for name, n in lost.items() if isinstance(n, int)}) or "rows"


def _run_row(r: Sequence[Any]) -> RunRow:
    return RunRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], _loads(r[7]) or {}, r[8], _loads(r[9]) or {}, r[10])


def _transient(exc: sqlean.Error, took: float) -> bool:
    """Whether SQLite's error, after a try of ``took`` seconds, may pass if the commit is tried again."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(_TRANSIENT) or (name.startswith(_BUSY) and took < 1.0)


def describe_rows(counts: Mapping[str, int]) -> str:
    """``{"events": 3, "tasks": 1}`` (rows by :meth:`Store.write_batch` argument) as ``3 events, 1 task row``."""
    nouns = {"events": "event", "tasks": "task row", "attempts": "attempt", "cache": "cached output",
             "dead": "dead letter", "audit": "audit row", "logs": "log line"}
    return ", ".join(f"{n} {nouns.get(name, name)}{'' if n == 1 else 's'}" for name, n in counts.items() if n)


def _count(batch: Mapping[str, Sequence[Any]]) -> str:
    return describe_rows({name: len(rows) for name, rows in batch.items()}) or "the run's end"


def _storable_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(storable(v) if isinstance(v, str) else v for v in row)


def _newer_store(path: Path, unknown: set[str]) -> str:
    """Why a store with migrations this goatclaw does not know is refused, naming both versions."""
    from goatclaw import __version__

    newest = max(unknown)
    return (f"the store {path} was written by a newer goatclaw: its schema is at migration {newest}, and this "
            f"goatclaw ({__version__}) knows migrations up to {MIGRATIONS[-1][0]}; upgrade goatclaw to use this "
            "store (nothing was run or written)")


#: How long opening a store waits for another connection that is switching a new store to WAL.
_WAL_WAIT_SECONDS = 30.0


def _set_wal(db: Connection) -> None:
    """``PRAGMA journal_mode=WAL``, waiting while another connection switches a brand-new file.

    SQLite answers "database is locked" at once there, without calling the busy handler,
    so concurrent first runs on a new store would fail without this loop.
    """
    deadline = time.monotonic() + _WAL_WAIT_SECONDS
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlean.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)
