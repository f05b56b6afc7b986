"""The bench report, rendered from `results.json` alone: markdown, one self-contained HTML page, matplotlib charts
and a model card per slmkit model.

    write_report(artifacts.read_json(Path("reports/x/results.json")), Path("reports/x"))   # re-render

The document is built once as a list of blocks (headings, paragraphs, lists, tables, images) and written twice,
as markdown and as HTML with the chart PNGs base64-embedded (no CDN, no scripts, opens offline). It reads
top-down: the headline table, a summary, warnings, then the charts, detail tables and the setup.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from slmkit import artifacts

KIND_COLORS = {"model": "#1f77b4", "baseline": "#ff7f0e"}
BACKENDS = {"pytorch": "PyTorch", "onnx": "ONNX Runtime", "sklearn": "scikit-learn", "fasttext": "fastText", "hf-pipeline": "HF pipeline"}
BASELINES = {
    "tfidf": "baseline: TF-IDF + logistic regression",
    "fasttext": "baseline: fastText",
    "teacher-torch": "baseline: teacher, HF pipeline (PyTorch fp32)",
    "teacher-int8": "baseline: teacher, ONNX Runtime dynamic int8",
    "kn4": "baseline: word 4-gram Kneser-Ney",
}
CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.8rem 0 1.4rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.55rem; text-align: right; vertical-align: top; }
td { white-space: nowrap; } th { background: #f3f3f3; } .text { text-align: left; white-space: normal; }
tr.failed td { color: #a00; background: #fff4f4; }
ul.warnings li { color: #8a5300; }
img { max-width: 100%; display: block; margin: 0.5rem 0 1.5rem; }
details { margin: 0.5rem 0 1rem; } summary { cursor: pointer; font-weight: 600; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""


def write_report(results: dict, directory: Path) -> None:
    """report.md, report.html, the chart PNGs and models/<name>/model-card.md, into `directory`."""
    charts = write_charts(results, directory)
    names = {key: path.name for key, path in charts.items()}
    (directory / artifacts.BENCH_MARKDOWN).write_text(markdown(results, names), encoding="utf-8")
    (directory / artifacts.BENCH_HTML).write_text(html_page(results, charts), encoding="utf-8")
    for r in results["entries"]:
        if r["kind"] == "model" and r["status"] == "ok":
            card = directory / artifacts.BENCH_CARDS / slug(r["name"]) / artifacts.MODEL_CARD
            card.parent.mkdir(parents=True, exist_ok=True)
            card.write_text(model_card(results, r), encoding="utf-8")


def add_search(directory: Path, search: dict) -> None:
    """Put a search's summary and Pareto front (`slmkit.search.SearchResult.to_dict()`) into the report in
    `directory`: results.json gets it under `search`, and report.md / report.html are rendered again."""
    results = artifacts.read_json(directory / artifacts.BENCH_RESULTS)
    if results.get("search") == search:
        return
    results["search"] = search
    write_report(results, directory)
    artifacts.write_json(directory / artifacts.BENCH_RESULTS, results)


def markdown(results: dict, images: dict[str, str], cards: bool = True) -> str:
    """The report as markdown; `images` maps chart keys to the paths the markdown links (absent: left out);
    `cards`: link the model cards (they sit beside the report)."""
    return _to_markdown(_document(results, images, cards))


def html_page(results: dict, charts: dict[str, Path]) -> str:
    """The report as one HTML page with every chart embedded as a base64 PNG."""
    embedded = {key: "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii") for key, path in charts.items()}
    body = _to_html(_document(results, embedded))
    title = html.escape(_title(results))
    return f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


# -------------------------------------------------------------------------------------------- the document


def _title(results: dict) -> str:
    d = results["data"]
    task = results.get("task", "classification")
    if task == "lm":
        return f"Language-model benchmark on {Path(d['path']).name}: {d['n_examples']} held-out texts"
    if task == "qa":
        return f"QA benchmark on {Path(d['path']).name}: {d['n_examples']} questions"
    if task == "ner":
        return f"NER benchmark on {Path(d['path']).name}: {d['n_examples']} sentences, {len(d['labels'])} entity types"
    return f"Benchmark on {Path(d['path']).name}: {d['n_examples']} examples, {len(d['labels'])} labels"


def _columns(results: dict) -> list[tuple[str, str]]:
    """(metric key, display name) of the report's metric columns; the first ranks (older results: classification's)."""
    return [tuple(c) for c in results.get("metric_columns", [["accuracy", "accuracy"], ["macro_f1", "macro-F1"]])]


def _unit(results: dict) -> str:
    return results.get("unit", "texts")


def _document(results: dict, images: dict[str, str], cards: bool = True) -> list[tuple]:
    if results.get("task") == "lm":
        return _lm_document(results, images, cards)
    entries = results["entries"]
    ok = [r for r in entries if r["status"] == "ok"]
    timing = results["timing"]
    settings = list(timing["threads"])
    first = timing["pareto_threads"]
    hw = results["hardware"]
    blocks: list[tuple] = [("h1", _title(results))]
    columns, unit = _columns(results), _unit(results)
    blocks.append(("p", f"{hw['cpu']}, {hw['cpus']} CPUs. Medians over {timing['rounds']} interleaved timing rounds, with min–max; "
                        f"{' and '.join(name for _, name in columns)} with 95% bootstrap intervals ({results['bootstrap']['resamples']} resamples)."
                        + (f" Latency is per {unit[:-1]} and throughput in {unit} per second, decoding included." if unit != "texts" else "")))

    headers = ["model", "type"] + [f"{name} % (95% CI)" for _, name in columns] + [f"batch-1 p50 ms, {_threads(timing, first)}"]
    headers += [f"batch-{timing['batch_size']} {unit}/s, {_threads(timing, s)}" for s in settings]
    headers += ["size MB", "parameters", "peak RSS MB", "Pareto"]
    rows = []
    for r in entries:
        if r["status"] != "ok":
            rows.append(("failed", [r["name"], _describe(r), f"failed: {r['error']}"] + ["—"] * (len(headers) - 3)))
            continue
        m = r["metrics"]
        row = [r["name"], _describe(r)] + [_pct_ci(m[key], m.get(f"{key}_ci95")) for key, _ in columns] + [_spread(r["speed"][first]["p50_ms"], _ms)]
        row += [_spread(r["speed"][s]["throughput_per_s"], _rate) for s in settings]
        row += [_mb(r["bytes"]), _count(r["parameters"]), _num(r["peak_rss_mb"], "{:.0f}"), "✓" if r["pareto"] else ""]
        rows.append(("ok", row))
    blocks.append(("table", "results", headers, rows))
    blocks.append(("ul", "summary", _summary(results, ok)))
    if results["warnings"]:
        blocks.append(("h2", "Warnings"))
        blocks.append(("ul", "warnings", results["warnings"]))
    if results.get("search"):
        blocks += _search(results["search"])

    if ok:
        blocks.append(("h2", "Charts"))
        for key, alt in (
            ("pareto", f"{columns[0][1].capitalize()} vs batch-1 latency ({_threads(timing, first)}); marker area is proportional to size on disk; the Pareto front is drawn"),
            ("throughput", f"Batch-{timing['batch_size']} throughput per thread setting, min–max over rounds"),
            ("size", "Size on disk"),
        ):
            if key in images:
                blocks.append(("img", images[key], alt))

        headers = ["model", "threads", "p50 ms", "p95 ms", "p99 ms", f"batch-{timing['batch_size']} {unit}/s"]
        rows = [
            ("ok", [r["name"], str(r["speed"][s]["threads"])] + [_spread(r["speed"][s][k], _ms) for k in ("p50_ms", "p95_ms", "p99_ms")] + [_spread(r["speed"][s]["throughput_per_s"], _rate)])
            for r in ok for s in settings
        ]
        blocks.append(("h2", "Latency and throughput"))
        blocks.append(("p", f"Batch-1 latency over {timing['latency_calls']} calls per round after {timing['warmup']} warm-up calls; "
                            f"throughput over {timing['speed_texts']} test {unit} in batches of {timing['batch_size']}, tokenization included. "
                            f"Median over rounds (min–max)."))
        blocks.append(("table", "latency", headers, rows))

        labels = results["data"]["labels"]
        headers = ["label" if results.get("task", "classification") == "classification" else "entity type", "support"] + [r["name"] for r in ok]
        rows = []
        for label in labels:
            support = next((r["metrics"]["per_class"][label]["support"] for r in ok if label in r["metrics"].get("per_class", {})), 0)
            rows.append(("ok", [label, str(support)] + [_num(r["metrics"].get("per_class", {}).get(label, {}).get("f1"), "{:.3f}") for r in ok]))
        if rows:  # QA has no classes (its per-question-type scores are in results.json)
            what = "Per-class F1 (precision, recall and the confusion matrix are in results.json)" if results.get("task", "classification") == "classification" else "Per-entity-type F1 (precision and recall are in results.json)"
            blocks.append(("details", what, [("table", "per-class", headers, rows)]))

    blocks.append(("h2", "Setup"))
    blocks.append(("ul", "setup", _setup(results)))
    models = [r for r in ok if r["kind"] == "model"]
    if models and cards:
        blocks.append(("h2", "Model cards"))
        blocks.append(("ul", "cards", [f"[{r['name']}]({artifacts.BENCH_CARDS}/{slug(r['name'])}/{artifacts.MODEL_CARD})" for r in models]))
    return blocks


def _search(search: dict) -> list[tuple]:
    """The Optuna study of `slm run --search`: its trials and its Pareto front, as measured on the eval split."""
    counts = ", ".join(f"{n} {state}" for state, n in sorted(search["trials"].items()))
    blocks: list[tuple] = [("h2", "Search")]
    blocks.append(("p", f"Optuna study `{search['study']}` in `{search['storage']}`: {counts} trials. Objectives on the eval split, "
                        "int8 model: accuracy (maximize) and batch-1 p50 latency (minimize); a size budget, when set, is a constraint. "
                        f"The Pareto front ({len(search['pareto'])} trials) was benchmarked above on the test split as `<trial>-int8`."))
    headers = ["trial", "student (a --student entry)", "eval accuracy %", "batch-1 p50 ms", "size MB", "parameters"]
    rows = [("ok", [r["name"], r["entry"], f"{100 * r['accuracy']:.2f}", _ms(r["latency_ms"]), _mb(r["bytes"]), _count(r["parameters"])])
            for r in search["pareto"]]
    if rows:
        blocks.append(("table", "search", headers, rows))
    else:
        blocks.append(("p", "No trial finished within the size budget yet: the Pareto front is empty."))
    return blocks


def _summary(results: dict, ok: list[dict]) -> list[str]:
    timing = results["timing"]
    first, last = timing["pareto_threads"], list(timing["threads"])[-1]
    lines = []
    key, name = _columns(results)[0]
    unit = _unit(results)
    if ok:
        best = max(ok, key=lambda r: r["metrics"][key])
        lo, hi = best["metrics"][f"{key}_ci95"]
        lines.append(f"Most accurate: **{best['name']}**, {name} {100 * best['metrics'][key]:.1f}% (95% CI {100 * lo:.1f}–{100 * hi:.1f}).")
        fast = min(ok, key=lambda r: r["speed"][first]["p50_ms"]["median"])
        lines.append(f"Fastest at batch 1 ({_threads(timing, first)}): **{fast['name']}**, p50 {_ms(fast['speed'][first]['p50_ms']['median'])} ms.")
        top = max(ok, key=lambda r: r["speed"][last]["throughput_per_s"]["median"])
        lines.append(f"Highest batch-{timing['batch_size']} throughput ({_threads(timing, last)}): **{top['name']}**, {_rate(top['speed'][last]['throughput_per_s']['median'])} {unit}/s.")
        small = min((r for r in ok if r["bytes"]), key=lambda r: r["bytes"], default=None)
        if small:
            lines.append(f"Smallest on disk: **{small['name']}**, {_mb(small['bytes'])} MB.")
        lines.append(f"Pareto front ({name} vs batch-1 latency, {_threads(timing, first)}), fastest first: {' → '.join(results['pareto_front'])}.")
    for r in results["entries"]:
        if r["status"] != "ok":
            lines.append(f"**{r['name']}** failed: {r['error']}")
    return lines


def _setup(results: dict) -> list[str]:
    d, t, hw = results["data"], results["timing"], results["hardware"]
    mapped = ", ".join(f"{a}→{b}" for a, b in d["label_map"].items())
    if results.get("task", "classification") == "classification":
        lines = [f"Test data: `{d['path']}` (columns {d['text_col']}, {d['label_col']}), {d['n_examples']} examples, {len(d['labels'])} labels" + (f"; labels mapped: {mapped}" if mapped else "") + "."]
    else:
        lines = [f"Test data: `{d['path']}`, {d['n_examples']} {_unit(results)}, read by the {results['task']} task with the models' recorded settings."]
    if results.get("train_data"):
        lines.append(f"Trained baselines fit on `{results['train_data']}` in this run.")
    if results.get("teacher"):
        lines.append(f"Teacher: `{results['teacher']}`.")
    lines.append(f"Timing: {t['rounds']} rounds interleaved over all entries and thread settings ({', '.join(f'{k} = {v}' for k, v in t['threads'].items())}); "
                 f"{t['latency_calls']} batch-1 calls per round after {t['warmup']} warm-up calls; throughput over {t['speed_texts']} texts. "
                 f"A figure whose max − min exceeds {100 * t['spread_warning']:.0f}% of its median is flagged.")
    lines.append("Peak RSS: a fresh process that loads the entry and serves one batch-1 request (VmHWM). Size: the weights file "
                 "(model.onnx or model.safetensors; a trained baseline's saved files). Parameters: stored weight elements.")
    lines.append(f"CPU: {hw['cpu']}; instruction sets {', '.join(hw['isa']) or 'none listed'}; int8 instructions (VNNI/AMX): {'yes' if hw['int8_instructions'] else 'no'}.")
    versions = ", ".join(f"{k} {v}" for k, v in hw.get("versions", {}).items())
    lines.append(f"Python {hw['python']}; {versions}. Created {results['created']} in {results['seconds']:.0f} s.")
    return lines


# -------------------------------------------------------------------------------------------- charts


def write_charts(results: dict, directory: Path) -> dict[str, Path]:
    """The Pareto, throughput and size charts as PNGs in `directory` (none when no entry succeeded)."""
    ok = [r for r in results["entries"] if r["status"] == "ok"]
    if not ok:
        return {}
    if results.get("task") == "lm":
        return _lm_charts(results, ok, directory)
    paths = {key: directory / name for key, name in artifacts.BENCH_CHARTS.items()}
    _pareto_chart(results, ok, paths["pareto"])
    _throughput_chart(results, ok, paths["throughput"])
    _size_chart(ok, paths["size"])
    return paths


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # the object API: no pyplot state, no GUI backend

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.subplots()


def _pareto_chart(results: dict, ok: list[dict], path: Path) -> None:
    from matplotlib.lines import Line2D

    setting = results["timing"]["pareto_threads"]
    fig, ax = _figure(10, 5.2)
    largest = max(r["bytes"] or 1 for r in ok)
    area = lambda b: 40 + 1200 * (b or 0) / largest  # noqa: E731 - marker area (points²) ∝ bytes on disk
    key, name = _columns(results)[0]
    points = sorted(((r["speed"][setting]["p50_ms"]["median"], 100 * r["metrics"][key], r) for r in ok), key=lambda p: (p[0], -p[1]))
    xs_all, ys_all = [p[0] for p in points], [p[1] for p in points]
    log_x = max(xs_all) / max(min(xs_all), 1e-9) > 20
    if log_x:
        ax.set_xscale("log")
    placed: list[tuple[float, float]] = []
    for x, y, r in points:
        lo, hi = (100 * v for v in r["metrics"][f"{key}_ci95"])
        ax.errorbar(x, y, yerr=[[max(y - lo, 0)], [max(hi - y, 0)]], fmt="none", ecolor="0.6", elinewidth=1, capsize=3, zorder=1)
        ax.scatter(x, y, s=area(r["bytes"]), color=KIND_COLORS[r["kind"]], alpha=0.55, edgecolors="black" if r["pareto"] else "none", linewidths=1.5, zorder=2)
        # labels of points that nearly coincide are stacked instead of printed over each other
        here = (_position(x, xs_all, log_x), _position(y, ys_all, False))
        stacked = sum(abs(here[0] - a) < 0.06 and abs(here[1] - b) < 0.06 for a, b in placed)
        placed.append(here)
        ax.annotate(r["name"], (x, y), xytext=(7, 6 + 11 * stacked), textcoords="offset points", fontsize=8.5, fontweight="bold" if r["pareto"] else "normal")
    front = [(x, y) for x, y, r in points if r["pareto"]]
    if front:
        fx, fy = [p[0] for p in front], [p[1] for p in front]
        ax.plot(fx, fy, drawstyle="steps-post", color="black", linestyle="--", linewidth=1.2, zorder=0)
        ax.annotate("Pareto front", (fx[-1], fy[-1]), xytext=(7, -14), textcoords="offset points", fontsize=8.5, style="italic")
    ax.set_xlabel(f"batch-1 latency p50, ms ({_threads(results['timing'], setting)}{', log scale' if log_x else ''}) — lower is better")
    ax.set_ylabel(f"{name} %, 95% CI — higher is better")
    ax.set_title(f"{name[0].upper() + name[1:]} vs latency (marker area ∝ size on disk)")
    ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color="black", linestyle="--", label="Pareto front")]
    handles += [Line2D([], [], marker="o", linestyle="", color=c, alpha=0.55, markersize=8, label=f"{k}s") for k, c in KIND_COLORS.items() if any(r["kind"] == k for r in ok)]
    sizes = sorted({r["bytes"] for r in ok if r["bytes"]})
    for b in (sizes[:1] + sizes[-1:]) if len(sizes) > 1 else sizes:  # the smallest and the largest marker
        handles.append(Line2D([], [], marker="o", linestyle="", color="0.75", markersize=area(b) ** 0.5, label=f"{_mb(b)} MB"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, labelspacing=2.0, handletextpad=1.6, borderpad=1.0, frameon=False)
    ax.margins(x=0.12, y=0.12)
    fig.tight_layout()
    fig.savefig(path)


def _position(value: float, values: list[float], log: bool) -> float:
    """Where `value` sits between the smallest and largest of `values`, 0 to 1 (on a log scale if `log`)."""
    import math

    f = math.log10 if log else (lambda v: v)
    lo, hi = f(min(values)), f(max(values))
    return (f(value) - lo) / (hi - lo) if hi > lo else 0.5


def _throughput_chart(results: dict, ok: list[dict], path: Path) -> None:
    timing = results["timing"]
    settings = list(timing["threads"])
    fig, ax = _figure(8, 1.2 + 0.45 * len(ok) * len(settings))
    height = 0.8 / len(settings)
    for i, s in enumerate(settings):
        ys = [j + i * height for j in range(len(ok))]
        med = [r["speed"][s]["throughput_per_s"]["median"] for r in ok]
        err = [[m - r["speed"][s]["throughput_per_s"]["min"] for m, r in zip(med, ok)], [r["speed"][s]["throughput_per_s"]["max"] - m for m, r in zip(med, ok)]]
        ax.barh(ys, med, height=height, xerr=err, capsize=2, label=_threads(timing, s), alpha=0.85)
        for y, m in zip(ys, med):
            ax.annotate(_rate(m), (m, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7.5)
    ax.set_yticks([j + height * (len(settings) - 1) / 2 for j in range(len(ok))], [r["name"] for r in ok])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"{_unit(results)} per second at batch {timing['batch_size']}, tokenization included (log scale; min–max bars)")
    ax.set_title("Throughput")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
    ax.margins(x=0.2)
    fig.tight_layout()
    fig.savefig(path)


def _size_chart(ok: list[dict], path: Path) -> None:
    sized = [r for r in ok if r["bytes"]]
    fig, ax = _figure(8, 1.2 + 0.4 * len(sized))
    mb = [r["bytes"] / 1e6 for r in sized]
    ax.barh(range(len(sized)), mb, color=[KIND_COLORS[r["kind"]] for r in sized], alpha=0.8)
    for y, (m, r) in enumerate(zip(mb, sized)):
        ax.annotate(f"{_mb(r['bytes'])} MB, {_count(r['parameters'])} parameters", (m, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7.5)
    ax.set_yticks(range(len(sized)), [r["name"] for r in sized])
    ax.invert_yaxis()
    if mb and max(mb) / max(min(mb), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("size on disk, MB (blue: slmkit models, orange: baselines)")
    ax.set_title("Size")
    ax.grid(True, axis="x", alpha=0.3)
    ax.margins(x=0.45)
    fig.tight_layout()
    fig.savefig(path)


# -------------------------------------------------------------------------------------------- model card


def model_card(results: dict, r: dict) -> str:
    """Intended use, data, metrics with intervals, speed and limitations of one slmkit model, in markdown."""
    if results.get("task") == "lm":
        return _lm_model_card(results, r)
    if results.get("task", "classification") != "classification":
        return _task_model_card(results, r)
    p, m, d, t, hw = r.get("provenance") or {}, r["metrics"], results["data"], results["timing"], results["hardware"]
    labels = m["labels"]
    shown = ", ".join(labels[:10]) + (f", … ({len(labels)} in all)" if len(labels) > 10 else "")
    runtime = "the torch-free runtime (`slmkit.runtime.Predictor`, ONNX Runtime)" if r["backend"] == "onnx" else "PyTorch (`slm predict`, or `transformers.pipeline`)"
    lines = [f"# Model card: {r['name']}", "", f"{_describe(r)} · {_count(r['parameters'])} parameters · {_mb(r['bytes'])} MB on disk · `{r['path']}`", ""]
    lines += ["## Intended use", "",
              f"Text {p.get('task', 'classification')}: each short text gets one of {len(labels)} labels ({shown}). "
              f"It is served by {runtime}: `slm predict --model {r['path']} \"some text\"`. It always answers one of these labels, "
              "so texts outside that domain get a confident-looking wrong answer; route them elsewhere or add an out-of-scope label.", ""]
    lines += ["## Data", ""]
    train = p.get("train_data")
    lines.append(f"- Training data: `{train}`" + (f" ({p['n_train']} examples)" if p.get("n_train") else "") if train else "- Training data: not recorded in the model's lineage.")
    if p.get("eval_data"):
        lines.append(f"- Eval data during training: `{p['eval_data']}`")
    for key, what in (("base", "Base model"), ("teacher", "Distilled from teacher"), ("student", "Student architecture"), ("derived_from", "Exported from")):
        if p.get(key):
            lines.append(f"- {what}: `{p[key]}`")
    if p.get("quantization"):
        q = p["quantization"]
        lines.append(f"- Quantization: {q.get('method')} int8" + (", per channel" if q.get("per_channel") else ""))
    lines.append(f"- Benchmarked on: `{d['path']}`, {m['n_examples']} examples" + (f" (labels mapped: {', '.join(f'{a}→{b}' for a, b in d['label_map'].items())})" if d["label_map"] else ""))
    lines += ["", f"## Metrics ({m['n_examples']} test examples; 95% bootstrap intervals, {results['bootstrap']['resamples']} resamples)", "",
              "| metric | value | 95% CI |", "|---|---:|---:|",
              f"| accuracy | {100 * m['accuracy']:.2f}% | {100 * m['accuracy_ci95'][0]:.2f}–{100 * m['accuracy_ci95'][1]:.2f} |",
              f"| macro-F1 | {100 * m['macro_f1']:.2f}% | {100 * m['macro_f1_ci95'][0]:.2f}–{100 * m['macro_f1_ci95'][1]:.2f} |",
              f"| expected calibration error | {m['ece']:.4f} | |", ""]
    weakest = sorted(((v["f1"], label, v["support"]) for label, v in m["per_class"].items() if v["support"] > 0))[:5]
    if weakest:
        lines.append("Weakest classes (F1, support): " + "; ".join(f"{label} {f1:.2f} ({n})" for f1, label, n in weakest) + ".")
        lines.append("")
    lines += [f"## Speed and footprint ({hw['cpu']}, {hw['cpus']} CPUs)", "",
              "| threads | p50 ms | p95 ms | p99 ms | batch texts/s |", "|---|---:|---:|---:|---:|"]
    for s, speed in r["speed"].items():
        lines.append(f"| {speed['threads']} | " + " | ".join(_spread(speed[k], _ms) for k in ("p50_ms", "p95_ms", "p99_ms")) + f" | {_spread(speed['throughput_per_s'], _rate)} |")
    lines += ["", f"Medians over {t['rounds']} rounds (min–max); batch 1 for latency, batch {t['batch_size']} for throughput, tokenization included. "
              f"Peak RSS of a fresh serving process: {_num(r['peak_rss_mb'], '{:.0f}')} MB.", ""]
    lines += ["## Limitations", "",
              f"- The intervals cover resampling of these {m['n_examples']} test examples only, not a shift in the texts the model will see: "
              "re-evaluate on your own traffic (`slm evaluate`).",
              f"- Texts longer than {p.get('max_length') or 'the maximum length'} tokens are truncated." if p.get("max_length") else "- Long texts are truncated at the tokenizer's maximum length.",
              "- Timings are from one machine; these VMs drift between fast and slow states, so compare ratios within one report, not absolute numbers across reports."]
    if r["precision"] == "int8" and not hw["int8_instructions"]:
        lines.append("- This CPU has no VNNI/AMX int8 instructions: int8 may be no faster than fp32 here.")
    if m["ece"] > 0.05:
        lines.append(f"- Scores are not well calibrated (ECE {m['ece']:.3f}): do not read them as probabilities without recalibration.")
    if weakest and weakest[0][0] < 0.5:
        lines.append(f"- Some classes are weak (lowest F1 {weakest[0][0]:.2f}, {weakest[0][1]}): review them before relying on those labels.")
    return "\n".join(lines) + "\n"


def _task_model_card(results: dict, r: dict) -> str:
    """The model card of an NER or QA model: what it extracts, its task metrics with intervals, speed, limitations."""
    p, m, d, t, hw = r.get("provenance") or {}, r["metrics"], results["data"], results["timing"], results["hardware"]
    task, unit = results["task"], _unit(results)
    n = m.get("n_examples", m.get("n_questions"))
    lines = [f"# Model card: {r['name']}", "", f"{_describe(r)} · {_count(r['parameters'])} parameters · {_mb(r['bytes'])} MB on disk · `{r['path']}`", ""]
    lines += ["## Intended use", ""]
    if task == "ner":
        kinds = sorted({label[2:] for label in m.get("labels", []) if label != "O"}) or d["labels"]
        lines.append(f"Named entities / slots: every word gets a BIO tag of {len(kinds)} entity types ({', '.join(kinds[:10])}); "
                     "entities come back with label, score and character offsets (`slmkit.tasks.ner.predict_entities`).")
    else:
        lines.append("Extractive question answering: the answer is a span of the given context (`slmkit.tasks.qa.answer_questions`); "
                     "a question whose answer is not in the context still gets the best-scoring span.")
    lines += ["", "## Data", ""]
    lines.append(f"- Training data: `{p['train_data']}`" if p.get("train_data") else "- Training data: not recorded in the model's lineage.")
    for key, what in (("base", "Base model"), ("teacher", "Distilled from teacher"), ("derived_from", "Exported from")):
        if p.get(key):
            lines.append(f"- {what}: `{p[key]}`")
    if p.get("quantization"):
        lines.append(f"- Quantization: {p['quantization'].get('method')} int8")
    lines.append(f"- Benchmarked on: `{d['path']}`, {n} {unit}")
    lines += ["", f"## Metrics ({n} test {unit}; 95% bootstrap intervals, {results['bootstrap']['resamples']} resamples)", "",
              "| metric | value | 95% CI |", "|---|---:|---:|"]
    for key, name in _columns(results):
        ci = m.get(f"{key}_ci95")
        lines.append(f"| {name} | {100 * m[key]:.2f}% | " + (f"{100 * ci[0]:.2f}–{100 * ci[1]:.2f} |" if ci else " |"))
    lines += ["", f"## Speed and footprint ({hw['cpu']}, {hw['cpus']} CPUs)", "",
              f"| threads | p50 ms | p95 ms | p99 ms | batch {unit}/s |", "|---|---:|---:|---:|---:|"]
    for s, speed in r["speed"].items():
        lines.append(f"| {speed['threads']} | " + " | ".join(_spread(speed[k], _ms) for k in ("p50_ms", "p95_ms", "p99_ms")) + f" | {_spread(speed['throughput_per_s'], _rate)} |")
    lines += ["", f"Latency per {unit[:-1]} at batch 1, throughput at batch {t['batch_size']}, tokenization and decoding included; medians over {t['rounds']} rounds. "
              f"Peak RSS of a fresh serving process: {_num(r['peak_rss_mb'], '{:.0f}')} MB.", ""]
    lines += ["## Limitations", "",
              f"- The intervals cover resampling of these {n} test {unit} only: re-evaluate on your own data (`slm evaluate`).",
              "- Timings are from one machine; compare ratios within one report, not absolute numbers across reports."]
    if task == "qa":
        lines.append("- Long contexts are read in overlapping windows; an answer longer than a window cannot be found.")
    if r["precision"] == "int8" and not hw["int8_instructions"]:
        lines.append("- This CPU has no VNNI/AMX int8 instructions: int8 may be no faster than fp32 here.")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- rendering


def _to_markdown(blocks: list[tuple]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}")
        elif kind == "h2":
            out.append(f"## {block[1]}")
        elif kind == "p":
            out.append(block[1])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in block[2]))
        elif kind == "table":
            _, _, headers, rows = block
            cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
            lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(headers))) + "|"]
            lines += ["| " + " | ".join(map(cell, row)) + " |" for _, row in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})")
        elif kind == "details":
            out.append(f"## {block[1]}")
            out.append(_to_markdown(block[2]).rstrip("\n"))
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escaped text with the markdown the document uses: **bold**, `code` and [links](href)."""
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    return re.sub(r"\[(.+?)\]\((.+?)\)", r'<a href="\2">\1</a>', text)


def _to_html(blocks: list[tuple]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{_inline(block[1])}</{kind}>")
        elif kind == "ul":
            out.append(f'<ul class="{block[1]}">' + "".join(f"<li>{_inline(item)}</li>" for item in block[2]) + "</ul>")
        elif kind == "table":
            _, table_id, headers, rows = block
            head = "".join(f'<th{" class=text" if i < 2 else ""}>{html.escape(h)}</th>' for i, h in enumerate(headers))
            body = []
            for status, row in rows:
                if status == "failed":  # the reason spans the measurement columns
                    cells = f'<td>{html.escape(row[0])}</td><td class="text">{html.escape(row[1])}</td><td class="text" colspan="{len(headers) - 2}">{html.escape(row[2])}</td>'
                else:
                    cells = "".join(f'<td{" class=text" if i < 2 else ""}>{html.escape(str(c))}</td>' for i, c in enumerate(row))
                body.append(f'<tr class="{status}">{cells}</tr>')
            out.append(f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')
        elif kind == "img":
            out.append(f'<img src="{block[1]}" alt="{html.escape(block[2])}">')
        elif kind == "details":
            out.append(f"<details><summary>{html.escape(block[1])}</summary>{_to_html(block[2])}</details>")
    return "\n".join(out)


# -------------------------------------------------------------------------------------------- formatting


def _describe(r: dict) -> str:
    if r["kind"] == "baseline":
        if r["name"] == "teacher-torch" and r["backend"] == "pytorch":  # NER/QA: the PyTorch model run directly
            return "baseline: teacher, PyTorch fp32"
        return BASELINES.get(r["name"], f"baseline: {r['name']}")
    return f"slmkit {BACKENDS.get(r['backend'], r['backend'])} {r['precision']}"


def _threads(timing: dict, setting: str) -> str:
    n = timing["threads"][setting]
    return f"all {n} threads" if setting == "all" else f"{n} thread" + ("s" if n != 1 else "")


def _pct_ci(value: float, ci: list[float]) -> str:
    return f"{100 * value:.1f} ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})"


def _ms(x: float) -> str:
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _spread(s: dict, fmt) -> str:
    return f"{fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])})"


def _mb(b: int | None) -> str:
    if not b:
        return "—"
    mb = b / 1e6
    return f"{mb:.0f}" if mb >= 100 else f"{mb:.1f}" if mb >= 1 else f"{mb:.2f}"


def _count(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else fmt.format(x)


# -------------------------------------------------------------------------------------------- language models
# A causal-LM report (slmkit.bench_lm): quality is held-out perplexity (per token and per word, lower is better)
# and autocomplete (next-word accuracy@3, keystroke savings); speed is per generated token with the KV cache.


def _lm_document(results: dict, images: dict[str, str], cards: bool = True) -> list[tuple]:
    entries, timing, hw = results["entries"], results["timing"], results["hardware"]
    ok = [r for r in entries if r["status"] == "ok"]
    settings, first = list(timing["threads"]), timing["pareto_threads"]
    blocks: list[tuple] = [("h1", _title(results))]
    blocks.append(("p", f"{hw['cpu']}, {hw['cpus']} CPUs. Perplexity on all {results['data']['n_examples']} held-out texts (per token, and per "
                        f"whitespace word: comparable across tokenizers and with the n-gram baseline; lower is better); next-word accuracy@3 and "
                        f"keystroke savings on a seeded sample of {results['data'].get('sample', '?')} texts (higher is better); 95% bootstrap "
                        f"intervals over texts ({results['bootstrap']['resamples']} resamples). Speed: batch-1 greedy generation with the KV cache, "
                        f"medians over {timing['rounds']} interleaved rounds (min–max)."))
    headers = ["model", "type", "perplexity / token (95% CI)", "perplexity / word (95% CI)", "next-word acc@3 % (95% CI)", "keystroke savings % (95% CI)",
               f"ms / token, {_threads(timing, first)}", f"time to first token ms, {_threads(timing, first)}"]
    headers += [f"tokens/s, {_threads(timing, s)}" for s in settings] + ["size MB", "parameters", "peak RSS MB", "Pareto"]
    rows = []
    for r in entries:
        if r["status"] != "ok":
            rows.append(("failed", [r["name"], _describe(r), f"failed: {r['error']}"] + ["—"] * (len(headers) - 3)))
            continue
        m, speed = r["metrics"], r["speed"]
        row = [r["name"], _describe(r), _ppl_ci(m.get("perplexity_per_token"), m.get("perplexity_per_token_ci95")), _ppl_ci(m["perplexity_per_word"], m["perplexity_per_word_ci95"]),
               _pct_ci(m["next_word_accuracy"], m["next_word_accuracy_ci95"]), _pct_ci(m["keystroke_savings"], m["keystroke_savings_ci95"])]
        row += [_spread(speed[first]["p50_ms"], _ms), _spread(speed[first]["ttft_ms"], _ms)] if speed else ["—", "—"]
        row += [_spread(speed[s]["throughput_per_s"], _rate) if speed else "—" for s in settings]
        row += [_mb(r["bytes"]), _count(r["parameters"]), _num(r["peak_rss_mb"], "{:.0f}"), "✓" if r["pareto"] else ""]
        rows.append(("ok", row))
    blocks.append(("table", "results", headers, rows))
    blocks.append(("ul", "summary", _lm_summary(results, ok)))
    if results["warnings"]:
        blocks.append(("h2", "Warnings"))
        blocks.append(("ul", "warnings", results["warnings"]))
    if ok:
        blocks.append(("h2", "Charts"))
        for key, alt in (("pareto", f"Next-word accuracy@3 vs ms per generated token ({_threads(timing, first)}); marker area is proportional to size on disk; "
                                    "word n-gram baselines (no tokens to time) are drawn as horizontal lines"),
                         ("size", "Per-word perplexity vs size on disk")):
            if key in images:
                blocks.append(("img", images[key], alt))
        timed = [r for r in ok if r["speed"]]
        headers = ["model", "threads", "ms/token p50", "p95", "p99", "time to first token ms", "tokens/s"]
        rows = [("ok", [r["name"], str(r["speed"][s]["threads"])] + [_spread(r["speed"][s][k], _ms) for k in ("p50_ms", "p95_ms", "p99_ms", "ttft_ms")]
                 + [_spread(r["speed"][s]["throughput_per_s"], _rate)]) for r in timed for s in settings]
        if rows:
            blocks.append(("h2", "Generation speed"))
            blocks.append(("p", f"Prompts of up to {timing.get('prompt_tokens')} tokens cut from the held-out texts, then {timing.get('new_tokens')} greedy tokens "
                                f"each (fewer when the context window is short), until {timing['latency_calls']} tokens are timed per round after "
                                f"{timing['warmup']} warm-up steps. Time to first token: the prompt's prefill and the first pick."))
            blocks.append(("table", "latency", headers, rows))
    blocks.append(("h2", "Setup"))
    d, t = results["data"], timing
    setup = [f"Held-out text: `{d['path']}`, {d['n_examples']} texts ({next((r['metrics']['n_words'] for r in ok), 0)} words)."]
    if results.get("train_data"):
        setup.append(f"Word n-gram baselines trained on `{results['train_data']}` in this run (words are runs of non-space characters).")
    setup.append(f"Timing: {t['rounds']} rounds interleaved over all entries and thread settings ({', '.join(f'{k} = {v}' for k, v in t['threads'].items())}). "
                 f"A figure whose max − min exceeds {100 * t['spread_warning']:.0f}% of its median is flagged.")
    setup.append("Peak RSS: a fresh process that loads the model and generates a few tokens (VmHWM). Size: the weights file (model.onnx or model.safetensors).")
    versions = ", ".join(f"{k} {v}" for k, v in hw.get("versions", {}).items())
    setup.append(f"CPU: {hw['cpu']}; int8 instructions (VNNI/AMX): {'yes' if hw['int8_instructions'] else 'no'}. Python {hw['python']}; {versions}. "
                 f"Created {results['created']} in {results['seconds']:.0f} s.")
    blocks.append(("ul", "setup", setup))
    models = [r for r in ok if r["kind"] == "model"]
    if models and cards:
        blocks.append(("h2", "Model cards"))
        blocks.append(("ul", "cards", [f"[{r['name']}]({artifacts.BENCH_CARDS}/{slug(r['name'])}/{artifacts.MODEL_CARD})" for r in models]))
    return blocks


def _lm_summary(results: dict, ok: list[dict]) -> list[str]:
    timing = results["timing"]
    first = timing["pareto_threads"]
    lines = []
    if ok:
        best = min(ok, key=lambda r: r["metrics"]["perplexity_per_word"])
        lines.append(f"Lowest per-word perplexity: **{best['name']}**, {best['metrics']['perplexity_per_word']:.2f}.")
        acc = max(ok, key=lambda r: r["metrics"]["next_word_accuracy"])
        lines.append(f"Best next-word accuracy@3: **{acc['name']}**, {100 * acc['metrics']['next_word_accuracy']:.1f}%; "
                     f"keystroke savings {100 * acc['metrics']['keystroke_savings']:.1f}%.")
        timed = [r for r in ok if r["speed"]]
        if timed:
            fast = max(timed, key=lambda r: r["speed"][first]["throughput_per_s"]["median"])
            lines.append(f"Fastest generation ({_threads(timing, first)}): **{fast['name']}**, {_rate(fast['speed'][first]['throughput_per_s']['median'])} tokens/s, "
                         f"time to first token {_ms(fast['speed'][first]['ttft_ms']['median'])} ms.")
            lines.append(f"Pareto front (next-word accuracy@3 vs ms per token, {_threads(timing, first)}), fastest first: {' → '.join(results['pareto_front'])}.")
            ref = timed[0]  # ratios within this run: absolute numbers drift between runs on shared machines
            rate = lambda r: r["speed"][first]["throughput_per_s"]["median"]  # noqa: E731
            if len(timed) > 1:
                lines.append(f"Tokens/s relative to {ref['name']} ({_threads(timing, first)}): "
                             + ", ".join(f"{r['name']} {rate(r) / rate(ref):.2f}×" for r in timed[1:]) + ".")
    for r in results["entries"]:
        if r["status"] != "ok":
            lines.append(f"**{r['name']}** failed: {r['error']}")
    return lines


def _ppl_ci(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f} ({ci[0]:.2f}–{ci[1]:.2f})" if ci else f"{value:.2f}"


def _lm_charts(results: dict, ok: list[dict], directory: Path) -> dict[str, Path]:
    """Quality vs speed (accuracy@3 against ms per token; baselines as lines) and quality vs size."""
    paths = {"pareto": directory / artifacts.BENCH_CHARTS["pareto"], "size": directory / artifacts.BENCH_CHARTS["size"]}
    setting = results["timing"]["pareto_threads"]
    timed, lines = [r for r in ok if r["speed"]], [r for r in ok if not r["speed"]]
    fig, ax = _figure(9, 5)
    largest = max((r["bytes"] or 1 for r in ok), default=1)
    xs = [r["speed"][setting]["p50_ms"]["median"] for r in timed]
    ys = [100 * r["metrics"]["next_word_accuracy"] for r in timed]
    log_x = bool(xs) and max(xs) / max(min(xs), 1e-9) > 20
    if log_x:
        ax.set_xscale("log")
    placed: list[tuple[float, float]] = []
    for r, x, y in zip(timed, xs, ys):
        lo, hi = (100 * v for v in r["metrics"]["next_word_accuracy_ci95"])
        ax.errorbar(x, y, yerr=[[max(y - lo, 0)], [max(hi - y, 0)]], fmt="none", ecolor="0.6", capsize=3, zorder=1)
        ax.scatter(x, y, s=40 + 1200 * (r["bytes"] or 0) / largest, color=KIND_COLORS[r["kind"]], alpha=0.55, edgecolors="black" if r["pareto"] else "none", zorder=2)
        here = (_position(x, xs, log_x), _position(y, ys, False))  # labels of nearly coinciding points are stacked
        stacked = sum(abs(here[0] - a) < 0.06 and abs(here[1] - b) < 0.06 for a, b in placed)
        placed.append(here)
        ax.annotate(r["name"], (x, y), xytext=(7, 6 + 11 * stacked), textcoords="offset points", fontsize=8.5, fontweight="bold" if r["pareto"] else "normal")
    for r in lines:
        y = 100 * r["metrics"]["next_word_accuracy"]
        ax.axhline(y, color=KIND_COLORS["baseline"], linestyle=":", linewidth=1.5)
        ax.annotate(r["name"], (0, y), xycoords=("axes fraction", "data"), xytext=(4, 4), textcoords="offset points", fontsize=8.5, color=KIND_COLORS["baseline"])
    ax.set_xlabel(f"ms per generated token, p50 ({_threads(results['timing'], setting)}{', log scale' if log_x else ''}) — lower is better")
    ax.set_ylabel("next-word accuracy@3 %, 95% CI — higher is better")
    ax.set_title("Autocomplete quality vs generation speed (marker area ∝ size on disk)")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.15, y=0.15)
    fig.tight_layout()
    fig.savefig(paths["pareto"])
    sized = [r for r in ok if r["bytes"]]
    fig, ax = _figure(9, 4.5)
    for r in sized:
        x, y = r["bytes"] / 1e6, r["metrics"]["perplexity_per_word"]
        lo, hi = r["metrics"]["perplexity_per_word_ci95"]
        ax.errorbar(x, y, yerr=[[max(y - lo, 0)], [max(hi - y, 0)]], fmt="o", color=KIND_COLORS[r["kind"]], capsize=3)
        ax.annotate(r["name"], (x, y), xytext=(7, 6), textcoords="offset points", fontsize=8.5)
    for r in ok:
        if not r["bytes"]:
            ax.axhline(r["metrics"]["perplexity_per_word"], color=KIND_COLORS["baseline"], linestyle=":", linewidth=1.5, label=r["name"])
    if any(not r["bytes"] for r in ok):
        ax.legend(fontsize=8, frameon=False)
    ax.set_xlabel("size on disk, MB")
    ax.set_ylabel("perplexity per word — lower is better")
    ax.set_title("Held-out perplexity vs size")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.2, y=0.15)
    fig.tight_layout()
    fig.savefig(paths["size"])
    return paths


def _lm_model_card(results: dict, r: dict) -> str:
    """A causal LM's card: what it is for, its data, perplexity and autocomplete figures with intervals, speed."""
    p, m, d, t, hw = r.get("provenance") or {}, r["metrics"], results["data"], results["timing"], results["hardware"]
    lines = [f"# Model card: {r['name']}", "", f"{_describe(r)} · {_count(r['parameters'])} parameters · {_mb(r['bytes'])} MB on disk · `{r['path']}`", ""]
    lines += ["## Intended use", "",
              f"Text continuation and word autocomplete in the domain of its training text (`slm generate --model {r['path']} \"prompt\"`; "
              "`slmkit.autocomplete.LMSuggester` for word suggestions). It continues any prompt fluently-looking, including off-domain ones.", ""]
    lines += ["## Data", ""]
    lines.append(f"- Training data: `{p['train_data']}`" if p.get("train_data") else "- Training data: not recorded in the model's lineage.")
    for key, what in (("base", "Base model"), ("teacher", "Distilled from teacher"), ("derived_from", "Exported from")):
        if p.get(key):
            lines.append(f"- {what}: `{p[key]}`")
    if p.get("quantization"):
        lines.append("- Quantization: int8")
    lines.append(f"- Benchmarked on: `{d['path']}`, {m['n_examples']} texts, {m['n_words']} words")
    lines += ["", f"## Metrics (95% bootstrap intervals over texts, {results['bootstrap']['resamples']} resamples)", "",
              "| metric | value | 95% CI |", "|---|---:|---:|"]
    if m.get("perplexity_per_token") is not None:
        lines.append(f"| perplexity per token | {m['perplexity_per_token']:.3f} | {m['perplexity_per_token_ci95'][0]:.3f}–{m['perplexity_per_token_ci95'][1]:.3f} |")
    lines.append(f"| perplexity per word | {m['perplexity_per_word']:.3f} | {m['perplexity_per_word_ci95'][0]:.3f}–{m['perplexity_per_word_ci95'][1]:.3f} |")
    for key, name in (("next_word_accuracy", f"next-word accuracy@{m.get('k', 3)}"), ("keystroke_savings", "keystroke savings")):
        lines.append(f"| {name} ({m['sample_texts']} texts) | {100 * m[key]:.2f}% | {100 * m[f'{key}_ci95'][0]:.2f}–{100 * m[f'{key}_ci95'][1]:.2f} |")
    lines += ["", f"## Speed and footprint ({hw['cpu']}, {hw['cpus']} CPUs)", "",
              "| threads | ms/token p50 | p95 | p99 | time to first token ms | tokens/s |", "|---|---:|---:|---:|---:|---:|"]
    for speed in (r["speed"] or {}).values():
        lines.append(f"| {speed['threads']} | " + " | ".join(_spread(speed[k], _ms) for k in ("p50_ms", "p95_ms", "p99_ms", "ttft_ms")) + f" | {_spread(speed['throughput_per_s'], _rate)} |")
    lines += ["", f"Batch-1 greedy generation with the KV cache; medians over {t['rounds']} rounds. Peak RSS of a fresh process that loads it and "
              f"generates: {_num(r['peak_rss_mb'], '{:.0f}')} MB.", ""]
    lines += ["## Limitations", "",
              "- The intervals cover resampling of these held-out texts only: measure again on your users' text.",
              "- Prompts longer than the context window are cut from the left.",
              "- Timings are from one machine; compare ratios within one report, not absolute numbers across reports."]
    if r["precision"] == "int8" and not hw["int8_instructions"]:
        lines.append("- This CPU has no VNNI/AMX int8 instructions: int8 may be no faster than fp32 here.")
    return "\n".join(lines) + "\n"
