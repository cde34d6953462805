// Reads cases (JSON on stdin: JavaScript expressions of generate()'s options) and prints, for each, what
// star_deploy/web/static/request.mjs makes of them: {error} with the message, or {request} (seed as a string).
import { readFileSync } from "node:fs";
import { checkRequest } from "../../star_deploy/web/static/request.mjs";

const { cases, defaults, vocab } = JSON.parse(readFileSync(0, "utf8"));
const results = cases.map((expression) => {
  try {
    const request = checkRequest(new Function(`return (${expression});`)(), defaults, vocab);
    return { request: { ...request, seed: String(request.seed), onScale: request.onScale !== null } };
  } catch (err) {
    return { error: `${err.constructor.name}: ${err.message}` };
  }
});
process.stdout.write(JSON.stringify(results));
