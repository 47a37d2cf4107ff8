/**
 * The README's recipes, run as far as this machine allows (no Docker engine,
 * no cluster, no GitHub runner): the GitHub Actions workflow's run: steps in
 * bash against the real server, and migrations mounted the way a Kubernetes
 * ConfigMap volume presents them. The Heroku, Fly and Render release commands
 * run from an installed package in test/package.test.ts.
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { cpSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { appliedIds, cleanEnv, cleanup, open, ROOT, runCli, SERVER_URL, serverDatabaseUrl, tempDir } from "./helpers.ts";

// A guard against a hang, not a speed target (speed lives in bench/): on a loaded 2-core machine one
// PGlite start took 21 s and a whole pipeline test minutes, so no test may fail for being slow.
setDefaultTimeout(15 * 60_000);

afterEach(cleanup);

interface Step {
  name?: string;
  run?: string;
  uses?: string;
}

const WORKFLOW = join(ROOT, ".github/workflows/migrations-example.yml");

/** A checkout of this repository as actions/checkout gives it: the tracked files the workflow needs. */
function checkout(): string {
  const dir = tempDir("safemigrate-checkout-");
  for (const path of ["safemigrate.ts", "package.json", "bun.lock", "bunfig.toml", "migrations"]) cpSync(join(ROOT, path), join(dir, path), { recursive: true });
  return dir;
}

/** Runs each run: step in bash -e, as the runner does, with the job's env; stops at the first that fails. */
async function runSteps(dir: string, env: Record<string, string>) {
  const workflow = Bun.YAML.parse(readFileSync(WORKFLOW, "utf8")) as { jobs: { migrations: { steps: Step[]; env: Record<string, string> } } };
  const job = workflow.jobs.migrations;
  const results: { name: string; code: number; stdout: string; stderr: string }[] = [];
  for (const step of job.steps.filter((s) => s.run)) {
    const child = Bun.spawn(["bash", "-e", "-c", step.run!], {
      cwd: dir, env: cleanEnv({ ...job.env, ...env, GITHUB_ACTIONS: "true" }), stdin: "ignore", stdout: "pipe", stderr: "pipe",
    });
    const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
    results.push({ name: step.name ?? step.run!, code, stdout, stderr });
    if (code !== 0) break;
  }
  return results;
}

describe.skipIf(!SERVER_URL)("the GitHub Actions workflow (.github/workflows/migrations-example.yml)", () => {
  test("on this repository's migrations every step passes: check, lint (no annotations), rehearse", async () => {
    const dir = checkout();
    const results = await runSteps(dir, { DATABASE_URL: SERVER_URL! });
    expect(results.map((r) => [r.name, r.code])).toEqual([
      ["install", 0], ["check", 0], ["lint (annotations on the pull request)", 0], ["rehearse", 0],
    ]);
    expect(results[1].stdout).toContain("ok: 5 migrations");
    expect(results[2].stdout).toBe("");
    expect(results[3].stdout).toContain("Rehearsed 5 migrations");
  });

  test("a pull request adding an unsafe migration fails at lint with an annotation on its file and line", async () => {
    const dir = checkout();
    writeFileSync(join(dir, "migrations/0006_drop_users_email.sql"), "-- safe: before_deploy\nalter table users drop column email;\n");
    const results = await runSteps(dir, { DATABASE_URL: SERVER_URL! });
    expect(results.map((r) => [r.name, r.code])).toEqual([["install", 0], ["check", 0], ["lint (annotations on the pull request)", 2]]);
    expect(results[2].stdout).toMatch(/^::error file=migrations\/0006_drop_users_email\.sql,line=2,col=\d+,title=safemigrate drop-column::/m);
  });
});

describe("Kubernetes: migrations from a ConfigMap volume", () => {
  /** What the kubelet makes of a ConfigMap: a timestamped dir, a ..data link to it, and one link per key. */
  function configMapVolume(files: Record<string, string>): string {
    const volume = tempDir("safemigrate-configmap-");
    const revision = "..2026_11_30_05_00_00.000000001";
    mkdirSync(join(volume, revision));
    for (const [name, text] of Object.entries(files)) writeFileSync(join(volume, revision, name), text);
    symlinkSync(revision, join(volume, "..data"));
    for (const name of Object.keys(files)) symlinkSync(join("..data", name), join(volume, name));
    return volume;
  }

  test.skipIf(!SERVER_URL)("--pre reads the linked files (and only them) and applies them", async () => {
    const files = Object.fromEntries(
      ["0001_create_users.sql", "0002_add_users_display_name.sql"].map((name) => [name, readFileSync(join(ROOT, "migrations", name), "utf8")]),
    );
    const volume = configMapVolume(files);
    const url = await serverDatabaseUrl();
    const run = await runCli(["--pre", "--dir", volume], { env: { DATABASE_URL: url, KUBERNETES_SERVICE_HOST: "10.0.0.1" } });
    if (run.code !== 0) throw new Error(`--pre exited ${run.code}:\n${run.stdout}\n${run.stderr}`);
    expect(run.stdout).toContain("Applied 2 migrations");
    expect(await appliedIds(await open(url))).toEqual(["0001_create_users", "0002_add_users_display_name"]);
  });
});
