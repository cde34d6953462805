// Reads cases (JSON on stdin) and prints the tokens star_deploy/web/static/sampler.mjs draws for each.
import { readFileSync } from "node:fs";
import { sampleScale } from "../../star_deploy/web/static/sampler.mjs";

const cases = JSON.parse(readFileSync(0, "utf8"));
const results = cases.map((c) => {
  const logits = new Float32Array(Buffer.from(c.logits, "base64").buffer.slice(0));
  const seeds = c.seeds.map((s) => BigInt(s));
  const rows = sampleScale(logits, c.dims, c.settings, seeds, c.scale, c.num_scales);
  return rows.map((r) => Array.from(r));
});
process.stdout.write(JSON.stringify(results));
