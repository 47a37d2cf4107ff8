/**
 * Shared fixtures: temporary migration directories, fresh databases (one per
 * test, on the real server and on real PGlite), and running the CLI as a user would.
 */
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import postgres from "postgres";
import { type Database, connect, type Migration, parseMigration, type RunOptions } from "../safemigrate.ts";

export const ROOT = resolve(import.meta.dir, "..");
/** GNU time, which reports one process's peak memory (.ci/run installs it); null when missing. */
export const TIME = existsSync("/usr/bin/time") ? "/usr/bin/time" : null;
export const CLI = join(ROOT, "safemigrate.ts");

/** The server the integration tests use; each test creates its own database on it. */
export const SERVER_URL = process.env.SAFEMIGRATE_TEST_DATABASE_URL || null;
/** Under CI the server tests must run: a missing server is a failure, not a skip. */
export const SERVER_REQUIRED = Boolean(process.env.CI);

if (!SERVER_URL) {
  console.warn(
    "\n[safemigrate tests] SAFEMIGRATE_TEST_DATABASE_URL is not set: PostgreSQL server tests are SKIPPED." +
      (SERVER_REQUIRED ? " CI is set, so they will FAIL instead." : "") + "\n",
  );
}

const cleanups: (() => Promise<void> | void)[] = [];
/** Everything created for a test is removed in afterEach (registered by each test file). */
export async function cleanup(): Promise<void> {
  for (const undo of cleanups.splice(0).reverse()) await undo();
}

export function tempDir(prefix = "safemigrate-test-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A migrations directory holding exactly these files ("0001_a" -> "0001_a.sql"). */
export function migrationsDir(files: Record<string, string>): string {
  const dir = tempDir("safemigrate-migrations-");
  for (const [id, text] of Object.entries(files)) writeFileSync(join(dir, id.endsWith(".sql") ? id : `${id}.sql`), text);
  return dir;
}

/** A parsed migration for planner tests, with the default or given dependencies. */
export function migration(
  id: string,
  front: { safe?: string; depends?: string[]; delay?: string } = {},
  sql = `select '${id}';`,
): Migration {
  const lines = [
    front.safe ? `-- safe: ${front.safe}` : null,
    front.delay ? `-- delay: ${front.delay}` : null,
  ].filter(Boolean);
  const { declaredDepends, ...rest } = parseMigration(id, `${id}.sql`, [...lines, sql].join("\n"));
  return { ...rest, depends: front.depends ?? declaredDepends?.value ?? [], dependsLine: declaredDepends?.line ?? null };
}

let serverAdmin: postgres.Sql | null = null;

/** A new empty database on the test server, dropped after the test. */
export async function serverDatabaseUrl(): Promise<string> {
  if (!SERVER_URL) throw new Error("SAFEMIGRATE_TEST_DATABASE_URL is not set");
  serverAdmin ??= postgres(SERVER_URL, { max: 1, onnotice: () => {} });
  const name = `safemigrate_test_${process.pid}_${Math.random().toString(36).slice(2, 10)}`;
  await serverAdmin.unsafe(`create database ${name}`);
  cleanups.push(async () => {
    await serverAdmin!.unsafe(`drop database if exists ${name} with (force)`);
  });
  const url = new URL(SERVER_URL);
  url.pathname = `/${name}`;
  return url.toString();
}

const PGLITE_TEMPLATE = join(tmpdir(), `safemigrate-pglite-template-${process.pid}`);

/**
 * A new PGlite database directory. initdb in WASM takes seconds, so the first
 * call makes a template and every test gets a copy of it (opening one is fast).
 */
export async function pgliteDatabaseUrl(): Promise<string> {
  if (!existsSync(join(PGLITE_TEMPLATE, "PG_VERSION"))) {
    mkdirSync(PGLITE_TEMPLATE, { recursive: true });
    const db = await connect(`pglite:${PGLITE_TEMPLATE}`);
    await db.close();
    process.on("exit", () => rmSync(PGLITE_TEMPLATE, { recursive: true, force: true }));
  }
  const dir = join(tempDir("safemigrate-pglite-"), "db");
  cpSync(PGLITE_TEMPLATE, dir, { recursive: true });
  return `pglite:${dir}`;
}

export interface Backend {
  name: "postgres" | "pglite";
  available: boolean;
  /** A fresh, empty database for one test. */
  databaseUrl(): Promise<string>;
}

/** The same test cases run against both; the server one is skipped (visibly) without a server. */
export const BACKENDS: Backend[] = [
  { name: "postgres", available: SERVER_URL !== null, databaseUrl: serverDatabaseUrl },
  { name: "pglite", available: true, databaseUrl: pgliteDatabaseUrl },
];

/** Opens a database only for the duration of `work`: an embedded one has one owner at a time (the CLI is another). */
export async function withDb<T>(url: string, work: (db: Database) => Promise<T>): Promise<T> {
  const db = await connect(url);
  try {
    return await work(db);
  } finally {
    await db.close();
  }
}

/** Opens a database for a test and closes it afterwards. */
export async function open(url: string): Promise<Database> {
  const db = await connect(url);
  cleanups.push(() => db.close());
  return db;
}

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
  /** With `measureMemory`: the process's peak resident memory, in bytes (from /usr/bin/time). */
  peakRssBytes?: number;
}

/** The environment a user's shell would give the CLI, minus anything that changes its defaults. */
export function cleanEnv(extra: Record<string, string | undefined> = {}): Record<string, string> {
  const env: Record<string, string | undefined> = { ...process.env, NO_COLOR: "1", ...extra };
  for (const name of Object.keys(env)) {
    const changesDefaults = ["DATABASE_URL", "SAFEMIGRATE", "DYNO", "FLY_APP_NAME", "RENDER", "CI"].includes(name) ||
      /^(PG|SAFEMIGRATE_)/.test(name);
    if (changesDefaults && !(name in extra)) delete env[name];
  }
  return Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined)) as Record<string, string>;
}

export type Runtime = "bun" | "deno" | "node";

/** A Node that runs .ts files (22.18+): SAFEMIGRATE_TEST_NODE (.ci/run installs Node 24 from npm), else the PATH's if new enough. */
function findNode(): string | null {
  const candidate = process.env.SAFEMIGRATE_TEST_NODE || Bun.which("node");
  if (!candidate) return null;
  const version = Bun.spawnSync([candidate, "--version"]).stdout.toString().trim().replace(/^v/, "").split(".").map(Number);
  const [major, minor] = version;
  return major > 22 || (major === 22 && minor >= 18) ? candidate : null;
}

/** How to run the CLI under each runtime; null when that runtime is not installed. */
export const RUNTIMES: Record<Runtime, string[] | null> = {
  bun: [process.execPath],
  deno: Bun.which("deno") ? ["deno", "run", "-A"] : null,
  node: ((node) => (node ? [node] : null))(findNode()),
};
/** Under CI every runtime must be there: a missing one fails its tests instead of skipping them. */
export const RUNTIMES_REQUIRED = Boolean(process.env.CI);

for (const [name, command] of Object.entries(RUNTIMES)) {
  if (!command) {
    console.warn(`\n[safemigrate tests] ${name === "node" ? "no Node 22.18+ (set SAFEMIGRATE_TEST_NODE)" : `${name} is not on PATH`}: ` +
      `its runtime tests are ${RUNTIMES_REQUIRED ? "going to FAIL (CI is set)" : "SKIPPED"}.\n`);
  }
}

/** The command line that runs the CLI under `runtime`; throws when it is missing (the test fails, as CI wants). */
export function cliCommand(runtime: Runtime, args: string[]): string[] {
  const command = RUNTIMES[runtime];
  if (!command) throw new Error(`${runtime} is not installed (CI is set, so this fails instead of skipping)`);
  return [...command, CLI, ...args];
}

/** Runs `bun safemigrate.ts ...args` (or under another runtime) as a separate process, the way a user does. */
export async function runCli(
  args: string[],
  options: { env?: Record<string, string | undefined>; cwd?: string; runtime?: Runtime; measureMemory?: boolean } = {},
): Promise<CliRun> {
  // The peak of this one process: Bun's resourceUsage() gives the largest of every child reaped so far.
  const timeFile = options.measureMemory ? join(tempDir(), "time.txt") : null;
  const command = [...(timeFile ? [TIME, "-f", "%M", "-o", timeFile] : []), ...cliCommand(options.runtime ?? "bun", args)];
  const child = Bun.spawn(command, {
    cwd: options.cwd ?? ROOT,
    env: cleanEnv(options.env),
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.exited,
  ]);
  const peakRssBytes = timeFile ? Number(readFileSync(timeFile, "utf8").trim().split("\n").pop()) * 1024 : undefined;
  return { code, stdout, stderr, peakRssBytes };
}

/** Names of the ordinary tables in the public schema, sorted. */
export async function tables(db: Database): Promise<string[]> {
  // The lease table beside the history is the lock's, not a migration's (test/faults.test.ts checks it).
  const rows = await db.query<{ name: string }>(
    `select table_name as name from information_schema.tables
      where table_schema = 'public' and table_type = 'BASE TABLE' and table_name <> 'safemigrate_history_lock' order by 1`,
  );
  return rows.map((r) => r.name);
}

/** Column names of a table, in order. */
export async function columns(db: Database, table: string): Promise<string[]> {
  const rows = await db.query<{ name: string }>(
    `select column_name as name from information_schema.columns
      where table_schema = 'public' and table_name = $1 order by ordinal_position`,
    [table],
  );
  return rows.map((r) => r.name);
}

/** Ids recorded as applied in safemigrate_history, in id order. */
export async function appliedIds(db: Database): Promise<string[]> {
  const rows = await db.query<{ id: string }>(
    `select id from safemigrate_history where applied_at is not null order by id`,
  ).catch(() => []);
  return rows.map((r) => r.id);
}

export const PRE: RunOptions = { phase: "pre", mode: "strict" };
export const ALL: RunOptions = { phase: "all", mode: "strict" };

/** The error a promise rejects with; fails the test when it resolves. */
export async function failure(run: Promise<unknown>): Promise<Error> {
  try {
    await run;
  } catch (error) {
    return error as Error;
  }
  throw new Error("expected it to fail");
}
