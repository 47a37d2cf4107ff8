/**
 * Fleets: one command over many databases (`--database-url` several times or
 * `--targets <file>`, `--parallel N`). Every test spawns the CLI as a user
 * would and then looks into each database: what was applied where, what each
 * target's own result says, the exit code of the whole and that no password
 * is printed. The last block creates two more PostgreSQL clusters on other
 * ports, so the fleet really spans servers.
 */
import { afterAll, afterEach, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import { fleetExitCode, InputError, parseTargets } from "../safemigrate.ts";
import { appliedIds, cleanup, type CliRun, migrationsDir, open, runCli, SERVER_REQUIRED, SERVER_URL, serverDatabaseUrl, tables, tempDir } from "./helpers.ts";

setDefaultTimeout(120_000);
afterEach(cleanup);

const shown = (run: CliRun) => `exit ${run.code}\n--- stdout ---\n${run.stdout}\n--- stderr ---\n${run.stderr}`;
function expectExit(run: CliRun, code: number): void {
  if (run.code !== code) throw new Error(`expected exit ${code}, got ${shown(run)}`);
}

/** A file of targets, with the comments and blank lines a person writes. */
function targetsFile(urls: string[]): string {
  const file = join(tempDir("safemigrate-fleet-"), "targets.txt");
  writeFileSync(file, ["# tenants", "", ...urls.map((url, i) => `${url}   # tenant ${i + 1}`), ""].join("\n"));
  return file;
}

/** The same URL with a password the server ignores (trust auth): it must never be printed. */
const withPassword = (url: string, password: string) => url.replace("://postgres@", `://postgres:${password}@`);

const FILES = {
  "0001_users": "-- safe: before_deploy\ncreate table users (id int primary key);",
  "0002_drop_legacy": "-- safe: after_deploy\ncreate table legacy_gone (id int);",
  "0003_orders": "-- safe: before_deploy\n-- depends: 0001_users\ncreate table orders (id int primary key);",
};
/** The same, but 0003 waits for the after_deploy 0002: --pre is blocked until --all has run once. */
const BLOCKING = { ...FILES, "0003_orders": "-- safe: before_deploy\ncreate table orders (id int primary key);" };

describe("parsing a targets file", () => {
  test("comments, blank lines and trailing comments are ignored; order is kept", () => {
    const text = "# all tenants\n\npostgres://a@h:5432/one  # first\n  postgresql://b@h/two\npglite:memory\n";
    expect(parseTargets(text, "t.txt")).toEqual(["postgres://a@h:5432/one", "postgresql://b@h/two", "pglite:memory"]);
  });

  test("a line that is not a database URL names the file and line, without its password", () => {
    const bad = () => parseTargets("postgres://a@h/one\nmysql://root:hunter2-secret@h/db\n", "fleet.txt");
    expect(bad).toThrow(InputError);
    expect(bad).toThrow(/^fleet\.txt:2: ".*" is not a database URL/);
    try {
      bad();
    } catch (error) {
      expect((error as Error).message).not.toContain("hunter2-secret");
    }
  });

  test("the fleet's exit code: a failure outranks invalid input, which outranks blocked", () => {
    expect(fleetExitCode([0, 0])).toBe(0);
    expect(fleetExitCode([0, 3])).toBe(3);
    expect(fleetExitCode([3, 2, 0])).toBe(2);
    expect(fleetExitCode([2, 3, 1])).toBe(1);
  });
});

describe.skipIf(!SERVER_URL && !SERVER_REQUIRED)("fleets on the local server", () => {
  test("--pre over a targets file applies on every database, one summary row each, no password shown", async () => {
    const dir = migrationsDir(FILES);
    const urls = await Promise.all([1, 2, 3, 4, 5].map(() => serverDatabaseUrl()));
    const listed = urls.map((url, i) => (i === 1 ? withPassword(url, "tenant-two-secret") : url));
    const run = await runCli(["--pre", "--dir", dir, "--targets", targetsFile(listed), "--parallel", "2"]);
    expectExit(run, 0);
    for (const url of urls) {
      const db = await open(url);
      expect(await appliedIds(db)).toEqual(["0001_users", "0003_orders"]);
      expect((await tables(db)).filter((t) => t !== "safemigrate_history")).toEqual(["orders", "users"]);
      // The summary row of this database: 2 applied, 1 waiting for --all, nothing blocked or failed.
      const name = new URL(url).pathname;
      expect(run.stdout).toMatch(new RegExp(`${name}\\s+2\\s+1\\s+0\\s+-\\s`));
    }
    expect(run.stdout).toContain("--pre on 5 databases");
    expect(run.stdout + run.stderr).not.toContain("tenant-two-secret");
  });

  test("strict refuses per target; a dead target fails alone; the exit code is the most severe; --json has one object each", async () => {
    const dir = migrationsDir(BLOCKING);
    const [ready, behind] = await Promise.all([serverDatabaseUrl(), serverDatabaseUrl()]);
    // `ready` already ran --all up to 0002; on `behind` 0003 waits on the after_deploy 0002: blocked, so strict applies nothing there.
    expectExit(await runCli(["--all", "--dir", migrationsDir({ "0001_users": FILES["0001_users"], "0002_drop_legacy": FILES["0002_drop_legacy"] }), "--database-url", ready]), 0);
    expectExit(await runCli(["--pre", "--dir", dir, "--database-url", behind]), 3);
    const dead = withPassword(new URL("/safemigrate_no_such_database", SERVER_URL!).toString(), "dead-target-secret");

    const blockedOnly = await runCli(["--pre", "--dir", dir, "--database-url", ready, "--database-url", behind, "--json"]);
    expectExit(blockedOnly, 3);
    const first = JSON.parse(blockedOnly.stdout);
    expect(first.targets.map((t: { exitCode: number }) => t.exitCode)).toEqual([0, 3]);
    expect(first.targets[0].applied.map((a: { id: string }) => a.id)).toEqual(["0003_orders"]);
    expect(first.targets[1].blocked.map((b: { id: string }) => b.id)).toEqual(["0003_orders"]);

    const run = await runCli(["--pre", "--dir", dir, "--database-url", dead, "--database-url", ready, "--database-url", behind, "--json"]);
    expectExit(run, 1);
    const result = JSON.parse(run.stdout);
    expect(result.exitCode).toBe(1);
    expect(result.targets.map((t: { exitCode: number }) => t.exitCode)).toEqual([1, 0, 3]);
    expect(result.targets[0].error).toContain("does not exist");
    expect(result.targets[1].applied).toEqual([]);
    expect(run.stdout + run.stderr).not.toContain("dead-target-secret");
    // What each database holds afterwards.
    expect(await appliedIds(await open(ready))).toEqual(["0001_users", "0002_drop_legacy", "0003_orders"]);
    expect(await appliedIds(await open(behind))).toEqual([]);
  });

  test("--status, --check and --plan across a fleet change nothing; --check names the drifted target and exits 2", async () => {
    const dir = migrationsDir(BLOCKING);
    const [clean, drifted, empty] = await Promise.all([serverDatabaseUrl(), serverDatabaseUrl(), serverDatabaseUrl()]);
    const first = migrationsDir({ "0001_users": FILES["0001_users"] });
    for (const url of [clean, drifted]) expectExit(await runCli(["--pre", "--dir", first, "--database-url", url]), 0);
    const db = await open(drifted);
    await db.exec(`update safemigrate_history set checksum = 'edited' where id = '0001_users'`);
    const fleet = ["--database-url", clean, "--database-url", drifted, "--database-url", empty];

    const status = await runCli(["--status", "--dir", dir, ...fleet, "--json"]);
    expectExit(status, 0);
    const states = JSON.parse(status.stdout).targets.map((t: { migrations: { state: string }[] }) => t.migrations.map((m) => m.state));
    expect(states).toEqual([["applied", "pending", "pending"], ["changed", "pending", "pending"], ["pending", "pending", "pending"]]);

    const check = await runCli(["--check", "--dir", dir, ...fleet]);
    expectExit(check, 2);
    expect(check.stderr).toContain("the up SQL changed after the migration was applied");
    expect(check.stdout).toMatch(new RegExp(`${new URL(drifted).pathname}\\s+1\\s+2\\s+0\\s+exit 2`));

    const plan = await runCli(["--all", "--plan", "--dir", dir, "--database-url", clean, "--database-url", empty, "--json"]);
    expectExit(plan, 0);
    expect(JSON.parse(plan.stdout).targets.map((t: { wouldApply: unknown[] }) => t.wouldApply.length)).toEqual([2, 3]);
    expect(await tables(await open(empty))).toEqual([]);
  });

  test("commands that change one database refuse a fleet; a database listed twice is refused", async () => {
    const dir = migrationsDir(FILES);
    const url = await serverDatabaseUrl();
    const other = await serverDatabaseUrl();
    const rollback = await runCli(["--rollback", "--last", "--dir", dir, "--database-url", url, "--database-url", other]);
    expectExit(rollback, 2);
    expect(rollback.stderr).toContain("--rollback works on one database at a time");
    const twice = await runCli(["--pre", "--dir", dir, "--database-url", url, "--targets", targetsFile([url])]);
    expectExit(twice, 2);
    expect(twice.stderr).toContain("is a target twice");
    expect(await tables(await open(url))).toEqual([]);
  });
});

// ----------------------------------------------------------------------------
// Two more clusters, created for this file and dropped after it.
// ----------------------------------------------------------------------------

const CLUSTERS_POSSIBLE = Boolean(SERVER_URL) && existsSync("/usr/bin/pg_createcluster") && process.getuid?.() === 0;
const clusters: { name: string; port: number }[] = [];

function createCluster(n: number): { name: string; port: number } {
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 10_000);
    const name = `fleet${process.pid}_${n}_${attempt}`;
    const made = spawnSync("pg_createcluster", ["15", name, "-p", String(port), "--start", "--", "--auth-host=trust", "--auth-local=trust"], { encoding: "utf8" });
    if (made.status === 0) return { name, port };
    spawnSync("pg_dropcluster", ["15", name, "--stop"]);
  }
  throw new Error("could not create a PostgreSQL cluster for the fleet test");
}

describe.skipIf(!CLUSTERS_POSSIBLE)("a fleet across three servers", () => {
  beforeAll(() => {
    clusters.push(createCluster(1));
    clusters.push(createCluster(2));
  });
  afterAll(() => {
    for (const { name } of clusters) spawnSync("pg_dropcluster", ["15", name, "--stop"]);
  });

  test("--all reaches databases on the local server and on two other clusters; each is its own target", async () => {
    const dir = migrationsDir(FILES);
    const urls = [await serverDatabaseUrl()];
    for (const { port } of clusters) {
      const admin = postgres(`postgres://postgres@127.0.0.1:${port}/postgres`, { max: 1, onnotice: () => {} });
      await admin.unsafe("create database tenant_a");
      await admin.unsafe("create database tenant_b");
      await admin.end();
      urls.push(`postgres://postgres:cluster-${port}-secret@127.0.0.1:${port}/tenant_a`, `postgres://postgres@127.0.0.1:${port}/tenant_b`);
    }
    const run = await runCli(["--all", "--dir", dir, "--targets", targetsFile(urls), "--parallel", "3"]);
    expectExit(run, 0);
    for (const url of urls) {
      const db = await open(url);
      expect(await appliedIds(db)).toEqual(["0001_users", "0002_drop_legacy", "0003_orders"]);
    }
    for (const { port } of clusters) {
      expect(run.stdout).toContain(`127.0.0.1:${port}/tenant_a`);
      expect(run.stdout + run.stderr).not.toContain(`cluster-${port}-secret`);
    }
    expect(run.stdout).toContain("--all on 5 databases");
    // A second run is a no-op everywhere.
    const again = await runCli(["--all", "--dir", dir, "--targets", targetsFile(urls), "--json"]);
    expectExit(again, 0);
    expect(JSON.parse(again.stdout).targets.map((t: { applied: unknown[] }) => t.applied.length)).toEqual([0, 0, 0, 0, 0]);
  });
});
