/**
 * End-to-end tests of the command line: every test spawns `bun safemigrate.ts`
 * the way a user or a release step does, then checks the exit code, what it
 * printed, and the schema it left behind (queried afterwards).
 *
 * Server tests need SAFEMIGRATE_TEST_DATABASE_URL (each test creates and drops
 * its own database); without it they are skipped visibly, and under CI they fail.
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import type { Database } from "../safemigrate.ts";
import {
  appliedIds,
  cleanup,
  type CliRun,
  columns,
  migrationsDir,
  open,
  pgliteDatabaseUrl,
  runCli,
  SERVER_REQUIRED,
  SERVER_URL,
  serverDatabaseUrl,
  tables,
  tempDir,
} from "./helpers.ts";

// A guard against a hang, not a speed target (speed lives in bench/): on a loaded 2-core machine one
// PGlite start took 21 s and a whole pipeline test minutes, so no test may fail for being slow.
setDefaultTimeout(15 * 60_000);

afterEach(cleanup);

// ----------------------------------------------------------------------------
// Helpers local to these tests
// ----------------------------------------------------------------------------

/** `safemigrate --dir <dir> --database-url <url> ...args`. */
function cli(dir: string, url: string, args: string[], env: Record<string, string | undefined> = {}): Promise<CliRun> {
  return runCli(["--dir", dir, "--database-url", url, ...args], { env });
}

/** Everything the CLI printed, for failure messages. */
const shown = (run: CliRun) => `exit ${run.code}\n--- stdout ---\n${run.stdout}\n--- stderr ---\n${run.stderr}`;

/** Asserts the exit code, showing the output when it is wrong. */
function expectExit(run: CliRun, code: number): void {
  if (run.code !== code) throw new Error(`expected exit ${code}, got ${shown(run)}`);
}

/** Tables created by migrations (the history table left out). */
async function userTables(db: Database): Promise<string[]> {
  return (await tables(db)).filter((t) => t !== "safemigrate_history");
}

async function historyTableExists(db: Database): Promise<boolean> {
  const [row] = await db.query<{ found: string | null }>(`select to_regclass('safemigrate_history')::text as found`);
  return row.found !== null;
}

interface HistoryRow {
  id: string;
  safe: string | null;
  detected_at: Date | null;
  applied_at: Date | null;
}

/** Every row of the history table (applied or only detected); [] when there is no table. */
async function historyRows(db: Database): Promise<HistoryRow[]> {
  if (!(await historyTableExists(db))) return [];
  return await db.query<HistoryRow>(`select id, safe, detected_at, applied_at from safemigrate_history order by id`);
}

/** `--status` human output as id -> state. */
function statusStates(stdout: string): Record<string, string> {
  const states: Record<string, string> = {};
  for (const line of stdout.split("\n")) {
    const match = /^(\S+)\s+(\S+)\s+(applied|pending|changed|file missing)\b/.exec(line);
    if (match) states[match[1]] = match[3];
  }
  return states;
}

/** Ids on the `applied  <id>` lines of a human run. */
function appliedLines(stdout: string): string[] {
  return [...stdout.matchAll(/^\s+applied\s+(\S+)/gm)].map((m) => m[1]);
}

/** stdout must be exactly one JSON object and nothing else. */
function onlyJson(run: CliRun): Record<string, any> {
  const text = run.stdout.trim();
  expect(text.startsWith("{")).toBe(true);
  expect(text.split("\n")).toHaveLength(1);
  const parsed = JSON.parse(text);
  expect(typeof parsed).toBe("object");
  return parsed;
}

const NO_STACK_TRACE = /^\s+at /m;

// ----------------------------------------------------------------------------
// Password authentication (role safemigrate_pw, configured by .ci/run)
// ----------------------------------------------------------------------------

const WRONG_PASSWORD = "wrong-secret-123";
const WRONG_PASSWORD_URL = (() => {
  if (!SERVER_URL) return "";
  const url = new URL(SERVER_URL);
  url.username = "safemigrate_pw";
  url.password = WRONG_PASSWORD;
  url.pathname = "/postgres";
  return url.toString();
})();

/** Why the wrong-password test cannot mean anything here; null when the role really checks its password. */
async function probePasswordAuth(): Promise<string | null> {
  const probe = postgres(WRONG_PASSWORD_URL, { max: 1, connect_timeout: 5, onnotice: () => {} });
  try {
    await probe`select 1`;
    return "connecting as safemigrate_pw with a wrong password succeeded, so the server trusts it";
  } catch (error) {
    const e = error as { code?: string; message?: string };
    return e.code === "28P01" ? null : `role safemigrate_pw is not set up for password auth (${e.message})`;
  } finally {
    await probe.end({ timeout: 1 }).catch(() => {});
  }
}

const passwordAuthProblem = SERVER_URL ? await probePasswordAuth() : null;
if (passwordAuthProblem) {
  console.warn(
    `\n[safemigrate tests] ${passwordAuthProblem}: the wrong-password test is ` +
      (SERVER_REQUIRED ? "going to FAIL (CI is set)." : "SKIPPED.") + "\n",
  );
}

// ----------------------------------------------------------------------------
// CI guard
// ----------------------------------------------------------------------------

test("under CI the PostgreSQL server tests are not silently skipped (SAFEMIGRATE_TEST_DATABASE_URL is set)", () => {
  if (SERVER_REQUIRED && !SERVER_URL) {
    throw new Error("CI is set but SAFEMIGRATE_TEST_DATABASE_URL is not: the server tests would be skipped");
  }
  expect(SERVER_REQUIRED && !SERVER_URL).toBe(false);
});

// ----------------------------------------------------------------------------
// Against the PostgreSQL server
// ----------------------------------------------------------------------------

describe.skipIf(!SERVER_URL)("CLI against the PostgreSQL server", () => {
  // --------------------------------------------------------------------------
  // 1. --pre / --all / --status / --json
  // --------------------------------------------------------------------------
  describe("deploy phases", () => {
    const files = {
      "0001_users": "-- safe: before_deploy\ncreate table users (id int primary key, legacy text);\n",
      "0002_email": "-- safe: always\nalter table users add column email text;\n",
      "0003_drop_legacy": "-- safe: after_deploy\nalter table users drop column legacy;\n",
    };

    test("--pre applies before_deploy and always migrations and leaves after_deploy pending; --all applies the rest", async () => {
      const dir = migrationsDir(files);
      const url = await serverDatabaseUrl();

      const pre = await cli(dir, url, ["--pre"]);
      expectExit(pre, 0);
      expect(appliedLines(pre.stdout)).toEqual(["0001_users", "0002_email"]);
      expect(pre.stdout).toMatch(/waits\s+0003_drop_legacy\s+\(after_deploy: waits for --all\)/);
      expect(pre.stdout).toContain("Applied 2 migrations");
      expect(pre.stdout).toContain("1 migration left for --all");
      const db = await open(url);
      expect(await columns(db, "users")).toEqual(["id", "legacy", "email"]);
      expect(await appliedIds(db)).toEqual(["0001_users", "0002_email"]);

      const again = await cli(dir, url, ["--pre"]);
      expectExit(again, 0);
      expect(appliedLines(again.stdout)).toEqual([]);
      expect(again.stdout).toContain("Nothing to apply; 1 migration left for --all.");

      const all = await cli(dir, url, ["--all"]);
      expectExit(all, 0);
      expect(appliedLines(all.stdout)).toEqual(["0003_drop_legacy"]);
      expect(await columns(db, "users")).toEqual(["id", "email"]);
      expect(await appliedIds(db)).toEqual(["0001_users", "0002_email", "0003_drop_legacy"]);

      const done = await cli(dir, url, ["--all"]);
      expectExit(done, 0);
      expect(done.stdout).toContain("Nothing to apply.");
    });

    test("--status lists each migration with its safe value and state, without changing anything", async () => {
      const dir = migrationsDir(files);
      const url = await serverDatabaseUrl();
      expectExit(await cli(dir, url, ["--pre"]), 0);

      const status = await cli(dir, url, ["--status"]);
      expectExit(status, 0);
      expect(statusStates(status.stdout)).toEqual({
        "0001_users": "applied",
        "0002_email": "applied",
        "0003_drop_legacy": "pending",
      });
      expect(status.stdout).toMatch(/^0001_users\s+before_deploy\s+applied\s+\d{4}-\d\d-\d\dT/m);
      expect(status.stdout).toMatch(/^0003_drop_legacy\s+after_deploy\s+pending\s*$/m);
      const db = await open(url);
      expect(await columns(db, "users")).toEqual(["id", "legacy", "email"]);
    });

    test("--status on a database never migrated lists every file as pending and creates no history table", async () => {
      const dir = migrationsDir(files);
      const url = await serverDatabaseUrl();
      const status = await cli(dir, url, ["--status"]);
      expectExit(status, 0);
      expect(statusStates(status.stdout)).toEqual({
        "0001_users": "pending",
        "0002_email": "pending",
        "0003_drop_legacy": "pending",
      });
      const db = await open(url);
      expect(await historyTableExists(db)).toBe(false);
    });

    test("--json prints exactly one JSON object on stdout with the run's fields, for --pre, --all and --status", async () => {
      const dir = migrationsDir(files);
      const url = await serverDatabaseUrl();

      const pre = await cli(dir, url, ["--pre", "--json"]);
      expectExit(pre, 0);
      const preJson = onlyJson(pre);
      expect(preJson).toMatchObject({
        ok: true,
        exitCode: 0,
        command: "pre",
        mode: "strict",
        database: url,
        dryRun: false,
        delayed: [{ id: "0003_drop_legacy", safe: "after_deploy", dueAt: null, delayMs: null }],
        blocked: [],
        detected: [],
      });
      expect(preJson.applied.map((a: { id: string; safe: string }) => [a.id, a.safe])).toEqual([
        ["0001_users", "before_deploy"],
        ["0002_email", "always"],
      ]);
      for (const a of preJson.applied) expect(typeof a.durationMs).toBe("number");

      const all = await cli(dir, url, ["--all", "--json"]);
      expectExit(all, 0);
      const allJson = onlyJson(all);
      expect(allJson).toMatchObject({
        ok: true,
        exitCode: 0,
        command: "all",
        dryRun: false,
        delayed: [],
        blocked: [],
        detected: [],
      });
      expect(allJson.applied.map((a: { id: string }) => a.id)).toEqual(["0003_drop_legacy"]);

      const status = await cli(dir, url, ["--status", "--json"]);
      expectExit(status, 0);
      const statusJson = onlyJson(status);
      expect(statusJson).toMatchObject({ ok: true, exitCode: 0, command: "status", database: url });
      expect(statusJson.migrations.map((m: { id: string; safe: string; state: string }) => [m.id, m.safe, m.state]))
        .toEqual([
          ["0001_users", "before_deploy", "applied"],
          ["0002_email", "always", "applied"],
          ["0003_drop_legacy", "after_deploy", "applied"],
        ]);
      for (const m of statusJson.migrations) expect(Number.isNaN(Date.parse(m.appliedAt))).toBe(false);

      const db = await open(url);
      expect(await columns(db, "users")).toEqual(["id", "email"]);
    });
  });

  // --------------------------------------------------------------------------
  // 2. strict / nonstrict / disabled
  // --------------------------------------------------------------------------
  describe("modes", () => {
    // 0003_c (before_deploy) depends by default on 0002_b (after_deploy): blocked.
    // 0004_d depends only on 0001_a: not blocked.
    const files = {
      "0001_a": "-- safe: before_deploy\ncreate table a (id int);\n",
      "0002_b": "-- safe: after_deploy\ncreate table b (id int);\n",
      "0003_c": "-- safe: before_deploy\ncreate table c (id int);\n",
      "0004_d": "-- safe: always\n-- depends: 0001_a\ncreate table d (id int);\n",
    };

    test("strict --pre refuses a before_deploy that depends on an after_deploy, names both, and applies nothing", async () => {
      const dir = migrationsDir(files);
      const url = await serverDatabaseUrl();
      const run = await cli(dir, url, ["--pre"]);
      expectExit(run, 3);
      expect(run.stderr).toContain("refusing to run --pre");
      expect(run.stderr).toContain("0003_c (before_deploy) is blocked by 0002_b");
      expect(run.stderr).toContain("Nothing was applied");
      expect(run.stderr).toContain("--mode nonstrict");
      expect(appliedLines(run.stdout)).toEqual([]);

      const db = await open(url);
      expect(await userTables(db)).toEqual([]);
      expect(await historyRows(db)).toEqual([]);
    });

    test("strict --pre --json reports the refusal as JSON with exit code 3 and the blocked migration", async () => {
      const dir = migrationsDir(files);
      const url = await serverDatabaseUrl();
      const run = await cli(dir, url, ["--pre", "--json"]);
      expectExit(run, 3);
      expect(onlyJson(run)).toMatchObject({
        ok: false,
        exitCode: 3,
        command: "pre",
        mode: "strict",
        applied: [],
        blocked: [{ id: "0003_c", safe: "before_deploy", blockedBy: ["0002_b"] }],
      });
      const db = await open(url);
      expect(await userTables(db)).toEqual([]);
      expect(await historyRows(db)).toEqual([]);
    });

    test("--mode nonstrict applies the migrations that are not blocked and skips the blocked one", async () => {
      const dir = migrationsDir(files);
      const url = await serverDatabaseUrl();
      const run = await cli(dir, url, ["--pre", "--mode", "nonstrict"]);
      expectExit(run, 0);
      expect(run.stdout).toContain("--pre (nonstrict)");
      expect(appliedLines(run.stdout)).toEqual(["0001_a", "0004_d"]);
      expect(run.stdout).toMatch(/skipped\s+0003_c\s+\(before_deploy, blocked by 0002_b\)/);
      expect(run.stdout).toContain("2 migrations left for --all");
      const db = await open(url);
      expect(await userTables(db)).toEqual(["a", "d"]);
      expect(await appliedIds(db)).toEqual(["0001_a", "0004_d"]);
    });

    test("SAFEMIGRATE=nonstrict in the environment selects nonstrict mode", async () => {
      const dir = migrationsDir(files);
      const url = await serverDatabaseUrl();
      const run = await cli(dir, url, ["--pre"], { SAFEMIGRATE: "nonstrict" });
      expectExit(run, 0);
      expect(run.stdout).toContain("--pre (nonstrict)");
      const db = await open(url);
      expect(await userTables(db)).toEqual(["a", "d"]);
      expect(await appliedIds(db)).toEqual(["0001_a", "0004_d"]);
    });

    test("--mode strict on the command line overrides SAFEMIGRATE=nonstrict", async () => {
      const dir = migrationsDir(files);
      const url = await serverDatabaseUrl();
      const run = await cli(dir, url, ["--pre", "--mode", "strict"], { SAFEMIGRATE: "nonstrict" });
      expectExit(run, 3);
      const db = await open(url);
      expect(await userTables(db)).toEqual([]);
    });

    test("--mode disabled makes --pre apply every pending migration, after_deploy included", async () => {
      const dir = migrationsDir(files);
      const url = await serverDatabaseUrl();
      const run = await cli(dir, url, ["--pre", "--mode", "disabled"]);
      expectExit(run, 0);
      expect(appliedLines(run.stdout)).toEqual(["0001_a", "0002_b", "0003_c", "0004_d"]);
      const db = await open(url);
      expect(await userTables(db)).toEqual(["a", "b", "c", "d"]);
      expect(await appliedIds(db)).toEqual(["0001_a", "0002_b", "0003_c", "0004_d"]);
    });
  });

  // --------------------------------------------------------------------------
  // 3. --plan
  // --------------------------------------------------------------------------
  describe("--plan", () => {
    test("--pre --plan and --all --plan show the plan but create no history table and apply nothing", async () => {
      const dir = migrationsDir({
        "0001_a": "-- safe: before_deploy\ncreate table a (id int);\n",
        "0002_b": "-- delay: 1h\ncreate table b (id int);\n",
      });
      const url = await serverDatabaseUrl();

      const pre = await cli(dir, url, ["--pre", "--plan"]);
      expectExit(pre, 0);
      expect(pre.stdout).toContain("plan for --pre (strict):");
      expect(pre.stdout).toMatch(/would apply\s+0001_a\s+\(before_deploy\)/);
      expect(pre.stdout).toMatch(/waits\s+0002_b\s+\(after_deploy, delay 1h: the clock starts at this --pre\)/);
      expect(pre.stdout).toContain("Nothing was changed.");

      const all = await cli(dir, url, ["--all", "--plan", "--json"]);
      expectExit(all, 0);
      expect(onlyJson(all)).toMatchObject({
        ok: true,
        command: "all",
        dryRun: true,
        wouldApply: [{ id: "0001_a", safe: "before_deploy" }, { id: "0002_b", safe: "after_deploy" }],
        detected: [],
      });

      const db = await open(url);
      expect(await historyTableExists(db)).toBe(false);
      expect(await tables(db)).toEqual([]);
    });

    test("--pre --plan does not start the delay clock of a delayed migration", async () => {
      const dir = migrationsDir({ "0001_a": "-- safe: before_deploy\ncreate table a (id int);\n" });
      const url = await serverDatabaseUrl();
      expectExit(await cli(dir, url, ["--pre"]), 0);
      writeFileSync(join(dir, "0002_b.sql"), "-- delay: 1h\ncreate table b (id int);\n");

      const plan = await cli(dir, url, ["--pre", "--plan", "--json"]);
      expectExit(plan, 0);
      expect(onlyJson(plan)).toMatchObject({
        dryRun: true,
        wouldApply: [],
        delayed: [{ id: "0002_b", dueAt: null, delayMs: 3_600_000 }],
        detected: [],
      });
      const db = await open(url);
      expect((await historyRows(db)).map((r) => r.id)).toEqual(["0001_a"]);
      expect(await userTables(db)).toEqual(["a"]);
    });
  });

  // --------------------------------------------------------------------------
  // 4. Concurrency
  // --------------------------------------------------------------------------
  test("8 concurrent --all runs on a fresh database apply each of 20 migrations exactly once", async () => {
    const files: Record<string, string> = {
      "0001_runs": "create table runs (id text not null);\ninsert into runs values ('0001_runs');\n",
    };
    for (let i = 2; i <= 20; i++) {
      const id = `${String(i).padStart(4, "0")}_t${i}`;
      const slow = i === 7 ? "select pg_sleep(0.2);\n" : "";
      files[id] = `-- safe: always\ncreate table t${i} (id int);\n${slow}insert into runs values ('${id}');\n`;
    }
    const ids = Object.keys(files);
    const dir = migrationsDir(files);
    const url = await serverDatabaseUrl();

    const runs = await Promise.all(Array.from({ length: 8 }, () => cli(dir, url, ["--all"])));
    for (const run of runs) {
      expectExit(run, 0);
      expect(run.stderr).not.toContain("error");
    }
    // Every migration was reported applied by exactly one of the processes.
    expect(runs.flatMap((r) => appliedLines(r.stdout)).sort()).toEqual(ids);

    const db = await open(url);
    expect(await appliedIds(db)).toEqual(ids);
    expect(await historyRows(db)).toHaveLength(20);
    // Each migration's SQL ran once: one row per migration in `runs`.
    const counts = await db.query<{ id: string; n: number }>(`select id, count(*)::int as n from runs group by id order by id`);
    expect(counts).toEqual(ids.map((id) => ({ id, n: 1 })));
    expect(await userTables(db)).toEqual(["runs", ...Array.from({ length: 19 }, (_, k) => `t${k + 2}`)].sort());
  });

  // --------------------------------------------------------------------------
  // 5. SQL errors in a transactional migration
  // --------------------------------------------------------------------------
  describe("a failing transactional migration", () => {
    test("an error in its 2nd statement names file:line of the error and rolls the whole migration back", async () => {
      const dir = migrationsDir({
        "0001_a": "-- safe: always\ncreate table a (id int);\n",
        // line 2: first statement; line 4: second statement; line 5: where the server's position points.
        "0002_b": "-- safe: always\ncreate table b (id int);\n\ninsert into b (id)\n  select id from missing_table;\n",
        "0003_c": "-- safe: always\ncreate table c (id int);\n",
      });
      const file = join(dir, "0002_b.sql");
      const url = await serverDatabaseUrl();

      const run = await cli(dir, url, ["--all"]);
      expectExit(run, 1);
      expect(run.stderr).toContain(`${file}:5: migration 0002_b failed`);
      expect(run.stderr).toContain(`relation "missing_table" does not exist`);
      expect(run.stderr).toContain("did not commit (statement 2 of 2): nothing of it took effect");
      expect(run.stderr).not.toMatch(NO_STACK_TRACE);
      expect(appliedLines(run.stdout)).toEqual(["0001_a"]);

      const db = await open(url);
      expect(await userTables(db)).toEqual(["a"]); // b rolled back, c never ran
      expect(await appliedIds(db)).toEqual(["0001_a"]);

      // Fixed, the same migration applies on the next run: nothing of the failed attempt remained.
      writeFileSync(file, "-- safe: always\ncreate table b (id int);\n\ninsert into b (id)\n  select id from a;\n");
      const retry = await cli(dir, url, ["--all"]);
      expectExit(retry, 0);
      expect(appliedLines(retry.stdout)).toEqual(["0002_b", "0003_c"]);
      expect(await userTables(db)).toEqual(["a", "b", "c"]);
    });

    // The server reports no position for errors like division by zero, so the
    // line must come from knowing which statement was running.
    test("an error without a server position in its 2nd statement names the line of that statement, not the first", async () => {
      const dir = migrationsDir({
        "0001_a": "-- safe: always\ncreate table a (id int);\n\ninsert into a\n  values (1 / 0);\n",
      });
      const file = join(dir, "0001_a.sql");
      const url = await serverDatabaseUrl();
      const run = await cli(dir, url, ["--all"]);
      expectExit(run, 1);
      expect(run.stderr).toContain("division by zero");
      expect(run.stderr).toContain(`${file}:4: migration 0001_a failed`);
      const db = await open(url);
      expect(await userTables(db)).toEqual([]);
    });
  });

  // --------------------------------------------------------------------------
  // 6. transaction: false
  // --------------------------------------------------------------------------
  describe("transaction: false", () => {
    test("CREATE INDEX CONCURRENTLY in a transaction:false migration leaves a valid index and records the migration", async () => {
      const dir = migrationsDir({
        "0001_a": "-- safe: before_deploy\ncreate table a (id int, name text);\ninsert into a select g, 'n' || g from generate_series(1, 1000) g;\n",
        "0002_idx": "-- safe: before_deploy\n-- transaction: false\n\ncreate index concurrently a_name_idx on a (name);\n",
      });
      const url = await serverDatabaseUrl();
      const run = await cli(dir, url, ["--pre"]);
      expectExit(run, 0);
      expect(appliedLines(run.stdout)).toEqual(["0001_a", "0002_idx"]);

      const db = await open(url);
      const index = await db.query<{ valid: boolean; ready: boolean }>(
        `select indisvalid as valid, indisready as ready from pg_index where indexrelid = 'a_name_idx'::regclass`,
      );
      expect(index).toEqual([{ valid: true, ready: true }]);
      expect(await appliedIds(db)).toEqual(["0001_a", "0002_idx"]);
    });

    test("a failing 2nd statement names that statement's file:line, says the 1st took effect, and the next run names it", async () => {
      const dir = migrationsDir({
        "0001_a": "-- safe: always\ncreate table a (id int);\n",
        "0002_b": "-- transaction: false\ncreate table t1 (id int);\ninsert into t1\n  values ('not a number');\ncreate table t3 (id int);\n",
        "0003_c": "create table c (id int);\n",
      });
      const file = join(dir, "0002_b.sql");
      const url = await serverDatabaseUrl();
      const run = await cli(dir, url, ["--all"]);
      expectExit(run, 1);
      // The server points at the bad value on line 4; the statement starts on line 3.
      expect(run.stderr).toContain(`${file}:4: migration 0002_b failed`);
      expect(run.stderr).toContain("invalid input syntax for type integer");
      expect(run.stderr).toContain("statement 2 of 3 failed");
      expect(run.stderr).toContain("the statements before it (lines 2) took effect and stay");
      expect(run.stderr).toContain("recorded as started and not applied");
      expect(run.stderr).not.toMatch(NO_STACK_TRACE);

      const db = await open(url);
      expect(await userTables(db)).toEqual(["a", "t1"]); // t1 stays, t3 and c never ran
      expect(await appliedIds(db)).toEqual(["0001_a"]);
      const next = await cli(dir, url, ["--all"]);
      expectExit(next, 2);
      expect(next.stderr).toContain("0002_b failed part-way");
      expect(next.stderr).toContain(`took effect: ${file}:2 create table t1 (id int)`);
      expect(next.stderr).toContain(`failed: ${file}:3 insert into t1`);
      expect(next.stderr).toContain(`did not run: ${file}:5 create table t3 (id int)`);
    });
  });

  // --------------------------------------------------------------------------
  // 7. Front-matter
  // --------------------------------------------------------------------------
  describe("front-matter", () => {
    const bad: { name: string; text: string; line: number; message: string[] }[] = [
      {
        name: "a misspelt directive key (-- saf: always)",
        text: "-- saf: always\ncreate table bad (id int);\n",
        line: 1,
        message: [`unknown directive "saf:"`, `did you mean "safe:"?`],
      },
      {
        name: "a misspelt safe value (-- safe: befor_deploy)",
        text: "-- A comment first.\n-- safe: befor_deploy\ncreate table bad (id int);\n",
        line: 2,
        message: [`"safe: befor_deploy" is not valid`, `did you mean "before_deploy"?`],
      },
      {
        name: "a delay on a before_deploy migration",
        text: "-- safe: before_deploy\n-- delay: 7d\ncreate table bad (id int);\n",
        line: 2,
        message: [`"delay:" only applies to after_deploy migrations`],
      },
      {
        name: "a directive below the first SQL statement",
        text: "create table bad (id int);\n-- safe: before_deploy\n",
        line: 2,
        message: [`"-- safe:" has no effect here`, "before the first SQL (line 1)"],
      },
    ];

    for (const { name, text, line, message } of bad) {
      test(`${name} exits 2 naming file:line and applies nothing`, async () => {
        const dir = migrationsDir({ "0001_ok": "-- safe: always\ncreate table ok (id int);\n", "0002_bad": text });
        const url = await serverDatabaseUrl();
        const run = await cli(dir, url, ["--all"]);
        expectExit(run, 2);
        expect(run.stderr).toContain(`${join(dir, "0002_bad.sql")}:${line}: `);
        for (const part of message) expect(run.stderr).toContain(part);
        expect(run.stderr).not.toMatch(NO_STACK_TRACE);
        const db = await open(url);
        expect(await userTables(db)).toEqual([]); // not even 0001_ok, which is valid
        expect(await appliedIds(db)).toEqual([]);
      });
    }

    test("every bad file is reported in one run", async () => {
      const dir = migrationsDir({
        "0001_x": "-- saf: always\nselect 1;\n",
        "0002_y": "-- delay: soon\nselect 1;\n",
      });
      const url = await serverDatabaseUrl();
      const run = await cli(dir, url, ["--all"]);
      expectExit(run, 2);
      expect(run.stderr).toContain(`${join(dir, "0001_x.sql")}:1:`);
      expect(run.stderr).toContain(`${join(dir, "0002_y.sql")}:1: "delay: soon" is not a duration`);
    });

    test("ordinary comments that look like key: value (Note, URLs, squawk-ignore) are accepted beside directives", async () => {
      const dir = migrationsDir({
        "0001_a": [
          "-- Note: x",
          "-- https://example.com",
          "-- squawk-ignore: foo",
          "-- safe: before_deploy",
          "",
          "create table a (id int);",
          "",
        ].join("\n"),
      });
      const url = await serverDatabaseUrl();
      const run = await cli(dir, url, ["--pre"]);
      expectExit(run, 0);
      expect(appliedLines(run.stdout)).toEqual(["0001_a"]);
      const db = await open(url);
      expect(await userTables(db)).toEqual(["a"]);
      // The directive among the comments was read: it was applied by --pre as before_deploy.
      expect((await historyRows(db)).map((r) => [r.id, r.safe])).toEqual([["0001_a", "before_deploy"]]);
    });
  });

  // --------------------------------------------------------------------------
  // 8. Dependency graph and history consistency
  // --------------------------------------------------------------------------
  describe("dependencies", () => {
    test("a dependency cycle exits 2 naming the cycle and applies nothing", async () => {
      const dir = migrationsDir({
        "0001_a": "-- depends: 0002_b\ncreate table a (id int);\n",
        "0002_b": "create table b (id int);\n",
        "0003_c": "create table c (id int);\n",
      });
      const url = await serverDatabaseUrl();
      const run = await cli(dir, url, ["--all"]);
      expectExit(run, 2);
      expect(run.stderr).toContain("dependency cycle: 0001_a -> 0002_b -> 0001_a");
      expect(run.stderr).toContain(`remove one of these "depends:" entries`);
      const db = await open(url);
      expect(await userTables(db)).toEqual([]);
      expect(await appliedIds(db)).toEqual([]);
    });

    test("a dependency on a migration that does not exist exits 2 with file:line and a did-you-mean", async () => {
      const dir = migrationsDir({
        "0001_create_users": "create table users (id int);\n",
        "0002_index": "-- safe: always\n-- depends: 0001_create_user\ncreate index on users (id);\n",
      });
      const url = await serverDatabaseUrl();
      const run = await cli(dir, url, ["--all"]);
      expectExit(run, 2);
      expect(run.stderr).toContain(
        `${join(dir, "0002_index.sql")}:2: depends on "0001_create_user", which is neither a file in the migrations directory nor applied`,
      );
      expect(run.stderr).toContain(`did you mean "0001_create_users"?`);
      const db = await open(url);
      expect(await userTables(db)).toEqual([]);
    });

    test("a new migration sorting before an applied one is inconsistent history: exit 2 with the fix, and the fix works", async () => {
      const dir = migrationsDir({
        "0001_a": "create table a (id int);\n",
        "0003_c": "create table c (id int);\n",
      });
      const url = await serverDatabaseUrl();
      expectExit(await cli(dir, url, ["--all"]), 0);

      // A merged branch brings 0002_b, which sorts before the applied 0003_c.
      writeFileSync(join(dir, "0002_b.sql"), "create table b (id int);\n");
      const run = await cli(dir, url, ["--all"]);
      expectExit(run, 2);
      expect(run.stderr).toContain("inconsistent history: 0003_c is applied, but it depends on 0002_b, which is not");
      expect(run.stderr).toContain(`Rename ${join(dir, "0002_b.sql")} -> ${join(dir, "0004_b.sql")} so it sorts after the applied migrations`);
      const db = await open(url);
      expect(await userTables(db)).toEqual(["a", "c"]);
      expect(await appliedIds(db)).toEqual(["0001_a", "0003_c"]);

      // The suggested fix: rename the pending file (never edit the applied one).
      renameSync(join(dir, "0002_b.sql"), join(dir, "0004_b.sql"));
      const fixed = await cli(dir, url, ["--all"]);
      expectExit(fixed, 0);
      expect(appliedLines(fixed.stdout)).toEqual(["0004_b"]);
      expect(await userTables(db)).toEqual(["a", "b", "c"]);
    });
  });

  // --------------------------------------------------------------------------
  // 9. Checksum drift
  // --------------------------------------------------------------------------
  describe("checksum drift", () => {
    const original = "-- safe: before_deploy\ncreate table a (id int);\n\n-- migrate:down\ndrop table a;\n";

    test("editing the up SQL of an applied migration exits 2 naming the file, and --status shows it changed", async () => {
      const dir = migrationsDir({ "0001_a": original });
      const url = await serverDatabaseUrl();
      expectExit(await cli(dir, url, ["--all"]), 0);

      writeFileSync(join(dir, "0001_a.sql"), "-- safe: before_deploy\ncreate table a (id bigint);\n\n-- migrate:down\ndrop table a;\n");
      writeFileSync(join(dir, "0002_b.sql"), "create table b (id int);\n");
      const run = await cli(dir, url, ["--all"]);
      expectExit(run, 2);
      expect(run.stderr).toContain(`${join(dir, "0001_a.sql")}: the up SQL changed after the migration was applied`);
      expect(run.stderr).toContain("put the change in a new migration");
      const db = await open(url);
      expect(await userTables(db)).toEqual(["a"]); // 0002_b not applied either
      expect(await appliedIds(db)).toEqual(["0001_a"]);

      const status = await cli(dir, url, ["--status"]);
      expectExit(status, 0);
      expect(statusStates(status.stdout)).toEqual({ "0001_a": "changed", "0002_b": "pending" });
    });

    test("a history whose collation orders ids otherwise than byte order: the no-op reads it in the files' order, an edit is drift, --status lists byte order", async () => {
      // Byte order: 0001-c, 0001_B, 0001_a, 0002_Z; ICU's: 0001_a, 0001_B, 0001-c, 0002_Z.
      const ids = ["0001-c", "0001_B", "0001_a", "0002_Z"];
      const dir = migrationsDir(Object.fromEntries(ids.map((id, i) => [id, `-- safe: before_deploy\ncreate table t${i} (id int);\n`])));
      const url = await serverDatabaseUrl();
      expectExit(await cli(dir, url, ["--all"]), 0);
      const db = await open(url);
      const [icu] = await db.query<{ found: boolean }>(`select exists (select from pg_collation where collname = 'und-x-icu') as found`);
      if (icu.found) await db.exec(`alter table safemigrate_history alter column id type text collate "und-x-icu"`);

      const noop = await cli(dir, url, ["--pre"]);
      expectExit(noop, 0);
      expect(noop.stdout).toContain("Nothing to apply.");
      const listed = await cli(dir, url, ["--status"]);
      expectExit(listed, 0);
      expect(listed.stdout.split("\n").slice(1, 5).map((line) => line.split(/\s+/)[0])).toEqual(ids);
      expect(Object.values(statusStates(listed.stdout))).toEqual(["applied", "applied", "applied", "applied"]);

      writeFileSync(join(dir, "0001_B.sql"), "-- safe: before_deploy\ncreate table t1 (id bigint);\n");
      const drift = await cli(dir, url, ["--all"]);
      expectExit(drift, 2);
      expect(drift.stderr).toContain(`${join(dir, "0001_B.sql")}: the up SQL changed after the migration was applied`);
      expect(statusStates((await cli(dir, url, ["--status"])).stdout)).toEqual({ "0001-c": "applied", "0001_B": "changed", "0001_a": "applied", "0002_Z": "applied" });
    });

    test("editing only the front-matter, the down section or the line endings is not drift", async () => {
      const dir = migrationsDir({ "0001_a": original });
      const url = await serverDatabaseUrl();
      expectExit(await cli(dir, url, ["--all"]), 0);
      const file = join(dir, "0001_a.sql");

      const edits = [
        // safe: changed, a comment added to the front-matter
        "-- Now known to be safe at any time.\n-- safe: always\n\ncreate table a (id int);\n\n-- migrate:down\ndrop table a;\n",
        // down section rewritten
        "-- safe: always\ncreate table a (id int);\n\n-- migrate:down\ndrop table if exists a cascade;\n",
        // CRLF line endings
        "-- safe: always\r\ncreate table a (id int);\r\n\r\n-- migrate:down\r\ndrop table if exists a cascade;\r\n",
      ];
      for (const text of edits) {
        writeFileSync(file, text);
        const run = await cli(dir, url, ["--all"]);
        expectExit(run, 0);
        expect(run.stdout).toContain("Nothing to apply.");
        expect(run.stderr).toBe("");
      }
      const status = await cli(dir, url, ["--status"]);
      expect(statusStates(status.stdout)).toEqual({ "0001_a": "applied" });
    });
  });

  // --------------------------------------------------------------------------
  // 14. Delay
  // --------------------------------------------------------------------------
  test("a delayed after_deploy is detected by the first --pre and applied by a --pre once the delay has passed", async () => {
    const dir = migrationsDir({
      "0001_a": "-- safe: before_deploy\ncreate table a (id int);\n",
      "0002_b": "-- safe: after_deploy\n-- delay: 1s\ncreate table b (id int);\n",
    });
    const url = await serverDatabaseUrl();

    const first = await cli(dir, url, ["--pre", "--json"]);
    expectExit(first, 0);
    expect(onlyJson(first)).toMatchObject({
      applied: [{ id: "0001_a" }],
      delayed: [{ id: "0002_b", safe: "after_deploy", delayMs: 1000 }],
      detected: ["0002_b"],
    });
    const db = await open(url);
    expect(await userTables(db)).toEqual(["a"]);
    const rows = await historyRows(db);
    const detected = rows.find((r) => r.id === "0002_b");
    expect(detected?.applied_at).toBeNull();
    expect(detected?.detected_at).toBeInstanceOf(Date);

    const status = await cli(dir, url, ["--status"]);
    expect(status.stdout).toMatch(/^0002_b\s+after_deploy\s+pending\s+\(delay clock started \d{4}-/m);

    // Wait until the delay has certainly passed since detection.
    const wait = detected!.detected_at!.getTime() + 1_000 + 250 - Date.now();
    if (wait > 0) await Bun.sleep(wait);

    const second = await cli(dir, url, ["--pre"]);
    expectExit(second, 0);
    expect(appliedLines(second.stdout)).toEqual(["0002_b"]);
    expect(await userTables(db)).toEqual(["a", "b"]);
    expect(await appliedIds(db)).toEqual(["0001_a", "0002_b"]);
  });

  // --------------------------------------------------------------------------
  // 10. Wrong password
  // --------------------------------------------------------------------------
  // --------------------------------------------------------------------------
  // 10. Wrong password
  // --------------------------------------------------------------------------
  test.skipIf(passwordAuthProblem !== null && !SERVER_REQUIRED)(
    "a wrong password exits 1 with 'password authentication failed' and never prints the password",
    async () => {
      if (passwordAuthProblem) throw new Error(`${passwordAuthProblem}; .ci/run must configure it`);
      const dir = migrationsDir({ "0001_a": "-- safe: always\ncreate table a (id int);\n" });
      for (const extra of [[], ["--json"]]) {
        const run = await cli(dir, WRONG_PASSWORD_URL, ["--pre", ...extra]);
        expectExit(run, 1);
        expect(run.stderr).toContain("password authentication failed for user \"safemigrate_pw\"");
        expect(run.stderr).toContain("could not connect to postgres://safemigrate_pw@");
        expect(run.stdout).not.toContain(WRONG_PASSWORD);
        expect(run.stderr).not.toContain(WRONG_PASSWORD);
        expect(run.stderr).not.toMatch(NO_STACK_TRACE);
      }
    },
  );
});

// ----------------------------------------------------------------------------
// Without a reachable server
// ----------------------------------------------------------------------------

describe("connection failures", () => {
  test("an unreachable server exits 1 with 'could not connect', no stack trace and no password", async () => {
    const dir = migrationsDir({ "0001_a": "create table a (id int);\n" });
    for (const extra of [[], ["--json"]]) {
      const run = await cli(dir, "postgres://postgres:pw@127.0.0.1:1/x", ["--pre", ...extra]);
      expectExit(run, 1);
      expect(run.stderr).toContain("could not connect to postgres://postgres@127.0.0.1:1/x: connection refused");
      expect(run.stderr).not.toMatch(NO_STACK_TRACE);
      expect(run.stdout + run.stderr).not.toContain(":pw@");
      expect(run.stdout + run.stderr).not.toMatch(/\bpw\b/);
    }
  });

  // A password that is also a common word (docker's postgres:postgres) must not
  // turn every occurrence of that word in the output into ***.
  test("a password equal to the user name does not garble the messages", async () => {
    const dir = migrationsDir({ "0001_a": "create table a (id int);\n" });
    const run = await cli(dir, "postgres://postgres:postgres@127.0.0.1:1/x", ["--pre"]);
    expectExit(run, 1);
    expect(run.stderr).toContain("could not connect to postgres://postgres@127.0.0.1:1/x: connection refused");
    expect(run.stdout).toContain("safemigrate --pre (strict) on postgres://postgres@127.0.0.1:1/x");
  });
});

// ----------------------------------------------------------------------------
// Usage errors
// ----------------------------------------------------------------------------

describe("usage", () => {
  // An unreachable URL: reaching the database would exit 1, so exit 2 proves the run stopped before it.
  const UNREACHABLE = "postgres://postgres@127.0.0.1:1/x";
  const cases: { name: string; args: string[]; env?: Record<string, string>; message: string; also?: string }[] = [
    { name: "an unknown flag suggests the one meant", args: ["--stauts"], message: "unknown option --stauts — did you mean --status?" },
    { name: "--plan alone", args: ["--plan"], message: "--plan goes with --pre, --all" },
    { name: "--plan with --status", args: ["--status", "--plan"], message: "--plan goes with --pre, --all", also: "not --status" },
    { name: "a bad --mode", args: ["--pre", "--mode", "lenient"], message: `--mode must be strict, nonstrict or disabled, not "lenient"` },
    { name: "a bad SAFEMIGRATE", args: ["--pre"], env: { SAFEMIGRATE: "lenient" }, message: `SAFEMIGRATE must be strict, nonstrict or disabled, not "lenient"` },
    { name: "no command", args: [], message: "say what to do: --pre, --all" },
    { name: "two commands", args: ["--pre", "--all"], message: "choose one of --pre, --all" },
    { name: "a bad --lock-wait", args: ["--pre", "--lock-wait", "soon"], message: `--lock-wait "soon" is not a duration` },
    { name: "a stray argument", args: ["--pre", "up"], message: `unexpected argument "up"` },
  ];
  for (const { name, args, env, message, also } of cases) {
    test(`${name} exits 2 with a message`, async () => {
      const run = await runCli([...args, "--database-url", UNREACHABLE], { env });
      expectExit(run, 2);
      expect(run.stderr).toContain(`safemigrate: error: ${message}`);
      if (also) expect(run.stderr).toContain(also);
      expect(run.stderr).not.toMatch(NO_STACK_TRACE);
    });
  }

  test("a usage error with --json also prints a JSON error object on stdout", async () => {
    const run = await runCli(["--pre", "--json", "--bogus", "--database-url", UNREACHABLE]);
    expectExit(run, 2);
    expect(onlyJson(run)).toMatchObject({ ok: false, exitCode: 2 });
    expect(onlyJson(run).error).toContain("unknown option --bogus");
  });

  test("--help prints the usage and --version the version, exit 0", async () => {
    const help = await runCli(["--help"]);
    expectExit(help, 0);
    expect(help.stdout).toContain("Usage:");
    expect(help.stdout).toContain("--pre");
    const version = await runCli(["--version"]);
    expectExit(version, 0);
    expect(version.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });

  test("a migrations directory that does not exist exits 2 naming it", async () => {
    const missing = join(tempDir(), "nope");
    const run = await runCli(["--pre", "--dir", missing, "--database-url", UNREACHABLE]);
    expectExit(run, 2);
    expect(run.stderr).toContain(`migrations directory ${missing} does not exist`);
  });
});

// ----------------------------------------------------------------------------
// No database URL
// ----------------------------------------------------------------------------

describe("default database", () => {
  function projectDir(): string {
    const cwd = tempDir("safemigrate-project-");
    mkdirSync(join(cwd, "migrations"));
    writeFileSync(join(cwd, "migrations", "0001_a.sql"), "-- safe: before_deploy\ncreate table a (id int);\n");
    return cwd;
  }

  for (const env of [{ DYNO: "1" }, { CI: "true" }]) {
    const name = Object.keys(env)[0];
    test(`without a database URL in a release environment (${name} set) it exits 2 and creates no embedded database`, async () => {
      const cwd = projectDir();
      const run = await runCli(["--pre"], { cwd, env });
      expectExit(run, 2);
      expect(run.stderr).toContain("no database URL: set DATABASE_URL or pass --database-url");
      expect(run.stderr).toContain(`(${name} set)`);
      expect(existsSync(join(cwd, ".safemigrate"))).toBe(false);
    });
  }

  test("without a database URL outside a release environment it uses the embedded PGlite in .safemigrate/ and says so", async () => {
    const cwd = projectDir();
    const first = await runCli(["--pre"], { cwd });
    expectExit(first, 0);
    expect(first.stderr).toContain("no DATABASE_URL; using the embedded PGlite database in .safemigrate/");
    expect(appliedLines(first.stdout)).toEqual(["0001_a"]);
    expect(existsSync(join(cwd, ".safemigrate", "PG_VERSION"))).toBe(true);

    const second = await runCli(["--pre"], { cwd });
    expectExit(second, 0);
    expect(second.stdout).toContain("Nothing to apply.");
    expect(appliedLines(second.stdout)).toEqual([]);

    const db = await open(`pglite:${join(cwd, ".safemigrate")}`);
    expect(await userTables(db)).toEqual(["a"]);
    expect(await appliedIds(db)).toEqual(["0001_a"]);
  });
});

// ----------------------------------------------------------------------------
// PGlite
// ----------------------------------------------------------------------------

describe("CLI against PGlite", () => {
  test("--pre, --status and --all against a pglite:<dir> database", async () => {
    const dir = migrationsDir({
      "0001_a": "-- safe: before_deploy\ncreate table a (id int);\n",
      "0002_b": "-- safe: after_deploy\nalter table a add column b text;\n",
    });
    const url = await pgliteDatabaseUrl();

    const pre = await cli(dir, url, ["--pre"]);
    expectExit(pre, 0);
    expect(pre.stdout).toContain(`on ${url}`);
    expect(appliedLines(pre.stdout)).toEqual(["0001_a"]);
    expect(pre.stdout).toMatch(/waits\s+0002_b/);

    const status = await cli(dir, url, ["--status"]);
    expectExit(status, 0);
    expect(statusStates(status.stdout)).toEqual({ "0001_a": "applied", "0002_b": "pending" });

    const all = await cli(dir, url, ["--all"]);
    expectExit(all, 0);
    expect(appliedLines(all.stdout)).toEqual(["0002_b"]);

    // Opened only now: an embedded database has one owner at a time.
    const db = await open(url);
    expect(await columns(db, "a")).toEqual(["id", "b"]);
    expect(await appliedIds(db)).toEqual(["0001_a", "0002_b"]);
  });

  test("--plan and --status against a pglite directory that does not exist report on it and do not create it", async () => {
    const dir = migrationsDir({ "0001_a": "-- safe: before_deploy\ncreate table a (id int);\n" });
    const target = join(tempDir(), "db");
    const run = await cli(dir, `pglite:${target}`, ["--pre", "--plan"]);
    expectExit(run, 0);
    expect(run.stdout).toMatch(/would apply\s+0001_a\s+\(before_deploy\)/);
    expect(run.stdout).toContain("Nothing was changed.");
    expect(existsSync(target)).toBe(false);

    const status = await cli(dir, `pglite:${target}`, ["--status"]);
    expectExit(status, 0);
    expect(statusStates(status.stdout)).toEqual({ "0001_a": "pending" });
    expect(existsSync(target)).toBe(false);
  });

  test("--plan against an existing empty directory does not initialise a database in it", async () => {
    const dir = migrationsDir({ "0001_a": "-- safe: before_deploy\ncreate table a (id int);\n" });
    const target = tempDir("safemigrate-empty-");
    const run = await cli(dir, `pglite:${target}`, ["--pre", "--plan"]);
    expectExit(run, 0);
    expect(run.stdout).toMatch(/would apply\s+0001_a/);
    expect(readdirSync(target)).toEqual([]);
  });
});
