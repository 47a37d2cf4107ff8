/**
 * The real-corpus half of bench/compare-squawk.ts (`--real`): both tools over
 * the migration histories bench/corpus.ts converts (bench/.corpus/<project>/),
 * findings per rule, and precision per rule from a hand-classified sample
 * (bench/real-labels.tsv).
 *
 *   bun bench/corpus.ts
 *   SQUAWK=/tmp/squawk/node_modules/.bin/squawk bun bench/compare-squawk.ts --real [--sample 3] [--review]
 *
 * safemigrate: `analyzeMigrations` over each whole project (static lint, as
 * `--lint` without a database: every table assumed live and large), in-process.
 * squawk: `squawk --reporter json` over the up sections (down blanked, lines
 * kept), `--assume-in-transaction` for transactional migrations, as in the
 * synthetic comparison. squawk's runner-level rules (lock/statement timeout,
 * prefer-robust-stmts) and its style rules (prefer text, bigint, identity,
 * timestamptz, no char) are counted apart: they are not deploy hazards.
 * safemigrate's information findings (dynamic-sql, phase-suggestion) are counted
 * apart too.
 *
 * The sample: for each tool, rule and project, up to --sample findings evenly
 * spaced in (migration, line) order. Each is classified by hand in
 * bench/real-labels.tsv (tool, rule, project, migration, line, TP|FP, note): a
 * true positive is a finding whose described hazard really happens when the
 * migration runs on a production database holding the tables earlier
 * migrations created. `--review` prints every sampled finding without a label,
 * with the statement, for classifying. Precision per rule = TP / classified;
 * overall precision is the per-rule precisions weighted by each rule's number
 * of findings (and, beside it, the plain sample ratio).
 */
import { readFileSync, existsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, relative } from "node:path";
import { mkdtempSync, rmSync } from "node:fs";
import { analyzeMigrations, type Finding, readMigrations, RULES } from "../safemigrate.ts";

export interface RealOptions {
  squawk: string;
  squawkVersion: string;
  corpus: string;
  projects: string[];
  sample: number;
  labels: string;
  review: boolean | "disagreements";
  hazardsOf: (tool: "safemigrate" | "squawk", rule: string) => string[];
  runnerLevel: Record<string, string>;
}

interface Hit {
  tool: "safemigrate" | "squawk";
  rule: string;
  project: string;
  migration: string;
  file: string;
  line: number;
  message: string;
}

const STYLE = new Set(["require-enum-value-ordering", "prefer-text-field", "prefer-bigint-over-int", "prefer-bigint-over-smallint", "prefer-big-int", "prefer-identity", "prefer-timestamp-tz", "prefer-timestamptz", "ban-char-field"]);

async function safemigrateHits(corpus: string, project: string): Promise<Hit[]> {
  const findings: Finding[] = await analyzeMigrations(readMigrations(join(corpus, project)));
  return findings.filter((f) => f.waived === null).map((f) => ({
    tool: "safemigrate", rule: f.rule, project, migration: f.migration, file: f.file, line: f.line, message: f.message,
  }));
}

async function squawkHits(options: RealOptions, project: string): Promise<Hit[]> {
  const migrations = readMigrations(join(options.corpus, project));
  const dir = mkdtempSync(join(tmpdir(), "squawk-real-"));
  const hits: Hit[] = [];
  try {
    const byTx = new Map<boolean, string[]>([[true, []], [false, []]]);
    const original = new Map<string, { id: string; file: string }>();
    for (const m of migrations) {
      const target = join(dir, `${m.id}.sql`);
      writeFileSync(target, "\n".repeat(m.up.line - 1) + m.up.sql + "\n");
      byTx.get(m.up.transaction)!.push(target);
      original.set(target, { id: m.id, file: m.file });
    }
    for (const [tx, files] of byTx) {
      for (let i = 0; i < files.length; i += 200) {
        const cmd = [options.squawk, "--reporter", "json", ...(tx ? ["--assume-in-transaction"] : []), ...files.slice(i, i + 200)];
        const proc = Bun.spawnSync(cmd, { cwd: dir, stdout: "pipe", stderr: "pipe" });
        const text = proc.stdout.toString();
        let diagnostics: { file: string; line: number; message: string; rule_name: string }[];
        try {
          diagnostics = JSON.parse(text || "[]");
        } catch {
          throw new Error(`squawk exited ${proc.exitCode}: ${proc.stderr.toString().slice(0, 500)}`);
        }
        for (const d of diagnostics) {
          const source = original.get(d.file.startsWith("/") ? d.file : join(dir, d.file))!;
          hits.push({ tool: "squawk", rule: d.rule_name, project, migration: source.id, file: source.file, line: d.line + 1, message: d.message });
        }
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return hits;
}

type Group = "hazard" | "runner" | "style" | "info";
const groupOf = (options: RealOptions, h: Hit): Group =>
  h.tool === "squawk"
    ? h.rule in options.runnerLevel ? "runner" : STYLE.has(h.rule) ? "style" : "hazard"
    : (RULES as Record<string, { kind: string }>)[h.rule]?.kind === "info" ? "info" : "hazard";

/** One hazard per finding, so the per-hazard counts do not count a finding of a many-hazard rule several times. */
function hazardFor(options: RealOptions, h: Hit): string {
  if (h.tool === "safemigrate" && h.rule === "index-not-concurrently") {
    return /primary key/i.test(h.message) ? "pk-lock" : /as UNIQUE|a unique|an exclusion/.test(h.message) ? "unique-lock" : "index-lock";
  }
  if (h.rule === "rename-table" || h.rule === "renaming-table") return /renaming view/.test(h.message) ? "rename-view" : "rename-table";
  if (h.tool === "squawk" && h.rule === "constraint-missing-not-valid") {
    // One rule for every constraint: the statement says which hazard it is.
    const text = readFileSync(h.file, "utf8").split("\n").slice(h.line - 1, h.line + 3).join(" ");
    return /primary\s+key/i.test(text) ? "pk-lock" : /\b(unique|exclude)\b/i.test(text) && !/foreign|check/i.test(text) ? "unique-lock" : "validation-lock";
  }
  return options.hazardsOf(h.tool, h.rule)[0];
}

const keyOf = (h: Hit) => [h.tool, h.rule, h.project, h.migration, h.line].join("\t");

function readLabels(path: string): Map<string, { verdict: "TP" | "FP"; note: string }> {
  const labels = new Map<string, { verdict: "TP" | "FP"; note: string }>();
  if (!existsSync(path)) return labels;
  for (const line of readFileSync(path, "utf8").split("\n")) {
    if (!line.trim() || line.startsWith("#")) continue;
    const [tool, rule, project, migration, at, verdict, note = ""] = line.split("\t");
    if (verdict !== "TP" && verdict !== "FP") throw new Error(`${path}: "${line}": the verdict must be TP or FP`);
    labels.set([tool, rule, project, migration, at].join("\t"), { verdict, note });
  }
  return labels;
}

/** Up to n hits evenly spaced through the (already ordered) list. */
function evenly<T>(items: T[], n: number): T[] {
  if (items.length <= n) return items;
  return Array.from({ length: n }, (_, i) => items[Math.floor((i * items.length) / n)]);
}

export async function compareReal(options: RealOptions): Promise<string> {
  const hits: Hit[] = [];
  for (const project of options.projects) {
    if (!existsSync(join(options.corpus, project))) throw new Error(`${join(options.corpus, project)} is missing: run bun bench/corpus.ts first`);
    hits.push(...(await safemigrateHits(options.corpus, project)), ...(await squawkHits(options, project)));
  }
  const labels = readLabels(options.labels);
  const rules = new Map<string, Hit[]>();
  for (const h of hits) {
    const k = `${h.tool}\t${h.rule}`;
    rules.set(k, [...(rules.get(k) ?? []), h]);
  }
  const sampled: Hit[] = [];
  for (const list of rules.values()) {
    if (groupOf(options, list[0]) !== "hazard") continue;
    for (const project of options.projects) {
      const inProject = list.filter((h) => h.project === project).sort((a, b) => a.migration.localeCompare(b.migration) || a.line - b.line);
      sampled.push(...evenly(inProject, options.sample));
    }
  }
  if (options.review === true) {
    const lines: string[] = [];
    for (const h of sampled.filter((s) => !labels.has(keyOf(s)))) {
      const text = readFileSync(h.file, "utf8").split("\n");
      lines.push(`### ${keyOf(h)}\n${h.message}\n${text.slice(Math.max(0, h.line - 4), h.line + 3).map((l, i) => `${Math.max(1, h.line - 3) + i}: ${l}`).join("\n")}`);
    }
    return lines.join("\n\n") || "every sampled finding is classified";
  }

  const out: string[] = [];
  const count = (tool: string, group: Group) => hits.filter((h) => h.tool === tool && groupOf(options, h) === group).length;
  out.push(`safemigrate --lint vs ${options.squawkVersion} on ${options.projects.map((p) => `${p} (${readMigrations(join(options.corpus, p)).length})`).join(", ")}`);
  out.push("");
  out.push("| tool | rule | hazard | " + options.projects.join(" | ") + " | findings | classified | TP | FP | precision |");
  out.push("| --- | --- | --- | " + options.projects.map(() => "---").join(" | ") + " | --- | --- | --- | --- | --- |");
  const totals = { safemigrate: { findings: 0, weighted: 0, tp: 0, classified: 0 }, squawk: { findings: 0, weighted: 0, tp: 0, classified: 0 } };
  const precisionOf = new Map<string, number>();
  const sortedRules = [...rules.entries()].filter(([, list]) => groupOf(options, list[0]) === "hazard").sort(([a], [b]) => a.localeCompare(b));
  for (const [k, list] of sortedRules) {
    const [tool, rule] = k.split("\t") as ["safemigrate" | "squawk", string];
    const mine = sampled.filter((h) => h.tool === tool && h.rule === rule);
    const verdicts = mine.map((h) => labels.get(keyOf(h))?.verdict).filter(Boolean);
    const tp = verdicts.filter((v) => v === "TP").length;
    const precision = verdicts.length ? tp / verdicts.length : NaN;
    precisionOf.set(k, precision);
    for (const project of options.projects) {
      const here = mine.filter((h) => h.project === project).map((h) => labels.get(keyOf(h))?.verdict).filter(Boolean);
      if (here.length) precisionOf.set(`${k}\t${project}`, here.filter((v) => v === "TP").length / here.length);
    }
    const t = totals[tool];
    t.findings += list.length;
    if (verdicts.length) t.weighted += list.length * precision;
    t.tp += tp;
    t.classified += verdicts.length;
    out.push(`| ${tool} | ${rule} | ${options.hazardsOf(tool, rule).join(", ")} | ${options.projects.map((p) => list.filter((h) => h.project === p).length).join(" | ")} | ${list.length} | ` +
      `${verdicts.length}/${mine.length} | ${tp} | ${verdicts.length - tp} | ${verdicts.length ? `${Math.round(precision * 100)}%` : "—"} |`);
  }
  out.push("");
  for (const tool of ["safemigrate", "squawk"] as const) {
    const t = totals[tool];
    out.push(`- **${tool}**: ${t.findings} hazard findings; precision **${Math.round((t.weighted / t.findings) * 100)}%** ` +
      `(per-rule precision weighted by findings; the sample alone: ${t.tp}/${t.classified} = ${Math.round((t.tp / t.classified) * 100)}%)` +
      (tool === "squawk" ? `; besides, ${count("squawk", "runner")} runner-level and ${count("squawk", "style")} style findings` : `; besides, ${count("safemigrate", "info")} information findings (dynamic-sql, phase-suggestion)`));
  }

  // Hazards caught, counted once per migration and kind of hazard (a tool that flags each of 170 COMMITs in one file
  // has caught one hazard), each weighted by the precision of its rule in its project: the estimated true ones.
  out.push("");
  out.push("| hazard | migrations flagged by safemigrate | by squawk | by both | est. true, safemigrate | est. true, squawk |");
  out.push("| --- | --- | --- | --- | --- | --- |");
  const flagged = new Map<string, { safemigrate: Map<string, number>; squawk: Map<string, number> }>();
  const hitsAt = new Map<string, Hit[]>();
  for (const h of hits) {
    if (groupOf(options, h) !== "hazard") continue;
    const p = precisionOf.get(`${h.tool}\t${h.rule}\t${h.project}`) ?? precisionOf.get(`${h.tool}\t${h.rule}`);
    const precision = p === undefined || Number.isNaN(p) ? 0 : p;
    const hazard = hazardFor(options, h);
    const entry = flagged.get(hazard) ?? { safemigrate: new Map(), squawk: new Map() };
    const where = `${h.project}/${h.migration}`;
    entry[h.tool].set(where, Math.max(entry[h.tool].get(where) ?? 0, precision));
    flagged.set(hazard, entry);
    hitsAt.set(`${hazard}\t${where}\t${h.tool}`, [...(hitsAt.get(`${hazard}\t${where}\t${h.tool}`) ?? []), h]);
  }
  // Where only one tool flags a migration for a hazard, every case is classified by hand (bench/real-disagreements.tsv):
  // those decide which tool catches more. Where both flag it, it counts for both.
  const disagreements = readDisagreements(join(options.labels, "..", "real-disagreements.tsv"));
  const unlabelled: string[] = [];
  const caught = { safemigrate: 0, squawk: 0 };
  const caughtRows: string[] = [];
  let trueS = 0;
  let trueQ = 0;
  for (const [hazard, e] of [...flagged.entries()].sort(([a], [b]) => a.localeCompare(b))) {
    const both = [...e.safemigrate.keys()].filter((k) => e.squawk.has(k)).length;
    const onlyTrue = { safemigrate: 0, squawk: 0 };
    for (const tool of ["safemigrate", "squawk"] as const) {
      const other = tool === "safemigrate" ? e.squawk : e.safemigrate;
      for (const where of e[tool].keys()) {
        if (other.has(where)) continue;
        const key = `${hazard}\t${where}\t${tool}`;
        const verdict = disagreements.get(key);
        if (verdict === "TP") onlyTrue[tool]++;
        if (!verdict) {
          unlabelled.push(`### ${key}\n` + (hitsAt.get(key) ?? []).map((h) => {
            const line = readFileSync(h.file, "utf8").split("\n")[h.line - 1]?.trim().slice(0, 160);
            return `${h.rule} ${h.line}: ${line}\n    ${h.message.slice(0, 160)}`;
          }).join("\n"));
        }
      }
    }
    caught.safemigrate += both + onlyTrue.safemigrate;
    caught.squawk += both + onlyTrue.squawk;
    caughtRows.push(`| ${hazard} | ${both} | ${onlyTrue.safemigrate} of ${e.safemigrate.size - both} | ${onlyTrue.squawk} of ${e.squawk.size - both} | ${both + onlyTrue.safemigrate} | ${both + onlyTrue.squawk} |`);
    const estS = [...e.safemigrate.values()].reduce((a, b) => a + b, 0);
    const estQ = [...e.squawk.values()].reduce((a, b) => a + b, 0);
    trueS += estS;
    trueQ += estQ;
    if (process.env.SHOW_ONLY) {
      for (const tool of ["safemigrate", "squawk"] as const) {
        const other = tool === "safemigrate" ? e.squawk : e.safemigrate;
        for (const where of e[tool].keys()) if (!other.has(where) && hazard === process.env.SHOW_ONLY) console.error(`only ${tool}: ${hazard} ${where}`);
      }
    }
    out.push(`| ${hazard} | ${e.safemigrate.size} | ${e.squawk.size} | ${both} | ${Math.round(estS)} | ${Math.round(estQ)} |`);
  }
  if (options.review === "disagreements") return unlabelled.join("\n\n") || "every disagreement is classified";
  out.push("");
  out.push("Hazards caught (a migration with a kind of hazard; where only one tool flags it, classified by hand):");
  out.push("");
  out.push("| hazard | flagged by both | only safemigrate: true of flagged | only squawk: true of flagged | caught by safemigrate | caught by squawk |");
  out.push("| --- | --- | --- | --- | --- | --- |");
  out.push(...caughtRows);
  out.push(`| **all** | | | | **${caught.safemigrate}** | **${caught.squawk}** |` + (unlabelled.length ? ` (${unlabelled.length} disagreements not classified yet)` : ""));
  out.push("");
  out.push("Estimated from the per-rule precisions instead (every flagged migration weighted by its rule's precision in its project):");
  out.push("");
  out.push(`| **all** | | | | **${Math.round(trueS)}** | **${Math.round(trueQ)}** |`);
  out.push("");
  out.push(`Sample: up to ${options.sample} findings per tool, rule and project; labels in ${relative(process.cwd(), options.labels)}.`);
  return out.join("\n");
}

function readDisagreements(path: string): Map<string, "TP" | "FP"> {
  const labels = new Map<string, "TP" | "FP">();
  if (!existsSync(path)) return labels;
  for (const line of readFileSync(path, "utf8").split("\n")) {
    if (!line.trim() || line.startsWith("#")) continue;
    const [hazard, where, tool, verdict] = line.split("\t");
    if (verdict !== "TP" && verdict !== "FP") throw new Error(`${path}: "${line}": the verdict must be TP or FP`);
    labels.set(`${hazard}\t${where}\t${tool}`, verdict);
  }
  return labels;
}

export const realLabelsPath = (dir: string) => join(dir, "real-labels.tsv");
export const projectsIn = (corpus: string, wanted: string | null) =>
  (wanted ? wanted.split(",") : ["lemmy", "crates.io", "sourcegraph"]).filter((p) => basename(p) === p);
