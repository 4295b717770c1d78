"""Persistence through SQLAlchemy: SQLite in WAL mode by default, PostgreSQL by URL.

The database holds every record the service needs to survive a crash: a build
that was running when the service died is found here on restart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from hpcstack.service.models import ACTIVE, Container, Kind, State


def now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class ContainerRow(Base):
    __tablename__ = "containers"
    __table_args__ = (UniqueConstraint("uid", "name", name="uq_owner_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uid: Mapped[int] = mapped_column(Integer, index=True)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    job: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    started: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    usage: Mapped[int] = mapped_column(BigInteger, default=0)

    def model(self) -> Container:
        return Container(name=self.name, owner=self.owner, uid=self.uid,
                         kind=Kind(self.kind), source=self.source, state=State(self.state),
                         reason=self.reason, attempts=self.attempts, created=self.created,
                         started=self.started, finished=self.finished, size=self.size,
                         sha256=self.sha256)


class TokenRow(Base):
    __tablename__ = "tokens"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(String(64))
    uid: Mapped[int] = mapped_column(Integer)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class InstanceRow(Base):
    """A running service instance and when it last said so (its heartbeat)."""

    __tablename__ = "instances"

    name: Mapped[str] = mapped_column(String(48), primary_key=True)
    seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


def token_digest(token: str) -> str:
    """Tokens are stored only as their sha256, so a copied database grants nothing."""
    return hashlib.sha256(token.encode()).hexdigest()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Database:
    """One engine and a session factory; ``session()`` commits or rolls back."""

    def __init__(self, url: str) -> None:
        kw: dict = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kw["connect_args"] = {"check_same_thread": False, "timeout": 10}
        self.url = url
        self.engine: Engine = create_engine(url, **kw)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.factory = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def create_all(self) -> None:
        Base.metadata.create_all(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.factory() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()


# --- queries ---------------------------------------------------------------------------


def find(s: Session, uid: int, name: str) -> ContainerRow | None:
    return s.scalars(select(ContainerRow).where(ContainerRow.uid == uid,
                                                ContainerRow.name == name)).first()


def listing(s: Session, uid: int | None, kind: Kind | None = None) -> list[ContainerRow]:
    q = select(ContainerRow).order_by(ContainerRow.id)
    if uid is not None:
        q = q.where(ContainerRow.uid == uid)
    if kind is not None:
        q = q.where(ContainerRow.kind == kind.value)
    return list(s.scalars(q))


def usage(s: Session, uid: int) -> int:
    return int(s.scalar(select(func.coalesce(func.sum(ContainerRow.usage), 0))
                        .where(ContainerRow.uid == uid)) or 0)


def beat(s: Session, instance: str) -> None:
    """Record that ``instance`` is alive now."""
    row = s.get(InstanceRow, instance)
    if row is None:
        s.add(InstanceRow(name=instance, seen=now()))
    else:
        row.seen = now()


def alive_instances(s: Session, within_seconds: float) -> set[str]:
    cutoff = now().timestamp() - within_seconds
    return {r.name for r in s.scalars(select(InstanceRow))
            if _utc(r.seen).timestamp() >= cutoff}


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were stored as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_utc = as_utc


def running_count(s: Session, uid: int) -> int:
    return int(s.scalar(select(func.count()).select_from(ContainerRow)
                        .where(ContainerRow.uid == uid,
                               ContainerRow.state == State.RUNNING.value)) or 0)


def in_state(s: Session, *states: State) -> list[ContainerRow]:
    return list(s.scalars(select(ContainerRow).where(
        ContainerRow.state.in_([st.value for st in states])).order_by(ContainerRow.id)))


def active(row: ContainerRow) -> bool:
    return State(row.state) in ACTIVE
