// STAR in the browser: downloads and verifies a site written by `star-deploy web`, then runs the scale loop
// with onnxruntime-web. `const star = await StarGenerator.load(siteUrl)`, then
// `await star.generate({prompt, seed, cfg, top_k, top_p, onScale})` -> {tokens, image, seconds}.

import { sampleScale } from "./sampler.mjs";
import { ClipTokenizer } from "./tokenizer.mjs";

const ARRAYS = {
  float32: Float32Array,
  float16: Uint16Array,
  float64: Float64Array,
  int64: BigInt64Array,
  int32: Int32Array,
};
const MAX_CFG = 100;
const TEXT = "text";
const PAST = "past";
const SLOT = "slot";

/** A problem with the site or the request; its message says what to do. */
export class SiteError extends Error {}

function arrayType(dtype) {
  const type = ARRAYS[dtype];
  if (!type) throw new SiteError(`the site uses tensor type ${dtype}, which this page cannot handle`);
  return type;
}

/** `data` viewed as `like`'s type: float16 outputs may arrive as Float16Array, the cache holds their bits. */
function rawData(data, like) {
  if (data.constructor === like.constructor) return data;
  return new like.constructor(data.buffer, data.byteOffset, data.byteLength / like.BYTES_PER_ELEMENT);
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function sha256(bytes) {
  if (!globalThis.crypto || !crypto.subtle) {
    throw new SiteError("this page verifies its files with WebCrypto, which needs https:// or http://localhost");
  }
  return hex(await crypto.subtle.digest("SHA-256", bytes));
}

/** The contents of gzip `bytes`, `size` bytes long, read chunk by chunk into one buffer. */
async function gunzip(bytes, size) {
  const source = new ReadableStream({
    start(controller) {
      controller.enqueue(bytes);
      controller.close();
    },
  });
  const reader = source.pipeThrough(new DecompressionStream("gzip")).getReader();
  const out = new Uint8Array(size);
  let at = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (at + value.length > size) throw new Error("longer than site.json says");
    out.set(value, at);
    at += value.length;
  }
  if (at !== size) throw new Error("shorter than site.json says");
  return out;
}

/** The site's files, each downloaded once and checked against the sha256 in site.json. */
class VerifiedFiles {
  constructor(base, manifest) {
    this.base = base;
    this.files = manifest.files;
  }

  async get(path) {
    const entry = this.files[path];
    if (!entry) throw new SiteError(`${path} is not listed in site.json; rebuild the site with star-deploy web`);
    let response;
    try {
      response = await fetch(new URL(path, this.base));
    } catch (err) {
      throw new SiteError(`download of ${path} failed (${err.message}); check the connection and reload`);
    }
    if (!response.ok) throw new SiteError(`download of ${path} failed: HTTP ${response.status}; reload the page`);
    let bytes;
    try {
      bytes = new Uint8Array(await response.arrayBuffer());
    } catch (err) {
      throw new SiteError(`download of ${path} broke off (${err.message}); check the connection and reload`);
    }
    // A .gz file arrives as stored, or decompressed by a host that sends it with Content-Encoding: gzip.
    const gz = path.endsWith(".gz");
    const compressed = gz && bytes[0] === 0x1f && bytes[1] === 0x8b;
    const expected = gz && !compressed ? entry.content_sha256 : entry.sha256;
    const digest = await sha256(bytes);
    if (digest !== expected) {
      throw new SiteError(
        `${path} does not match site.json (sha256 ${digest.slice(0, 12)}…, expected ${expected.slice(0, 12)}…): ` +
          "the file was changed or damaged; refusing to run. Rebuild or re-upload the site.",
      );
    }
    if (!compressed) return bytes;
    try {
      return await gunzip(bytes, entry.content_size);
    } catch (err) {
      throw new SiteError(`${path} could not be decompressed (${err.message}); rebuild the site`);
    }
  }
}

function siteBase(siteUrl) {
  const here = typeof location !== "undefined" ? location.href : import.meta.url;
  const url = new URL(siteUrl ?? new URL(".", import.meta.url).href, here);
  if (!url.pathname.endsWith("/")) url.pathname += "/";
  return url;
}

async function hasWebGpu() {
  if (typeof navigator === "undefined" || !navigator.gpu) return false;
  try {
    return (await navigator.gpu.requestAdapter()) !== null;
  } catch {
    return false;
  }
}

async function chooseProvider(requested, builds) {
  if (requested) {
    if (!Object.values(builds).some((b) => b.providers.includes(requested))) {
      throw new SiteError(`execution provider ${requested} is not in this site (it has ${Object.keys(builds).join(", ")})`);
    }
    return requested;
  }
  return builds.webgpu && (await hasWebGpu()) ? "webgpu" : "wasm";
}

async function loadRuntime(files, base, manifest, provider) {
  if (typeof WebAssembly !== "object") {
    throw new SiteError("this browser has no WebAssembly; use a current Chrome, Edge, Firefox or Safari");
  }
  const builds = manifest.runtime.builds;
  const build = provider === "wasm" && builds.wasm ? builds.wasm : Object.values(builds).find((b) => b.providers.includes(provider));
  const [binary] = await Promise.all([files.get(build.binary), files.get(build.module), files.get(build.glue)]);
  const ort = await import(new URL(build.module, base).href);
  ort.env.wasm.wasmPaths = new URL(build.glue.slice(0, build.glue.lastIndexOf("/") + 1), base).href;
  ort.env.wasm.wasmBinary = binary;
  const isolated = typeof crossOriginIsolated !== "undefined" && crossOriginIsolated;
  const cores = typeof navigator !== "undefined" ? navigator.hardwareConcurrency || 1 : 1;
  ort.env.wasm.numThreads = isolated ? Math.min(cores, 8) : 1;
  ort.env.logLevel = "error";
  // Inference in a worker: the page stays responsive (previews are drawn) while a scale computes.
  ort.env.wasm.proxy = provider === "wasm" && typeof Worker !== "undefined";
  return { ort, threads: ort.env.wasm.numThreads };
}

function scaleDims(model, batch, scale) {
  const sides = model.patch_nums;
  const side = sides[scale];
  const next = scale + 1 < sides.length ? sides[scale + 1] : 1;
  let past = 0;
  for (let k = 0; k < scale; k++) past += sides[k] * sides[k];
  return {
    batch,
    rows: 2 * batch,
    tokens: side * side,
    past,
    side,
    next_tokens: next * next,
    next_side: next,
  };
}

function concrete(shape, dims) {
  return shape.map((d) => (typeof d === "number" ? d : dims[d]));
}

function size(shape) {
  return shape.reduce((a, b) => a * b, 1);
}

function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** (1, 3, H, W) floats in [0, 1] -> RGBA pixels, rounded as star_deploy.images.to_uint8 rounds. */
export function toPixels(data, height, width) {
  const pixels = new Uint8ClampedArray(height * width * 4);
  const plane = height * width;
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) {
      const v = Math.min(Math.max(data[c * plane + i], 0), 1);
      pixels[i * 4 + c] = roundHalfEven(Math.fround(v * 255));
    }
    pixels[i * 4 + 3] = 255;
  }
  return typeof ImageData !== "undefined" ? new ImageData(pixels, width, height) : { data: pixels, width, height };
}

function checkSettings(s, vocab) {
  const seed = BigInt(s.seed);
  if (seed < 0n || seed >= 1n << 63n) throw new SiteError(`seed must be in [0, 2**63), got ${s.seed}`);
  if (!Number.isFinite(s.cfg) || s.cfg < 0 || s.cfg > MAX_CFG) throw new SiteError(`cfg must be in [0, ${MAX_CFG}], got ${s.cfg}`);
  if (!Number.isInteger(s.top_k) || s.top_k < 0) throw new SiteError(`top_k must be an integer >= 0, got ${s.top_k}`);
  if (!(s.top_p > 0 && s.top_p <= 1)) throw new SiteError(`top_p must be in (0, 1], got ${s.top_p}`);
  return { seed, cfg: s.cfg, top_k: Math.min(s.top_k, vocab), top_p: s.top_p };
}

/** The KV cache: one buffer per cache tensor of the step graph, filled scale by scale. */
class KVCache {
  constructor(spec, model, rows) {
    this.buffers = new Map();
    for (const t of spec.outputs.filter((t) => t.role === SLOT)) {
      const rowSize = size(concrete(t.shape.slice(1), { rows }));
      const Type = arrayType(t.dtype);
      this.buffers.set(`${t.layer}:${t.is_value}`, { data: new Type(model.total_tokens * rowSize), rowSize, dtype: t.dtype });
    }
    this.length = 0;
  }

  buffer(t) {
    return this.buffers.get(`${t.layer}:${t.is_value}`);
  }
}

/**
 * One session per graph, each graph downloaded and verified while the previous session is created: at most
 * two graphs' bytes are held at once, which is what lets a site with large graphs load in a browser tab.
 */
async function createSessions(ort, files, manifest, provider, report) {
  const names = Object.keys(manifest.graphs);
  const fetchGraph = (name) => {
    const g = manifest.graphs[name];
    return Promise.all([files.get(g.file), g.data ? files.get(g.data) : null]);
  };
  const sessions = {};
  let next = fetchGraph(names[0]);
  for (const [i, name] of names.entries()) {
    const [model, data] = await next;
    next = i + 1 < names.length ? fetchGraph(names[i + 1]) : null;
    next?.catch(() => {});
    report(`loading ${name} (${i + 1} of ${names.length})`);
    const options = { executionProviders: [provider], graphOptimizationLevel: "all" };
    if (data) options.externalData = [{ path: manifest.graphs[name].data.split("/").pop().replace(/\.gz$/, ""), data }];
    sessions[name] = await ort.InferenceSession.create(model, options);
  }
  return sessions;
}

/** A loaded site: sessions of the five graphs, the tokenizer and the per-scale tables. */
export class StarGenerator {
  constructor(parts) {
    Object.assign(this, parts);
  }

  /** Download `siteUrl` (default: this module's folder), verify every file, create the sessions. */
  static async load(siteUrl, { executionProvider, onProgress } = {}) {
    const base = siteBase(siteUrl);
    const report = onProgress ?? (() => {});
    let response;
    try {
      response = await fetch(new URL("site.json", base));
    } catch (err) {
      throw new SiteError(`download of site.json failed (${err.message}); check the connection and reload`);
    }
    if (!response.ok) throw new SiteError(`download of site.json failed: HTTP ${response.status}`);
    const manifest = await response.json();
    const files = new VerifiedFiles(base, manifest);
    const provider = await chooseProvider(executionProvider, manifest.runtime.builds);
    report(`downloading and verifying (${provider})`);
    const [tokenizerBytes, tableBytes, { ort, threads }] = await Promise.all([
      files.get(manifest.tokenizer),
      files.get(manifest.tables.file),
      loadRuntime(files, base, manifest, provider),
    ]);
    const sessions = await createSessions(ort, files, manifest, provider, report);
    const tokenizer = new ClipTokenizer(JSON.parse(new TextDecoder().decode(tokenizerBytes)));
    return new StarGenerator({ ort, manifest, sessions, tokenizer, tables: tableBytes, provider, threads });
  }

  tensor(dtype, data, shape) {
    return new this.ort.Tensor(dtype, data, shape);
  }

  table(scale, name) {
    const t = this.manifest.tables.scales[scale][name];
    const Type = arrayType(t.dtype);
    const bytes = this.tables.slice(t.offset, t.offset + size(t.shape) * Type.BYTES_PER_ELEMENT);
    return this.tensor(t.dtype, new Type(bytes.buffer), t.shape);
  }

  /** Run `graph` on copies of `feeds`: the worker takes over (detaches) the buffers it is given. */
  async run(graph, feeds) {
    const own = {};
    for (const [name, t] of Object.entries(feeds)) own[name] = this.tensor(t.type, t.data.slice(), t.dims);
    return this.sessions[graph].run(own);
  }

  /** The first `count` rows of an output tensor (the conditional rows of a CFG batch). */
  rows(tensor, count) {
    const per = size(tensor.dims.slice(1));
    return this.tensor(tensor.type, tensor.data.slice(0, count * per), [count, ...tensor.dims.slice(1)]);
  }

  async encodeText(prompt) {
    const loop = this.manifest.loop;
    const rows = [this.tokenizer.encode(prompt), this.tokenizer.encode("")];
    const length = rows[0].ids.length;
    const ids = new BigInt64Array(2 * length);
    const mask = new BigInt64Array(2 * length);
    rows.forEach((r, i) => {
      ids.set(r.ids, i * length);
      mask.set(r.mask, i * length);
    });
    const te = loop.text_encoder;
    const encoded = await this.run("text_encoder", {
      [te.ids]: this.tensor("int64", ids, [2, length]),
      [te.mask]: this.tensor("int64", mask, [2, length]),
    });
    const tc = loop.text_context;
    const context = await this.run("text_context", {
      [tc.hidden]: this.rows(encoded[te.hidden], 1),
      [tc.mask]: this.tensor("int64", mask.slice(0, length), [1, length]),
      [tc.pooled]: encoded[te.pooled],
    });
    return context;
  }

  stepFeeds(scale, x, text, cache, dims) {
    const spec = this.manifest.graphs.transformer_step;
    const feeds = { [this.manifest.loop.transformer_step.x]: x };
    for (const t of spec.inputs) {
      if (t.role === TEXT) feeds[t.name] = text[t.name];
      else if (t.role === PAST) {
        const buf = cache.buffer(t);
        feeds[t.name] = this.tensor(buf.dtype, buf.data.subarray(0, cache.length * buf.rowSize), concrete(t.shape, dims));
      } else if (t.name in this.manifest.tables.scales[scale]) feeds[t.name] = this.table(scale, t.name);
    }
    return feeds;
  }

  async decode(fHat) {
    const loop = this.manifest.loop.vq_decoder;
    const out = await this.run("vq_decoder", { [loop.f_hat]: fHat });
    const [, , height, width] = out[loop.image].dims;
    return toPixels(out[loop.image].data, height, width);
  }

  /** One image: {tokens (one Int32Array per scale), image (ImageData), seconds}. */
  async generate({ prompt = "", seed = 0, cfg, top_k, top_p, onScale } = {}) {
    const model = this.manifest.model;
    const defaults = this.manifest.sampling;
    const settings = checkSettings(
      { seed, cfg: cfg ?? defaults.cfg, top_k: top_k ?? defaults.top_k, top_p: top_p ?? defaults.top_p },
      model.vocab_size,
    );
    const start = performance.now();
    const loop = this.manifest.loop;
    const context = await this.encodeText(prompt);
    const text = {};
    for (const t of this.manifest.graphs.text_context.outputs) if (t.role === TEXT) text[t.name] = context[t.name];
    const cache = new KVCache(this.manifest.graphs.transformer_step, model, 2);
    const update = this.manifest.graphs.scale_update;
    const fHatSpec = update.inputs.find((t) => t.name === loop.scale_update.f_hat);
    let fHat = this.tensor(fHatSpec.dtype, new (arrayType(fHatSpec.dtype))(size(concrete(fHatSpec.shape, { batch: 1 }))), concrete(fHatSpec.shape, { batch: 1 }));
    let x = context[loop.text_context.start];
    const tokens = [];
    const numScales = model.patch_nums.length;
    let image = null;
    for (let k = 0; k < numScales; k++) {
      const dims = scaleDims(model, 1, k);
      const out = await this.run("transformer_step", this.stepFeeds(k, x, text, cache, dims));
      for (const t of this.manifest.graphs.transformer_step.outputs.filter((t) => t.role === SLOT)) {
        const buf = cache.buffer(t);
        buf.data.set(rawData(out[t.name].data, buf.data), cache.length * buf.rowSize);
      }
      cache.length += dims.tokens;
      const logits = out[loop.transformer_step.logits].data;
      const [drawn] = sampleScale(logits, { tokens: dims.tokens, vocab: model.vocab_size }, settings, [settings.seed], k, numScales);
      tokens.push(drawn);
      const feeds = { [loop.scale_update.f_hat]: fHat };
      feeds[loop.scale_update.tokens] = this.tensor("int64", BigInt64Array.from(drawn, BigInt), [1, dims.side, dims.side]);
      for (const t of update.inputs) if (t.name in this.manifest.tables.scales[k]) feeds[t.name] = this.table(k, t.name);
      const updated = await this.run("scale_update", feeds);
      fHat = updated[loop.scale_update.f_hat_out];
      x = updated[loop.scale_update.next_x];
      image = null;
      if (onScale) {
        const event = { scale: k, numScales, tokens: drawn, preview: async () => (image = await this.decode(fHat)) };
        if ((await onScale(event)) === false) break;
      }
    }
    image = image ?? (await this.decode(fHat));
    return { tokens, image, seconds: (performance.now() - start) / 1000 };
  }
}
