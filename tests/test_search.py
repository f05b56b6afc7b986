"""`slm run --search N`: the Optuna study over students on the tiny teacher and the synthetic task — trials run
through the pipeline's own stages and join the selection, the Pareto front lands in run.json and the report, a
rerun adds no trial — two worker processes sharing one SQLite study, a bad --storage refused in one line before
anything is trained, and the pure pieces (trial → ladder entry, the pruning rule, ladder entries with loss
overrides)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import slmkit.export
from typer.testing import CliRunner

from slmkit import search
from slmkit.cli import app
from slmkit.config import BudgetConfig, LadderConfig, LossConfig, OptimConfig, RunConfig, SearchConfig, ladder_entry, load_config
from slmkit.errors import UserError
from slmkit.pipeline import run
from conftest import STUDENTS, run_config
from test_pipeline import cli_args

optuna = pytest.importorskip("optuna")
ROOT = Path(__file__).resolve().parents[1]
# a space of tiny students that train in about a second each
TINY_SPACE = SearchConfig(trials=2, kinds=["cnn"], widths=[16], embeds=[16], layers=[1], max_epochs=2, max_augment=0, prune_drop=None, seed=3)
# cnn only, to keep it quick and certain: torch.export of a BiLSTM student sometimes fails (a static-shape error on the
# sequence axis, not reproducible in a fresh process), which a search records as a failed trial (tested below with
# an injected failure); the space test covers every kind
LADDER = STUDENTS[1]  # a student of the shared pipeline run: its stages are cached
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def searched(pipeline_run, tiny_base, synthetic, tmp_path_factory):
    """One run with a 2-trial search beside a one-student ladder: (config, result). The pruning rule is made to
    stop the first trial after its first epoch (the rule itself is tested below), the second runs to the end.

    It continues a copy of the shared pipeline run with one of that run's students as its ladder: the data,
    teacher and ladder stages come from the cache, and everything the search adds runs here."""
    import shutil

    out = Path(shutil.copytree(pipeline_run[0].out, tmp_path_factory.mktemp("search") / "run"))
    cfg = run_config(tiny_base, synthetic, out, students=[LADDER], search=TINY_SPACE, budget=BudgetConfig(size="1GB", latency=None, max_drop=None))
    calls = []

    def prune_the_first_trial(*args):
        calls.append(args)
        return len(calls) == 1

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(search, "should_prune", prune_the_first_trial)
        return cfg, run(cfg, progress=False)


# ------------------------------------------------------------------------------------------ end to end


def test_a_search_adds_its_pareto_trials_to_the_selection_and_the_report(searched):
    cfg, result = searched
    out = Path(cfg.out)
    found = result.search
    assert found.counts == {"pruned": 1, "complete": 1} and found.ran == 2
    assert found.storage == f"sqlite:///{(out / 'search.db').resolve()}" and (out / "search.db").is_file()

    study = optuna.load_study(study_name=found.study_name, storage=found.storage)
    pruned, complete = study.trials[0], [study.trials[1]]
    assert pruned.state == optuna.trial.TrialState.PRUNED and complete[0].state == optuna.trial.TrialState.COMPLETE
    # the pruned trial stopped in its distill stage after one epoch, which left nothing in the cache
    assert len(pruned.user_attrs["eval_accuracy_by_epoch"]) == 1 and "dirs" not in pruned.user_attrs
    assert not list((out / "stages").glob("*trial-0-*")) and not list((out / "stages").glob(".*"))
    front = {t.number for t in study.best_trials}
    assert front == {1} and complete[0].constraints == {"size": complete[0].user_attrs["bytes"] - 10**9}  # within the size budget
    assert [r["number"] for r in found.pareto] == sorted(front, key=lambda n: (-study.trials[n].values[0], study.trials[n].values[1], n))
    for t in complete:  # each trial's entry, figures and stage directories, made by the pipeline's stages
        assert t.user_attrs["entry"] == search.trial_entry(t.params)
        assert [Path(d).name.rsplit("-", 1)[0] for d in t.user_attrs["dirs"]] == [f"{k}-trial-{t.number}" for k in ("distill", "export", "quantize", "bench")]
        assert all(Path(d, "config.yaml").is_file() for d in t.user_attrs["dirs"])
        assert len(t.user_attrs["eval_accuracy_by_epoch"]) == json.loads(Path(t.user_attrs["dirs"][0], "metrics.json").read_text())["epochs_run"]
        bench = json.loads(Path(t.user_attrs["dirs"][3], "results.json").read_text())
        assert bench["data"]["path"].endswith("eval.jsonl") and t.values[0] == bench["entries"][0]["metrics"]["accuracy"]

    # the Pareto trials are candidates of the same selection, measured on the test split beside the ladder
    names = [c.candidate.name for c in result.selection.checks]
    assert names[:4] == ["teacher", "teacher-int8", "transformer-L1-H32-A2-F64", "transformer-L1-H32-A2-F64-int8"]
    # what the search does not change was reused from the run it continues
    assert all(r["status"] == "cached" for r in result.stages if "trial" not in r["name"] and r["kind"] not in ("bench", "deploy")), result.stages
    assert names[4:] == [f"{r['name']}-int8" for r in found.pareto]
    assert result.selection.chosen.accuracy == max(c.candidate.accuracy for c in result.selection.checks)

    # the front in run.json and in the report (results.json, markdown, HTML), and in the bundle's copy of it
    record = json.loads((out / "run.json").read_text())
    assert record["search"]["pareto"] == found.pareto and record["finished"]
    report = result.report.parent
    assert json.loads((report / "results.json").read_text())["search"]["pareto"] == found.pareto
    for page in (report / "report.md", report / "report.html", out / "deploy" / "report" / "report.md"):
        text = page.read_text()
        assert "Search" in text and found.study_name in text and all(r["entry"] in text for r in found.pareto)


def test_a_rerun_continues_the_study_without_new_trials_and_more_trials_extend_it(searched, tmp_path):
    import shutil

    cfg, first = searched
    copy = replace(cfg, out=str(shutil.copytree(cfg.out, tmp_path / "run")))
    # the default storage follows the run directory: the copy has its own study, already finished
    result = run(copy, progress=False)
    assert result.search.ran == 0 and result.search.pareto == first.search.pareto
    assert {r["status"] for r in result.stages} == {"cached"}
    # one more trial, whose ONNX export fails (an error of the code, not the user's, as when the exporter cannot
    # handle a student): recorded, and the run goes on
    more = replace(copy, search=replace(TINY_SPACE, trials=3))

    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(slmkit.export, "export", broken)
        result = run(more, progress=False)
    assert result.search.ran == 1 and result.search.counts == {"pruned": 1, "complete": 1, "fail": 1}
    study = optuna.load_study(study_name=result.search.study_name, storage=result.search.storage)
    assert study.trials[2].user_attrs["error"] == "RuntimeError: exporter crashed" and result.bundle is not None
    stages = Path(copy.out) / "stages"
    assert list(stages.glob("distill-trial-2-*")) and not list(stages.glob("export-trial-2-*")) and not list(stages.glob(".*"))
    # the same command replaces the failed trial
    result = run(more, progress=False)
    assert result.search.ran == 1 and result.search.counts == {"pruned": 1, "complete": 2, "fail": 1}
    assert {r["number"] for r in result.search.pareto} <= {1, 3}


def test_the_cli_prints_the_study_and_its_pareto_front(searched, tmp_path):
    import shutil

    cfg, first = searched
    copy = replace(cfg, out=str(shutil.copytree(cfg.out, tmp_path / "run")))
    result = runner.invoke(app, [str(a) for a in cli_args(copy, "--search", "2", "--quiet")])  # the settings through config.yaml
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    study = first.search.study_name  # the same study name: the YAML round trip kept every search setting
    assert f"search: study {study} in sqlite:///{tmp_path / 'run' / 'search.db'}: 1 complete, 1 pruned trials (0 ran here)" in text
    assert "Pareto front on the eval split: trial-1 (" in text and "trial-1-int8" in text


# ------------------------------------------------------------------------------------------ two workers

WORKER = textwrap.dedent("""
    import os, sys, time
    from slmkit import search
    url, name, trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
    study = search.open_study(search.open_storage(url), name)

    def objective(trial):  # a stand-in for a distillation: a pause, two figures
        trial.set_user_attr("worker", os.getpid())
        time.sleep(0.3)
        return trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)

    print(search.work(study, objective, trials))
""")


def test_two_worker_processes_share_one_sqlite_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, url, "shared", "10"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}) for _ in range(2)]
    outputs = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [e for _, e in outputs]
    ran = [int(o.strip().splitlines()[-1]) for o, _ in outputs]
    study = optuna.load_study(study_name="shared", storage=url)
    trials = study.get_trials()
    # every trial of both workers is there once, numbered without gaps, all finished; together they reached 10
    assert sorted(t.number for t in trials) == list(range(len(trials))) and len(trials) == sum(ran)
    assert 10 <= len(trials) <= 11 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    pids = {t.user_attrs["worker"] for t in trials}
    assert len(pids) == 2 and all(n >= 1 for n in ran)
    # a third worker finds the study finished and runs nothing
    assert search.work(search.open_study(search.open_storage(url), "shared"), lambda t: (0.0, 0.0), 10) == 0


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("url, reason", [
    ("not a url", "Could not parse SQLAlchemy URL"),
    ("nosuchdb://host/x", "Can't load plugin"),
    ("sqlite:////nonexistent-dir/sub/x.db", "unable to open database file"),
])
def test_a_bad_storage_url_is_one_line_before_anything_is_written(url, reason, synthetic, tmp_path):
    result = runner.invoke(app, ["run", "--data", str(synthetic["train"]), "--out", str(tmp_path / "run"), "--search", "2", "--storage", url, "--quiet"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --storage '{url}': cannot open the study storage (") and reason in lines[0], result.stderr
    assert "postgresql://" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_storage_password_is_never_shown():
    with pytest.raises(UserError) as e:
        search.open_storage("postgresql+nosuchdriver://me:secret@localhost/db")
    assert "secret" not in str(e.value) and "me:***@localhost" in str(e.value)


def test_search_settings_are_checked_with_the_flag():
    with pytest.raises(UserError, match="setting search.kinds must list student kinds"):
        load_config(RunConfig, None, ["search.kinds=cnn,gru"], **{"data.train": "x.csv", "out": "o"}).validate()
    with pytest.raises(UserError, match="setting search.widths must be a list of whole numbers"):
        load_config(RunConfig, None, ["search.widths=64,wide"])
    cfg = load_config(RunConfig, None, ["search.widths=32,48"], **{"search.trials": 5})
    assert cfg.search.widths == [32, 48] and cfg.search.trials == 5


# ------------------------------------------------------------------------------------------ pure pieces


@pytest.mark.parametrize("params, entry", [
    ({"kind": "cnn", "cnn_filters": 128, "cnn_embed": 64, "lr": 0.0012345, "epochs": 3, "augment": 2, "temperature": 3.14159, "kd": 0.7},
     "cnn:filters=128,embed=64 lr=0.00123 epochs=3 augment=2 temperature=3.14 kd=0.7 ce=0.3"),
    ({"kind": "bilstm", "bilstm_hidden": 64, "bilstm_embed": 32, "lr": 1e-4, "epochs": 1, "augment": 0, "temperature": 1.0, "kd": 0.123456},
     "bilstm:hidden=64,embed=32 lr=0.0001 epochs=1 augment=0 temperature=1 kd=0.123 ce=0.877"),
    ({"kind": "transformer", "transformer_layers": 2, "transformer_hidden": 192, "lr": 3e-3, "epochs": 6, "augment": 5, "temperature": 8.0, "kd": 1.0},
     "transformer:layers=2,hidden=192,heads=3,ffn=768 lr=0.003 epochs=6 augment=5 temperature=8 kd=1 ce=0"),
    ({"kind": "transformer", "transformer_layers": 1, "transformer_hidden": 16, "lr": 1e-3, "epochs": 2, "augment": 1, "temperature": 2.0, "kd": 0.5},
     "transformer:layers=1,hidden=16,heads=1,ffn=64 lr=0.001 epochs=2 augment=1 temperature=2 kd=0.5 ce=0.5"),
    ({"kind": "drop", "drop_every": 2, "lr": 2e-4, "epochs": 2, "augment": 0, "temperature": 4.0, "kd": 0.9},
     "drop:every=2 lr=0.0002 epochs=2 augment=0 temperature=4 kd=0.9 ce=0.1"),
])
def test_a_trial_is_a_ladder_entry_with_its_settings(params, entry):
    assert search.trial_entry(params) == entry
    ladder = LadderConfig(augment=9.0, loss=LossConfig(mse=0.25), train=OptimConfig(epochs=9, lr=1.0, batch_size=8))
    spec, optim, augment, loss = ladder_entry(entry, ladder)
    assert spec == entry.split()[0] and optim.epochs == params["epochs"] and optim.lr == pytest.approx(params["lr"], rel=1e-2)
    assert optim.batch_size == 8 and augment == params["augment"]  # what the entry leaves alone stays the ladder's
    assert loss.temperature == pytest.approx(params["temperature"], rel=1e-2) and loss.kd + loss.ce == pytest.approx(1.0) and loss.mse == 0.25


def test_every_point_of_the_space_is_a_valid_student():
    study = optuna.create_study(directions=list(search.DIRECTIONS), sampler=optuna.samplers.RandomSampler(seed=0))
    space = SearchConfig(kinds=["cnn", "bilstm", "transformer", "drop"], widths=[16, 96], embeds=[8], layers=[1, 3], max_epochs=3, max_augment=2)
    kinds = set()
    for _ in range(40):
        trial = study.ask()
        entry = search.trial_entry(search.suggest(trial, space))
        kinds.add(entry.split(":")[0])
        cfg = load_config(RunConfig, None, None, **{"data.train": "x.csv", "out": "o", "students": [entry]})
        cfg.validate()  # the spec parses, the overrides are known keys, the distill settings are valid
        study.tell(trial, [0.5, 1.0])
    assert kinds == {"cnn", "bilstm", "transformer", "drop"}


@pytest.mark.parametrize("epoch, epochs, accuracy, teacher, drop, pruned", [
    (1, 5, 0.40, 0.95, 30.0, True),  # 55 points behind after epoch 1
    (1, 5, 0.70, 0.95, 30.0, False),  # 25 points behind: give it time
    (4, 5, 0.60, 0.95, 30.0, True),
    (5, 5, 0.10, 0.95, 30.0, False),  # the last epoch: done anyway, keep the measurement
    (1, 5, 0.10, 0.95, None, False),  # pruning off
    (1, 3, 0.949, 0.95, 0.0, True),
    (1, 3, 0.95, 0.95, 0.0, False),
])
def test_the_pruning_rule(epoch, epochs, accuracy, teacher, drop, pruned):
    assert search.should_prune(epoch, epochs, accuracy, teacher, drop) is pruned


def test_a_ladder_entry_may_set_loss_weights():
    spec, optim, augment, loss = ladder_entry("cnn:filters=64 temperature=4 kd=0.7 ce=0.3 lr=1e-3")
    assert (spec, loss.temperature, loss.kd, loss.ce, optim.lr) == ("cnn:filters=64", 4.0, 0.7, 0.3, 1e-3)
    with pytest.raises(UserError, match="'layer_map=1:2' is not a training override"):
        ladder_entry("cnn:filters=64 layer_map=1:2")
