"""Data-parallel training under torchrun, with 2 CPU processes (gloo) on the tiny BERT: `slm train`, a
`slm train --resume` of an interrupted run, and `slm distill` from the trained teacher each write one complete
artifact, log once, and match single-process runs within the tolerance stated in `slmkit.distributed` (dropout
off: per-epoch train losses within 1e-5 relative, eval accuracy within one example); and the sharding of a
global batch, on known answers.

A torchrun starts three fresh Python processes (the launcher and two workers) that import torch: 15-30 s on a
loaded 2-vCPU machine. So the three commands share one launch (run one after the other in each worker, as a
pipeline would), and the timeout is generous."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_config
from slmkit import artifacts
from slmkit.config import DataConfig, DistillConfig, OptimConfig, save_config
from slmkit.distill import distill
from slmkit.distributed import shard
from slmkit.predict import predict
from slmkit.train import train

REPO = Path(__file__).resolve().parents[1]
MODEL_FILES = ["config.json", "config.yaml", "metrics.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
# `slm` commands run one after the other in each process: argv lists as JSON in sys.argv[1]
RUN_COMMANDS = "import json, sys\nfrom slmkit.cli import app\nfor argv in json.loads(sys.argv[1]):\n    app(argv, standalone_mode=False)\n"


def gloo_available() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


needs_gloo = pytest.mark.skipif(not gloo_available(), reason="this PyTorch build has no torch.distributed gloo backend for CPU processes")


def torchrun(*commands: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2` running the `slm` commands in order, with this checkout's
    slmkit and one thread per process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if len(commands) == 1:
        program = ["-m", "slmkit.cli", *commands[0]]
    else:
        (cwd / "run_commands.py").write_text(RUN_COMMANDS)
        program = ["run_commands.py", json.dumps(commands)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *program]
    run = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def without_dropout(base: Path, directory: Path) -> Path:
    """A copy of `base` with hidden and attention dropout off: each process draws its own dropout masks, so
    only a dropout-free run can match a single process step for step."""
    shutil.copytree(base, directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def assert_same_training(got: dict, want: dict, accuracy: str = "eval") -> None:
    """The tolerance of `slmkit.distributed` for dropout-free runs."""
    assert [h["epoch"] for h in got["history"]] == [h["epoch"] for h in want["history"]]
    for g, w in zip(got["history"], want["history"]):
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-5)
        assert abs(g["accuracy"] - w["accuracy"]) <= 1 / got["n_eval"] + 1e-9
    assert abs(got[accuracy]["accuracy"] - want[accuracy]["accuracy"]) <= 1 / got["n_eval"] + 1e-9


# ------------------------------------------------------------------------------------------ sharding


@pytest.mark.parametrize("size", [1, 2, 3, 15, 16])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_the_batch_once_and_weights_restore_its_mean(size, world):
    batch = np.arange(100, 100 + size)
    shares = [shard(batch, r, world) for r in range(world)]
    kept = [rows for rows, weight in shares if weight > 0]
    assert sorted(np.concatenate(kept).tolist()) == batch.tolist()  # every row once, on exactly one process
    assert all(len(rows) >= 1 for rows, _ in shares)  # every process steps, even on a batch smaller than world
    assert sum(weight for _, weight in shares) == pytest.approx(world)  # DDP divides by world
    # per-row losses: the mean over processes of weight x (share's mean) is the whole batch's mean
    per_process = [weight * np.mean(np.sin(rows.astype(float))) for rows, weight in shares]
    assert np.mean(per_process) == pytest.approx(np.sin(batch.astype(float)).mean())


def test_single_process_shard_is_the_whole_batch():
    rows, weight = shard(np.array([5, 3, 9]), 0, 1)
    assert rows.tolist() == [5, 3, 9] and weight == 1.0


def test_interleaved_shares_of_a_length_sorted_batch():
    rows, weight = shard(np.arange(10), 1, 4)
    assert rows.tolist() == [1, 5, 9] and weight == pytest.approx(4 * 3 / 10)
    rows, weight = shard(np.array([7, 8]), 3, 4)  # nothing left for rank 3: one row that counts for nothing
    assert rows.tolist() == [7] and weight == 0.0


# ------------------------------------------------------------------------------------------ the stages


@needs_gloo
def test_train_resume_and_distill_under_torchrun_match_one_process(tiny_base, synthetic, tmp_path, monkeypatch):
    base = without_dropout(tiny_base, tmp_path / "base")
    train_cfg = tiny_config(base, synthetic, tmp_path / "teacher")
    distill_cfg = DistillConfig(  # the layer-dropped student inherits the teacher's config: dropout-free too
        teacher=str(tmp_path / "teacher"), out=str(tmp_path / "student"), student="drop:layers=1",
        data=DataConfig(train=str(synthetic["train"]), eval=str(synthetic["dev"])),
        train=OptimConfig(epochs=3, batch_size=16, lr=3e-3, warmup=0.0, seed=7, patience=0, threads=1),
    )
    save_config(train_cfg, tmp_path / "train.yaml")
    save_config(distill_cfg, tmp_path / "distill.yaml")
    # a single-process run of the same training, interrupted right after epoch 2 was saved (as by Ctrl-C)
    real_save = artifacts.save_checkpoint

    def killed_after_epoch_2(staging, model, optimizer, state):
        real_save(staging, model, optimizer, state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(artifacts, "save_checkpoint", killed_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(replace(train_cfg, out=str(tmp_path / "resumed")), progress=False)
    monkeypatch.undo()

    run = torchrun(
        ["train", "--config", "train.yaml"],  # teacher fine-tuning
        ["train", "--out", "resumed", "--resume"],  # epochs 3-4 of the interrupted run: every process reads its checkpoint
        ["distill", "--config", "distill.yaml"],  # from the teacher just trained
        cwd=tmp_path,
    )

    # one complete artifact per command, nothing else left behind; rank 0 alone logged and reported
    teacher, resumed, student = tmp_path / "teacher", tmp_path / "resumed", tmp_path / "student"
    assert sorted(p.name for p in teacher.iterdir()) == sorted([*MODEL_FILES, artifacts.DISTILL_CACHE])
    assert sorted(p.name for p in resumed.iterdir()) == MODEL_FILES
    assert sorted(p.name for p in student.iterdir()) == MODEL_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "distill.yaml", "resumed", "run_commands.py", "student", "teacher", "train.yaml"]
    assert len(list((teacher / artifacts.DISTILL_CACHE).iterdir())) == 2  # rank 0's train and eval files, no temporaries
    # epochs logged: train 1-4, resume 3-4, distill 1-3
    assert [run.stderr.count(f"epoch {e}: loss") for e in (1, 2, 3, 4)] == [2, 2, 3, 2], run.stderr[-3000:]
    assert run.stdout.count("model saved to") == 2 and run.stdout.count("student saved to") == 1

    # the same runs in one process
    single = train(replace(train_cfg, out=str(tmp_path / "single-teacher")), progress=False).metrics
    for directory in (teacher, resumed):
        got = json.loads((directory / artifacts.METRICS).read_text())
        assert got["processes"] == 2 and single["processes"] == 1 and got["n_train"] == 240
        assert_same_training(got, single)
        assert got["eval"]["accuracy"] >= 0.95
    got = json.loads((student / artifacts.METRICS).read_text())
    want = distill(replace(distill_cfg, out=str(tmp_path / "single-student")), progress=False).metrics
    assert got["processes"] == 2 and not got["teacher_cache"]["hit"] and want["teacher_cache"]["hit"]  # rank 0 cached
    assert_same_training(got, want, accuracy="student_eval")

    # the artifacts load and predict like any other
    for directory in (teacher, student):
        assert predict(directory, ["please refund the charge"])[0].label == "billing"
    model, _ = artifacts.load_model(teacher)
    assert sum(p.numel() for p in model.parameters()) == json.loads((teacher / artifacts.METRICS).read_text())["parameters"]
