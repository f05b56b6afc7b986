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
//
// A QA model's page (task "qa") reproduces slmkit.qa.answer_pairs: the question (cut to 64 tokens) is paired with
// the context, a context longer than the window is read in windows sharing `stride` tokens, the best span
// (start <= end, at most 30 tokens, ranked by start + end logit over all windows) becomes a character span of
// the context. tokenizers.js gives no offsets, so a context token's characters come from the word it was
// tokenized from (the context split as BERT's pre-tokenizer splits it: whitespace, punctuation, CJK characters)
// and the lengths of its pieces. `await window.slmkit.answer([[question, context], ...])` -> [{answer, score,
// start, end}], offsets in code points.

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

  // One batch padded to `width`: input_ids, attention_mask and (if the model takes them) token_type_ids (zeros,
  // or `types`: one list per row, QA's question/context segments). Returns the first output, or all of them.
  async run(batch, width, types = null, all = false) {
    const size = batch.length * width;
    const inputIds = new BigInt64Array(size).fill(this.padId);
    const mask = new BigInt64Array(size);
    const typeIds = new BigInt64Array(size);
    batch.forEach((seq, row) => seq.forEach((id, col) => {
      inputIds[row * width + col] = BigInt(id);
      mask[row * width + col] = 1n;
      if (types) typeIds[row * width + col] = BigInt(types[row][col]);
    }));
    const dims = [batch.length, width];
    const arrays = { input_ids: inputIds, attention_mask: mask, token_type_ids: typeIds };
    const feeds = Object.fromEntries(this.inputs.map((name) => [name, new ort.Tensor("int64", arrays[name], dims)]));
    const results = await this.session.run(feeds);
    return all ? results : results[this.output].data;
  }

  // QA: the context's tokens with [start, end) code-point offsets (see the header).
  contextTokens(chars) {
    const punct = (c) => /^[\p{P}!-\/:-@\[-`{-~]$/u.test(c);
    const cjk = (c) => /^[\u{4E00}-\u{9FFF}\u{3400}-\u{4DBF}\u{20000}-\u{2A6DF}\u{2A700}-\u{2B73F}\u{2B740}-\u{2B81F}\u{2B820}-\u{2CEAF}\u{F900}-\u{FAFF}\u{2F800}-\u{2FA1F}]$/u.test(c);
    const words = [];
    let i = 0;
    while (i < chars.length) {
      if (/^\s$/u.test(chars[i])) { i += 1; continue; }
      let j = i + 1;
      if (!punct(chars[i]) && !cjk(chars[i])) while (j < chars.length && !/^\s$/u.test(chars[j]) && !punct(chars[j]) && !cjk(chars[j])) j += 1;
      words.push([i, j]);
      i = j;
    }
    const tokens = [];
    const offsets = [];
    for (const [a, b] of words) {
      const pieces = this.pieces(chars.slice(a, b).join(""));
      const lengths = pieces.map((p) => Array.from(p.startsWith("##") ? p.slice(2) : p).length);
      const exact = !pieces.includes(this.tokenizer.model.unk_token) && lengths.reduce((x, y) => x + y, 0) === b - a;
      let at = a;
      pieces.forEach((p, k) => {
        tokens.push(p);
        offsets.push(exact ? [at, at + lengths[k]] : [a, b]);
        at += lengths[k];
      });
    }
    return { tokens, offsets };
  }

  // QA: the windows (features) of one question/context pair, as slmkit.qa.encode_windows makes them.
  encodePair(question, context, stride) {
    const post = this.tokenizer.post_processor;
    const marker = ["\u0000slmkit-a", "\u0000slmkit-b"];
    const layout = post(marker.slice(0, 1), marker.slice(1), true).tokens;
    const beforeB = layout.indexOf(marker[1]);
    const pairSpecials = layout.length - 2;
    const q = this.pieces(question).slice(0, 64); // MAX_QUESTION_TOKENS
    const chars = Array.from(context);
    const ctx = this.contextTokens(chars);
    const room = this.maxLength - pairSpecials - q.length;
    if (room < 1 || !ctx.tokens.length) throw new Error("the question fills the model's window, or the context has no tokens");
    const starts = [0];
    if (ctx.tokens.length > room) {
      if (!(stride > 0 && stride < room)) throw new Error("the context is longer than the model's window, which this model does not slide");
      while (starts.at(-1) + room < ctx.tokens.length) starts.push(starts.at(-1) + room - stride);
    }
    return starts.map((start) => {
      const window = ctx.tokens.slice(start, start + room);
      const contextStart = beforeB - 1 + q.length;
      const ids = this.ids2(q, window);
      return { ids, types: ids.map((_, k) => (k < contextStart ? 0 : 1)), contextStart, offsets: ctx.offsets.slice(start, start + window.length), chars };
    });
  }

  ids2(a, b) {
    const tokenizer = this.tokenizer;
    const tokens = tokenizer.post_processor(a, b, true).tokens;
    return tokens.map((t) => tokenizer.added_tokens_map.get(t)?.id ?? tokenizer.model.tokens_to_ids.get(t) ?? tokenizer.model.unk_token_id);
  }

  // QA: the best answer {answer, score, start, end} of each [question, context] pair.
  async answer(pairs) {
    const started = performance.now();
    const stride = this.manifest.stride ?? 128;
    const perPair = pairs.map(([q, c]) => this.encodePair(String(q), String(c), stride));
    const features = perPair.flat();
    const owner = perPair.flatMap((windows, i) => windows.map(() => i));
    const tokenized = performance.now();
    const order = features.map((_, i) => i).sort((a, b) => features[a].ids.length - features[b].ids.length || a - b);
    const logits = new Array(features.length);
    const [startName, endName] = this.manifest.outputs;
    for (let at = 0; at < order.length; at += this.batchSize) {
      const rows = order.slice(at, at + this.batchSize);
      const width = Math.max(...rows.map((r) => features[r].ids.length));
      const out = await this.run(rows.map((r) => features[r].ids), width, rows.map((r) => features[r].types), true);
      rows.forEach((r, k) => (logits[r] = [out[startName].data.slice(k * width, (k + 1) * width), out[endName].data.slice(k * width, (k + 1) * width)]));
    }
    const best = pairs.map(() => null);
    features.forEach((f, r) => {
      const n = f.offsets.length;
      const s = Array.from(logits[r][0].slice(f.contextStart, f.contextStart + n));
      const e = Array.from(logits[r][1].slice(f.contextStart, f.contextStart + n));
      const lse = (x) => { const top = Math.max(...x); return top + Math.log(x.reduce((acc, v) => acc + Math.exp(v - top), 0)); };
      const logZ = lse(s) + lse(e);
      for (let i = 0; i < n; i += 1) {
        for (let j = i; j < Math.min(n, i + 30); j += 1) { // MAX_ANSWER_TOKENS
          const logit = s[i] + e[j];
          const i0 = owner[r];
          if (!best[i0] || logit > best[i0].logit) {
            const [start, end] = [f.offsets[i][0], f.offsets[j][1]];
            best[i0] = { answer: f.chars.slice(start, end).join(""), score: Math.exp(logit - logZ), start, end, logit };
          }
        }
      }
    });
    this.timing = { tokenize_ms: tokenized - started, model_ms: performance.now() - tokenized };
    return best.map(({ logit, ...answer }) => answer);
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
  answer: async (pairs) => (await ready).answer(pairs),
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

// QA: the answer, its probability, and the context with the answer highlighted.
function showAnswer(question, context, found, ms, timing) {
  $("result").dataset.text = `${question}\n${context}`;
  $("label").textContent = found.answer;
  $("score").textContent = `${(100 * found.score).toFixed(1)}%`;
  const chars = Array.from(context);
  const mark = document.createElement("mark");
  mark.append(chars.slice(found.start, found.end).join(""));
  $("entities").replaceChildren(chars.slice(0, found.start).join(""), mark, chars.slice(found.end).join(""));
  $("entities").hidden = false;
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
  const qa = m.task === "qa";
  const kinds = ner ? new Set(m.labels.filter((l) => l !== "O").map((l) => l.slice(2))).size : 0;
  $("status").textContent = `ready: ${qa ? "question answering" : ner ? `${kinds} entity types` : `${m.labels.length} labels`}, ${m.precision}, max ${m.max_length} tokens; runs in this browser ` +
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
      if (qa) {
        const [question, context] = [$("question").value, box.value];
        if (question.trim() && context.trim()) {
          const [found] = await classifier.answer([[question, context]]);
          showAnswer(question, context, found, performance.now() - started, classifier.timing);
        }
      } else if (ner) {
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
  if (qa) {
    $("question").hidden = false;
    $("question").disabled = false;
    $("question").addEventListener("input", update);
    box.placeholder = "Paste the text that holds the answer…";
  }
  await update();
  box.focus();
}

start();
