// slmkit's in-browser autocomplete, written as slmkit.js into every `slm export-web` site of a causal LM.
//
// It reproduces slmkit.runtime.LMGenerator's greedy completion step by step, so the ghost text equals the Python
// runtime's: tokenizers.js encodes the text from the site's tokenizer.json (with its own special tokens, as the
// Rust `tokenizers` library does; an empty text starts from the bos id), a prompt longer than the context window
// less room for the new tokens is cut from the left (slmkit.generate.truncate_prompt), then ONNX Runtime Web runs
// the exported graph: the prompt once with an empty past, then one token per step with the previous step's
// present key/values fed back as the past (the KV cache), picking the most likely token (the first on ties, as
// numpy's argmax) until `suggest_tokens` tokens or an end-of-sequence id. The ids are decoded as `tokenizers`'
// decode(ids, skip_special_tokens=True) does (no clean-up of spaces). One WebAssembly thread, nothing fetched
// from anywhere but this folder.
//
// Scripts use it as `await window.slmkit.complete("text", n)` -> {ids, text, first_token_ms, total_ms} and
// `await window.slmkit.encode(["text", ...])` -> the token ids of each text.

import * as ort from "./vendor/ort.wasm.bundle.min.js";
import { Tokenizer } from "./vendor/tokenizers.min.js";

const here = (path) => new URL(path, import.meta.url);

async function get(path, kind) {
  const response = await fetch(here(path));
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status} ${response.statusText}`);
  return kind === "json" ? response.json() : new Uint8Array(await response.arrayBuffer());
}

export class Completer {
  constructor(manifest, tokenizer, session) {
    this.manifest = manifest;
    this.tokenizer = tokenizer;
    this.session = session;
    const cache = manifest.cache;
    this.layers = cache.layers;
    this.kvShape = [1, cache.kv_heads, 0, cache.head_dim];
    this.pastNames = [];
    this.presentNames = [];
    for (let i = 0; i < cache.layers; i += 1) {
      for (const kind of ["key", "value"]) {
        this.pastNames.push(cache.past.replace("{layer}", i).replace("{kind}", kind));
        this.presentNames.push(cache.present.replace("{layer}", i).replace("{kind}", kind));
      }
    }
    this.eos = new Set(manifest.eos_ids);
    this.context = manifest.context_length;
    this.serial = 0; // a newer complete() call makes older ones stop early
    this.queue = Promise.resolve(); // one session.run at a time
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
    return new Completer(manifest, new Tokenizer(tokenizerJson, {}), session);
  }

  encodeOne(text) {
    const ids = this.tokenizer.encode(String(text)).ids;
    return ids.length || this.manifest.bos_id === null ? ids : [this.manifest.bos_id];
  }

  encode(texts) {
    return texts.map((t) => this.encodeOne(t));
  }

  decode(ids) {
    return this.tokenizer.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false });
  }

  // slmkit.generate.truncate_prompt: room for the prompt is the window less min(n, window / 2) new tokens
  fit(ids, n) {
    const room = Math.max(1, this.context - Math.min(n, Math.floor(this.context / 2)));
    return ids.length <= room ? ids : ids.slice(ids.length - room);
  }

  // One run of the graph: `ids` after `pastLength` cached tokens; the next token's logits and the presents.
  async run(ids, past, pastLength) {
    const total = pastLength + ids.length;
    const feeds = {
      input_ids: new ort.Tensor("int64", BigInt64Array.from(ids, (t) => BigInt(t)), [1, ids.length]),
      attention_mask: new ort.Tensor("int64", new BigInt64Array(total).fill(1n), [1, total]),
    };
    if (this.manifest.position_ids) {
      feeds.position_ids = new ort.Tensor("int64", BigInt64Array.from(ids, (_, k) => BigInt(pastLength + k)), [1, ids.length]);
    }
    this.pastNames.forEach((name, k) => (feeds[name] = past[k]));
    const results = await (this.queue = this.queue.catch(() => {}).then(() => this.session.run(feeds)));
    const logits = results.logits; // (1, ids.length, vocab)
    const vocab = logits.dims[2];
    const last = logits.data.subarray((ids.length - 1) * vocab, ids.length * vocab);
    let best = 0;
    for (let v = 1; v < vocab; v += 1) if (last[v] > last[best]) best = v;
    return { next: best, presents: this.presentNames.map((name) => results[name]) };
  }

  // The greedy continuation of `text`: up to n new tokens, before an end-of-sequence id.
  async complete(text, n = this.manifest.suggest_tokens) {
    const serial = (this.serial += 1);
    const started = performance.now();
    const prompt = this.fit(this.encodeOne(text), n);
    const budget = Math.min(n, this.context - prompt.length);
    const empty = new ort.Tensor("float32", new Float32Array(0), this.kvShape);
    const ids = [];
    let firstTokenMs = null;
    let past = this.pastNames.map(() => empty);
    let pastLength = 0;
    let feed = prompt;
    for (let i = 0; i < budget; i += 1) {
      const { next, presents } = await this.run(feed, past, pastLength);
      if (firstTokenMs === null) firstTokenMs = performance.now() - started;
      if (this.eos.has(next)) break;
      ids.push(next);
      if (serial !== this.serial) break; // the user typed on: this completion is stale
      pastLength += feed.length;
      past = presents;
      feed = [next];
    }
    return { ids, text: this.decode(ids), first_token_ms: firstTokenMs ?? 0, total_ms: performance.now() - started, stale: serial !== this.serial };
  }
}

// ------------------------------------------------------------------------------------------ the page

const ready = Completer.load();
window.slmkit = {
  ready,
  complete: async (text, n) => (await ready).complete(text, n),
  encode: async (texts) => (await ready).encode(texts),
};

const $ = (id) => document.getElementById(id);

async function start() {
  let completer;
  try {
    completer = await ready;
  } catch (error) {
    $("status").textContent = `could not load the model: ${error.message ?? error}`;
    $("status").className = "error";
    throw error;
  }
  const m = completer.manifest;
  $("status").textContent = `ready: ${m.precision}, ${m.cache.layers} layers, context ${m.context_length} tokens, ${m.suggest_tokens} suggested tokens; runs in this browser ` +
    `(ONNX Runtime Web ${m.vendored["onnxruntime-web"]}, WebAssembly, tokenizers.js ${m.vendored["@huggingface/tokenizers"]})`;
  $("status").className = "ready";
  const box = $("text");
  const ghost = $("ghost");
  box.disabled = false;
  let suggestion = { text: "", for: null };

  function render() { // the typed text (invisible, for the layout) and the suggestion after it, behind the box
    const typed = document.createElement("span");
    typed.className = "typed";
    typed.textContent = box.value;
    const rest = document.createElement("span");
    rest.className = "suggestion";
    const atEnd = box.selectionStart === box.value.length && box.selectionEnd === box.value.length;
    rest.textContent = suggestion.for === box.value && atEnd ? suggestion.text : "";
    ghost.replaceChildren(typed, rest);
    ghost.scrollTop = box.scrollTop;
  }

  let running = false;
  let again = false;
  async function update() { // live: one completion at a time, always of the latest text
    if (running) return void (again = true);
    running = true;
    do {
      again = false;
      const text = box.value;
      const found = text ? await completer.complete(text) : { ids: [], text: "", first_token_ms: 0, total_ms: 0, stale: false }; // nothing typed: no suggestion
      if (found.stale || text !== box.value) continue; // typed on meanwhile: again is set
      suggestion = { text: found.text, for: text };
      $("result").dataset.text = text; // which text the shown suggestion is of
      $("result").dataset.suggestion = found.text;
      $("latency").textContent = `first token ${found.first_token_ms.toFixed(1)} ms, ${found.ids.length} ${found.ids.length === 1 ? "token" : "tokens"} in ${found.total_ms.toFixed(1)} ms`;
      render();
    } while (again);
    running = false;
  }

  box.addEventListener("input", () => {
    render(); // the old suggestion disappears at once
    update();
  });
  box.addEventListener("keydown", (event) => {
    if (event.key === "Tab" && suggestion.for === box.value && suggestion.text && box.selectionStart === box.value.length) {
      event.preventDefault(); // Tab accepts the suggestion instead of leaving the box
      box.value += suggestion.text;
      box.setSelectionRange(box.value.length, box.value.length);
      box.dispatchEvent(new Event("input"));
    } else if (event.key === "Escape") {
      suggestion = { text: "", for: null };
      render();
    }
  });
  for (const name of ["scroll", "select", "click", "keyup"]) box.addEventListener(name, render);
  await update();
  box.focus();
}

start();
