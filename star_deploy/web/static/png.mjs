// PNG files with text chunks: the canvas's PNG with one iTXt chunk per setting inserted before IEND.

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, body) {
  const out = new Uint8Array(12 + body.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, body.length);
  out.set(new TextEncoder().encode(type), 4);
  out.set(body, 8);
  view.setUint32(8 + body.length, crc32(out.subarray(4, 8 + body.length)));
  return out;
}

function itxt(key, value) {
  // keyword, NUL, compression flag 0, method 0, empty language tag NUL, empty translated keyword NUL, UTF-8 text
  const enc = new TextEncoder();
  const k = enc.encode(key);
  const v = enc.encode(value);
  const body = new Uint8Array(k.length + 5 + v.length);
  body.set(k, 0);
  body.set(v, k.length + 5);
  return chunk("iTXt", body);
}

/** `png` (bytes of a PNG file) with `text` ({key: value}) added as iTXt chunks before its IEND chunk. */
export function withText(png, text) {
  const end = png.length - 12;
  const chunks = Object.entries(text).map(([k, v]) => itxt(k, String(v)));
  const total = chunks.reduce((n, c) => n + c.length, 0);
  const out = new Uint8Array(png.length + total);
  out.set(png.subarray(0, end), 0);
  let at = end;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  out.set(png.subarray(end), at);
  return out;
}
