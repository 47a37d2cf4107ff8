#!/usr/bin/env bun
/**
 * `--rehearse` on real histories against its baseline, three psql passes in
 * one session: every up in dependency order, then the downs of the
 * reversible ones newest first, then their ups again (each migration in
 * BEGIN/COMMIT unless it says `transaction: false`) — the same statements the
 * rehearsal runs, without its bookkeeping and schema comparisons.
 *
 *   bun bench/corpus.ts                     # regenerates bench/.corpus/<project>/ (gitignored)
 *   bun bench/rehearse.ts [--corpus bench/.corpus] [--runs 3] [--only sourcegraph] [--pglite]
 *       [--database-url postgres://postgres@127.0.0.1:5432/postgres] [--verify] [--baseline /work/main/safemigrate.ts]
 *
 * Whole processes, runs interleaved (psql, rehearsal, psql, ...), medians;
 * peak memory (RSS) of the rehearsal process from /usr/bin/time. With
 * --pglite the rehearsal also runs once on the embedded database. Prints one
 * line per project and what the rehearsal found. With --verify it instead
 * rehearses each project in this process comparing every incremental schema
 * read with a full one (slow), and says where they first differ. With
 * --baseline another safemigrate.ts (another checkout's) runs in the same
 * rounds (psql, rehearsal, baseline, ...), so a change is measured against
 * the code before it under the same load.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import mri from "mri";
import postgres from "postgres";
import { connect, dependencyOrder, hasNoStatements, type Migration, readMigrations, rehearse } from "../safemigrate.ts";

const args = mri(process.argv.slice(2), { string: ["corpus", "runs", "only", "database-url", "baseline"], boolean: ["pglite", "verify"] });
const CORPUS = resolve(args.corpus ?? join(import.meta.dir, ".corpus"));
const RUNS = Number(args.runs ?? 3);
const URL_ = args["database-url"] ?? process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const CLI = join(import.meta.dir, "..", "safemigrate.ts");
const BASELINE = args.baseline ? resolve(args.baseline) : null;

if (!existsSync(CORPUS)) {
  console.error(`no corpus in ${CORPUS}: run "bun bench/corpus.ts" first`);
  process.exit(2);
}

/** The three passes as one psql script. */
export function threePasses(migrations: readonly Migration[]): string {
  const ordered = dependencyOrder(migrations);
  const inTransaction = (sql: string, transaction: boolean) => (transaction ? `begin;\n${sql}\n;\ncommit;\n` : `${sql}\n;\n`);
  const reversible = ordered.filter((m) => m.down && !hasNoStatements(m.down.sql));
  return [
    ...ordered.map((m) => inTransaction(m.up.sql, m.up.transaction)),
    ...[...reversible].reverse().map((m) => inTransaction(m.down!.sql, m.down!.transaction)),
    ...reversible.map((m) => inTransaction(m.up.sql, m.up.transaction)),
  ].join("");
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

/** Wall time in seconds and peak RSS in MB of a whole process. */
function timed(command: string[], env: Record<string, string> = {}): { seconds: number; rssMb: number; stdout: string } {
  const started = performance.now();
  const run = spawnSync("/usr/bin/time", ["-f", "%M", ...command], { env: { ...process.env, ...env }, encoding: "utf8", maxBuffer: 1 << 28 });
  const seconds = (performance.now() - started) / 1000;
  const rssKb = Number(run.stderr.trim().split("\n").pop());
  return { seconds, rssMb: rssKb / 1024, stdout: run.stdout };
}

const admin = postgres(URL_, { max: 1, onnotice: () => {} });
async function psqlPasses(script: string): Promise<number> {
  const name = `safemigrate_bench_psql_${process.pid}`;
  await admin.unsafe(`drop database if exists ${name} with (force)`);
  await admin.unsafe(`create database ${name}`);
  const url = new URL(URL_);
  url.pathname = `/${name}`;
  const { seconds } = timed(["psql", "-X", "-q", "-o", "/dev/null", "-d", url.toString(), "-f", script], { PGOPTIONS: "-c client_min_messages=error" });
  await admin.unsafe(`drop database ${name} with (force)`);
  return seconds;
}

/** Every incremental read against a full one, on a scratch database of the server. */
async function verify(project: string, migrations: readonly Migration[]): Promise<void> {
  const name = `safemigrate_bench_verify_${process.pid}`;
  await admin.unsafe(`drop database if exists ${name} with (force)`);
  await admin.unsafe(`create database ${name}`);
  const url = new URL(URL_);
  url.pathname = `/${name}`;
  const db = await connect(url.toString());
  try {
    const result = await rehearse(db, migrations, { verifySnapshots: true });
    console.log(`${project}: every incremental read matched a full read (${result.problems.length} problems found)`);
  } catch (error) {
    console.log(`${project}: ${(error as Error).message}`);
  } finally {
    await db.close();
    await admin.unsafe(`drop database ${name} with (force)`);
  }
}

const projects = readdirSync(CORPUS).filter((p) => !args.only || String(args.only).split(",").includes(p)).sort();
const work = mkdtempSync(join(tmpdir(), "safemigrate-bench-rehearse-"));
try {
  for (const project of projects) {
    const dir = join(CORPUS, project);
    const migrations = readMigrations(dir);
    const script = join(work, `${project}.sql`);
    if (args.verify) {
      await verify(project, migrations);
      continue;
    }
    writeFileSync(script, threePasses(migrations));
    const psql: number[] = [];
    const rehearsal: number[] = [];
    const rss: number[] = [];
    const baseline: number[] = [];
    let report: { counts: Record<string, number>; problems: { id: string; kind: string }[] } | null = null;
    for (let run = 0; run < RUNS; run++) {
      psql.push(await psqlPasses(script));
      const r = timed([process.execPath, CLI, "--rehearse", "--json", "--dir", dir, "--database-url", URL_]);
      rehearsal.push(r.seconds);
      rss.push(r.rssMb);
      report = JSON.parse(r.stdout.trim().split("\n").pop()!);
      if (BASELINE) baseline.push(timed([process.execPath, BASELINE, "--rehearse", "--json", "--dir", dir, "--database-url", URL_]).seconds);
    }
    const ratio = median(rehearsal) / median(psql);
    console.log(
      `${project}: ${migrations.length} migrations; three psql passes ${median(psql).toFixed(1)} s, ` +
        `--rehearse ${median(rehearsal).toFixed(1)} s (${ratio.toFixed(2)}x), peak RSS ${Math.round(Math.max(...rss))} MB ` +
        `(medians of ${RUNS} interleaved runs)`,
    );
    if (BASELINE) {
      console.log(`  baseline ${BASELINE}: ${median(baseline).toFixed(1)} s (${(median(baseline) / median(psql)).toFixed(2)}x); ` +
        `runs: psql ${psql.map((t) => t.toFixed(2)).join(" ")}, rehearsal ${rehearsal.map((t) => t.toFixed(2)).join(" ")}, ` +
        `baseline ${baseline.map((t) => t.toFixed(2)).join(" ")}`);
    }
    console.log(`  found: ${JSON.stringify(report!.counts)}`);
    const byKind = new Map<string, string[]>();
    for (const p of report!.problems) byKind.set(p.kind, [...(byKind.get(p.kind) ?? []), p.id]);
    for (const [kind, ids] of byKind) console.log(`    ${kind}: ${ids.length} (${ids.slice(0, 6).join(", ")}${ids.length > 6 ? ", ..." : ""})`);
    if (args.pglite) {
      const r = timed([process.execPath, CLI, "--rehearse", "--json", "--dir", dir], { DATABASE_URL: "" });
      const counts = JSON.parse(r.stdout.trim().split("\n").pop()!).counts;
      console.log(`  embedded PGlite: ${r.seconds.toFixed(1)} s, peak RSS ${Math.round(r.rssMb)} MB, found ${JSON.stringify(counts)}`);
    }
  }
} finally {
  await admin.end();
  rmSync(work, { recursive: true, force: true });
}
