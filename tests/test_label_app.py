"""slm label's backend: auth, blind overlap, gold versions, IDOR, escaping, import/export, backup, migration, durability.

In-process tests use FastAPI's TestClient over a temporary SQLite file; the durability test runs `slm label serve`
as a real process and kills it with SIGKILL in the middle of a stream of saves.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("argon2")
from fastapi.testclient import TestClient  # noqa: E402

from slmkit.label import admin, db  # noqa: E402
from slmkit.label.app import PAGE_CSP, create_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"
LABELS = ["billing", "delivery", "login"]


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch):
    """Argon2id with small parameters in tests (a hash carries its own parameters, so verifying stays correct)."""
    from argon2 import PasswordHasher

    from slmkit.label import auth

    assert auth._hasher.memory_cost >= 64 * 1024 and auth._hasher.type.name == "ID"  # production: argon2id, 64 MiB
    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


def login(client: TestClient, username: str, password: str = PASSWORD) -> dict:
    r = client.post("/api/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    client.headers["X-CSRF-Token"] = r.json()["csrf"]
    return r.json()


@pytest.fixture
def lab(tmp_path):
    """An app over a fresh database with admin `root`, annotators ann1..ann3, reviewer `rev`; `lab.as_(name)` gives a logged-in client."""
    path = tmp_path / "labels.db"
    admin.init(str(path), "root", PASSWORD)
    for name, role in [("ann1", "annotator"), ("ann2", "annotator"), ("ann3", "annotator"), ("rev", "reviewer")]:
        admin.add_user(str(path), name, role, PASSWORD)
    app = create_app(str(path), model_root=tmp_path / "models")

    class Lab:
        db_path = path

        def __init__(self):
            self.app = app

        def as_(self, name: str) -> TestClient:
            client = TestClient(app)
            login(client, name)
            return client

    return Lab()


def make_project(root: TestClient, kind="single", labels=LABELS, overlap=2, members=("ann1", "ann2"), reviewers=("rev",), **extra) -> int:
    r = root.post("/api/projects", json={"name": f"p-{kind}", "kind": kind, "labels": labels, "overlap": overlap, **extra})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    for name in members:
        assert root.post(f"/api/projects/{pid}/members", json={"username": name, "role": "annotator"}).status_code == 200
    for name in reviewers:
        assert root.post(f"/api/projects/{pid}/members", json={"username": name, "role": "reviewer"}).status_code == 200
    return pid


def upload(client: TestClient, pid: int, name: str, content: str):
    return client.post(f"/api/projects/{pid}/import", files={"file": (name, content.encode(), "text/plain")})


def texts_csv(texts: list[str], labels: list[str] | None = None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["text", "label"] if labels else ["text"])
    for i, t in enumerate(texts):
        w.writerow([t, labels[i]] if labels else [t])
    return buf.getvalue()


def annotate(client: TestClient, pid: int, iid: int, value, seconds=1.5):
    return client.post(f"/api/projects/{pid}/items/{iid}/annotations", json={"value": value, "seconds": seconds})


# ------------------------------------------------------------------------------------------ auth


def test_login_csrf_roles(lab):
    client = TestClient(lab.app)
    assert client.get("/api/me").status_code == 401
    assert client.post("/api/login", json={"username": "root", "password": "wrong password"}).status_code == 401
    assert client.post("/api/login", json={"username": "nobody", "password": PASSWORD}).status_code == 401
    r = client.post("/api/login", json={"username": "root", "password": PASSWORD})
    assert r.status_code == 200 and r.json()["user"]["role"] == "admin"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    csrf = r.json()["csrf"]
    body = {"name": "x", "kind": "single", "labels": ["a", "b"]}
    assert client.post("/api/projects", json=body).status_code == 403  # no CSRF header
    assert client.post("/api/projects", json=body, headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert client.post("/api/projects", json=body, headers={"X-CSRF-Token": csrf}).status_code == 201
    assert client.get("/api/me").json()["csrf"] == csrf
    # the database holds only the token's hash
    token = client.cookies.get("slm_session")
    stored = [row[0] for row in sqlite3.connect(lab.db_path).execute("SELECT token_hash FROM sessions")]
    assert token not in stored and len(stored) == 1
    # roles: annotators and reviewers cannot create projects or users; annotators cannot review
    client.headers["X-CSRF-Token"] = csrf
    pid = make_project(client)
    ann, rev = lab.as_("ann1"), lab.as_("rev")
    assert ann.post("/api/projects", json=body).status_code == 403
    assert rev.post("/api/users", json={"username": "eve", "password": "12345678", "role": "admin"}).status_code == 403
    assert ann.get(f"/api/projects/{pid}/review").status_code == 403
    assert ann.get(f"/api/projects/{pid}/export").status_code == 403
    assert rev.get(f"/api/projects/{pid}/review").status_code == 200
    assert client.post("/api/logout").status_code == 200
    assert client.get("/api/me").status_code == 401


def test_login_rate_limit(lab):
    client = TestClient(lab.app)
    for _ in range(5):
        assert client.post("/api/login", json={"username": "ann1", "password": "not it at all"}).status_code == 401
    r = client.post("/api/login", json={"username": "ann1", "password": PASSWORD})
    assert r.status_code == 429 and "too many" in r.json()["detail"]
    assert client.post("/api/login", json={"username": "ann2", "password": PASSWORD}).status_code == 200  # per username


# ------------------------------------------------------------------------------------------ annotating


def test_blind_overlap_assignment_and_progress(lab):
    root = lab.as_("root")
    pid = make_project(root, overlap=2, members=("ann1", "ann2", "ann3"))
    assert upload(root, pid, "items.csv", texts_csv([f"text {i}" for i in range(9)])).json() == {"imported": 9}
    owners: dict[int, set[str]] = {}
    clients = {name: lab.as_(name) for name in ("ann1", "ann2", "ann3")}
    for name, client in clients.items():
        items = client.get(f"/api/projects/{pid}/items?mine=1").json()
        assert len(items) == 6  # 9 items x 2 annotators / 3 annotators
        for it in items:
            owners.setdefault(it["id"], set()).add(name)
    assert all(len(names) == 2 for names in owners.values()) and len(owners) == 9
    # ann1 labels an item; its co-annotator sees the item without that label
    a1, a2 = clients["ann1"], clients["ann2"]
    shared = next(iid for iid, names in owners.items() if names == {"ann1", "ann2"})
    r = annotate(a1, pid, shared, "billing")
    assert r.status_code == 200 and r.json()["annotation"] == {"value": "billing", "version": 1, "skipped": False}
    assert r.json()["progress"] == {"done": 1, "total": 6}
    seen = a2.get(f"/api/projects/{pid}/items/{shared}").json()
    assert seen["annotation"] is None and "billing" not in json.dumps(seen)
    # next skips done items, overwrite bumps the version, undo reopens the item
    nxt = a1.get(f"/api/projects/{pid}/next").json()
    assert nxt["item"]["id"] != shared and nxt["progress"]["done"] == 1
    assert annotate(a1, pid, shared, "login").json()["annotation"]["version"] == 2
    assert a1.delete(f"/api/projects/{pid}/items/{shared}/annotations/mine").status_code == 200
    assert a1.get(f"/api/projects/{pid}/items/{shared}").json()["annotation"] is None
    assert a1.get("/api/projects").json()[0]["progress"] == {"done": 0, "total": 6}
    # bad values are 422
    assert annotate(a1, pid, shared, "shipping").status_code == 422
    assert annotate(a1, pid, shared, ["billing"]).status_code == 422
    # time per item is recorded
    annotate(a1, pid, shared, "billing", seconds=2.0)
    annotate(a1, pid, shared, "billing", seconds=3.0)
    assert sqlite3.connect(lab.db_path).execute("SELECT seconds FROM annotations").fetchone()[0] == pytest.approx(5.0)
    # next with `after` moves on in order and returns null when all are done
    ids = [it["id"] for it in a2.get(f"/api/projects/{pid}/items?mine=1").json()]
    assert a2.get(f"/api/projects/{pid}/next?after={ids[2]}").json()["item"]["id"] == ids[3]
    for iid in ids:
        assert annotate(a2, pid, iid, "delivery").status_code == 200
    assert a2.get(f"/api/projects/{pid}/next").json() == {"item": None, "progress": {"done": 6, "total": 6}}


def test_spans_project(lab):
    root = lab.as_("root")
    pid = make_project(root, kind="spans", labels=["ORG", "PER"], overlap=1, members=("ann1",))
    text = "Ada Lovelace met Babbage at Analytical Engines Ltd"
    assert upload(root, pid, "items.jsonl", json.dumps({"text": text}) + "\n").status_code == 200
    ann = lab.as_("ann1")
    iid = ann.get(f"/api/projects/{pid}/next").json()["item"]["id"]
    good = [{"start": 28, "end": 50, "label": "ORG"}, {"start": 0, "end": 12, "label": "PER"}]
    r = annotate(ann, pid, iid, good)
    assert r.status_code == 200 and r.json()["annotation"]["value"][0] == {"start": 0, "end": 12, "label": "PER"}
    assert annotate(ann, pid, iid, [{"start": 40, "end": 99, "label": "ORG"}]).status_code == 422  # outside the text
    assert annotate(ann, pid, iid, [{"start": 0, "end": 12, "label": "PER"}, {"start": 4, "end": 12, "label": "ORG"}]).status_code == 422  # overlap
    spacy = root.get(f"/api/projects/{pid}/export?format=spacy").text
    assert json.loads(spacy) == {"text": text, "spans": sorted(good, key=lambda s: s["start"])}


def test_gold_version_conflict_and_history(lab):
    root = lab.as_("root")
    pid = make_project(root, overlap=2)
    upload(root, pid, "items.csv", texts_csv(["refund my invoice", "where is my parcel"]))
    a1, a2, rev = lab.as_("ann1"), lab.as_("ann2"), lab.as_("rev")
    iid = a1.get(f"/api/projects/{pid}/next").json()["item"]["id"]
    annotate(a1, pid, iid, "billing")
    annotate(a2, pid, iid, "delivery")
    queue = rev.get(f"/api/projects/{pid}/review").json()
    assert [q["item"]["id"] for q in queue] == [iid] and queue[0]["reason"] == "disagreement" and queue[0]["gold"] is None
    assert sorted(a["annotator"] for a in queue[0]["annotations"]) == ["ann1", "ann2"]
    # two reviewers both read version 0; the second write is refused
    r1 = rev.put(f"/api/projects/{pid}/items/{iid}/gold", json={"value": "billing", "version": 0})
    assert r1.status_code == 200 and r1.json() == {"gold": "billing", "version": 1}
    r2 = root.put(f"/api/projects/{pid}/items/{iid}/gold", json={"value": "delivery", "version": 0})
    assert r2.status_code == 409
    assert root.put(f"/api/projects/{pid}/items/{iid}/gold", json={"value": "delivery", "version": 1}).json()["version"] == 2
    assert rev.put(f"/api/projects/{pid}/items/{iid}/gold", json={"value": "login", "version": 1}).status_code == 409
    assert rev.put(f"/api/projects/{pid}/items/{iid}/gold", json={"value": "nope", "version": 2}).status_code == 422
    history = rev.get(f"/api/projects/{pid}/items/{iid}/history").json()
    assert [(h["who"], h["what"], h["value"]) for h in history] == [
        ("ann1", "annotate", "billing"), ("ann2", "annotate", "delivery"), ("rev", "gold", "billing"), ("root", "gold", "delivery"),
    ]
    assert rev.get(f"/api/projects/{pid}/review").json()[0]["gold"] == "delivery"


def test_concurrent_gold_writes_one_winner(lab):
    root = lab.as_("root")
    pid = make_project(root, overlap=1)
    upload(root, pid, "items.csv", texts_csv(["a text"]))
    iid = root.get(f"/api/projects/{pid}/items?mine=0").json()[0]["id"]
    clients = [lab.as_("rev") for _ in range(6)]
    codes = []

    def put(c):
        codes.append(c.put(f"/api/projects/{pid}/items/{iid}/gold", json={"value": "login", "version": 0}).status_code)

    threads = [threading.Thread(target=put, args=(c,)) for c in clients]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(codes) == [200] + [409] * 5


def test_idor_returns_404(lab):
    root = lab.as_("root")
    p1 = make_project(root, overlap=1, members=("ann1",), reviewers=())
    p2 = make_project(root, overlap=1, members=("ann2",), reviewers=("rev",))
    upload(root, p1, "a.csv", texts_csv(["one", "two"]))
    upload(root, p2, "b.csv", texts_csv(["three"]))
    a1, rev = lab.as_("ann1"), lab.as_("rev")
    foreign = root.get(f"/api/projects/{p2}/items?mine=0").json()[0]["id"]
    mine = a1.get(f"/api/projects/{p1}/items?mine=1").json()[0]["id"]
    assert [p["id"] for p in a1.get("/api/projects").json()] == [p1]
    assert a1.get(f"/api/projects/{p2}/next").status_code == 404  # another project
    assert a1.get(f"/api/projects/{p1}/items/{foreign}").status_code == 404  # another project's item through mine
    assert annotate(a1, p1, foreign, "login").status_code == 404
    assert rev.get(f"/api/projects/{p1}/review").status_code == 404  # reviewer of p2 only
    assert rev.put(f"/api/projects/{p2}/items/{mine}/gold", json={"value": "login", "version": 0}).status_code == 404
    # another annotator's item in the same project
    root.post(f"/api/projects/{p1}/members", json={"username": "ann3", "role": "annotator"})
    a3 = lab.as_("ann3")
    assert a3.get(f"/api/projects/{p1}/items?mine=1").json() == []  # overlap 1: items already have an annotator
    assert a3.get(f"/api/projects/{p1}/items/{mine}").status_code == 404
    assert a3.delete(f"/api/projects/{p1}/items/{mine}/annotations/mine").status_code == 404


def test_xss_payload_verbatim_json_and_page_csp(lab):
    root = lab.as_("root")
    pid = make_project(root, overlap=1, members=("ann1",))
    payload = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    upload(root, pid, "x.jsonl", json.dumps({"text": payload, "meta": {"note": "<b>hi</b>"}}) + "\n")
    r = lab.as_("ann1").get(f"/api/projects/{pid}/next")
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["item"]["text"] == payload and r.json()["item"]["meta"] == {"note": "<b>hi</b>"}
    assert r.headers["x-content-type-options"] == "nosniff"
    page = TestClient(lab.app).get("/")
    assert page.status_code == 200 and page.headers["content-security-policy"] == PAGE_CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    assert TestClient(lab.app).get("/index.html").headers["content-security-policy"] == PAGE_CSP


def test_body_size_limits(lab):
    root = lab.as_("root")
    pid = make_project(root, overlap=1)
    big = {"name": "x" * 70_000, "kind": "single", "labels": ["a", "b"]}
    assert root.post("/api/projects", json=big).status_code == 413
    assert upload(root, pid, "big.csv", "text\n" + ("y" * 1000 + "\n") * 1000).status_code == 200  # 1 MB import is fine
    assert upload(root, pid, "huge.csv", "text\n" + ("y" * 1000 + "\n") * 6000).status_code == 413

    def chunks():  # no Content-Length: the body is counted as it arrives
        yield b'{"name": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'", "kind": "single", "labels": ["a", "b"]}'

    r = root.post("/api/projects", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"].startswith("request body over 64 KB")


# ------------------------------------------------------------------------------------------ import / export


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.csv", "text,label\nhello,billing\nbye,shipping\n", "bad.csv line 3: label: label 'shipping' is not one of"),
        ("bad.csv", "words\nhello\n", "bad.csv line 1: no column 'text'"),
        ("bad.csv", "text,label\nhello,billing,extra\n", "bad.csv line 2: 3 fields where the header has 2"),
        ("bad.jsonl", '{"text": "ok", "label": "login"}\n{"text": "x"\n', "bad.jsonl line 2: not valid JSON"),
        ("bad.jsonl", '{"text": "", "label": "login"}\n', "bad.jsonl line 1: empty or missing text"),
        ("bad.jsonl", '{"text": "hi", "prediction": "login", "confidence": 3}\n', "bad.jsonl line 1: confidence 3.0 is outside [0, 1]"),
        ("bad.txt", "hello\n", "bad.txt: unknown file type"),
    ],
)
def test_import_errors_name_file_and_line(lab, name, content, message):
    root = lab.as_("root")
    pid = make_project(root, overlap=1)
    r = upload(root, pid, name, content)
    assert r.status_code == 422 and r.json()["detail"].startswith(message), r.json()
    assert "\n" not in r.json()["detail"]
    assert root.get(f"/api/projects/{pid}/items?mine=0").json() == []  # nothing half-imported


def test_import_span_offsets_outside_text(lab):
    root = lab.as_("root")
    pid = make_project(root, kind="spans", labels=["ORG"], overlap=1)
    row = {"text": "Acme", "spans": [{"start": 0, "end": 9, "label": "ORG"}]}
    r = upload(root, pid, "s.jsonl", json.dumps(row) + "\n")
    assert r.status_code == 422 and r.json()["detail"].startswith("s.jsonl line 1: label: span [0, 9) falls outside the text")


def test_csv_export_neutralizes_formulas(lab):
    root = lab.as_("root")
    pid = make_project(root, overlap=1, members=("ann1",))
    texts = ["=HYPERLINK(\"http://evil\")", "+1+2", "-3", "@SUM(A1)", "plain"]
    upload(root, pid, "f.csv", texts_csv(texts, ["login"] * 5))
    rows = list(csv.reader(io.StringIO(root.get(f"/api/projects/{pid}/export?format=csv").text)))
    assert [r[1] for r in rows[1:]] == ["'" + t for t in texts[:4]] + ["plain"]
    assert all(not cell.startswith(("=", "+", "-", "@")) for r in rows for cell in r)


def test_export_round_trip_train_format_and_labelstudio(lab, tmp_path):
    from conftest import synthetic_rows

    from slmkit.data import check_labels, read_examples

    root = lab.as_("root")
    pid = make_project(root, overlap=2)
    rows = synthetic_rows(12, seed=5) + [('a "quoted", comma\ntext', "login")]
    upload(root, pid, "items.csv", texts_csv([t for t, _ in rows]))
    a1, a2 = lab.as_("ann1"), lab.as_("ann2")
    truth = dict(rows)
    for client in (a1, a2):
        for it in client.get(f"/api/projects/{pid}/items?mine=1").json():
            annotate(client, pid, it["id"], truth[it["text"]])
    r = root.get(f"/api/projects/{pid}/export?format=train")
    assert r.headers["content-disposition"].startswith("attachment")
    path = tmp_path / "train.csv"
    path.write_bytes(r.content)
    examples = read_examples(path)  # exactly what slm train reads
    assert [(e.text, e.label) for e in examples] == rows
    assert check_labels(examples, path) == LABELS
    # JSONL round trip: export, import into a fresh project, same texts and labels (as gold)
    jsonl = root.get(f"/api/projects/{pid}/export?format=jsonl").text
    pid2 = make_project(root, overlap=1)
    assert upload(root, pid2, "back.jsonl", jsonl).json() == {"imported": len(rows)}
    again = [json.loads(x) for x in root.get(f"/api/projects/{pid2}/export?format=jsonl").text.splitlines()]
    assert [(x["text"], x["label"], x["gold"]) for x in again] == [(t, lab_, lab_) for t, lab_ in rows]
    # Label Studio tasks: one per item, both annotations as choices
    tasks = root.get(f"/api/projects/{pid}/export?format=labelstudio").json()
    assert len(tasks) == len(rows) and tasks[0]["data"]["text"] == rows[0][0]
    assert [a["result"][0]["value"]["choices"] for a in tasks[0]["annotations"]] == [[rows[0][1]]] * 2
    assert tasks[0]["annotations"][0]["result"][0]["type"] == "choices"
    assert root.get(f"/api/projects/{pid}/export?format=xml").status_code == 422


def test_import_with_labels_and_predictions(lab):
    root = lab.as_("root")
    pid = make_project(root, kind="multi", overlap=1, members=("ann1",))
    content = "text,label,prediction,confidence,source\nfirst,billing|login,billing,0.75,web\nsecond,,,,mail\n"
    assert upload(root, pid, "m.csv", content).json() == {"imported": 2}
    item = lab.as_("ann1").get(f"/api/projects/{pid}/next").json()["item"]
    assert item["prediction"] == {"label": ["billing"], "confidence": 0.75} and item["meta"] == {"source": "web"}
    exported = [json.loads(x) for x in root.get(f"/api/projects/{pid}/export?format=jsonl").text.splitlines()]
    assert [x["labels"] for x in exported] == [["billing", "login"], None]


# ------------------------------------------------------------------------------------------ agreement


def test_agreement_endpoint(lab):
    root = lab.as_("root")
    pid = make_project(root, overlap=2)
    upload(root, pid, "items.csv", texts_csv([f"t{i}" for i in range(6)]))
    a1, a2, rev = lab.as_("ann1"), lab.as_("ann2"), lab.as_("rev")
    answers = {"ann1": ["billing", "login", "login", "delivery", "billing", "login"],
               "ann2": ["billing", "login", "delivery", "delivery", "billing", "login"]}
    for name, client in (("ann1", a1), ("ann2", a2)):
        for it, value in zip(client.get(f"/api/projects/{pid}/items?mine=1").json(), answers[name]):
            annotate(client, pid, it["id"], value)
    report = rev.get(f"/api/projects/{pid}/agreement")
    assert report.status_code == 200, report.text
    body = report.json()
    assert set(body) >= {"overall", "per_label", "pairs", "annotators"}
    from sklearn.metrics import cohen_kappa_score

    expected = cohen_kappa_score(answers["ann1"], answers["ann2"])
    assert body["pairs"] == [{"a": "ann1", "b": "ann2", "n": 6, "kappa": pytest.approx(expected)}]
    assert body["overall"]["cohen_kappa"] == pytest.approx(expected) and body["overall"]["items_with_overlap"] == 6
    assert set(body["per_label"]) == set(LABELS)
    # the disagreement resolved as ann2 said: ann2 is right on all gold items, ann1 on none
    disputed = rev.get(f"/api/projects/{pid}/review").json()[0]["item"]["id"]
    rev.put(f"/api/projects/{pid}/items/{disputed}/gold", json={"value": "delivery", "version": 0})
    annotators = rev.get(f"/api/projects/{pid}/agreement").json()["annotators"]
    assert annotators == {"ann1": {"accuracy": 0.0, "n": 1}, "ann2": {"accuracy": 1.0, "n": 1}}
    assert lab.as_("ann1").get(f"/api/projects/{pid}/agreement").status_code == 403


# ------------------------------------------------------------------------------------------ storage


def _dump(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def test_backup_restore_identical(lab, tmp_path):
    root = lab.as_("root")
    pid = make_project(root, overlap=2)
    upload(root, pid, "items.csv", texts_csv(["one", "two", "three"], ["login", "billing", "login"]))
    a1 = lab.as_("ann1")
    for it in a1.get(f"/api/projects/{pid}/items?mine=1").json():
        annotate(a1, pid, it["id"], "login")
    before = _dump(lab.db_path)
    backup = admin.backup(str(lab.db_path), str(tmp_path / "backup.db"))
    assert _dump(backup) == before
    # damage the live database, then restore
    annotate(a1, pid, a1.get(f"/api/projects/{pid}/items?mine=1").json()[0]["id"], "billing")
    root.post("/api/projects", json={"name": "later", "kind": "single", "labels": ["a", "b"]})
    assert _dump(lab.db_path) != before
    admin.restore(str(lab.db_path), str(backup))
    assert _dump(lab.db_path) == before


def test_backup_restore_cli(tmp_path):
    from typer.testing import CliRunner

    from slmkit.cli import app

    runner = CliRunner()
    path = tmp_path / "l.db"
    r = runner.invoke(app, ["label", "init", "--db", str(path), "--admin", "boss"])
    assert r.exit_code == 0 and "one-time password" in r.output
    password = r.output.split("one-time password (shown only now):")[1].split()[0]
    client = TestClient(create_app(str(path)))
    login(client, "boss", password)
    assert runner.invoke(app, ["label", "init", "--db", str(path)]).exit_code == 2  # an admin exists already
    assert runner.invoke(app, ["label", "backup", "--db", str(path), "--out", str(tmp_path / "b.db")]).exit_code == 0
    assert runner.invoke(app, ["label", "restore", str(tmp_path / "b.db"), "--db", str(path)]).exit_code == 0
    r = runner.invoke(app, ["label", "restore", str(tmp_path / "missing.db"), "--db", str(path)])
    assert r.exit_code == 2 and "backup file not found" in r.output
    # --password-prompt: typed twice, at least 8 characters, never printed
    other = tmp_path / "prompted.db"
    r = runner.invoke(app, ["label", "init", "--db", str(other), "--password-prompt"], input="short\nshort\n")
    assert r.exit_code == 2 and "at least 8 characters" in r.output
    r = runner.invoke(app, ["label", "init", "--db", str(other), "--password-prompt"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert r.exit_code == 0 and "one-time" not in r.output
    login(TestClient(create_app(str(other))), "admin", PASSWORD)
    # add-user and import from the command line
    r = runner.invoke(app, ["label", "add-user", "carol", "--db", str(path), "--role", "reviewer"])
    assert r.exit_code == 0 and "one-time password" in r.output
    assert runner.invoke(app, ["label", "add-user", "carol", "--db", str(path)]).exit_code == 2  # exists
    pid = client.post("/api/projects", json={"name": "c", "kind": "single", "labels": ["a", "b"]}).json()["id"]
    items = tmp_path / "items.csv"
    items.write_text("text,label\nfirst,a\nsecond,\n", encoding="utf-8")
    r = runner.invoke(app, ["label", "import", str(pid), str(items), "--db", str(path)])
    assert r.exit_code == 0 and "imported 2 items" in r.output
    items.write_text("text,label\nfirst,c\n", encoding="utf-8")
    r = runner.invoke(app, ["label", "import", str(pid), str(items), "--db", str(path)])
    assert r.exit_code == 2 and "items.csv line 2: label: label 'c' is not one of" in r.output


V1_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL PRIMARY KEY);
CREATE TABLE users (id INTEGER NOT NULL PRIMARY KEY, username VARCHAR(100) NOT NULL UNIQUE, password_hash VARCHAR(200) NOT NULL,
  role VARCHAR(20) NOT NULL, created_at DATETIME NOT NULL);
CREATE TABLE projects (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(200) NOT NULL, kind VARCHAR(10) NOT NULL, labels JSON NOT NULL,
  overlap INTEGER NOT NULL, allow_overlapping_spans BOOLEAN NOT NULL, created_at DATETIME NOT NULL);
CREATE TABLE members (id INTEGER NOT NULL PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(id),
  user_id INTEGER NOT NULL REFERENCES users(id), role VARCHAR(20) NOT NULL, UNIQUE (project_id, user_id));
CREATE TABLE items (id INTEGER NOT NULL PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(id), text TEXT NOT NULL,
  meta JSON, prediction JSON, confidence FLOAT);
CREATE TABLE assignments (id INTEGER NOT NULL PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(id),
  item_id INTEGER NOT NULL REFERENCES items(id), user_id INTEGER NOT NULL REFERENCES users(id), UNIQUE (item_id, user_id));
CREATE TABLE annotations (id INTEGER NOT NULL PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(id),
  item_id INTEGER NOT NULL REFERENCES items(id), user_id INTEGER NOT NULL REFERENCES users(id), value JSON, skipped BOOLEAN NOT NULL,
  seconds FLOAT NOT NULL, version INTEGER NOT NULL, updated_at DATETIME NOT NULL, UNIQUE (item_id, user_id));
CREATE TABLE gold (item_id INTEGER NOT NULL PRIMARY KEY REFERENCES items(id), value JSON, version INTEGER NOT NULL,
  user_id INTEGER REFERENCES users(id), updated_at DATETIME NOT NULL);
CREATE TABLE history (id INTEGER NOT NULL PRIMARY KEY, item_id INTEGER NOT NULL REFERENCES items(id), user_id INTEGER REFERENCES users(id),
  what VARCHAR(40) NOT NULL, value JSON, at DATETIME NOT NULL);
CREATE TABLE sessions (token_hash VARCHAR(64) NOT NULL PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id), csrf VARCHAR(64) NOT NULL,
  expires_at DATETIME NOT NULL);
CREATE TABLE login_attempts (id INTEGER NOT NULL PRIMARY KEY, username VARCHAR(100) NOT NULL, ip VARCHAR(64) NOT NULL, at DATETIME NOT NULL);
INSERT INTO schema_version VALUES (1);
"""


def test_migration_from_v1(tmp_path):
    """A database written by schema version 1 (no model columns, no label_errors table) opens, upgraded, with its data."""
    from slmkit.label import auth

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO users VALUES (1, 'root', ?, 'admin', '2026-01-01 00:00:00')", (auth.hash_password(PASSWORD),))
    conn.execute("INSERT INTO projects VALUES (1, 'old', 'single', '[\"a\", \"b\"]', 1, 0, '2026-01-01 00:00:00')")
    conn.execute("INSERT INTO items VALUES (1, 1, 'an old text', NULL, NULL, NULL)")
    conn.commit()
    conn.close()
    client = TestClient(create_app(str(path)))
    login(client, "root")
    assert sqlite3.connect(path).execute("SELECT version FROM schema_version").fetchall() == [(db.SCHEMA_VERSION,)]
    project = client.get("/api/projects").json()[0]
    assert project["name"] == "old" and project["labels"] == ["a", "b"]
    assert client.get("/api/projects/1/model").json()["status"] == "idle"
    assert client.get("/api/projects/1/label-errors").json() == []
    assert client.get("/api/projects/1/items?mine=0").json() == [{"id": 1, "text": "an old text", "done": False}]
    # a newer schema than this code knows is refused with a one-line error
    sqlite3.connect(path).execute("UPDATE schema_version SET version = 99").connection.commit()
    from slmkit.errors import UserError

    with pytest.raises(UserError, match="newer than this slmkit"):
        db.open_db(str(path))


def test_sqlite_is_wal_and_synchronous_full_and_urls_work(tmp_path):
    sessions = db.open_db(str(tmp_path / "w.db"))
    with sessions() as s:
        assert s.connection().exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert s.connection().exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    # --db takes a SQLAlchemy URL as well as a path (PostgreSQL URLs go the same way)
    url = f"sqlite+pysqlite:///{tmp_path / 'u.db'}"
    admin.init(url, "root", PASSWORD)
    login(TestClient(create_app(url)), "root")
    from slmkit.errors import UserError

    with pytest.raises(UserError, match="backup handles SQLite files; for PostgreSQL use pg_dump"):
        admin.backup("postgresql+psycopg://u@localhost/labels", str(tmp_path / "b.db"))


# ------------------------------------------------------------------------------------------ durability


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_kill_9_loses_no_acknowledged_annotation(tmp_path):
    """`slm label serve` as a real process; saves stream in; SIGKILL mid-stream; every save that got a 200 is on disk."""
    import httpx

    path = tmp_path / "labels.db"
    admin.init(str(path), "root", PASSWORD)
    admin.add_user(str(path), "ann", "annotator", PASSWORD)
    sessions = db.open_db(str(path))
    with sessions() as s:
        project = db.Project(name="d", kind="single", labels=["a", "b"], overlap=1)
        s.add(project)
        s.flush()
        db.set_member(s, project, db.user_by_name(s, "ann"), "annotator")
        db.add_items(s, project, [{"text": f"item {i}", "label": None, "prediction": None, "confidence": None, "meta": None} for i in range(400)])
        s.commit()
        pid = project.id
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(
        [sys.executable, "-m", "slmkit.cli", "label", "serve", "--db", str(path), "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    acked: dict[int, str] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=base, timeout=5)
        for _ in range(200):
            try:
                r = client.post("/api/login", json={"username": "ann", "password": PASSWORD})
                break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            pytest.fail(f"server did not start: {server.stderr.read().decode() if server.poll() is not None else ''}")
        client.headers["X-CSRF-Token"] = r.json()["csrf"]
        items = [it["id"] for it in client.get(f"/api/projects/{pid}/items?mine=1").json()]
        killer = threading.Timer(1.0, lambda: os.kill(server.pid, signal.SIGKILL))
        killer.start()
        for n, iid in enumerate(items):
            value = "ab"[n % 2]
            try:
                r = client.post(f"/api/projects/{pid}/items/{iid}/annotations", json={"value": value, "seconds": 0.1})
            except httpx.TransportError:
                break
            if r.status_code == 200:
                acked[iid] = value
        killer.join()
    finally:
        server.kill()
        server.wait()
    assert server.returncode == -signal.SIGKILL
    assert 0 < len(acked) < 400, f"the kill should land mid-stream ({len(acked)} saves acknowledged)"
    conn = sqlite3.connect(path)
    stored = {iid: json.loads(value) for iid, value in conn.execute("SELECT item_id, value FROM annotations")}
    missing = {iid: v for iid, v in acked.items() if stored.get(iid) != v}
    assert not missing, f"{len(missing)} acknowledged saves lost"
    print(f"kill -9: {len(acked)} saves acknowledged, {len(stored)} stored")


# ------------------------------------------------------------------------------------------ the model loop


def _wait_model(client: TestClient, pid: int, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/api/projects/{pid}/model").json()
        if state["status"] != "training" and state["message"]:
            return state
        time.sleep(0.2)
    pytest.fail(f"the model job did not finish: {state}")


def test_attach_model_prelabels_active_order_and_retrain(tmp_path, trained_tiny, tiny_base):
    """Attach a trained model (pre-labels, active order), then K new labels retrain it in the background via slmkit.train."""
    from conftest import synthetic_rows

    path = tmp_path / "labels.db"
    admin.init(str(path), "root", PASSWORD)
    admin.add_user(str(path), "ann1", "annotator", PASSWORD)
    settings = {"model.base": str(tiny_base), "train.epochs": 2, "train.lr": 3e-3, "train.batch_size": 16, "train.threads": 1, "train.warmup": 0.0}
    app = create_app(str(path), model_root=tmp_path / "models", train_settings=settings)
    root, ann = TestClient(app), TestClient(app)
    login(root, "root")
    login(ann, "ann1")
    pid = make_project(root, overlap=1, members=("ann1",), reviewers=())
    rows = synthetic_rows(30, seed=11)
    upload(root, pid, "items.csv", texts_csv([t for t, _ in rows]))
    assert root.post(f"/api/projects/{pid}/model", json={"model_dir": str(tmp_path)}).status_code == 422  # not a model
    r = root.post(f"/api/projects/{pid}/model", json={"model_dir": str(trained_tiny), "retrain_every": 12})
    assert r.status_code == 200 and r.json()["retrain_every"] == 12
    state = _wait_model(root, pid)
    assert state["status"] == "idle" and state["message"] == "pre-labeled 30 items", state
    first = ann.get(f"/api/projects/{pid}/next").json()["item"]
    assert first["prediction"]["label"] in LABELS and 0 < first["prediction"]["confidence"] <= 1
    # active order: the first item is the one the model is least sure of (margin), as rank_for_labeling says
    with db.open_db(str(path))() as s:
        items = db.project_items(s, pid)
        margins = {i.id: sorted(i.probs)[-1] - sorted(i.probs)[-2] for i in items}
    active = ann.get(f"/api/projects/{pid}/next?order=active").json()["item"]
    assert margins[active["id"]] == pytest.approx(min(margins.values()), abs=0.05)
    # 12 new labels start a retraining; annotators keep working while it runs
    truth = dict(rows)
    for it in ann.get(f"/api/projects/{pid}/items?mine=1").json()[:12]:
        assert annotate(ann, pid, it["id"], truth[it["text"]]).status_code == 200
    assert ann.get(f"/api/projects/{pid}/next").status_code == 200
    app.state.jobs.wait()
    state = root.get(f"/api/projects/{pid}/model").json()
    assert state["status"] == "idle" and state["message"].startswith("retrained on 12 labels"), state
    assert state["model_dir"] != str(trained_tiny.resolve()) and (Path(state["model_dir"]) / "model.safetensors").is_file()
    assert state["labels_since_train"] == 0
    assert state["label_errors"].startswith("done:"), state  # detection follows each retraining


def test_late_member_gets_items_short_of_annotators_and_skip(lab):
    root = lab.as_("root")
    pid = make_project(root, overlap=2, members=("ann1",))
    upload(root, pid, "items.csv", texts_csv(["one", "two", "three"]))
    a1 = lab.as_("ann1")
    assert len(a1.get(f"/api/projects/{pid}/items?mine=1").json()) == 3  # the only annotator gets everything
    root.post(f"/api/projects/{pid}/members", json={"username": "ann2", "role": "annotator"})
    root.post(f"/api/projects/{pid}/members", json={"username": "ann3", "role": "annotator"})
    counts = [len(lab.as_(n).get(f"/api/projects/{pid}/items?mine=1").json()) for n in ("ann1", "ann2", "ann3")]
    assert counts == [3, 3, 0]  # ann2 brings every item to 2 annotators; ann3 is not needed
    # skipping counts as done for progress and moves on, but is no label
    first = a1.get(f"/api/projects/{pid}/next").json()["item"]["id"]
    r = a1.post(f"/api/projects/{pid}/items/{first}/annotations", json={"value": None, "skipped": True, "seconds": 0.5})
    assert r.status_code == 200 and r.json()["annotation"]["skipped"] and r.json()["progress"]["done"] == 1
    assert a1.get(f"/api/projects/{pid}/next").json()["item"]["id"] != first
    exported = [json.loads(x) for x in root.get(f"/api/projects/{pid}/export?format=jsonl").text.splitlines()]
    assert exported[0]["annotations"] == [] and exported[0]["label"] is None
    # errors are one line of JSON
    r = a1.post(f"/api/projects/{pid}/items/{first}/annotations", json={"value": "login", "seconds": -1})
    assert r.status_code == 422 and r.json()["detail"].startswith("seconds:")


def test_label_errors_background_detection_and_review_queue(tmp_path, trained_tiny):
    """Imported labels with 4 flipped: the background detection (cleanlab over cross-validated probabilities)
    flags them, ranked, and the review queue lists them with reason label_error."""
    from conftest import synthetic_rows

    path = tmp_path / "labels.db"
    admin.init(str(path), "root", PASSWORD)
    app = create_app(str(path), model_root=tmp_path / "models")
    root = TestClient(app)
    login(root, "root")
    pid = make_project(root, overlap=1, members=(), reviewers=())
    rows = synthetic_rows(60, seed=21)
    flipped = {3, 17, 30, 44}
    given = [LABELS[(LABELS.index(label) + 1) % 3] if i in flipped else label for i, (_, label) in enumerate(rows)]
    upload(root, pid, "items.csv", texts_csv([t for t, _ in rows], given))
    root.post(f"/api/projects/{pid}/model", json={"model_dir": str(trained_tiny)})
    app.state.jobs.wait()
    r = root.post(f"/api/projects/{pid}/label-errors")
    assert r.status_code == 202
    app.state.jobs.wait()
    assert root.get(f"/api/projects/{pid}/model").json()["label_errors"].startswith("done:")
    found = root.get(f"/api/projects/{pid}/label-errors").json()
    ids = [it["id"] for it in root.get(f"/api/projects/{pid}/items?mine=0").json()]
    flagged = {ids.index(f["item_id"]) for f in found}
    assert flagged >= flipped, found
    assert [f["score"] for f in found] == sorted((f["score"] for f in found), reverse=True)
    first = found[0]
    assert first["given"] == given[ids.index(first["item_id"])] and first["suggested"] == rows[ids.index(first["item_id"])][1]
    queue = root.get(f"/api/projects/{pid}/review").json()
    assert {q["item"]["id"] for q in queue if q["reason"] == "label_error"} == {f["item_id"] for f in found}
    # a reviewer's decision settles the suspicion: the item leaves the label-error list
    row = next(q for q in queue if q["item"]["id"] == first["item_id"])
    r = root.put(f"/api/projects/{pid}/items/{first['item_id']}/gold", json={"value": first["suggested"], "version": row["version"]})
    assert r.status_code == 200, r.text
    assert first["item_id"] not in {f["item_id"] for f in root.get(f"/api/projects/{pid}/label-errors").json()}
