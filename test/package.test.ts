/**
 * The npm package as a user gets it: `npm pack`, installed OFFLINE into a
 * scratch app (the dependencies must already be in the npm cache; .ci/run warms
 * it), then `npx safemigrate` and `bunx safemigrate` from there, the
 * programmatic API imported by name under Node and Bun, and the single-file
 * copy of safemigrate.ts into an app.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { copyFileSync, cpSync, existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VERSION } from "../safemigrate.ts";
import { cleanEnv, open, RUNTIMES, ROOT, SERVER_URL, serverDatabaseUrl, tables } from "./helpers.ts";

// A guard against a hang, not a speed target (speed lives in bench/): on a loaded 2-core machine one
// PGlite start took 21 s and a whole pipeline test minutes, so no test may fail for being slow.
setDefaultTimeout(15 * 60_000);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function sh(command: string[], cwd: string, env: Record<string, string> = {}): Promise<Run> {
  const child = Bun.spawn(command, { cwd, env: cleanEnv(env), stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { code, stdout, stderr };
}

async function ok(command: string[], cwd: string, env: Record<string, string> = {}): Promise<Run> {
  const run = await sh(command, cwd, env);
  if (run.code !== 0) throw new Error(`${command.join(" ")} exited ${run.code}:\n${run.stdout}\n${run.stderr}`);
  return run;
}

const work = mkdtempSync(join(tmpdir(), "safemigrate-package-"));
const app = join(work, "app");
let tarball = "";

beforeAll(async () => {
  const pack = await ok(["npm", "pack", "--pack-destination", work], ROOT);
  tarball = join(work, pack.stdout.trim().split("\n").pop()!);
  await ok(["mkdir", "-p", join(app, "migrations")], work);
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  cpSync(join(ROOT, "migrations"), join(app, "migrations"), { recursive: true });
  const install = await sh(["npm", "install", "--offline", "--no-audit", "--no-fund", tarball], app);
  if (install.code !== 0) {
    throw new Error(
      `npm install --offline of the packed tarball failed (are the dependencies in the npm cache? .ci/run warms it):\n${install.stderr}`,
    );
  }
});

afterAll(() => rmSync(work, { recursive: true, force: true }));

describe("the packed package", () => {
  test("holds the source, the stripped JavaScript and the schema, and nothing of the repository's tests", async () => {
    expect(JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version).toBe(VERSION);
    const listing = await ok(["tar", "-tzf", tarball], work);
    const files = listing.stdout.trim().split("\n").sort();
    expect(files).toEqual([
      "package/README.md", "package/package.json", "package/safemigrate.js", "package/safemigrate.ts", "package/schema/output.schema.json",
    ]);
    const installed = join(app, "node_modules/safemigrate");
    const js = readFileSync(join(installed, "safemigrate.js"), "utf8");
    expect(js.startsWith("#!/usr/bin/env node\n")).toBe(true);
    // Types are blanked, not moved: the JavaScript keeps the source's lines.
    expect(js.split("\n").length).toBe(readFileSync(join(ROOT, "safemigrate.ts"), "utf8").split("\n").length);
    expect(js).not.toContain("readonly exitCode: number");
  });

  test.skipIf(!RUNTIMES.deno)("jsr.json: deno publish --dry-run accepts it (types checked, no slow types)", async () => {
    // A copy, with a placeholder license: the project has not chosen one, and JSR requires it.
    const copy = join(work, "jsr");
    await ok(["mkdir", "-p", copy], work);
    for (const file of ["safemigrate.ts", "README.md", "package.json", "schema"]) cpSync(join(ROOT, file), join(copy, file), { recursive: true });
    const jsr = JSON.parse(readFileSync(join(ROOT, "jsr.json"), "utf8"));
    expect(jsr.version).toBe(VERSION);
    writeFileSync(join(copy, "jsr.json"), JSON.stringify({ ...jsr, license: "LicenseRef-placeholder" }));
    symlinkSync(join(ROOT, "node_modules"), join(copy, "node_modules"));
    const publish = await ok(["deno", "publish", "--dry-run", "--allow-dirty"], copy);
    expect(publish.stdout + publish.stderr).toContain("Dry run complete");
  });

  test("npx and bunx run the bin: --version", async () => {
    expect((await ok(["npx", "--offline", "safemigrate", "--version"], app)).stdout.trim()).toBe(VERSION);
    expect((await ok(["bunx", "safemigrate", "--version"], app)).stdout.trim()).toBe(VERSION);
    expect((await ok(["bunx", "--bun", "safemigrate", "--version"], app)).stdout.trim()).toBe(VERSION);
    if (RUNTIMES.node) expect((await ok([RUNTIMES.node[0], "node_modules/.bin/safemigrate", "--version"], app)).stdout.trim()).toBe(VERSION);
  });

  test.skipIf(!SERVER_URL)("npx safemigrate --all, then bunx --bun safemigrate --status, against the server", async () => {
    const url = await serverDatabaseUrl();
    const all = await ok(["npx", "--offline", "safemigrate", "--all"], app, { DATABASE_URL: url });
    expect(all.stdout).toContain("Applied 5 migrations");
    const status = await ok(["bunx", "--bun", "safemigrate", "--status", "--json"], app, { DATABASE_URL: url });
    const rows = JSON.parse(status.stdout).migrations as { state: string }[];
    expect(rows.map((r) => r.state)).toEqual(["applied", "applied", "applied", "applied", "applied"]);
    const db = await open(url);
    expect(await tables(db)).toEqual(["safemigrate_history", "users"]);
  });

  test.skipIf(!SERVER_URL)("the README's release commands for Heroku, Fly and Render, in bash, in their release environments", async () => {
    // Each as the README writes it; the platform's marker variable makes it a release environment.
    const recipes: [string, string, Record<string, string>][] = [
      ["Heroku", `bunx safemigrate --pre --database-url "$DATABASE_URL?sslmode=require"`, { DYNO: "release.1" }],
      ["Fly", "bunx safemigrate --pre", { FLY_APP_NAME: "app" }],
      ["Render", "bunx safemigrate --pre && bunx safemigrate --status", { RENDER: "true" }],
    ];
    for (const [platform, command, marker] of recipes) {
      const url = await serverDatabaseUrl();
      const run = await sh(["bash", "-c", command], app, { ...marker, DATABASE_URL: url });
      if (platform === "Heroku") {
        // This server has no SSL: the line does ask for it (Heroku Postgres has it, with a certificate nothing verifies).
        expect(run.code).toBe(1);
        expect(run.stderr).toMatch(/SSL|TLS/);
        continue;
      }
      if (run.code !== 0) throw new Error(`${platform}: ${command} exited ${run.code}:\n${run.stdout}\n${run.stderr}`);
      expect(run.stdout).toContain("Applied 4 migrations");
      const missing = await sh(["bash", "-c", command], app, marker);
      expect(missing.code).toBe(2);
      expect(missing.stderr).toContain("no database URL");
    }
  });

  test.skipIf(!SERVER_URL)("the programmatic API by its documented names, from Node and from Bun", async () => {
    const script = `
      import { connect, lint, plan, readMigrations, rollback, run, status } from "safemigrate";
      const db = await connect(process.env.DATABASE_URL);
      try {
        const migrations = readMigrations("migrations");
        const before = await plan(db, migrations, { phase: "pre", mode: "strict" });
        const result = await run(db, migrations, { phase: "all", mode: "strict" });
        const undone = await rollback(db, migrations, { last: true }, {});
        const rows = await status(db, migrations);
        const findings = await lint(migrations);
        console.log(JSON.stringify({
          wouldApply: before.apply.map((m) => m.id), applied: result.applied.map((m) => m.id),
          reverted: undone.reverted.map((m) => m.id), states: rows.map((r) => r.state), findings: findings.length,
        }));
      } finally {
        await db.close();
      }
    `;
    writeFileSync(join(app, "api.mjs"), script);
    const expected = {
      wouldApply: ["0001_create_users", "0002_add_users_display_name", "0003_backfill_display_name", "0004_index_users_display_name"],
      applied: ["0001_create_users", "0002_add_users_display_name", "0003_backfill_display_name", "0004_index_users_display_name", "0005_drop_users_full_name"],
      reverted: ["0005_drop_users_full_name"],
      states: ["applied", "applied", "applied", "applied", "pending"],
      findings: 0,
    };
    for (const runtime of [["node"], [process.execPath]]) {
      const url = await serverDatabaseUrl();
      const result = await ok([...runtime, "api.mjs"], app, { DATABASE_URL: url });
      expect(JSON.parse(result.stdout)).toEqual(expected);
    }
  });

  test.skipIf(!SERVER_URL)("the single file copied into an app still runs there, under Bun and Deno", async () => {
    const copy = join(app, "tools");
    await ok(["mkdir", "-p", copy], app);
    copyFileSync(join(ROOT, "safemigrate.ts"), join(copy, "safemigrate.ts"));
    const url = await serverDatabaseUrl();
    const bun = await ok([process.execPath, "tools/safemigrate.ts", "--pre"], app, { DATABASE_URL: url });
    expect(bun.stdout).toContain("Applied 4 migrations");
    if (RUNTIMES.deno) {
      const deno = await ok([...RUNTIMES.deno, "tools/safemigrate.ts", "--all"], app, { DATABASE_URL: url });
      expect(deno.stdout).toContain("Applied 1 migration");
    }
    expect(existsSync(join(app, ".safemigrate"))).toBe(false);
  });
});
