#!/usr/bin/env node
/**
 * Writes safemigrate.js, the copy of safemigrate.ts that the npm package runs
 * under Node (`npm pack` runs this as prepack; the file is not committed).
 *
 * Node 22.18+ runs safemigrate.ts itself, but never strips types from a file
 * inside node_modules, which is where an installed package lives. So the
 * package ships this copy, made by amaro, the type stripper Node itself uses:
 * types become spaces, so every line and column is where it is in the source
 * and the JavaScript is exactly what Node would run from the .ts file. It runs
 * on Node 20 too. Bun and Deno users can import the .ts source directly.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { transformSync } from "amaro";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const source = readFileSync(join(root, "safemigrate.ts"), "utf8");
const { code } = transformSync(source, { mode: "strip-only" });
// The source's shebang names bun; the package's bin must run wherever npx does.
const script = code.replace(/^#!.*\n/, "#!/usr/bin/env node\n");
writeFileSync(join(root, "safemigrate.js"), script, { mode: 0o755 });
console.error(`wrote safemigrate.js (${script.length} bytes) from safemigrate.ts`);
