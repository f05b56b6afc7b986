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
//
// An NER model's page (manifest task "ner") reproduces slmkit.tasks.ner.text_entities the same way: a text is
// split into words as slmkit.ner.split_words does (a run of letters, digits, underscores and combining marks,
// or one other non-space character), the words are tokenized one by one (as `tokenizers` does pretokenized
// input) and truncated to max_length, a word's tag is read at its first sub-token (softmax, argmax, an I-X that
// starts an entity read as B-X), and words are grouped into entities. `await window.slmkit.entities([...])` ->
// per text [{label, score, start, end, text}], offsets in Unicode code points (Python's str indices).

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
    if (post) { // how many special tokens go before a text's own (BERT: [CLS]), for the words' first pieces
      const marker = "\u0000slmkit-marker";
      this.specialBefore = Math.max(0, post([marker], null, true).tokens.indexOf(marker));
    } else {
      this.specialBefore = 0;
    }
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
    const body = this.pieces(text); // the text's own tokens, no special tokens yet
    return this.ids(body.slice(0, Math.max(0, this.maxLength - this.specialCount)));
  }

  pieces(text) {
    if (this.isolateAstralCJK) text = text.replace(ASTRAL_CJK, " $& ");
    return this.tokenizer.tokenize(text);
  }

  // The special tokens added around `kept`, then token -> id as tokenizers.js's own encode() maps it: added
  // tokens first, then the model's vocabulary, whose map also holds a trimmed vocabulary's aliases (several
  // pieces, one id)
  ids(kept) {
    const tokenizer = this.tokenizer;
    const tokens = tokenizer.post_processor ? tokenizer.post_processor(kept, null, true).tokens : kept;
    return tokens.map((t) => tokenizer.added_tokens_map.get(t)?.id ?? tokenizer.model.tokens_to_ids.get(t) ?? tokenizer.model.unk_token_id);
  }

  // NER: the words of a text as [start, end) code-point offsets, as slmkit.ner.split_words gives them.
  static splitWords(chars) {
    const wordish = (c) => /^[\p{L}\p{N}\p{M}_]$/u.test(c);
    const offsets = [];
    let i = 0;
    while (i < chars.length) {
      if (/^\s$/u.test(chars[i])) { i += 1; continue; }
      let j = i + 1;
      if (wordish(chars[i])) while (j < chars.length && wordish(chars[j])) j += 1;
      offsets.push([i, j]);
      i = j;
    }
    return offsets;
  }

  // NER: a text's features: its words, their token ids, and the position of each word's first piece (-1: none).
  encodeWords(text) {
    const chars = Array.from(text);
    const offsets = Classifier.splitWords(chars);
    const room = Math.max(0, this.maxLength - this.specialCount);
    const kept = [];
    const starts = offsets.map(([a, b]) => {
      const pieces = this.pieces(chars.slice(a, b).join(""));
      const start = pieces.length && kept.length < room ? this.specialBefore + kept.length : -1;
      kept.push(...pieces);
      return start;
    });
    return { chars, offsets, starts, ids: this.ids(kept.slice(0, room)) };
  }

  // NER: per text, its entities {label, score, start, end, text} (offsets in code points), as the Python runtime.
  async entities(texts) {
    const started = performance.now();
    const features = texts.map((t) => this.encodeWords(String(t)));
    const tokenized = performance.now();
    const present = features.map((_, i) => i).filter((i) => features[i].offsets.length);
    const order = present.sort((a, b) => features[a].ids.length - features[b].ids.length || a - b);
    const n = this.labels.length;
    const found = texts.map(() => []);
    for (let start = 0; start < order.length; start += this.batchSize) {
      const rows = order.slice(start, start + this.batchSize);
      const width = Math.max(...rows.map((r) => features[r].ids.length));
      const logits = await this.run(rows.map((r) => features[r].ids), width); // (batch, width, n_labels)
      rows.forEach((r, k) => (found[r] = this.decode(features[r], (pos) => logits.slice((k * width + pos) * n, (k * width + pos + 1) * n))));
    }
    this.timing = { tokenize_ms: tokenized - started, model_ms: performance.now() - tokenized };
    return found;
  }

  // Word tags read at first pieces, made valid BIO, grouped into entities scored by their words' mean probability.
  decode(feature, tokenLogits) {
    const tags = [];
    const probs = [];
    let prev = "O";
    for (const start of feature.starts) {
      let tag = this.labels[0];
      let p = 1;
      if (start >= 0) {
        const row = Array.from(tokenLogits(start));
        const top = Math.max(...row);
        const exp = row.map((v) => Math.exp(v - top));
        const sum = exp.reduce((a, b) => a + b, 0);
        const best = row.indexOf(top);
        tag = this.labels[best];
        p = exp[best] / sum;
      }
      if (tag.startsWith("I-") && prev.slice(2) !== tag.slice(2)) tag = "B-" + tag.slice(2);
      tags.push(tag);
      probs.push(p);
      prev = tag;
    }
    const found = [];
    let current = null; // [label, first word, last word]
    [...tags, "O"].forEach((tag, i) => {
      if (current && !(tag.startsWith("I-") && tag.slice(2) === current[0])) {
        const [label, a, b] = current;
        const [start, end] = [feature.offsets[a][0], feature.offsets[b][1]];
        const score = probs.slice(a, b + 1).reduce((x, y) => x + y, 0) / (b - a + 1);
        found.push({ label, score, start, end, text: feature.chars.slice(start, end).join("") });
        current = null;
      }
      if ((tag.startsWith("B-") || tag.startsWith("I-")) && !current) current = [tag.slice(2), i, i];
      else if (current) current[2] = i;
    });
    return found;
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
  entities: async (texts) => (await ready).entities(texts),
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

// NER: the text with each entity highlighted (a <mark> titled with its label and score).
function showEntities(text, found, ms, timing) {
  $("result").dataset.text = text;
  const chars = Array.from(text);
  const parts = [];
  let at = 0;
  for (const e of found) {
    parts.push(chars.slice(at, e.start).join(""));
    const mark = document.createElement("mark");
    mark.dataset.label = e.label;
    mark.title = `${e.label} ${(100 * e.score).toFixed(1)}%`;
    mark.append(e.text);
    const tag = document.createElement("small");
    tag.textContent = e.label;
    mark.append(tag);
    parts.push(mark);
    at = e.end;
  }
  parts.push(chars.slice(at).join(""));
  $("entities").replaceChildren(...parts);
  $("entities").hidden = false;
  $("label").textContent = `${found.length} ${found.length === 1 ? "entity" : "entities"}`;
  $("latency").textContent = `${ms.toFixed(1)} ms (tokenize ${timing.tokenize_ms.toFixed(1)} ms, model ${timing.model_ms.toFixed(1)} ms)`;
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
  const ner = m.task === "ner";
  const kinds = ner ? new Set(m.labels.filter((l) => l !== "O").map((l) => l.slice(2))).size : 0;
  $("status").textContent = `ready: ${ner ? `${kinds} entity types` : `${m.labels.length} labels`}, ${m.precision}, max ${m.max_length} tokens; runs in this browser ` +
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
      if (ner) {
        const text = box.value;
        const [found] = await classifier.entities([text]);
        showEntities(text, found, performance.now() - started, classifier.timing);
      } else {
        const [prediction] = await classifier.classify([box.value]);
        show(prediction, performance.now() - started, classifier.timing);
      }
    } while (again);
    running = false;
  }
  box.addEventListener("input", update);
  await update();
  box.focus();
}

start();
