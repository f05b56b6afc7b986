"""The operator's side of `slm label`: create the database and its users, back it up and restore it.

Backups use SQLite's online backup API, which copies a consistent snapshot even while the server writes; restore
copies a backup into the database the same way (stop the server first). For PostgreSQL use pg_dump/pg_restore.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from slmkit.errors import UserError
from slmkit.label import auth, db


def init(db_arg: str, admin: str, password: str | None) -> str:
    """Create the database (or upgrade it) with a first admin; the admin's password (a random one unless given)."""
    sessions = db.open_db(db_arg)
    with sessions() as s:
        if s.query(db.User).filter(db.User.role == "admin").first() is not None:
            raise UserError(f"--db {db_arg}: the database has an admin already: add users with `slm label add-user`")
    return add_user(db_arg, admin, "admin", password)


def add_user(db_arg: str, username: str, role: str, password: str | None) -> str:
    """Add a user; their password (a random one unless given)."""
    if password is not None and len(password) < auth.MIN_PASSWORD:
        raise UserError(f"password: use at least {auth.MIN_PASSWORD} characters")
    password = password or auth.new_password()
    sessions = db.open_db(db_arg, create=False)
    with sessions() as s:
        db.add_user(s, username, auth.hash_password(password), role)
        s.commit()
    return password


def _sqlite(db_arg: str, what: str) -> Path:
    path = db.sqlite_path(db_arg)
    if path is None:
        raise UserError(f"--db {db_arg}: {what} handles SQLite files; for PostgreSQL use pg_dump and pg_restore")
    return path


def backup(db_arg: str, out: str) -> Path:
    """A consistent copy of the live database at `out` (written to a temporary file, then renamed)."""
    path = _sqlite(db_arg, "backup")
    if not path.is_file():
        raise UserError(f"--db {db_arg}: no such database")
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    src, dst = sqlite3.connect(path), sqlite3.connect(tmp)
    try:
        with dst:
            src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        src.close()
        dst.close()
    os.replace(tmp, target)
    return target


def restore(db_arg: str, backup_file: str) -> Path:
    """Replace the database's contents with a backup's (through the backup API, so WAL files stay consistent)."""
    path = _sqlite(db_arg, "restore")
    source = Path(backup_file)
    if not source.is_file():
        raise UserError(f"{backup_file}: backup file not found")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        try:
            src.execute("SELECT version FROM schema_version").fetchone()
        except sqlite3.DatabaseError:
            raise UserError(f"{backup_file}: not an slm label database backup") from None
        dst = sqlite3.connect(path)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    db.open_db(str(path))  # an older backup is upgraded to the current schema
    return path


def import_file(db_arg: str, project_id: int, file: Path) -> int:
    """Import a CSV/JSONL file of items into a project (as the page's import does); the number imported."""
    from slmkit.label import io

    if not file.is_file():
        raise UserError(f"{file}: file not found: check the path")
    sessions = db.open_db(db_arg, create=False)
    with sessions() as s:
        project = s.get(db.Project, project_id)
        if project is None:
            raise UserError(f"project {project_id}: no such project: create it in the app first")
        rows = io.read_items(str(file), file.read_bytes(), project.kind, project.labels, project.allow_overlapping_spans)
        n = db.add_items(s, project, rows)
        s.commit()
    return n
