/**
 * Output that a pipeline can trust: every byte of every format arrives through
 * a pipe, also to a reader that waits before reading, under Bun, Deno and
 * Node; a reader that goes away (`| head -1`) ends the run quietly with 141.
 * Real shell pipelines (bash), real processes, outputs of several hundred KB.
 */
import { afterAll, afterEach, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  cleanup, cliCommand, migrationsDir, open, ROOT, type Runtime, RUNTIMES, RUNTIMES_REQUIRED, SERVER_URL, serverDatabaseUrl, tempDir,
} from "./helpers.ts";

// A guard against a hang, not a speed target (speed lives in bench/): on a loaded 2-core machine one
// PGlite start took 21 s and a whole pipeline test minutes, so no test may fail for being slow.
setDefaultTimeout(15 * 60_000);

afterEach(cleanup);

const quote = (word: string) => `'${word.replace(/'/g, `'\\''`)}'`;

interface Piped {
  /** Exit code of safemigrate, not of the reader (PIPESTATUS). */
  code: number;
  stdout: string;
  stderr: string;
}

/** `safemigrate args | reader > file` in bash; what reached the file, and safemigrate's own exit code and stderr. */
async function pipeThrough(runtime: Runtime, args: string[], reader: string): Promise<Piped> {
  const dir = tempDir("safemigrate-pipe-");
  const [out, err, status] = ["out", "err", "status"].map((name) => join(dir, name));
  const cli = cliCommand(runtime, args).map(quote).join(" ");
  const script = `${cli} 2>${quote(err)} | ${reader} >${quote(out)}; echo "\${PIPESTATUS[0]}" >${quote(status)}`;
  const child = Bun.spawn(["bash", "-c", script], { cwd: ROOT, env: { ...process.env, NO_COLOR: "1" }, stdin: "ignore" });
  await child.exited;
  return { code: Number(readFileSync(status, "utf8")), stdout: readFileSync(out, "utf8"), stderr: readFileSync(err, "utf8") };
}

const SLOW_READER = "{ sleep 2; cat; }";

/**
 * Many migrations with two findings each: the lint output is several hundred KB in
 * every format, far more than a pipe holds (64 KB), so a write must wait for the reader.
 */
function manyFindings(count: number): string {
  const dir = mkdtempSync(join(tmpdir(), "safemigrate-findings-"));
  for (let i = 1; i <= count; i++) {
    const n = String(i).padStart(4, "0");
    writeFileSync(
      join(dir, `${n}_t${n}.sql`),
      `-- safe: before_deploy\nalter table t${n} drop column old_name;\nalter table t${n} add column c int not null default 1;\n`,
    );
  }
  return dir;
}

/** Long enough that a few hundred migrations' lines fill a pipe (64 KB) several times over. */
const LONG_NAME = "add_a_column_with_a_descriptive_name_".repeat(3);

/** A manyFindings directory shared by the tests of the describe block that calls this (tempDir's go after each test). */
function findingsForThisBlock(count: number): { dir: string } {
  const shared = { dir: "" };
  beforeAll(() => {
    shared.dir = manyFindings(count);
  });
  afterAll(() => rmSync(shared.dir, { recursive: true, force: true }));
  return shared;
}

const runtimes = (["bun", "deno", "node"] as Runtime[]).filter((r) => RUNTIMES[r] || RUNTIMES_REQUIRED);

describe("a slow reader gets every byte", () => {
  const corpus = findingsForThisBlock(800);

  for (const runtime of runtimes) {
    test(`${runtime}: --lint in json, human and github formats`, async () => {
      const json = await pipeThrough(runtime, ["--lint", "--format", "json", "--dir", corpus.dir], SLOW_READER);
      expect(json.code).toBe(2);
      expect(json.stderr).toBe("");
      expect(json.stdout.length).toBeGreaterThan(250_000);
      const result = JSON.parse(json.stdout);
      expect(result.migrations).toBe(800);
      expect(result.findings.length).toBe(800);
      const findings = result.findings.length;

      const human = await pipeThrough(runtime, ["--lint", "--dir", corpus.dir], SLOW_READER);
      expect(human.code).toBe(2);
      expect(human.stdout.length).toBeGreaterThan(250_000);
      expect(human.stdout.split("\n").filter((l) => /^\S+:\d+:\d+: drop-column: /.test(l)).length).toBe(findings);
      expect(human.stdout.endsWith(`${findings} gating findings.\n`)).toBe(true);

      const github = await pipeThrough(runtime, ["--lint", "--format", "github", "--dir", corpus.dir], SLOW_READER);
      expect(github.code).toBe(2);
      const annotations = github.stdout.split("\n").filter(Boolean);
      expect(annotations.length).toBe(findings);
      expect(annotations.every((line) => line.startsWith("::error file="))).toBe(true);
    });
  }

  test.skipIf(!SERVER_URL)("--all, --status and --plan --json to a slow reader, each runtime", async () => {
    for (const runtime of runtimes) {
      const url = await serverDatabaseUrl();
      const files: Record<string, string> = {};
      for (let i = 1; i <= 700; i++) files[`${String(i).padStart(4, "0")}_${LONG_NAME}`] = `select ${i};`;
      const migrations = migrationsDir(files);
      const args = ["--dir", migrations, "--database-url", url];

      const plan = await pipeThrough(runtime, ["--all", "--plan", "--json", ...args], SLOW_READER);
      expect(plan.code).toBe(0);
      expect(plan.stdout.length).toBeGreaterThan(100_000);
      expect(JSON.parse(plan.stdout).wouldApply).toHaveLength(700);

      const all = await pipeThrough(runtime, ["--all", ...args], SLOW_READER);
      expect(all.code).toBe(0);
      expect(all.stdout.match(/^ {2}applied {2}/gm)).toHaveLength(700);
      expect(all.stdout).toMatch(/Applied 700 migrations in \d+ ms\.\n$/);

      const status = await pipeThrough(runtime, ["--status", "--json", ...args], SLOW_READER);
      expect(status.code).toBe(0);
      const rows = JSON.parse(status.stdout).migrations;
      expect(rows).toHaveLength(700);
      expect(rows.every((r: { state: string }) => r.state === "applied")).toBe(true);
    }
  });
});

describe("a reader that goes away ends the run quietly", () => {
  const corpus = findingsForThisBlock(600);

  for (const runtime of runtimes) {
    test(`${runtime}: --lint | head -1 exits 141 with nothing on stderr`, async () => {
      for (const format of ["human", "json", "github"]) {
        const run = await pipeThrough(runtime, ["--lint", "--format", format, "--dir", corpus.dir], "head -c 100");
        expect({ format, code: run.code, stderr: run.stderr }).toEqual({ format, code: 141, stderr: "" });
        expect(run.stdout.length).toBe(100);
      }
    });
  }

  test.skipIf(!SERVER_URL)("--all | head -1 stops between migrations: what the history says was applied, was", async () => {
    const url = await serverDatabaseUrl();
    const files: Record<string, string> = {};
    for (let i = 1; i <= 1500; i++) {
      const n = String(i).padStart(4, "0");
      files[`${n}_${LONG_NAME}`] = `create table t${n} (id int);`;
    }
    const migrations = migrationsDir(files);
    const run = await pipeThrough("bun", ["--all", "--dir", migrations, "--database-url", url], "head -1");
    expect(run.code).toBe(141);
    expect(run.stderr).toBe("");
    expect(run.stdout).toStartWith("safemigrate --all on ");

    const db = await open(url);
    const [{ recorded }] = await db.query<{ recorded: number }>("select count(*)::int as recorded from safemigrate_history where applied_at is not null");
    const [{ created }] = await db.query<{ created: number }>(
      "select count(*)::int as created from information_schema.tables where table_schema = 'public' and table_name like 't%'",
    );
    expect(recorded).toBeLessThan(1500);
    expect(created).toBe(recorded);
    // The lock was released: the next run applies the rest.
    const rest = await pipeThrough("bun", ["--all", "--json", "--dir", migrations, "--database-url", url], "cat");
    expect(rest.code).toBe(0);
    expect(JSON.parse(rest.stdout).applied).toHaveLength(1500 - recorded);
  });
});

