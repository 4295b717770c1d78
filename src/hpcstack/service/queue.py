"""The build queue: start queued builds within the limits, follow them, record results.

One scheduler thread per service.  A queued build is claimed with a guarded
UPDATE (state queued -> running), so several services on one PostgreSQL never
start the same build twice.  A running build's ``job`` says which executor
handle runs it and which instance owns it (``local:4242@node1:8473``); every
instance writes a heartbeat.  On start-up, an instance's own builds that the
database says are running were interrupted by its crash or restart: what is
left of them is ended, and they are re-queued until ``max_attempts`` and failed
with that reason after.  Builds of an instance whose heartbeat stopped are
taken over the same way by any other (a Slurm job still running is followed,
not restarted); builds of live instances are never touched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select, update

from hpcstack.build.job import BuildRequest, BuildResult, job_argv, read_result, write_request
from hpcstack.errors import UserError
from hpcstack.files import tree_size
from hpcstack.service import db, store
from hpcstack.service.config import Settings
from hpcstack.service.executors import Job
from hpcstack.service.metrics import Metrics
from hpcstack.service.models import Kind, State
from hpcstack.service.signing import SiteSigner

log = logging.getLogger("u2cb")
HEARTBEAT_S = 10.0
GONE_AFTER_S = 60.0  # an instance silent this long is dead: its builds are taken over
CANCEL_REQUESTED = "cancel requested"


def owner_of(job: str | None) -> tuple[str | None, str | None]:
    """(executor handle, owning instance) of a row's ``job``: ``HANDLE@INSTANCE``.

    >>> owner_of("local:4242@node1:8473")
    ('local:4242', 'node1:8473')
    >>> owner_of("@node1:8473")  # claimed, not started yet
    (None, 'node1:8473')
    """
    if not job:
        return None, None
    handle, sep, instance = job.rpartition("@")
    if not sep:
        return job, None  # written by a version without instances: its own
    return handle or None, instance


def interrupted_state(attempts: int, max_attempts: int) -> tuple[State, str]:
    """What a build found running at start-up becomes (pure, for tests)."""
    if attempts < max_attempts:
        return State.QUEUED, (f"interrupted: the service stopped during the build; "
                              f"re-queued (attempt {attempts + 1} of {max_attempts})")
    return State.FAILED, (f"interrupted: the service stopped during the build, "
                          f"{attempts} attempts made")


class Scheduler:
    def __init__(self, settings: Settings, database: db.Database, executor,
                 sessions_of: Callable[[int], int] = lambda _uid: 0,
                 metrics: Metrics | None = None, signer: SiteSigner | None = None) -> None:
        self.settings = settings
        self.metrics = metrics  # builds started and ended, for GET /metrics
        self.signer = signer  # the site key: built images are signed after their job ends
        self.sessions_of = sessions_of  # a user's open connect sessions count as builds
        self.db = database
        self.executor = executor
        self.handles: dict[int, str] = {}
        self.deadlines: dict[int, float] = {}
        self.stopping: dict[int, tuple[State, str]] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.beaten = 0.0

    # --- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        with self.db.session() as s:
            db.beat(s, self.settings.instance)
        self.beaten = time.monotonic()
        self.recover(startup=True)
        self.thread = threading.Thread(target=self._loop, name="u2cb-scheduler", daemon=True)
        self.thread.start()

    def shutdown(self) -> None:
        self.stop_event.set()
        self.wake.set()
        if self.thread:
            self.thread.join(timeout=30)

    def recover(self, startup: bool = False) -> None:
        """Builds left ``running`` by a dead instance (this one before a restart, or
        another whose heartbeat stopped): clean up, then follow, re-queue or fail."""
        me = self.settings.instance
        with self.db.session() as s:
            alive = db.alive_instances(s, GONE_AFTER_S) | {me}
            for row in db.in_state(s, State.RUNNING):
                handle, owner = owner_of(row.job)
                mine = owner in (None, me)
                if (mine and not startup) or (not mine and owner in alive):
                    continue
                if handle and handle.startswith("slurm:") and self.executor.name == "slurm" \
                        and self.executor.alive(handle):
                    self.handles[row.id] = handle  # still running on the cluster: follow it
                    self.deadlines[row.id] = time.monotonic() + self.settings.build_time_limit
                    row.job = f"{handle}@{me}"
                    continue
                if mine and handle and handle.startswith(self.executor.name + ":"):
                    self.executor.adopt(handle)  # local processes: only ever our own
                state, reason = interrupted_state(row.attempts, self.settings.max_attempts)
                if not mine:
                    reason = reason.replace("the service stopped",
                                            f"service instance {owner} stopped")
                log.warning("%s/%s: %s", row.owner, row.name, reason)
                row.state, row.reason, row.job = state.value, reason, None
                if state is State.FAILED:
                    row.finished = db.now()
                    self._ended(row)
                store.remove(store.Paths(self.settings.containers_dir(), row.id).tmp)

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.tick()
            except Exception:  # keep scheduling; the error is in the service log
                log.exception("scheduler tick failed")
            self.wake.wait(self.settings.poll_interval)
            self.wake.clear()
        for key, handle in list(self.handles.items()):
            if self.executor.name == "local":
                self.executor.cancel(handle)
                self._record(key, State.QUEUED, "interrupted: the service shut down; "
                             "re-queued", finished=False)

    # --- one round ------------------------------------------------------------------

    def tick(self) -> None:
        with self.lock:
            if time.monotonic() - self.beaten >= HEARTBEAT_S:
                with self.db.session() as s:
                    db.beat(s, self.settings.instance)
                self.beaten = time.monotonic()
                self.recover()
            self._follow()
            self._start_queued()

    def _follow(self) -> None:
        for key in self._cancels_requested():
            self.stop(key, State.CANCELLED, "cancelled by the user")
        for key, handle in list(self.handles.items()):
            status = self.executor.poll(handle)
            if status is None:
                if time.monotonic() > self.deadlines[key]:
                    limit = self.settings.build_time_limit
                    self.stop(key, State.FAILED, f"time limit of {limit:g} s exceeded; "
                              "the build was killed")
                continue
            self._finish(key, status)

    def _cancels_requested(self) -> list[int]:
        """Our builds cancelled or deleted through another instance."""
        if not self.handles:
            return []
        with self.db.session() as s:
            rows = s.execute(select(db.ContainerRow.id, db.ContainerRow.reason).where(
                db.ContainerRow.id.in_(list(self.handles)))).all()
        present = {key: reason for key, reason in rows}
        return [key for key in self.handles
                if key not in present or present[key] == CANCEL_REQUESTED]

    def _start_queued(self) -> None:
        with self.db.session() as s:
            queued = db.in_state(s, State.QUEUED)
        for row in queued:
            if len(self.handles) >= self.settings.max_workers:
                return
            if not store.Paths(self.settings.containers_dir(), row.id).request.is_file():
                continue  # its record is in, its request not yet written: next tick
            with self.db.session() as s:
                busy = db.running_count(s, row.uid) + self.sessions_of(row.uid)
                if busy >= self.settings.max_builds_per_user:
                    continue
                claimed = s.execute(update(db.ContainerRow)
                                    .where(db.ContainerRow.id == row.id,
                                           db.ContainerRow.state == State.QUEUED.value)
                                    .values(state=State.RUNNING.value, started=db.now(),
                                            attempts=db.ContainerRow.attempts + 1,
                                            job=f"@{self.settings.instance}"))
                if claimed.rowcount != 1:
                    continue
            if self.metrics is not None:
                self.metrics.started(row.created, db.now())
            self._launch(row)

    def _launch(self, row: db.ContainerRow) -> None:
        paths = store.Paths(self.settings.containers_dir(), row.id)
        try:
            handle = self.executor.start(self.job_for(row, paths))
        except Exception as err:
            self._record(row.id, State.FAILED, f"could not start the build: {err}")
            return
        self.handles[row.id] = handle
        self.deadlines[row.id] = time.monotonic() + self.settings.build_time_limit
        with self.db.session() as s:
            r = s.get(db.ContainerRow, row.id)
            if r is not None:
                r.job = f"{handle}@{self.settings.instance}"

    def job_for(self, row: db.ContainerRow, paths: store.Paths) -> Job:
        """The build job that makes this container, from the request checked at submission.

        The disk it may use is what the user's quota leaves now; it is enforced
        while the build runs.
        """
        store.remove(paths.tmp)
        paths.tmp.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        with paths.log.open("a") as fh:
            fh.write(f"INFO:    u2cb: build of {row.name} started {stamp} UTC "
                     f"(attempt {row.attempts + 1})\n")
        request = BuildRequest.model_validate_json(paths.request.read_text())
        with self.db.session() as s:
            others = db.usage(s, row.uid) - (row.usage or 0)
        request.limits.disk_bytes = max(0, self.settings.quota_bytes - others)
        paths.result.unlink(missing_ok=True)
        write_request(request, paths.request)
        return Job(key=str(row.id), argv=job_argv(paths.request), cwd=paths.dir,
                   log=paths.log, time_limit=self.settings.build_time_limit)

    # --- endings --------------------------------------------------------------------

    def stop(self, key: int, state: State, reason: str) -> None:
        """Cancel or time out a running build: end its process tree, record why."""
        handle = self.handles.get(key)
        if handle is None:
            return
        self.stopping[key] = (state, reason)
        self.executor.cancel(handle)
        status = self.executor.poll(handle)
        self._finish(key, -15 if status is None else status)

    def cancel(self, key: int) -> bool:
        """Cancel a build of this service; False when another instance runs it."""
        with self.lock:
            if key in self.handles:
                self.stop(key, State.CANCELLED, "cancelled by the user")
                return True
        return False

    def _finish(self, key: int, status: int) -> None:
        handle = self.handles.pop(key, None)
        self.deadlines.pop(key, None)
        stopped = self.stopping.pop(key, None)
        paths = store.Paths(self.settings.containers_dir(), key)
        store.remove(paths.tmp)
        if handle is None and stopped is None:
            return
        if stopped is not None:
            self._record(key, *stopped)
            return
        result = read_result(paths.result)
        if status == 0 and result is not None and result.ok:
            self._succeed(key, paths, result)
            return
        if result is not None and result.error is not None:
            reason = str(result.error.exception())
        else:
            reason = f"build failed with exit status {status}"
        self._record(key, State.FAILED, reason)

    def _succeed(self, key: int, paths: store.Paths, result: BuildResult) -> None:
        if self.signer is not None and paths.image.is_file() and result.sha256:
            try:
                result.sha256, result.size = self.signer.sign(paths.image)
            except UserError as err:
                self._record(key, State.FAILED, f"cannot sign the image: {err}")
                return
        with self.db.session() as s:
            row = s.get(db.ContainerRow, key)
            if row is None:
                return
            if row.kind == Kind.DEF.value and paths.image.is_file() and result.sha256:
                row.sha256, row.size = result.sha256, result.size
            elif row.kind == Kind.IMG.value and paths.sandbox.is_dir():
                row.size = result.size
            else:
                row.state, row.reason = State.FAILED.value, "the build left no image"
                row.finished = db.now()
                self._ended(row)
                return
            row.usage = tree_size(paths.dir)
            row.state, row.reason, row.finished, row.job = State.READY.value, None, \
                db.now(), None
            self._ended(row)

    def _record(self, key: int, state: State, reason: str, finished: bool = True) -> None:
        with self.db.session() as s:
            row = s.get(db.ContainerRow, key)
            if row is None:
                return
            row.state, row.reason, row.job = state.value, reason, None
            if finished:
                row.finished = db.now()
                self._ended(row)
            row.usage = tree_size(store.Paths(self.settings.containers_dir(), key).dir)

    def _ended(self, row: db.ContainerRow) -> None:
        if self.metrics is not None:
            self.metrics.ended(row.state, row.started, row.finished)
