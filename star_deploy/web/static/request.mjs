// The checks of generate()'s options: those of star_deploy/arguments.py and SamplingConfig, with their messages
// (JavaScript's type names after "got"). Each bad value is refused with a SiteError naming the option.

import { SiteError } from "./errors.mjs";

export const OPTIONS = ["prompt", "seed", "cfg", "top_k", "top_p", "onScale"];
const MAX_SEED = 1n << 63n;
const KIND_CHARS = 80;

/** "number 1.5", 'string "4"', "null", "array [1,2]": what a value is, as Python's _kind says it. */
export function kind(value) {
  if (value === null || value === undefined) return String(value);
  const type = Array.isArray(value) ? "array" : typeof value;
  let text;
  if (type === "bigint") text = `${value}n`;
  else if (type === "function") text = value.name || "(anonymous)";
  else if (type === "number") text = String(value);
  else {
    try {
      text = JSON.stringify(value) ?? String(value);
    } catch {
      text = String(value);
    }
  }
  return `${type} ${text}`.slice(0, KIND_CHARS);
}

/** An integer (a safe-integer Number or a BigInt; booleans refused) as a BigInt. */
function integer(name, value) {
  if (typeof value === "bigint") return value;
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new SiteError(`${name} must be an integer, got ${kind(value)}`);
  }
  if (!Number.isSafeInteger(value)) {
    throw new SiteError(`${name} must be an integer, got ${kind(value)} (beyond a Number's exact integers: pass a BigInt)`);
  }
  return BigInt(value);
}

/** A real number (a Number; booleans and strings refused). */
function real(name, value) {
  if (typeof value !== "number") throw new SiteError(`${name} must be a real number, got ${kind(value)}`);
  return value;
}

function seedValue(value) {
  const seed = integer("seed", value);
  if (seed < 0n || seed >= MAX_SEED) throw new SiteError(`seed must be in [0, 2**63), got ${seed}`);
  return seed;
}

function prompt(value) {
  if (typeof value !== "string") throw new SiteError(`prompt must be a string, got ${kind(value)}`);
  return value;
}

/**
 * generate()'s options checked and completed: unset (undefined or null) cfg, top_k and top_p take the site's
 * defaults, an unset seed is 0; top_k is capped at the codebook size as Python caps it.
 */
export function checkRequest(options, defaults, vocab) {
  if (options === null || typeof options !== "object" || Array.isArray(options)) {
    throw new SiteError(`generate() takes one object of options {${OPTIONS.join(", ")}}, got ${kind(options)}`);
  }
  const unknown = Object.keys(options).filter((k) => !OPTIONS.includes(k));
  if (unknown.length) {
    throw new SiteError(`generate() got an unexpected option ${unknown[0]}; it takes ${OPTIONS.join(", ")}`);
  }
  const { onScale } = options;
  if (onScale !== undefined && onScale !== null && typeof onScale !== "function") {
    throw new SiteError(`onScale must be a function or undefined, got ${kind(onScale)}`);
  }
  const cfg = options.cfg ?? defaults.cfg;
  const topK = options.top_k ?? defaults.top_k;
  const topP = options.top_p ?? defaults.top_p;
  const request = {
    prompt: prompt(options.prompt),
    seed: options.seed === undefined ? 0n : seedValue(options.seed),
    cfg: real("cfg", cfg),
    top_k: integer("top_k", topK),
    top_p: real("top_p", topP),
    onScale: onScale ?? null,
  };
  if (!Number.isFinite(request.cfg) || request.cfg < 0 || request.cfg > defaults.max_cfg) {
    throw new SiteError(`cfg must be a finite number in [0, ${defaults.max_cfg}], got ${request.cfg}`);
  }
  if (request.top_k < 0n) throw new SiteError(`top-k must be >= 0 (0 disables it), got ${request.top_k}`);
  if (!(request.top_p > 0 && request.top_p <= 1)) throw new SiteError(`top-p must be in (0, 1], got ${request.top_p}`);
  request.top_k = Number(request.top_k > BigInt(vocab) ? BigInt(vocab) : request.top_k);
  return request;
}

/** What onScale returned: undefined, null or a boolean is obeyed (false stops), anything else is refused. */
export function onScaleResult(value) {
  if (value === undefined || value === null) return true;
  if (typeof value !== "boolean") {
    throw new SiteError(
      `onScale's return value must be true or false, got ${kind(value)}; return undefined or true to go on, false to stop`,
    );
  }
  return value;
}
