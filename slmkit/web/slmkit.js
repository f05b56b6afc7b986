// slmkit's in-browser classifier, written into every `slm export-web` site beside index.html.
//
// It reproduces slmkit.runtime.Predictor step by step, so the page's predictions equal the Python runtime's
// (and so the server's): tokenizers.js reads the bundle's tokenizer.json alone (as the Rust `tokenizers`
// library does, no tokenizer_config.json), each text is truncated to the manifest's max_length the way
// `tokenizers` truncates (the text's own tokens are cut, then the special tokens added), texts are sorted by
// length and run in batches of `batch_size` padded with `pad_id` to their own longest member, and the logits
// go through a softmax. ONNX Runtime Web runs the model on the CPU in WebAssembly, one thread, so the page
// needs no cross-origin isolation. Nothing is fetched from anywhere but this folder.
//
// Scripts use it as `await window.slmkit.classify(["text", ...])` -> [{text, label, score, scores}], and
// `await window.slmkit.encode([...])` -> the token ids of each text (what the model is fed).

import * as ort from "./vendor/ort.wasm.bundle.min.js";
import { Tokenizer } from "./vendor/tokenizers.min.js";

const here = (path) => new URL(path, import.meta.url);
// CJK ideographs outside the Basic Multilingual Plane (Extensions B-F, Compatibility Supplement), which BERT's
// normalizer surrounds with spaces. tokenizers.js 0.2.0 looks for them one UTF-16 code unit at a time and so
// never finds these (surrogate pairs); isolating them first gives the Rust library's ids.
const ASTRAL_CJK = /[\u{20000}-\u{2A6DF}\u{2A700}-\u{2B73F}\u{2B740}-\u{2B81F}\u{2B820}-\u{2CEAF}\u{2F800}-\u{2FA1F}]/gu;

async function get(path, kind) {
  const response = await fetch(here(path));
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status} ${response.statusText}`);
  return kind === "json" ? response.json() : new Uint8Array(await response.arrayBuffer());
}

export class Classifier {
  constructor(manifest, tokenizer, session) {
    this.manifest = manifest;
    this.labels = manifest.labels;
    this.inputs = manifest.inputs;
    this.output = manifest.output;
    this.maxLength = manifest.max_length;
    this.padId = BigInt(manifest.pad_id);
    this.batchSize = manifest.batch_size;
    this.tokenizer = tokenizer;
    this.session = session;
    const post = tokenizer.post_processor;
    this.specialCount = post ? post([], null, true).tokens.length : 0; // [CLS] and [SEP] for BERT
    const normalizer = tokenizer.normalizer?.config;
    this.isolateAstralCJK = normalizer?.type === "BertNormalizer" && Boolean(normalizer.handle_chinese_chars);
    this.timing = { tokenize_ms: 0, model_ms: 0 }; // of the last classify() call
  }

  static async load() {
    const [manifest, tokenizerJson, wasm, model] = await Promise.all([
      get("model/manifest.json", "json"),
      get("model/tokenizer.json", "json"),
      get("vendor/ort-wasm-simd-threaded.wasm"),
      get("model/model.onnx"),
    ]);
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.proxy = false;
    ort.env.wasm.wasmBinary = wasm; // handed over, not fetched by ORT: any server's MIME type for .wasm works
    const session = await ort.InferenceSession.create(model, { executionProviders: ["wasm"] });
    return new Classifier(manifest, new Tokenizer(tokenizerJson, {}), session);
  }

  // The token ids of one text, as `tokenizers` with truncation at max_length and no padding gives them.
  encodeOne(text) {
    const tokenizer = this.tokenizer;
    if (this.isolateAstralCJK) text = text.replace(ASTRAL_CJK, " $& ");
    const body = tokenizer.tokenize(text); // the text's own tokens, no special tokens yet
    const kept = body.slice(0, Math.max(0, this.maxLength - this.specialCount));
    const tokens = tokenizer.post_processor ? tokenizer.post_processor(kept, null, true).tokens : kept;
    // token -> id as tokenizers.js's own encode() maps it: added tokens first, then the model's vocabulary,
    // whose map also holds a trimmed vocabulary's aliases (several pieces, one id)
    return tokens.map((t) => tokenizer.added_tokens_map.get(t)?.id ?? tokenizer.model.tokens_to_ids.get(t) ?? tokenizer.model.unk_token_id);
  }

  encode(texts) {
    return texts.map((text) => this.encodeOne(String(text)));
  }

  // Raw logits, one Float32Array per text, in input order.
  async logits(texts) {
    const started = performance.now();
    const ids = this.encode(texts);
    const tokenized = performance.now();
    const order = ids.map((_, i) => i).sort((a, b) => ids[a].length - ids[b].length || a - b); // stable, as numpy's
    const out = new Array(ids.length);
    for (let start = 0; start < order.length; start += this.batchSize) {
      const rows = order.slice(start, start + this.batchSize);
      const width = Math.max(...rows.map((r) => ids[r].length));
      const logits = await this.run(rows.map((r) => ids[r]), width);
      const n = this.labels.length;
      rows.forEach((r, k) => (out[r] = logits.slice(k * n, (k + 1) * n)));
    }
    this.timing = { tokenize_ms: tokenized - started, model_ms: performance.now() - tokenized };
    return out;
  }

  // One batch padded to `width`: input_ids, attention_mask and (if the model takes them) token_type_ids.
  async run(batch, width) {
    const size = batch.length * width;
    const inputIds = new BigInt64Array(size).fill(this.padId);
    const mask = new BigInt64Array(size);
    batch.forEach((seq, row) => seq.forEach((id, col) => {
      inputIds[row * width + col] = BigInt(id);
      mask[row * width + col] = 1n;
    }));
    const dims = [batch.length, width];
    const arrays = { input_ids: inputIds, attention_mask: mask, token_type_ids: new BigInt64Array(size) };
    const feeds = Object.fromEntries(this.inputs.map((name) => [name, new ort.Tensor("int64", arrays[name], dims)]));
    const results = await this.session.run(feeds);
    return results[this.output].data;
  }

  async classify(texts) {
    const rows = await this.logits(texts);
    return rows.map((row, i) => {
      const top = Math.max(...row);
      const exp = Array.from(row, (v) => Math.exp(v - top));
      const sum = exp.reduce((a, b) => a + b, 0);
      const probs = exp.map((v) => v / sum);
      const best = probs.indexOf(Math.max(...probs));
      return { text: texts[i], label: this.labels[best], score: probs[best], scores: Object.fromEntries(this.labels.map((l, j) => [l, probs[j]])) };
    });
  }
}

// ------------------------------------------------------------------------------------------ the page

const ready = Classifier.load();
window.slmkit = {
  ready,
  classify: async (texts) => (await ready).classify(texts),
  encode: async (texts) => (await ready).encode(texts),
};

const $ = (id) => document.getElementById(id);

function show(prediction, ms, timing) {
  $("result").dataset.text = prediction.text; // which text the shown prediction is of
  $("label").textContent = prediction.label;
  $("score").textContent = `${(100 * prediction.score).toFixed(1)}%`;
  $("latency").textContent = `${ms.toFixed(1)} ms (tokenize ${timing.tokenize_ms.toFixed(1)} ms, model ${timing.model_ms.toFixed(1)} ms)`;
  const ranked = Object.entries(prediction.scores).sort((a, b) => b[1] - a[1]);
  $("scores").replaceChildren(...ranked.map(([label, p]) => {
    const row = document.createElement("tr");
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * p).toFixed(1)}%`;
    row.append(...[label, bar, `${(100 * p).toFixed(1)}%`].map((content) => {
      const cell = document.createElement("td");
      cell.append(content);
      return cell;
    }));
    return row;
  }));
}

async function start() {
  let classifier;
  try {
    classifier = await ready;
  } catch (error) {
    $("status").textContent = `could not load the model: ${error.message ?? error}`;
    $("status").className = "error";
    throw error;
  }
  const m = classifier.manifest;
  $("status").textContent = `ready: ${m.labels.length} labels, ${m.precision}, max ${m.max_length} tokens; runs in this browser ` +
    `(ONNX Runtime Web ${m.vendored["onnxruntime-web"]}, WebAssembly, tokenizers.js ${m.vendored["@huggingface/tokenizers"]})`;
  $("status").className = "ready";
  const box = $("text");
  box.disabled = false;
  let running = false;
  let again = false;
  async function update() { // live: one prediction at a time, always of the latest text
    if (running) return void (again = true);
    running = true;
    do {
      again = false;
      const started = performance.now();
      const [prediction] = await classifier.classify([box.value]);
      show(prediction, performance.now() - started, classifier.timing);
    } while (again);
    running = false;
  }
  box.addEventListener("input", update);
  await update();
  box.focus();
}

start();
