#!/usr/bin/env bun
/**
 * safemigrate benchmark: whole processes, wall clock from spawn to exit.
 *
 *   A. no-op `--pre` with N migrations already applied, next to the baselines
 *      `bun -e 0` (runtime start-up) and `safemigrate.ts --version` (start-up +
 *      transpiling safemigrate.ts + importing postgres.js and mri).
 *   B. `--all` applying N small migrations to a fresh database, against the
 *      floor: one psql session running the same N files, each in its own
 *      transaction with a history insert.
 *   C. (when deno is on PATH) the no-op `--pre` under Deno, for information.
 *   D. which optional modules the server path loads: PGlite never, libpg-query
 *      not when there is nothing to apply (when applying it is reported: the SQL
 *      is linted / split into statements). Checked two ways: Bun's module
 *      registry (require.cache, dumped at exit by a preload script) and, when
 *      strace exists, the files the process opens. A positive control shows
 *      the check can say "yes".
 *
 * Usage: bun bench/bench.ts [--n 1000] [--runs 7] [--noop-runs 21]
 *          [--database-url postgres://postgres@127.0.0.1:5432/postgres] [--rev <git rev>] [--no-deno] [--no-trace]
 *
 * safemigrate.ts is snapshotted into the temp dir at start (the working tree,
 * or `git show <rev>:safemigrate.ts` with --rev), so edits during a run do not
 * mix versions; the report prints the snapshot's sha256.
 *
 * The admin URL is used only to create and drop scratch databases named
 * safemigrate_bench_<pid>_*; everything is removed at the end (also on Ctrl-C).
 */
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import postgres from "postgres";

// ---------------------------------------------------------------------------
// options

const { values: opts } = parseArgs({
  args: process.argv.slice(2),
  options: {
    n: { type: "string", default: "1000" },
    runs: { type: "string", default: "7" },
    "noop-runs": { type: "string" },
    "database-url": { type: "string", default: process.env.BENCH_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres" },
    "no-deno": { type: "boolean", default: false },
    "no-trace": { type: "boolean", default: false },
    rev: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
  strict: true,
});

if (opts.help) {
  const doc = readFileSync(import.meta.path, "utf8").split("/**")[1].split(" */")[0];
  console.log(doc.split("\n").slice(1).map((l) => l.replace(/^ \* ?/, "")).join("\n").trim());
  process.exit(0);
}

const positiveInt = (name: string, text: string): number => {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) {
    console.error(`bench: --${name} must be a positive integer, not "${text}"`);
    process.exit(2);
  }
  return value;
};
const N = positiveInt("n", opts.n!);
const RUNS = positiveInt("runs", opts.runs!);
const NOOP_RUNS = positiveInt("noop-runs", opts["noop-runs"] ?? String(RUNS * 3));
const ADMIN_URL = opts["database-url"]!;

const ROOT = resolve(import.meta.dir, "..");
const BUN = process.execPath;
const DENO = opts["no-deno"] ? null : Bun.which("deno");
const STRACE = opts["no-trace"] ? null : Bun.which("strace");
const PSQL = Bun.which("psql");
if (!PSQL) {
  console.error("bench: psql is not on PATH (needed for the floor in B)");
  process.exit(2);
}

/** Targets from the brief. */
const TARGET_NOOP_MS = 150;
const TARGET_RATIO = 1.5;

// ---------------------------------------------------------------------------
// scratch resources and cleanup

const TMP = mkdtempSync(join(tmpdir(), "safemigrate-bench-"));
const PREFIX = `safemigrate_bench_${process.pid}_`;
const admin = postgres(ADMIN_URL, { max: 1, onnotice: () => {}, connection: { application_name: "safemigrate-bench" } });
const created = new Set<string>();

/**
 * The safemigrate.ts that is measured: a snapshot taken now (of the working
 * tree, or of --rev), so every run measures the same code even if the file is
 * edited while the bench runs. Its node_modules is a symlink to the repo's.
 */
const SNAPSHOT_DIR = join(TMP, "src");
const CLI = join(SNAPSHOT_DIR, "safemigrate.ts");
const SOURCE = opts.rev ? `git ${opts.rev}:safemigrate.ts` : "working tree safemigrate.ts";
{
  mkdirSync(SNAPSHOT_DIR);
  let text: string;
  if (opts.rev) {
    const shown = Bun.spawnSync(["git", "show", `${opts.rev}:safemigrate.ts`], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
    if (shown.exitCode !== 0) {
      console.error(`bench: git show ${opts.rev}:safemigrate.ts failed: ${shown.stderr.toString().trim()}`);
      rmSync(TMP, { recursive: true, force: true });
      process.exit(2);
    }
    text = shown.stdout.toString();
  } else {
    text = readFileSync(join(ROOT, "safemigrate.ts"), "utf8");
  }
  writeFileSync(CLI, text);
  copyFileSync(join(ROOT, "package.json"), join(SNAPSHOT_DIR, "package.json"));
  symlinkSync(join(ROOT, "node_modules"), join(SNAPSHOT_DIR, "node_modules"), "dir");
}

function urlFor(database: string): string {
  const url = new URL(ADMIN_URL);
  url.pathname = `/${database}`;
  return url.toString();
}

async function createDatabase(suffix: string): Promise<string> {
  const name = PREFIX + suffix;
  await admin.unsafe(`drop database if exists "${name}" with (force)`);
  await admin.unsafe(`create database "${name}"`);
  created.add(name);
  return name;
}

async function dropDatabase(name: string): Promise<void> {
  await admin.unsafe(`drop database if exists "${name}" with (force)`);
  created.delete(name);
}

/** A CHECKPOINT before each timed apply, so a background checkpoint of the previous run does not land in it. */
async function checkpoint(): Promise<void> {
  await admin.unsafe("checkpoint").catch(() => {});
}

let cleanedUp = false;
async function cleanup(): Promise<void> {
  if (cleanedUp) return;
  cleanedUp = true;
  for (const name of [...created]) await dropDatabase(name).catch((e) => console.error(`bench: could not drop ${name}: ${e.message}`));
  await admin.end({ timeout: 5 }).catch(() => {});
  rmSync(TMP, { recursive: true, force: true });
}
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    console.error(`\nbench: ${signal}, cleaning up...`);
    cleanup().finally(() => process.exit(130));
  });
}

// ---------------------------------------------------------------------------
// running and timing whole processes

interface RunResult {
  ms: number;
  /** CPU time (user + system) of the spawned process itself, in ms: less sensitive to a busy machine than wall clock. */
  cpuMs: number;
  code: number;
  stdout: string;
  stderr: string;
}

const CHILD_ENV: Record<string, string | undefined> = { ...process.env, NO_COLOR: "1", DATABASE_URL: undefined, SAFEMIGRATE: undefined };

/** Spawns cmd and measures wall clock from just before spawn to the exit of the process. */
async function timed(cmd: string[], timeoutMs = 300_000): Promise<RunResult> {
  const started = performance.now();
  const proc = Bun.spawn(cmd, { cwd: ROOT, env: CHILD_ENV, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const exitedAt = proc.exited.then(() => performance.now());
  const timer = setTimeout(() => proc.kill(), timeoutMs);
  const [stdout, stderr, code, ended] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
    exitedAt,
  ]);
  clearTimeout(timer);
  const cpu = proc.resourceUsage()?.cpuTime.total;
  return { ms: ended - started, cpuMs: cpu === undefined ? NaN : Number(cpu) / 1000, code, stdout, stderr };
}

function check(result: RunResult, what: string, expect?: RegExp): void {
  if (result.code !== 0 || (expect && !expect.test(result.stdout))) {
    throw new Error(
      `${what} failed (exit ${result.code})\n--- stdout (tail)\n${result.stdout.slice(-2000)}\n--- stderr\n${result.stderr.slice(-2000)}`,
    );
  }
}

interface Stats {
  median: number;
  min: number;
  max: number;
  n: number;
}

function stats(samples: number[]): Stats {
  const sorted = [...samples].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  return { median, min: sorted[0], max: sorted[sorted.length - 1], n: sorted.length };
}

const fmt = (ms: number) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(1)} ms`);
const progress = (text: string) => { if (process.stderr.isTTY) process.stderr.write(`\r\x1b[K${text}`); };

// ---------------------------------------------------------------------------
// the migrations

const WIDTH = Math.max(4, String(N).length);
const pad = (i: number) => String(i).padStart(WIDTH, "0");
const MIGRATIONS_DIR = join(TMP, "migrations");
mkdirSync(MIGRATIONS_DIR);

interface GeneratedMigration {
  id: string;
  text: string;
  sql: string;
  depends: string[];
}
const generated: GeneratedMigration[] = [];
for (let i = 1; i <= N; i++) {
  const id = `${pad(i)}_create_t_${pad(i)}`;
  const sql = `create table t_${pad(i)} (id int primary key, v text);`;
  const text = `-- safe: before_deploy\n${sql}\n`;
  writeFileSync(join(MIGRATIONS_DIR, `${id}.sql`), text);
  generated.push({ id, text, sql, depends: i === 1 ? [] : [generated[i - 2].id] });
}

/** The floor: one psql session, each migration in its own transaction with a history row like safemigrate's. */
const quote = (s: string) => `'${s.replaceAll("'", "''")}'`;
const PSQL_FILE = join(TMP, "floor.sql");
writeFileSync(
  PSQL_FILE,
  [
    `create table if not exists safemigrate_history (id text primary key, checksum text, safe text, phase text,
  detected_at timestamptz, applied_at timestamptz, duration_ms integer, down_sql text, depends text, note text);`,
    ...generated.map((m) => {
      const checksum = createHash("sha256").update(m.sql.trim()).digest("hex");
      return `BEGIN;\n${m.text}INSERT INTO safemigrate_history (id, checksum, safe, phase, applied_at, duration_ms, down_sql, depends) ` +
        `VALUES (${quote(m.id)}, ${quote(checksum)}, 'before_deploy', 'all', clock_timestamp(), 0, NULL, ${quote(JSON.stringify(m.depends))});\nCOMMIT;`;
    }),
  ].join("\n") + "\n",
);

async function appliedCount(database: string): Promise<number> {
  const sql = postgres(urlFor(database), { max: 1, onnotice: () => {} });
  try {
    const [row] = await sql.unsafe(`select count(*)::int as n from safemigrate_history where applied_at is not null`);
    return row.n as number;
  } finally {
    await sql.end({ timeout: 5 });
  }
}

// ---------------------------------------------------------------------------
// the benchmark

interface Row {
  section: string;
  label: string;
  command: string;
  stats: Stats;
  /** Median CPU time of the process; null when not meaningful. */
  cpuMs: number | null;
}
const rows: Row[] = [];
const shortCmd = (cmd: string[]) =>
  cmd.map((part) => part === BUN ? "bun" : part === DENO ? "deno" : part === CLI ? "safemigrate.ts" : part.startsWith(TMP) ? part.replace(TMP, "$TMP") : part.replace(ROOT + "/", ""))
    .join(" ");

async function sectionA(): Promise<{ setupMs: number; noopDb: string }> {
  const db = await createDatabase("noop");
  const url = urlFor(db);
  progress(`A: applying ${N} migrations once (setup, not timed as part of A)...`);
  const setup = await timed([BUN, CLI, "--all", "--dir", MIGRATIONS_DIR, "--database-url", url]);
  check(setup, "setup --all", new RegExp(`Applied ${N} migrations`));

  const commands: { section: string; label: string; cmd: string[]; expect?: RegExp }[] = [
    { section: "A", label: "bun -e 0 (runtime start-up)", cmd: [BUN, "-e", "0"] },
    { section: "A", label: "bun safemigrate.ts --version", cmd: [BUN, CLI, "--version"], expect: /^\d+\.\d+\.\d+/ },
    {
      section: "A",
      label: `bun safemigrate.ts --pre (no-op, ${N} applied)`,
      cmd: [BUN, CLI, "--pre", "--dir", MIGRATIONS_DIR, "--database-url", url],
      expect: /Nothing to apply\./,
    },
  ];
  if (DENO) {
    commands.push(
      { section: "C", label: "deno eval 0 (runtime start-up)", cmd: [DENO, "eval", "0"] },
      { section: "C", label: "deno run safemigrate.ts --version", cmd: [DENO, "run", "-A", "--no-lock", CLI, "--version"], expect: /^\d+\.\d+\.\d+/ },
      {
        section: "C",
        label: `deno run safemigrate.ts --pre (no-op, ${N} applied)`,
        cmd: [DENO, "run", "-A", "--no-lock", CLI, "--pre", "--dir", MIGRATIONS_DIR, "--database-url", url],
        expect: /Nothing to apply\./,
      },
    );
  }
  // Warm-up (transpiler caches, page cache), not counted.
  for (const c of commands) check(await timed(c.cmd), `${c.label} (warm-up)`, c.expect);

  const samples = commands.map(() => [] as number[]);
  const cpuSamples = commands.map(() => [] as number[]);
  for (let run = 0; run < NOOP_RUNS; run++) {
    progress(`A${DENO ? "/C" : ""}: no-op run ${run + 1}/${NOOP_RUNS}`);
    // Rotate the order so slow phases of a noisy machine do not always hit the same command.
    for (let k = 0; k < commands.length; k++) {
      const index = (k + run) % commands.length;
      const c = commands[index];
      const result = await timed(c.cmd);
      check(result, c.label, c.expect);
      samples[index].push(result.ms);
      cpuSamples[index].push(result.cpuMs);
    }
  }
  commands.forEach((c, i) =>
    rows.push({ section: c.section, label: c.label, command: shortCmd(c.cmd), stats: stats(samples[i]), cpuMs: stats(cpuSamples[i]).median })
  );
  return { setupMs: setup.ms, noopDb: db };
}

interface BResult {
  sm: Stats;
  psql: Stats;
  smInternal: Stats;
  /** sm/psql of the two runs made back to back, run by run: robust against slow phases of a noisy machine. */
  pairedRatios: number[];
  smCpu: number;
  psqlCpu: number;
}

async function sectionB(): Promise<BResult> {
  const sm: number[] = [];
  const floor: number[] = [];
  const internal: number[] = [];
  const smCpu: number[] = [];
  const floorCpu: number[] = [];
  for (let run = 0; run < RUNS; run++) {
    const order = run % 2 === 0 ? ["sm", "psql"] : ["psql", "sm"];
    for (const which of order) {
      progress(`B: run ${run + 1}/${RUNS}: ${which === "sm" ? "safemigrate --all" : "psql floor"} (${N} migrations)`);
      const db = await createDatabase(`${which}_${run}`);
      await checkpoint();
      if (which === "sm") {
        const result = await timed([BUN, CLI, "--all", "--dir", MIGRATIONS_DIR, "--database-url", urlFor(db)]);
        check(result, "safemigrate --all", new RegExp(`Applied ${N} migrations? in`));
        sm.push(result.ms);
        smCpu.push(result.cpuMs);
        const reported = /Applied \d+ migrations? in ([\d.]+) ms/.exec(result.stdout);
        if (reported) internal.push(Number(reported[1]));
      } else {
        const result = await timed([PSQL!, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", urlFor(db), "-f", PSQL_FILE]);
        check(result, "psql floor");
        floor.push(result.ms);
        floorCpu.push(result.cpuMs);
      }
      const count = await appliedCount(db);
      if (count !== N) throw new Error(`${which}: expected ${N} history rows, found ${count}`);
      await dropDatabase(db);
    }
  }
  const result = {
    sm: stats(sm),
    psql: stats(floor),
    smInternal: stats(internal.length ? internal : [NaN]),
    pairedRatios: sm.map((ms, i) => ms / floor[i]),
    smCpu: stats(smCpu).median,
    psqlCpu: stats(floorCpu).median,
  };
  rows.push(
    { section: "B", label: `bun safemigrate.ts --all (${N} migrations, fresh db)`, command: `bun safemigrate.ts --all --dir $TMP/migrations --database-url <fresh db>`, stats: result.sm, cpuMs: result.smCpu },
    { section: "B", label: `  of which "Applied ... in X ms" (in-process)`, command: "(from safemigrate's own summary line)", stats: result.smInternal, cpuMs: null },
    { section: "B", label: `psql floor (${N} x BEGIN; sql; INSERT history; COMMIT)`, command: `psql -X -q -v ON_ERROR_STOP=1 -d <fresh db> -f $TMP/floor.sql`, stats: result.psql, cpuMs: result.psqlCpu },
  );
  return result;
}

/** Which optional modules a process loaded: Bun's module registry at exit, and (strace) files opened. */
interface LoadCheck {
  label: string;
  /** Why libpg-query may be loaded here; undefined: it must not be. */
  libpgQueryNeeded?: string;
  /** The positive control: both must be seen. */
  control: boolean;
  registry: { pglite: boolean; libpgQuery: boolean };
  strace: { pglite: boolean; libpgQuery: boolean } | null;
}

async function loadCheck(
  label: string,
  argsFor: () => Promise<string[]>,
  expect?: RegExp,
  libpgQueryNeeded?: string,
  control = false,
): Promise<LoadCheck> {
  const preload = join(TMP, "trace-modules.ts");
  const registryOut = join(TMP, `modules-${Math.random().toString(36).slice(2)}.txt`);
  writeFileSync(
    preload,
    `import { writeFileSync } from "node:fs";\n` +
      `process.on("exit", () => writeFileSync(process.env.BENCH_MODULES_OUT!, Object.keys(require.cache).join("\\n")));\n`,
  );
  CHILD_ENV.BENCH_MODULES_OUT = registryOut;
  try {
    const result = await timed([BUN, "--preload", preload, CLI, ...(await argsFor())]);
    check(result, `${label} (module registry check)`, expect);
    const modules = readFileSync(registryOut, "utf8").split("\n");
    if (!modules.some((m) => m.includes("node_modules/postgres/"))) {
      throw new Error(`module registry check is not working: postgres.js is not in require.cache of ${label}`);
    }
    const registry = {
      pglite: modules.some((m) => m.includes("@electric-sql/pglite")),
      libpgQuery: modules.some((m) => m.includes("node_modules/libpg-query")),
    };
    let strace: LoadCheck["strace"] = null;
    if (STRACE) {
      const log = join(TMP, `strace-${Math.random().toString(36).slice(2)}.log`);
      const traced = await timed([STRACE, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", log, BUN, CLI, ...(await argsFor())]);
      if (traced.code === 0 && (!expect || expect.test(traced.stdout))) {
        // Only successful opens count: a failed resolution probe is not a load.
        const opened = readFileSync(log, "utf8").split("\n").filter((line) => /open/.test(line) && !/= -1 /.test(line));
        strace = {
          pglite: opened.some((l) => l.includes("node_modules/@electric-sql/pglite")),
          libpgQuery: opened.some((l) => l.includes("node_modules/libpg-query")),
        };
      } else {
        console.error(`\nbench: strace run of ${label} failed (exit ${traced.code}); relying on the module registry only\n${traced.stderr.slice(-500)}`);
      }
    }
    return { label, libpgQueryNeeded, control, registry, strace };
  } finally {
    delete CHILD_ENV.BENCH_MODULES_OUT;
  }
}

async function sectionD(noopDb: string): Promise<LoadCheck[]> {
  progress("D: module-load checks...");
  const help = await timed([BUN, CLI, "--help"]);
  const hasLint = help.stdout.includes("--no-lint");
  // Each run of an applying check gets a fresh database, so it really applies N migrations.
  let fresh = 0;
  const applying = (...extra: string[]) => async () => [
    "--pre", ...extra, "--dir", MIGRATIONS_DIR, "--database-url", urlFor(await createDatabase(`trace_${fresh++}`)),
  ];
  const noop = async () => ["--pre", "--dir", MIGRATIONS_DIR, "--database-url", urlFor(noopDb)];
  const applied = new RegExp(`Applied ${N} migrations`);
  const status = async () => ["--status", "--dir", MIGRATIONS_DIR, "--database-url", urlFor(noopDb)];
  // Nothing to apply: nothing to parse, so neither may be loaded. When applying, libpg-query may be
  // (the pre-apply lint and splitting into statements parse the SQL); it is reported, not judged.
  const parses = "allowed when applying: SQL to lint or split into statements";
  const checks = [
    await loadCheck(`--pre no-op, ${N} applied (server)`, noop, /Nothing to apply\./),
    await loadCheck(`--status, ${N} applied (server)`, status, /applied/),
    await loadCheck(`--pre applying ${N} (server${hasLint ? ", lint on: the default" : ""})`, applying(), applied, parses),
  ];
  if (hasLint) checks.push(await loadCheck(`--pre --no-lint applying ${N} (server)`, applying("--no-lint"), applied, parses));
  for (const name of [...created]) if (name.includes("trace_")) await dropDatabase(name);
  await dropDatabase(noopDb);
  // Positive control: PGlite in memory plus a `transaction: false` migration must load both.
  const controlDir = join(TMP, "control");
  mkdirSync(controlDir);
  writeFileSync(join(controlDir, "0001_control.sql"), `-- safe: before_deploy\n-- transaction: false\ncreate table control (id int);\n`);
  const control = async () => ["--all", "--dir", controlDir, "--database-url", "pglite:memory"];
  checks.push(await loadCheck("control: pglite:memory + transaction: false", control, /Applied 1 migration/, "control", true));
  return checks;
}

// ---------------------------------------------------------------------------
// environment description

function sh(cmd: string[]): string {
  try {
    const r = Bun.spawnSync(cmd, { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
    return r.exitCode === 0 ? r.stdout.toString().trim() : "?";
  } catch {
    return "?";
  }
}

async function environment(): Promise<string[]> {
  const [server] = await admin.unsafe(`select current_setting('server_version') as v, current_setting('fsync') as f,
    current_setting('synchronous_commit') as s`);
  const head = sh(["git", "rev-parse", "--short", "HEAD"]);
  const dirty = sh(["git", "status", "--porcelain", "--", "safemigrate.ts"]) !== "";
  const fileHash = createHash("sha256").update(readFileSync(CLI)).digest("hex").slice(0, 12);
  return [
    `bun ${Bun.version}` + (DENO ? `, ${sh([DENO, "--version"]).split("\n")[0]}` : ", deno: not used") +
      `, ${sh([PSQL!, "--version"])}`,
    `PostgreSQL server ${server.v} (fsync=${server.f}, synchronous_commit=${server.s})`,
    `${cpus().length} CPUs (${cpus()[0]?.model.trim() ?? "?"}), load average at start ${loadavg().map((x) => x.toFixed(2)).join(" ")}`,
    `measured: ${SOURCE}, snapshot sha256 ${fileHash} (git HEAD ${head}${dirty ? "; the working tree safemigrate.ts has uncommitted changes" : ""})`,
  ];
}

// ---------------------------------------------------------------------------
// report

function table(): string[] {
  const header = ["", "measurement", "median", "min", "max", "runs", "process CPU"];
  const body = rows.map((r) => [
    r.section, r.label, fmt(r.stats.median), fmt(r.stats.min), fmt(r.stats.max), String(r.stats.n), r.cpuMs === null ? "" : fmt(r.cpuMs),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i >= 2 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join("  ");
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...body.map(line)];
}

const yesNo = (b: boolean) => (b ? "yes" : "no");
const loaded = (c: LoadCheck, which: "pglite" | "libpgQuery") => c.registry[which] || Boolean(c.strace?.[which]);
/** A server-path check passes when PGlite is not loaded and libpg-query only where it is needed. */
const loadOk = (c: LoadCheck) => !loaded(c, "pglite") && (!loaded(c, "libpgQuery") || c.libpgQueryNeeded !== undefined);
function loadLine(c: LoadCheck): string {
  const strace = c.strace ? `; strace: pglite ${yesNo(c.strace.pglite)}, libpg-query ${yesNo(c.strace.libpgQuery)}` : "";
  return `${c.label}: pglite loaded: ${yesNo(c.registry.pglite)}, libpg-query loaded: ${yesNo(c.registry.libpgQuery)} (module registry${strace})`;
}

async function main(): Promise<void> {
  const startedAt = new Date();
  const env = await environment();
  const benchStart = performance.now();

  const { setupMs, noopDb } = await sectionA();
  const b = await sectionB();
  const loads = await sectionD(noopDb);
  progress("");

  const noop = rows.find((r) => r.label.startsWith("bun safemigrate.ts --pre"))!.stats;
  const bunStart = rows.find((r) => r.label.startsWith("bun -e 0"))!.stats;
  const version = rows.find((r) => r.label.startsWith("bun safemigrate.ts --version"))!.stats;
  const ratio = b.sm.median / b.psql.median;
  const paired = stats(b.pairedRatios);
  const perMigration = (b.sm.median - b.psql.median) / N;
  const serverChecks = loads.filter((c) => !c.control);
  const control = loads.find((c) => c.control)!;
  const controlOk = control.registry.pglite && control.registry.libpgQuery &&
    (!control.strace || (control.strace.pglite && control.strace.libpgQuery));
  const serverBad = serverChecks.filter((c) => !loadOk(c));

  const summary = [
    `A  no-op --pre median ${fmt(noop.median)} (target < ${TARGET_NOOP_MS} ms: ${noop.median < TARGET_NOOP_MS ? "MET" : "MISSED"}); ` +
    `of which bun start-up ${fmt(bunStart.median)}, start-up + loading safemigrate.ts/postgres.js (--version) ${fmt(version.median)}, ` +
    `reading ${N} files + database work ${fmt(noop.median - version.median)}`,
    `B  --all ${fmt(b.sm.median)} vs psql floor ${fmt(b.psql.median)}: ratio ${ratio.toFixed(2)}x (target <= ${TARGET_RATIO}x: ${ratio <= TARGET_RATIO ? "MET" : "MISSED"}); ` +
    `${perMigration >= 0 ? "+" : ""}${perMigration.toFixed(2)} ms per migration over the floor; ` +
    `run-by-run ratio median ${paired.median.toFixed(2)}x (min ${paired.min.toFixed(2)}x, max ${paired.max.toFixed(2)}x), ` +
    `ratio of the fastest runs ${(b.sm.min / b.psql.min).toFixed(2)}x; client process CPU ${fmt(b.smCpu)} vs psql ${fmt(b.psqlCpu)}`,
    `D  server path: pglite loaded: ${yesNo(serverChecks.some((c) => loaded(c, "pglite")))}; libpg-query loaded: ` +
    `${yesNo(serverChecks.some((c) => !c.libpgQueryNeeded && loaded(c, "libpgQuery")))} with nothing to apply (no-op --pre, --status), ` +
    `${yesNo(serverChecks.some((c) => c.libpgQueryNeeded && loaded(c, "libpgQuery")))} when applying` +
    ` — ${serverBad.length === 0 ? "OK" : `NOT OK: ${serverBad.map((c) => c.label).join(", ")}`}` +
    `; positive control ${controlOk ? "detected both" : "FAILED to detect them: the check is not trustworthy"}`,
  ];

  const command = `bun bench/bench.ts${process.argv.length > 2 ? " " + process.argv.slice(2).join(" ") : ""}`;
  const out: string[] = [];
  out.push("", `safemigrate benchmark — ${N} migrations, ${RUNS} runs for B, ${NOOP_RUNS} runs for A${DENO ? "/C" : ""}`, "");
  out.push(...env.map((e) => `  ${e}`), "");
  out.push(...table(), "");
  out.push(`(setup: the one-off --all that prepared A took ${fmt(setupMs)})`, "");
  out.push("Module loading (D):", ...loads.map((c) => `  ${loadLine(c)}`), "");
  out.push("Summary:", ...summary.map((s) => `  ${s}`), "");
  out.push(`bench wall time ${fmt(performance.now() - benchStart)}`, "");

  // Markdown block for the README.
  const md: string[] = [];
  md.push(`### Benchmark (${startedAt.toISOString().slice(0, 10)})`, "");
  md.push(`\`${command}\` — run ${startedAt.toISOString()}; ${N} migrations (\`create table t_NNNN (id int primary key, v text);\`, \`-- safe: before_deploy\`).`, "");
  md.push(...env.map((e) => `- ${e}`), "");
  md.push("| | measurement (whole process, spawn to exit) | median | min | max | runs | process CPU (median) |", "|---|---|---:|---:|---:|---:|---:|");
  for (const r of rows) {
    md.push(
      `| ${r.section} | ${r.label.trim().replaceAll("|", "\\|")} | ${fmt(r.stats.median)} | ${fmt(r.stats.min)} | ${fmt(r.stats.max)} | ${r.stats.n} | ${r.cpuMs === null ? "" : fmt(r.cpuMs)} |`,
    );
  }
  md.push("", "Commands (`$TMP` is the bench's temp dir, `<url>` a scratch database):", "");
  for (const r of rows) if (!r.command.startsWith("(")) md.push(`- ${r.section}: \`${r.command.replace(/postgres:\/\/\S+/, "<url>")}\``);
  md.push("", ...summary.map((s) => `- ${s}`), "");
  md.push(...loads.map((c) => `- ${loadLine(c)}`));

  console.log(out.join("\n"));
  console.log("Markdown (paste into the README):\n");
  console.log("```markdown");
  console.log(md.join("\n"));
  console.log("```");
}

let exitCode = 0;
try {
  await main();
} catch (error) {
  progress("");
  console.error(`bench: ${(error as Error).stack ?? error}`);
  exitCode = 1;
} finally {
  await cleanup();
}
process.exit(exitCode);
