"""The labeling app's storage: SQLAlchemy models, the schema version and its migrations, and the queries routes use.

Any SQLAlchemy URL works (`postgresql+psycopg://user@host/labels` for teams); a plain path means SQLite, opened in
WAL mode with `synchronous=FULL` so that a committed save survives a crash of the process or the machine before the
HTTP 200 goes out. Values (labels, label lists, span lists) are stored as JSON, as Label Studio stores its results.

The schema carries a version (table `schema_version`). `open_db` creates a fresh database at `SCHEMA_VERSION`, and
upgrades an older one by running `MIGRATIONS[n]` (version n -> n+1) in order, each in its own transaction.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Callable, Iterable

from sqlalchemy import (
    JSON, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine, event, func, inspect, select, text, update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from slmkit.errors import UserError

SCHEMA_VERSION = 2
KINDS = ("single", "multi", "spans")
ROLES = ("admin", "reviewer", "annotator")  # a user's global role; admin sees every project
MEMBER_ROLES = ("reviewer", "annotator")  # a user's role inside one project


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # stored naive, always UTC


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20), default="annotator")
    created_at: Mapped[dt.datetime] = mapped_column(default=now)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(10))
    labels: Mapped[list] = mapped_column(JSON)
    overlap: Mapped[int] = mapped_column(default=1)
    allow_overlapping_spans: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=now)
    # the attached model and its background retraining (added in schema version 2)
    model_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_status: Mapped[str] = mapped_column(String(20), default="idle")
    model_message: Mapped[str] = mapped_column(Text, default="")
    retrain_every: Mapped[int] = mapped_column(default=0)  # K: retrain after every K new labels; 0 = never
    labels_since_train: Mapped[int] = mapped_column(default=0)


class Member(Base):
    __tablename__ = "members"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    role: Mapped[str] = mapped_column(String(20))


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    prediction: Mapped[Any] = mapped_column(JSON, nullable=True)  # a value in the project's kind
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    probs: Mapped[list | None] = mapped_column(JSON, nullable=True)  # the attached model's class probabilities (v2)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)


class Annotation(Base):
    __tablename__ = "annotations"
    __table_args__ = (UniqueConstraint("item_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    value: Mapped[Any] = mapped_column(JSON, nullable=True)  # None when skipped
    skipped: Mapped[bool] = mapped_column(Boolean, default=False)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)  # time spent on the item, summed over saves
    version: Mapped[int] = mapped_column(default=1)
    updated_at: Mapped[dt.datetime] = mapped_column(default=now)


class Gold(Base):
    __tablename__ = "gold"
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(default=1)  # optimistic concurrency: a PUT names the version it read
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)  # None: imported
    updated_at: Mapped[dt.datetime] = mapped_column(default=now)


class History(Base):
    __tablename__ = "history"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    what: Mapped[str] = mapped_column(String(40))  # annotate, skip, undo, gold, import
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    at: Mapped[dt.datetime] = mapped_column(default=now)


class SessionRow(Base):
    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the cookie; the token itself is never stored
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime] = mapped_column()


class LoginAttempt(Base):
    __tablename__ = "login_attempts"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(100), index=True)
    ip: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(default=now)


class LabelError(Base):
    """A suspected label error found by the background detection (schema version 2)."""

    __tablename__ = "label_errors"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
    given: Mapped[str] = mapped_column(Text)
    suggested: Mapped[str] = mapped_column(Text)
    score: Mapped[float] = mapped_column(Float)


# ------------------------------------------------------------------------------------------ migrations


def _v1_to_v2(conn: Connection) -> None:
    """Version 2: an attached model per project (status, retraining every K labels), stored probabilities, label errors."""
    for column, ddl in [
        ("model_dir", "TEXT"), ("model_status", "VARCHAR(20) NOT NULL DEFAULT 'idle'"), ("model_message", "TEXT NOT NULL DEFAULT ''"),
        ("retrain_every", "INTEGER NOT NULL DEFAULT 0"), ("labels_since_train", "INTEGER NOT NULL DEFAULT 0"),
    ]:
        conn.execute(text(f"ALTER TABLE projects ADD COLUMN {column} {ddl}"))
    conn.execute(text("ALTER TABLE items ADD COLUMN probs JSON"))
    LabelError.__table__.create(conn)


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1_to_v2}  # version n -> n + 1


def schema_version(engine: Engine) -> int | None:
    """The database's schema version; None for an empty database."""
    if "schema_version" not in inspect(engine).get_table_names():
        return None
    with engine.connect() as conn:
        return conn.execute(select(func.max(SchemaVersion.version))).scalar()


def migrate(engine: Engine) -> int:
    """Create the schema in an empty database or upgrade an older one; the version it ends at."""
    version = schema_version(engine)
    if version is None:
        if inspect(engine).get_table_names():
            raise UserError(f"{engine.url.render_as_string(hide_password=True)}: not an slm label database (it has other tables): use a new file")
        with engine.begin() as conn:
            Base.metadata.create_all(conn)
            conn.execute(SchemaVersion.__table__.insert().values(version=SCHEMA_VERSION))
        return SCHEMA_VERSION
    if version > SCHEMA_VERSION:
        raise UserError(f"the database has schema version {version}, newer than this slmkit's {SCHEMA_VERSION}: upgrade slmkit")
    while version < SCHEMA_VERSION:
        with engine.begin() as conn:
            MIGRATIONS[version](conn)
            conn.execute(update(SchemaVersion).values(version=version + 1))
        version += 1
    return version


# ------------------------------------------------------------------------------------------ opening


def database_url(db: str) -> str:
    """A SQLAlchemy URL from `--db`: a URL as is, anything else a SQLite file path."""
    return db if "://" in db else f"sqlite:///{Path(db).expanduser().resolve()}"


def sqlite_path(db: str) -> Path | None:
    """The file of a SQLite `--db`, or None for other databases."""
    url = database_url(db)
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///"))


def make_engine(db: str) -> Engine:
    url = database_url(db)
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ImportError) as e:
        raise UserError(f"--db {db}: not a usable database URL ({e}): pass a file path or a SQLAlchemy URL") from None
    return engine


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cur.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit: a 200 means the save is on disk
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def open_db(db: str, create: bool = True) -> sessionmaker[Session]:
    """A session factory over `db` (path or URL), creating or upgrading the schema."""
    path = sqlite_path(db)
    if path is not None and not create and not path.is_file():
        raise UserError(f"--db {db}: no such database: create it with `slm label init --db {db}`")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(db)
    migrate(engine)
    return sessionmaker(engine, expire_on_commit=False)


# ------------------------------------------------------------------------------------------ queries


def add_user(s: Session, username: str, password_hash: str, role: str) -> User:
    if role not in ROLES:
        raise UserError(f"role {role!r}: use one of {', '.join(ROLES)}")
    if not username or len(username) > 100:
        raise UserError("username: give 1 to 100 characters")
    user = User(username=username, password_hash=password_hash, role=role)
    s.add(user)
    try:
        s.flush()
    except IntegrityError:
        s.rollback()
        raise UserError(f"user {username!r} exists already: pick another name") from None
    return user


def user_by_name(s: Session, username: str) -> User | None:
    return s.scalar(select(User).where(User.username == username))


def member_role(s: Session, project_id: int, user: User) -> str | None:
    """The user's role in the project: 'admin' for admins, else the membership role, None for outsiders."""
    if user.role == "admin":
        return "admin"
    return s.scalar(select(Member.role).where(Member.project_id == project_id, Member.user_id == user.id))


def visible_projects(s: Session, user: User) -> list[Project]:
    q = select(Project).order_by(Project.id)
    if user.role != "admin":
        q = q.join(Member, Member.project_id == Project.id).where(Member.user_id == user.id)
    return list(s.scalars(q))


def set_member(s: Session, project: Project, user: User, role: str) -> None:
    row = s.scalar(select(Member).where(Member.project_id == project.id, Member.user_id == user.id))
    if row is None:
        s.add(Member(project_id=project.id, user_id=user.id, role=role))
    else:
        row.role = role
    s.flush()
    assign(s, project)


def assign(s: Session, project: Project) -> int:
    """Give every item `overlap` distinct annotators (or all of them, when fewer), least-loaded first; new assignments made.

    Ties between equally loaded annotators break in member order, so a fresh import deals items round-robin.
    """
    annotators = list(s.scalars(select(Member.user_id).where(Member.project_id == project.id, Member.role == "annotator").order_by(Member.id)))
    if not annotators:
        return 0
    want = min(project.overlap, len(annotators))
    load = {u: 0 for u in annotators}
    for user_id, n in s.execute(
        select(Assignment.user_id, func.count()).where(Assignment.project_id == project.id).group_by(Assignment.user_id)
    ):
        if user_id in load:
            load[user_id] = n
    have: dict[int, set[int]] = {}
    for item_id, user_id in s.execute(select(Assignment.item_id, Assignment.user_id).where(Assignment.project_id == project.id)):
        have.setdefault(item_id, set()).add(user_id)
    order = {u: i for i, u in enumerate(annotators)}
    made = 0
    for item_id in s.scalars(select(Item.id).where(Item.project_id == project.id).order_by(Item.id)):
        assigned = have.get(item_id, set())
        current = len(assigned & set(annotators))
        if current >= want:
            continue
        free = sorted((u for u in annotators if u not in assigned), key=lambda u: (load[u], order[u]))
        for user_id in free[: want - current]:
            s.add(Assignment(project_id=project.id, item_id=item_id, user_id=user_id))
            load[user_id] += 1
            made += 1
    s.flush()
    return made


def add_items(s: Session, project: Project, rows: list[dict]) -> int:
    """Add items read by `io.read_items` (their labels become gold) and assign them; the number added."""
    for row in rows:
        item = Item(project_id=project.id, text=row["text"], meta=row["meta"], prediction=row["prediction"], confidence=row["confidence"])
        s.add(item)
        if row["label"] is not None:
            s.flush()
            set_gold(s, item, None, row["label"], 0, what="import")
    assign(s, project)
    return len(rows)


def is_assigned(s: Session, item_id: int, user_id: int) -> bool:
    return s.scalar(select(Assignment.id).where(Assignment.item_id == item_id, Assignment.user_id == user_id)) is not None


def my_items(s: Session, project_id: int, user_id: int) -> list[tuple[Item, bool]]:
    """The user's assigned items in order, each with whether the user has annotated (or skipped) it."""
    done = select(Annotation.item_id).where(Annotation.user_id == user_id, Annotation.project_id == project_id)
    rows = s.execute(
        select(Item, Item.id.in_(done))
        .join(Assignment, Assignment.item_id == Item.id)
        .where(Assignment.user_id == user_id, Assignment.project_id == project_id)
        .order_by(Item.id)
    )
    return [(item, bool(is_done)) for item, is_done in rows]


def todo_items(s: Session, project_id: int, user_id: int, after: int | None = None, limit: int | None = None) -> list[Item]:
    """The user's assigned items they have not annotated (nor skipped) yet, in order, after item `after` if given."""
    done = select(Annotation.item_id).where(Annotation.user_id == user_id, Annotation.project_id == project_id)
    q = (
        select(Item).join(Assignment, Assignment.item_id == Item.id)
        .where(Assignment.user_id == user_id, Assignment.project_id == project_id, Item.id.not_in(done))
        .order_by(Item.id).limit(limit)
    )
    if after is not None:
        q = q.where(Item.id > after)
    return list(s.scalars(q))


def progress(s: Session, project_id: int, user_id: int) -> dict:
    total = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.project_id == project_id, Assignment.user_id == user_id))
    done = s.scalar(
        select(func.count()).select_from(Annotation)
        .join(Assignment, (Assignment.item_id == Annotation.item_id) & (Assignment.user_id == Annotation.user_id))
        .where(Annotation.project_id == project_id, Annotation.user_id == user_id)
    )
    return {"done": done, "total": total}


def my_annotation(s: Session, item_id: int, user_id: int) -> Annotation | None:
    return s.scalar(select(Annotation).where(Annotation.item_id == item_id, Annotation.user_id == user_id))


def save_annotation(s: Session, project: Project, item: Item, user: User, value: Any, seconds: float, skipped: bool) -> tuple[Annotation, bool]:
    """Create or overwrite the user's annotation of the item, with a history row; (annotation, whether it is new)."""
    row = my_annotation(s, item.id, user.id)
    new = row is None
    if new:
        row = Annotation(project_id=project.id, item_id=item.id, user_id=user.id, value=value, skipped=skipped, seconds=seconds, version=1)
        s.add(row)
    else:
        row.value, row.skipped, row.version, row.updated_at = value, skipped, row.version + 1, now()
        row.seconds = (row.seconds or 0.0) + seconds
    s.add(History(item_id=item.id, user_id=user.id, what="skip" if skipped else "annotate", value=value))
    if new and not skipped:  # one UPDATE, so concurrent saves each count
        s.execute(update(Project).where(Project.id == project.id).values(labels_since_train=Project.labels_since_train + 1))
    s.flush()
    return row, new


def undo_annotation(s: Session, item: Item, user: User) -> bool:
    row = my_annotation(s, item.id, user.id)
    if row is None:
        return False
    s.delete(row)
    s.add(History(item_id=item.id, user_id=user.id, what="undo", value=row.value))
    s.flush()
    return True


def item_gold(s: Session, item_id: int) -> Gold | None:
    return s.get(Gold, item_id)


class StaleVersion(Exception):
    """The gold label changed since the version the client read."""


def set_gold(s: Session, item: Item, user: User | None, value: Any, version: int, what: str = "gold") -> int:
    """Set the item's gold if it is still at `version` (0 = no gold yet); the new version. Raises StaleVersion.

    The check and the write are one UPDATE ... WHERE version = ?, so two reviewers cannot both win.
    """
    user_id = user.id if user else None
    if version == 0:
        s.add(Gold(item_id=item.id, value=value, version=1, user_id=user_id, updated_at=now()))
        try:
            s.flush()
        except IntegrityError:
            s.rollback()
            raise StaleVersion from None
        new_version = 1
    else:
        result = s.execute(
            update(Gold).where(Gold.item_id == item.id, Gold.version == version)
            .values(value=value, version=version + 1, user_id=user_id, updated_at=now())
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            raise StaleVersion
        new_version = version + 1
    s.add(History(item_id=item.id, user_id=user_id, what=what, value=value))
    s.flush()
    return new_version


def annotations_of(s: Session, project_id: int, item_ids: Iterable[int] | None = None) -> list[tuple[int, str, Any]]:
    """(item_id, username, value) of every non-skipped annotation in the project, in item order."""
    q = (
        select(Annotation.item_id, User.username, Annotation.value)
        .join(User, User.id == Annotation.user_id)
        .where(Annotation.project_id == project_id, Annotation.skipped.is_(False))
        .order_by(Annotation.item_id, User.username)
    )
    if item_ids is not None:
        q = q.where(Annotation.item_id.in_(list(item_ids)))
    return [tuple(r) for r in s.execute(q)]


def golds_of(s: Session, project_id: int) -> dict[int, tuple[Any, int]]:
    """item_id -> (gold value, version) for the project's items that have gold."""
    rows = s.execute(select(Gold.item_id, Gold.value, Gold.version).join(Item, Item.id == Gold.item_id).where(Item.project_id == project_id))
    return {item_id: (value, version) for item_id, value, version in rows}


def history_of(s: Session, item_id: int) -> list[dict]:
    rows = s.execute(
        select(History, User.username).outerjoin(User, User.id == History.user_id).where(History.item_id == item_id).order_by(History.id)
    )
    return [{"who": name or "(import)", "what": h.what, "value": h.value, "at": h.at.isoformat() + "Z"} for h, name in rows]


def project_items(s: Session, project_id: int) -> list[Item]:
    return list(s.scalars(select(Item).where(Item.project_id == project_id).order_by(Item.id)))
