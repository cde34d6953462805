// The site's files: each downloaded once (with progress), checked against the sha256 in site.json, and kept in
// the browser's Cache Storage under its sha256, so a second visit reads it from there (and checks it again).

import { SiteError } from "./errors.mjs";

const CACHE_PREFIX = "star-deploy ";
const KEY_FOLDER = "star-deploy-cache/";
const GROW = 2;

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function sha256(bytes) {
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

/** A response's body read chunk by chunk into one buffer (`expected` bytes to start with), reporting progress. */
async function readBody(response, expected, progress) {
  const reader = response.body?.getReader();
  if (!reader) return new Uint8Array(await response.arrayBuffer());
  let buffer = new Uint8Array(Math.max(expected, 1));
  let at = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (at + value.length > buffer.length) {
      const larger = new Uint8Array(Math.max(GROW * buffer.length, at + value.length));
      larger.set(buffer.subarray(0, at));
      buffer = larger;
    }
    buffer.set(value, at);
    at += value.length;
    progress(at);
  }
  return at === buffer.length ? buffer : buffer.slice(0, at);
}

/** The site's Cache Storage, or null where the browser offers none (insecure origin, some private modes). */
export async function openCache(base) {
  if (typeof caches === "undefined") return null;
  try {
    return await caches.open(CACHE_PREFIX + base.href);
  } catch {
    return null;
  }
}

/** The site's files, each checked against site.json; `onFile({path, loaded, total, source})` reports progress. */
export class SiteFiles {
  constructor(base, manifest, cache, onFile) {
    this.base = base;
    this.files = manifest.files;
    this.cache = cache;
    this.onFile = onFile ?? (() => {});
    this.notes = [];
  }

  entry(path) {
    const entry = this.files[path];
    if (!entry) throw new SiteError(`${path} is not listed in site.json; rebuild the site with star-deploy web`);
    return entry;
  }

  key(digest) {
    return new URL(KEY_FOLDER + digest, this.base).href;
  }

  /** The verified contents of `path` (decompressed where it is a .gz file). */
  async get(path) {
    const entry = this.entry(path);
    const digest = entry.content_sha256 ?? entry.sha256;
    const size = entry.content_size ?? entry.size;
    const cached = await this.fromCache(path, digest, size);
    if (cached) return cached;
    const contents = await this.download(path, entry);
    await this.store(digest, contents);
    return contents;
  }

  /** The cached contents of `path`, checked again; a damaged entry is dropped (and the file downloaded). */
  async fromCache(path, digest, size) {
    if (!this.cache) return null;
    let bytes;
    try {
      const response = await this.cache.match(this.key(digest));
      if (!response) return null;
      bytes = new Uint8Array(await response.arrayBuffer());
    } catch {
      return null;
    }
    if (bytes.length === size && (await sha256(bytes)) === digest) {
      this.onFile({ path, loaded: size, total: size, source: "cache" });
      return bytes;
    }
    this.notes.push(`${path}: the cached copy was damaged; downloaded again`);
    await this.cache.delete(this.key(digest)).catch(() => {});
    return null;
  }

  async store(digest, bytes) {
    if (!this.cache) return;
    try {
      await this.cache.put(this.key(digest), new Response(bytes));
    } catch (err) {
      this.notes.push(`not kept for the next visit: ${err.message}`);
    }
  }

  async download(path, entry) {
    let response;
    try {
      response = await fetch(new URL(path, this.base), { cache: "no-store" });
    } catch (err) {
      throw new SiteError(`download of ${path} failed (${err.message}); check the connection and reload`);
    }
    if (!response.ok) throw new SiteError(`download of ${path} failed: HTTP ${response.status}; reload the page`);
    const report = (loaded) => this.onFile({ path, loaded, total: entry.size, source: "network" });
    let bytes;
    try {
      bytes = await readBody(response, entry.size, report);
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

  /** Drop cached files this version of the site no longer lists (a file changed on the server). */
  async prune() {
    if (!this.cache) return;
    const wanted = new Set(Object.values(this.files).map((e) => this.key(e.content_sha256 ?? e.sha256)));
    try {
      for (const request of await this.cache.keys()) if (!wanted.has(request.url)) await this.cache.delete(request);
    } catch {
      // A cache the browser will not list is left as it is; it is checked again on every read.
    }
  }
}
