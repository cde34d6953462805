// onnxruntime-web for a site: which build and execution provider each graph gets, and its session, checked
// against the inputs and outputs site.json declares (as star_deploy/artifacts/graph_io.py checks a graph file).

import { SiteError } from "./errors.mjs";

const PROVIDERS = ["wasm", "webgpu"];
const ON_GPU = ["text", "slot"];
const MAX_THREADS = 8;

async function hasWebGpu() {
  if (typeof navigator === "undefined" || !navigator.gpu) return false;
  try {
    return (await navigator.gpu.requestAdapter()) !== null;
  } catch {
    return false;
  }
}

/** The execution provider of every graph: `graphProviders[name]`, else `requested`, else WebGPU where there is an adapter. */
export async function chooseProviders(manifest, requested, graphProviders = {}) {
  const builds = manifest.runtime.builds;
  const offered = new Set(Object.values(builds).flatMap((b) => b.providers));
  for (const [name, provider] of [["executionProvider", requested], ...Object.entries(graphProviders)]) {
    if (provider === undefined || provider === null) continue;
    if (name !== "executionProvider" && !(name in manifest.graphs)) {
      throw new SiteError(`graphProviders names ${name}, which is not a graph of this site (${Object.keys(manifest.graphs).join(", ")})`);
    }
    if (!PROVIDERS.includes(provider) || !offered.has(provider)) {
      throw new SiteError(`${name === "executionProvider" ? name : `graphProviders.${name}`}: ${provider} is not an execution provider of this site (it has ${[...offered].join(", ")})`);
    }
  }
  const main = requested ?? (builds.webgpu && (await hasWebGpu()) ? "webgpu" : "wasm");
  return Object.fromEntries(Object.keys(manifest.graphs).map((name) => [name, graphProviders[name] ?? main]));
}

/** Import the build that offers every provider in `providers` and set it up; {ort, threads, proxy}. */
export async function loadRuntime(files, base, manifest, providers) {
  if (typeof WebAssembly !== "object") {
    throw new SiteError("this browser has no WebAssembly; use a current Chrome, Edge, Firefox or Safari");
  }
  const wanted = new Set(Object.values(providers));
  const builds = manifest.runtime.builds;
  const build = wanted.has("webgpu") ? builds.webgpu : builds.wasm ?? builds.webgpu;
  const [binary] = await Promise.all([files.get(build.binary), files.get(build.module), files.get(build.glue)]);
  const ort = await import(new URL(build.module, base).href);
  ort.env.wasm.wasmPaths = new URL(build.glue.slice(0, build.glue.lastIndexOf("/") + 1), base).href;
  ort.env.wasm.wasmBinary = binary;
  const isolated = typeof crossOriginIsolated !== "undefined" && crossOriginIsolated;
  const cores = typeof navigator !== "undefined" ? navigator.hardwareConcurrency || 1 : 1;
  ort.env.wasm.numThreads = isolated ? Math.min(cores, MAX_THREADS) : 1;
  ort.env.logLevel = "error";
  // On WebAssembly alone, inference runs in a worker: the page stays responsive (previews are drawn) while a scale
  // computes. WebGPU sessions cannot be proxied.
  const proxy = !wanted.has("webgpu") && typeof Worker !== "undefined";
  ort.env.wasm.proxy = proxy;
  return { ort, threads: ort.env.wasm.numThreads, proxy };
}

function sideProblem(kind, found, expected) {
  const have = new Map(found.map((v) => [v.name, v]));
  const want = new Map(expected.map((t) => [t.name, t]));
  const missing = [...want.keys()].filter((n) => !have.has(n));
  const extra = [...have.keys()].filter((n) => !want.has(n));
  if (missing.length || extra.length) {
    const parts = [];
    if (missing.length) parts.push(`lack ${missing.slice(0, 3).join(", ")}`);
    if (extra.length) parts.push(`include unexpected ${extra.slice(0, 3).join(", ")}`);
    return `its ${kind} ${parts.join(" and ")}`;
  }
  const one = kind.slice(0, -1);
  for (const [name, spec] of want) {
    const value = have.get(name);
    if (value.type && value.type !== spec.dtype) return `its ${one} ${name} is ${value.type}, not ${spec.dtype}`;
    if (!value.shape) continue;
    if (value.shape.length !== spec.shape.length) {
      return `its ${one} ${name} has ${value.shape.length} dimensions, not ${spec.shape.length}`;
    }
    for (const [axis, dim] of value.shape.entries()) {
      const wanted = spec.shape[axis];
      if (typeof dim === "number" && dim >= 0 && typeof wanted === "number" && dim !== wanted) {
        return `its ${one} ${name} has ${dim} at axis ${axis}, not ${wanted}`;
      }
    }
  }
  return null;
}

/** Why `session` cannot serve as the graph of site.json's `entry` (names, types, ranks, fixed sizes), or null. */
export function ioProblem(session, entry) {
  const metadata = (names, list) => list ?? names.map((name) => ({ name }));
  return (
    sideProblem("inputs", metadata(session.inputNames, session.inputMetadata), entry.inputs) ??
    sideProblem("outputs", metadata(session.outputNames, session.outputMetadata), entry.outputs)
  );
}

function sessionOptions(entry, provider, data) {
  const options = { executionProviders: [provider], graphOptimizationLevel: "all" };
  if (data.length) options.externalData = data;
  if (provider === "webgpu") {
    // The text's K/V and the new keys and values stay on the GPU, where the next graph reads them.
    const kept = entry.outputs.filter((t) => ON_GPU.includes(t.role)).map((t) => [t.name, "gpu-buffer"]);
    if (kept.length) options.preferredOutputLocation = Object.fromEntries(kept);
  }
  return options;
}

async function createOne(ort, name, entry, provider, data, report) {
  try {
    return [await ort.InferenceSession.create(entry.model, sessionOptions(entry, provider, data)), provider, null];
  } catch (err) {
    if (provider !== "webgpu") {
      throw new SiteError(`${entry.file}: onnxruntime-web cannot load it (${err.message}); rebuild the site`);
    }
    const note = `${name} runs on WebAssembly: WebGPU could not load it (${err.message})`;
    report(note);
    return [await ort.InferenceSession.create(entry.model, sessionOptions(entry, "wasm", data)), "wasm", note];
  }
}

/**
 * One session per graph, each graph downloaded and verified while the previous session is created: at most
 * two graphs' bytes (with their weight parts) are held at once, which is what lets a site with large graphs
 * load in a browser tab. A graph WebGPU cannot load runs on WebAssembly, with a note saying so.
 */
export async function createSessions(ort, files, manifest, providers, report) {
  const names = Object.keys(manifest.graphs);
  const fetchGraph = async (name) => {
    const g = manifest.graphs[name];
    const [model, ...parts] = await Promise.all([files.get(g.file), ...g.data.map((d) => files.get(d.file))]);
    return { model, data: g.data.map((d, i) => ({ path: d.path, data: parts[i] })) };
  };
  const sessions = {};
  const used = {};
  const notes = [];
  let next = fetchGraph(names[0]);
  for (const [i, name] of names.entries()) {
    const { model, data } = await next;
    next = i + 1 < names.length ? fetchGraph(names[i + 1]) : null;
    next?.catch(() => {});
    report(`loading ${name} (${i + 1} of ${names.length}, ${providers[name]})`);
    const entry = { ...manifest.graphs[name], model };
    const [session, provider, note] = await createOne(ort, name, entry, providers[name], data, report);
    const problem = ioProblem(session, manifest.graphs[name]);
    if (problem) {
      await session.release();
      throw new SiteError(
        `${manifest.graphs[name].file}: not the ${name} graph this site needs (${problem}); ` +
          "rebuild the site instead of replacing its files",
      );
    }
    sessions[name] = session;
    used[name] = provider;
    if (note) notes.push(note);
  }
  return { sessions, providers: used, notes };
}
