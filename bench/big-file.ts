#!/usr/bin/env bun
/**
 * Large migrations: safemigrate against psql on the same file, as whole processes.
 *
 * Cases (each one migration file, applied to a fresh database per run):
 *   big     N INSERTs, about 94 bytes each (default 533,000: about 50 MB)
 *   many    8,001 small statements (create table or select / insert / update / comment, mixed)
 *   2mb     2 MB of INSERTs (about 21,000 statements)
 *
 * For every case, `psql -X -q -1 -v ON_ERROR_STOP=1 -f <file>` and
 * `bun safemigrate.ts --all --dir <dir> --database-url <url>` (linting on, the
 * default) run interleaved
 * (order alternating), --runs times each, under /usr/bin/time -v. Printed:
 * median and min/max wall clock, the ratio of the medians, and the median
 * peak RSS of each (maximum resident set size), against the file's size.
 * Both results are checked (row count in the table).
 *
 * Usage: bun bench/big-file.ts [--cases big,many,2mb] [--runs 3] [--n 533000]
 *          [--database-url postgres://postgres@127.0.0.1:5432/postgres]
 *
 * The admin URL is used only to create and drop databases named
 * safemigrate_bigfile_<pid>_*; the files live in a temp dir removed at the end.
 */
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import postgres from "postgres";

const { values: opts } = parseArgs({
  args: process.argv.slice(2),
  options: {
    cases: { type: "string", default: "big,many,2mb" },
    runs: { type: "string", default: "3" },
    n: { type: "string", default: "533000" },
    "database-url": { type: "string", default: process.env.BENCH_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres" },
  },
  strict: true,
});

const ROOT = resolve(import.meta.dir, "..");
const RUNS = Number(opts.runs);
const admin = postgres(opts["database-url"]!, { max: 1, onnotice: () => {} });
const work = mkdtempSync(join(tmpdir(), "safemigrate-bigfile-"));
const databases: string[] = [];
// A snapshot of safemigrate.ts, so editing it during a run cannot mix two versions.
const CLI = join(work, "safemigrate.ts");
copyFileSync(join(ROOT, "safemigrate.ts"), CLI);
symlinkSync(join(ROOT, "node_modules"), join(work, "node_modules"));

/** The migration file of each case: its SQL, and the rows `big_items` holds afterwards. */
const CASES: Record<string, () => { sql: string; rows: number }> = {
  big: () => inserts(Number(opts.n)),
  "2mb": () => inserts(21_000),
  many: () => {
    const lines = ["create table big_items (id bigint primary key, name text, note text, amount numeric);"];
    // 200 tables, not 2,000: thousands of new tables in one transaction exhaust a shared server's lock table.
    for (let i = 1; i <= 2_000; i++) {
      lines.push(i % 10 === 0 ? `create table t_${i} (id int primary key, v text);` : `select ${i};`);
      lines.push(`insert into big_items values (${i}, 'item ${i}', 'note ${i}', ${i});`);
      lines.push(`update big_items set note = note || '!' where id = ${i};`);
      lines.push(`comment on table big_items is 'after ${i}';`);
    }
    return { sql: lines.join("\n") + "\n", rows: 2_000 };
  },
};

function inserts(n: number): { sql: string; rows: number } {
  const lines = ["create table big_items (id bigint primary key, name text, note text, amount numeric);"];
  for (let i = 1; i <= n; i++) {
    lines.push(`insert into big_items (id, name, note, amount) values (${i}, 'item number ${i}', 'a note ${i}', ${i % 1000});`);
  }
  return { sql: lines.join("\n") + "\n", rows: n };
}

async function freshDatabase(): Promise<string> {
  const name = `safemigrate_bigfile_${process.pid}_${databases.length}`;
  await admin.unsafe(`create database ${name}`);
  databases.push(name);
  const url = new URL(opts["database-url"]!);
  url.pathname = `/${name}`;
  return url.toString();
}

async function rowsIn(url: string): Promise<number> {
  const db = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const [row] = await db`select count(*)::int as n from big_items`;
    return row.n;
  } finally {
    await db.end();
  }
}

/** Runs a command under /usr/bin/time -v: wall clock (ms, spawn to exit) and peak RSS (MB). */
async function timed(command: string[]): Promise<{ ms: number; rssMb: number }> {
  const started = performance.now();
  const child = Bun.spawn(["/usr/bin/time", "-v", ...command], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  const ms = performance.now() - started;
  if (code !== 0) throw new Error(`${command.join(" ")} exited ${code}:\n${stdout}\n${stderr.slice(-2000)}`);
  const rss = /Maximum resident set size \(kbytes\): (\d+)/.exec(stderr);
  return { ms, rssMb: rss ? Number(rss[1]) / 1024 : NaN };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

try {
  console.log(`bun bench/big-file.ts --cases ${opts.cases} --runs ${RUNS} --n ${opts.n}`);
  console.log(`load average at start: ${loadavg().map((l) => l.toFixed(2)).join(" ")}\n`);
  for (const name of opts.cases!.split(",")) {
    const { sql, rows } = CASES[name]();
    const dir = join(work, name);
    mkdirSync(dir);
    const file = join(dir, "0001_data.sql");
    writeFileSync(file, sql);
    const mb = statSync(file).size / 1e6;
    const results: Record<"psql" | "safemigrate", { ms: number; rssMb: number }[]> = { psql: [], safemigrate: [] };
    for (let run = 0; run < RUNS; run++) {
      const order = run % 2 === 0 ? (["psql", "safemigrate"] as const) : (["safemigrate", "psql"] as const);
      for (const tool of order) {
        const url = await freshDatabase();
        const command = tool === "psql"
          ? ["psql", "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", file]
          : [process.execPath, CLI, "--all", "--dir", dir, "--database-url", url];
        await admin.unsafe("checkpoint");
        const result = await timed(command);
        const got = await rowsIn(url);
        if (got !== rows) throw new Error(`${tool} on ${name}: ${got} rows, expected ${rows}`);
        results[tool].push(result);
        console.log(`  ${name} run ${run + 1} ${tool.padEnd(11)} ${fmt(result.ms)}  peak RSS ${result.rssMb.toFixed(0)} MB`);
      }
    }
    const p = median(results.psql.map((r) => r.ms));
    const s = median(results.safemigrate.map((r) => r.ms));
    const range = (rs: { ms: number }[]) => `${fmt(Math.min(...rs.map((r) => r.ms)))}–${fmt(Math.max(...rs.map((r) => r.ms)))}`;
    console.log(
      `${name}: ${mb.toFixed(1)} MB, ${rows} rows | psql median ${fmt(p)} (${range(results.psql)}), ` +
        `peak RSS ${median(results.psql.map((r) => r.rssMb)).toFixed(0)} MB | safemigrate median ${fmt(s)} (${range(results.safemigrate)}), ` +
        `peak RSS ${median(results.safemigrate.map((r) => r.rssMb)).toFixed(0)} MB (${(median(results.safemigrate.map((r) => r.rssMb)) / mb).toFixed(1)}x the file) | ratio ${(s / p).toFixed(2)}x\n`,
    );
  }
} finally {
  for (const name of databases) await admin.unsafe(`drop database if exists ${name} with (force)`).catch(() => {});
  await admin.end();
  rmSync(work, { recursive: true, force: true });
}
