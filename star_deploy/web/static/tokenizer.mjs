// CLIP's byte-level BPE tokenizer read from a Hugging Face tokenizer.json, as `tokenizers` encodes:
// added tokens split out first, then the normalizers, the Split and ByteLevel pre-tokenizers, BPE with
// the end-of-word suffix, [start, ...ids, end] truncated to max_length and padded with pad_id.

const WHITE_SPACE = "\\t\\n\\v\\f\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const BYTE_LEVEL_PATTERN = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/** A JavaScript RegExp for a Rust regex: `\s` is Unicode White_Space there (JavaScript's differs). */
export function rustRegex(pattern) {
  let out = "";
  let inClass = false;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === "\\" && pattern[i + 1] === "s") {
      out += inClass ? WHITE_SPACE : `[${WHITE_SPACE}]`;
      i++;
    } else if (c === "\\" && pattern[i + 1] === "S") {
      out += inClass ? "" : `[^${WHITE_SPACE}]`;
      if (inClass) throw new Error(`tokenizer.json: unsupported \\S in a character class: ${pattern}`);
      i++;
    } else if (c === "\\") {
      out += c + pattern[i + 1];
      i++;
    } else {
      if (c === "[") inClass = true;
      if (c === "]") inClass = false;
      out += c;
    }
  }
  return new RegExp(out, "gu");
}

function bytesToUnicode() {
  // GPT-2's printable stand-in for every byte value.
  const bytes = [];
  for (let b = 33; b <= 126; b++) bytes.push(b);
  for (let b = 161; b <= 172; b++) bytes.push(b);
  for (let b = 174; b <= 255; b++) bytes.push(b);
  const chars = new Array(256);
  for (const b of bytes) chars[b] = String.fromCodePoint(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (chars[b] === undefined) chars[b] = String.fromCodePoint(256 + n++);
  return chars;
}

const BYTE_CHARS = bytesToUnicode();
const UTF8 = new TextEncoder();

function normalizer(spec) {
  if (spec === null || spec === undefined) return (s) => s;
  switch (spec.type) {
    case "Sequence": {
      const steps = spec.normalizers.map(normalizer);
      return (s) => steps.reduce((acc, f) => f(acc), s);
    }
    case "NFC":
      return (s) => s.normalize("NFC");
    case "Lowercase":
      return (s) => Array.from(s, (c) => c.toLowerCase()).join("");
    case "Replace": {
      const re = "Regex" in spec.pattern ? rustRegex(spec.pattern.Regex) : null;
      return re ? (s) => s.replace(re, spec.content) : (s) => s.split(spec.pattern.String).join(spec.content);
    }
    default:
      throw new Error(`tokenizer.json: unsupported normalizer ${spec.type}`);
  }
}

function findAll(re, text) {
  return Array.from(text.matchAll(re), (m) => m[0]).filter((m) => m.length > 0);
}

function preTokenizer(spec) {
  switch (spec.type) {
    case "Sequence": {
      const steps = spec.pretokenizers.map(preTokenizer);
      return (words) => steps.reduce((acc, f) => f(acc), words);
    }
    case "Split": {
      if (!(spec.invert && spec.behavior === "Removed")) throw new Error("tokenizer.json: unsupported Split");
      const re = rustRegex(spec.pattern.Regex);
      return (words) => words.flatMap((w) => findAll(re, w));
    }
    case "ByteLevel": {
      const re = spec.use_regex ? rustRegex(BYTE_LEVEL_PATTERN) : null;
      const prefix = spec.add_prefix_space ? " " : "";
      return (words) =>
        words
          .flatMap((w, i) => {
            const text = i === 0 && prefix && !w.startsWith(" ") ? prefix + w : w;
            return re ? findAll(re, text) : [text];
          })
          .map((w) => Array.from(UTF8.encode(w), (b) => BYTE_CHARS[b]).join(""));
    }
    default:
      throw new Error(`tokenizer.json: unsupported pre_tokenizer ${spec.type}`);
  }
}

/** CLIP's tokenizer from a parsed tokenizer.json; `encode(prompt)` gives the text encoder's ids and mask. */
export class ClipTokenizer {
  constructor(json) {
    const model = json.model;
    if (model.type !== "BPE") throw new Error(`tokenizer.json: model ${model.type} is not BPE`);
    this.vocab = new Map(Object.entries(model.vocab));
    this.ranks = new Map(model.merges.map((m, i) => [Array.isArray(m) ? m.join(" ") : m, i]));
    this.suffix = model.end_of_word_suffix || "";
    this.unk = model.unk_token === null ? null : this.vocab.get(model.unk_token);
    this.added = json.added_tokens.map((t) => [t.content, t.id]).sort((a, b) => b[0].length - a[0].length);
    this.normalize = normalizer(json.normalizer);
    this.preTokenize = preTokenizer(json.pre_tokenizer);
    const post = json.post_processor;
    this.start = post.cls[1];
    this.end = post.sep[1];
    this.maxLength = json.truncation ? json.truncation.max_length : Infinity;
    this.padLength = json.padding ? json.padding.strategy.Fixed : 0;
    this.padId = json.padding ? json.padding.pad_id : 0;
    this.cache = new Map();
  }

  /** The raw text cut at added tokens (leftmost, longest first): strings and {id} entries. */
  splitAdded(text) {
    const parts = [];
    let from = 0;
    for (let i = 0; i < text.length; ) {
      const hit = this.added.find(([content]) => content.length > 0 && text.startsWith(content, i));
      if (!hit) {
        i++;
        continue;
      }
      if (i > from) parts.push(text.slice(from, i));
      parts.push({ id: hit[1] });
      i += hit[0].length;
      from = i;
    }
    if (from < text.length) parts.push(text.slice(from));
    return parts;
  }

  /** BPE of one byte-level word: the lowest-ranked pair merged first, leftmost among equals. */
  bpe(word) {
    const cached = this.cache.get(word);
    if (cached) return cached;
    const symbols = Array.from(word);
    symbols[symbols.length - 1] += this.suffix;
    for (;;) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < symbols.length - 1; i++) {
        const rank = this.ranks.get(`${symbols[i]} ${symbols[i + 1]}`);
        if (rank !== undefined && rank < bestRank) {
          bestRank = rank;
          best = i;
        }
      }
      if (best < 0) break;
      symbols.splice(best, 2, symbols[best] + symbols[best + 1]);
    }
    const ids = symbols.map((s) => (this.vocab.has(s) ? this.vocab.get(s) : this.unk)).filter((id) => id !== null);
    this.cache.set(word, ids);
    return ids;
  }

  /** Token ids of a prompt without the start/end tokens, truncation or padding. */
  tokens(prompt) {
    const ids = [];
    for (const part of this.splitAdded(prompt)) {
      if (typeof part !== "string") ids.push(part.id);
      else for (const word of this.preTokenize([this.normalize(part)])) ids.push(...this.bpe(word));
    }
    return ids;
  }

  /** {ids, mask, overflowing}: BigInt64Arrays of the padded length, as the text encoder reads them. */
  encode(prompt) {
    const content = this.tokens(prompt);
    const keep = Math.max(0, this.maxLength - 2);
    const ids = [this.start, ...content.slice(0, keep), this.end];
    const length = Math.max(this.padLength, ids.length);
    const out = new BigInt64Array(length).fill(BigInt(this.padId));
    const mask = new BigInt64Array(length);
    ids.forEach((id, i) => {
      out[i] = BigInt(id);
      mask[i] = 1n;
    });
    return { ids: out, mask, overflowing: content.length > keep };
  }
}
