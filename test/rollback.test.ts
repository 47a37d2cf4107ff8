/**
 * Rollback, branch switching (--sync), adopting a database (--fake, --baseline)
 * and accepting an edited migration (--accept-changed), against real databases:
 * the same cases on the PostgreSQL server and on PGlite, each test on a fresh
 * database. The last part runs the CLI end to end.
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import {
  acceptChanged,
  type Database,
  type HistoryRow,
  InputError,
  migrate,
  type Migration,
  readHistory,
  readMigrations,
  recordWithoutRunning,
  rollback,
  rollbackPlan,
  type RunEvent,
  sync,
  syncPlan,
} from "../safemigrate.ts";
import { ALL, appliedIds, BACKENDS, cleanup, type CliRun, columns, failure, migration, migrationsDir, open, runCli, tables, withDb } from "./helpers.ts";

// A guard against a hang, not a speed target (speed lives in bench/): on a loaded 2-core machine one
// PGlite start took 21 s and a whole pipeline test minutes, so no test may fail for being slow.
setDefaultTimeout(15 * 60_000);

afterEach(cleanup);

const all = ALL;


/** Tables created by migrations (the history table left out). */
async function userTables(db: Database): Promise<string[]> {
  return (await tables(db)).filter((t) => t !== "safemigrate_history");
}

async function indexes(db: Database, table: string): Promise<string[]> {
  const rows = await db.query<{ name: string }>(
    `select indexname as name from pg_indexes where schemaname = 'public' and tablename = $1 order by 1`,
    [table],
  );
  return rows.map((r) => r.name);
}

/** The history as a comparable value: everything but timings. */
async function historySnapshot(db: Database): Promise<unknown[]> {
  return (await readHistory(db)).map((row) => [row.id, row.checksum, row.phase, row.appliedAt?.getTime() ?? null, row.downSql]);
}

async function noteOf(db: Database, id: string): Promise<{ note: string | null; phase: string | null }> {
  const [row] = await db.query<{ note: string | null; phase: string | null }>(
    `select note, phase from safemigrate_history where id = $1`,
    [id],
  );
  return row;
}

/** Collects the ids of "reverted" and "applied" events, in the order they happened. */
function recorder() {
  const events: string[] = [];
  return {
    events,
    onEvent: (event: RunEvent) => {
      if (event.type === "reverted") events.push(`revert ${event.step.id}`);
      if (event.type === "applied") events.push(`apply ${event.migration.id}`);
    },
  };
}


/** A three-step chain with default dependencies: 0001 <- 0002 <- 0003. */
const CHAIN = {
  "0001_users": "create table users (id int primary key);\n-- migrate:down\ndrop table users;",
  "0002_email": "alter table users add column email text;\n-- migrate:down\nalter table users drop column email;",
  "0003_orders": "create table orders (id int, user_id int references users (id));\n-- migrate:down\ndrop table orders;",
};

for (const backend of BACKENDS) {
  describe.skipIf(!backend.available)(`rollback on ${backend.name}`, () => {
    test("rolling back the middle of a chain undoes its dependent first, then it, and restores the schema", async () => {
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(migrationsDir(CHAIN));
      await migrate(db, migrations, all);
      expect(await userTables(db)).toEqual(["orders", "users"]);

      const { events, onEvent } = recorder();
      const result = await rollback(db, migrations, "0002_email", { onEvent });
      expect(result.steps.map((s) => s.id)).toEqual(["0003_orders", "0002_email"]);
      expect(result.reverted.map((r) => r.id)).toEqual(["0003_orders", "0002_email"]);
      expect(events).toEqual(["revert 0003_orders", "revert 0002_email"]);
      expect(await userTables(db)).toEqual(["users"]);
      expect(await columns(db, "users")).toEqual(["id"]);
      expect(await appliedIds(db)).toEqual(["0001_users"]);
      expect((await readHistory(db)).map((r) => r.id)).toEqual(["0001_users"]);

      // Applying again brings both back.
      const again = await migrate(db, migrations, all);
      expect(again.applied.map((a) => a.id)).toEqual(["0002_email", "0003_orders"]);
      expect(await columns(db, "users")).toEqual(["id", "email"]);
    });

    test("rolling back a root of a DAG undoes only what depends on it, not an unrelated branch", async () => {
      const dir = migrationsDir({
        "0001_users": "create table users (id int primary key);\n-- migrate:down\ndrop table users;",
        "0002_tags": "-- depends: []\ncreate table tags (id int primary key);\n-- migrate:down\ndrop table tags;",
        "0003_user_email": "-- depends: 0001_users\nalter table users add column email text;\n-- migrate:down\nalter table users drop column email;",
        "0004_tag_label": "-- depends: 0002_tags\nalter table tags add column label text;\n-- migrate:down\nalter table tags drop column label;",
        "0005_user_tags": [
          "-- depends: 0003_user_email",
          "create table user_tags (user_id int references users (id), note text);",
          "-- migrate:down",
          "drop table user_tags;",
        ].join("\n"),
      });
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(dir);
      await migrate(db, migrations, all);

      const result = await rollback(db, migrations, "0001_users", {});
      expect(result.reverted.map((r) => r.id)).toEqual(["0005_user_tags", "0003_user_email", "0001_users"]);
      expect(await userTables(db)).toEqual(["tags"]);
      expect(await columns(db, "tags")).toEqual(["id", "label"]);
      expect(await appliedIds(db)).toEqual(["0002_tags", "0004_tag_label"]);
    });

    test("rollback --last undoes only the most recently applied migration, one at a time", async () => {
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(migrationsDir(CHAIN));
      await migrate(db, migrations, all);

      const first = await rollback(db, migrations, { last: true }, {});
      expect(first.reverted.map((r) => r.id)).toEqual(["0003_orders"]);
      expect(await userTables(db)).toEqual(["users"]);
      expect(await appliedIds(db)).toEqual(["0001_users", "0002_email"]);

      const second = await rollback(db, migrations, { last: true }, {});
      expect(second.reverted.map((r) => r.id)).toEqual(["0002_email"]);
      expect(await columns(db, "users")).toEqual(["id"]);

      await rollback(db, migrations, { last: true }, {});
      expect(await userTables(db)).toEqual([]);
      const error = await failure(rollback(db, migrations, { last: true }, {}));
      expect(error).toBeInstanceOf(InputError);
      expect(error.message).toContain("no migration is applied; there is nothing to roll back");
    });

    test("rollback --last undoes only the newest migration even when two history rows share a timestamp", async () => {
      // --baseline records several rows in one transaction: they often land in the
      // same millisecond, which is all a timestamp read into JavaScript can tell apart.
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(migrationsDir(CHAIN));
      await db.exec("create table users (id int primary key, email text)");
      await recordWithoutRunning(db, migrations, "0002_email", "baseline");
      await db.exec(`update safemigrate_history set applied_at = '2024-05-01 12:00:00.000123+00'`);

      const result = await rollback(db, migrations, { last: true }, {});
      expect(result.reverted.map((r) => r.id)).toEqual(["0002_email"]);
      expect(await appliedIds(db)).toEqual(["0001_users"]);
      expect(await userTables(db)).toEqual(["users"]);
    });

    test("a migration whose file is gone is rolled back with the down SQL stored in the history", async () => {
      const db = await open(await backend.databaseUrl());
      await migrate(db, readMigrations(migrationsDir(CHAIN)), all);
      // Another branch: 0003 does not exist here.
      const other = readMigrations(migrationsDir({ "0001_users": CHAIN["0001_users"], "0002_email": CHAIN["0002_email"] }));

      const result = await rollback(db, other, "0003_orders", {});
      expect(result.steps).toHaveLength(1);
      expect(result.steps[0].source).toContain("safemigrate_history");
      expect(result.steps[0].source).toContain("0003_orders");
      expect(result.steps[0].down?.sql).toBe("drop table orders;");
      expect(await userTables(db)).toEqual(["users"]);
      expect(await appliedIds(db)).toEqual(["0001_users", "0002_email"]);
    });

    test("a dependent whose file is gone is found through the dependencies recorded when it was applied", async () => {
      const dir = migrationsDir({
        "0001_users": CHAIN["0001_users"],
        "0002_tags": "-- depends: []\ncreate table tags (id int);\n-- migrate:down\ndrop table tags;",
        // Sorts last but depends on 0001 only.
        "0003_user_notes": "-- depends: 0001_users\ncreate table user_notes (user_id int references users (id));\n-- migrate:down\ndrop table user_notes;",
      });
      const db = await open(await backend.databaseUrl());
      await migrate(db, readMigrations(dir), all);
      const other = readMigrations(migrationsDir({ "0001_users": CHAIN["0001_users"], "0002_tags": "-- depends: []\ncreate table tags (id int);\n-- migrate:down\ndrop table tags;" }));

      const result = await rollback(db, other, "0001_users", {});
      expect(result.reverted.map((r) => r.id)).toEqual(["0003_user_notes", "0001_users"]);
      expect(await userTables(db)).toEqual(["tags"]);
      expect(await appliedIds(db)).toEqual(["0002_tags"]);
    });

    test("rollback is refused without a down section, naming the migration, and nothing is changed", async () => {
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(migrationsDir({
        "0001_users": CHAIN["0001_users"],
        "0002_email": "alter table users add column email text;",
      }));
      await migrate(db, migrations, all);
      const before = await historySnapshot(db);

      const error = await failure(rollback(db, migrations, "0002_email", {}));
      expect(error).toBeInstanceOf(InputError);
      expect((error as InputError).exitCode).toBe(2);
      expect(error.message).toContain("cannot roll back 0002_email: 0002_email (");
      expect(error.message).toContain(`has no "-- migrate:down" section`);
      expect(error.message).toEndWith("Nothing was changed.");
      expect(await columns(db, "users")).toEqual(["id", "email"]);
      expect(await historySnapshot(db)).toEqual(before);
    });

    test("rollback is refused when a dependent further down the chain has no down section, and nothing is undone", async () => {
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(migrationsDir({
        "0001_users": CHAIN["0001_users"],
        "0002_email": CHAIN["0002_email"],
        "0003_orders": "create table orders (id int, user_id int references users (id));",
      }));
      await migrate(db, migrations, all);
      const before = await historySnapshot(db);

      const error = await failure(rollback(db, migrations, "0001_users", {}));
      expect(error).toBeInstanceOf(InputError);
      expect(error.message).toContain("cannot roll back 0001_users: 0003_orders (");
      expect(error.message).not.toContain("0002_email (");
      expect(error.message).toContain("Nothing was changed.");
      // Neither the newest (0003) nor anything else was undone.
      expect(await userTables(db)).toEqual(["orders", "users"]);
      expect(await columns(db, "users")).toEqual(["id", "email"]);
      expect(await historySnapshot(db)).toEqual(before);
    });

    test("a down section with transaction: false runs drop index concurrently outside a transaction", async () => {
      const dir = migrationsDir({
        "0001_items": "create table items (id int, sku text);\n-- migrate:down\ndrop table items;",
        "0002_sku_index": [
          "-- transaction: false",
          "create index concurrently items_sku_idx on items (sku);",
          "-- migrate:down",
          "-- transaction: false",
          "drop index concurrently items_sku_idx;",
        ].join("\n"),
      });
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(dir);
      await migrate(db, migrations, all);
      expect(await indexes(db, "items")).toEqual(["items_sku_idx"]);

      const result = await rollback(db, migrations, "0002_sku_index", {});
      expect(result.reverted.map((r) => r.id)).toEqual(["0002_sku_index"]);
      expect(await indexes(db, "items")).toEqual([]);
      expect(await appliedIds(db)).toEqual(["0001_items"]);
    });

    const outsideTransaction: [string, string[]][] = [
      ["a stored transaction: false down", ["-- transaction: false", "create index concurrently items_sku_idx on items (sku);", "-- migrate:down", "-- transaction: false"]],
      ["a stored down written dbmate-style (`-- migrate:down transaction:false`)", ["-- migrate:up transaction:false", "create index concurrently items_sku_idx on items (sku);", "-- migrate:down transaction:false"]],
    ];
    for (const [form, head] of outsideTransaction) {
      test(`${form} still runs outside a transaction when the file is gone`, async () => {
        const db = await open(await backend.databaseUrl());
        const items = "create table items (id int, sku text);\n-- migrate:down\ndrop table items;";
        await migrate(db, readMigrations(migrationsDir({
          "0001_items": items,
          "0002_sku_index": [...head, "drop index concurrently items_sku_idx;"].join("\n"),
        })), all);
        expect(await indexes(db, "items")).toEqual(["items_sku_idx"]);

        // The file is gone on this branch, so the down comes from the history.
        await rollback(db, readMigrations(migrationsDir({ "0001_items": items })), "0002_sku_index", {});
        expect(await indexes(db, "items")).toEqual([]);
        expect(await appliedIds(db)).toEqual(["0001_items"]);
      });
    }

    test("a dry run of a rollback lists the steps, newest first, and changes nothing", async () => {
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(migrationsDir(CHAIN));
      await migrate(db, migrations, all);
      const before = await historySnapshot(db);

      const result = await rollback(db, migrations, "0001_users", { dryRun: true });
      expect(result.dryRun).toBe(true);
      expect(result.steps.map((s) => s.id)).toEqual(["0003_orders", "0002_email", "0001_users"]);
      expect(result.reverted).toEqual([]);
      expect(await userTables(db)).toEqual(["orders", "users"]);
      expect(await historySnapshot(db)).toEqual(before);
    });

    test("rolling back a pending or unknown migration is refused with a readable message", async () => {
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(migrationsDir(CHAIN));
      await migrate(db, migrations.slice(0, 1), all);

      const pending = await failure(rollback(db, migrations, "0002_email", {}));
      expect(pending).toBeInstanceOf(InputError);
      expect(pending.message).toBe("0002_email is not applied; there is nothing to roll back");
      const unknown = await failure(rollback(db, migrations, "0001_user", {}));
      expect(unknown.message).toBe(`no migration "0001_user" is known — did you mean "0001_users"?`);
      expect(await appliedIds(db)).toEqual(["0001_users"]);
    });
  });

  describe.skipIf(!backend.available)(`sync between branches on ${backend.name}`, () => {
    const shared = {
      "0001_users": "create table users (id int primary key);\n-- migrate:down\ndrop table users;",
      "0002_email": "alter table users add column email text;\n-- migrate:down\nalter table users drop column email;",
    };
    const branchA = {
      ...shared,
      "0003a_nickname": "alter table users add column nickname text;\n-- migrate:down\nalter table users drop column nickname;",
    };
    const branchB = {
      ...shared,
      "0003b_orders": "create table orders (id int, user_id int references users (id));\n-- migrate:down\ndrop table orders;",
      "0004b_order_total": "alter table orders add column total numeric;\n-- migrate:down\nalter table orders drop column total;",
    };

    test("switching to a diverging branch undoes the other branch's migration and applies this one's; and back", async () => {
      const db = await open(await backend.databaseUrl());
      const a = readMigrations(migrationsDir(branchA));
      const b = readMigrations(migrationsDir(branchB));
      await migrate(db, a, all);
      expect(await columns(db, "users")).toEqual(["id", "email", "nickname"]);

      const toB = recorder();
      const resultB = await sync(db, b, { onEvent: toB.onEvent });
      expect(resultB.plan.revert.map((s) => s.id)).toEqual(["0003a_nickname"]);
      expect(resultB.plan.revert[0].source).toContain("safemigrate_history");
      expect(resultB.plan.apply.map((m) => m.id)).toEqual(["0003b_orders", "0004b_order_total"]);
      expect(toB.events).toEqual(["revert 0003a_nickname", "apply 0003b_orders", "apply 0004b_order_total"]);
      expect(await columns(db, "users")).toEqual(["id", "email"]);
      expect(await userTables(db)).toEqual(["orders", "users"]);
      expect(await columns(db, "orders")).toEqual(["id", "user_id", "total"]);
      expect(await appliedIds(db)).toEqual(["0001_users", "0002_email", "0003b_orders", "0004b_order_total"]);
      expect((await readHistory(db)).find((r) => r.id === "0003b_orders")?.phase).toBe("sync");

      const toA = recorder();
      await sync(db, a, { onEvent: toA.onEvent });
      expect(toA.events).toEqual(["revert 0004b_order_total", "revert 0003b_orders", "apply 0003a_nickname"]);
      expect(await userTables(db)).toEqual(["users"]);
      expect(await columns(db, "users")).toEqual(["id", "email", "nickname"]);
      expect(await appliedIds(db)).toEqual(["0001_users", "0002_email", "0003a_nickname"]);

      // Already in sync: nothing to do.
      const again = await sync(db, a, {});
      expect(again.plan).toEqual({ revert: [], apply: [] });
    });

    test("a migration whose up SQL differs between branches is undone with its stored down and re-applied", async () => {
      const db = await open(await backend.databaseUrl());
      const a = readMigrations(migrationsDir({
        ...shared,
        "0003_profile": "create table profile_a (id int);\n-- migrate:down\ndrop table profile_a;",
        "0004_profile_note": "alter table users add column note text;\n-- migrate:down\nalter table users drop column note;",
      }));
      // Same id, different SQL (and a down that only fits this branch's up).
      const b = readMigrations(migrationsDir({
        ...shared,
        "0003_profile": "create table profile_b (id int, bio text);\n-- migrate:down\ndrop table profile_b;",
        "0004_profile_note": "alter table users add column note text;\n-- migrate:down\nalter table users drop column note;",
      }));
      await migrate(db, a, all);

      const { events, onEvent } = recorder();
      const result = await sync(db, b, { onEvent });
      // 0004 depends on 0003 (the previous id), so it is undone and re-applied with it.
      expect(events).toEqual(["revert 0004_profile_note", "revert 0003_profile", "apply 0003_profile", "apply 0004_profile_note"]);
      expect(result.plan.revert.find((s) => s.id === "0003_profile")?.down?.sql).toBe("drop table profile_a;");
      expect(await userTables(db)).toEqual(["profile_b", "users"]);
      expect(await columns(db, "profile_b")).toEqual(["id", "bio"]);
      const row = (await readHistory(db)).find((r) => r.id === "0003_profile")!;
      expect(row.checksum).toBe(b.find((m) => m.id === "0003_profile")!.checksum);
      expect(row.downSql).toBe("-- migrate:down\ndrop table profile_b;");
    });

    test("sync is refused when a migration it must undo has no down section, and nothing changes", async () => {
      const db = await open(await backend.databaseUrl());
      await migrate(db, readMigrations(migrationsDir({
        ...shared,
        "0003a_nickname": "alter table users add column nickname text;",
      })), all);
      const before = await historySnapshot(db);

      const error = await failure(sync(db, readMigrations(migrationsDir(branchB)), {}));
      expect(error).toBeInstanceOf(InputError);
      expect(error.message).toContain("cannot switch the database to this branch: 0003a_nickname (0003a_nickname)");
      expect(error.message).toContain("Nothing was changed.");
      expect(await userTables(db)).toEqual(["users"]);
      expect(await columns(db, "users")).toEqual(["id", "email", "nickname"]);
      expect(await historySnapshot(db)).toEqual(before);
    });

    test("a dry run of sync returns the plan and changes nothing", async () => {
      const db = await open(await backend.databaseUrl());
      await migrate(db, readMigrations(migrationsDir(branchA)), all);
      const before = await historySnapshot(db);
      const result = await sync(db, readMigrations(migrationsDir(branchB)), { dryRun: true });
      expect(result.plan.revert.map((s) => s.id)).toEqual(["0003a_nickname"]);
      expect(result.plan.apply.map((m) => m.id)).toEqual(["0003b_orders", "0004b_order_total"]);
      expect(result.reverted).toEqual([]);
      expect(result.applied).toEqual([]);
      expect(await columns(db, "users")).toEqual(["id", "email", "nickname"]);
      expect(await historySnapshot(db)).toEqual(before);
    });
  });

  describe.skipIf(!backend.available)(`adopting a database on ${backend.name}: fake, baseline, accept-changed`, () => {
    test("fake records a migration as applied without running its SQL", async () => {
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(migrationsDir({
        "0001_users": "create table users (id int);",
        "0002_orders": "create table orders (id int);",
      }));
      const recorded = await recordWithoutRunning(db, migrations, "0001_users.sql", "fake");
      expect(recorded).toEqual(["0001_users"]);
      expect(await userTables(db)).toEqual([]);
      expect(await appliedIds(db)).toEqual(["0001_users"]);
      const row = (await readHistory(db))[0];
      expect(row.checksum).toBe(migrations[0].checksum);
      expect(await noteOf(db, "0001_users")).toEqual({
        phase: "fake",
        note: "recorded by --fake 0001_users without running its SQL",
      });

      // The rest runs normally; the faked one is not run.
      const run = await migrate(db, migrations, all);
      expect(run.applied.map((a) => a.id)).toEqual(["0002_orders"]);
      expect(await userTables(db)).toEqual(["orders"]);
    });

    test("baseline records the target and its transitive dependencies, not later or unrelated migrations", async () => {
      const dir = migrationsDir({
        "0001_users": "create table users (id int);",
        "0002_audit": "create table audit (id int);", // depends on 0001 but 0003 does not depend on it
        "0003_orders": "-- depends: 0001_users\ncreate table orders (id int);",
        "0004_order_total": "alter table orders add column total numeric;", // depends on 0003
        "0005_invoices": "create table invoices (id int);", // depends on 0004
      });
      const db = await open(await backend.databaseUrl());
      // The schema the adopted database already has.
      await db.exec("create table users (id int); create table orders (id int, total numeric);");
      const migrations = readMigrations(dir);

      const recorded = await recordWithoutRunning(db, migrations, "0004_order_total", "baseline");
      expect(recorded).toEqual(["0001_users", "0003_orders", "0004_order_total"]);
      expect(await appliedIds(db)).toEqual(["0001_users", "0003_orders", "0004_order_total"]);
      expect(await noteOf(db, "0001_users")).toEqual({
        phase: "baseline",
        note: "recorded by --baseline 0004_order_total without running its SQL",
      });
      expect(await userTables(db)).toEqual(["orders", "users"]);

      const run = await migrate(db, migrations, all);
      expect(run.applied.map((a) => a.id)).toEqual(["0002_audit", "0005_invoices"]);
      expect(await userTables(db)).toEqual(["audit", "invoices", "orders", "users"]);
    });

    test("fake and baseline refuse a migration that is already applied, and change nothing", async () => {
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(migrationsDir({
        "0001_users": "create table users (id int);",
        "0002_orders": "create table orders (id int);",
      }));
      await migrate(db, migrations.slice(0, 1), all);
      const before = await historySnapshot(db);

      for (const kind of ["fake", "baseline"] as const) {
        const error = await failure(recordWithoutRunning(db, migrations, "0001_users", kind));
        expect(error).toBeInstanceOf(InputError);
        expect(error.message).toBe(`0001_users is already applied; --${kind} only records migrations that are not`);
      }
      expect(await historySnapshot(db)).toEqual(before);
      expect(await userTables(db)).toEqual(["users"]);

      // baseline of a later one skips the applied dependency and records only the target.
      expect(await recordWithoutRunning(db, migrations, "0002_orders", "baseline")).toEqual(["0002_orders"]);
      expect((await historySnapshot(db))[0]).toEqual(before[0]);
      expect(await appliedIds(db)).toEqual(["0001_users", "0002_orders"]);
    });

    test("fake of an id with no file is refused with a did-you-mean", async () => {
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(migrationsDir({ "0001_users": "create table users (id int);" }));
      const error = await failure(recordWithoutRunning(db, migrations, "0001_user", "fake"));
      expect(error.message).toBe(`no migration file "0001_user" in the migrations directory — did you mean "0001_users"?`);
      expect(await appliedIds(db)).toEqual([]);
    });

    test("an edited applied migration is drift until accept-changed records its new checksum with a note", async () => {
      const db = await open(await backend.databaseUrl());
      const original = readMigrations(migrationsDir({ "0001_users": "create table users (id int);" }));
      await migrate(db, original, all);
      const edited = readMigrations(migrationsDir({
        "0001_users": "create table users (id int);\ncomment on table users is 'people';\n-- migrate:down\ndrop table users;",
        "0002_orders": "create table orders (id int);",
      }));

      const drift = await failure(migrate(db, edited, all));
      expect(drift).toBeInstanceOf(InputError);
      expect(drift.message).toContain("0001_users.sql: the up SQL changed after the migration was applied");
      expect(await userTables(db)).toEqual(["users"]);

      const accepted = await acceptChanged(db, edited, "0001_users");
      expect(accepted).toEqual({ id: "0001_users", from: original[0].checksum, to: edited[0].checksum, downRefreshed: true });
      const row = (await readHistory(db)).find((r) => r.id === "0001_users")!;
      expect(row.checksum).toBe(edited[0].checksum);
      expect(row.downSql).toBe("-- migrate:down\ndrop table users;");
      const { note } = await noteOf(db, "0001_users");
      expect(note).toMatch(
        new RegExp(`^accepted changed up SQL at \\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z: checksum ${original[0].checksum} -> ${edited[0].checksum}$`),
      );
      // The edit itself is not run.
      const [comment] = await db.query<{ c: string | null }>(`select obj_description('users'::regclass) as c`);
      expect(comment.c).toBeNull();

      const run = await migrate(db, edited, all);
      expect(run.applied.map((a) => a.id)).toEqual(["0002_orders"]);
      expect(await appliedIds(db)).toEqual(["0001_users", "0002_orders"]);
    });

    test("accept-changed refuses an unchanged migration and one that is not applied", async () => {
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(migrationsDir({
        "0001_users": "create table users (id int);",
        "0002_orders": "create table orders (id int);",
      }));
      await migrate(db, migrations.slice(0, 1), all);
      const before = await historySnapshot(db);

      const unchanged = await failure(acceptChanged(db, migrations, "0001_users"));
      expect(unchanged).toBeInstanceOf(InputError);
      expect(unchanged.message).toBe("0001_users has not changed since it was applied; nothing to accept");
      const pending = await failure(acceptChanged(db, migrations, "0002_orders"));
      expect(pending).toBeInstanceOf(InputError);
      expect(pending.message).toBe("0002_orders is not applied; there is no recorded checksum to replace");
      expect(await historySnapshot(db)).toEqual(before);
      expect((await noteOf(db, "0001_users")).note).toBeNull();
    });
  });
}

// ----------------------------------------------------------------------------
// The plans alone (pure): ordering when the history cannot tell
// ----------------------------------------------------------------------------

describe("rollback and sync plans (pure)", () => {
  const at = new Date("2024-05-01T12:00:00.000Z");
  const row = (m: Migration, appliedAt = at): HistoryRow => ({
    id: m.id,
    checksum: m.checksum,
    safe: m.safe,
    phase: "all",
    detectedAt: null,
    appliedAt,
    durationMs: 1,
    downSql: m.down?.raw ?? null,
    depends: m.depends,
  });
  const withDown = (id: string, depends: string[], table: string) =>
    migration(id, { depends }, `create table ${table} (id int);\n-- migrate:down\ndrop table ${table};`);

  test("rollback undoes a dependent before its dependency even when they were applied in the same millisecond", () => {
    // The dependency sorts after its dependent by id; only the graph says which is newer.
    const child = withDown("0001_child", ["0002_parent"], "child");
    const parent = withDown("0002_parent", [], "parent");
    const steps = rollbackPlan("0002_parent", [child, parent], [row(child), row(parent)]);
    expect(steps.map((s) => s.id)).toEqual(["0001_child", "0002_parent"]);
  });

  test("rollback --last picks the dependent, not its dependency, when both share the newest timestamp", () => {
    const a = withDown("0001_a", [], "a");
    const b = withDown("0002_b", ["0001_a"], "b");
    const steps = rollbackPlan({ last: true }, [a, b], [row(a), row(b)]);
    expect(steps.map((s) => s.id)).toEqual(["0002_b"]);
  });

  test("an id's number alone is taken as a guess at that id; a bare step count says how to undo the most recent", () => {
    const a = withDown("0001_a", [], "a");
    const b = withDown("0012_b", ["0001_a"], "b");
    const refused = (target: string) => {
      try {
        rollbackPlan(target, [a, b], [row(a), row(b)]);
      } catch (error) {
        return (error as Error).message;
      }
      return "planned";
    };
    expect(refused("0012")).toBe(`no migration "0012" is known — did you mean "0012_b"?`);
    expect(refused("3")).toBe(`no migration "3" is known — --rollback takes a migration id; --rollback --last undoes the most recent`);
  });

  test("sync plans to undo what the branch does not have and apply what it has, newest first", () => {
    const m1 = withDown("0001_a", [], "a");
    const gone = withDown("0002_gone", ["0001_a"], "gone");
    const here = withDown("0002_here", ["0001_a"], "here");
    const plan = syncPlan([m1, here], [row(m1, new Date(1000)), row(gone, new Date(2000))], new Date());
    expect(plan.revert.map((s) => [s.id, s.down?.sql])).toEqual([["0002_gone", "drop table gone;"]]);
    expect(plan.revert[0].source).toContain("safemigrate_history");
    expect(plan.apply.map((m) => m.id)).toEqual(["0002_here"]);
  });
});

// ----------------------------------------------------------------------------
// The command line, end to end
// ----------------------------------------------------------------------------

/** `safemigrate --dir <dir> --database-url <url> ...args`. */
function cli(dir: string, url: string, args: string[], env: Record<string, string | undefined> = {}): Promise<CliRun> {
  return runCli(["--dir", dir, "--database-url", url, ...args], { env });
}

function expectExit(run: CliRun, code: number): void {
  if (run.code !== code) {
    throw new Error(`expected exit ${code}, got exit ${run.code}\n--- stdout ---\n${run.stdout}\n--- stderr ---\n${run.stderr}`);
  }
}

/** Setup without spawning the CLI: apply every migration of `dir` through the API. */
async function applyAll(dir: string, url: string): Promise<void> {
  await withDb(url, async (db) => {
    await migrate(db, readMigrations(dir), all);
  });
}

const rolledBackLines = (stdout: string) => [...stdout.matchAll(/^\s+rolled back\s+(\S+)/gm)].map((m) => m[1]);
const appliedLines = (stdout: string) => [...stdout.matchAll(/^\s+applied\s+(\S+)/gm)].map((m) => m[1]);

for (const backend of BACKENDS) {
  describe.skipIf(!backend.available)(`CLI rollback, sync, fake, baseline, accept-changed on ${backend.name}`, () => {
    test("--rollback <id> exits 0 and undoes newest first; --rollback --last undoes one", async () => {
      const dir = migrationsDir(CHAIN);
      const url = await backend.databaseUrl();
      await applyAll(dir, url);

      const run = await cli(dir, url, ["--rollback", "0002_email"]);
      expectExit(run, 0);
      expect(rolledBackLines(run.stdout)).toEqual(["0003_orders", "0002_email"]);
      expect(run.stdout).toContain("Rolled back 2 migrations");
      await withDb(url, async (db) => {
        expect(await userTables(db)).toEqual(["users"]);
        expect(await appliedIds(db)).toEqual(["0001_users"]);
      });

      const last = await cli(dir, url, ["--rollback", "--last"]);
      expectExit(last, 0);
      expect(rolledBackLines(last.stdout)).toEqual(["0001_users"]);
      await withDb(url, async (db) => expect(await tables(db)).toEqual(["safemigrate_history"]));
    });

    test("--rollback --plan shows the steps and changes nothing", async () => {
      const dir = migrationsDir(CHAIN);
      const url = await backend.databaseUrl();
      await applyAll(dir, url);
      const before = await withDb(url, historySnapshot);

      const run = await cli(dir, url, ["--rollback", "0002_email", "--plan"]);
      expectExit(run, 0);
      expect(run.stdout).toContain("plan for --rollback 0002_email:");
      expect([...run.stdout.matchAll(/^\s+roll back\s+(\S+)/gm)].map((m) => m[1])).toEqual(["0003_orders", "0002_email"]);
      expect(rolledBackLines(run.stdout)).toEqual([]);
      await withDb(url, async (db) => {
        expect(await userTables(db)).toEqual(["orders", "users"]);
        expect(await columns(db, "users")).toEqual(["id", "email"]);
        expect(await historySnapshot(db)).toEqual(before);
      });
    });

    test("--rollback of a migration without a down section exits 2 naming it and changes nothing", async () => {
      const dir = migrationsDir({ "0001_users": CHAIN["0001_users"], "0002_email": "alter table users add column email text;" });
      const url = await backend.databaseUrl();
      await applyAll(dir, url);

      for (const args of [["--rollback", "0002_email"], ["--rollback", "--last"], ["--rollback", "0001_users", "--plan"]]) {
        const run = await cli(dir, url, args);
        expectExit(run, 2);
        expect(run.stderr).toContain("0002_email");
        expect(run.stderr).toContain(`has no "-- migrate:down" section`);
        expect(run.stderr).toContain("Nothing was changed.");
      }
      await withDb(url, async (db) => {
        expect(await columns(db, "users")).toEqual(["id", "email"]);
        expect(await appliedIds(db)).toEqual(["0001_users", "0002_email"]);
      });
    });

    test("--sync switches to another branch's migrations; --sync --plan changes nothing", async () => {
      const a = migrationsDir({
        "0001_users": CHAIN["0001_users"],
        "0002a_nick": "alter table users add column nick text;\n-- migrate:down\nalter table users drop column nick;",
      });
      const b = migrationsDir({
        "0001_users": CHAIN["0001_users"],
        "0002b_orders": "create table orders (id int);\n-- migrate:down\ndrop table orders;",
      });
      const url = await backend.databaseUrl();
      await applyAll(a, url);

      const plan = await cli(b, url, ["--sync", "--plan"]);
      expectExit(plan, 0);
      expect(plan.stdout).toContain("plan for --sync:");
      expect(plan.stdout).toMatch(/roll back\s+0002a_nick\b[^\n]*safemigrate_history/);
      expect(plan.stdout).toMatch(/apply\s+0002b_orders/);
      await withDb(url, async (db) => {
        expect(await columns(db, "users")).toEqual(["id", "nick"]);
        expect(await appliedIds(db)).toEqual(["0001_users", "0002a_nick"]);
      });

      const run = await cli(b, url, ["--sync"]);
      expectExit(run, 0);
      expect(rolledBackLines(run.stdout)).toEqual(["0002a_nick"]);
      expect(appliedLines(run.stdout)).toEqual(["0002b_orders"]);
      expect(run.stdout).toContain("Rolled back 1 migration, applied 1 migration");
      await withDb(url, async (db) => {
        expect(await userTables(db)).toEqual(["orders", "users"]);
        expect(await columns(db, "users")).toEqual(["id"]);
        expect(await appliedIds(db)).toEqual(["0001_users", "0002b_orders"]);
      });
    });

    test("--sync is refused in a deployed environment (DYNO set) unless --force", async () => {
      const a = migrationsDir({ "0001_a": "create table a (id int);\n-- migrate:down\ndrop table a;" });
      const b = migrationsDir({ "0001_b": "create table b (id int);\n-- migrate:down\ndrop table b;" });
      const url = await backend.databaseUrl();
      await applyAll(a, url);

      const refused = await cli(b, url, ["--sync"], { DYNO: "web.1" });
      expectExit(refused, 2);
      expect(refused.stderr).toContain("this looks like a deployed environment (DYNO set). Pass --force if you really mean it");
      await withDb(url, async (db) => {
        expect(await userTables(db)).toEqual(["a"]);
        expect(await appliedIds(db)).toEqual(["0001_a"]);
      });

      const forced = await cli(b, url, ["--sync", "--force"], { DYNO: "web.1" });
      expectExit(forced, 0);
      await withDb(url, async (db) => {
        expect(await userTables(db)).toEqual(["b"]);
        expect(await appliedIds(db)).toEqual(["0001_b"]);
      });
    });

    test("--fake and --baseline record without running and exit 2 on an applied migration", async () => {
      const dir = migrationsDir({
        "0001_users": "create table users (id int);",
        "0002_orders": "create table orders (id int);",
        "0003_items": "create table items (id int);",
      });
      const url = await backend.databaseUrl();
      const baseline = await cli(dir, url, ["--baseline", "0002_orders"]);
      expectExit(baseline, 0);
      expect(baseline.stdout).toContain("Recorded as applied without running them: 0001_users, 0002_orders.");
      await withDb(url, async (db) => {
        expect(await userTables(db)).toEqual([]);
        expect(await appliedIds(db)).toEqual(["0001_users", "0002_orders"]);
      });

      for (const args of [["--fake", "0002_orders"], ["--baseline", "0001_users"]]) {
        const run = await cli(dir, url, args);
        expectExit(run, 2);
        expect(run.stderr).toContain(`is already applied; ${args[0]} only records migrations that are not`);
      }

      const fake = await cli(dir, url, ["--fake", "0003_items"]);
      expectExit(fake, 0);
      expect(fake.stdout).toContain("Recorded as applied without running them: 0003_items.");
      await withDb(url, async (db) => {
        expect(await userTables(db)).toEqual([]);
        expect(await appliedIds(db)).toEqual(["0001_users", "0002_orders", "0003_items"]);
      });
    });

    test("--all exits 2 on an edited applied migration until --accept-changed; then it runs", async () => {
      const original = migrationsDir({ "0001_users": "create table users (id int);" });
      const url = await backend.databaseUrl();
      await applyAll(original, url);
      const edited = migrationsDir({
        "0001_users": "create table users (id bigint);",
        "0002_orders": "create table orders (id int);",
      });

      const drift = await cli(edited, url, ["--all"]);
      expectExit(drift, 2);
      expect(drift.stderr).toContain("the up SQL changed after the migration was applied");

      const accept = await cli(edited, url, ["--accept-changed", "0001_users"]);
      expectExit(accept, 0);
      expect(accept.stdout).toContain("Accepted the changed up SQL of 0001_users");
      const again = await cli(edited, url, ["--accept-changed", "0001_users"]);
      expectExit(again, 2);
      expect(again.stderr).toContain("0001_users has not changed since it was applied; nothing to accept");

      const run = await cli(edited, url, ["--all"]);
      expectExit(run, 0);
      expect(appliedLines(run.stdout)).toEqual(["0002_orders"]);
      await withDb(url, async (db) => {
        expect(await appliedIds(db)).toEqual(["0001_users", "0002_orders"]);
        expect((await noteOf(db, "0001_users")).note).toContain("accepted changed up SQL");
      });
    });
  });
}
