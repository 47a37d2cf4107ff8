/**
 * The embedded default's first run: `bun safemigrate.ts --all` in a directory
 * with no .safemigrate/ yet, with and without the cached PGlite template
 * (an empty XDG_CACHE_HOME for "cold", one holding the template for "warm").
 * Whole processes, interleaved, medians; the ratio is measured in the same run.
 *
 *   bun bench/pglite-first-run.ts [--runs 5]
 */
import { cpSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";

const { values } = parseArgs({ options: { runs: { type: "string", default: "5" } } });
const runs = Number(values.runs);
const root = resolve(import.meta.dir, "..");
const scratch = mkdtempSync(join(tmpdir(), "safemigrate-pglite-bench-"));
const warmCache = join(scratch, "warm-cache");

async function firstRun(cache: string): Promise<number> {
  const cwd = mkdtempSync(join(scratch, "project-"));
  cpSync(join(root, "migrations"), join(cwd, "migrations"), { recursive: true });
  const started = performance.now();
  const child = Bun.spawn([process.execPath, join(root, "safemigrate.ts"), "--all"], {
    cwd, env: { ...process.env, XDG_CACHE_HOME: cache, DATABASE_URL: "" }, stdout: "ignore", stderr: "pipe",
  });
  const [code, err] = await Promise.all([child.exited, new Response(child.stderr).text()]);
  const ms = performance.now() - started;
  if (code !== 0) throw new Error(`exit ${code}: ${err}`);
  rmSync(cwd, { recursive: true, force: true });
  return ms;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
try {
  await firstRun(warmCache); // fills the warm cache
  const cold: number[] = [];
  const warm: number[] = [];
  for (let i = 0; i < runs; i++) {
    const order = i % 2 === 0 ? ["cold", "warm"] : ["warm", "cold"];
    for (const kind of order) {
      if (kind === "cold") cold.push(await firstRun(mkdtempSync(join(scratch, "cold-cache-"))));
      else warm.push(await firstRun(warmCache));
    }
  }
  const line = (name: string, xs: number[]) =>
    `${name.padEnd(32)} median ${(median(xs) / 1000).toFixed(1)} s  (min ${(Math.min(...xs) / 1000).toFixed(1)}, max ${(Math.max(...xs) / 1000).toFixed(1)})`;
  console.log(line("first run, no template (initdb)", cold));
  console.log(line("first run, cached template", warm));
  console.log(`ratio cold/warm: ${(median(cold) / median(warm)).toFixed(2)}x over ${runs} interleaved pairs`);
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
