/**
 * What a run says while it runs: a line when each migration starts (with
 * the elapsed time on a terminal), the session holding a lock on a lock
 * timeout, --verbose statements, --plan --sql, and the notes that explain a
 * plan (why a due migration still waits, what --all applies before its delay,
 * applied migrations whose files are missing, drift on a development database).
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import postgres from "postgres";
import { humanProgress, type Output } from "../safemigrate.ts";
import { appliedIds, cleanup, CLI, type CliRun, migrationsDir, open, runCli, SERVER_URL, serverDatabaseUrl, tempDir } from "./helpers.ts";

setDefaultTimeout(90_000);
afterEach(cleanup);

function expectExit(run: CliRun, code: number): void {
  if (run.code !== code) throw new Error(`expected exit ${code}, got ${run.code}\n--- stdout ---\n${run.stdout}\n--- stderr ---\n${run.stderr}`);
}

const cli = (dir: string, url: string, args: string[]) => runCli(["--dir", dir, "--database-url", url, ...args]);

describe.skipIf(!SERVER_URL)("progress of a run", () => {
  test("a migration's line appears when it starts, while it is still running", async () => {
    const url = await serverDatabaseUrl();
    const dir = migrationsDir({
      "0001_fast": "-- safe: always\ncreate table t (id int);\n",
      "0002_slow": "-- safe: always\nselect pg_sleep(4);\n",
    });
    const child = Bun.spawn([process.execPath, CLI, "--all", "--dir", dir, "--database-url", url], {
      stdout: "pipe", stderr: "pipe", env: { ...process.env, NO_COLOR: "1" },
    });
    const reader = child.stdout.getReader();
    let seen = "";
    while (!seen.includes("applying  0002_slow")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`ended without the start line:\n${seen}`);
      seen += new TextDecoder().decode(value);
    }
    // At this moment the migration runs: its statement is on the server and it is not recorded.
    const db = await open(url);
    const running = await db.query<{ n: number }>(
      `select count(*)::int as n from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid() and query like '%select pg_sleep(4)%'`,
    );
    expect(running[0].n).toBe(1);
    expect(await appliedIds(db)).toEqual(["0001_fast"]);
    expect(seen).not.toContain("applied  0002_slow");
    await child.exited;
    expect(child.exitCode).toBe(0);
    expect(await appliedIds(db)).toEqual(["0001_fast", "0002_slow"]);
  });

  test("on a terminal the start line counts the seconds and becomes the result line", async () => {
    const url = await serverDatabaseUrl();
    const dir = migrationsDir({ "0001_slow": "-- safe: always\nselect pg_sleep(2.5);\n" });
    // `script` gives the run a real pseudo-terminal.
    const command = `${process.execPath} ${CLI} --all --dir ${dir} --database-url ${url}`;
    const child = Bun.spawn(["script", "-qec", command, "/dev/null"], { stdout: "pipe", stderr: "pipe", env: { ...process.env, NO_COLOR: "1" } });
    const out = await new Response(child.stdout).text();
    expect(await child.exited).toBe(0);
    expect(out).toContain("\r\x1b[K  applying  0001_slow  (always)  1.0 s");
    expect(out).toContain("\r\x1b[K  applying  0001_slow  (always)  2.0 s");
    expect(out).toMatch(/\r\x1b\[K {2}applied {2}0001_slow {2}\(always\) {2}\d+ ms/);
  });

  test("a lock timeout names the session holding the lock: pid, application, state, query, how long", async () => {
    const url = await serverDatabaseUrl();
    const first = { "0001_t": "-- safe: always\ncreate table t (id int);\n" };
    expectExit(await cli(migrationsDir(first), url, ["--all"]), 0);
    const blocker = postgres(url, { max: 1, onnotice: () => {}, connection: { application_name: "sm-blocker-test" } });
    try {
      const session = await blocker.reserve();
      const [{ pid }] = await session`select pg_backend_pid() as pid`;
      await session`begin`;
      // SHARE lets reads (and the analysis's size queries) through and holds ALTER TABLE back.
      await session.unsafe("lock table t in share mode");
      const dir = migrationsDir({ ...first, "0002_add": "-- safe: always\nalter table t add column c int;\n" });
      const run = await cli(dir, url, ["--all", "--lock-timeout", "1s", "--lock-retries", "2"]);
      expectExit(run, 1);
      expect(run.stderr).toContain("lock timeout  0002_add");
      expect(run.stderr).toMatch(
        new RegExp(`held by pid ${pid} \\(sm-blocker-test, idle in transaction for \\d+(\\.\\d)? s\\): lock table t in share mode`),
      );
      await session`rollback`;
      session.release();
    } finally {
      await blocker.end();
    }
  });

  test("--verbose shows each statement with its file and line as it is sent", async () => {
    const url = await serverDatabaseUrl();
    const dir = migrationsDir({ "0001_t": "-- safe: always\ncreate table t (id int);\n\ninsert into t values (1);\n" });
    const run = await cli(dir, url, ["--all", "--verbose"]);
    expectExit(run, 0);
    const file = join(dir, "0001_t.sql");
    expect(run.stdout).toContain(`  applying  0001_t  (always)\n    ${file}:2\n      create table t (id int)\n    ${file}:4\n      insert into t values (1)\n  applied  0001_t`);
  });

  test("--plan --sql shows the SQL that would run and changes nothing", async () => {
    const url = await serverDatabaseUrl();
    const dir = migrationsDir({
      "0001_t": "-- safe: always\ncreate table t (id int);\n",
      "0002_i": "-- safe: always\n-- transaction: false\ncreate index concurrently t_id on t (id);\n",
    });
    const run = await cli(dir, url, ["--all", "--plan", "--sql"]);
    expectExit(run, 0);
    expect(run.stdout).toContain("would apply  0001_t  (always)\n      create table t (id int);\n");
    expect(run.stdout).toContain("would apply  0002_i  (always)\n      -- runs outside a transaction, statement by statement\n      create index concurrently t_id on t (id);\n");
    expect(await appliedIds(await open(url))).toEqual([]);
    const alone = await cli(dir, url, ["--all", "--sql"]);
    expectExit(alone, 2);
    expect(alone.stderr).toContain("--sql goes with --plan");
  });
});

describe("the terminal progress line", () => {
  test("is shown at the start, updated each second, and cleared before the result line", async () => {
    const calls: string[] = [];
    const output: Output = {
      out: (line) => calls.push(`out ${line}`),
      err: (line) => calls.push(`err ${line}`),
      status: (line) => calls.push(`status ${line}`),
      color: false,
    };
    const progress = humanProgress(output, false);
    progress.onEvent({ type: "starting", id: "0001_a", safe: "always", verb: "apply" });
    await Bun.sleep(1_300);
    progress.onEvent({ type: "applied", migration: { id: "0001_a", safe: "always" } as never, durationMs: 1_300 });
    expect(calls[0]).toBe("status   applying  0001_a  (always)");
    expect(calls).toContain("status   applying  0001_a  (always)  1.0 s");
    expect(calls.slice(-2)).toEqual(["status null", "out   applied  0001_a  (always)  1300 ms"]);
  });
});

describe.skipIf(!SERVER_URL)("notes that explain a plan", () => {
  test("a due delayed migration that still waits for a dependency says which", async () => {
    const url = await serverDatabaseUrl();
    const dir = migrationsDir({
      "0001_after": "-- safe: after_deploy\ncreate table a (id int);\n",
      "0002_delayed": "-- safe: after_deploy\n-- delay: 1d\ncreate table b (id int);\n",
    });
    expectExit(await cli(dir, url, ["--pre"]), 0);
    const db = await open(url);
    await db.exec(`update safemigrate_history set detected_at = now() - interval '2 days' where id = '0002_delayed'`);
    const run = await cli(dir, url, ["--pre"]);
    expectExit(run, 0);
    expect(run.stdout).toMatch(/waits {2}0002_delayed {2}\(after_deploy, delay 1d: due \S+, and it waits for 0001_after, which cannot run before the deploy\)/);
    expect(await appliedIds(db)).toEqual([]);
  });

  test("--all says which delayed migrations it applies before their delay", async () => {
    const url = await serverDatabaseUrl();
    const dir = migrationsDir({
      "0001_delayed": "-- safe: after_deploy\n-- delay: 7d\ncreate table a (id int);\n",
      "0002_plain": "-- safe: after_deploy\ncreate table b (id int);\n",
    });
    const run = await cli(dir, url, ["--all"]);
    expectExit(run, 0);
    expect(run.stdout).toContain("before its delay  0001_delayed  (delay 7d, no --pre has started its clock; --all applied it now)");
    expect(run.stdout).not.toContain("before its delay  0002_plain");
  });

  test("--pre mentions applied migrations whose files are not in this checkout", async () => {
    const url = await serverDatabaseUrl();
    const other = migrationsDir({ "0001_other_branch": "-- safe: always\ncreate table o (id int);\n" });
    expectExit(await cli(other, url, ["--all"]), 0);
    const here = migrationsDir({ "0002_here": "-- safe: before_deploy\n-- depends: []\ncreate table h (id int);\n" });
    const run = await cli(here, url, ["--pre"]);
    expectExit(run, 0);
    expect(run.stdout).toContain("no file  0001_other_branch  (applied, but not in this checkout");
  });

  test("the drift error mentions --sync for a development database", async () => {
    const url = await serverDatabaseUrl();
    const dir = migrationsDir({ "0001_t": "-- safe: always\ncreate table t (id int);\n" });
    expectExit(await cli(dir, url, ["--all"]), 0);
    await Bun.write(join(dir, "0001_t.sql"), "-- safe: always\ncreate table t (id bigint);\n");
    const run = await cli(dir, url, ["--all"]);
    expectExit(run, 2);
    expect(run.stderr).toContain("On a development database, --sync rolls it back and applies the file as it is now");
  });
});
