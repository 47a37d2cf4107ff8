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
  diffSchemas,
  InputError,
  readMigrations,
  rehearse,
  type RehearsalProblem,
  snapshotSchema,
} from "../safemigrate.ts";
import { BACKENDS, cleanup, type CliRun, failure, migrationsDir, open, ROOT, runCli, SERVER_URL, tables } from "./helpers.ts";

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
  problems.flatMap((p) => (p.id === id && p.kind === "down does not restore" ? p.differences : []));

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

for (const backend of BACKENDS) {
  describe.skipIf(!backend.available)(`rehearsal on ${backend.name}`, () => {
    test("the project's own migrations rehearse cleanly: every down restores the schema and every up re-applies", async () => {
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(PROJECT_MIGRATIONS);
      const steps: string[] = [];
      const result = await rehearse(db, migrations, (id, problems) => steps.push(`${id}:${problems.length}`));
      expect(result.problems).toEqual([]);
      expect(result.rehearsed).toEqual(migrations.map((m) => m.id));
      expect(steps).toEqual(migrations.map((m) => `${m.id}:0`));
      // It ends with every migration applied (the second up).
      expect(await tables(db)).toContain("users");
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
      expect(kinds(result.problems)).toEqual(["0002_b: down does not restore"]);
      expect(differencesOf(result.problems, "0002_b")).toEqual([
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

    test("an up that fails on a second application is reported, even though the schema was restored, and the rehearsal stops", async () => {
      // A data migration whose down does not remove the row: the schema is back, the second insert collides.
      const db = await open(await backend.databaseUrl());
      const result = await rehearse(db, readMigrations(migrationsDir({
        "0001_t": TABLE,
        "0002_seed": "insert into t (id, a) values (1, 1);\n-- migrate:down\nselect 1;",
        "0003_e": "alter table t add column e int;\n-- migrate:down\nalter table t drop column e;",
      })));
      expect(kinds(result.problems)).toEqual(["0002_seed: up fails again"]);
      expect(result.problems[0].message).toContain("duplicate key value violates unique constraint");
      expect(result.rehearsed).toEqual(["0001_t", "0002_seed"]);
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

    test("a down that fails is reported and stops the rehearsal", async () => {
      const db = await open(await backend.databaseUrl());
      const result = await rehearse(db, readMigrations(migrationsDir({
        "0001_t": TABLE,
        "0002_f": "alter table t add column f int;\n-- migrate:down\nalter table t drop column nope;",
        "0003_g": "alter table t add column g int;\n-- migrate:down\nalter table t drop column g;",
      })));
      expect(kinds(result.problems)).toEqual(["0002_f: down failed"]);
      expect(result.problems[0].message).toContain(`column "nope" of relation "t" does not exist`);
      expect(result.rehearsed).toEqual(["0001_t", "0002_f"]);
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
    expect(run.stdout).toContain("on a scratch database (pglite:memory)");
    const count = readMigrations(PROJECT_MIGRATIONS).length;
    expect(run.stdout).toContain(`Rehearsed ${count} migrations: every down restores the schema and every up re-applies.`);
    expect([...run.stdout.matchAll(/^\s+ok\s+(\S+)/gm)].map((m) => m[1])).toEqual(
      readMigrations(PROJECT_MIGRATIONS).map((m) => m.id),
    );
  });

  test("a rehearsal that finds a problem exits 2 and names what the down left behind", async () => {
    const run = await runCli(["--rehearse", "--dir", migrationsDir(FORGETS_INDEX)]);
    expectExit(run, 2);
    expect(run.stdout).toMatch(/down does not restore\s+0002_note/);
    expect(run.stdout).toContain("left behind: index public.t_a_idx");
    expect(run.stdout).toContain("1 problem in 2 rehearsed migrations.");
  });

  test("--rehearse --json reports the problems with exit 2", async () => {
    const run = await runCli(["--rehearse", "--json", "--dir", migrationsDir(WRONG_COLUMN)]);
    expectExit(run, 2);
    const result = JSON.parse(run.stdout.trim());
    expect(result.ok).toBe(false);
    expect(result.exitCode).toBe(2);
    expect(result.rehearsed).toEqual(["0001_t", "0002_b"]);
    expect(result.problems.map((p: RehearsalProblem) => p.kind)).toEqual(["down does not restore"]);
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
  const scratchName = (stdout: string) => /on a scratch database \(postgres:\/\/[^)]*\/(safemigrate_rehearsal_\w+)\)/.exec(stdout)?.[1];

  test("passes on the project's own migrations in a temporary database that it drops afterwards", async () => {
    const before = await rehearsalDatabases();
    const run = await runCli(["--rehearse", "--database-url", SERVER_URL!]);
    expectExit(run, 0);
    expect(run.stdout).toContain("every down restores the schema and every up re-applies");
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
