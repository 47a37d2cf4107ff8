#!/usr/bin/env bun
/**
 * Planning at scale: rollback, sync, status and plan over a generated history
 * of N applied migrations (default 10,000), each timed as a whole process and
 * compared with a no-op `--pre` over the same history, measured in the same
 * interleaved loop. Target: each within 200 ms of the no-op run.
 *
 *   bun bench/plan.ts [--n 10000] [--runs 7] [--database-url postgres://postgres@127.0.0.1:5432/postgres] [--rev <git rev>]
 *
 * The history is written straight into safemigrate_history (one INSERT of N
 * rows, with the same checksums and down SQL that --all would record): the
 * bench times planning, not applying. `--rev` measures safemigrate.ts as
 * committed at that revision (the cubic rollback planner before this bench was
 * written is main's a40ad50; use a small --n with it).
 */
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { checksumOf, sqlLiteral } from "../safemigrate.ts";

const { values: opts } = parseArgs({
  options: {
    n: { type: "string", default: "10000" },
    runs: { type: "string", default: "7" },
    "database-url": { type: "string", default: "postgres://postgres@127.0.0.1:5432/postgres" },
    rev: { type: "string" },
  },
});
const N = Number(opts.n);
const RUNS = Number(opts.runs);
const ROOT = resolve(import.meta.dir, "..");
const TMP = mkdtempSync(join(tmpdir(), "safemigrate-plan-bench-"));
const DB = `safemigrate_plan_bench_${process.pid}`;
const admin = postgres(opts["database-url"]!, { max: 1, onnotice: () => {} });

// The measured safemigrate.ts, copied so editing the working tree during a run cannot mix versions.
const CLI = join(TMP, "src", "safemigrate.ts");
mkdirSync(join(TMP, "src"));
writeFileSync(CLI, opts.rev ? Bun.spawnSync(["git", "show", `${opts.rev}:safemigrate.ts`], { cwd: ROOT }).stdout.toString() : readFileSync(join(ROOT, "safemigrate.ts"), "utf8"));
copyFileSync(join(ROOT, "package.json"), join(TMP, "src", "package.json"));
symlinkSync(join(ROOT, "node_modules"), join(TMP, "src", "node_modules"), "dir");

const width = String(N).length;
const ids = Array.from({ length: N }, (_, i) => `${String(i + 1).padStart(width, "0")}_create_t${i + 1}`);
const DIR = join(TMP, "migrations");
/** The branch --sync switches to: the newest 100 files are gone, so it plans 100 rollbacks. */
const SYNC_DIR = join(TMP, "migrations-older");
mkdirSync(DIR);
mkdirSync(SYNC_DIR);
const upOf = (i: number) => `create table t${i + 1} (id int);`;
const downOf = (i: number) => `-- migrate:down\ndrop table t${i + 1};`;
for (const [i, id] of ids.entries()) {
  const text = `-- safe: before_deploy\n${upOf(i)}\n\n${downOf(i)}\n`;
  writeFileSync(join(DIR, `${id}.sql`), text);
  if (i < N - 100) writeFileSync(join(SYNC_DIR, `${id}.sql`), text);
}

async function setUp(): Promise<string> {
  await admin.unsafe(`create database ${DB}`);
  const url = new URL(opts["database-url"]!);
  url.pathname = `/${DB}`;
  // Let safemigrate create its own history table (with one tiny migration), then fill it.
  const first = join(TMP, "first");
  mkdirSync(first);
  writeFileSync(join(first, "0_setup.sql"), "-- safe: always\nselect 1;\n");
  const made = Bun.spawnSync([process.execPath, CLI, "--all", "--dir", first, "--database-url", url.toString()], { env: { ...process.env, NO_COLOR: "1" } });
  if (made.exitCode !== 0) throw new Error(`setup failed: ${made.stderr.toString()}`);
  const sql = postgres(url.toString(), { max: 1, onnotice: () => {} });
  const rows = ids.map((id, i) => `(${[id, checksumOf(upOf(i)), "before_deploy", "pre"].map(sqlLiteral).join(", ")}, ` +
    `timestamptz '2026-01-01' + ${i} * interval '1 ms', 1, ${sqlLiteral(downOf(i))}, ${sqlLiteral(JSON.stringify(i === 0 ? [] : [ids[i - 1]]))})`);
  await sql.unsafe(`delete from safemigrate_history;
    insert into safemigrate_history (id, checksum, safe, phase, applied_at, duration_ms, down_sql, depends) values ${rows.join(",\n")}`);
  await sql.end();
  return url.toString();
}

/** Wall clock from spawn to exit, and the child's own CPU time (a busy machine distorts it much less). */
async function timed(args: string[]): Promise<{ ms: number; cpuMs: number }> {
  const started = performance.now();
  const child = Bun.spawn([process.execPath, CLI, ...args], { env: { ...process.env, NO_COLOR: "1", DATABASE_URL: undefined }, stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  const ms = performance.now() - started;
  if (code !== 0) throw new Error(`${args.join(" ")} exited ${code}\n${out.slice(-1000)}\n${err.slice(-1000)}`);
  return { ms, cpuMs: Number(child.resourceUsage()?.cpuTime.total ?? NaN) / 1000 };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

try {
  const url = await setUp();
  const cases: [string, string[]][] = [
    ["--pre (no-op, the baseline)", ["--pre", "--dir", DIR, "--database-url", url]],
    ["--all --plan", ["--all", "--plan", "--dir", DIR, "--database-url", url]],
    ["--status", ["--status", "--dir", DIR, "--database-url", url]],
    [`--rollback ${ids[0]} --plan (all ${N})`, ["--rollback", ids[0], "--plan", "--dir", DIR, "--database-url", url]],
    [`--sync --plan (newest 100 files gone)`, ["--sync", "--plan", "--dir", SYNC_DIR, "--database-url", url]],
  ];
  const samples = cases.map(() => [] as number[]);
  const cpu = cases.map(() => [] as number[]);
  for (let run = 0; run < RUNS; run++) {
    // Rotate the order each round so a busy moment does not always hit the same command.
    for (let k = 0; k < cases.length; k++) {
      const c = (k + run) % cases.length;
      const { ms, cpuMs } = await timed(cases[c][1]);
      samples[c].push(ms);
      cpu[c].push(cpuMs);
    }
  }
  const base = median(samples[0]);
  const baseCpu = median(cpu[0]);
  console.log(`${N} applied migrations, ${RUNS} interleaved runs each, whole processes (spawn to exit), ${opts.rev ? `git ${opts.rev}` : "working tree"}:`);
  console.log(`| command | median | min | max | median − no-op --pre | process CPU (median) | CPU − no-op --pre |\n|---|---:|---:|---:|---:|---:|---:|`);
  const delta = (x: number, of: number) => `${x - of >= 0 ? "+" : ""}${(x - of).toFixed(0)} ms`;
  for (const [i, [name]] of cases.entries()) {
    const [m, c] = [median(samples[i]), median(cpu[i])];
    console.log(`| ${name} | ${m.toFixed(0)} ms | ${Math.min(...samples[i]).toFixed(0)} ms | ${Math.max(...samples[i]).toFixed(0)} ms | ` +
      `${i === 0 ? "" : delta(m, base)} | ${c.toFixed(0)} ms | ${i === 0 ? "" : delta(c, baseCpu)} |`);
  }
  console.log(`load average at the end: ${(await import("node:os")).loadavg().map((x) => x.toFixed(1)).join(" ")}`);
} finally {
  await admin.unsafe(`drop database if exists ${DB} with (force)`).catch(() => {});
  await admin.end();
  rmSync(TMP, { recursive: true, force: true });
}
