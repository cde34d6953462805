// The portable sampler of star_deploy/sampling.py in JavaScript: float64 CFG, top-k/top-p and an
// exponential race whose uniforms come from the same keyed integer hash, so a seed draws the same
// tokens in a browser as in Python.

const MASK64 = (1n << 64n) - 1n;
const MIX0 = 0x85ebca6b;
const MIX1 = 0xc2b2ae35;
const TWO32 = 4294967296;

/** CFG strength at `scale`: ramps linearly from 0 to `cfg` over the schedule. */
export function guidanceScale(cfg, scale, numScales) {
  return (cfg * scale) / (numScales - 1);
}

/** Two 32-bit keys for one prompt at one scale, mixed from (seed, scale); seed a Number or BigInt. */
export function streamKeys(seed, scale) {
  let x =
    (BigInt(seed) * 0x9e3779b97f4a7c15n + BigInt(scale) * 0xbf58476d1ce4e5b9n + 0x94d049bb133111ebn) & MASK64;
  x ^= x >> 31n;
  x = (x * 0xbf58476d1ce4e5b9n) & MASK64;
  x ^= x >> 29n;
  return [Number(x & 0xffffffffn), Number(x >> 32n)];
}

function fmix32Low(low, high) {
  // murmur3's finalizer of a value whose bits 32..47 (`high`) shift into the low word first.
  let h = (low ^ ((low >>> 16) | ((high & 0xffff) << 16))) >>> 0;
  h = Math.imul(h, MIX0) >>> 0;
  h = (h ^ (h >>> 13)) >>> 0;
  h = Math.imul(h, MIX1) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/** The 32-bit keyed hash of a counter (token index * V + codebook index, below 2**53). */
export function raceHash(counter, keys) {
  const high = Math.floor(counter / TWO32);
  const low = (counter - high * TWO32) ^ keys[0];
  return fmix32Low(fmix32Low(low >>> 0, 0) ^ keys[1], 0);
}

/** The uniform in (0, 1) of `raceHash`. */
export function raceUniform(counter, keys) {
  return (raceHash(counter, keys) + 0.5) / TWO32;
}

function pairwiseSum(values, start, n) {
  // numpy's pairwise summation (blocks of 128, eight accumulators), so sums round as numpy's do.
  if (n < 8) {
    let s = 0;
    for (let i = 0; i < n; i++) s += values[start + i];
    return s;
  }
  if (n <= 128) {
    const r = [];
    for (let j = 0; j < 8; j++) r.push(values[start + j]);
    let i = 8;
    for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j] += values[start + i + j];
    let s = r[0] + r[1] + (r[2] + r[3]) + (r[4] + r[5] + (r[6] + r[7]));
    for (; i < n; i++) s += values[start + i];
    return s;
  }
  let half = Math.floor(n / 2);
  half -= half % 8;
  return pairwiseSum(values, start, half) + pairwiseSum(values, start + half, n - half);
}

/** Softmax of a Float64Array, as numpy computes it: exp(x - max) / sum. */
export function softmax(x) {
  let max = -Infinity;
  for (const v of x) if (v > max) max = v;
  const e = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) e[i] = Math.exp(x[i] - max);
  const sum = pairwiseSum(e, 0, e.length);
  for (let i = 0; i < e.length; i++) e[i] /= sum;
  return e;
}

function sortKey(values) {
  // -inf entries compare equal to each other: order them by index as a stable sort does.
  return (a, b) => (values[a] === values[b] ? a - b : values[a] < values[b] ? -1 : 1);
}

/** `values` (of codebook entries `idx`, ascending) with those outside the top-p mass set to -inf. */
export function dropOutsideTopP(values, idx, topP) {
  const order = Array.from(values.keys()).sort((a, b) =>
    values[a] === values[b] ? idx[a] - idx[b] : values[a] < values[b] ? -1 : 1,
  );
  const probs = softmax(Float64Array.from(order, (i) => values[i]));
  const out = Float64Array.from(values);
  let cum = 0;
  for (let j = 0; j < order.length - 1; j++) {
    cum += probs[j];
    if (cum <= 1 - topP) out[order[j]] = -Infinity;
  }
  return out;
}

/** A row's top-k codebook indices (ascending) and values, or null where a tie at the k-th value keeps more than k. */
export function topKCandidates(row, topK) {
  const kth = Float64Array.from(row).sort()[row.length - topK];
  let kept = 0;
  for (const v of row) if (v >= kth) kept++;
  if (kept !== topK) return null;
  const idx = new Array(topK);
  const values = new Float64Array(topK);
  for (let i = 0, j = 0; i < row.length; i++) {
    if (row[i] >= kth) {
      idx[j] = i;
      values[j++] = row[i];
    }
  }
  return { idx, values };
}

/** A full row with entries outside top-k, then outside the top-p mass, set to -inf. */
export function filterTopKTopP(row, topK, topP) {
  const out = Float64Array.from(row);
  const vocab = row.length;
  if (topK > 0 && topK < vocab) {
    const kth = Float64Array.from(row).sort()[vocab - topK];
    for (let i = 0; i < vocab; i++) if (out[i] < kth) out[i] = -Infinity;
  }
  if (topP > 0) {
    const order = Int32Array.from(out.keys()).sort(sortKey(out));
    const probs = softmax(Float64Array.from(order, (i) => out[i]));
    let cum = 0;
    const drop = [];
    for (let j = 0; j < order.length - 1; j++) {
      cum += probs[j];
      if (cum <= 1 - topP) drop.push(order[j]);
    }
    for (const i of drop) out[i] = -Infinity;
  }
  return out;
}

function race(probs, idx, tokenIndex, vocab, keys) {
  // argmax of p / Exp(1): the first candidate with the highest score.
  let best = 0;
  let bestScore = -Infinity;
  for (let j = 0; j < probs.length; j++) {
    const u = raceUniform(tokenIndex * vocab + idx[j], keys);
    const score = probs[j] / -Math.log(u);
    if (score > bestScore) {
      bestScore = score;
      best = j;
    }
  }
  return idx[best];
}

function sampleToken(guided, settings, tokenIndex, keys) {
  const vocab = guided.length;
  const { top_k: topK, top_p: topP } = settings;
  const picked = topK > 0 && topK < vocab ? topKCandidates(guided, topK) : null;
  if (picked === null) {
    const all = Array.from(guided.keys());
    return race(softmax(filterTopKTopP(guided, topK, topP)), all, tokenIndex, vocab, keys);
  }
  const values = topP > 0 ? dropOutsideTopP(picked.values, picked.idx, topP) : picked.values;
  return race(softmax(values), picked.idx, tokenIndex, vocab, keys);
}

/**
 * Tokens of one scale. `logits` (2B, l, V) float32 rows [cond..., uncond...]; `seeds` one per prompt;
 * `settings` {cfg, top_k, top_p} (top_k already clamped to V). Returns B Int32Arrays of l tokens.
 */
export function sampleScale(logits, dims, settings, seeds, scale, numScales) {
  const { tokens, vocab } = dims;
  const b = seeds.length;
  const t = guidanceScale(settings.cfg, scale, numScales);
  const out = [];
  for (let i = 0; i < b; i++) {
    const keys = streamKeys(seeds[i], scale);
    const row = new Int32Array(tokens);
    for (let n = 0; n < tokens; n++) {
      const cond = (i * tokens + n) * vocab;
      const uncond = ((b + i) * tokens + n) * vocab;
      const guided = new Float64Array(vocab);
      for (let v = 0; v < vocab; v++) guided[v] = (1 + t) * logits[cond + v] - t * logits[uncond + v];
      row[n] = sampleToken(guided, settings, n, keys);
    }
    out.push(row);
  }
  return out;
}
