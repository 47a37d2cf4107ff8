/**
 * The least any program on safemigrate's stack can do, measured by
 * bench/compare.ts next to safemigrate and its peers:
 *
 *   bun bench/stack-floor.ts <url> [<migrations dir>]     a no-op
 *   bun bench/stack-floor.ts --parse <migrations dir>     the gate's parse
 *   bun bench/stack-floor.ts --apply <url> <migrations dir>
 *   (or under Deno: deno run -A bench/stack-floor.ts ...)
 *
 * A no-op: import postgres.js, connect (with safemigrate's options), read the
 * history's ids and checksums and, given a directory, read and hash every
 * file in it (drift detection cannot do less). --parse: give every file to
 * libpg-query, as the gate must before anything is applied. --apply: each
 * file in its own transaction with a history row, in two round trips (BEGIN
 * and the SQL, then the row and COMMIT), into a table `stack_history` it
 * creates. No lock, no plan, no output but a count. Whatever safemigrate costs
 * above these is its own; what these cost is the runtime, the driver and the
 * parser.
 */
import { readdirSync, readFileSync } from "node:fs";
import postgres from "postgres";

const OPTIONS = { max: 1, fetch_types: false, prepare: false, onnotice: () => {} } as const;
const files = (dir: string) => readdirSync(dir).filter((name) => name.endsWith(".sql")).sort();

async function noop(url: string, dir?: string): Promise<string> {
  const sql = postgres(url, OPTIONS);
  const history = await sql.unsafe("select id, checksum from safemigrate_history where applied_at is not null");
  let hashed = 0;
  if (dir) {
    const bun = (globalThis as { Bun?: { SHA256: { hash(data: Uint8Array, encoding: "hex"): string } } }).Bun;
    for (const name of files(dir)) {
      const bytes = readFileSync(`${dir}/${name}`);
      // As safemigrate hashes: Bun's own SHA-256 there, node:crypto (loaded only then) elsewhere.
      const hex = bun ? bun.SHA256.hash(bytes, "hex") : process.getBuiltinModule("node:crypto").createHash("sha256").update(bytes).digest("hex");
      if (hex.length === 64) hashed++;
    }
  }
  await sql.end({ timeout: 0 });
  return `${history.length} applied, ${hashed} files hashed`;
}

async function parse(dir: string): Promise<string> {
  const { parse } = await import("libpg-query");
  let statements = 0;
  for (const name of files(dir)) statements += ((await parse(readFileSync(`${dir}/${name}`, "utf8"))) as { stmts?: unknown[] }).stmts?.length ?? 0;
  return `${statements} statements parsed`;
}

async function apply(url: string, dir: string): Promise<string> {
  const sql = postgres(url, OPTIONS);
  await sql.unsafe("create table if not exists stack_history (id text primary key, applied_at timestamptz)");
  const names = files(dir);
  for (const name of names) {
    const id = name.replace(/\.sql$/, "").replaceAll("'", "''");
    await sql.unsafe(`begin;\n${readFileSync(`${dir}/${name}`, "utf8")}`);
    await sql.unsafe(`insert into stack_history values ('${id}', clock_timestamp()); commit`);
  }
  await sql.end({ timeout: 0 });
  return `${names.length} applied`;
}

const args = process.argv.slice(2);
const result = args[0] === "--parse" ? await parse(args[1]) : args[0] === "--apply" ? await apply(args[1], args[2]) : await noop(args[0], args[1]);
console.log(result);
