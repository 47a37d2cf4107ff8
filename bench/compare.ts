#!/usr/bin/env bun
/**
 * safemigrate against its peers, whole processes, in one command:
 *
 *   bun bench/compare.ts [--n 1000] [--large 10000] [--runs 5] [--fleet 100]
 *                        [--database-url postgres://postgres@127.0.0.1:5432/postgres]
 *                        [--only noop,noop-large,status,plan,apply,work,startup,fleet] [--no-install]
 *                        [--sqitch-max 100] [--rev <git rev>]
 *
 * Peers, installed on first use into bench/.peers/ (gitignored): dbmate (the
 * npm package ships the Go binary; the binary is run directly, not its Node
 * shim), node-pg-migrate and graphile-migrate from npm, Sqitch from Debian
 * (`apt-get install -y sqitch libdbd-pg-perl`, when root and not on PATH).
 * The same SQL is written in each tool's own format. The floor is psql: one
 * session doing the same work (for a no-op or a status: reading the history
 * table; for applying: each file in its own transaction with a history insert).
 *
 * Every command of a workload runs once per round, the order rotating from
 * round to round (interleaved); each run is timed from spawn to exit, and
 * `/usr/bin/time -f` gives its user+system CPU and peak RSS. Reported: median
 * wall, min–max, ratio to the floor and to the fastest peer, CPU and memory.
 * Node-based peers run without NODE_EXTRA_CA_CERTS, and in the no-op also with
 * it (it costs every Node start 100–200 ms).
 *
 * With --rev, safemigrate.ts as committed at that revision runs next to the
 * working tree's in the start-up, no-op, apply, status and plan workloads (named
 * "@<rev>"), so a change is measured before and after in the same rounds.
 *
 * Scratch databases are named smcmp_<pid>_* and dropped at the end.
 */
import { copyFileSync, existsSync, mkdirSync, symlinkSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import postgres from "postgres";

const { values: opts } = parseArgs({
  args: process.argv.slice(2),
  options: {
    n: { type: "string", default: "1000" },
    large: { type: "string", default: "10000" },
    runs: { type: "string", default: "5" },
    fleet: { type: "string", default: "100" },
    "sqitch-max": { type: "string", default: "100" },
    "database-url": { type: "string", default: process.env.BENCH_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres" },
    only: { type: "string" },
    "no-install": { type: "boolean", default: false },
    rev: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
  strict: true,
});
if (opts.help) {
  console.log(readFileSync(import.meta.path, "utf8").split("/**")[1].split(" */")[0].replace(/^ \* ?/gm, "").trim());
  process.exit(0);
}
const N = Number(opts.n);
const LARGE = Number(opts.large);
const RUNS = Number(opts.runs);
const FLEET = Number(opts.fleet);
/** Sqitch (Perl, ~10 queries per change) takes about a second per change on a busy 2-core machine: only up to this many. */
const SQITCH_MAX = Number(opts["sqitch-max"]);
const ADMIN_URL = opts["database-url"]!;
const ONLY = opts.only ? new Set(opts.only.split(",")) : null;
const wanted = (name: string) => !ONLY || ONLY.has(name);

const ROOT = resolve(import.meta.dir, "..");
const PEERS = join(import.meta.dir, ".peers");
const WORK = mkdtempSync(join(tmpdir(), "smcmp-"));
// A snapshot of safemigrate.ts (next to a node_modules link), so editing it during a run cannot mix versions.
const CLI = join(WORK, "safemigrate.ts");
copyFileSync(join(ROOT, "safemigrate.ts"), CLI);
copyFileSync(join(ROOT, "package.json"), join(WORK, "package.json")); // Deno resolves npm imports through it
symlinkSync(join(ROOT, "node_modules"), join(WORK, "node_modules"));
const STACK_FLOOR = join(WORK, "stack-floor.ts");
copyFileSync(join(import.meta.dir, "stack-floor.ts"), STACK_FLOOR);
/** --rev: the same snapshot of safemigrate.ts at that revision, in its own folder beside the first. */
const REV = opts.rev ?? null;
const REV_CLI = REV ? join(WORK, "rev", "safemigrate.ts") : null;
if (REV && REV_CLI) {
  const shown = Bun.spawnSync(["git", "show", `${REV}:safemigrate.ts`], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  if (shown.exitCode !== 0) throw new Error(`git show ${REV}:safemigrate.ts failed: ${shown.stderr.toString().trim()}`);
  mkdirSync(join(WORK, "rev"));
  writeFileSync(REV_CLI, shown.stdout);
  copyFileSync(join(ROOT, "package.json"), join(WORK, "rev", "package.json"));
  symlinkSync(join(ROOT, "node_modules"), join(WORK, "rev", "node_modules"));
}
const CA = process.env.NODE_EXTRA_CA_CERTS ?? (existsSync("/etc/ssl/certs/ca-certificates.crt") ? "/etc/ssl/certs/ca-certificates.crt" : null);
const BASE_ENV: Record<string, string> = Object.fromEntries(
  Object.entries(process.env).filter(([k, v]) => v !== undefined && !["NODE_EXTRA_CA_CERTS", "DATABASE_URL", "SAFEMIGRATE", "CI"].includes(k)),
) as Record<string, string>;
BASE_ENV.NO_COLOR = "1";
/** A Node that runs .ts files (22.18+): $SAFEMIGRATE_TEST_NODE, the one on PATH, or the one .ci/run installs; null if none. */
const NODE_TS = [process.env.SAFEMIGRATE_TEST_NODE, Bun.which("node"), join(process.env.XDG_CACHE_HOME ?? join(process.env.HOME ?? "/root", ".cache"), "safemigrate-ci", "node24", "node_modules", ".bin", "node")]
  .find((node) => {
    if (!node || !existsSync(node)) return false;
    const [major, minor] = Bun.spawnSync([node, "-p", "process.versions.node"]).stdout.toString().trim().split(".").map(Number);
    return major > 22 || (major === 22 && minor >= 18);
  }) ?? null;

// ---------------------------------------------------------------------------
// peers

function sh(cmd: string[], cwd = ROOT, env = BASE_ENV): string {
  const r = Bun.spawnSync(cmd, { cwd, env, stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")} failed (${r.exitCode}):\n${r.stderr.toString()}${r.stdout.toString()}`);
  return r.stdout.toString();
}

function installPeers(): void {
  if (!existsSync(join(PEERS, "node_modules", "graphile-migrate"))) {
    if (opts["no-install"]) throw new Error(`peers are not installed in ${PEERS}`);
    mkdirSync(PEERS, { recursive: true });
    writeFileSync(join(PEERS, "package.json"), JSON.stringify({ private: true, name: "safemigrate-bench-peers" }));
    console.error("installing dbmate, node-pg-migrate, graphile-migrate into bench/.peers ...");
    sh(["npm", "install", "--no-audit", "--no-fund", "dbmate@2", "node-pg-migrate@9", "graphile-migrate@1", "pg@8"], PEERS);
  }
  if (!Bun.which("sqitch") && !opts["no-install"] && process.getuid?.() === 0 && Bun.which("apt-get")) {
    console.error("installing sqitch from Debian ...");
    try {
      sh(["apt-get", "install", "-y", "sqitch", "libdbd-pg-perl"], ROOT, { ...BASE_ENV, DEBIAN_FRONTEND: "noninteractive" });
    } catch (error) {
      console.error(`sqitch not installed: ${(error as Error).message.split("\n")[0]}`);
    }
  }
}

const DBMATE = () => join(PEERS, "node_modules", "@dbmate", "linux-x64", "bin", "dbmate");
const NPM_BIN = (name: string) => join(PEERS, "node_modules", ".bin", name);
const version = (cmd: string[]) => {
  try {
    return sh(cmd).trim().split("\n")[0];
  } catch {
    return "?";
  }
};

// ---------------------------------------------------------------------------
// the same SQL in each tool's format

type Tool = "safemigrate" | "dbmate" | "node-pg-migrate" | "graphile-migrate" | "sqitch" | "psql";
const pad = (i: number, n: number) => String(i).padStart(String(n).length, "0");
const small = (i: number, n: number) => `create table t_${pad(i, n)} (id int primary key, v text);`;
const real = (i: number, n: number) =>
  `create table w_${pad(i, n)} (id int primary key, v text);\ninsert into w_${pad(i, n)} select g, md5(g::text) from generate_series(1, 5000) g;\ncreate index on w_${pad(i, n)} (v);`;

function sha1(text: string): string {
  return new Bun.CryptoHasher("sha1").update(text).digest("hex");
}

/** Writes n migrations for `tool` under a fresh folder; returns what the tool is pointed at. */
function generate(tool: Tool, n: number, sqlOf: (i: number, n: number) => string, tag: string): string {
  const dir = join(WORK, `${tool}-${tag}`);
  if (existsSync(dir)) return dir;
  mkdirSync(dir, { recursive: true });
  const ids = Array.from({ length: n }, (_, k) => k + 1);
  if (tool === "safemigrate") {
    for (const i of ids) writeFileSync(join(dir, `${pad(i, n)}_m_${pad(i, n)}.sql`), `-- safe: before_deploy\n${sqlOf(i, n)}\n`);
  } else if (tool === "dbmate") {
    for (const i of ids) writeFileSync(join(dir, `${pad(i, n)}_m_${pad(i, n)}.sql`), `-- migrate:up\n${sqlOf(i, n)}\n\n-- migrate:down\n`);
  } else if (tool === "node-pg-migrate") {
    for (const i of ids) writeFileSync(join(dir, `${pad(i, n)}_m_${pad(i, n)}.sql`), `-- Up Migration\n${sqlOf(i, n)}\n\n-- Down Migration\n`);
  } else if (tool === "graphile-migrate") {
    const committed = join(dir, "migrations", "committed");
    mkdirSync(committed, { recursive: true });
    mkdirSync(join(dir, "migrations"), { recursive: true });
    writeFileSync(join(dir, "migrations", "current.sql"), "");
    writeFileSync(join(dir, ".gmrc"), JSON.stringify({ placeholders: {}, afterReset: [], afterAllMigrations: [], afterCurrent: [] }));
    let previous: string | null = null;
    for (const i of ids) {
      const body = `${sqlOf(i, n)}\n`;
      const hash: string = `sha1:${sha1(`${((previous ?? "") + "\n" + body.trim()).trim()}\n`)}`;
      writeFileSync(join(committed, `${String(i).padStart(6, "0")}.sql`), `--! Previous: ${previous ?? "-"}\n--! Hash: ${hash}\n\n${body}`);
      previous = hash;
    }
  } else if (tool === "sqitch") {
    for (const sub of ["deploy", "revert", "verify"]) mkdirSync(join(dir, sub));
    writeFileSync(join(dir, "sqitch.conf"), `[core]\n\tengine = pg\n\tplan_file = sqitch.plan\n\ttop_dir = .\n`);
    const plan = ["%syntax-version=1.0.0", "%project=bench", ""];
    for (const i of ids) {
      const name = `m_${pad(i, n)}`;
      writeFileSync(join(dir, "deploy", `${name}.sql`), `BEGIN;\n${sqlOf(i, n)}\nCOMMIT;\n`);
      writeFileSync(join(dir, "revert", `${name}.sql`), `-- nothing\n`);
      plan.push(`${name} 2026-01-01T00:00:00Z bench <bench@example.com> # ${name}`);
    }
    writeFileSync(join(dir, "sqitch.plan"), `${plan.join("\n")}\n`);
  } else {
    // psql floor: each file in its own transaction with a history row, like safemigrate.
    const lines: string[] = [`create table if not exists floor_history (id text primary key, checksum text, applied_at timestamptz);`];
    for (const i of ids) {
      lines.push(`begin;`, sqlOf(i, n), `insert into floor_history values ('${pad(i, n)}', md5('${i}'), clock_timestamp());`, `commit;`);
    }
    writeFileSync(join(dir, "floor.sql"), `${lines.join("\n")}\n`);
  }
  return dir;
}

// ---------------------------------------------------------------------------
// databases

const admin = postgres(ADMIN_URL, { max: 1, onnotice: () => {} });
const created = new Set<string>();
let counter = 0;
async function freshDatabase(label: string): Promise<string> {
  const name = `smcmp_${process.pid}_${label.replace(/\W/g, "_")}_${counter++}`;
  await admin.unsafe(`create database ${name}`);
  created.add(name);
  const url = new URL(ADMIN_URL);
  url.pathname = `/${name}`;
  return url.toString();
}
async function dropDatabase(url: string): Promise<void> {
  const name = new URL(url).pathname.slice(1);
  await admin.unsafe(`drop database if exists ${name} with (force)`);
  created.delete(name);
}
async function dropAll(): Promise<void> {
  for (const name of [...created]) await admin.unsafe(`drop database if exists ${name} with (force)`).catch(() => {});
  await admin.end({ timeout: 5 }).catch(() => {});
  rmSync(WORK, { recursive: true, force: true });
}
process.on("SIGINT", async () => {
  await dropAll();
  process.exit(130);
});

// ---------------------------------------------------------------------------
// commands and their measurement

interface Command {
  name: string;
  argv: string[];
  cwd?: string;
  env?: Record<string, string>;
  /** Not a peer: the floor, safemigrate itself, or the least a program on safemigrate's stack can do (bench/stack-floor.ts). */
  kind: "floor" | "self" | "peer" | "stack";
  /** Exit codes that mean it worked (graphile-migrate and sqitch status exit 1 when something is pending). */
  okCodes?: number[];
}

/** How each tool is told to do `action` with migrations in `dir` on `url`. */
function commandOf(tool: Tool, action: "apply" | "noop" | "status" | "plan", dir: string, url: string, extra: { ca?: boolean; deno?: boolean; node?: boolean; phase?: "pre" | "all"; rev?: boolean } = {}): Command {
  const env = { ...BASE_ENV, ...(extra.ca && CA ? { NODE_EXTRA_CA_CERTS: CA } : {}) };
  const suffix = extra.ca ? " +CA" : "";
  switch (tool) {
    case "safemigrate": {
      const script = extra.rev && REV_CLI ? REV_CLI : CLI;
      const runtime = extra.deno ? ["deno", "run", "-A", script] : extra.node && NODE_TS ? [NODE_TS, script] : [process.execPath, script];
      const args = action === "status" ? ["--status"] : action === "plan" ? ["--all", "--plan"] : [`--${extra.phase ?? "all"}`];
      const label = action === "noop" ? `safemigrate --${extra.phase ?? "all"}` : action === "status" ? "safemigrate --status" : action === "plan" ? "safemigrate --all --plan" : "safemigrate --all";
      const name = label + (extra.deno ? " (deno)" : extra.node ? " (node)" : "") + (extra.rev ? ` @${REV}` : "");
      return { name, argv: [...runtime, ...args, "--dir", dir, "--database-url", url], env, kind: "self" };
    }
    case "dbmate": {
      const verb = action === "status" || action === "plan" ? "status" : "migrate";
      // dbmate's driver (lib/pq) requires SSL unless told otherwise; libpq and the Node drivers do not.
      const plain = url.includes("sslmode=") ? url : `${url}${url.includes("?") ? "&" : "?"}sslmode=disable`;
      return { name: `dbmate ${verb}`, argv: [DBMATE(), "--url", plain, "--migrations-dir", dir, "--no-dump-schema", verb], env, kind: "peer" };
    }
    case "node-pg-migrate": {
      const dry = action === "plan" || action === "status" ? ["--dry-run"] : [];
      return { name: `node-pg-migrate up${dry.length ? " --dry-run" : ""}${suffix}`, argv: ["node", NPM_BIN("node-pg-migrate"), "up", "-m", dir, ...dry], env: { ...env, DATABASE_URL: url }, kind: "peer" };
    }
    case "graphile-migrate": {
      const verb = action === "status" || action === "plan" ? "status" : "migrate";
      // `status` validates a shadow database URL it does not use here.
      return { name: `graphile-migrate ${verb}${suffix}`, argv: ["node", NPM_BIN("graphile-migrate"), verb], cwd: dir, env: { ...env, DATABASE_URL: url, SHADOW_DATABASE_URL: `${url}_shadow` }, kind: "peer", okCodes: action === "plan" ? [0, 1] : [0] };
    }
    case "sqitch": {
      const verb = action === "status" || action === "plan" ? "status" : "deploy";
      const target = url.replace(/^postgres(ql)?:/, "db:pg:");
      return { name: `sqitch ${verb}`, argv: ["sqitch", verb, target], cwd: dir, env: { ...env, SQITCH_FULLNAME: "bench", SQITCH_EMAIL: "bench@example.com" }, kind: "peer", okCodes: action === "plan" ? [0, 1] : [0] };
    }
    case "psql": {
      const psql = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url];
      if (action === "apply") return { name: "psql (floor)", argv: [...psql, "-f", join(dir, "floor.sql")], env, kind: "floor" };
      const query = action === "noop" ? "select count(*) from safemigrate_history" : "select * from safemigrate_history order by id";
      return { name: "psql (floor)", argv: [...psql, "-At", "-c", query], env, kind: "floor" };
    }
  }
}

interface Sample {
  wallMs: number;
  cpuMs: number;
  rssKb: number;
}

async function runOnce(command: Command): Promise<Sample> {
  const timeFile = join(WORK, `time-${counter++}.txt`);
  const started = performance.now();
  const child = Bun.spawn(["/usr/bin/time", "-f", "%U %S %M", "-o", timeFile, ...command.argv], {
    cwd: command.cwd ?? ROOT,
    env: command.env ?? BASE_ENV,
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
  });
  const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  const wallMs = performance.now() - started;
  if (!(command.okCodes ?? [0]).includes(code)) throw new Error(`${command.name} exited ${code}:\n${err.slice(0, 1500)}\n...\n${out.slice(-500)}`);
  const [user, sys, rss] = readFileSync(timeFile, "utf8").trim().split("\n").pop()!.split(" ").map(Number);
  return { wallMs, cpuMs: (user + sys) * 1000, rssKb: rss };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

interface Row {
  name: string;
  kind: Command["kind"];
  samples: Sample[];
  /** Runs that failed (exit code, or a wrong result): reported, not timed. */
  failures: string[];
}

/**
 * Runs every contender RUNS times, rotating the order each round. `prepare`
 * (untimed) gives the command for one run, e.g. on a fresh database; `check`
 * (untimed) verifies what it did.
 */
async function interleaved(
  contenders: { name: string; prepare: () => Promise<Command>; check?: (command: Command) => Promise<void> }[],
  runs = RUNS,
): Promise<Row[]> {
  const rows: Row[] = contenders.map((c) => ({ name: c.name, kind: "peer", samples: [], failures: [] }));
  for (let round = 0; round < runs; round++) {
    for (let k = 0; k < contenders.length; k++) {
      const index = (k + round) % contenders.length;
      const command = await contenders[index].prepare();
      rows[index].kind = command.kind;
      // A failed run of one tool is reported and the bench goes on.
      try {
        const sample = await runOnce(command);
        await contenders[index].check?.(command);
        rows[index].samples.push(sample);
      } catch (error) {
        const message = (error as Error).message;
        rows[index].failures.push(message.split("\n").find((l) => /error/i.test(l)) ?? message.split("\n")[0]);
        console.error(`  ${rows[index].name}: run ${round + 1} failed: ${message.slice(0, 600)}`);
      }
    }
  }
  return rows;
}

const fmt = (ms: number) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(ms < 10 ? 1 : 0)} ms`);

function report(title: string, rows: Row[]): string {
  const floor = rows.find((r) => r.kind === "floor");
  const peers = rows.filter((r) => r.kind === "peer" && r.samples.length > 0);
  const fastestPeer = peers.length ? Math.min(...peers.map((r) => median(r.samples.map((s) => s.wallMs)))) : null;
  const lines = [`### ${title}`, "", "| command | median | min–max | x floor | x fastest peer | CPU (user+sys) | peak RSS |", "|---|---:|---:|---:|---:|---:|---:|"];
  for (const r of rows) {
    if (r.samples.length === 0) {
      lines.push(`| ${r.name} | failed | ${r.failures.length} runs | | | | |`);
      continue;
    }
    const walls = r.samples.map((s) => s.wallMs);
    const m = median(walls);
    const floorM = floor ? median(floor.samples.map((s) => s.wallMs)) : null;
    lines.push(
      `| ${r.name} | ${fmt(m)} | ${fmt(Math.min(...walls))}–${fmt(Math.max(...walls))} | ${floorM ? (m / floorM).toFixed(2) : "—"} | ` +
        `${fastestPeer ? (m / fastestPeer).toFixed(2) : "—"} | ${fmt(median(r.samples.map((s) => s.cpuMs)))} | ${(median(r.samples.map((s) => s.rssKb)) / 1024).toFixed(0)} MB |`,
    );
  }
  for (const r of rows.filter((row) => row.failures.length > 0)) lines.push(`\n${r.name}: ${r.failures.length} of ${r.failures.length + r.samples.length} runs failed (${r.failures[0].slice(0, 200)})`);
  const text = `${lines.join("\n")}\n`;
  console.log(`\n${text}`);
  return text;
}

// ---------------------------------------------------------------------------
// workloads

const ALL_PEERS: Tool[] = ["dbmate", "node-pg-migrate", "graphile-migrate", ...(Bun.which("sqitch") ? ["sqitch" as Tool] : [])];
const skipped: string[] = [];
/** The peers measured at n migrations (Sqitch only up to --sqitch-max). */
function peersFor(n: number, what: string): Tool[] {
  if (n > SQITCH_MAX && ALL_PEERS.includes("sqitch")) skipped.push(`${what}: sqitch left out (${n} > --sqitch-max ${SQITCH_MAX})`);
  return ALL_PEERS.filter((t) => t !== "sqitch" || n <= SQITCH_MAX);
}

async function historyCount(url: string, table: string): Promise<number> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const [row] = await sql.unsafe(`select count(*)::int as n from ${table}`);
    return row.n;
  } finally {
    await sql.end({ timeout: 5 });
  }
}
const HISTORY_TABLE: Record<Tool, string> = {
  safemigrate: "safemigrate_history where applied_at is not null",
  dbmate: "schema_migrations",
  "node-pg-migrate": "pgmigrations",
  "graphile-migrate": "graphile_migrate.migrations",
  sqitch: "sqitch.changes",
  psql: "floor_history",
};

/** One database per tool with all n migrations applied (untimed), for the no-op, status and plan workloads. */
const applied = new Map<string, { dir: string; url: string }>();
async function appliedDatabases(tools: Tool[], n: number, tag: string): Promise<Map<Tool, { dir: string; url: string }>> {
  const out = new Map<Tool, { dir: string; url: string }>();
  for (const tool of tools) {
    const known = applied.get(`${tool}-${tag}`);
    if (known) {
      out.set(tool, known);
      continue;
    }
    const dir = generate(tool, n, small, tag);
    const url = await freshDatabase(`${tool}_${tag}`);
    const started = performance.now();
    const setUp = commandOf(tool, "apply", dir, url);
    // node-pg-migrate applies everything in one transaction by default: 10,000 new tables exceed the server's lock table.
    if (tool === "node-pg-migrate" && n > 1000) setUp.argv.push("--no-single-transaction");
    await runOnce(setUp);
    const count = await historyCount(url, HISTORY_TABLE[tool]);
    if (count !== n) throw new Error(`${tool} applied ${count} of ${n}`);
    console.error(`  set up ${tool} with ${n} applied in ${fmt(performance.now() - started)}`);
    out.set(tool, { dir, url });
    applied.set(`${tool}-${tag}`, { dir, url });
  }
  return out;
}

const fixed = (command: Command) => ({ name: command.name, prepare: async () => command });

/** bench/stack-floor.ts with `args` (see there), under Bun or Deno; `what` names what it does. */
function stackFloor(what: string, args: string[], deno = false): Command {
  const library = args[0] === "--parse" ? "libpg-query" : "postgres.js";
  const runtime = deno ? ["deno", "run", "-A"] : [process.execPath];
  return { name: `stack: ${deno ? "deno" : "bun"} + ${library}, ${what}`, argv: [...runtime, STACK_FLOOR, ...args], env: BASE_ENV, kind: "stack" };
}

async function noopWorkload(n: number, tag: string, withVariants: boolean): Promise<string> {
  const dbs = await appliedDatabases(["safemigrate", ...peersFor(n, `no-op ${n}`)], n, tag);
  const sm = dbs.get("safemigrate")!;
  const contenders = [
    fixed(commandOf("psql", "noop", sm.dir, sm.url)),
    fixed(stackFloor("read the history", [sm.url])),
    fixed(stackFloor("read the history, read and hash the files", [sm.url, sm.dir])),
    ...(withVariants && Bun.which("deno") ? [fixed(stackFloor("read the history, read and hash the files", [sm.url, sm.dir], true))] : []),
    fixed(commandOf("safemigrate", "noop", sm.dir, sm.url, { phase: "pre" })),
    fixed(commandOf("safemigrate", "noop", sm.dir, sm.url, { phase: "all" })),
    ...(withVariants && Bun.which("deno") ? [fixed(commandOf("safemigrate", "noop", sm.dir, sm.url, { phase: "pre", deno: true }))] : []),
    ...(REV ? [fixed(commandOf("safemigrate", "noop", sm.dir, sm.url, { phase: "pre", rev: true })), fixed(commandOf("safemigrate", "noop", sm.dir, sm.url, { phase: "all", rev: true }))] : []),
    ...(REV && withVariants && Bun.which("deno") ? [fixed(commandOf("safemigrate", "noop", sm.dir, sm.url, { phase: "pre", deno: true, rev: true }))] : []),
    ...[...dbs].filter(([t]) => t !== "safemigrate").flatMap(([tool, { dir, url }]) => [
      fixed(commandOf(tool, "noop", dir, url)),
      ...(withVariants && CA && (tool === "node-pg-migrate" || tool === "graphile-migrate") ? [fixed(commandOf(tool, "noop", dir, url, { ca: true }))] : []),
    ]),
  ];
  return report(`No-op, ${n.toLocaleString("en")} applied`, await interleaved(contenders));
}

async function statusWorkload(n: number): Promise<string> {
  const dbs = await appliedDatabases(["safemigrate", ...peersFor(n, `status ${n}`)], n, n === LARGE ? "large" : "n");
  const sm = dbs.get("safemigrate")!;
  const contenders = [
    fixed(commandOf("psql", "status", sm.dir, sm.url)),
    fixed(commandOf("safemigrate", "status", sm.dir, sm.url)),
    ...(REV ? [fixed(commandOf("safemigrate", "status", sm.dir, sm.url, { rev: true }))] : []),
    ...[...dbs].filter(([t]) => t !== "safemigrate").map(([tool, { dir, url }]) => fixed(commandOf(tool, "status", dir, url))),
  ];
  return report(`Status, ${n.toLocaleString("en")} applied`, await interleaved(contenders));
}

async function planWorkload(n: number): Promise<string> {
  const tools: Tool[] = ["safemigrate", ...peersFor(n, `plan ${n}`)];
  // Pending: an empty database that each tool has initialised (its history table exists, nothing applied).
  const contenders = [];
  const floorDb = await freshDatabase("plan_floor");
  await admin.unsafe(`select 1`);
  const sql = postgres(floorDb, { max: 1, onnotice: () => {} });
  await sql.unsafe(`create table safemigrate_history (id text primary key, checksum text, safe text, phase text, detected_at timestamptz, applied_at timestamptz, duration_ms integer, down_sql text, depends text, note text)`);
  await sql.end();
  contenders.push(fixed(commandOf("psql", "status", generate("safemigrate", n, small, "large"), floorDb)));
  for (const tool of tools) {
    const dir = generate(tool, n, small, "large");
    const url = await freshDatabase(`${tool}_plan`);
    contenders.push(fixed(commandOf(tool, "plan", dir, url)));
    if (tool === "safemigrate" && REV) contenders.push(fixed(commandOf(tool, "plan", dir, url, { rev: true })));
  }
  return report(`Plan, ${n.toLocaleString("en")} pending`, await interleaved(contenders));
}

async function applyWorkload(n: number, sqlOf: typeof small, tag: string, title: string, runs = RUNS): Promise<string> {
  const tools: Tool[] = ["psql", "safemigrate", ...peersFor(n, title.split(" (")[0])];
  // safemigrate under Node as well: its memory there depends on how V8 compiles libpg-query (README, "WebAssembly under Node and Deno").
  type Variant = { tool: Tool; node?: boolean; rev?: boolean };
  const variants = tools.flatMap((tool): Variant[] =>
    tool !== "safemigrate" ? [{ tool }] : [{ tool }, ...(NODE_TS ? [{ tool, node: true }] : []), ...(REV ? [{ tool, rev: true }] : [])]
  );
  const contenders = variants.map(({ tool, node, rev }) => {
    const dir = generate(tool, n, sqlOf, tag);
    let url = "";
    return {
      name: tool,
      prepare: async () => {
        url = await freshDatabase(`${tool}_${tag}${node ? "_node" : ""}${rev ? "_rev" : ""}`);
        await admin.unsafe("checkpoint");
        return commandOf(tool, "apply", dir, url, { node, rev });
      },
      check: async () => {
        const count = await historyCount(url, HISTORY_TABLE[tool]);
        if (count !== n) throw new Error(`${tool} applied ${count} of ${n}`);
        await dropDatabase(url);
      },
    };
  });
  // The stack's floor for applying: libpg-query parsing the files (the gate's part), postgres.js applying them.
  const stackDir = generate("safemigrate", n, sqlOf, tag);
  let stackUrl = "";
  const stack = [
    { name: "stack: bun + libpg-query, parse the files", prepare: async () => stackFloor("parse the files", ["--parse", stackDir]) },
    {
      name: "stack: bun + postgres.js, apply the files (two round trips each)",
      prepare: async () => {
        stackUrl = await freshDatabase(`stack_${tag}`);
        await admin.unsafe("checkpoint");
        return stackFloor("apply the files (two round trips each)", ["--apply", stackUrl, stackDir]);
      },
      check: async () => {
        const count = await historyCount(stackUrl, "stack_history");
        if (count !== n) throw new Error(`the stack floor applied ${count} of ${n}`);
        await dropDatabase(stackUrl);
      },
    },
  ];
  const rows = await interleaved([...contenders, ...stack], runs);
  for (const [i, row] of rows.entries()) if (i < variants.length) row.name = commandOf(variants[i].tool, "apply", "", "", variants[i]).name;
  return report(title, rows);
}

async function startupWorkload(): Promise<string> {
  const deno = Bun.which("deno");
  const cmd = (name: string, argv: string[]): Command => ({ name, argv, env: BASE_ENV, kind: name.includes("-e 0") || name.includes("eval 0") ? "floor" : "self" });
  const contenders = [
    fixed(cmd("bun -e 0", [process.execPath, "-e", "0"])),
    fixed(cmd("bun safemigrate.ts --version", [process.execPath, CLI, "--version"])),
    fixed(cmd("bun safemigrate.ts --help", [process.execPath, CLI, "--help"])),
    ...(deno ? [fixed({ ...cmd("deno eval 0", ["deno", "eval", "0"]), kind: "peer" as const }), fixed(cmd("deno run -A safemigrate.ts --version", ["deno", "run", "-A", CLI, "--version"]))] : []),
    ...(REV_CLI ? [
      fixed(cmd(`bun safemigrate.ts --version @${REV}`, [process.execPath, REV_CLI, "--version"])),
      fixed(cmd(`bun safemigrate.ts --help @${REV}`, [process.execPath, REV_CLI, "--help"])),
      ...(deno ? [fixed(cmd(`deno run -A safemigrate.ts --version @${REV}`, ["deno", "run", "-A", REV_CLI, "--version"]))] : []),
    ] : []),
  ];
  return report("Start-up (floor: `bun -e 0`; `deno eval 0` listed as the peer)", await interleaved(contenders, Math.max(RUNS, 11)));
}

async function fleetWorkload(): Promise<string> {
  const dir = generate("safemigrate", 10, small, "fleet");
  const urls = await Promise.all(Array.from({ length: FLEET }, () => freshDatabase("fleet")));
  const targets = join(WORK, "targets.txt");
  writeFileSync(targets, `# ${FLEET} bench databases\n${urls.join("\n")}\n`);
  const fleetCmd = (phase: string, parallel: number): Command => ({
    name: `safemigrate --${phase} --targets (${FLEET} databases, --parallel ${parallel})`,
    argv: [process.execPath, CLI, `--${phase}`, "--dir", dir, "--targets", targets, "--parallel", String(parallel)],
    kind: "self",
  });
  // Applying: every database gets 10 migrations; one run (then they are applied).
  const apply = await runOnce(fleetCmd("all", 4));
  for (const url of [urls[0], urls[FLEET - 1]]) {
    if ((await historyCount(url, HISTORY_TABLE.safemigrate)) !== 10) throw new Error(`fleet apply missed ${url}`);
  }
  const single = fixed(commandOf("safemigrate", "noop", dir, urls[0], { phase: "pre" }));
  const rows = await interleaved([single, fixed(fleetCmd("pre", 4)), fixed(fleetCmd("pre", 8))]);
  const singleMs = median(rows[0].samples.map((s) => s.wallMs));
  let text = report(`Fleet: no-op --pre on ${FLEET} databases of 10 migrations (vs one database)`, rows);
  text += `\n${FLEET} x the single no-op = ${fmt(singleMs * FLEET)}; the fleet no-op takes ` +
    rows.slice(1).map((r) => `${(median(r.samples.map((s) => s.wallMs)) / (singleMs * FLEET) * 100).toFixed(1)}% of that (${r.name.split(", ")[1]}`).join("; ") +
    `.\nApplying 10 migrations on each of the ${FLEET} databases (--all --parallel 4, one run): ${fmt(apply.wallMs)}, CPU ${fmt(apply.cpuMs)}, peak RSS ${(apply.rssKb / 1024).toFixed(0)} MB.\n`;
  console.log(text.split("\n").slice(-3).join("\n"));
  return text;
}

// ---------------------------------------------------------------------------

installPeers();
const sections: string[] = [];
const started = new Date();
const out = join(import.meta.dir, "compare-results.md");
// Each section is written as soon as it is measured: a long run stopped half-way keeps what it measured.
const keep = (section: string) => {
  sections.push(section);
  writeFileSync(out, `(partial: ${sections.length} sections so far)\n\n${sections.join("\n")}`);
};
try {
  if (wanted("startup")) keep(await startupWorkload());
  if (wanted("noop")) keep(await noopWorkload(N, "n", true));
  if (wanted("apply")) keep(await applyWorkload(N, small, "apply", `Apply ${N.toLocaleString("en")} small migrations (create table), fresh database each run`));
  if (wanted("fleet")) keep(await fleetWorkload());
  if (wanted("noop-large")) keep(await noopWorkload(LARGE, "large", false));
  if (wanted("status")) keep(await statusWorkload(LARGE));
  if (wanted("plan")) keep(await planWorkload(LARGE));
  if (wanted("work")) keep(await applyWorkload(100, real, "work", "Apply 100 migrations doing real work (5,000 rows and an index each)", Math.max(3, Math.min(RUNS, 5))));
} finally {
  await dropAll();
}

const [pgVersion] = await (async () => {
  const sql = postgres(ADMIN_URL, { max: 1 });
  try {
    return [(await sql`show server_version`)[0].server_version];
  } finally {
    await sql.end();
  }
})();
const header = [
  `## safemigrate vs peers (${started.toISOString().slice(0, 16)}Z)`,
  "",
  `\`bun bench/compare.ts ${process.argv.slice(2).join(" ")}\`; ${cpus().length} × ${cpus()[0]?.model ?? "cpu"}, load average at start ${loadavg().map((l) => l.toFixed(2)).join(" ")}; ` +
    `PostgreSQL ${pgVersion}; Bun ${Bun.version}; ${version(["deno", "--version"])}; Node ${version(["node", "--version"])} (peers)${NODE_TS ? `, ${version([NODE_TS, "--version"])} (safemigrate under Node)` : ""}; ` +
    `${version([DBMATE(), "--version"])}; node-pg-migrate ${JSON.parse(readFileSync(join(PEERS, "node_modules", "node-pg-migrate", "package.json"), "utf8")).version}; ` +
    `graphile-migrate ${JSON.parse(readFileSync(join(PEERS, "node_modules", "graphile-migrate", "package.json"), "utf8")).version}; ` +
    `${Bun.which("sqitch") ? version(["sqitch", "--version"]) : "sqitch not installed"}. ${RUNS} interleaved runs per command (start-up: ${Math.max(RUNS, 11)}).`,
  "",
  ...skipped.map((s) => `- ${s}`),
  "",
].join("\n");
writeFileSync(out, `${header}\n${sections.join("\n")}`);
console.log(`\nwritten to ${out}`);
