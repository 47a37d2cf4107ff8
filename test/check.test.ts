/**
 * `--check`: what merging two branches typically breaks, found from the files
 * alone (duplicate numbers, two leaves) and, with --database-url, against the
 * history (an applied migration depending on a pending one).
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { connect, consistencyProblems, migrate, readHistory, readMigrations, treeProblems } from "../safemigrate.ts";
import { BACKENDS, cleanup, type CliRun, migrationsDir, ROOT, runCli, tables, tempDir } from "./helpers.ts";

// A guard against a hang, not a speed target (speed lives in bench/): on a loaded 2-core machine one
// PGlite start took 21 s and a whole pipeline test minutes, so no test may fail for being slow.
setDefaultTimeout(15 * 60_000);

afterEach(cleanup);

function expectExit(run: CliRun, code: number): void {
  if (run.code !== code) {
    throw new Error(`expected exit ${code}, got exit ${run.code}\n--- stdout ---\n${run.stdout}\n--- stderr ---\n${run.stderr}`);
  }
}

const BASE = {
  "0040_users": "create table users (id int);",
  "0041_email": "alter table users add column email text;",
};

/** Both branches added a 0042 after 0041; the second one takes the default dependency (the previous id). */
const DUPLICATE_NUMBER = {
  ...BASE,
  "0042_alice": "create table alice (id int);",
  "0042_bob": "create table bob (id int);",
};

/** Both branches declared their parent explicitly, so nothing orders them. */
const TWO_LEAVES = {
  ...BASE,
  "0042_alice": "-- depends: 0041_email\ncreate table alice (id int);",
  "0042_bob": "-- depends: 0041_email\ncreate table bob (id int);",
};

describe("treeProblems (files alone)", () => {
  test("a clean chain has no problems", () => {
    expect(treeProblems(readMigrations(migrationsDir(BASE)))).toEqual([]);
    expect(treeProblems(readMigrations(`${ROOT}/migrations`))).toEqual([]);
  });

  test("independent chains each with one leaf are fine", () => {
    const migrations = readMigrations(migrationsDir({
      ...BASE,
      "0042_reports": "-- depends: []\ncreate table reports (id int);",
      "0043_report_title": "-- depends: 0042_reports\nalter table reports add column title text;",
    }));
    expect(treeProblems(migrations)).toEqual([]);
  });

  test("two migrations with the same number and default dependencies are reported as a duplicate number", () => {
    const problems = treeProblems(readMigrations(migrationsDir(DUPLICATE_NUMBER)));
    expect(problems).toHaveLength(1);
    expect(problems[0]).toStartWith("0042_alice and 0042_bob share the number 0042: two branches both added a migration.");
    expect(problems[0]).toContain("0042_bob.sql -> 0043_bob.sql");
    expect(problems[0]).toContain(`or declare the order with "-- depends:"`);
  });

  test("two migrations that both declare the same parent are reported as two leaves", () => {
    const problems = treeProblems(readMigrations(migrationsDir(TWO_LEAVES)));
    expect(problems).toHaveLength(1);
    expect(problems[0]).toStartWith("0042_alice, 0042_bob are separate leaves of one dependency chain");
    expect(problems[0]).toContain(`"-- depends: 0042_alice" in 0042_bob`);
  });

  test("declaring the order resolves the two leaves", () => {
    const migrations = readMigrations(migrationsDir({
      ...TWO_LEAVES,
      "0042_bob": "-- depends: 0042_alice\ncreate table bob (id int);",
    }));
    expect(treeProblems(migrations)).toEqual([]);
  });
});

describe("--check on the files (no database)", () => {
  test("a clean tree exits 0", async () => {
    const run = await runCli(["--check", "--dir", migrationsDir(BASE)]);
    expectExit(run, 0);
    expect(run.stdout).toContain("ok: 2 migrations");
    expect(run.stdout).not.toContain("consistent with the database's history");
    expect(run.stderr).toBe("");
  });

  test("the project's own migrations pass", async () => {
    const run = await runCli(["--check"]);
    expectExit(run, 0);
    expect(run.stdout).toContain(`ok: ${readMigrations(`${ROOT}/migrations`).length} migrations`);
  });

  test("a merge that added two 0042 migrations (default dependencies) exits 2: duplicate number", async () => {
    const run = await runCli(["--check", "--dir", migrationsDir(DUPLICATE_NUMBER)]);
    expectExit(run, 2);
    expect(run.stderr).toContain("0042_alice and 0042_bob share the number 0042");
    expect(run.stderr).toContain("Rename the one that is not applied anywhere yet");
  });

  test("a merge where both 0042 migrations declare depends: 0041 exits 2: two leaves", async () => {
    const run = await runCli(["--check", "--dir", migrationsDir(TWO_LEAVES)]);
    expectExit(run, 2);
    expect(run.stderr).toContain("0042_alice, 0042_bob are separate leaves of one dependency chain");
  });

  test("--check --json reports the problems as JSON with exit 2", async () => {
    const run = await runCli(["--check", "--json", "--dir", migrationsDir(TWO_LEAVES)]);
    expectExit(run, 2);
    const result = JSON.parse(run.stdout.trim());
    expect(result.ok).toBe(false);
    expect(result.exitCode).toBe(2);
    expect(result.problems).toHaveLength(1);
    expect(result.problems[0]).toContain("separate leaves");
  });
});

for (const backend of BACKENDS) {
  describe.skipIf(!backend.available)(`--check --database-url on ${backend.name}`, () => {
    /** The database applied 0041 and 0043 (merged first); now 0042 arrives, sorting before the applied 0043. */
    async function appliedAheadOfPending(): Promise<{ url: string; dir: string }> {
      const url = await backend.databaseUrl();
      const db = await connect(url);
      try {
        await migrate(db, readMigrations(migrationsDir({ ...BASE, "0043_orders": "create table orders (id int);" })), {
          phase: "all",
          mode: "strict",
        });
      } finally {
        await db.close();
      }
      const dir = migrationsDir({
        ...BASE,
        "0042_carts": "create table carts (id int);",
        "0043_orders": "create table orders (id int);",
      });
      return { url, dir };
    }

    test("an applied 0043 that now depends on a pending 0042 exits 2, saying to rename or declare depends", async () => {
      const { url, dir } = await appliedAheadOfPending();
      const run = await runCli(["--check", "--dir", dir, "--database-url", url]);
      expectExit(run, 2);
      expect(run.stderr).toContain("inconsistent history: 0043_orders is applied, but it depends on 0042_carts, which is not.");
      expect(run.stderr).toContain("0042_carts.sql so it sorts after the applied migrations");
      expect(run.stderr).toContain(`declare the real order with "-- depends:" in ${dir}/0043_orders.sql`);

      // The files alone are fine: only the history shows the problem.
      expectExit(await runCli(["--check", "--dir", dir]), 0);

      // --check changed nothing.
      const db = await connect(url);
      try {
        expect((await readHistory(db)).map((r) => r.id)).toEqual(["0040_users", "0041_email", "0043_orders"]);
        expect(await tables(db)).not.toContain("carts");
      } finally {
        await db.close();
      }
    });

    test("renaming the late migration so it sorts last makes the check pass against the database", async () => {
      const { url } = await appliedAheadOfPending();
      const renamed = migrationsDir({
        ...BASE,
        "0043_orders": "create table orders (id int);",
        "0044_carts": "create table carts (id int);",
      });
      const run = await runCli(["--check", "--dir", renamed, "--database-url", url]);
      expectExit(run, 0);
      expect(run.stdout).toContain("ok: 4 migrations");
      expect(run.stdout).toContain("consistent with the database's history");
    });

    test("a database without a history table is consistent with any clean tree, and stays without one", async () => {
      const url = await backend.databaseUrl();
      const run = await runCli(["--check", "--dir", migrationsDir(BASE), "--database-url", url]);
      expectExit(run, 0);
      const db = await connect(url);
      try {
        expect(await tables(db)).toEqual([]);
      } finally {
        await db.close();
      }
    });
  });
}

describe("--check changes nothing", () => {
  test("--check --database-url against a PGlite directory that does not exist does not create a database there", async () => {
    const target = join(tempDir(), "db");
    const run = await runCli(["--check", "--dir", migrationsDir(BASE), "--database-url", `pglite:${target}`]);
    expectExit(run, 0);
    expect(existsSync(target)).toBe(false);
  });
});

describe("consistencyProblems (pure)", () => {
  test("names both migrations and both fixes for an applied migration that depends on a pending one", () => {
    const migrations = readMigrations(migrationsDir({
      ...BASE,
      "0042_carts": "create table carts (id int);",
      "0043_orders": "create table orders (id int);",
    }));
    const applied = (id: string) => ({
      id,
      checksum: migrations.find((m) => m.id === id)!.checksum,
      safe: "after_deploy",
      phase: "all",
      detectedAt: null,
      appliedAt: new Date(),
      durationMs: 1,
      downSql: null,
      depends: null,
    });
    const problems = consistencyProblems(migrations, ["0040_users", "0041_email", "0043_orders"].map(applied));
    expect(problems).toHaveLength(1);
    expect(problems[0]).toContain("0043_orders is applied, but it depends on 0042_carts, which is not");
    expect(problems[0]).toContain("Rename");
    expect(problems[0]).toContain(`"-- depends:"`);
  });
});
