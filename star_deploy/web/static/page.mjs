// The page: loads the site's generator (window.star), then generates on the visitor's device with previews.

import { withText } from "./png.mjs";
import { StarGenerator } from "./star.mjs";

const $ = (id) => document.getElementById(id);

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

function wholeNumber(id) {
  const text = $(id).value.trim();
  if (!/^\d+$/.test(text)) throw new Error(`${id} must be a whole number >= 0, got "${text}"`);
  return text;
}

function settings() {
  return {
    prompt: $("prompt").value,
    seed: BigInt(wholeNumber("seed")),
    cfg: Number($("cfg").value),
    top_k: Number($("top_k").value),
    top_p: Number($("top_p").value),
  };
}

async function offerDownload(request) {
  const blob = await new Promise((resolve) => $("canvas").toBlob(resolve, "image/png"));
  const text = {
    prompt: request.prompt,
    seed: String(request.seed),
    cfg: String(request.cfg),
    top_k: String(request.top_k),
    top_p: String(request.top_p),
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
    const request = settings();
    const long = window.star.tokenizer.encode(request.prompt).overflowing;
    const note = long ? " (the prompt is longer than CLIP reads: only its first 77 tokens count)" : "";
    say(`generating…${note}`);
    const result = await window.star.generate({
      ...request,
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
    await offerDownload(request);
    say(`done${note}`);
    setState("done");
  } catch (err) {
    say(`error: ${err.message}`, true);
    setState("error");
  } finally {
    $("generate").disabled = false;
  }
}

async function main() {
  setState("loading");
  if (typeof WebAssembly !== "object") {
    say("This browser has no WebAssembly, which the model runs on; use a current Chrome, Edge, Firefox or Safari.", true);
    setState("error");
    return;
  }
  try {
    const star = await StarGenerator.load(new URL(".", location.href).href, { onProgress: (text) => say(text) });
    window.star = star;
    const s = star.manifest.sampling;
    $("cfg").value = s.cfg;
    $("top_k").value = s.top_k;
    $("top_p").value = s.top_p;
    const gpu = navigator.gpu ? "" : " (this browser has no WebGPU)";
    $("provider").textContent = `execution provider: ${star.provider}, ${star.threads} thread(s)${gpu}`;
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
