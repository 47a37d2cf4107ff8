/**
 * `--rehearse`: apply, undo and re-apply every migration on a scratch database
 * and report downs that do not restore the schema, missing downs and ups that
 * cannot run twice. The API runs on a fresh database of each backend; the CLI
 * runs on its own scratch database (in-memory PGlite, or a temporary database
 * on the server that it must drop).
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import postgres from "postgres";
import {
  connect,
  diffSchemas,
  InputError,
  readMigrations,
  rehearse,
  type RehearsalProblem,
  SchemaTracker,
  snapshotSchema,
} from "../safemigrate.ts";
import { BACKENDS, cleanup, type CliRun, failure, migrationsDir, open, ROOT, runCli, SERVER_URL, serverDatabaseUrl, tables } from "./helpers.ts";

// A guard against a hang, not a speed target (speed lives in bench/): on a loaded 2-core machine one
// PGlite start took 21 s and a whole pipeline test minutes, so no test may fail for being slow.
setDefaultTimeout(15 * 60_000);

afterEach(cleanup);

const PROJECT_MIGRATIONS = join(ROOT, "migrations");

function expectExit(run: CliRun, code: number): void {
  if (run.code !== code) {
    throw new Error(`expected exit ${code}, got exit ${run.code}\n--- stdout ---\n${run.stdout}\n--- stderr ---\n${run.stderr}`);
  }
}


const kinds = (problems: RehearsalProblem[]) => problems.map((p) => `${p.id}: ${p.kind}`);
const differencesOf = (problems: RehearsalProblem[], id: string) =>
  problems.flatMap((p) => (p.id === id ? p.differences ?? [] : []));

const TABLE = "create table t (id int primary key, a int);\n-- migrate:down\ndrop table t;";

/** A down that undoes the column but forgets the index the up also created. */
const FORGETS_INDEX = {
  "0001_t": TABLE,
  "0002_note": [
    "alter table t add column note text;",
    "create index if not exists t_a_idx on t (a);",
    "-- migrate:down",
    "alter table t drop column note;",
  ].join("\n"),
};

/** A down that drops the wrong column. */
const WRONG_COLUMN = {
  "0001_t": TABLE,
  "0002_b": "alter table t add column if not exists b text;\n-- migrate:down\nalter table t drop column a;",
};

/**
 * Changes that alter how other objects render (a view names the column it
 * reads, an index names its table, a column its enum array type, a partition
 * has its parent's columns) while the event triggers report only the object
 * changed: the near misses of reading only what a step touched. All but the
 * last restore cleanly; the last renames a column the view reads and keeps it
 * (so its second up fails too).
 */
const RENDERED_ELSEWHERE = {
  "0001_base": [
    "create type mood as enum ('a', 'b');",
    "create table t (id int primary key, a int, n int, m mood[]);",
    "create view v as select a from t;",
    "create table p (a int, b int) partition by range (a);",
    "create table p1 partition of p for values from (0) to (10) partition by range (b);",
    "create table p11 partition of p1 for values from (0) to (10);",
    "-- migrate:down",
    "drop view v; drop table p; drop table t; drop type mood;",
  ].join("\n"),
  "0002_rename_column": "alter table t rename column a to b;\n-- migrate:down\nalter table t rename column b to a;",
  // The type change rebuilds the index under a new oid without reporting it; the down then drops it.
  "0003_retype": "create index t_n on t (n);\nalter table t alter column n type bigint;\n-- migrate:down\nalter table t alter column n type int;\ndrop index t_n;",
  // Renaming the primary key's index renames its constraint, which is not reported.
  "0004_rename_pk": "alter index t_pkey rename to t_pk;\n-- migrate:down\nalter index t_pk rename to t_pkey;",
  "0005_rename_enum": "alter type mood rename to feeling;\n-- migrate:down\nalter type feeling rename to mood;",
  "0006_partition_column": "alter table p add column c text;\n-- migrate:down\nalter table p drop column c;",
  "0007_rename_kept": "alter table t rename column b to c;\n-- migrate:down\nselect 1;",
};

for (const backend of BACKENDS) {
  describe.skipIf(!backend.available)(`rehearsal on ${backend.name}`, () => {
    test("the project's own migrations rehearse cleanly: every down restores the schema and every up re-applies", async () => {
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(PROJECT_MIGRATIONS);
      const steps: string[] = [];
      const result = await rehearse(db, migrations, (step) => steps.push(`${step.id}:${step.status}`));
      expect(result.problems).toEqual([]);
      expect(result.rehearsed).toEqual(migrations.map((m) => m.id));
      expect(steps).toEqual(migrations.map((m) => `${m.id}:ok`));
      // Then the rollback a user runs: all of them, newest first, back to the empty schema.
      expect(result.rollback).toEqual({ ids: migrations.map((m) => m.id).reverse(), reverted: migrations.length });
      expect(await tables(db)).toEqual(["safemigrate_history"]);
    });

    test("a down that forgets an index is reported with the index left behind", async () => {
      const db = await open(await backend.databaseUrl());
      const result = await rehearse(db, readMigrations(migrationsDir(FORGETS_INDEX)));
      expect(kinds(result.problems)).toEqual(["0002_note: down does not restore"]);
      expect(result.problems[0].message).toContain("0002_note.sql:4: the down section does not restore the schema");
      const differences = differencesOf(result.problems, "0002_note");
      expect(differences).toHaveLength(1);
      expect(differences[0]).toStartWith("left behind: index public.t_a_idx (CREATE INDEX t_a_idx ON public.t USING btree (a))");
      expect(result.rehearsed).toEqual(["0001_t", "0002_note"]);
    });

    test("a down that drops the wrong column is reported with the missing and the left-behind column", async () => {
      const db = await open(await backend.databaseUrl());
      const result = await rehearse(db, readMigrations(migrationsDir(WRONG_COLUMN)));
      // And the second up cannot bring the dropped column back.
      expect(kinds(result.problems)).toEqual(["0002_b: down does not restore", "0002_b: second up differs"]);
      expect(result.problems[1].differences).toEqual(["missing: column public.t.a (integer)"]);
      expect(result.problems[0].differences).toEqual([
        "left behind: column public.t.b (text)",
        "missing: column public.t.a (integer)",
      ]);
    });

    test("a migration without a down section is reported, and the rehearsal goes on with the next one", async () => {
      const db = await open(await backend.databaseUrl());
      const result = await rehearse(db, readMigrations(migrationsDir({
        "0001_t": TABLE,
        "0002_c": "alter table t add column c int;",
        "0003_d": "alter table t add column d int;\n-- migrate:down\nalter table t drop column d;",
      })));
      expect(kinds(result.problems)).toEqual(["0002_c: no down"]);
      expect(result.problems[0].message).toContain(`0002_c.sql: has no "-- migrate:down" section`);
      expect(result.rehearsed).toEqual(["0001_t", "0002_c", "0003_d"]);
    });

    test("an up that fails on a second application is reported, even though the schema was restored, and the rehearsal goes on", async () => {
      // A data migration whose down does not remove the row: the schema is back, the second insert collides.
      const db = await open(await backend.databaseUrl());
      const result = await rehearse(db, readMigrations(migrationsDir({
        "0001_t": TABLE,
        "0002_seed": "insert into t (id, a) values (1, 1);\n-- migrate:down\nselect 1;",
        "0003_e": "alter table t add column e int;\n-- migrate:down\nalter table t drop column e;",
      })));
      expect(kinds(result.problems)).toEqual(["0002_seed: up fails again"]);
      expect(result.problems[0].message).toContain("duplicate key value violates unique constraint");
      expect(result.rehearsed).toEqual(["0001_t", "0002_seed", "0003_e"]);
      expect(result.rollback?.ids).toEqual(["0003_e"]);
    });

    test("a down that does nothing for a create table is reported as not restoring, and the second up fails", async () => {
      const db = await open(await backend.databaseUrl());
      const result = await rehearse(db, readMigrations(migrationsDir({
        "0001_t": TABLE,
        "0002_u": "create table u (id int);\n-- migrate:down\nselect 1;",
      })));
      expect(kinds(result.problems)).toEqual(["0002_u: down does not restore", "0002_u: up fails again"]);
      expect(differencesOf(result.problems, "0002_u")).toEqual(["left behind: column public.u.id (integer)", "left behind: table public.u"]);
      expect(result.problems[1].message).toContain(`relation "u" already exists`);
    });

    test("a down that fails is reported and the rehearsal goes on with the next migration", async () => {
      const db = await open(await backend.databaseUrl());
      const result = await rehearse(db, readMigrations(migrationsDir({
        "0001_t": TABLE,
        "0002_f": "alter table t add column f int;\n-- migrate:down\nalter table t drop column nope;",
        "0003_g": "alter table t add column g int;\n-- migrate:down\nalter table t drop column g;",
      })));
      expect(kinds(result.problems)).toEqual(["0002_f: down failed"]);
      expect(result.problems[0].message).toContain(`column "nope" of relation "t" does not exist`);
      expect(result.rehearsed).toEqual(["0001_t", "0002_f", "0003_g"]);
      // The failed down left 0002_f applied, so 0003_g ran on the schema it expects.
      expect(await tables(db)).toContain("t");
    });

    test("an inconsistent dependency graph is refused before anything runs", async () => {
      const db = await open(await backend.databaseUrl());
      const error = await failure(rehearse(db, readMigrations(migrationsDir({
        "0001_t": TABLE,
        "0002_h": "-- depends: 0001_tt\nselect 1;\n-- migrate:down\nselect 1;",
      }))));
      expect(error).toBeInstanceOf(InputError);
      expect(error.message).toContain(`depends on "0001_tt", which is neither a file in the migrations directory nor applied`);
      expect(await tables(db)).toEqual([]);
    });
  });
}

for (const backend of BACKENDS) {
  describe.skipIf(!backend.available)(`a rehearsal that finishes on ${backend.name}`, () => {
    test("a down with only a comment is irreversible: listed, not a problem, and the rehearsal goes on", async () => {
      const db = await open(await backend.databaseUrl());
      const result = await rehearse(db, readMigrations(migrationsDir({
        "0001_base": "create table base (id int);\n-- migrate:down\n-- Nothing\n",
        "0002_t": TABLE,
        "0003_c": "alter table t add column c int;",
      })));
      expect(result.irreversible).toEqual(["0001_base"]);
      expect(kinds(result.problems)).toEqual(["0003_c: no down"]);
      expect(result.rehearsed).toEqual(["0001_base", "0002_t", "0003_c"]);
      expect(result.rollback).toBeNull();
      expect(result.noRollback).toBe("the newest migration that cannot be undone cleanly is 0003_c (no down)");
      expect(await tables(db)).toContain("base");
    });

    test("a failed up: what declares a dependency on it is not reached, the next file in order still runs, and all is counted", async () => {
      const db = await open(await backend.databaseUrl());
      const steps: string[] = [];
      const result = await rehearse(db, readMigrations(migrationsDir({
        "0001_t": TABLE,
        "0002_bad": "alter table nope add column x int;\n-- migrate:down\nselect 1;",
        "0003_needs_bad": "-- depends: 0002_bad\ncreate table n (id int);\n-- migrate:down\ndrop table n;",
        "0004_needs_that": "-- depends: 0003_needs_bad\ncreate table m (id int);\n-- migrate:down\ndrop table m;",
        "0005_next": "-- depends: 0001_t\nalter table t add column e int;\n-- migrate:down\nalter table t drop column e;",
        "0006_last": "create table z (id int);\n-- migrate:down\ndrop table z;",
      })), (step) => steps.push(`${step.id}:${step.status}`));
      expect(kinds(result.problems)).toEqual(["0002_bad: up failed"]);
      expect(result.problems[0].message).toContain(`relation "nope" does not exist`);
      expect(result.notReached).toEqual([{ id: "0003_needs_bad", because: "0002_bad" }, { id: "0004_needs_that", because: "0003_needs_bad" }]);
      expect(steps).toEqual(["0001_t:ok", "0002_bad:problems", "0003_needs_bad:not reached", "0004_needs_that:not reached", "0005_next:ok", "0006_last:ok"]);
      expect(result.rehearsed).toEqual(["0001_t", "0002_bad", "0005_next", "0006_last"]);
      expect(result.rollback).toEqual({ ids: ["0006_last", "0005_next"], reverted: 2 });
    });

    test("a section sent in one round trip still names the statement that failed, and none of it stays", async () => {
      // The rehearsal sends a transactional section as one batch; a unique violation carries no position,
      // so the statement is found by running the section again, statement by statement, and rolling back.
      const db = await open(await backend.databaseUrl());
      const result = await rehearse(db, readMigrations(migrationsDir({
        "0001_t": TABLE,
        "0002_rows": [
          "alter table t add column b int;",
          "insert into t (id) values (1);",
          "insert into t (id) values (1);",
          "create table after_it (id int);",
          "-- migrate:down",
          "alter table t drop column b;",
        ].join("\n"),
      })));
      expect(kinds(result.problems)).toEqual(["0002_rows: up failed"]);
      expect(result.problems[0].message).toContain("0002_rows.sql:3: migration 0002_rows failed");
      expect(result.problems[0].message).toContain("duplicate key value");
      expect(result.problems[0].message).toContain("(statement 3 of 4): nothing of it took effect");
      expect(await tables(db)).not.toContain("after_it");
      expect(await db.query(`select column_name from information_schema.columns where table_name = 't' order by 1`)).toEqual([
        { column_name: "a" },
        { column_name: "id" },
      ]);
    });

    test("--after applies the earlier migrations without a round trip and rehearses the rest", async () => {
      const db = await open(await backend.databaseUrl());
      const result = await rehearse(db, readMigrations(migrationsDir({
        // A baseline that cannot run twice and whose down would fail: --after skips its round trip.
        "0001_base": "create table base (id int);\n-- migrate:down\ndrop table nope;",
        "0002_t": TABLE,
        "0003_b": FORGETS_INDEX["0002_note"],
      })), { after: "0001_base" });
      expect(result.appliedOnly).toEqual(["0001_base"]);
      expect(result.rehearsed).toEqual(["0002_t", "0003_b"]);
      expect(kinds(result.problems)).toEqual(["0003_b: down does not restore"]);
      const unknown = await failure(rehearse(db, readMigrations(migrationsDir({ "0001_base": TABLE })), { after: "0001_bse" }));
      expect(unknown.message).toBe(`--after 0001_bse: no such migration — did you mean "0001_base"?`);
    });

    test("the user's rollback is rehearsed: a down that only fails once later migrations added data is found", async () => {
      const db = await open(await backend.databaseUrl());
      const result = await rehearse(db, readMigrations(migrationsDir({
        "0001_a": "create table a (id int primary key);\n-- migrate:down\ndrop table a;",
        "0002_no_pk": "alter table a drop constraint a_pkey;\n-- migrate:down\nalter table a add primary key (id);",
        // Each round trip passes (the rows stay, the schema is restored); together, 0002's down meets duplicates.
        "0003_rows": "insert into a values (1), (1);\n-- migrate:down\nselect 1;",
      })));
      expect(kinds(result.problems)).toEqual(["0002_no_pk: rollback failed"]);
      expect(result.problems[0].message).toContain(
        "rolling back the newest 3 migrations (0003_rows back to 0001_a), 1 of 3 were undone before 0002_no_pk failed",
      );
      expect(result.problems[0].message).toContain("could not create unique index");
      expect(result.rollback).toEqual({ ids: ["0003_rows", "0002_no_pk", "0001_a"], reverted: 1 });
    });

    test("an up that leaves a different schema the second time is reported with the difference", async () => {
      const db = await open(await backend.databaseUrl());
      const result = await rehearse(db, readMigrations(migrationsDir({
        "0001_t": TABLE,
        // The type of b depends on the data, and the down does not remove the row.
        "0002_b": [
          "do $$ begin",
          "  if exists (select from t) then alter table t add column b int; else alter table t add column b text; end if;",
          "end $$;",
          "insert into t (id) select coalesce(max(id), 0) + 1 from t;",
          "-- migrate:down",
          "alter table t drop column b;",
        ].join("\n"),
      })));
      expect(kinds(result.problems)).toEqual(["0002_b: second up differs"]);
      expect(differencesOf(result.problems, "0002_b")).toEqual(["changed: column public.t.b: text -> integer"]);
    });

    test("no false alarm for a function rewritten with other whitespace and comments, or a view that folds 'now'", async () => {
      const db = await open(await backend.databaseUrl());
      const body = (comment: string, indent: string) =>
        `create or replace function f(a int) returns int language plpgsql as $$\nbegin\n${indent}${comment}\n${indent}return a + 1;\nend\n$$;`;
      const result = await rehearse(db, readMigrations(migrationsDir({
        "0001_f": `${body("-- adds one", "  ")}\n-- migrate:down\ndrop function f(int);`,
        "0002_f2": `create or replace function f(a int) returns int language sql as $$ select a + 2 $$;\n-- migrate:down\n${body("/* adds one,\n   as before */", "    ")}`,
        "0003_t": "create table t (created timestamp);\n-- migrate:down\ndrop table t;",
        "0004_v": "create view recent as select * from t where created > 'now'::timestamp - interval '1 day';\n-- migrate:down\ndrop view recent;",
        "0005_v2": [
          "drop view recent;",
          "create view recent as select * from t where created > 'now'::timestamp - interval '2 days';",
          "-- migrate:down",
          "drop view recent;",
          "select pg_sleep(0.01);",
          "create view recent as select * from t where created > 'now'::timestamp - interval '1 day';",
        ].join("\n"),
      })));
      expect(result.problems).toEqual([]);
    });

    test("renames, rebuilt indexes, partitions and enum arrays: every incremental schema read equals a full read", async () => {
      const db = await open(await backend.databaseUrl());
      // verifySnapshots reads the whole schema after every incremental read and throws where they differ:
      // a stale view text, index or column type would fail the rehearsal here instead of passing unseen.
      const result = await rehearse(db, readMigrations(migrationsDir(RENDERED_ELSEWHERE)), { verifySnapshots: true });
      expect(kinds(result.problems)).toEqual(["0007_rename_kept: down does not restore", "0007_rename_kept: up fails again"]);
      // The view's text changed with the column it reads: that is seen, not only the column.
      const [view, ...columns] = differencesOf(result.problems, "0007_rename_kept");
      expect(view).toStartWith("changed: view public.v:");
      expect(view).toMatch(/\+ SELECT (t\.)?c AS a/);
      expect(columns).toEqual(["left behind: column public.t.c (integer)", "missing: column public.t.b (integer)"]);
    });

    test("the same history without the check finds the same, and leaves no trace of its event triggers", async () => {
      const db = await open(await backend.databaseUrl());
      const result = await rehearse(db, readMigrations(migrationsDir(RENDERED_ELSEWHERE)));
      expect(kinds(result.problems)).toEqual(["0007_rename_kept: down does not restore", "0007_rename_kept: up fails again"]);
      expect(differencesOf(result.problems, "0007_rename_kept")[0]).toMatch(/^changed: view public\.v:[^]*\+ SELECT (t\.)?c AS a/);
      const left = await db.query(`select evtname from pg_event_trigger union all select nspname from pg_namespace where nspname = 'safemigrate_rehearsal'`);
      expect(left).toEqual([]);
    });

    test("a real difference in a function body is shown as a line diff", async () => {
      const db = await open(await backend.databaseUrl());
      const result = await rehearse(db, readMigrations(migrationsDir({
        "0001_f": "create function f(a int) returns int language plpgsql as $$\nbegin\n  return a + 1;\nend\n$$;\n-- migrate:down\ndrop function f(int);",
        "0002_f2": [
          "create or replace function f(a int) returns int language plpgsql as $$\nbegin\n  return a + 2;\nend\n$$;",
          "-- migrate:down",
          "create or replace function f(a int) returns int language plpgsql as $$\nbegin\n  return a + 3;\nend\n$$;",
        ].join("\n"),
      })));
      expect(kinds(result.problems)).toEqual(["0002_f2: down does not restore"]);
      const [difference] = differencesOf(result.problems, "0002_f2");
      expect(difference.split("\n")).toEqual([
        "changed: function public.f(a integer):",
        "    begin",
        "  -   return a + 1;",
        "  +   return a + 3;",
        "    end",
      ]);
    });
  });
}

describe("schema snapshots", () => {
  test("diffSchemas names missing, changed and left-behind objects, sorted", () => {
    const before = new Map([["table public.t", ""], ["column public.t.a", "integer"], ["column public.t.b", "text"]]);
    const after = new Map([["table public.t", ""], ["column public.t.b", "text not null"], ["index public.t_idx", "CREATE INDEX\n  t_idx"]]);
    expect(diffSchemas(before, after)).toEqual([
      "changed: column public.t.b: text -> text not null",
      "left behind: index public.t_idx (CREATE INDEX t_idx)",
      "missing: column public.t.a (integer)",
    ]);
    expect(diffSchemas(before, new Map(before))).toEqual([]);
  });

  test("a long one-line definition that changed shows only the part that differs", () => {
    const long = (value: string) => `CHECK ((${Array.from({ length: 40 }, (_, i) => `c${i} > 0`).join(" AND ")} AND x = ${value}))`;
    const [line] = diffSchemas(new Map([["constraint public.t.c", long("1")]]), new Map([["constraint public.t.c", long("2")]]));
    expect(line.length).toBeLessThan(300);
    expect(line).toContain("x = 1)) -> ...");
    expect(line).toContain("x = 2))");
  });

  test("function bodies differing only in whitespace or comments, and views folding 'now', are not differences", () => {
    const fn = (body: string) => `CREATE OR REPLACE FUNCTION public.f()\n RETURNS integer\n LANGUAGE sql\nAS $function$${body}$function$\n`;
    const view = (at: string) => ` SELECT created\n   FROM t\n  WHERE created > ('${at}'::timestamp without time zone - '1 day'::interval);`;
    const before = new Map([["function public.f()", fn(" select 1 ")], ["view public.v", view("2026-11-30 05:00:00.123456")]]);
    const after = new Map([["function public.f()", fn("\n  -- one\n  select   1\n")], ["view public.v", view("2026-11-30 05:00:01.5")]]);
    expect(diffSchemas(before, after)).toEqual([]);
    expect(diffSchemas(before, new Map([...after, ["function public.f()", fn(" select 2 ")]]))).toHaveLength(1);
  });

  test("the snapshot leaves out the history table", async () => {
    const db = await open(await BACKENDS[1].databaseUrl());
    await db.exec("create table safemigrate_history (id text primary key); create table t (id int)");
    const keys = [...(await snapshotSchema(db)).keys()];
    expect(keys).toContain("table public.t");
    expect(keys.filter((k) => k.includes("safemigrate_history"))).toEqual([]);
  });
});

// ----------------------------------------------------------------------------
// The command line
// ----------------------------------------------------------------------------

describe("--rehearse on the command line", () => {
  test("`bun safemigrate.ts --rehearse` passes on the project's own migrations (exit 0)", async () => {
    const run = await runCli(["--rehearse"]);
    expectExit(run, 0);
    expect(run.stdout).toMatch(/on a scratch database \(pglite:memory, embedded PostgreSQL \d+\.\d+\)/);
    const count = readMigrations(PROJECT_MIGRATIONS).length;
    expect(run.stdout).toMatch(new RegExp(`Rehearsed ${count} migrations in [\\d.]+ s: 0 problems, 0 irreversible, 0 not reached\\.`));
    expect(run.stdout).toMatch(/rollback ok\s+\(the newest 5 migrations, 0005_drop_users_full_name back to 0001_create_users, newest first: schema restored\)/);
    expect([...run.stdout.matchAll(/^\s+ok\s+(\S+)/gm)].map((m) => m[1])).toEqual(
      readMigrations(PROJECT_MIGRATIONS).map((m) => m.id),
    );
  });

  test("a rehearsal that finds a problem exits 2 and names what the down left behind", async () => {
    const run = await runCli(["--rehearse", "--dir", migrationsDir(FORGETS_INDEX)]);
    expectExit(run, 2);
    expect(run.stdout).toMatch(/down does not restore\s+0002_note/);
    expect(run.stdout).toContain("left behind: index public.t_a_idx");
    expect(run.stdout).toMatch(/Rehearsed 2 migrations in [\d.]+ s: 1 problem, 0 irreversible, 0 not reached\./);
    expect(run.stdout).toContain("Problems:\n  ");
    expect(run.stdout).toContain("0002_note.sql: down does not restore");
  });

  test("--rehearse --json reports the problems with exit 2", async () => {
    const run = await runCli(["--rehearse", "--json", "--dir", migrationsDir(WRONG_COLUMN)]);
    expectExit(run, 2);
    const result = JSON.parse(run.stdout.trim());
    expect(result.ok).toBe(false);
    expect(result.exitCode).toBe(2);
    expect(result.rehearsed).toEqual(["0001_t", "0002_b"]);
    expect(result.problems.map((p: RehearsalProblem) => p.kind)).toEqual(["down does not restore", "second up differs"]);
    expect(result.counts).toEqual({ rehearsed: 2, problems: 2, irreversible: 0, notReached: 0, appliedOnly: 0 });
  });
});

describe("the embedded database rehearses real projects", () => {
  const EXTENSIONS = {
    "0001_ext": "create extension if not exists pgcrypto;\ncreate extension if not exists \"citext\";\n-- migrate:down\ndrop extension citext;\ndrop extension pgcrypto;",
    "0002_users": "create table users (id uuid primary key default gen_random_uuid(), email citext);\n-- migrate:down\ndrop table users;",
  };

  test("extensions PGlite ships are loaded when a migration creates them, and the output names its PostgreSQL version", async () => {
    const run = await runCli(["--rehearse", "--json", "--dir", migrationsDir(EXTENSIONS)]);
    expectExit(run, 0);
    const result = JSON.parse(run.stdout.trim());
    expect(result.database).toMatch(/^pglite:memory, embedded PostgreSQL 1\d\.\d+$/);
    expect(result.counts).toEqual({ rehearsed: 2, problems: 0, irreversible: 0, notReached: 0, appliedOnly: 0 });
  });

  test("the embedded default database loads them again on every run", async () => {
    const dir = migrationsDir(EXTENSIONS);
    const cwd = migrationsDir({});
    expectExit(await runCli(["--all", "--dir", dir], { cwd }), 0);
    const again = await runCli(["--rollback", "0002_users", "--dir", dir], { cwd });
    expectExit(again, 0);
    expectExit(await runCli(["--all", "--dir", dir], { cwd }), 0);
  });
});

describe.skipIf(!SERVER_URL)("a rehearsal as a role that may not create event triggers", () => {
  test("reads what changed from the catalog fingerprint instead, and finds the same", async () => {
    const url = await serverDatabaseUrl();
    const name = new URL(url).pathname.slice(1);
    const role = `safemigrate_test_owner_${process.pid}`;
    const admin = postgres(SERVER_URL!, { max: 1, onnotice: () => {} });
    await admin.unsafe(`drop role if exists ${role}`);
    await admin.unsafe(`create role ${role} login`);
    // The database's owner owns its public schema (PostgreSQL 15), so it can create there; it is no superuser.
    await admin.unsafe(`alter database ${name} owner to ${role}`);
    const asRole = new URL(url);
    asRole.username = role;
    const db = await connect(asRole.toString());
    try {
      const tracker = new SchemaTracker(db, { events: true });
      await tracker.refresh();
      expect(tracker.finds).toBe("fingerprint");
      const result = await rehearse(db, readMigrations(migrationsDir(RENDERED_ELSEWHERE)), { verifySnapshots: true });
      expect(kinds(result.problems)).toEqual(["0007_rename_kept: down does not restore", "0007_rename_kept: up fails again"]);
    } finally {
      await db.close();
      await admin.unsafe(`drop database if exists ${name} with (force)`);
      await admin.unsafe(`drop role ${role}`);
      await admin.end();
    }
  });
});

describe.skipIf(!SERVER_URL)("--rehearse --database-url on the server", () => {
  async function rehearsalDatabases(): Promise<string[]> {
    const admin = postgres(SERVER_URL!, { max: 1, onnotice: () => {} });
    try {
      const rows = await admin<{ datname: string }[]>`
        select datname from pg_database where datname like 'safemigrate\\_rehearsal\\_%' order by 1`;
      return rows.map((r) => r.datname);
    } finally {
      await admin.end();
    }
  }
  /**
   * Rehearsal databases that appeared since `before` and are still there. Another
   * session's rehearsal may be running on the same server for a moment, so a
   * new name must persist for a few seconds to count.
   */
  async function leftBehind(before: string[]): Promise<string[]> {
    let left: string[] = [];
    for (let attempt = 0; attempt < 4; attempt++) {
      const now = (await rehearsalDatabases()).filter((d) => !before.includes(d));
      left = attempt === 0 ? now : left.filter((d) => now.includes(d));
      if (left.length === 0) return [];
      await Bun.sleep(1_000);
    }
    return left;
  }
  const scratchName = (stdout: string) => /on a scratch database \(postgres:\/\/[^)]*\/(safemigrate_rehearsal_\w+), PostgreSQL \d+/.exec(stdout)?.[1];

  test("passes on the project's own migrations in a temporary database that it drops afterwards", async () => {
    const before = await rehearsalDatabases();
    const run = await runCli(["--rehearse", "--database-url", SERVER_URL!]);
    expectExit(run, 0);
    expect(run.stdout).toContain("0 problems, 0 irreversible, 0 not reached");
    const name = scratchName(run.stdout);
    expect(name).toBeDefined();
    expect(await rehearsalDatabases()).not.toContain(name!);
    expect(await leftBehind(before)).toEqual([]);
  });

  test("a failing rehearsal on the server exits 2 and still drops its temporary database", async () => {
    const before = await rehearsalDatabases();
    const run = await runCli(["--rehearse", "--dir", migrationsDir(FORGETS_INDEX), "--database-url", SERVER_URL!]);
    expectExit(run, 2);
    expect(run.stdout).toContain("left behind: index public.t_a_idx");
    const name = scratchName(run.stdout);
    expect(name).toBeDefined();
    expect(await rehearsalDatabases()).not.toContain(name!);
    expect(await leftBehind(before)).toEqual([]);
  });

  test("--rehearse takes DATABASE_URL like every other command", async () => {
    const before = await rehearsalDatabases();
    const run = await runCli(["--rehearse", "--dir", migrationsDir(WRONG_COLUMN)], { env: { DATABASE_URL: SERVER_URL! } });
    expectExit(run, 2);
    expect(scratchName(run.stdout)).toBeDefined();
    expect(run.stdout).toContain("missing: column public.t.a (integer)");
    expect(await leftBehind(before)).toEqual([]);
  });

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    test(`${signal} in the middle of a rehearsal drops the scratch database`, async () => {
      const before = await rehearsalDatabases();
      const dir = migrationsDir({
        "0001_t": TABLE,
        "0002_slow": "select pg_sleep(60);\n-- migrate:down\nselect 1;",
      });
      const child = Bun.spawn([process.execPath, join(ROOT, "safemigrate.ts"), "--rehearse", "--dir", dir, "--database-url", SERVER_URL!], {
        cwd: ROOT,
        env: { ...process.env, NO_COLOR: "1" },
        stdout: "pipe",
        stderr: "pipe",
      });
      // Wait until the rehearsal runs the slow migration on its scratch database.
      let name: string | undefined;
      for (let waited = 0; waited < 60_000 && !name; waited += 250) {
        const admin = postgres(SERVER_URL!, { max: 1, onnotice: () => {} });
        const [row] = await admin<{ datname: string }[]>`
          select datname from pg_stat_activity
           where query like '%pg_sleep(60)%' and pid <> pg_backend_pid() and datname like 'safemigrate\\_rehearsal\\_%'`;
        await admin.end();
        name = row?.datname;
        if (!name) await Bun.sleep(250);
      }
      expect(name).toBeDefined();
      child.kill(signal);
      const code = await child.exited;
      expect(code).toBe(signal === "SIGTERM" ? 143 : 130);
      expect(await new Response(child.stderr).text()).toContain(`${signal}: dropping the scratch database`);
      expect(await rehearsalDatabases()).not.toContain(name!);
      expect(await leftBehind(before)).toEqual([]);
    });
  }

  test("a rehearsal refused for an inconsistent graph exits 2 and leaves no temporary database", async () => {
    const before = await rehearsalDatabases();
    const dir = migrationsDir({ "0001_t": TABLE, "0002_h": "-- depends: 0001_tt\nselect 1;\n-- migrate:down\nselect 1;" });
    const run = await runCli(["--rehearse", "--dir", dir, "--database-url", SERVER_URL!]);
    expectExit(run, 2);
    expect(run.stderr).toContain(`depends on "0001_tt"`);
    const name = scratchName(run.stdout);
    expect(name).toBeDefined();
    expect(await rehearsalDatabases()).not.toContain(name!);
    expect(await leftBehind(before)).toEqual([]);
  });
});
