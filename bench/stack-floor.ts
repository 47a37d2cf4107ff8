/**
 * The least any program on safemigrate's stack can do for a no-op, measured
 * by bench/compare.ts next to safemigrate and dbmate:
 *
 *   bun bench/stack-floor.ts <url> [<migrations dir>]
 *   deno run -A bench/stack-floor.ts <url> [<migrations dir>]
 *
 * It imports postgres.js, connects (the options safemigrate uses), reads the
 * history's ids and checksums and, given a directory, reads and hashes every
 * file in it (drift detection cannot do less). No lock, no parsing, no plan,
 * no output but a count. Whatever a no-op of safemigrate costs above this is
 * safemigrate's own; what this costs is the runtime and the driver.
 */
import { readdirSync, readFileSync } from "node:fs";
import postgres from "postgres";

const [url, dir] = process.argv.slice(2);
const sql = postgres(url, { max: 1, fetch_types: false, prepare: false, onnotice: () => {} });
const history = await sql.unsafe("select id, checksum from safemigrate_history where applied_at is not null");
let hashed = 0;
if (dir) {
  const bun = (globalThis as { Bun?: { SHA256: { hash(data: Uint8Array, encoding: "hex"): string } } }).Bun;
  for (const name of readdirSync(dir)) {
    const bytes = readFileSync(`${dir}/${name}`);
    // As safemigrate hashes: Bun's own SHA-256 there, node:crypto (loaded only then) elsewhere.
    const hex = bun ? bun.SHA256.hash(bytes, "hex") : process.getBuiltinModule("node:crypto").createHash("sha256").update(bytes).digest("hex");
    if (hex.length === 64) hashed++;
  }
}
await sql.end({ timeout: 0 });
console.log(`${history.length} applied, ${hashed} files hashed`);
