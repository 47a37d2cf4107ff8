/**
 * `--check`: what merging two branches typically breaks, found from the files
 * alone (duplicate numbers, two leaves) and, with --database-url, against the
 * history (an applied migration depending on a pending one).
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  type CheckProblem,
  connect,
  consistencyFindings,
  consistencyProblems,
  dependsList,
  type HistoryRow,
  migrate,
  type Migration,
  newNames,
  readHistory,
  readMigrations,
  treeProblems,
  versionOf,
} from "../safemigrate.ts";
import { BACKENDS, cleanup, type CliRun, migrationsDir, ROOT, runCli, SERVER_URL, serverDatabaseUrl, tables, tempDir } from "./helpers.ts";

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

  test("two migrations with the same number, outside a git checkout: a warning with the rename, not an error", () => {
    const problems = treeProblems(readMigrations(migrationsDir(DUPLICATE_NUMBER)));
    expect(problems).toHaveLength(1);
    expect(problems[0].level).toBe("warning");
    expect(problems[0].message).toStartWith("0042_alice, 0042_bob share the version 0042. This is not a git checkout");
    expect(problems[0].fix).toMatchObject({ rename: expect.stringMatching(/\/0043_bob\.sql$/) });
  });

  test("date-stamped ids each have their own version: no clash, and a rename keeps the groups", () => {
    const ids = ["2024-01-01-000000_a", "2024-02-01-000000_b", "2019-11-15-182353_Add email notifications to crate owners"];
    expect(ids.map(versionOf)).toEqual(["2024-01-01-000000", "2024-02-01-000000", "2019-11-15-182353"]);
    expect(versionOf("20240105093000-import-x-2")).toBe("20240105093000");
    const migrations = readMigrations(migrationsDir({ "2024-01-01-000000_a": "select 1;", "2024-02-01-000000_b": "select 2;" }));
    expect(treeProblems(migrations)).toEqual([]);
    const next = newNames(migrations, []);
    expect(next(migrations[0])).toEndWith("/2024-02-01-000001_a.sql");
    expect(next(migrations[0])).toEndWith("/2024-02-01-000002_a.sql");
  });

  test("suggested names follow the directory: separator, width, case; 9999 widens", () => {
    const dashed = readMigrations(migrationsDir({ "20240105093000-Import-X-2": "select 1;", "20240105093000-Import-X-3": "select 1;" }));
    expect(newNames(dashed, [])(dashed[1])).toEndWith("/20240105093001-Import-X-3.sql");
    const full = readMigrations(migrationsDir({ "9999_last": "select 1;", "9999_Other": "select 1;" }));
    expect(newNames(full, [])(full[0])).toEndWith("/10000_Other.sql");
  });

  test("DAG heads that each declare depends: pass (issue 9)", () => {
    expect(treeProblems(readMigrations(migrationsDir(TWO_LEAVES)))).toEqual([]);
  });

  test("a default-order leaf left behind by an explicit depends: gets the one line that joins every leaf", () => {
    const migrations = readMigrations(migrationsDir({
      ...BASE,
      "0042_alice": "create table alice (id int);",
      "0043_bob": "-- depends: 0041_email\ncreate table bob (id int);",
      "0044_carol": "create table carol (id int);",
    }));
    const problems = treeProblems(migrations);
    expect(problems).toHaveLength(1);
    expect(problems[0].message).toStartWith("0042_alice, 0044_carol are separate leaves of one dependency chain");
    // The newest leaf keeps its implicit parent (0043_bob) and lists the other leaf.
    expect(problems[0].fix).toMatchObject({ line: 1, insert: "-- depends: 0043_bob, 0042_alice" });
  });
});

describe("depends: lists", () => {
  test("commas separate ids, so ids with spaces work; quotes hold commas and quotes", () => {
    expect(dependsList("2019-11-15-182353_Add email notifications to crate owners, 0002_x", "f:1"))
      .toEqual(["2019-11-15-182353_Add email notifications to crate owners", "0002_x"]);
    expect(dependsList(`"a,b", 'it''s', "say ""hi""", [x]`, "f:1")).toEqual(["a,b", "it's", 'say "hi"', "[x]"]);
    expect(dependsList("[a, b]", "f:1")).toEqual(["a", "b"]);
    expect(dependsList("[]", "f:1")).toEqual([]);
    expect(() => dependsList(`"open, b`, "m/0002.sql:1")).toThrow(`m/0002.sql:1: cannot read "depends: \"open, b"`);
  });

  test("crates.io's id with spaces can be named in depends: and is ordered by it", () => {
    const crates = "2019-11-15-182353_Add email notifications to crate owners";
    const migrations = readMigrations(migrationsDir({
      "2019-11-14-000000_base": "create table crates (id int);",
      [crates]: "create table owner_notifications (id int);",
      "2019-11-16-000000_after": `-- depends: ${crates}, 2019-11-14-000000_base\ncreate table later (id int);`,
    }));
    expect(migrations[2].depends).toEqual([crates, "2019-11-14-000000_base"]);
    expect(consistencyProblems(migrations, [])).toEqual([]);
    expect(treeProblems(migrations)).toEqual([]);
  });

  test("a list separated by spaces (the old way) is one unknown id, with the comma-separated line as the fix", () => {
    const migrations = readMigrations(migrationsDir({ ...BASE, "0042_x": "-- depends: 0040_users 0041_email\nselect 1;" }));
    const [problem] = consistencyFindings(migrations, []);
    expect(problem.message).toContain(`depends on "0040_users 0041_email", which is neither a file`);
    expect(problem.message).toContain("separate ids with commas");
    expect(problem.fix).toMatchObject({ line: 1, replace: "-- depends: 0040_users, 0041_email" });
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

  test("two 0042 migrations outside a git checkout: exit 0 with a warning and the rename", async () => {
    const run = await runCli(["--check", "--dir", migrationsDir(DUPLICATE_NUMBER)]);
    expectExit(run, 0);
    expect(run.stdout).toContain("ok: 4 migrations, front-matter valid, dependency graph complete and acyclic, down sections parse (1 warning)");
    expect(run.stderr).toContain("safemigrate: warning: 0042_alice, 0042_bob share the version 0042. This is not a git checkout");
    expect(run.stderr).toMatch(/ {4}fix: rename \S+\/0042_bob\.sql -> \S+\/0043_bob\.sql/);
  });

  test("both 0042 migrations declaring depends: 0041 are DAG heads: exit 0, nothing to say", async () => {
    const run = await runCli(["--check", "--dir", migrationsDir(TWO_LEAVES)]);
    expectExit(run, 0);
    expect(run.stderr).toBe("");
  });

  test("a down that would fail during a rollback fails --check with file:line; a sound down, and CONCURRENTLY in a transaction: false down, pass", async () => {
    const broken = migrationsDir({
      ...BASE,
      "0042_index": "create index concurrently users_id on users (id);\n-- migrate:down\n\ndrop index concurrently users_id;",
      "0043_typo": "-- safe: always\nalter table users add column age int;\n-- migrate:down\nalter table users drop colum age;",
    });
    const run = await runCli(["--check", "--dir", broken]);
    expectExit(run, 2);
    expect(run.stderr).toContain(`safemigrate: ${broken}/0042_index.sql:4:1: concurrently-in-transaction: down section: DROP INDEX CONCURRENTLY cannot run inside a transaction: the rollback would fail`);
    expect(run.stderr).toMatch(new RegExp(`safemigrate: ${broken}/0043_typo\\.sql:4:1: syntax-error: down section: SQL syntax error: syntax error at or near "age"`));
    const sound = migrationsDir({
      ...BASE,
      "0042_index": "-- transaction: false\ncreate index concurrently users_id on users (id);\n-- migrate:down\n-- transaction: false\ndrop index concurrently users_id;",
      "0043_typo": "-- safe: always\nalter table users add column age int;\n-- migrate:down\nalter table users drop column age;",
    });
    const ok = await runCli(["--check", "--dir", sound]);
    expectExit(ok, 0);
    expect(ok.stdout).toContain("ok: 4 migrations, front-matter valid, dependency graph complete and acyclic, down sections parse");
  });

  test("--check --json carries every problem with its level and fix", async () => {
    const dir = migrationsDir({ ...BASE, "0042_x": "-- depends: 0040_users 0041_email\nselect 1;" });
    const run = await runCli(["--check", "--json", "--dir", dir]);
    expectExit(run, 2);
    expect(JSON.parse(run.stdout.trim())).toEqual({
      ok: false,
      exitCode: 2,
      command: "check",
      migrations: 3,
      problems: [{
        level: "error",
        message: `${dir}/0042_x.sql:1: depends on "0040_users 0041_email", which is neither a file in the migrations directory nor ` +
          `applied — separate ids with commas (an id may contain spaces)`,
        fix: { file: `${dir}/0042_x.sql`, line: 1, replace: "-- depends: 0040_users, 0041_email" },
      }],
    });
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

    test("an applied 0043 that now depends on a pending 0042 exits 2, naming the pending file and its new name", async () => {
      const { url, dir } = await appliedAheadOfPending();
      const run = await runCli(["--check", "--dir", dir, "--database-url", url]);
      expectExit(run, 2);
      expect(run.stderr).toContain("inconsistent history: 0043_orders is applied, but it depends on 0042_carts, which is not.");
      expect(run.stderr).toContain(`Rename ${dir}/0042_carts.sql -> ${dir}/0044_carts.sql so it sorts after the applied migrations`);
      expect(run.stderr).toContain(`    fix: rename ${dir}/0042_carts.sql -> ${dir}/0044_carts.sql`);
      expect(run.stderr).not.toContain("0043_orders.sql");

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
  test("names both migrations, and renames the pending one, for an applied migration that depends on a pending one", () => {
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
    expect(problems[0]).toMatch(/Rename \S+\/0042_carts\.sql -> \S+\/0044_carts\.sql so it sorts after the applied migrations/);
  });
});

// ---- Merges in a real git checkout ----------------------------------------------

function git(dir: string, ...args: string[]): string {
  const run = Bun.spawnSync(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", ...args], { cwd: dir });
  if (run.exitCode !== 0) throw new Error(`git ${args.join(" ")}: ${run.stderr.toString()}`);
  return run.stdout.toString();
}

/** A git repository with a migrations/ directory holding `base`, committed on main. */
function repository(base: Record<string, string>): { root: string; dir: string } {
  const root = tempDir("safemigrate-git-");
  git(root, "init", "-q", "-b", "main");
  const dir = join(root, "migrations");
  mkdirSync(dir);
  commit(root, base, "base");
  return { root, dir };
}

function commit(root: string, files: Record<string, string>, message: string): void {
  for (const [id, text] of Object.entries(files)) writeFileSync(join(root, "migrations", `${id}.sql`), text);
  git(root, "add", "-A");
  git(root, "commit", "-q", "-m", message);
}

/** Each branch starts at main as it is now; then all are merged into main, in order. */
function mergeBranches(root: string, branches: Record<string, string>[]): void {
  for (const [i, files] of branches.entries()) {
    git(root, "checkout", "-q", "-b", `b${i}`, "main");
    commit(root, files, `branch ${i}`);
    git(root, "checkout", "-q", "main");
  }
  for (const i of branches.keys()) git(root, "merge", "-q", "--no-ff", "--no-edit", `b${i}`);
}

/** Applies each fix mechanically, in order, as a script reading the JSON would. */
function applyFixes(problems: CheckProblem[]): number {
  let applied = 0;
  for (const { fix } of problems) {
    if (!fix) continue;
    applied++;
    if ("rename" in fix) {
      renameSync(fix.file, fix.rename);
      continue;
    }
    const lines = readFileSync(fix.file, "utf8").split("\n");
    if ("replace" in fix) lines[fix.line - 1] = fix.replace;
    else lines.splice(fix.line - 1, 0, fix.insert);
    writeFileSync(fix.file, lines.join("\n"));
  }
  return applied;
}

const checkJson = async (dir: string, url?: string) => {
  const run = await runCli(["--check", "--json", "--dir", dir, ...(url ? ["--database-url", url] : [])]);
  return { run, result: JSON.parse(run.stdout) as { ok: boolean; exitCode: number; problems: CheckProblem[] } };
};

const BASE3 = { "0001_base": "create table base1 (id int);", "0002_base": "create table base2 (id int);", "0003_base": "create table base3 (id int);" };

/**
 * n branches off the same main, alternately numbering from 0004 with default
 * dependencies and from 0005 with an explicit chain from 0003_base; the last
 * branch always uses the default order. Merged, they share versions, interleave
 * ids and leave separate leaves; deployed first, the last branch's files sort
 * after pending files of the others.
 */
function generatedBranches(n: number): Record<string, string>[] {
  return Array.from({ length: n }, (_, i) => {
    const explicit = (n - 1 - i) % 2 === 1;
    const ids = Array.from({ length: (i % 3) + 1 }, (_, j) => `${String(4 + j + (explicit ? 1 : 0)).padStart(4, "0")}_b${i}_${j}`);
    return Object.fromEntries(ids.map((id, j) => [
      id,
      (explicit ? `-- depends: ${j === 0 ? "0003_base" : ids[j - 1]}\n` : "") + `create table b${i}_${j} (id int);\n`,
    ]));
  });
}

describe("--check tells a merge from a batch (git)", () => {
  test("four files added in one commit sharing a timestamp pass, with no warning", async () => {
    const { root, dir } = repository({ "20240101000000-init": "create table init (id int);" });
    commit(root, Object.fromEntries([2, 3, 4, 5].map((k) => [`20240105093000-import-x-${k}`, `create table x${k} (id int);`])), "import");
    const run = await runCli(["--check", "--dir", dir]);
    expectExit(run, 0);
    expect(run.stderr).toBe("");
  });

  test("files with one version added one after the other on one branch pass", async () => {
    const { root, dir } = repository(BASE3);
    commit(root, { "0004_first": "create table f (id int);" }, "first");
    commit(root, { "0004_second": "create table s (id int);" }, "second");
    expectExit(await runCli(["--check", "--dir", dir]), 0);
  });

  test("two branches that each added a 0004 clash (exit 2); the rename keeps the directory's style and fixes it", async () => {
    const { root, dir } = repository({ "20240101000000-init": "create table init (id int);" });
    mergeBranches(root, [{ "20240105093000-alice": "create table alice (id int);" }, { "20240105093000-bob": "create table bob (id int);" }]);
    const { run, result } = await checkJson(dir);
    expectExit(run, 2);
    expect(result.problems).toEqual([{
      level: "error",
      message: `20240105093000-alice and 20240105093000-bob share the version 20240105093000 and were added on different branches: ` +
        `two branches both added a migration. Rename the one not applied anywhere yet so it sorts last: ` +
        `${dir}/20240105093000-bob.sql -> ${dir}/20240105093001-bob.sql`,
      fix: { file: `${dir}/20240105093000-bob.sql`, rename: `${dir}/20240105093001-bob.sql` },
    }]);
    const human = await runCli(["--check", "--dir", dir]);
    expect(human.stderr).toContain(`    fix: rename ${dir}/20240105093000-bob.sql -> ${dir}/20240105093001-bob.sql`);
    applyFixes(result.problems);
    expectExit(await runCli(["--check", "--dir", dir]), 0);
    // Committed, the rename is a change after the merge: still clean.
    git(root, "add", "-A");
    git(root, "commit", "-q", "-m", "rename");
    expectExit(await runCli(["--check", "--dir", dir]), 0);
  });

  test("separate leaves from two branches: exit 2 and one line that joins them, keeping the parent", async () => {
    const { root, dir } = repository(BASE3);
    mergeBranches(root, [
      { "0004_a": "-- depends: 0003_base\ncreate table a (id int);", "0006_a": "-- depends: 0004_a\ncreate table a2 (id int);" },
      { "0005_b": "create table b (id int);" },
    ]);
    const { run, result } = await checkJson(dir);
    expectExit(run, 2);
    expect(result.problems).toHaveLength(1);
    expect(result.problems[0].message).toStartWith("0005_b, 0006_a are separate leaves of one dependency chain");
    expect(result.problems[0].fix).toEqual({ file: `${dir}/0006_a.sql`, line: 1, replace: "-- depends: 0004_a, 0005_b" });
    applyFixes(result.problems);
    expectExit(await runCli(["--check", "--dir", dir]), 0);
  });

  for (let n = 2; n <= 6; n++) {
    test(`a generated merge of ${n} branches: every fix applied once, --check passes`, async () => {
      const { root, dir } = repository(BASE3);
      mergeBranches(root, generatedBranches(n));
      const { run, result } = await checkJson(dir);
      expectExit(run, 2);
      expect(result.problems.every((p) => p.fix !== null)).toBe(true);
      applyFixes(result.problems);
      const again = await checkJson(dir);
      expectExit(again.run, 0);
      expect(again.result.problems.filter((p) => p.level === "error")).toEqual([]);
    });
  }
});

describe.skipIf(!SERVER_URL)("ids with spaces on the server", () => {
  test("crates.io's id with a space: applied, named in depends:, checked and rolled back by name", async () => {
    const crates = "2019-11-15-182353_Add email notifications to crate owners";
    const dir = migrationsDir({
      "2019-11-14-000000_base": "create table crates (id int);\n-- migrate:down\ndrop table crates;",
      [crates]: "create table owner_notifications (id int);\n-- migrate:down\ndrop table owner_notifications;",
      "2019-11-16-000000_later": `-- depends: ${crates}, 2019-11-14-000000_base\ncreate table later (id int);\n-- migrate:down\ndrop table later;`,
    });
    const url = await serverDatabaseUrl();
    expectExit(await runCli(["--all", "--dir", dir, "--database-url", url]), 0);
    expectExit(await runCli(["--check", "--dir", dir, "--database-url", url]), 0);
    const rolled = await runCli(["--rollback", crates, "--dir", dir, "--database-url", url]);
    expectExit(rolled, 0);
    const db = await connect(url);
    try {
      expect((await tables(db)).filter((t) => !t.startsWith("safemigrate_"))).toEqual(["crates"]);
    } finally {
      await db.close();
    }
  });
});

describe.skipIf(!SERVER_URL)("advice that converges against a database (server)", () => {
  /** Merged main in a repository whose last branch was deployed (applied) before the merge. */
  async function deployedThenMerged(n: number) {
    const { root, dir } = repository(BASE3);
    mergeBranches(root, generatedBranches(n));
    const url = await serverDatabaseUrl();
    git(root, "checkout", "-q", `b${n - 1}`);
    expectExit(await runCli(["--all", "--dir", dir, "--database-url", url]), 0);
    git(root, "checkout", "-q", "main");
    return { root, dir, url };
  }
  const allJson = async (dir: string, url: string) => {
    const run = await runCli(["--all", "--json", "--dir", dir, "--database-url", url]);
    return { run, result: JSON.parse(run.stdout) as { ok: boolean; exitCode: number; problems?: CheckProblem[] } };
  };
  const tableCount = async (url: string) => {
    const db = await connect(url);
    try {
      return (await tables(db)).filter((t) => !t.startsWith("safemigrate_")).length;
    } finally {
      await db.close();
    }
  };

  for (let n = 2; n <= 6; n++) {
    test(`${n} branches, new files sorting before applied ones: --all's fixes, applied once, let --all through`, async () => {
      const { dir, url } = await deployedThenMerged(n);
      const refused = await allJson(dir, url);
      expectExit(refused.run, 2);
      const problems = refused.result.problems!;
      expect(problems.length).toBeGreaterThan(0);
      expect(problems.some((p) => p.fix !== null && "rename" in p.fix)).toBe(true);
      expect(problems.every((p) => p.fix !== null)).toBe(true);
      // Never an applied file: every fix edits or renames a pending one.
      const db = await connect(url);
      const applied = new Set((await readHistory(db)).map((r) => `${dir}/${r.id}.sql`));
      await db.close();
      expect(problems.filter((p) => applied.has(p.fix!.file))).toEqual([]);

      // --check against the same database gives the same advice, and more (the files' own problems).
      const check = await checkJson(dir, url);
      expectExit(check.run, 2);
      for (const p of problems) expect(check.result.problems).toContainEqual(p);

      applyFixes(problems);
      expectExit(await runCli(["--all", "--dir", dir, "--database-url", url]), 0);
      expect(await tableCount(url)).toBe(3 + generatedBranches(n).reduce((sum, b) => sum + Object.keys(b).length, 0));
    });

    test(`${n} branches: --check --database-url's fixes, applied once, make --check and --all pass`, async () => {
      const { dir, url } = await deployedThenMerged(n);
      const check = await checkJson(dir, url);
      expectExit(check.run, 2);
      applyFixes(check.result.problems);
      const again = await checkJson(dir, url);
      expectExit(again.run, 0);
      expect(again.result.problems.filter((p) => p.level === "error")).toEqual([]);
      expectExit(await runCli(["--all", "--dir", dir, "--database-url", url]), 0);
    });
  }

  test("--check predicts --pre: a before_deploy behind an after_deploy gets the exact depends: line; then --pre works", async () => {
    const base = Object.fromEntries([1, 2, 3, 4, 5, 6].map((k) => [`000${k}_t${k}`, `-- safe: always\ncreate table t${k} (id int);`]));
    const { root, dir } = repository(base);
    const url = await serverDatabaseUrl();
    expectExit(await runCli(["--all", "--dir", dir, "--database-url", url]), 0);
    commit(root, {
      "0007_drop_old": "-- safe: after_deploy\nalter table t1 drop column id;",
      "0008_add_new": "-- safe: before_deploy\ncreate table t8 (id int);",
      "0009_cleanup": "-- safe: after_deploy\ndrop table t2;",
    }, "release");

    const fix = { file: `${dir}/0008_add_new.sql`, line: 1, insert: "-- depends: 0006_t6" };
    const check = await checkJson(dir, url);
    expectExit(check.run, 0);
    expect(check.result.problems).toHaveLength(1);
    expect(check.result.problems[0]).toMatchObject({ level: "warning", fix });
    expect(check.result.problems[0].message).toStartWith("0008_add_new is before_deploy but comes after 0007_drop_old (after_deploy, not applied) only by the default order");

    // --pre refuses with the same fix, and does not tell the user to run --all (which would drop t1.id under the old code).
    const pre = await runCli(["--pre", "--dir", dir, "--database-url", url]);
    expectExit(pre, 3);
    expect(pre.stderr).toContain(`  fix: in ${dir}/0008_add_new.sql, insert as line 1: -- depends: 0006_t6`);
    expect(pre.stderr).toContain("Run --all first only if the blocking migrations shipped with an earlier release");
    expect(pre.stderr).not.toContain("run --all after the previous deploy");
    const preJson = JSON.parse((await runCli(["--pre", "--json", "--dir", dir, "--database-url", url])).stdout);
    expect(preJson.advice).toEqual(check.result.problems);

    applyFixes(check.result.problems);
    const clean = await checkJson(dir, url);
    expectExit(clean.run, 0);
    expect(clean.result.problems).toEqual([]);
    const applied = await runCli(["--pre", "--dir", dir, "--database-url", url]);
    expectExit(applied, 0);
    expect(applied.stdout).toContain("0008_add_new");
    const db = await connect(url);
    try {
      expect(await tables(db)).toContain("t8");
      expect(await tables(db)).toContain("t2");
    } finally {
      await db.close();
    }
  });
});
