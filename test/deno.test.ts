/**
 * Smoke test: the CLI runs under Deno (`deno run -A safemigrate.ts`) as well as Bun.
 * Skipped visibly when deno is not installed, except under CI, where it fails.
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { appliedIds, cleanup, migrationsDir, open, runCli, SERVER_URL, serverDatabaseUrl, tables } from "./helpers.ts";

// Real databases and CLI processes: bun's 5 s default is too short for a PGlite start on a busy machine.
setDefaultTimeout(60_000);

afterEach(cleanup);

const DENO = Bun.which("deno");
const DENO_REQUIRED = Boolean(process.env.CI);

if (!DENO) {
  console.warn(
    "\n[safemigrate tests] deno is not on PATH: the Deno smoke test is " +
      (DENO_REQUIRED ? "going to FAIL (CI is set)." : "SKIPPED.") + "\n",
  );
}

describe.skipIf(!SERVER_URL)("under Deno", () => {
  test.skipIf(!DENO && !DENO_REQUIRED)("--pre then --status against a fresh server database", async () => {
    if (!DENO) throw new Error("CI is set but deno is not on PATH");
    const dir = migrationsDir({
      "0001_a": "-- safe: before_deploy\ncreate table a (id int);\n",
      "0002_b": "-- safe: after_deploy\ncreate table b (id int);\n",
    });
    const url = await serverDatabaseUrl();
    const args = ["--dir", dir, "--database-url", url];

    const pre = await runCli(["--pre", ...args], { runtime: "deno" });
    if (pre.code !== 0) throw new Error(`--pre under deno exited ${pre.code}:\n${pre.stdout}\n${pre.stderr}`);
    expect(pre.stderr).not.toContain("error");
    expect(pre.stdout).toMatch(/applied\s+0001_a\s+\(before_deploy\)/);
    expect(pre.stdout).toMatch(/waits\s+0002_b\s+\(after_deploy: waits for --all\)/);
    expect(pre.stdout).toContain("Applied 1 migration");

    const status = await runCli(["--status", ...args], { runtime: "deno" });
    if (status.code !== 0) throw new Error(`--status under deno exited ${status.code}:\n${status.stdout}\n${status.stderr}`);
    expect(status.stderr).not.toContain("error");
    expect(status.stdout).toMatch(/^0001_a\s+before_deploy\s+applied\s+\d{4}-/m);
    expect(status.stdout).toMatch(/^0002_b\s+after_deploy\s+pending\s*$/m);

    const db = await open(url);
    expect(await tables(db)).toEqual(["a", "safemigrate_history"]);
    expect(await appliedIds(db)).toEqual(["0001_a"]);
  });
});
