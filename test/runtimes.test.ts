/**
 * The same file runs unchanged under Bun, Deno and Node 22.18+ (type stripping):
 * a real --pre, --status and --all against a fresh database on the server, per runtime.
 * A runtime that is not installed is skipped visibly, except under CI, where it fails.
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { appliedIds, cleanup, migrationsDir, open, runCli, type Runtime, RUNTIMES, RUNTIMES_REQUIRED, SERVER_URL, serverDatabaseUrl, tables, TIME } from "./helpers.ts";

// A guard against a hang, not a speed target (speed lives in bench/): on a loaded 2-core machine one
// PGlite start took 21 s and a whole pipeline test minutes, so no test may fail for being slow.
setDefaultTimeout(15 * 60_000);

afterEach(cleanup);

const must = (run: { code: number; stdout: string; stderr: string }, what: string) => {
  if (run.code !== 0) throw new Error(`${what} exited ${run.code}:\n${run.stdout}\n${run.stderr}`);
  expect(run.stderr).not.toContain("error");
};

describe.skipIf(!SERVER_URL)("one file, three runtimes", () => {
  for (const runtime of ["bun", "deno", "node"] as Runtime[]) {
    test.skipIf(!RUNTIMES[runtime] && !RUNTIMES_REQUIRED)(`${runtime}: --pre, --status, then --all against a fresh server database`, async () => {
      const dir = migrationsDir({
        "0001_a": "-- safe: before_deploy\ncreate table a (id int);\n",
        "0002_b": "-- safe: after_deploy\ncreate table b (id int);\n-- migrate:down\ndrop table b;\n",
      });
      const url = await serverDatabaseUrl();
      const args = ["--dir", dir, "--database-url", url];

      const version = await runCli(["--version"], { runtime });
      must(version, `--version under ${runtime}`);
      expect(version.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);

      const pre = await runCli(["--pre", ...args], { runtime });
      must(pre, `--pre under ${runtime}`);
      expect(pre.stdout).toMatch(/applied\s+0001_a\s+\(before_deploy\)/);
      expect(pre.stdout).toMatch(/waits\s+0002_b\s+\(after_deploy: waits for --all\)/);

      const status = await runCli(["--status", ...args], { runtime });
      must(status, `--status under ${runtime}`);
      expect(status.stdout).toMatch(/^0001_a\s+before_deploy\s+applied\s+\d{4}-/m);
      expect(status.stdout).toMatch(/^0002_b\s+after_deploy\s+pending\s*$/m);

      const all = await runCli(["--all", "--json", ...args], { runtime });
      must(all, `--all under ${runtime}`);
      expect(JSON.parse(all.stdout)).toMatchObject({ ok: true, command: "all", applied: [{ id: "0002_b" }] });

      const db = await open(url);
      expect(await tables(db)).toEqual(["a", "b", "safemigrate_history"]);
      expect(await appliedIds(db)).toEqual(["0001_a", "0002_b"]);
    });
  }
});

describe.skipIf(!SERVER_URL)("large histories on every runtime", () => {
  // Math.max(...rows) in the status table overflowed V8's argument limit (Deno, Node): "Maximum call stack size exceeded".
  for (const runtime of ["bun", "deno", "node"] as Runtime[]) {
    test.skipIf(!RUNTIMES[runtime] && !RUNTIMES_REQUIRED)(`${runtime}: --status lists a history of 200,000 rows`, async () => {
      const url = await serverDatabaseUrl();
      const made = await runCli(["--all", "--dir", migrationsDir({ "000000_first": "-- safe: always\nselect 1;\n" }), "--database-url", url]);
      must(made, "--all creating the history table");
      const db = await open(url);
      await db.exec(`insert into safemigrate_history (id, checksum, safe, phase, applied_at, duration_ms)
        select lpad(i::text, 6, '0') || '_m', 'x', 'always', 'pre', now(), 1 from generate_series(1, 200000) i`);

      const status = await runCli(["--status", "--dir", migrationsDir({}), "--database-url", url], { runtime });
      must(status, `--status under ${runtime}`);
      const lines = status.stdout.trimEnd().split("\n");
      expect(lines).toHaveLength(1 + 200_001);
      expect(lines.at(-1)).toMatch(/^200000_m\s+always\s+file missing\s+\d{4}-/);
    });
  }
});

describe("WebAssembly under Node stays at V8's baseline tier", () => {
  // V8's optimising recompile of libpg-query's parser peaked at ~640 MB for two small files, and of PGlite's
  // PostgreSQL at ~1.3 GB: enough for a 512 MB CI container to kill the release step. At the baseline tier
  // the same runs peak at ~100 MB and ~440 MB. The limits sit between the two.
  const files = {
    "0001_a": "-- safe: before_deploy\ncreate table a (id int primary key, v text);\ncreate index concurrently a_v on a (v);\n",
    "0002_b": "create table b (id int);\nalter table b add column c int not null default 0;\n",
  };
  const can = (RUNTIMES.node && TIME) || RUNTIMES_REQUIRED;
  test.skipIf(!can)("node: linting loads the parser in well under 300 MB", async () => {
    if (!TIME) throw new Error("/usr/bin/time is missing (CI is set, so this fails instead of skipping): apt-get install time");
    const lint = await runCli(["--lint", "--dir", migrationsDir(files)], { runtime: "node", measureMemory: true });
    expect(lint.code).toBe(2); // the concurrent index in a transaction gates: the parser really ran
    expect(lint.stdout + lint.stderr).toContain("0001_a.sql:3");
    expect(lint.peakRssBytes).toBeGreaterThan(0);
    expect(lint.peakRssBytes!).toBeLessThan(300 * 2 ** 20);
  });
  test.skipIf(!can)("node: applying to PGlite stays under 800 MB", async () => {
    if (!TIME) throw new Error("/usr/bin/time is missing (CI is set, so this fails instead of skipping): apt-get install time");
    const plain = { "0001_a": "create table a (id int primary key, v text);\n", "0002_b": files["0002_b"] };
    const all = await runCli(["--all", "--dir", migrationsDir(plain), "--database-url", "pglite:memory"], { runtime: "node", measureMemory: true });
    expect(all.code).toBe(0);
    expect(all.stdout).toMatch(/applied\s+0002_b/);
    expect(all.peakRssBytes!).toBeLessThan(800 * 2 ** 20);
  });
});
