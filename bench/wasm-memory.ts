#!/usr/bin/env bun
/**
 * What the WebAssembly modules (libpg-query's parser, PGlite's PostgreSQL)
 * cost each runtime, as whole processes, interleaved:
 *
 *   bun bench/wasm-memory.ts [--runs 5] [--rev <git rev>] [--corpus bench/.corpus/sourcegraph]
 *                            [--pglite-corpus bench/.corpus/crates.io]
 *
 * Workloads: `--lint` of a corpus (the parser on every statement), and `--all
 * --no-lint` of a corpus on `pglite:memory` (PGlite running every migration).
 * Each runs under Bun, under Node (the working tree's safemigrate.ts, and with
 * --rev the one committed at that revision, next to it), and under Deno as it
 * is and with `--v8-flags=--no-wasm-tier-up,--no-wasm-dynamic-tiering`.
 * Corpora come from `bun bench/corpus.ts`; without them, 300 generated
 * migrations stand in. Reported: median wall, CPU (user+sys) and peak RSS
 * from /usr/bin/time. Node is $SAFEMIGRATE_TEST_NODE or the one on PATH (22.18+).
 */
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";

const { values: opts } = parseArgs({
  args: process.argv.slice(2),
  options: {
    runs: { type: "string", default: "5" },
    rev: { type: "string" },
    corpus: { type: "string", default: "bench/.corpus/sourcegraph" },
    "pglite-corpus": { type: "string", default: "bench/.corpus/crates.io" },
  },
});
const ROOT = resolve(import.meta.dir, "..");
const WORK = mkdtempSync(join(tmpdir(), "smwasm-"));
const snapshot = (name: string, text: string) => {
  mkdirSync(join(WORK, name));
  writeFileSync(join(WORK, name, "safemigrate.ts"), text);
  copyFileSync(join(ROOT, "package.json"), join(WORK, name, "package.json"));
  symlinkSync(join(ROOT, "node_modules"), join(WORK, name, "node_modules"));
  return join(WORK, name, "safemigrate.ts");
};
const CLI = snapshot("now", readFileSync(join(ROOT, "safemigrate.ts"), "utf8"));
const REV_CLI = opts.rev
  ? snapshot("rev", Bun.spawnSync(["git", "show", `${opts.rev}:safemigrate.ts`], { cwd: ROOT }).stdout.toString())
  : null;

/** A corpus from bench/corpus.ts, or generated stand-ins: tables, an index, a function, a data change each. */
function corpus(path: string): string {
  const dir = resolve(ROOT, path);
  if (existsSync(dir)) return dir;
  const made = join(WORK, "generated");
  if (existsSync(made)) return made;
  mkdirSync(made);
  for (let i = 1; i <= 300; i++) {
    const n = String(i).padStart(4, "0");
    writeFileSync(join(made, `${n}_m.sql`), `-- safe: before_deploy
create table t_${n} (id bigint generated always as identity primary key, v text not null, at timestamptz default now());
create index t_${n}_v on t_${n} (v);
create function f_${n}() returns trigger language plpgsql as $$ begin new.at := now(); return new; end $$;
insert into t_${n} (v) select md5(g::text) from generate_series(1, 10) g;
`);
  }
  console.error(`${path} is missing (bun bench/corpus.ts makes it): 300 generated migrations stand in`);
  return made;
}

const NODE = [process.env.SAFEMIGRATE_TEST_NODE, Bun.which("node")].find((node) => {
  if (!node) return false;
  const [major, minor] = Bun.spawnSync([node, "-p", "process.versions.node"]).stdout.toString().split(".").map(Number);
  return major > 22 || (major === 22 && minor >= 18);
});
const DENO = Bun.which("deno");
const DENO_FLAGS = "--v8-flags=--no-wasm-tier-up,--no-wasm-dynamic-tiering";

interface Contender { name: string; argv: string[]; ok: number[] }
function contenders(args: string[], ok: number[]): Contender[] {
  return [
    { name: "bun", argv: [process.execPath, CLI, ...args], ok },
    ...(NODE ? [{ name: "node", argv: [NODE, CLI, ...args], ok }] : []),
    ...(NODE && REV_CLI ? [{ name: `node @${opts.rev}`, argv: [NODE, REV_CLI, ...args], ok }] : []),
    ...(DENO ? [{ name: "deno", argv: [DENO, "run", "-A", CLI, ...args], ok }] : []),
    ...(DENO ? [{ name: `deno ${DENO_FLAGS}`, argv: [DENO, "run", "-A", DENO_FLAGS, CLI, ...args], ok }] : []),
  ];
}

function runOnce(c: Contender): { wallMs: number; cpuMs: number; rssMb: number } {
  const timeFile = join(WORK, "time.txt");
  const started = performance.now();
  const child = Bun.spawnSync(["/usr/bin/time", "-f", "%U %S %M", "-o", timeFile, ...c.argv], { cwd: WORK, env: { ...process.env, NO_COLOR: "1" }, stdout: "ignore", stderr: "pipe" });
  const wallMs = performance.now() - started;
  if (!c.ok.includes(child.exitCode ?? -1)) throw new Error(`${c.name} exited ${child.exitCode}: ${child.stderr.toString().slice(0, 500)}`);
  const [user, sys, rss] = readFileSync(timeFile, "utf8").trim().split("\n").pop()!.split(" ").map(Number);
  return { wallMs, cpuMs: (user + sys) * 1000, rssMb: rss / 1024 };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
function measure(title: string, list: Contender[]): string {
  const samples = list.map(() => [] as ReturnType<typeof runOnce>[]);
  for (let round = 0; round < Number(opts.runs); round++) {
    for (let k = 0; k < list.length; k++) {
      const i = (k + round) % list.length;
      samples[i].push(runOnce(list[i]));
    }
  }
  const lines = [`### ${title}`, "", "| runtime | median | CPU (user+sys) | peak RSS |", "|---|---:|---:|---:|"];
  for (const [i, c] of list.entries()) {
    const s = samples[i];
    lines.push(`| ${c.name} | ${(median(s.map((x) => x.wallMs)) / 1000).toFixed(2)} s | ${(median(s.map((x) => x.cpuMs)) / 1000).toFixed(2)} s | ${median(s.map((x) => x.rssMb)).toFixed(0)} MB |`);
  }
  const text = `${lines.join("\n")}\n`;
  console.log(`\n${text}`);
  return text;
}

try {
  const lintDir = corpus(opts.corpus!);
  const pgliteDir = corpus(opts["pglite-corpus"]!);
  // --lint exits 2 when it finds something to gate on: a real corpus has findings.
  measure(`--lint of ${lintDir.replace(`${ROOT}/`, "")}`, contenders(["--lint", "--dir", lintDir], [0, 2]));
  measure(`--all --no-lint of ${pgliteDir.replace(`${ROOT}/`, "")} on pglite:memory`, contenders(["--all", "--no-lint", "--dir", pgliteDir, "--database-url", "pglite:memory"], [0]));
  console.log(`Runs: ${opts.runs} each, interleaved; ${new Date().toISOString()}; Bun ${Bun.version}, Node ${NODE ? Bun.spawnSync([NODE, "--version"]).stdout.toString().trim() : "-"}, ${DENO ? Bun.spawnSync([DENO, "--version"]).stdout.toString().split("\n")[0] : "no deno"}`);
} finally {
  rmSync(WORK, { recursive: true, force: true });
}
