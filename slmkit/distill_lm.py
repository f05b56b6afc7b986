"""`slm distill --task lm`: a small causal LM learns from a large one.

Sequence-level distillation (Kim & Rush 2016): the teacher continues each of the user's prompts (slmkit's one decode
loop, greedy by default), and the student, a Llama-style decoder of `--shape` trained from scratch, learns the
prompts with their continuations through `slm train --task lm`'s loop. When the student shares the teacher's
tokenizer (the default) and the teacher runs in PyTorch, it also learns the teacher's next-token distributions at
every position (token-level KD: KL divergence at a temperature, weight `kd`). With `max_new_tokens` 0 the teacher
writes nothing: the student learns the given texts themselves, with token-level KD (what `slm run --task lm`
does with its training split).

The continuations are cached under `<teacher>/distill-cache/` (or `--cache-dir`), keyed by the teacher, the prompts
and the generation settings, so a second student reuses them. The output is a standard causal-LM directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

from slmkit import artifacts
from slmkit.config import LM_DEFAULT_VOCAB, DataConfig, LMDistillConfig, ModelConfig, TrainConfig, to_dict
from slmkit.errors import UserError
from slmkit.generate import GenerationConfig, OpenLM, generate_text, open_lm, truncate_prompt
from slmkit.progress import StepProgress
from slmkit.tasks.lm import LMTask, read_documents
from slmkit.train import TrainResult, train


def distill_lm(cfg: LMDistillConfig, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Generate the teacher's continuations of `cfg.prompts`, then train the student on them into `cfg.out`."""
    cfg.validate()
    artifacts.check_output(Path(cfg.out), overwrite)
    prompts = read_documents(Path(cfg.prompts), cfg.text_col)
    if cfg.eval:
        read_documents(Path(cfg.eval), cfg.text_col)  # bad held-out text is refused before the teacher runs
    teacher = open_lm(cfg.teacher, cfg.train.threads)
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    corpus, cached, seconds = continuations(cfg, teacher, prompts, gen, progress)

    shared = cfg.vocab_size is None
    kd_teacher = teacher.stepper.model if shared and teacher.backend == "torch" and cfg.kd > 0 else None
    why = (
        "on" if kd_teacher is not None
        else "off: kd is 0" if cfg.kd == 0
        else "off: the student has its own vocabulary (vocab_size)" if not shared
        else "off: the teacher is an ONNX export (token-level KD needs its PyTorch weights)"
    )
    task = LMTask(
        shape=cfg.shape, vocab_size=cfg.vocab_size or LM_DEFAULT_VOCAB, tokenizer_from=Path(cfg.teacher) if shared else None,
        teacher=kd_teacher, kd=cfg.kd if kd_teacher is not None else 0.0, kd_temperature=cfg.kd_temperature,
    )
    train_cfg = TrainConfig(
        task="lm",
        out=cfg.out,
        data=DataConfig(train=str(corpus), eval=cfg.eval, text_col="text" if not cfg.eval else cfg.text_col),
        model=ModelConfig(base="scratch", shape=cfg.shape, vocab_size=cfg.vocab_size or LM_DEFAULT_VOCAB),
        train=cfg.train,
    )
    extra = {
        "distill": {
            "teacher": str(cfg.teacher),
            "teacher_backend": teacher.backend,
            "prompts": len(prompts),
            "continuations": len(prompts) * cfg.samples,
            "generation": asdict(gen),
            "generation_seconds": seconds,
            "continuations_cache": {"path": str(corpus), "hit": cached},
            "token_kd": why,
            "student_tokenizer": "the teacher's" if shared else f"its own byte-level BPE of {cfg.vocab_size}",
            "config": to_dict(cfg),
        }
    }
    return train(train_cfg, overwrite=overwrite, progress=progress, task=task, extra=extra)


def continuations(cfg: LMDistillConfig, teacher: OpenLM, prompts: list[str], gen: GenerationConfig, progress: bool) -> tuple[Path, bool, float]:
    """(a JSONL file of prompt + continuation documents, whether it came from the cache, seconds spent generating)."""
    key = _cache_key(cfg, prompts, gen)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.teacher) / artifacts.DISTILL_CACHE
    path = cache / f"lm-{key[:16]}.jsonl"
    if path.is_file():
        return path, True, 0.0
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{cache}: cannot cache the teacher's continuations there ({e.strerror}): pass --cache-dir DIR") from None
    started, rows = time.perf_counter(), []
    with StepProgress(progress) as bar:
        bar.start("teacher continues the prompts", len(prompts) * cfg.samples)
        for i, prompt in enumerate(prompts):
            ids, _ = truncate_prompt(teacher.encode(prompt), teacher.context_length, gen.max_new_tokens)
            for s in range(cfg.samples):
                sample = replace(gen, seed=cfg.seed * 1_000_003 + i * cfg.samples + s)
                text = "".join(generate_text(teacher.stepper, teacher.tokenizer, ids, sample, eos_ids=teacher.eos_ids, bos_id=teacher.bos_id)) if gen.max_new_tokens else ""
                rows.append({"text": prompt + text, "prompt": prompt, "continuation": text})
                bar.advance(0.0, (len(rows)) / max(time.perf_counter() - started, 1e-9))
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)
    return path, False, time.perf_counter() - started


def _cache_key(cfg: LMDistillConfig, prompts: list[str], gen: GenerationConfig) -> str:
    """The teacher (its config and its weight files' sizes and times), the prompts and the generation settings."""
    teacher = Path(cfg.teacher)
    weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in teacher.iterdir() if p.suffix in (".safetensors", ".onnx"))
    parts = {
        "config": (teacher / artifacts.HF_CONFIG).read_text(encoding="utf-8") if (teacher / artifacts.HF_CONFIG).is_file() else "",
        "weights": weights,
        "prompts": prompts,
        "generation": asdict(gen),
        "samples": cfg.samples,
        "seed": cfg.seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=list).encode()).hexdigest()
