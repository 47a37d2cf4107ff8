/** Running without taking the site down: lock_timeout, retries and invalid indexes, on the real server. */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import postgres from "postgres";
import { DatabaseError, migrate, readMigrations, type RunEvent } from "../safemigrate.ts";
import { appliedIds, cleanup, columns, migrationsDir, open, runCli, SERVER_URL, serverDatabaseUrl } from "./helpers.ts";

// A guard against a hang, not a speed target (speed lives in bench/): on a loaded 2-core machine one
// PGlite start took 21 s and a whole pipeline test minutes, so no test may fail for being slow.
setDefaultTimeout(15 * 60_000);

afterEach(cleanup);

/** Another session that holds an ACCESS EXCLUSIVE lock on `table` until release() is called. */
async function holdLock(url: string, table: string) {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  let locked!: () => void;
  const isLocked = new Promise<void>((resolve) => (locked = resolve));
  const transaction = sql.begin(async (tx) => {
    await tx.unsafe(`lock table ${table} in access exclusive mode`);
    locked();
    await released;
  });
  await isLocked;
  return {
    release: async () => {
      release();
      await transaction;
      await sql.end();
    },
  };
}

async function databaseWithAccounts(): Promise<string> {
  const url = await serverDatabaseUrl();
  const db = await open(url);
  await db.exec("create table accounts (id int primary key)");
  return url;
}

describe.skipIf(!SERVER_URL)("lock_timeout and retries", () => {
  test("a migration that meets a held lock times out, retries, and succeeds once the lock is released", async () => {
    const url = await databaseWithAccounts();
    const lock = await holdLock(url, "accounts");
    const dir = migrationsDir({ "0001_add": "-- safe: before_deploy\nalter table accounts add column note text;" });
    const events: RunEvent[] = [];
    const db = await open(url);
    const running = migrate(db, readMigrations(dir), {
      phase: "all",
      mode: "strict",
      execution: { lockTimeoutMs: 200, statementTimeoutMs: 0, attempts: 8 },
      onEvent: (e) => events.push(e),
    });
    // Released once the migration has hit lock_timeout at least once (the gate reads table sizes first).
    let settled = false;
    running.finally(() => (settled = true)).catch(() => {});
    while (!settled && !events.some((e) => e.type === "lock-timeout")) await Bun.sleep(50);
    await lock.release();
    const result = await running;
    expect(result.applied.map((a) => a.id)).toEqual(["0001_add"]);
    const retries = events.filter((e) => e.type === "lock-timeout");
    expect(retries.length).toBeGreaterThanOrEqual(1);
    expect(retries[0]).toMatchObject({ type: "lock-timeout", id: "0001_add", attempt: 1, attempts: 8 });
    expect(await columns(db, "accounts")).toEqual(["id", "note"]);
  });

  test("with the lock never released it fails with exit 1 after the attempts and changes nothing", async () => {
    const url = await databaseWithAccounts();
    const lock = await holdLock(url, "accounts");
    try {
      const dir = migrationsDir({
        "0001_table": "-- safe: before_deploy\ncreate table other (id int);",
        "0002_add": "-- safe: before_deploy\nalter table accounts add column note text;",
      });
      const run = await runCli(["--all", "--dir", dir, "--database-url", url, "--lock-timeout", "100ms", "--lock-retries", "3"]);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain("lock timeout  0002_add");
      expect(run.stderr).toContain("attempt 1 of 3");
      expect(run.stderr).toContain("attempt 2 of 3");
      expect(run.stderr).toContain("0002_add.sql:2: migration 0002_add failed: canceling statement due to lock timeout");
      expect(run.stderr).toContain("3 times");
      expect(run.stderr).not.toContain("    at ");
    } finally {
      await lock.release();
    }
    const db = await open(url);
    expect(await columns(db, "accounts")).toEqual(["id"]);
    expect(await appliedIds(db)).toEqual(["0001_table"]);
  });

  test("a per-file lock-timeout wins over the run's", async () => {
    const url = await databaseWithAccounts();
    const lock = await holdLock(url, "accounts");
    try {
      const dir = migrationsDir({ "0001_add": "-- safe: before_deploy\n-- lock-timeout: 50ms\nalter table accounts add column note text;" });
      const db = await open(url);
      const started = performance.now();
      const error = await migrate(db, readMigrations(dir), {
        phase: "all",
        mode: "strict",
        execution: { lockTimeoutMs: 60_000, statementTimeoutMs: 0, attempts: 1 },
      }).catch((e) => e);
      expect(error).toBeInstanceOf(DatabaseError);
      expect(error.message).toContain("it waited 50ms for a lock 1 time");
      expect(performance.now() - started).toBeLessThan(30_000);
    } finally {
      await lock.release();
    }
  });

  test("a statement_timeout error is never retried", async () => {
    const url = await serverDatabaseUrl();
    const dir = migrationsDir({ "0001_slow": "-- safe: before_deploy\n-- statement-timeout: 100ms\nselect pg_sleep(2);" });
    const events: RunEvent[] = [];
    const db = await open(url);
    const error = await migrate(db, readMigrations(dir), { phase: "all", mode: "strict", onEvent: (e) => events.push(e) })
      .catch((e) => e);
    expect(error.message).toContain("canceling statement due to statement timeout");
    expect(events.filter((e) => e.type === "lock-timeout")).toEqual([]);
  });

  test("without a transaction only the statement that met the lock is retried", async () => {
    const url = await databaseWithAccounts();
    const lock = await holdLock(url, "accounts");
    const dir = migrationsDir({
      "0001_split": [
        "-- safe: before_deploy",
        "-- transaction: false",
        "create table audit (id int);",
        "alter table accounts add column note text;",
      ].join("\n"),
    });
    const db = await open(url);
    const running = migrate(db, readMigrations(dir), {
      phase: "all",
      mode: "strict",
      execution: { lockTimeoutMs: 200, statementTimeoutMs: 0, attempts: 8 },
    });
    await Bun.sleep(800);
    await lock.release();
    // Re-running the whole migration would fail on "relation audit already exists".
    expect((await running).applied.map((a) => a.id)).toEqual(["0001_split"]);
    expect(await columns(db, "accounts")).toEqual(["id", "note"]);
  });
});

describe.skipIf(!SERVER_URL)("invalid indexes left by a failed CREATE INDEX CONCURRENTLY", () => {
  test("the next run names the migration that failed part-way and the invalid index; --rerun with --repair-invalid-indexes runs it again", async () => {
    const url = await serverDatabaseUrl();
    const db = await open(url);
    await db.exec("create table emails (address text); insert into emails values ('a@x'), ('a@x');");
    const dir = migrationsDir({
      "0001_unique": [
        "-- safe: before_deploy",
        "-- transaction: false",
        "create unique index concurrently if not exists emails_address on emails (address);",
      ].join("\n"),
    });
    const args = ["--all", "--dir", dir, "--database-url", url];

    const failed = await runCli(args);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toContain("could not create unique index");

    await db.exec("delete from emails where ctid <> (select min(ctid) from emails)");
    const refused = await runCli(args);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain("0001_unique failed part-way");
    expect(refused.stderr).toContain("statement 1 failed (could not create unique index");
    expect(refused.stderr).toContain("leaves an INVALID index, which --repair-invalid-indexes drops");
    expect(refused.stderr).toContain("--rerun 0001_unique");
    expect(await appliedIds(db)).toEqual([]);

    // Without --rerun the invalid index is what stands in the way.
    const invalid = await runCli([...args, "--rerun", "0001_unique"]);
    expect(invalid.code).toBe(2);
    expect(invalid.stderr).toContain("invalid index left by a failed CREATE INDEX CONCURRENTLY: public.emails_address");

    const repaired = await runCli([...args, "--rerun", "0001_unique", "--repair-invalid-indexes"]);
    expect(repaired.code).toBe(0);
    expect(repaired.stdout).toContain("dropped invalid index  public.emails_address");
    expect(repaired.stdout).toContain("applied  0001_unique");
    const [index] = await db.query<{ valid: boolean }>(
      "select indisvalid as valid from pg_index where indexrelid = 'emails_address'::regclass",
    );
    expect(index.valid).toBe(true);
  });
});
