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
 */
import { cpSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const argv = process.argv.slice(2);
const runs = Number(argv[argv.indexOf("--runs") + 1] || 5) || 5;
const root = resolve(import.meta.dir, "..");
const corpus = join(import.meta.dir, ".corpus");
const baselineDir = mkdtempSync(join(tmpdir(), "lint-cost-"));
cpSync(join(corpus, "sourcegraph", "1687792857_squashed_migrations_unprivileged.sql"), join(baselineDir, "1687792857_squashed_migrations_unprivileged.sql"));

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
