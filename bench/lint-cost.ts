#!/usr/bin/env bun
/**
 * What `--lint` costs on the real corpus: whole processes, interleaved runs,
 * medians of wall clock, process CPU and peak memory (max RSS), against
 * `--version` (start-up) measured in the same loop.
 *
 *   bun bench/corpus.ts && bun bench/lint-cost.ts [--runs 5]
 *
 * Cases: the 304 KB Sourcegraph squashed baseline alone (1,863 statements;
 * target under 0.5 s and 150 MB), crates.io's 285-migration history, Lemmy's
 * 233 and Sourcegraph's 340 (target for a 300-migration history: under 2 s).
 *
 *   bun bench/lint-cost.ts --breakdown [--runs 5]
 *
 * Where the baseline's time goes, in fresh processes (process CPU, medians):
 * loading libpg-query's WASM, reading the file, the lexer that cuts it into
 * pieces, parsing (the lexer again, the parser, mapping statements to lines),
 * and the rules.
 */
import { cpSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const argv = process.argv.slice(2);
const runs = Number(argv[argv.indexOf("--runs") + 1] || 5) || 5;
const root = resolve(import.meta.dir, "..");
const corpus = join(import.meta.dir, ".corpus");
const baselineDir = mkdtempSync(join(tmpdir(), "lint-cost-"));
cpSync(join(corpus, "sourcegraph", "1687792857_squashed_migrations_unprivileged.sql"), join(baselineDir, "1687792857_squashed_migrations_unprivileged.sql"));

if (argv.includes("--breakdown")) {
  // One fresh process per run: a second parse in the same process is several times cheaper (the WASM is compiled by then).
  const script = `
    const m = await import(${JSON.stringify(join(root, "safemigrate.ts"))});
    const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };
    const laps = {}; let t = cpu();
    const lap = (k) => { const n = cpu(); laps[k] = n - t; t = n; };
    const { parse } = await import("libpg-query"); await parse("select 1"); lap("load libpg-query (WASM)");
    const ms = m.readMigrations(${JSON.stringify(baselineDir)}); lap("read the file");
    m.lexStatements(ms[0].up.sql); lap("lexer (cutting into pieces)");
    await m.parseSection(ms[0].up, ms[0].file); lap("parse (lexer, parser, lines)");
    await m.analyzeMigrations(ms); lap("rules");
    console.log(JSON.stringify(laps));`;
  const scriptFile = join(baselineDir, "breakdown.ts");
  writeFileSync(scriptFile, script);
  const laps: Record<string, number[]> = {};
  for (let run = 0; run < runs; run++) {
    const child = Bun.spawnSync([process.execPath, scriptFile], { cwd: root });
    for (const [k, v] of Object.entries(JSON.parse(child.stdout.toString()) as Record<string, number>)) (laps[k] ??= []).push(v);
  }
  rmSync(baselineDir, { recursive: true, force: true });
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log(`bun bench/lint-cost.ts --breakdown --runs ${runs} — load average ${(await import("node:os")).loadavg().map((l) => l.toFixed(1)).join(" ")}`);
  console.log("| step (Sourcegraph's 304 KB baseline) | process CPU (median) |\n| --- | ---: |");
  for (const [k, v] of Object.entries(laps)) console.log(`| ${k} | ${Math.round(median(v))} ms |`);
  process.exit(0);
}

const cases: [string, string[]][] = [
  ["--version (start-up)", ["--version"]],
  ["--lint: Sourcegraph squashed baseline (304 KB)", ["--lint", "--dir", baselineDir]],
  ["--lint: crates.io (285 migrations)", ["--lint", "--dir", join(corpus, "crates.io")]],
  ["--lint: Lemmy (233 migrations)", ["--lint", "--dir", join(corpus, "lemmy")]],
  ["--lint: Sourcegraph (340 migrations)", ["--lint", "--dir", join(corpus, "sourcegraph")]],
];

const samples = new Map<string, { wall: number[]; cpu: number[]; rss: number[] }>(cases.map(([name]) => [name, { wall: [], cpu: [], rss: [] }]));
for (let run = 0; run < runs; run++) {
  // Rotate the order so a busy moment of the machine does not always hit the same case.
  for (const [name, args] of [...cases.slice(run % cases.length), ...cases.slice(0, run % cases.length)]) {
    const started = performance.now();
    const child = Bun.spawn([process.execPath, join(root, "safemigrate.ts"), ...args], { stdout: "ignore", stderr: "ignore", cwd: root });
    await child.exited;
    const usage = child.resourceUsage()!;
    const s = samples.get(name)!;
    s.wall.push(performance.now() - started);
    s.cpu.push(Number(usage.cpuTime.user + usage.cpuTime.system) / 1000);
    s.rss.push(usage.maxRSS / 1024 / 1024);
  }
}
rmSync(baselineDir, { recursive: true, force: true });

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log(`bun bench/lint-cost.ts --runs ${runs} — ${new Date().toISOString()}, load average ${(await import("node:os")).loadavg().map((l) => l.toFixed(1)).join(" ")}`);
console.log("");
console.log("| case | wall (median) | process CPU (median) | max RSS (median) |");
console.log("| --- | ---: | ---: | ---: |");
for (const [name] of cases) {
  const s = samples.get(name)!;
  console.log(`| ${name} | ${(median(s.wall) / 1000).toFixed(2)} s | ${(median(s.cpu) / 1000).toFixed(2)} s | ${Math.round(median(s.rss))} MB |`);
}
