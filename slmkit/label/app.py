"""The labeling app's HTTP API (`create_app(db_url)`), as fixed by the contract with the page (docs: README, `slm label`).

Every `/api/*` route but login needs a session; every state-changing one also the session's CSRF token. Access is
checked once per route by `_project` (membership and role; outsiders get 404, so IDs of other projects reveal
nothing) and `_item` (an annotator reaches only items assigned to them; again 404). Annotators are blind: an item
shows the caller's own annotation and the model's pre-label, never another annotator's label.

Each write commits before the response is built (SQLite: WAL + synchronous=FULL), so a 200 means the save is on
disk. Model work — pre-labels of an attached model, retraining after every K new labels through `slmkit.train`,
label-error detection — runs in background threads (`Jobs`) and reports through `GET .../model`; requests never
wait for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, File, HTTPException, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from slmkit.errors import UserError
from slmkit.label import auth, db, io
from slmkit.label.db import Item, LabelError, Project, User
from slmkit.label.jobs import Jobs, export_records

PAGE = Path(__file__).parent / "page" / "index.html"
PAGE_CSP = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"
API_CSP = "default-src 'none'; frame-ancestors 'none'"
IMPORT_LIMIT = 5 * 1024 * 1024  # bytes of an import upload
BODY_LIMIT = 64 * 1024  # bytes of any other request body
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
PLACEHOLDER = "<!doctype html><meta charset=utf-8><title>slm label</title><p>The labeling page is not installed; the API is at /api.</p>"


# ------------------------------------------------------------------------------------------ request bodies


class LoginBody(BaseModel):
    username: str = Field(max_length=100)
    password: str = Field(max_length=1000)


class UserBody(BaseModel):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=auth.MIN_PASSWORD, max_length=1000)
    role: Literal["admin", "reviewer", "annotator"] = "annotator"


class ProjectBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["single", "multi", "spans"]
    labels: list[str]
    overlap: int = Field(1, ge=1, le=50)
    allow_overlapping_spans: bool = False
    retrain_every: int = Field(0, ge=0)


class MemberBody(BaseModel):
    username: str
    role: Literal["reviewer", "annotator"]


class AnnotationBody(BaseModel):
    value: Any = None
    seconds: float = Field(0.0, ge=0, le=86400)
    skipped: bool = False


class GoldBody(BaseModel):
    value: Any
    version: int = Field(ge=0)


class ModelBody(BaseModel):
    model_dir: str | None = None
    retrain_every: int | None = Field(None, ge=0)


# ------------------------------------------------------------------------------------------ access


@dataclass
class Ctx:
    """One authenticated request: its database session, user and login session."""

    s: Session
    user: User
    session: db.SessionRow
    app: FastAPI


def _db(request: Request):
    s = request.app.state.db()
    try:
        yield s
    finally:
        s.close()


def _ctx(request: Request, s: Session = Depends(_db)) -> Ctx:
    found = auth.session_of(s, request.cookies.get(auth.COOKIE))
    if found is None:
        raise HTTPException(401, "not logged in: log in first")
    user, row = found
    if request.method not in SAFE_METHODS and not auth.csrf_ok(row, request.headers.get(auth.CSRF_HEADER)):
        raise HTTPException(403, f"missing or wrong {auth.CSRF_HEADER} header: send the csrf token from /api/me")
    return Ctx(s, user, row, request.app)


def _require_admin(c: Ctx) -> None:
    if c.user.role != "admin":
        raise HTTPException(403, "only an admin can do this")


def _project(c: Ctx, pid: int, need: str = "member") -> tuple[Project, str]:
    """The project and the caller's role in it; 404 for non-members, 403 when the role is too low."""
    project = c.s.get(Project, pid)
    role = db.member_role(c.s, pid, c.user) if project else None
    if role is None:
        raise HTTPException(404, f"no project {pid}")
    if need == "reviewer" and role not in ("admin", "reviewer"):
        raise HTTPException(403, "only a reviewer or admin of this project can do this")
    if need == "admin" and role != "admin":
        raise HTTPException(403, "only an admin can do this")
    return project, role


def _item(c: Ctx, project: Project, role: str, iid: int) -> Item:
    """The project's item; annotators reach only items assigned to them (404 otherwise, like a missing one)."""
    item = c.s.get(Item, iid)
    if item is None or item.project_id != project.id:
        raise HTTPException(404, f"no item {iid} in this project")
    if role == "annotator" and not db.is_assigned(c.s, iid, c.user.id):
        raise HTTPException(404, f"no item {iid} in this project")
    return item


# ------------------------------------------------------------------------------------------ shapes


def _user_json(user: User) -> dict:
    return {"id": user.id, "username": user.username, "role": user.role}


def _project_json(c: Ctx, p: Project) -> dict:
    return {
        "id": p.id, "name": p.name, "kind": p.kind, "labels": p.labels, "overlap": p.overlap,
        "allow_overlapping_spans": p.allow_overlapping_spans, "retrain_every": p.retrain_every,
        "role": db.member_role(c.s, p.id, c.user), "progress": db.progress(c.s, p.id, c.user.id),
    }


def _item_json(c: Ctx, item: Item) -> dict:
    """An item as the caller may see it: text, pre-label, and the caller's own annotation only (blind overlap)."""
    mine = db.my_annotation(c.s, item.id, c.user.id)
    prediction = None if item.prediction is None else {"label": item.prediction, "confidence": item.confidence}
    annotation = None if mine is None else {"value": mine.value, "version": mine.version, "skipped": mine.skipped}
    return {"id": item.id, "text": item.text, "meta": item.meta, "prediction": prediction, "annotation": annotation}


# ------------------------------------------------------------------------------------------ the app


def create_app(db_url: str, *, secure_cookies: bool = False, model_root: str | Path | None = None, train_settings: dict | None = None) -> FastAPI:
    """The labeling app over `db_url` (a SQLite path or any SQLAlchemy URL), creating or upgrading its schema.

    `secure_cookies`: mark the session cookie Secure (serve behind HTTPS). `model_root`: where retrained models go
    (default: `<db file>.models/` for SQLite, `./slm-label-models/` otherwise). `train_settings`: dotted
    `TrainConfig` overrides for retraining, e.g. `{"train.epochs": 3}`.
    """
    app = FastAPI(title="slm label", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.db = db.open_db(db_url)
    app.state.secure_cookies = secure_cookies
    path = db.sqlite_path(db_url)
    root = Path(model_root) if model_root else (path.with_name(path.name + ".models") if path else Path("slm-label-models"))
    app.state.jobs = Jobs(app.state.db, root, train_settings or {})
    app.add_middleware(_Limits)
    _add_error_handlers(app)
    _add_page_routes(app)
    _add_auth_routes(app)
    _add_project_routes(app)
    _add_annotation_routes(app)
    _add_quality_routes(app)
    _add_model_routes(app)
    return app


class _Limits:
    """Pure ASGI middleware: request body size limits (413) and security headers on every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        limit = IMPORT_LIMIT if path.endswith("/import") else BODY_LIMIT
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _too_large(limit, send)
        # read the body here (at most limit bytes: a chunked body without Content-Length is counted too), then replay it
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await _too_large(limit, send)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        page = path in ("/", "/index.html")

        async def secured_send(message):
            if message["type"] == "http.response.start":
                extra = [
                    (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", (PAGE_CSP if page else API_CSP).encode()), (b"cache-control", b"no-store"),
                ]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, replay, secured_send)


async def _too_large(limit: int, send) -> None:
    body = json.dumps({"detail": f"request body over {limit // 1024} KB: send less"}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return JSONResponse({"detail": f"{where}: {first.get('msg')}" if where else str(first.get("msg"))}, status_code=422)

    @app.exception_handler(UserError)
    async def user_error(_request, exc: UserError):
        return JSONResponse({"detail": str(exc)}, status_code=422)


def _add_page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    @app.get("/index.html", include_in_schema=False)
    def page():
        html = PAGE.read_text(encoding="utf-8") if PAGE.is_file() else PLACEHOLDER
        return HTMLResponse(html)


def _add_auth_routes(app: FastAPI) -> None:
    @app.post("/api/login")
    def login(body: LoginBody, request: Request, response: Response, s: Session = Depends(_db)):
        ip = request.client.host if request.client else "?"
        if auth.too_many_failures(s, body.username, ip):
            raise HTTPException(429, f"too many failed logins: wait {auth.FAILURE_WINDOW_S} seconds")
        user = auth.check_login(s, body.username, body.password)
        if user is None:
            auth.record_failure(s, body.username, ip)
            s.commit()
            raise HTTPException(401, "wrong username or password")
        token, csrf = auth.start_session(s, user)
        s.commit()
        response.set_cookie(
            auth.COOKIE, token, httponly=True, samesite="strict", path="/", secure=request.app.state.secure_cookies,
            max_age=auth.SESSION_HOURS * 3600,
        )
        return {"user": _user_json(user), "csrf": csrf}

    @app.post("/api/logout")
    def logout(request: Request, response: Response, c: Ctx = Depends(_ctx)):
        auth.end_session(c.s, request.cookies.get(auth.COOKIE))
        c.s.commit()
        response.delete_cookie(auth.COOKIE, path="/", httponly=True, samesite="strict")
        return {"ok": True}

    @app.get("/api/me")
    def me(c: Ctx = Depends(_ctx)):
        return {"user": _user_json(c.user), "csrf": c.session.csrf}

    @app.get("/api/users")
    def users(c: Ctx = Depends(_ctx)):
        _require_admin(c)
        return [_user_json(u) for u in c.s.scalars(select(User).order_by(User.id))]

    @app.post("/api/users", status_code=201)
    def add_user(body: UserBody, c: Ctx = Depends(_ctx)):
        _require_admin(c)
        try:
            user = db.add_user(c.s, body.username, auth.hash_password(body.password), body.role)
        except UserError as e:
            raise HTTPException(409, str(e)) from None
        c.s.commit()
        return _user_json(user)


def _add_project_routes(app: FastAPI) -> None:
    @app.get("/api/projects")
    def projects(c: Ctx = Depends(_ctx)):
        return [_project_json(c, p) for p in db.visible_projects(c.s, c.user)]

    @app.post("/api/projects", status_code=201)
    def create_project(body: ProjectBody, c: Ctx = Depends(_ctx)):
        _require_admin(c)
        try:
            io.check_project_labels(body.kind, body.labels)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        project = Project(
            name=body.name, kind=body.kind, labels=body.labels, overlap=body.overlap,
            allow_overlapping_spans=body.allow_overlapping_spans, retrain_every=body.retrain_every,
        )
        c.s.add(project)
        c.s.commit()
        return _project_json(c, project)

    @app.get("/api/projects/{pid}")
    def get_project(pid: int, c: Ctx = Depends(_ctx)):
        return _project_json(c, _project(c, pid)[0])

    @app.get("/api/projects/{pid}/members")
    def members(pid: int, c: Ctx = Depends(_ctx)):
        project, _ = _project(c, pid, "reviewer")
        rows = c.s.execute(select(User, db.Member.role).join(db.Member, db.Member.user_id == User.id).where(db.Member.project_id == pid).order_by(db.Member.id))
        return [{"username": u.username, "role": role, "progress": db.progress(c.s, pid, u.id)} for u, role in rows]

    @app.post("/api/projects/{pid}/members")
    def add_member(pid: int, body: MemberBody, c: Ctx = Depends(_ctx)):
        project, _ = _project(c, pid, "admin")
        user = db.user_by_name(c.s, body.username)
        if user is None:
            raise HTTPException(404, f"no user {body.username!r}: create it first")
        db.set_member(c.s, project, user, body.role)
        c.s.commit()
        return {"ok": True}

    @app.post("/api/projects/{pid}/import")
    def import_items(pid: int, file: UploadFile = File(...), c: Ctx = Depends(_ctx)):
        project, _ = _project(c, pid, "admin")
        rows = io.read_items(file.filename or "upload", file.file.read(), project.kind, project.labels, project.allow_overlapping_spans)
        db.add_items(c.s, project, rows)
        c.s.commit()
        return {"imported": len(rows)}


def _add_annotation_routes(app: FastAPI) -> None:
    @app.get("/api/projects/{pid}/items")
    def list_items(pid: int, mine: int = 1, c: Ctx = Depends(_ctx)):
        project, role = _project(c, pid)
        if mine or role == "annotator":
            return [{"id": i.id, "text": i.text, "done": done} for i, done in db.my_items(c.s, pid, c.user.id)]
        golds = db.golds_of(c.s, pid)
        return [{"id": i.id, "text": i.text, "done": i.id in golds} for i in db.project_items(c.s, pid)]

    @app.get("/api/projects/{pid}/next")
    def next_item(pid: int, order: Literal["default", "active"] = "default", after: int | None = None,
                  strategy: Literal["margin", "entropy"] = "margin", c: Ctx = Depends(_ctx)):
        project, _ = _project(c, pid)
        item = None
        if order == "active":
            todo = db.todo_items(c.s, pid, c.user.id)
            item = request_jobs(c).most_informative(project, c.user.id, [i for i in todo if i.id != after] or todo, strategy)
        if item is None:  # default order, or no model scores yet: the next item after `after`, wrapping around
            item = db.todo_items(c.s, pid, c.user.id, after=after, limit=1) or db.todo_items(c.s, pid, c.user.id, limit=1)
            item = item[0] if item else None
        return {"item": None if item is None else _item_json(c, item), "progress": db.progress(c.s, pid, c.user.id)}

    @app.get("/api/projects/{pid}/items/{iid}")
    def get_item(pid: int, iid: int, c: Ctx = Depends(_ctx)):
        project, role = _project(c, pid)
        return _item_json(c, _item(c, project, role, iid))

    @app.post("/api/projects/{pid}/items/{iid}/annotations")
    def annotate(pid: int, iid: int, body: AnnotationBody, c: Ctx = Depends(_ctx)):
        project, role = _project(c, pid)
        item = _item(c, project, role, iid)
        if not db.is_assigned(c.s, iid, c.user.id):
            raise HTTPException(403, "this item is not assigned to you: reviewers set gold labels instead")
        value = None
        if not body.skipped:
            try:
                value = io.check_value(project.kind, project.labels, body.value, item.text, project.allow_overlapping_spans)
            except ValueError as e:
                raise HTTPException(422, str(e)) from None
        row, _new = db.save_annotation(c.s, project, item, c.user, value, body.seconds, body.skipped)
        c.s.commit()  # durable before the 200
        request_jobs(c).labels_added(project.id)
        return {"annotation": {"value": row.value, "version": row.version, "skipped": row.skipped}, "progress": db.progress(c.s, pid, c.user.id)}

    @app.delete("/api/projects/{pid}/items/{iid}/annotations/mine")
    def undo(pid: int, iid: int, c: Ctx = Depends(_ctx)):
        project, role = _project(c, pid)
        item = _item(c, project, role, iid)
        if not db.undo_annotation(c.s, item, c.user):
            raise HTTPException(404, "you have no annotation of this item")
        c.s.commit()
        return {"ok": True, "progress": db.progress(c.s, pid, c.user.id)}


def request_jobs(c: Ctx):
    return c.app.state.jobs


def _review_row(item: Item, annotations: list[dict], golds: dict, reason: str) -> dict:
    gold, version = golds.get(item.id, (None, 0))
    return {"item": {"id": item.id, "text": item.text}, "annotations": annotations, "gold": gold, "version": version, "reason": reason}


def _add_quality_routes(app: FastAPI) -> None:
    @app.get("/api/projects/{pid}/review")
    def review(pid: int, c: Ctx = Depends(_ctx)):
        project, _ = _project(c, pid, "reviewer")
        golds = db.golds_of(c.s, pid)
        by_item: dict[int, list[dict]] = {}
        for item_id, name, value in db.annotations_of(c.s, pid):
            by_item.setdefault(item_id, []).append({"annotator": name, "value": value})
        queue, seen = [], set()
        for item in db.project_items(c.s, pid):
            notes = by_item.get(item.id, [])
            if len({json.dumps(a["value"], sort_keys=True) for a in notes}) > 1:
                queue.append(_review_row(item, notes, golds, "disagreement"))
                seen.add(item.id)
        suspects = c.s.execute(select(LabelError, Item).join(Item, Item.id == LabelError.item_id).where(LabelError.project_id == pid).order_by(LabelError.score.desc()))
        for err, item in suspects:
            if item.id not in seen:
                row = _review_row(item, by_item.get(item.id, []), golds, "label_error")
                row.update(given=err.given, suggested=err.suggested, score=err.score)
                queue.append(row)
                seen.add(item.id)
        queue.sort(key=lambda r: r["gold"] is not None)  # unresolved first, stable otherwise
        return queue

    @app.put("/api/projects/{pid}/items/{iid}/gold")
    def set_gold(pid: int, iid: int, body: GoldBody, c: Ctx = Depends(_ctx)):
        project, role = _project(c, pid, "reviewer")
        item = _item(c, project, role, iid)
        try:
            value = io.check_value(project.kind, project.labels, body.value, item.text, project.allow_overlapping_spans)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        try:
            version = db.set_gold(c.s, item, c.user, value, body.version)
        except db.StaleVersion:
            c.s.rollback()
            current = db.item_gold(c.s, iid)
            raise HTTPException(409, f"the gold label changed since version {body.version} (now version {current.version if current else 0}): reload and retry") from None
        c.s.execute(delete(LabelError).where(LabelError.item_id == item.id))  # a reviewer decided: the suspicion is settled
        c.s.commit()
        return {"gold": value, "version": version}

    @app.get("/api/projects/{pid}/items/{iid}/history")
    def history(pid: int, iid: int, c: Ctx = Depends(_ctx)):
        project, role = _project(c, pid, "reviewer")
        return db.history_of(c.s, _item(c, project, role, iid).id)

    @app.get("/api/projects/{pid}/agreement")
    def agreement(pid: int, c: Ctx = Depends(_ctx)):
        project, _ = _project(c, pid, "reviewer")
        from slmkit.label import agreement as agreement_mod

        annotations = db.annotations_of(c.s, pid)
        gold = {item_id: value for item_id, (value, _v) in db.golds_of(c.s, pid).items()}
        report = dict(agreement_mod.agreement_report(annotations, project.kind, project.labels))
        report["annotators"] = agreement_mod.annotator_accuracy(annotations, gold, project.kind)
        return _finite(report)

    @app.get("/api/projects/{pid}/export")
    def export(pid: int, format: str = "jsonl", c: Ctx = Depends(_ctx)):
        project, _ = _project(c, pid, "reviewer")
        body, media, ext = io.export(format, project.kind, project.labels, export_records(c.s, project))
        name = f"project-{project.id}-{format}.{ext}"
        return Response(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/api/projects/{pid}/label-errors")
    def label_errors(pid: int, c: Ctx = Depends(_ctx)):
        _project(c, pid, "reviewer")
        rows = c.s.execute(select(LabelError, Item.text).join(Item, Item.id == LabelError.item_id).where(LabelError.project_id == pid).order_by(LabelError.score.desc()))
        return [{"item_id": e.item_id, "text": t, "given": e.given, "suggested": e.suggested, "score": e.score} for e, t in rows]

    @app.post("/api/projects/{pid}/label-errors", status_code=202)
    def find_label_errors(pid: int, c: Ctx = Depends(_ctx)):
        project, _ = _project(c, pid, "reviewer")
        _single_label_only(project, "label-error detection")
        return {"status": request_jobs(c).start_label_errors(project.id)}


def _add_model_routes(app: FastAPI) -> None:
    @app.get("/api/projects/{pid}/model")
    def model(pid: int, c: Ctx = Depends(_ctx)):
        project, _ = _project(c, pid)
        return _model_json(c, project)

    @app.post("/api/projects/{pid}/model")
    def attach_model(pid: int, body: ModelBody, c: Ctx = Depends(_ctx)):
        project, _ = _project(c, pid, "admin")
        if body.retrain_every is not None:
            project.retrain_every = body.retrain_every
        if body.model_dir is not None:
            _single_label_only(project, "an attached model")
            request_jobs(c).check_model(project, body.model_dir)
            project.model_dir = str(Path(body.model_dir).resolve())
        c.s.commit()
        if body.model_dir is not None:
            request_jobs(c).start_prelabel(project.id)
        return _model_json(c, project)

    @app.post("/api/projects/{pid}/retrain", status_code=202)
    def retrain(pid: int, c: Ctx = Depends(_ctx)):
        project, _ = _project(c, pid, "admin")
        _single_label_only(project, "retraining")
        return {"status": request_jobs(c).start_retrain(project.id)}


def _single_label_only(project: Project, what: str) -> None:
    """The model loop (pre-labels, retraining, label errors) is for single-label projects: slm train trains classifiers."""
    if project.kind != "single":
        raise HTTPException(422, f"{what} is for single-label projects only: slm train trains single-label classifiers")


def _model_json(c: Ctx, project: Project) -> dict:
    c.s.refresh(project)
    return {
        "model_dir": project.model_dir, "status": project.model_status, "message": project.model_message,
        "labels_since_train": project.labels_since_train, "retrain_every": project.retrain_every,
        "label_errors": request_jobs(c).label_error_status.get(project.id, "idle"),
    }


def _finite(obj: Any) -> Any:
    """NaN and infinities (undefined statistics) as null, so the response is valid JSON."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _finite(obj.item())
    return obj
