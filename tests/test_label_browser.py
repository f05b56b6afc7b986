"""`slm label`'s page in headless Debian chromium against the real server (uvicorn in a subprocess, SQLite file):
an annotator labels 10 items by keyboard only and sees the progress move (and a model's pre-label, undo, arrows,
skip and the time spent recorded), a second annotator disagrees on one item,
the reviewer finds the disagreement in the review queue and resolves it (after a 409 from a concurrent edit), the
JSONL export downloaded through the page's link equals the database, and an item made of script/HTML renders as
text and never runs. Screenshots of the annotating and agreement pages go to $SLMKIT_ARTIFACTS (default:
test-artifacts/ at the repository root).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import require_browser

ROOT = Path(__file__).resolve().parents[1]
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=1">'
LABELS = ["positive", "negative", "<b>mixed</b>"]  # markup in a label must show as text too
TEXTS = [f"review {i}: the parcel came {['early', 'late', 'broken'][i % 3]} and support was {['kind', 'slow', 'absent'][i % 3]}" for i in range(12)]
TEXTS[3] = XSS
PREDICTIONS = {5: {"prediction": "negative", "confidence": 0.83}}  # a model's pre-label on the sixth item
PASSWORDS = {"admin": "admin-pass-123", "rita": "reviewer-pass-123", "ann": "annotator-pass-1", "bob": "annotator-pass-2"}
SERVE = "import sys, uvicorn; from slmkit.label.app import create_app; uvicorn.run(create_app(sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]), log_level='warning')"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def as_admin(url: str):
    """An HTTP client logged in as the admin, and the headers a state-changing request needs."""
    with httpx.Client(base_url=url, trust_env=False) as http:
        csrf = http.post("/api/login", json={"username": "admin", "password": PASSWORDS["admin"]}).raise_for_status().json()["csrf"]
        yield http, {"X-CSRF-Token": csrf}


def make_project(url: str, texts: list, members: dict[str, str], **settings) -> int:
    """A project made through the admin's HTTP API, with members and items (texts, or JSONL rows); its id."""
    with as_admin(url) as (http, headers):
        pid = http.post("/api/projects", headers=headers, json=settings).raise_for_status().json()["id"]
        for name, role in members.items():
            http.post(f"/api/projects/{pid}/members", headers=headers, json={"username": name, "role": role}).raise_for_status()
        jsonl = "".join(json.dumps({"text": t} if isinstance(t, str) else t, ensure_ascii=False) + "\n" for t in texts).encode()
        imported = http.post(f"/api/projects/{pid}/import", headers=headers, files={"file": ("items.jsonl", jsonl, "application/x-ndjson")})
        assert imported.raise_for_status().json()["imported"] == len(texts)
    return pid


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real app on a free port over a fresh SQLite file: users made through slmkit.label.admin, the project
    (single-label, overlap 2, 12 items) through the admin's HTTP API. Yields (url, db path, project id)."""
    require_browser()  # before any setup: without a browser there is nothing to test here
    from argon2 import PasswordHasher

    from slmkit.label import admin, auth

    tmp = tmp_path_factory.mktemp("label")
    db_path = str(tmp / "labels.db")
    with pytest.MonkeyPatch.context() as mp:
        # cheap hashes (their parameters travel inside each hash, so the server checks them as cheaply): the
        # production parameters are test_label_app's business, not this test's
        mp.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
        admin.init(db_path, "admin", PASSWORDS["admin"])
        port = free_port()
        log = open(tmp / "server.log", "wb")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen([sys.executable, "-c", SERVE, db_path, str(port)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        try:
            for name, role in [("rita", "reviewer"), ("ann", "annotator"), ("bob", "annotator")]:  # while the server starts
                admin.add_user(db_path, name, role, PASSWORDS[name])
        except BaseException:
            proc.kill()
            raise
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/api/me", trust_env=False).status_code == 401:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the label server did not start: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)
        rows = [{"text": t, **PREDICTIONS.get(i, {})} for i, t in enumerate(TEXTS)]
        pid = make_project(url, rows, {"rita": "reviewer", "ann": "annotator", "bob": "annotator"},
                           name="Parcel reviews", kind="single", labels=LABELS, overlap=2)
        yield url, db_path, pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def artifacts_dir() -> Path:
    out = Path(os.environ.get("SLMKIT_ARTIFACTS") or ROOT / "test-artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


class Session:
    """One user's browser context, logged in by typing into the login form; records page errors and every
    state-changing /api request that lacks the CSRF header."""

    def __init__(self, browser, url: str, username: str):
        self.context = browser.new_context(viewport={"width": 1100, "height": 800}, accept_downloads=True)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.unprotected: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        # the browser logs every 4xx as a console error ("Failed to load resource"): 401 before login and a 409 are expected
        self.page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource") and self.errors.append(m.text))
        self.page.on("response", lambda r: r.status >= 500 and self.errors.append(f"{r.status} from {r.url}"))
        self.page.on("request", self._check_csrf)
        self.page.goto(f"{url}/")
        self.page.wait_for_selector("#login-user")
        self.page.keyboard.type(username)  # the username field has the focus
        self.page.keyboard.press("Tab")
        self.page.keyboard.type(PASSWORDS[username])
        self.page.keyboard.press("Enter")
        self.page.wait_for_selector(".project")
        self.url = url

    def _check_csrf(self, request) -> None:
        if "/api/" in request.url and request.method not in ("GET", "HEAD") and not request.url.endswith("/api/login"):
            if not request.headers.get("x-csrf-token"):
                self.unprotected.append(f"{request.method} {request.url}")

    def open(self, hash_route: str, selector: str):
        target = f"{self.url}/#{hash_route}"
        if self.page.url == target:
            self.page.reload()  # going to the same URL would change nothing
        else:
            self.page.goto(target)
        try:
            return self.page.wait_for_selector(selector, timeout=10_000)
        except Exception as e:  # say what the page shows instead
            raise AssertionError(f"{hash_route}: no {selector}; the page says {self.page.inner_text('body')[:1500]!r}") from e

    def progress(self) -> str:
        return self.page.text_content("#progress-text")

    def shown_item(self) -> int:
        return int(self.page.get_attribute("#work", "data-item-id"))

    def label_by_keyboard(self, key: str, done_after: int, total: int) -> int:
        """Press a label's number and Enter on the item shown; wait for the progress to read `done_after` and the
        next item to replace this one; this one's id."""
        iid = self.shown_item()
        self.page.keyboard.press(key)
        self.page.keyboard.press("Enter")
        self.page.wait_for_function("t => document.querySelector('#progress-text').textContent === t", arg=f"{done_after} / {total} done")
        self.page.wait_for_function("i => document.querySelector('#work').dataset.itemId !== String(i)", arg=iid)
        return iid

    def close(self) -> None:
        assert not self.errors, self.errors
        assert not self.unprotected, f"state-changing requests without X-CSRF-Token: {self.unprotected}"
        self.context.close()


def database(db_path: str, pid: int) -> dict:
    """What the database holds: items, annotations (username -> value; skips left out), gold, the seconds recorded
    per annotation and the skips, both keyed by (item id, user id)."""
    from sqlalchemy import select

    from slmkit.label import db

    sessions = db.open_db(db_path, create=False)
    with sessions() as s:
        items = {i.id: i.text for i in db.project_items(s, pid)}
        annotations: dict[int, dict[str, object]] = {}
        for item_id, username, value in db.annotations_of(s, pid):
            annotations.setdefault(item_id, {})[username] = value
        gold = {item_id: value for item_id, (value, _version) in db.golds_of(s, pid).items()}
        rows = list(s.scalars(select(db.Annotation).where(db.Annotation.project_id == pid)))
        seconds = {(a.item_id, a.user_id): a.seconds for a in rows}
        skipped = {(a.item_id, a.user_id) for a in rows if a.skipped}
        users = {u.username: u.id for u in s.scalars(select(db.User))}
    return {"items": items, "annotations": annotations, "gold": gold, "seconds": seconds, "skipped": skipped, "users": users}


def test_annotate_review_export_in_the_browser(server, browser, artifacts_dir):
    url, db_path, pid = server
    total = len(TEXTS)

    # --- annotator 1: ten items by keyboard only, the progress bar moving with each
    ann = Session(browser, url, "ann")
    ann.open(f"/p/{pid}/annotate", "#work[data-item-id]")
    assert ann.progress() == f"0 / {total} done"
    assert [b.text_content() for b in ann.page.query_selector_all("#labels button")] == [f"{i + 1}{label}" for i, label in enumerate(LABELS)]
    given: dict[int, str] = {}
    slow_item, saw_xss, saw_prediction = None, False, False
    for n in range(10):
        ann.page.wait_for_function("() => document.activeElement && document.activeElement.id === 'item-text'")
        if n == 4:  # this item gets a measurable think time
            slow_item = ann.shown_item()
            ann.page.wait_for_timeout(400)
        if ann.page.text_content("#item-text") == TEXTS[5]:  # the pre-label is shown and pre-filled
            assert ann.page.text_content("#prediction-label") == "negative"
            assert "83%" in ann.page.text_content("#prediction-confidence")
            assert ann.page.get_attribute("#labels button[aria-pressed=true]", "data-label") == "negative"
            saw_prediction = True
        if ann.page.text_content("#item-text") == XSS:  # shown as text: no element made of it, nothing ran
            assert ann.page.query_selector("#item-text img, #item-text script") is None
            assert ann.page.evaluate("() => window.__xss") is None
            saw_xss = True
        key = n % len(LABELS)
        iid = ann.label_by_keyboard(str(key + 1), n + 1, total)
        given[iid] = LABELS[key]
        assert ann.page.get_attribute("[role=progressbar]", "aria-valuenow") == str(n + 1)
        if n == 2:
            ann.page.screenshot(path=str(artifacts_dir / "label-annotate.png"), full_page=True)
    assert len(given) == 10 and saw_xss and saw_prediction
    # undo (u) reopens the last item and takes the progress back; labeling it again takes it forward
    last = list(given)[-1]
    ann.page.keyboard.press("u")
    ann.page.wait_for_function("t => document.querySelector('#progress-text').textContent === t", arg=f"9 / {total} done")
    ann.page.wait_for_function("i => document.querySelector('#work').dataset.itemId === String(i)", arg=last)
    assert ann.page.query_selector("#labels button[aria-pressed=true]") is None  # open again: nothing picked
    ann.label_by_keyboard(str(LABELS.index(given[last]) + 1), 10, total)
    # arrows move between the assigned items; an item already labeled shows its value
    ann.page.keyboard.press("ArrowLeft")
    ann.page.wait_for_function("i => document.querySelector('#work').dataset.itemId === String(i)", arg=last)
    assert ann.page.get_attribute("#labels button[aria-pressed=true]", "data-label") == given[last]
    ann.page.keyboard.press("ArrowLeft")
    ann.page.wait_for_function("i => document.querySelector('#work').dataset.itemId !== String(i)", arg=last)
    # s skips an open item (it counts as done, with no label); Ctrl+Z takes the skip back
    ann.open(f"/p/{pid}/annotate", "#work[data-item-id]")
    skipped = ann.shown_item()
    assert skipped not in given
    ann.page.keyboard.press("s")
    ann.page.wait_for_function("t => document.querySelector('#progress-text').textContent === t", arg=f"11 / {total} done")
    ann.page.wait_for_function("i => document.querySelector('#work').dataset.itemId !== String(i)", arg=skipped)
    ann.page.keyboard.press("Control+z")
    ann.page.wait_for_function("t => document.querySelector('#progress-text').textContent === t", arg=f"10 / {total} done")
    ann.page.wait_for_function("i => document.querySelector('#work').dataset.itemId === String(i)", arg=skipped)
    ann.page.keyboard.press("s")
    ann.page.wait_for_function("t => document.querySelector('#progress-text').textContent === t", arg=f"11 / {total} done")
    ann.close()

    # --- annotator 2 labels the first item differently (a disagreement) and the next two as annotator 1 did
    bob = Session(browser, url, "bob")
    bob.open(f"/p/{pid}/annotate", "#work[data-item-id]")
    first = bob.shown_item()
    assert first in given
    other = next(label for label in LABELS if label != given[first])
    bob.label_by_keyboard(str(LABELS.index(other) + 1), 1, total)
    for done in (2, 3):
        bob.label_by_keyboard(str(LABELS.index(given[bob.shown_item()]) + 1), done, total)
    bob.close()

    # --- the reviewer sees it in the queue; a concurrent gold edit makes the first try a 409, the second wins
    rita = Session(browser, url, "rita")
    card = rita.open(f"/p/{pid}/review", f".review-item[data-item-id='{first}']")
    annotators = dict(zip(card.eval_on_selector_all(".annotator", "e => e.map(x => x.textContent)"),
                          card.eval_on_selector_all(".ann-value", "e => e.map(x => x.textContent)")))
    assert annotators == {"ann": given[first], "bob": other}
    with as_admin(url) as (http, headers):  # the admin sets gold meanwhile
        http.put(f"/api/projects/{pid}/items/{first}/gold", headers=headers, json={"value": other, "version": 0}).raise_for_status()
    gold = LABELS[2]
    rita.page.keyboard.press(str(LABELS.index(gold) + 1))  # the first card is the selected one
    rita.page.wait_for_function("() => /changed by someone else/i.test(document.querySelector('#flash').textContent)")
    rita.page.uncheck("#only-open")  # the reload shows the admin's gold; resolved items are hidden by default
    rita.page.wait_for_selector(f".review-item[data-item-id='{first}'] .gold-value")
    rita.page.focus(f".review-item[data-item-id='{first}']")
    rita.page.keyboard.press(str(LABELS.index(gold) + 1))
    rita.page.wait_for_function("([i, g]) => document.querySelector(`.review-item[data-item-id='${i}'] .gold-value`).textContent === g", arg=[first, gold])
    assert rita.page.evaluate("() => window.__xss") is None

    # --- agreement page (screenshot) and the JSONL export through the page's link
    rita.open(f"/p/{pid}/agreement", "#agreement-per-label")
    rita.page.screenshot(path=str(artifacts_dir / "label-agreement.png"), full_page=True)
    assert rita.page.query_selector("#agreement-overall .stat") is not None
    rita.open(f"/p/{pid}/export", "#export-links")
    with rita.page.expect_download() as download:
        rita.page.click("a[data-format=jsonl]")
    exported = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines() if line.strip()]
    assert rita.page.evaluate("() => window.__xss") is None
    rita.close()

    stored = database(db_path, pid)
    assert stored["gold"] == {first: gold}
    assert {iid: values["ann"] for iid, values in stored["annotations"].items() if "ann" in values} == given
    assert stored["annotations"][first]["bob"] == other
    assert sum("bob" in values for values in stored["annotations"].values()) == 3
    assert stored["seconds"][(slow_item, stored["users"]["ann"])] >= 0.4  # time from item shown to submit
    assert stored["skipped"] == {(skipped, stored["users"]["ann"])}
    assert sorted(r["id"] for r in exported) == sorted(stored["items"])
    for row in exported:
        iid = row["id"]
        assert row["text"] == stored["items"][iid]
        assert row["gold"] == stored["gold"].get(iid)
        assert {a["annotator"]: a["value"] for a in row["annotations"]} == stored["annotations"].get(iid, {})
    assert XSS in stored["items"].values()
    for name in ("label-annotate.png", "label-agreement.png"):
        assert (artifacts_dir / name).stat().st_size > 10_000


def test_spans_by_keyboard_and_mouse_use_code_point_offsets(server, browser):
    """Shift+arrows and a double-click select, number keys label, Backspace removes the last span; the offsets
    sent are Python's (code points), also after an emoji that JavaScript counts as two."""
    url, db_path, _ = server
    text = "🙂 Ada Lovelace met Babbage in London."
    pid = make_project(url, [text], {"ann": "annotator"}, name="People and places", kind="spans", labels=["PER", "LOC"])
    ann = Session(browser, url, "ann")
    ann.open(f"/p/{pid}/annotate", "#work[data-item-id]")
    keys = ann.page.keyboard
    keys.press("Shift+ArrowRight")
    keys.press("Shift+ArrowRight")  # "🙂 " selected ...
    keys.press("Escape")  # ... and dropped: the caret stays before "Ada"
    keys.press("Shift+Control+ArrowRight")
    keys.press("Shift+Control+ArrowRight")
    keys.press("1")  # PER: "Ada Lovelace"

    def double_click(word: str) -> None:
        box = ann.page.evaluate("""word => {
            const walker = document.createTreeWalker(document.querySelector('#item-text'), NodeFilter.SHOW_TEXT);
            for (let node; (node = walker.nextNode());) {
                const at = node.data.indexOf(word);
                if (at < 0) continue;
                const range = document.createRange();
                range.setStart(node, at); range.setEnd(node, at + word.length);
                const r = range.getBoundingClientRect();
                return [r.x + r.width / 2, r.y + r.height / 2];
            }
        }""", word)
        ann.page.mouse.dblclick(*box)

    double_click("London")
    keys.press("2")  # LOC
    double_click("Babbage")
    keys.press("2")  # a mistake ...
    assert ann.page.eval_on_selector_all("#item-text mark[data-tag]", "e => e.map(x => x.textContent + '/' + x.dataset.tag)") == [
        "Ada Lovelace/PER", "Babbage/LOC", "London/LOC"]
    keys.press("Backspace")  # ... undone
    iid = ann.shown_item()
    keys.press("Enter")
    ann.page.wait_for_function("() => document.querySelector('#progress-text').textContent === '1 / 1 done'")
    ann.close()
    stored = database(db_path, pid)
    per, loc = text.index("Ada Lovelace"), text.index("London")
    assert stored["annotations"][iid]["ann"] == [{"start": per, "end": per + 12, "label": "PER"}, {"start": loc, "end": loc + 6, "label": "LOC"}]
