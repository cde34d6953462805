// STAR in the browser: downloads and verifies a site written by `star-deploy web`, then runs the scale loop
// with onnxruntime-web. `const star = await StarGenerator.load(siteUrl)`, then
// `await star.generate({prompt, seed, cfg, top_k, top_p, onScale})` -> {tokens, image, seconds}.

import { SiteError } from "./errors.mjs";
import { openCache, SiteFiles } from "./files.mjs";
import { arrayType, concrete, CpuKVCache, GpuKVCache, size } from "./kvcache.mjs";
import { checkRequest, onScaleResult } from "./request.mjs";
import { sampleScale } from "./sampler.mjs";
import { chooseProviders, createSessions, loadRuntime } from "./sessions.mjs";
import { ClipTokenizer } from "./tokenizer.mjs";

export { SiteError };

const FORMAT = "star-deploy-web";
const FORMAT_VERSION = 2;
const TEXT = "text";
const PAST = "past";

function siteBase(siteUrl) {
  const here = typeof location !== "undefined" ? location.href : import.meta.url;
  const url = new URL(siteUrl ?? new URL(".", import.meta.url).href, here);
  if (!url.pathname.endsWith("/")) url.pathname += "/";
  return url;
}

/** site.json, parsed and recognised, or a SiteError naming it. */
async function readManifest(base) {
  const url = new URL("site.json", base);
  let response;
  try {
    response = await fetch(url, { cache: "no-store" });
  } catch (err) {
    throw new SiteError(`download of site.json failed (${err.message}); check the connection and reload`);
  }
  if (!response.ok) throw new SiteError(`download of site.json failed: HTTP ${response.status}`);
  let manifest;
  try {
    manifest = JSON.parse(await response.text());
  } catch (err) {
    throw new SiteError(`site.json at ${url} is not valid JSON (${err.message}); rebuild the site with star-deploy web`);
  }
  if (manifest?.format !== FORMAT) {
    throw new SiteError(`site.json at ${url} is not a star-deploy site; rebuild the site with star-deploy web`);
  }
  if (manifest.format_version !== FORMAT_VERSION) {
    throw new SiteError(
      `site.json at ${url} has format version ${manifest.format_version}; this page reads version ${FORMAT_VERSION}: ` +
        "rebuild the site with this star-deploy version",
    );
  }
  return manifest;
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

/** A loaded site: a session per graph, the tokenizer and the per-scale tables. */
export class StarGenerator {
  constructor(parts) {
    Object.assign(this, parts);
  }

  /**
   * Download `siteUrl` (default: this module's folder), verify every file, create the sessions.
   * `executionProvider` forces "wasm" or "webgpu", `graphProviders` ({graph: provider}) sets it per graph,
   * `onProgress(text)` hears each step and `onFile({path, loaded, total, source})` each file's download.
   */
  static async load(siteUrl, { executionProvider, graphProviders, onProgress, onFile } = {}) {
    const base = siteBase(siteUrl);
    const report = onProgress ?? (() => {});
    const manifest = await readManifest(base);
    const files = new SiteFiles(base, manifest, await openCache(base), onFile);
    const providers = await chooseProviders(manifest, executionProvider, graphProviders);
    report(`downloading and verifying (${[...new Set(Object.values(providers))].join(", ")})`);
    const [tokenizerBytes, tableBytes, runtime] = await Promise.all([
      files.get(manifest.tokenizer),
      files.get(manifest.tables.file),
      loadRuntime(files, base, manifest, providers),
    ]);
    const loaded = await createSessions(runtime.ort, files, manifest, providers, report);
    await files.prune();
    const tokenizer = new ClipTokenizer(JSON.parse(new TextDecoder().decode(tokenizerBytes)));
    const main = Object.values(loaded.providers).includes("webgpu") ? "webgpu" : "wasm";
    return new StarGenerator({
      ...runtime,
      manifest,
      tokenizer,
      tables: tableBytes,
      sessions: loaded.sessions,
      providers: loaded.providers,
      provider: main,
      notes: [...loaded.notes, ...files.notes],
    });
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

  /** A feed for a session on `provider`: GPU tensors are read back for a graph that runs on the CPU; the worker
   * of WebAssembly takes over (detaches) the buffers it is given, so it gets copies. */
  async feed(t, provider) {
    if (t.location === "gpu-buffer") return provider === "webgpu" ? t : this.tensor(t.type, await t.getData(), t.dims);
    return this.proxy ? this.tensor(t.type, t.data.slice(), t.dims) : t;
  }

  async run(graph, feeds) {
    const provider = this.providers[graph];
    const own = {};
    for (const [name, t] of Object.entries(feeds)) own[name] = await this.feed(t, provider);
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
    return this.run("text_context", {
      [tc.hidden]: this.rows(encoded[te.hidden], 1),
      [tc.mask]: this.tensor("int64", mask.slice(0, length), [1, length]),
      [tc.pooled]: encoded[te.pooled],
    });
  }

  newCache() {
    const spec = this.manifest.graphs.transformer_step;
    if (this.providers.transformer_step === "webgpu") {
      return new GpuKVCache(this.ort, spec, this.manifest.model, 2, this.ort.env.webgpu.device);
    }
    return new CpuKVCache(this.ort, spec, this.manifest.model, 2);
  }

  stepFeeds(scale, x, text, cache, dims) {
    const spec = this.manifest.graphs.transformer_step;
    const feeds = { [this.manifest.loop.transformer_step.x]: x };
    for (const t of spec.inputs) {
      if (t.role === TEXT) feeds[t.name] = text[t.name];
      else if (t.role === PAST) feeds[t.name] = cache.past(t, concrete(t.shape, dims));
      else if (t.name in this.manifest.tables.scales[scale]) feeds[t.name] = this.table(scale, t.name);
    }
    return feeds;
  }

  async decode(fHat) {
    const loop = this.manifest.loop.vq_decoder;
    const out = await this.run("vq_decoder", { [loop.f_hat]: fHat });
    const [, , height, width] = out[loop.image].dims;
    return toPixels(out[loop.image].data, height, width);
  }

  /**
   * One image: {tokens (one Int32Array per scale), image (ImageData), seconds}. The options are checked as
   * Python checks its own: `prompt` (a string), `seed` (an integer in [0, 2**63), a Number or BigInt; default 0),
   * `cfg`, `top_k`, `top_p` (default: the site's), `onScale` (return false to stop).
   */
  async generate(options) {
    const request = checkRequest(options, this.manifest.sampling, this.manifest.model.vocab_size);
    const start = performance.now();
    const context = await this.encodeText(request.prompt);
    const text = {};
    for (const t of this.manifest.graphs.text_context.outputs) if (t.role === TEXT) text[t.name] = context[t.name];
    const cache = this.newCache();
    try {
      const { tokens, fHat, image } = await this.scales(request, context, text, cache);
      return { tokens, image: image ?? (await this.decode(fHat)), seconds: (performance.now() - start) / 1000 };
    } finally {
      cache.dispose();
      for (const t of Object.values(text)) if (t.location === "gpu-buffer") t.dispose();
    }
  }

  async scales(request, context, text, cache) {
    const model = this.manifest.model;
    const loop = this.manifest.loop;
    const update = this.manifest.graphs.scale_update;
    const fHatSpec = update.inputs.find((t) => t.name === loop.scale_update.f_hat);
    const fHatShape = concrete(fHatSpec.shape, { batch: 1 });
    let fHat = this.tensor(fHatSpec.dtype, new (arrayType(fHatSpec.dtype))(size(fHatShape)), fHatShape);
    let x = context[loop.text_context.start];
    const tokens = [];
    const numScales = model.patch_nums.length;
    let image = null;
    for (let k = 0; k < numScales; k++) {
      const dims = scaleDims(model, 1, k);
      const out = await this.run("transformer_step", this.stepFeeds(k, x, text, cache, dims));
      await cache.append(out, dims.tokens);
      const logits = out[loop.transformer_step.logits].data;
      const [drawn] = sampleScale(logits, { tokens: dims.tokens, vocab: model.vocab_size }, request, [request.seed], k, numScales);
      tokens.push(drawn);
      const feeds = { [loop.scale_update.f_hat]: fHat };
      feeds[loop.scale_update.tokens] = this.tensor("int64", BigInt64Array.from(drawn, BigInt), [1, dims.side, dims.side]);
      for (const t of update.inputs) if (t.name in this.manifest.tables.scales[k]) feeds[t.name] = this.table(k, t.name);
      const updated = await this.run("scale_update", feeds);
      fHat = updated[loop.scale_update.f_hat_out];
      x = updated[loop.scale_update.next_x];
      image = null;
      if (request.onScale) {
        const event = { scale: k, numScales, tokens: drawn, preview: async () => (image = await this.decode(fHat)) };
        if (!onScaleResult(await request.onScale(event))) break;
      }
    }
    return { tokens, fHat, image };
  }
}
