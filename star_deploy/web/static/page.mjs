// The page: loads the site's generator (window.star), then generates on the visitor's device with previews.

import { withText } from "./png.mjs";
import { StarGenerator } from "./star.mjs";

const $ = (id) => document.getElementById(id);
const MB = 1e6;
const SETTINGS = { cfg: "CFG", top_k: "Top-k", top_p: "Top-p" };

function say(text, error = false) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
}

function setState(state) {
  document.body.dataset.state = state;
}

function draw(canvas, image) {
  canvas.width = image.width;
  canvas.height = image.height;
  canvas.getContext("2d").putImageData(image, 0, 0);
}

function preview(image) {
  const c = document.createElement("canvas");
  draw(c, image);
  $("previews").append(c);
}

/** One line per file: its download progress, or that it came from the cache of an earlier visit. */
function showFile({ path, loaded, total, source }) {
  const id = `file:${path}`;
  let row = document.getElementById(id);
  if (!row) {
    row = document.createElement("li");
    row.id = id;
    $("files").append(row);
  }
  row.dataset.source = source;
  row.textContent =
    source === "cache"
      ? `${path}: from the cache of an earlier visit (${(total / MB).toFixed(1)} MB), checked`
      : `${path}: ${(loaded / MB).toFixed(1)} of ${(total / MB).toFixed(1)} MB`;
}

/** A field's number, or null where it is empty (the site's default applies); a field that holds no number is refused. */
function numberField(id, label) {
  const input = $(id);
  if (input.validity.badInput) throw new Error(`${label} is not a number; type a number or leave it empty for the default`);
  const text = input.value.trim();
  return text === "" ? null : Number(text);
}

function seedField() {
  const input = $("seed");
  const text = input.value.trim();
  if (text === "" && !input.validity.badInput) return 0n;
  if (!/^\d+$/.test(text)) throw new Error(`Seed must be a whole number >= 0 (empty: 0), got "${text || input.value}"`);
  return BigInt(text);
}

function request() {
  const values = { prompt: $("prompt").value, seed: seedField() };
  for (const [id, label] of Object.entries(SETTINGS)) {
    const value = numberField(id, label);
    if (value !== null) values[id] = value;
  }
  return values;
}

/** What a generation used: the request with the site's defaults where a field was empty. */
function applied(values) {
  const defaults = window.star.manifest.sampling;
  return { cfg: defaults.cfg, top_k: defaults.top_k, top_p: defaults.top_p, ...values };
}

async function offerDownload(used) {
  const blob = await new Promise((resolve) => $("canvas").toBlob(resolve, "image/png"));
  const text = {
    prompt: used.prompt,
    seed: String(used.seed),
    cfg: String(used.cfg),
    top_k: String(used.top_k),
    top_p: String(used.top_p),
    sampler: "portable",
    backend: `onnxruntime-web ${window.star.provider}`,
    software: "star-deploy",
  };
  const png = withText(new Uint8Array(await blob.arrayBuffer()), text);
  const link = $("download");
  if (link.href) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([png], { type: "image/png" }));
  link.hidden = false;
}

async function generate(event) {
  event.preventDefault();
  $("generate").disabled = true;
  $("previews").replaceChildren();
  setState("running");
  try {
    const values = request();
    const long = window.star.tokenizer.encode(values.prompt).overflowing;
    const note = long ? " (the prompt is longer than CLIP reads: only its first 77 tokens count)" : "";
    say(`generating…${note}`);
    const result = await window.star.generate({
      ...values,
      onScale: async (s) => {
        const image = await s.preview();
        draw($("canvas"), image);
        window.firstImageMs = window.firstImageMs ?? performance.now();
        preview(image);
        say(`scale ${s.scale + 1} of ${s.numScales}${note}`);
      },
    });
    draw($("canvas"), result.image);
    $("time").textContent = `${result.seconds.toFixed(2)} s per image`;
    await offerDownload(applied(values));
    say(`done${note}`);
    setState("done");
  } catch (err) {
    say(`error: ${err.message}`, true);
    setState("error");
  } finally {
    $("generate").disabled = false;
  }
}

function describe(star) {
  const elsewhere = Object.entries(star.providers).filter(([, p]) => p !== star.provider);
  const mixed = elsewhere.length ? ` (${elsewhere.map(([g, p]) => `${g} on ${p}`).join(", ")})` : "";
  const gpu = navigator.gpu ? "" : " (this browser has no WebGPU)";
  return `execution provider: ${star.provider}${mixed}, ${star.threads} thread(s)${gpu}`;
}

async function main() {
  setState("loading");
  if (typeof WebAssembly !== "object") {
    say("This browser has no WebAssembly, which the model runs on; use a current Chrome, Edge, Firefox or Safari.", true);
    setState("error");
    return;
  }
  try {
    const star = await StarGenerator.load(new URL(".", location.href).href, {
      onProgress: (text) => say(text),
      onFile: showFile,
    });
    window.star = star;
    const s = star.manifest.sampling;
    for (const id of Object.keys(SETTINGS)) $(id).placeholder = `${s[id]} (default)`;
    $("cfg").value = s.cfg;
    $("cfg").max = s.max_cfg;
    $("top_k").value = s.top_k;
    $("top_p").value = s.top_p;
    $("provider").textContent = describe(star);
    $("notes").textContent = star.notes.join("; ");
    $("form").addEventListener("submit", generate);
    $("generate").disabled = false;
    say("ready");
    setState("ready");
  } catch (err) {
    say(`error: ${err.message}`, true);
    setState("error");
  }
}

main();
