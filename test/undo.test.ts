/**
 * Undo on real databases: a down fixed in the file is the one that runs, a
 * down with no SQL is irreversible on purpose, every down is parsed before
 * any runs, and a rollback that stops midway says exactly where the database
 * is (human and JSON). The same cases on the server and on PGlite.
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  acceptChanged,
  DatabaseError,
  InputError,
  migrate,
  readHistory,
  readMigrations,
  rollback,
  StoppedMidway,
  sync,
} from "../safemigrate.ts";
import { ALL, appliedIds, BACKENDS, cleanup, type CliRun, failure, migrationsDir, open, runCli, tables, withDb } from "./helpers.ts";

setDefaultTimeout(120_000);
afterEach(cleanup);

/** Lint is not what these tests are about. */
const APPLY = { ...ALL, lint: false };

function expectExit(run: CliRun, code: number): void {
  if (run.code !== code) {
    throw new Error(`expected exit ${code}, got exit ${run.code}\n--- stdout ---\n${run.stdout}\n--- stderr ---\n${run.stderr}`);
  }
}


const USERS = "create table users (id int primary key);\n-- migrate:down\ndrop table users;";
/** crates.io's mistake: dropping a unique index as if it were a constraint. */
const BROKEN_DOWN = "create unique index users_id_idx on users (id);\n-- migrate:down\nalter table users drop constraint users_id_idx;";
const FIXED_DOWN = "create unique index users_id_idx on users (id);\n-- migrate:down\ndrop index users_id_idx;";

/** `count` one-table migrations t1..tN, each with its own down; `downs` overrides some downs. */
function chain(count: number, downs: Record<number, string> = {}): Record<string, string> {
  const files: Record<string, string> = {};
  for (let n = 1; n <= count; n++) {
    files[`${String(n).padStart(4, "0")}_t${n}`] = `create table t${n} (id int);\n-- migrate:down\n${downs[n] ?? `drop table t${n};`}`;
  }
  return files;
}
const ids = (from: number, to: number) => {
  const list: string[] = [];
  for (let n = from; from <= to ? n <= to : n >= to; n += from <= to ? 1 : -1) list.push(`${String(n).padStart(4, "0")}_t${n}`);
  return list;
};

for (const backend of BACKENDS) {
  describe.skipIf(!backend.available)(`downs you can fix on ${backend.name}`, () => {
    test("a down fixed in the file is used while the up is the applied one; the output says it differs from the stored copy", async () => {
      const dir = migrationsDir({ "0001_users": USERS, "0002_idx": BROKEN_DOWN });
      const db = await open(await backend.databaseUrl());
      await migrate(db, readMigrations(dir), APPLY);

      const failed = await failure(rollback(db, readMigrations(dir), "0002_idx", {}));
      expect(failed).toBeInstanceOf(StoppedMidway);
      expect(failed.message).toContain(`constraint "users_id_idx" of relation "users" does not exist`);
      expect(failed.message).toContain("nothing of it took effect; 0002_idx stays applied");
      expect(failed.message).not.toContain("it was rolled back");
      expect(await appliedIds(db)).toEqual(["0001_users", "0002_idx"]);

      writeFileSync(join(dir, "0002_idx.sql"), FIXED_DOWN);
      const fixed = readMigrations(dir);
      const result = await rollback(db, fixed, "0002_idx", {});
      expect(result.steps.map(({ id, origin, source, note }) => ({ id, origin, source, note }))).toEqual([{
        id: "0002_idx",
        origin: "file",
        source: join(dir, "0002_idx.sql"),
        note: "which differs from the copy stored when it was applied (--accept-changed refreshes that copy)",
      }]);
      expect(await appliedIds(db)).toEqual(["0001_users"]);
      const [index] = await db.query<{ n: number }>(`select count(*)::int as n from pg_indexes where indexname = 'users_id_idx'`);
      expect(index.n).toBe(0);
    });

    test("--accept-changed refreshes the stored down from the file, so it works once the file is gone", async () => {
      const dir = migrationsDir({ "0001_users": USERS, "0002_idx": BROKEN_DOWN });
      const db = await open(await backend.databaseUrl());
      await migrate(db, readMigrations(dir), APPLY);
      writeFileSync(join(dir, "0002_idx.sql"), FIXED_DOWN);

      const refreshed = await acceptChanged(db, readMigrations(dir), "0002_idx");
      expect(refreshed.downRefreshed).toBe(true);
      expect(refreshed.from).toBe(refreshed.to);
      const row = (await readHistory(db)).find((r) => r.id === "0002_idx")!;
      expect(row.downSql).toBe("-- migrate:down\ndrop index users_id_idx;");

      rmSync(join(dir, "0002_idx.sql"));
      const result = await rollback(db, readMigrations(dir), "0002_idx", {});
      expect(result.steps[0]).toMatchObject({ origin: "stored", source: "safemigrate_history[0002_idx]", note: "its file is gone" });
      expect(await appliedIds(db)).toEqual(["0001_users"]);
    });

    test("the stored copy is used when the file's up changed, and the plan says why", async () => {
      const dir = migrationsDir({ "0001_users": USERS, "0002_idx": FIXED_DOWN });
      const db = await open(await backend.databaseUrl());
      await migrate(db, readMigrations(dir), APPLY);
      writeFileSync(join(dir, "0002_idx.sql"), "create unique index users_id_idx on users (id) where id > 0;\n-- migrate:down\nselect nope;");
      const result = await rollback(db, readMigrations(dir), "0002_idx", { dryRun: true });
      expect(result.steps[0]).toMatchObject({ origin: "stored", note: "the file's up SQL changed since it was applied" });
    });
  });

  describe.skipIf(!backend.available)(`irreversible on purpose on ${backend.name}`, () => {
    const BASELINE = "create table base (id int);\n-- migrate:down\n-- Nothing\n";

    test("a down with only comments is irreversible: rollback and sync refuse it by name and change nothing", async () => {
      const dir = migrationsDir({ "0001_base": BASELINE, "0002_users": USERS });
      const url = await backend.databaseUrl();
      await withDb(url, (db) => migrate(db, readMigrations(dir), APPLY));

      await withDb(url, async (db) => {
        const error = await failure(rollback(db, readMigrations(dir), "0001_base", {}));
        expect(error).toBeInstanceOf(InputError);
        expect(error.message).toContain("cannot roll back 0001_base: 0001_base (");
        expect(error.message).toContain("is irreversible: the down section has no SQL, only comments");
        expect(error.message).toEndWith("Nothing was changed.");
        expect(await appliedIds(db)).toEqual(["0001_base", "0002_users"]);
        expect(await tables(db)).toContain("users");

        // The branch without 0001_base: sync would have to undo it.
        const other = readMigrations(migrationsDir({ "0002_users": USERS }));
        const refused = await failure(sync(db, other, {}));
        expect(refused.message).toContain("cannot switch the database to this branch: 0001_base (safemigrate_history[0001_base]) is irreversible");
        expect(await appliedIds(db)).toEqual(["0001_base", "0002_users"]);
      });
      const run = await runCli(["--rollback", "0001_base", "--dir", dir, "--database-url", url]);
      expectExit(run, 2);
      expect(run.stderr).toContain("0001_base");
      expect(run.stderr).toContain("is irreversible");
      // Rolling back the later migration alone still works.
      expectExit(await runCli(["--rollback", "0002_users", "--dir", dir, "--database-url", url]), 0);
    });

    test("a file with no down section at all is still reported as missing one, not as irreversible", async () => {
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(migrationsDir({ "0001_base": "create table base (id int);" }));
      await migrate(db, migrations, APPLY);
      const error = await failure(rollback(db, migrations, "0001_base", {}));
      expect(error.message).toContain(`has no "-- migrate:down" section`);
      expect(error.message).not.toContain("irreversible");
    });
  });

  describe.skipIf(!backend.available)(`parse before acting on ${backend.name}`, () => {
    test("a syntax error in the 15th of 30 downs refuses the rollback before any down runs, naming the file and line", async () => {
      const dir = migrationsDir(chain(30, { 15: "drop tabel t15;" }));
      const url = await backend.databaseUrl();
      await withDb(url, (db) => migrate(db, readMigrations(dir), APPLY));

      const run = await runCli(["--rollback", "0001_t1", "--dir", dir, "--database-url", url, "--json"]);
      expectExit(run, 2);
      const report = JSON.parse(run.stdout.trim());
      expect(report.ok).toBe(false);
      expect(report.error).toContain(`${join(dir, "0015_t15.sql")}:3: SQL syntax error`);
      expect(report.error).toContain("in the down SQL of 0015_t15 from its file. Nothing was changed.");
      await withDb(url, async (db) => {
        expect(await appliedIds(db)).toEqual(ids(1, 30));
        expect((await tables(db)).filter((t) => t.startsWith("t"))).toHaveLength(30);
      });
    });

    test("a syntax error in a stored down (the file is gone) is refused naming the stored copy", async () => {
      const files = chain(5, { 3: "drop tabel t3;" });
      const dir = migrationsDir(files);
      const db = await open(await backend.databaseUrl());
      await migrate(db, readMigrations(dir), APPLY);
      rmSync(join(dir, "0003_t3.sql"));
      const error = await failure(rollback(db, readMigrations(dir), "0001_t1", {}));
      expect(error).toBeInstanceOf(InputError);
      expect(error.message).toContain("safemigrate_history[0003_t3]:2: SQL syntax error");
      expect(error.message).toContain(`stored in safemigrate_history when it was applied (lines count from its "-- migrate:down" line)`);
      expect(await appliedIds(db)).toEqual(ids(1, 5));
    });

    test("a server error in the 15th of 30 downs stops with exit 1 and lists what was reverted, what failed and what was not reached", async () => {
      const dir = migrationsDir(chain(30, { 15: "drop table t15;\ndrop table nope;" }));
      const url = await backend.databaseUrl();
      await withDb(url, (db) => migrate(db, readMigrations(dir), APPLY));

      const json = await runCli(["--rollback", "0001_t1", "--dir", dir, "--database-url", url, "--json"]);
      expectExit(json, 1);
      const report = JSON.parse(json.stdout.trim());
      expect(report.exitCode).toBe(1);
      expect(report.planned).toEqual({ revert: 30, apply: 0 });
      expect(report.reverted.map((r: { id: string }) => r.id)).toEqual(ids(30, 16));
      expect(report.failed).toEqual({ id: "0015_t15", action: "revert", source: join(dir, "0015_t15.sql"), tookEffect: "nothing" });
      expect(report.notReached).toEqual(ids(14, 1).map((id) => ({ id, action: "revert" })));
      expect(report.error).toContain("nothing of it took effect; 0015_t15 stays applied");
      await withDb(url, async (db) => {
        expect(await appliedIds(db)).toEqual(ids(1, 15));
        // Transactional: the first statement of the failed down did not take effect either.
        expect(await tables(db)).toContain("t15");
      });
    });

    test("the human report of a rollback that stopped says how far it got", async () => {
      const dir = migrationsDir(chain(8, { 4: "drop table nope;" }));
      const url = await backend.databaseUrl();
      await withDb(url, (db) => migrate(db, readMigrations(dir), APPLY));
      const run = await runCli(["--rollback", "0001_t1", "--dir", dir, "--database-url", url]);
      expectExit(run, 1);
      for (const id of ids(8, 5)) expect(run.stdout).toMatch(new RegExp(`rolled back\\s+${id}`));
      expect(run.stderr).toContain("stopped at 0004_t4: rolled back 4 of 8 before it");
      expect(run.stderr).toContain("  rolled back: 0008_t8, 0007_t7, 0006_t6, 0005_t5");
      expect(run.stderr).toContain("  failed: 0004_t4 (nothing of it took effect)");
      expect(run.stderr).toContain("  not reached, still applied: 0003_t3, 0002_t2, 0001_t1");
      expect(run.stderr).not.toContain("    at ");
    });

    test("a transaction: false down that fails midway keeps what ran and says the migration stays recorded as applied", async () => {
      const dir = migrationsDir(chain(3, { 2: "-- transaction: false\ndrop table t2;\ndrop table nope;" }));
      const db = await open(await backend.databaseUrl());
      await migrate(db, readMigrations(dir), APPLY);
      const error = await failure(rollback(db, readMigrations(dir), "0001_t1", {}));
      expect(error).toBeInstanceOf(DatabaseError);
      expect(error.message).toContain(
        "the statements before it (lines 4) took effect and stay; 0002_t2 stays recorded as applied",
      );
      expect(error.message).not.toContain("it is not recorded");
      expect((error as StoppedMidway).progress.failed).toMatchObject({ id: "0002_t2", tookEffect: "statements 1 to 1 of 2 (lines 4)" });
      expect(await appliedIds(db)).toEqual(ids(1, 2));
      expect(await tables(db)).not.toContain("t2");
    });
  });
}
