"""The service's pure core (names, recipes, MUNGE output, queue rules) and its storage.

The storage tests run against SQLite (WAL) and a real PostgreSQL that a fixture
starts with Debian's ``initdb``/``pg_ctl`` as an unprivileged user in a temp dir.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import update

from hpcstack.errors import UserError
from hpcstack.service import auth, db, recipes
from hpcstack.service.config import Settings
from hpcstack.service.executors import LocalExecutor
from hpcstack.service.models import NAME_MAX, Kind, State, name_problem, upload_problem
from hpcstack.service.queue import (
    GONE_AFTER_S,
    Scheduler,
    interrupted_state,
    owner_of,
)

# --- names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["box", "gromacs-2020.4", "a", "x" * NAME_MAX, "A_b+c"])
def test_good_names(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize("name", ["", "a/b", "..", "a..b", "x" * 300, ".hidden", "-x",
                                  "sp ace", "tab\t", "nl\n", "ü"])
def test_bad_names(name: str) -> None:
    assert name_problem(name)


@given(st.text(max_size=80))
def test_accepted_names_are_safe_path_components(name: str) -> None:
    if name_problem(name) is None:
        assert "/" not in name and ".." not in name and 0 < len(name) <= NAME_MAX
        assert os.path.basename(name) == name and name not in (".", "..")


@given(st.text(max_size=60))
def test_accepted_upload_paths_stay_inside(path: str) -> None:
    if upload_problem(path) is None:
        assert os.path.normpath(os.path.join("/base", path)).startswith("/base/")


# --- recipes ---------------------------------------------------------------------------


def test_files_must_be_uploaded_and_relative() -> None:
    text = "Bootstrap: scratch\n%files\n    data/* /opt/\n"
    recipes.check_definition(text, "t.def", {"data/a.txt"})
    with pytest.raises(UserError, match=r"^t\.def:3: %files: data/\*: not uploaded"):
        recipes.check_definition(text, "t.def", set())
    with pytest.raises(UserError, match=r"^t\.def:3: %files: /etc/passwd: the build service"):
        recipes.check_definition("Bootstrap: scratch\n%files\n    /etc/passwd /x\n",
                                 "t.def", set())
    with pytest.raises(UserError, match=r"^t\.def:3: %files: \.\./x"):
        recipes.check_definition("Bootstrap: scratch\n%files\n    ../x /x\n", "t.def", set())


def test_bad_definition_is_file_line_message() -> None:
    with pytest.raises(UserError, match=r"^bad\.def:3: "):
        recipes.check_definition("Bootstrap: docker\nFrom: x\n%bogus\n", "bad.def",
                                 set())


def test_localimage_names_own_containers_in_the_model() -> None:
    """The model gets the path; the text (stored in the image) keeps the user's name."""
    text = "Bootstrap: localimage\nFrom: base\n%post\n    true\n"
    defn = recipes.check_definition(text, "l.def", set())
    pinned, readable = recipes.resolve_sources(defn, "l.def", set(),
                                               {"base": "/srv/1/image.sif"}.get)
    assert pinned.final.get("From") == "/srv/1/image.sif" and readable == ["/srv/1/image.sif"]
    assert pinned.final.post == defn.final.post
    for ref in ("base", "/srv/1/image.sif", "../1/image.sif", "theirs"):
        bad = recipes.check_definition(text.replace("base", ref), "l.def", set())
        with pytest.raises(UserError, match=r"^l\.def:2: From: .*localimage must name"):
            recipes.resolve_sources(bad, "l.def", set(), {}.get)


@pytest.mark.parametrize("agent", ["oci-archive", "docker-archive", "oci"])
def test_archives_come_from_uploads_only(agent: str) -> None:
    for ref in ("/tmp/x.tar", "../x.tar", "x.tar"):
        defn = recipes.check_definition(f"Bootstrap: {agent}\nFrom: {ref}\n", "a.def", set())
        with pytest.raises(UserError, match=rf"^a\.def:2: From: .*{agent} must name a file"):
            recipes.resolve_sources(defn, "a.def", set(), {}.get)
    defn = recipes.check_definition(f"Bootstrap: {agent}\nFrom: x.tar\n", "a.def", {"x.tar"})
    assert recipes.resolve_sources(defn, "a.def", {"x.tar"}, {}.get) == (defn, [])


@pytest.mark.parametrize("char", ["\f", "\v", "\r", "\x00", "\x85", "\u2028", "\u2029",
                                  "\x1c"])
def test_line_breaks_only_some_readers_see_are_refused(char: str) -> None:
    """A checker splitting on them and a builder not would see different stages."""
    text = f"Bootstrap: scratch\n%post\n    true{char}Bootstrap: localimage\n"
    with pytest.raises(UserError, match=r"^f\.def:3: control character U\+"):
        recipes.check_definition(text, "f.def", set())


def test_base_definitions() -> None:
    assert recipes.base_definition("docker://reg:5000/debian:12") == \
        "Bootstrap: docker\nFrom: reg:5000/debian:12\n"
    assert recipes.base_definition("debootstrap://bookworm") == \
        "Bootstrap: debootstrap\nOSVersion: bookworm\n"
    assert recipes.base_definition("mine") == "Bootstrap: localimage\nFrom: mine\n"
    for bad in ("library://x", "../x", "debootstrap://a b", "docker://a\x0cb", "/etc"):
        with pytest.raises(UserError, match=r"^base "):
            recipes.base_definition(bad)


# --- MUNGE and the queue rules ---------------------------------------------------------


UNMUNGE = """STATUS:          Success (0)
ENCODE_HOST:     localhost (127.0.0.1)
TTL:             300
UID:             alice (1001)
GID:             users (100)
LENGTH:          0
"""


def test_parse_unmunge() -> None:
    assert auth.parse_unmunge(UNMUNGE) == auth.Decoded(1001, 100)
    with pytest.raises(auth.AuthError):
        auth.parse_unmunge("STATUS: Success (0)\n")


def test_interrupted_builds_are_requeued_then_failed() -> None:
    state, reason = interrupted_state(1, 2)
    assert state is State.QUEUED and "re-queued (attempt 2 of 2)" in reason
    state, reason = interrupted_state(2, 2)
    assert state is State.FAILED and reason.startswith("interrupted:")


# --- storage, over SQLite and PostgreSQL -----------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path: Path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'u2cb.db'}"
    else:
        url = request.getfixturevalue("postgres")
    d = db.Database(url)
    db.Base.metadata.drop_all(d.engine)
    d.create_all()
    yield d
    d.dispose()


def add(d: db.Database, uid: int, name: str, state: State = State.QUEUED,
        usage: int = 0) -> int:
    with d.session() as s:
        row = db.ContainerRow(uid=uid, owner=f"u{uid}", name=name, kind=Kind.DEF.value,
                              source="t.def", state=state.value, attempts=0, usage=usage)
        s.add(row)
        s.flush()
        return row.id


def test_storage_round_trip_and_isolation(database: db.Database) -> None:
    add(database, 1001, "box", usage=100)
    add(database, 1001, "img", State.READY, usage=50)
    add(database, 1002, "box")
    with database.session() as s:
        assert [r.name for r in db.listing(s, 1001)] == ["box", "img"]
        assert [r.name for r in db.listing(s, 1002)] == ["box"]
        assert len(db.listing(s, None)) == 3
        assert db.usage(s, 1001) == 150 and db.usage(s, 1003) == 0
        model = db.find(s, 1001, "img").model()
        assert model.state is State.READY and model.kind is Kind.DEF
    if database.dialect == "sqlite":
        with database.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_names_unique_per_owner(database: db.Database) -> None:
    from sqlalchemy.exc import IntegrityError

    add(database, 1001, "box")
    with pytest.raises(IntegrityError):
        add(database, 1001, "box")


def test_claiming_a_queued_build_happens_once(database: db.Database) -> None:
    """Two service instances racing for one queued build: exactly one wins."""
    key = add(database, 1001, "box")
    wins: list[int] = []

    def claim() -> None:
        with database.session() as s:
            r = s.execute(update(db.ContainerRow)
                          .where(db.ContainerRow.id == key,
                                 db.ContainerRow.state == State.QUEUED.value)
                          .values(state=State.RUNNING.value,
                                  attempts=db.ContainerRow.attempts + 1))
            wins.append(r.rowcount)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [0] * 7 + [1]
    with database.session() as s:
        assert db.running_count(s, 1001) == 1
        assert s.get(db.ContainerRow, key).attempts == 1


def test_tokens_are_stored_hashed(database: db.Database) -> None:
    token, _ = auth.issue_token(database, "alice", 1001, False)
    with database.session() as s:
        rows = s.query(db.TokenRow).all()
    assert len(rows) == 1 and rows[0].digest != token
    ident = auth.identify({"authorization": f"Bearer {token}"}, database, None, [])
    assert (ident.user, ident.uid, ident.method) == ("alice", 1001, "token")
    with pytest.raises(auth.AuthError):
        auth.identify({"authorization": "Bearer nope"}, database, None, [])
    with pytest.raises(auth.AuthError, match="no credential"):
        auth.identify({}, database, None, [])


def test_revoked_token_is_refused_at_once(database: db.Database) -> None:
    token, info = auth.issue_token(database, "alice", 1001, False)
    kept, kept_info = auth.issue_token(database, "portal", 1002, True)
    assert {t.id for t in auth.list_tokens(database)} == {info.id, kept_info.id}
    assert token not in repr(auth.list_tokens(database))
    assert not auth.revoke_token(database, "not-an-id")
    assert not auth.revoke_token(database, info.id[::-1] if info.id[::-1] != info.id else "f" * 12)
    assert auth.revoke_token(database, info.id)
    with pytest.raises(auth.AuthError, match="revoked"):
        auth.identify({"authorization": f"Bearer {token}"}, database, None, [])
    ident = auth.identify({"authorization": f"Bearer {kept}"}, database, None, [])
    assert (ident.user, ident.admin) == ("portal", True)
    assert [t.id for t in auth.list_tokens(database)] == [kept_info.id]


def test_wal_survives_concurrent_writers(tmp_path: Path) -> None:
    d = db.Database(f"sqlite:///{tmp_path / 'w.db'}")
    d.create_all()
    errors: list[Exception] = []

    def writer(n: int) -> None:
        try:
            for i in range(20):
                add(d, n, f"c{i}")
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and time.monotonic() - started < 60
    with d.session() as s:
        assert len(db.listing(s, None)) == 80


def orphan_group() -> tuple[int, int]:
    """A process group whose ``sleep`` is no child of ours (as a dead service's build
    is not the new service's): (group id, pid of the sleep)."""
    proc = subprocess.run(["sh", "-c", "sleep 120 >/dev/null 2>&1 & echo $!"],
                          capture_output=True, text=True, start_new_session=True, check=True)
    return os.getpgid(int(proc.stdout)), int(proc.stdout)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_owner_of_a_job() -> None:
    assert owner_of("slurm:77@node2:8473") == ("slurm:77", "node2:8473")
    assert owner_of("@node2:8473") == (None, "node2:8473")
    assert owner_of("local:4242") == ("local:4242", None)  # before instances: one's own
    assert owner_of(None) == (None, None)


def test_instances_recover_their_own_and_dead_ones_only(database: db.Database,
                                                        tmp_path: Path) -> None:
    """Several instances on one database.  A restarting instance ends and re-queues its
    own interrupted builds, takes over those of an instance whose heartbeat stopped
    (killing nothing: those processes are not its own), and leaves a live instance's
    builds alone.  Real process groups stand in for the builds."""
    groups = {name: orphan_group() for name in ("mine", "live", "dead")}
    try:
        with database.session() as s:
            db.beat(s, "node2:8473")
            s.add(db.InstanceRow(name="node3:8473",
                                 seen=db.now() - timedelta(seconds=GONE_AFTER_S + 5)))
        owners = {"mine": "node1:8473", "live": "node2:8473", "dead": "node3:8473"}
        keys = {}
        for name, (pgid, _) in groups.items():
            keys[name] = add(database, 1001, name, State.RUNNING)
            with database.session() as s:
                row = s.get(db.ContainerRow, keys[name])
                row.job, row.attempts = f"local:{pgid}@{owners[name]}", 1
        settings = Settings(data_dir=tmp_path / "data", instance="node1:8473")
        Scheduler(settings, database, LocalExecutor()).recover(startup=True)
        with database.session() as s:
            rows = {n: s.get(db.ContainerRow, k) for n, k in keys.items()}
        assert (rows["mine"].state, rows["mine"].job) == ("queued", None)
        assert rows["mine"].reason.startswith("interrupted: the service stopped")
        assert (rows["live"].state, rows["live"].job) == ("running",
                                                          f"local:{groups['live'][0]}@node2:8473")
        assert rows["dead"].state == "queued"
        assert rows["dead"].reason.startswith("interrupted: service instance node3:8473 stopped")
        deadline = time.monotonic() + 15
        while alive(groups["mine"][1]):
            assert time.monotonic() < deadline, "its own leftover build was not ended"
            time.sleep(0.1)
        assert alive(groups["live"][1]) and alive(groups["dead"][1])
    finally:
        for pgid, _ in groups.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, 9)


def test_service_and_client_import_nothing_of_the_admin_cli() -> None:
    """Imports point down: the service and ``u2cb`` never load ``hpcstack.cli``."""
    code = ("import sys, hpcstack.service.app, hpcstack.client.main, hpcstack.build.job\n"
            "print(sorted(m for m in sys.modules if m == 'hpcstack.cli' "
            "or m.startswith('hpcstack.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", out
