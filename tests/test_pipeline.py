"""`slm run` on the tiny BERT teacher, two tiny students and the synthetic cue-word task: the whole pipeline end
to end, the deploy bundle served by the torch-free runtime with verified checksums, a rerun that recomputes
nothing, a changed setting that reruns only what depends on it, an interrupted stage (and an interrupted teacher)
that resumes, `select` on synthetic measurements, and bad input refused in one line.

Every run uses one torch thread and a quick benchmark (one round, few calls, no RSS probe): seconds, not minutes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import STUDENTS, run_config, synthetic_rows, write_csv
from slmkit import artifacts
from slmkit.cli import app
from slmkit.config import RunConfig, RunQuantizeConfig
from slmkit.errors import UserError
from slmkit.pipeline import run, student_name, verify_bundle
from slmkit.selection import Budgets, Candidate, parse_latency, parse_size, select, violations

STAGE_KINDS = ["data", "teacher"] + ["distill", "export", "quantize"] * 2 + ["export", "quantize", "bench"]
TEXTS = ["my invoice is wrong", "where is the parcel today", "password locked again please help"]
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the runs set 1 (train.threads); later test modules get torch's default back


def statuses(result) -> dict[str, str]:
    return {r["name"]: r["status"] for r in result.stages}


def stage_mtimes(out: Path) -> dict[str, float]:
    return {p.name: (p / artifacts.CONFIG).stat().st_mtime_ns for p in (out / artifacts.STAGES_DIR).iterdir()}


@pytest.fixture(scope="module")
def first(pipeline_run):
    """One finished run, shared (with test_search, which continues a copy of it): (its config, its result). Tests
    that change it work on a copy of its directory."""
    return pipeline_run


@pytest.fixture
def copy_of_first(first, tmp_path):
    """A copy of the first run's directory and the config pointing at it."""
    cfg, _ = first
    out = Path(shutil.copytree(cfg.out, tmp_path / "run"))
    return replace(cfg, out=str(out))


# ------------------------------------------------------------------------------------------ end to end


def test_the_pipeline_runs_end_to_end_and_ships_a_bundle(first, synthetic):
    cfg, result = first
    out = Path(cfg.out)
    assert [r["kind"] for r in result.stages] == STAGE_KINDS + ["deploy"]
    assert set(statuses(result).values()) == {"ran"}
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "deploy", "distill-cache", "run.json", "stages"]
    stage_dirs = sorted(p.name.rsplit("-", 1)[0] for p in (out / "stages").iterdir())
    assert stage_dirs == sorted([
        "data", "teacher", "distill-bilstm-H16-E16-lr1e-2", "distill-transformer-L1-H32-A2-F64", "export-teacher", "quantize-teacher",
        "export-bilstm-H16-E16-lr1e-2", "quantize-bilstm-H16-E16-lr1e-2", "export-transformer-L1-H32-A2-F64", "quantize-transformer-L1-H32-A2-F64", "bench",
    ])
    assert not any(p.name.startswith(".") for p in (out / "stages").iterdir())  # no staging directory left behind

    # the candidates: the teacher and each student, fp32 and int8, all measured; nothing budgeted, the most accurate wins
    names = [c.candidate.name for c in result.selection.checks]
    assert names == ["teacher", "teacher-int8", "bilstm-H16-E16-lr1e-2", "bilstm-H16-E16-lr1e-2-int8", "transformer-L1-H32-A2-F64", "transformer-L1-H32-A2-F64-int8"]
    assert result.teacher.name == "teacher" and result.teacher.accuracy >= 0.95 and result.teacher.drop_points == 0
    chosen = result.selection.chosen
    assert chosen.accuracy == max(c.candidate.accuracy for c in result.selection.checks)
    assert all(c.candidate.accuracy >= 0.8 for c in result.selection.checks)  # chance is 1/3
    assert [b["name"] for b in result.baselines] == ["tfidf"] and result.baselines[0]["accuracy"] > 0.5
    assert result.n_test == 60 and result.latency_threads == 1

    # the bundle: exactly these files, checksums that verify, served by the torch-free runtime
    deploy = out / "deploy"
    assert result.bundle == deploy
    top = sorted(p.name for p in deploy.iterdir())
    assert top == ["README.md", "labels.txt", "manifest.json", "model.onnx", "report", "tokenizer.json"]
    assert {"report.html", "report.md", "results.json", "pareto.png"} <= {p.name for p in (deploy / "report").iterdir()}
    manifest = json.loads((deploy / "manifest.json").read_text())
    listed = set(manifest["bundle"]["files"])
    assert listed == {p.relative_to(deploy).as_posix() for p in deploy.rglob("*") if p.is_file()} - {"manifest.json"}
    assert verify_bundle(deploy) == len(listed)
    assert (deploy / "labels.txt").read_text().splitlines() == ["billing", "delivery", "login"]
    from slmkit.runtime import Predictor

    predictor = Predictor(deploy)
    assert [p.label for p in predictor.predict(TEXTS)] == ["billing", "delivery", "login"]
    card = (deploy / "README.md").read_text()
    for needed in (chosen.name, "teacher", "Predictor(", f"{100 * chosen.accuracy:.2f}%", str(synthetic["test"]), "no budgets"):
        assert needed in card

    record = json.loads((out / "run.json").read_text())
    assert record["finished"] and record["selection"]["chosen"] == chosen.name
    assert record["dataset"]["train"]["sha256"] == artifacts.file_sha256(Path(synthetic["train"]))


def test_a_changed_bundle_file_fails_verification(first, tmp_path):
    cfg, _ = first
    deploy = Path(shutil.copytree(Path(cfg.out) / "deploy", tmp_path / "deploy"))
    (deploy / "labels.txt").write_text("billing\nlogin\ndelivery\n")
    with pytest.raises(UserError, match="labels.txt: SHA-256 differs from manifest.json"):
        verify_bundle(deploy)
    (deploy / "extra.txt").write_text("x")
    with pytest.raises(UserError, match="extra.txt: not listed"):
        verify_bundle(deploy)


def test_slm_verify_prints_ok_or_every_difference(first, tmp_path):
    cfg, _ = first
    deploy = Path(shutil.copytree(Path(cfg.out) / "deploy", tmp_path / "deploy"))
    result = slm("verify", deploy)
    assert result.exit_code == 0 and result.stdout.strip() == f"ok: {len(json.loads((deploy / 'manifest.json').read_text())['bundle']['files'])} files match {deploy}/manifest.json"
    (deploy / "labels.txt").write_text("billing\nlogin\ndelivery\n")
    (deploy / "extra.txt").write_text("x")
    (deploy / "tokenizer.json").unlink()
    result = slm("verify", deploy)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{deploy}/extra.txt: not listed in manifest.json",
        f"{deploy}/labels.txt: SHA-256 differs from manifest.json: the file was changed",
        f"{deploy}/tokenizer.json: listed in manifest.json but missing",
        f"3 differences from {deploy}/manifest.json: rebuild the bundle with slm run",
    ]
    result = slm("verify", tmp_path)
    assert result.exit_code == 2 and "not a slm run bundle (no manifest.json with checksums)" in result.stderr


# ------------------------------------------------------------------------------------------ caching


def test_a_rerun_recomputes_nothing(copy_of_first):
    out = Path(copy_of_first.out)
    before = stage_mtimes(out)
    deploy_mtime = (out / "deploy" / "manifest.json").stat().st_mtime_ns
    result = run(copy_of_first, progress=False)
    assert set(statuses(result).values()) == {"cached"}
    assert stage_mtimes(out) == before and (out / "deploy" / "manifest.json").stat().st_mtime_ns == deploy_mtime


def test_a_changed_setting_reruns_only_the_stages_that_depend_on_it(copy_of_first, first):
    # the int8 accuracy budget: only quantization, the benchmark and (when the choice changes) the bundle
    cfg = replace(copy_of_first, quantize=RunQuantizeConfig(max_drop=0.0))
    result = run(cfg, progress=False)
    ran = {r["kind"] for r in result.stages if r["status"] == "ran"}
    assert ran <= {"quantize", "bench", "deploy"} and {"quantize", "bench"} <= ran
    assert all(r["status"] == "cached" for r in result.stages if r["kind"] in ("data", "teacher", "distill", "export"))

    # one student's epochs: its distill, export and quantize, and the benchmark; the other student stays cached
    students = [STUDENTS[0], STUDENTS[1] + " epochs=2"]
    result = run(replace(cfg, students=students), progress=False)
    ran = sorted(r["name"] for r in result.stages if r["status"] == "ran" and r["kind"] != "deploy")
    name = student_name(students[1])
    assert ran == sorted([f"distill {name}", f"export {name} to ONNX", f"quantize {name} to int8", "benchmark 6 candidates and 1 baseline"])


def test_an_interrupted_stage_leaves_nothing_and_the_same_command_resumes(copy_of_first, monkeypatch):
    cfg = replace(copy_of_first, students=[STUDENTS[1] + " epochs=2"])  # a new student: its stages must run
    out = Path(cfg.out)
    import slmkit.export

    real, calls = slmkit.export.check_parity, []

    def interrupted_once(*args, **kwargs):  # Ctrl-C after the ONNX file was written into the staging directory
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(slmkit.export, "check_parity", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, progress=False)
    record = json.loads((out / "run.json").read_text())
    assert not record["finished"] and [r["status"] for r in record["stages"]] == ["cached", "cached", "ran"]
    assert not list((out / "stages").glob("export-transformer-L1-H32-A2-F64-epochs2-*")) and not list((out / "stages").glob(".*"))

    result = run(cfg, progress=False)
    assert [(r["kind"], r["status"]) for r in result.stages[:5]] == [("data", "cached"), ("teacher", "cached"), ("distill", "cached"), ("export", "ran"), ("quantize", "ran")]
    assert result.bundle is not None


def test_an_interrupted_teacher_continues_from_its_last_epoch(first, tiny_base, synthetic, tmp_path, monkeypatch):
    """Killed in its third epoch, the teacher resumes from the second and ends as the uninterrupted one did."""
    import slmkit.distill
    import slmkit.train

    real, epochs = slmkit.train.track_epoch, []

    def killed_in_epoch_3(state, record, *args):
        epochs.append(record.epoch)
        if record.epoch == 3 and epochs.count(3) == 1:
            raise KeyboardInterrupt
        return real(state, record, *args)

    def students_interrupted(*args, **kwargs):  # this test is about the teacher: stop after it
        raise KeyboardInterrupt

    monkeypatch.setattr(slmkit.train, "track_epoch", killed_in_epoch_3)
    monkeypatch.setattr(slmkit.distill, "distill", students_interrupted)
    cfg = run_config(tiny_base, synthetic, tmp_path / "run")
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            run(cfg, progress=False)
    assert epochs == [1, 2, 3, 3, 4]  # epochs 1 and 2 were not trained again
    stages = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    assert [(r["kind"], r["status"]) for r in stages] == [("data", "cached"), ("teacher", "ran")]
    teacher = Path(stages[1]["dir"])
    uninterrupted = Path(next(r["dir"] for r in first[1].stages if r["kind"] == "teacher"))
    assert teacher.name == uninterrupted.name  # the same inputs: the same key
    got, expected = (json.loads((d / "metrics.json").read_text()) for d in (teacher, uninterrupted))
    assert [h["train_loss"] for h in got["history"]] == pytest.approx([h["train_loss"] for h in expected["history"]], abs=1e-6)
    assert got["eval"]["accuracy"] == expected["eval"]["accuracy"]


# ------------------------------------------------------------------------------------------ the CLI


def slm(*args):
    return runner.invoke(app, [str(a) for a in args])


def cli_args(cfg: RunConfig, *extra) -> list:
    """The command line of `cfg`'s run (the tiny settings through a YAML config file)."""
    path = Path(cfg.out).parent / "run.yaml"
    from slmkit.config import save_config

    save_config(cfg, path)
    return ["run", "--config", path, *extra]


def test_the_cli_prints_every_candidate_the_choice_and_where_things_are(copy_of_first):
    result = slm(*cli_args(copy_of_first))
    assert result.exit_code == 0, result.output
    text = result.stdout.replace("\n", " ")
    assert "stage 1 of 13: data: cached" in result.stderr and "stage 13 of 13: deploy" in result.stderr
    for name in ("teacher-int8", "bilstm-H16-E16-lr1e-2-int8", "tfidf (baseline)", "→"):
        assert name in result.stdout
    assert "0 stages ran, 12 cached" in text and "chosen:" in text and "faster" in text and "smaller" in text
    assert f"bundle: {copy_of_first.out}/deploy" in text and "report.html" in text


def test_help_lists_every_option():
    result = slm("run", "--help")
    assert result.exit_code == 0
    for option in ("--data", "--eval", "--test", "--out", "--budget-size", "--budget-latency", "--max-drop", "--teacher", "--student",
                   "--fresh", "--strict", "--text-col", "--label-col", "--config", "--set", "--quiet", "--search", "--storage"):
        assert option in result.stdout


def test_no_candidate_within_the_budgets_is_explained_and_strict_fails(copy_of_first):
    result = slm(*cli_args(copy_of_first), "--budget-size", "1kB", "--quiet")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "no candidate meets every budget: No candidate meets the size budget (size on disk ≤ 1 kB): the closest is" in text
    assert "still holds an earlier run's bundle" in text
    result = slm(*cli_args(copy_of_first), "--budget-size", "1kB", "--quiet", "--strict")
    assert result.exit_code == 1


def test_a_student_that_cannot_meet_the_size_budget_is_not_distilled(copy_of_first):
    # besides its word embedding the 1-layer transformer has 13,890 parameters, the BiLSTM 4,914
    cfg = replace(copy_of_first, students=[STUDENTS[0], STUDENTS[1] + " epochs=2"])
    result = slm(*cli_args(cfg), "--budget-size", "10kB", "--quiet")
    assert result.exit_code == 0, result.output
    name = student_name(STUDENTS[1] + " epochs=2")
    text = " ".join(result.stdout.split())
    assert f"{name}: its 13,890 parameters besides the word embedding need 13.9 kB even at one byte each (int8), over the size budget of 10 kB: not distilled" in text
    record = json.loads((Path(cfg.out) / "run.json").read_text())
    assert [s["student"] for s in record["skipped"]] == [name]
    assert not any(name in r["name"] for r in record["stages"]) and not list((Path(cfg.out) / "stages").glob(f"*{name}*"))
    assert [(r["kind"], r["status"]) for r in record["stages"] if "bilstm" in r["name"]] == [("distill", "cached"), ("export", "cached"), ("quantize", "cached")]


@pytest.mark.parametrize("flag, value, expected", [
    ("--budget-size", "5XB", "--budget-size '5XB': unknown unit 'xb': write a size like 5MB, 500kB or 1.5GB"),
    ("--budget-size", "5", "--budget-size '5': no unit"),
    ("--budget-size", "-5MB", "--budget-size '-5MB': not a number with a unit"),
    ("--budget-latency", "fast", "--budget-latency 'fast': not a number with a unit: write a latency like 1ms, 500us or 0.5s"),
    ("--budget-latency", "0ms", "--budget-latency '0ms': must be more than 0"),
    ("--max-drop", "one", "--max-drop 'one': not a number of accuracy points"),
    ("--max-drop", "-1", "setting budget.max_drop must be 0 or more points"),
])
def test_bad_budgets_are_one_line_errors_naming_the_flag(flag, value, expected, synthetic, tmp_path):
    result = slm("run", "--data", synthetic["train"], "--out", tmp_path / "run", flag, value, "--quiet")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "run").exists()


def test_bad_input_is_refused_before_anything_is_written(copy_of_first, synthetic, tmp_path):
    out = Path(copy_of_first.out)
    before = stage_mtimes(out)
    other = write_csv(tmp_path / "other.csv", synthetic_rows(240, seed=9))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    tiny = write_csv(tmp_path / "tiny.csv", [("invoice", "billing"), ("refund", "billing"), ("parcel", "delivery"), ("courier", "delivery"), ("late", "delivery")])
    one = write_csv(tmp_path / "one.csv", [("invoice", "billing"), ("parcel", "delivery"), ("courier", "delivery")])
    cases = [
        (cli_args(replace(copy_of_first, data=replace(copy_of_first.data, train=str(other)))),
         f"{out}: made from a different dataset ({synthetic['train']} then, {other} now, with other contents): pass --fresh"),
        (["run", "--data", synthetic["train"], "--out", tmp_path / "mine"], "mine: exists and is not a slm run directory (no run.json): choose another --out"),
        (["run", "--data", tiny, "--out", tmp_path / "new"],
         "tiny.csv: too small to hold out eval and test sets: label 'billing' has 2 examples and each label needs at least 3 (1 to train on, 1 per held-out set): add examples or pass --eval and --test FILE"),
        (["run", "--data", one, "--test", tiny, "--out", tmp_path / "new"],
         "one.csv: too small to hold out eval set: label 'billing' has 1 example and each label needs at least 2 (1 to train on, 1 per held-out set): add examples or pass --eval FILE"),
        (["run", "--data", synthetic["train"], "--out", tmp_path / "new", "--student", "transformer:layers=2"], "--student transformer:layers=2: missing hidden"),
        (["run", "--data", synthetic["train"], "--out", tmp_path / "new", "--student", "bilstm:hidden=16 speed=3"], "'speed=3' is not a training override"),
        (["run", "--data", synthetic["train"], "--out", tmp_path / "new", "--teacher", tmp_path / "mine"], "mine: not a trained model"),
        (["run", "--data", synthetic["train"], "--out", tmp_path / "new", "--set", "students=cnn:filters=16,embed=16"],
         "'embed=16' is not a student spec: specs hold commas, so give each with --student SPEC"),
    ]
    for args, expected in cases:
        result = slm(*args, "--quiet")
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in " ".join(lines[0].split()), (args, result.stderr)
    assert not (tmp_path / "new").exists() and (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert stage_mtimes(out) == before


def test_fresh_reruns_every_stage_even_on_another_dataset_and_a_given_teacher_is_reused(copy_of_first, first, synthetic, tmp_path):
    out = Path(copy_of_first.out)
    old = set(stage_mtimes(out))
    other = write_csv(tmp_path / "other.csv", synthetic_rows(240, seed=9))
    teacher = next(r["dir"] for r in first[1].stages if r["kind"] == "teacher")  # the first run's, outside this directory
    cfg = replace(copy_of_first, data=replace(copy_of_first.data, train=str(other)), students=[STUDENTS[0]], teacher=teacher)
    with pytest.raises(UserError, match="made from a different dataset"):
        run(cfg, progress=False)
    result = run(cfg, fresh=True, progress=False)
    assert [(r["kind"], r["status"]) for r in result.stages] == [("teacher", "given") if k == "teacher" else (k, "ran") for k in
                                                                  ["data", "teacher", "distill", "export", "quantize", "export", "quantize", "bench", "deploy"]]
    assert not any((out / "stages" / name).exists() for name in old)  # the old dataset's stages are gone
    assert not list((out / "stages").glob("teacher-*"))  # the given teacher is used where it is
    assert json.loads((out / "run.json").read_text())["dataset"]["train"]["sha256"] == artifacts.file_sha256(other)


# ------------------------------------------------------------------------------------------ select


def candidate(name, accuracy, latency_ms, mb, teacher=0.95):
    return Candidate(name, accuracy, 100 * (teacher - accuracy), latency_ms, int(mb * 1e6))


CANDIDATES = [
    candidate("teacher", 0.95, 4.0, 90),
    candidate("teacher-int8", 0.945, 2.5, 23),
    candidate("big", 0.93, 1.2, 7),
    candidate("big-int8", 0.93, 0.9, 2),
    candidate("small", 0.90, 0.3, 1.2),
    candidate("small-int8", 0.90, 0.25, 0.4),
]


def test_select_takes_the_most_accurate_within_every_budget():
    s = select(CANDIDATES, Budgets(max_bytes=parse_size("5MB"), max_latency_ms=parse_latency("1ms"), max_drop=5.0))
    assert s.chosen.name == "big-int8"
    assert s.explanation == "big-int8 is the most accurate of the 3 of 6 candidates that meet size ≤ 5 MB, latency ≤ 1 ms, accuracy drop ≤ 5.00 points."
    assert [c.candidate.name for c in s.checks if c.meets] == ["big-int8", "small", "small-int8"]
    assert dict(zip([c.candidate.name for c in s.checks], [c.missed for c in s.checks]))["big"] == ["size", "latency"]
    # no budgets: the most accurate of all; a tie in accuracy goes to the faster, then the smaller
    assert select(CANDIDATES, Budgets()).chosen.name == "teacher"
    assert select(CANDIDATES, Budgets(max_bytes=10**7)).chosen.name == "big-int8"
    tied = [candidate("a", 0.9, 0.3, 2), candidate("b", 0.9, 0.3, 1), candidate("c", 0.9, 0.5, 0.5)]
    assert select(tied, Budgets()).chosen.name == "b"


def test_select_explains_which_budget_nothing_met_and_what_came_closest():
    s = select(CANDIDATES, Budgets(max_bytes=parse_size("5MB"), max_latency_ms=parse_latency("200us"), max_drop=1.0))
    assert s.chosen is None
    assert s.explanation.startswith("No candidate meets the latency budget (batch-1 p50 latency ≤ 0.2 ms): the closest is small-int8 at 0.25 ms.")
    assert "accuracy drop" not in s.explanation.split(".")[0]  # teacher-int8 meets the accuracy budget
    assert "Closest overall: small-int8, which misses latency by 0.05 ms (0.25 ms), accuracy drop by 4.00 points (5.00 points)." in s.explanation

    # every budget is met by someone, but never all by one candidate
    s = select(CANDIDATES, Budgets(max_bytes=parse_size("3MB"), max_drop=1.0))
    assert s.chosen is None and s.explanation.startswith("Every budget is met by some candidate, but none meets all of size ≤ 3 MB, accuracy drop ≤ 1.00 points at once.")
    assert "Closest overall: big-int8, which misses accuracy drop by 1.00 points (2.00 points)." in s.explanation


def test_violations_are_excess_over_each_set_budget():
    v = violations(candidate("x", 0.93, 0.9, 2), Budgets(max_bytes=10**6, max_latency_ms=1.0))
    assert v == pytest.approx({"size": 10**6, "latency": -0.1})  # missed by 1 MB, met with 0.1 ms to spare
    with pytest.raises(ValueError):
        select([], Budgets())


@pytest.mark.parametrize("text, expected", [("5MB", 5_000_000), ("500kB", 500_000), ("1.5GB", 1_500_000_000), ("2 MiB", 2 * 2**20), ("7b", 7), ("none", None), (None, None)])
def test_size_budgets_parse(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text, expected", [("1ms", 1.0), ("500us", 0.5), ("250µs", 0.25), ("0.5s", 500.0), (".5ms", 0.5), ("off", None)])
def test_latency_budgets_parse(text, expected):
    assert parse_latency(text) == pytest.approx(expected) if expected is not None else parse_latency(text) is None
