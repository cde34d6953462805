// Reads a tokenizer.json path and prompts (JSON on stdin) and prints the ids and masks of tokenizer.mjs.
import { readFileSync } from "node:fs";
import { ClipTokenizer } from "../../star_deploy/web/static/tokenizer.mjs";

const { path, prompts } = JSON.parse(readFileSync(0, "utf8"));
const tokenizer = new ClipTokenizer(JSON.parse(readFileSync(path, "utf8")));
const results = prompts.map((p) => {
  const { ids, mask } = tokenizer.encode(p);
  return { ids: Array.from(ids, Number), mask: Array.from(mask, Number) };
});
process.stdout.write(JSON.stringify(results));
