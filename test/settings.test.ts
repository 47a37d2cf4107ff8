/**
 * Options without repeating flags: the project file (safemigrate.json or the
 * "safemigrate" section of package.json) and SAFEMIGRATE_* variables, where a
 * flag wins over the environment and the environment over the file; and the
 * command-line papercuts (flag order, -v).
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs, readProjectSettings, SETTINGS, settingVariable } from "../safemigrate.ts";
import { appliedIds, cleanup, type CliRun, migrationsDir, open, runCli, SERVER_URL, serverDatabaseUrl, tempDir } from "./helpers.ts";

setDefaultTimeout(60_000);
afterEach(cleanup);

const shown = (run: CliRun) => `exit ${run.code}\n--- stdout ---\n${run.stdout}\n--- stderr ---\n${run.stderr}`;
function expectExit(run: CliRun, code: number): void {
  if (run.code !== code) throw new Error(`expected exit ${code}, got ${shown(run)}`);
}

/** Three directories with 1, 2 and 3 migrations: `--check` says which one it read. */
function threeDirs(): [string, string, string] {
  const make = (n: number) =>
    migrationsDir(Object.fromEntries(Array.from({ length: n }, (_, i) => [`000${i + 1}_m`, `-- safe: always\nselect ${i};\n`])));
  return [make(1), make(2), make(3)];
}

/** A project directory holding `files` (name -> JSON value). */
function project(files: Record<string, unknown>): string {
  const cwd = tempDir("safemigrate-project-");
  for (const [name, value] of Object.entries(files)) writeFileSync(join(cwd, name), JSON.stringify(value));
  return cwd;
}

describe("where an option comes from", () => {
  test("every setting has a SAFEMIGRATE_ variable of the same name", () => {
    expect(SETTINGS.map(settingVariable)).toEqual([
      "SAFEMIGRATE_DIR", "SAFEMIGRATE_DATABASE_URL", "SAFEMIGRATE_MODE", "SAFEMIGRATE_LOCK_WAIT", "SAFEMIGRATE_LOCK_TIMEOUT",
      "SAFEMIGRATE_STATEMENT_TIMEOUT", "SAFEMIGRATE_LOCK_RETRIES", "SAFEMIGRATE_WAIT", "SAFEMIGRATE_LINT",
      "SAFEMIGRATE_REPAIR_INVALID_INDEXES", "SAFEMIGRATE_VERBOSE", "SAFEMIGRATE_JSON", "SAFEMIGRATE_HISTORY_TABLE",
      "SAFEMIGRATE_DIRECT_URL", "SAFEMIGRATE_LEASE", "SAFEMIGRATE_SMALL_TABLE", "SAFEMIGRATE_LINT_AFTER",
    ]);
  });

  test("the analysis' small-table and lint-after: flag over environment over file; a size may be a number of bytes in the file", () => {
    const file = { file: "safemigrate.json", values: { "small-table": "10MB", "lint-after": "0041_email" } };
    const fromFile = parseArgs(["--lint"], {}, file);
    expect([fromFile.smallTableBytes, fromFile.lintAfter]).toEqual([10 * 1024 * 1024, "0041_email"]);
    expect(parseArgs(["--lint"], {}, { file: "safemigrate.json", values: { "small-table": 0 } }).smallTableBytes).toBe(0);
    const env = { SAFEMIGRATE_SMALL_TABLE: "512kB", SAFEMIGRATE_LINT_AFTER: "0042_x" };
    const fromEnv = parseArgs(["--lint"], env, file);
    expect([fromEnv.smallTableBytes, fromEnv.lintAfter]).toEqual([512 * 1024, "0042_x"]);
    const fromFlags = parseArgs(["--lint", "--small-table", "0", "--lint-after", "0043_y"], env, file);
    expect([fromFlags.smallTableBytes, fromFlags.lintAfter]).toEqual([0, "0043_y"]);
    expect([parseArgs(["--lint"], {}).smallTableBytes, parseArgs(["--lint"], {}).lintAfter]).toEqual([1024 * 1024, null]);
  });

  test("lint-after in safemigrate.json: --lint reports only later migrations (run as a user would)", async () => {
    const dir = migrationsDir({
      "0001_users": "-- safe: before_deploy\ncreate table users (id int, name text);\n",
      "0002_old": "-- safe: before_deploy\nalter table users drop column name;\n",
      "0003_new": "-- safe: before_deploy\ncreate index users_id on users (id);\n",
    });
    const everything = await runCli(["--lint", "--dir", dir]);
    expect(everything.stdout + everything.stderr).toContain("0002_old.sql:2:13: drop-column");
    const cwd = project({ "safemigrate.json": { dir, "lint-after": "0002_old" } });
    const run = await runCli(["--lint"], { cwd });
    expectExit(run, 2);
    expect(run.stdout + run.stderr).not.toContain("drop-column");
    expect(run.stdout + run.stderr).toContain("0003_new.sql:2:1: index-not-concurrently");
  });

  test("flag over environment over file, for every kind of option", () => {
    const file = { file: "safemigrate.json", values: { "lock-timeout": "1s", "lock-retries": 2, lint: false, mode: "nonstrict", wait: "5s" } };
    const fromFile = parseArgs(["--pre"], {}, file);
    expect([fromFile.execution.lockTimeoutMs, fromFile.execution.attempts, fromFile.lint, fromFile.mode, fromFile.waitMs]).toEqual([1_000, 2, false, "nonstrict", 5_000]);
    const env = { SAFEMIGRATE_LOCK_TIMEOUT: "2s", SAFEMIGRATE_LOCK_RETRIES: "3", SAFEMIGRATE_LINT: "true", SAFEMIGRATE_MODE: "disabled" };
    const fromEnv = parseArgs(["--pre"], env, file);
    expect([fromEnv.execution.lockTimeoutMs, fromEnv.execution.attempts, fromEnv.lint, fromEnv.mode]).toEqual([2_000, 3, true, "disabled"]);
    const fromFlags = parseArgs(["--pre", "--lock-timeout", "3s", "--lock-retries", "4", "--no-lint", "--mode", "strict"], env, file);
    expect([fromFlags.execution.lockTimeoutMs, fromFlags.execution.attempts, fromFlags.lint, fromFlags.mode]).toEqual([3_000, 4, false, "strict"]);
  });

  test("SAFEMIGRATE_MODE wins over the older SAFEMIGRATE", () => {
    expect(parseArgs(["--pre"], { SAFEMIGRATE: "nonstrict", SAFEMIGRATE_MODE: "disabled" }).mode).toBe("disabled");
    expect(parseArgs(["--pre"], { SAFEMIGRATE: "nonstrict" }).mode).toBe("nonstrict");
  });

  test("--dir: safemigrate.json, then SAFEMIGRATE_DIR, then the flag (run as a user would)", async () => {
    const [one, two, three] = threeDirs();
    const cwd = project({ "safemigrate.json": { dir: one } });
    const fileOnly = await runCli(["--check"], { cwd });
    expectExit(fileOnly, 0);
    expect(fileOnly.stdout).toContain("ok: 1 migration,");
    const env = await runCli(["--check"], { cwd, env: { SAFEMIGRATE_DIR: two } });
    expect(env.stdout).toContain("ok: 2 migrations,");
    const flag = await runCli(["--check", "--dir", three], { cwd, env: { SAFEMIGRATE_DIR: two } });
    expect(flag.stdout).toContain("ok: 3 migrations,");
  });

  test(`the "safemigrate" section of package.json is read when there is no safemigrate.json`, async () => {
    const [one, two] = threeDirs();
    const cwd = project({ "package.json": { name: "app", safemigrate: { dir: two } } });
    expect((await runCli(["--check"], { cwd })).stdout).toContain("ok: 2 migrations,");
    writeFileSync(join(cwd, "safemigrate.json"), JSON.stringify({ dir: one }));
    expect((await runCli(["--check"], { cwd })).stdout).toContain("ok: 1 migration,");
  });

  test("a package.json without the section, or someone else's broken one, is no project file", () => {
    expect(readProjectSettings(project({ "package.json": { name: "app" } }))).toBeNull();
    const cwd = tempDir();
    writeFileSync(join(cwd, "package.json"), "{ not json");
    expect(readProjectSettings(cwd)).toBeNull();
  });

  const mistakes: [string, Record<string, unknown>, Record<string, string>, string][] = [
    ["an unknown setting in the file", { "safemigrate.json": { "lock-timout": "1s" } }, {}, `safemigrate.json: unknown setting "lock-timout" — did you mean "lock-timeout"?`],
    ["a setting of the wrong type", { "safemigrate.json": { lint: "no" } }, {}, `safemigrate.json: "lint" must be a boolean, not "no"`],
    ["a command in the file", { "package.json": { safemigrate: { pre: true } } }, {}, `package.json "safemigrate": unknown setting "pre"`],
    ["a bad value in the file, named by its place", { "safemigrate.json": { "lock-wait": "soon" } }, {}, `safemigrate.json "lock-wait" "soon" is not a duration`],
    ["a bad value in the environment, named by its variable", {}, { SAFEMIGRATE_LOCK_TIMEOUT: "soon" }, `SAFEMIGRATE_LOCK_TIMEOUT "soon" is not a duration`],
    ["a bad SAFEMIGRATE_MODE", {}, { SAFEMIGRATE_MODE: "lenient" }, `SAFEMIGRATE_MODE must be strict, nonstrict or disabled, not "lenient"`],
    ["a bad small-table in the file", { "safemigrate.json": { "small-table": "big" } }, {}, `safemigrate.json "small-table" "big" is not a size (like 10MB, 512kB or 0)`],
    ["a lint-after of the wrong type", { "safemigrate.json": { "lint-after": 42 } }, {}, `safemigrate.json: "lint-after" must be a string, not 42`],
    ["invalid JSON", {}, {}, "safemigrate.json: not valid JSON"],
  ];
  for (const [name, files, env, message] of mistakes) {
    test(`${name} is invalid input (exit 2)`, async () => {
      const cwd = project(files);
      if (name === "invalid JSON") writeFileSync(join(cwd, "safemigrate.json"), "{ dir: ");
      const run = await runCli(["--pre", "--plan", "--database-url", "pglite:memory"], { cwd, env });
      expectExit(run, 2);
      expect(run.stderr).toContain(`safemigrate: error: ${message}`);
    });
  }

  test.skipIf(!SERVER_URL)("database-url in the file is used when the environment names no database; DATABASE_URL wins over it", async () => {
    const [fromFile, fromEnv] = [await serverDatabaseUrl(), await serverDatabaseUrl()];
    const dir = migrationsDir({ "0001_t": "-- safe: always\ncreate table t (id int);\n" });
    const cwd = project({ "safemigrate.json": { "database-url": fromFile, dir } });
    expectExit(await runCli(["--all"], { cwd }), 0);
    expect(await appliedIds(await open(fromFile))).toEqual(["0001_t"]);
    const run = await runCli(["--all"], { cwd, env: { DATABASE_URL: fromEnv } });
    expectExit(run, 0);
    expect(await appliedIds(await open(fromEnv))).toEqual(["0001_t"]);
  });

  test("SAFEMIGRATE_JSON=1 makes every result JSON", async () => {
    const run = await runCli(["--check", "--dir", threeDirs()[0]], { env: { SAFEMIGRATE_JSON: "1" } });
    expectExit(run, 0);
    expect(JSON.parse(run.stdout)).toMatchObject({ ok: true, command: "check", migrations: 1 });
  });
});

describe("flags in any order", () => {
  test("--rollback --plan <id> and --plan --rollback <id> plan the same rollback", () => {
    for (const argv of [["--rollback", "--plan", "0003_x"], ["--plan", "--rollback", "0003_x"], ["--rollback", "0003_x", "--plan"], ["--rollback", "--plan", "--json", "0003_x"]]) {
      const options = parseArgs(argv, {});
      expect([options.command, options.target, options.plan]).toEqual(["rollback", "0003_x", true]);
    }
  });

  test("an id that looks like a number stays as written (mri would make 0003 the number 3)", () => {
    expect(parseArgs(["--fake", "--json", "0003"], {}).target).toBe("0003");
    expect(parseArgs(["--rollback", "--lock-wait", "5s", "--plan", "20240105093000"], {}).target).toBe("20240105093000");
  });

  test("a second bare word is still refused", () => {
    expect(() => parseArgs(["--rollback", "--plan", "a", "b"], {})).toThrow(`unexpected argument "a"`);
  });

  test.skipIf(!SERVER_URL)("--rollback --plan <id> from the command line", async () => {
    const url = await serverDatabaseUrl();
    const dir = migrationsDir({ "0001_t": "-- safe: always\ncreate table t (id int);\n-- migrate:down\ndrop table t;\n" });
    expectExit(await runCli(["--all", "--dir", dir, "--database-url", url]), 0);
    const run = await runCli(["--rollback", "--plan", "0001_t", "--dir", dir, "--database-url", url]);
    expectExit(run, 0);
    expect(run.stdout).toContain("roll back  0001_t");
    expect(await appliedIds(await open(url))).toEqual(["0001_t"]);
  });

  test("-v prints the version, like --version", async () => {
    const run = await runCli(["-v"]);
    expectExit(run, 0);
    expect(run.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });

  test("a wrong URL's hint shows its example URL whole, and still hides the given password", async () => {
    const run = await runCli(["--status", "--database-url", "mysql://app:hunter2secret@db/app"]);
    expectExit(run, 2);
    expect(run.stderr).toContain("unsupported database URL mysql://app@db/app — use postgres://user:<password>@host:5432/db");
    expect(run.stderr).not.toContain("hunter2secret");
  });

  test("an unknown short option is shown with one dash", () => {
    expect(() => parseArgs(["-x"], {})).toThrow("unknown option -x");
  });
});
