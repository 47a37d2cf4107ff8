#!/usr/bin/env bun
/**
 * Compares safemigrate's `--lint` with squawk (https://squawkhq.com), the
 * PostgreSQL migration linter, on the cases in bench/lint-corpus/.
 *
 *   bun bench/compare-squawk.ts [--corpus bench/lint-corpus] [--json] [--no-assume-in-transaction]
 *   bun bench/compare-squawk.ts --real [--corpus bench/.corpus] [--projects lemmy,crates.io,sourcegraph] [--sample 3] [--review]
 *     (the real histories from bench/corpus.ts; see bench/compare-squawk-real.ts)
 *
 * squawk is found through $SQUAWK (a path to the binary) or on PATH. It is not
 * a dependency of safemigrate; install it outside the project, e.g.
 *   npm i --prefix /tmp/squawk squawk-cli && SQUAWK=/tmp/squawk/node_modules/.bin/squawk bun bench/compare-squawk.ts
 *
 * A case is one migration file, or a directory of migrations run together (so
 * what an earlier one proves, e.g. a validated CHECK, counts for the next).
 * Each case says in its leading comments what it does and what is actually
 * wrong with it, as hazard tags (`none` for a near miss that is safe):
 *
 *   -- @what: CREATE INDEX on an existing table, without CONCURRENTLY
 *   -- @hazard: index-lock
 *   -- @why: blocks every write to orders until the index is built
 *   -- safe: before_deploy
 *
 * Both tools' rules are mapped to the same hazard tags (RULE_HAZARDS below). A
 * tool "catches" a hazard when one of its findings maps to that tag; a finding
 * that maps to no hazard of the case is a false positive.
 *
 * How each tool is run, per case:
 *   safemigrate  `bun safemigrate.ts --lint --dir <copy of the case> --format json`
 *                (a fresh directory per case, so no state leaks between cases).
 *   squawk       `squawk --reporter json [--assume-in-transaction] <file>` on each
 *                file's up section only (the down section is blanked, line numbers
 *                kept), with --assume-in-transaction exactly when safemigrate runs
 *                that migration in a transaction (no "-- transaction: false").
 *
 * squawk's require-lock-timeout, require-statement-timeout and
 * prefer-robust-stmts fire on almost any DDL; they are about how a migration is
 * run, which safemigrate's runner handles itself (lock_timeout 5s with retries,
 * --statement-timeout, a transaction per migration). They are shown in their
 * own column and kept out of the verdicts.
 */
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, relative, resolve } from "node:path";
import { parseMigration } from "../safemigrate.ts";

const REPO = resolve(import.meta.dir, "..");
const SAFEMIGRATE = join(REPO, "safemigrate.ts");

// ---- options -----------------------------------------------------------------

const argv = process.argv.slice(2);
const flag = (name: string) => argv.includes(name);
const value = (name: string, fallback: string) => {
  const i = argv.indexOf(name);
  return i >= 0 && argv[i + 1] ? argv[i + 1] : fallback;
};
if (flag("--help") || flag("-h")) {
  console.log(readFileSync(import.meta.path, "utf8").split("*/")[0].replace(/^#!.*\n\/\*\*\n/, "").replace(/^ \* ?/gm, ""));
  process.exit(0);
}
const corpus = resolve(value("--corpus", join(import.meta.dir, "lint-corpus")));
const assumeInTransaction = !flag("--no-assume-in-transaction");
const asJson = flag("--json");

// ---- squawk ------------------------------------------------------------------

function findSquawk(): string | null {
  const fromEnv = process.env.SQUAWK;
  if (fromEnv) return fromEnv;
  return Bun.which("squawk");
}

const squawk = findSquawk();
if (!squawk) {
  console.error(
    [
      "compare-squawk: squawk not found (set SQUAWK=/path/to/squawk or put it on PATH).",
      "Install it outside the project, for example:",
      "  npm i --prefix /tmp/squawk squawk-cli",
      "  SQUAWK=/tmp/squawk/node_modules/.bin/squawk bun bench/compare-squawk.ts",
      "or globally: npm i -g squawk-cli",
      "(the npm package ships the binary in an optional per-platform package, @squawk-cli/linux-x64 etc.)",
    ].join("\n"),
  );
  process.exit(3);
}
const versionRun = Bun.spawnSync([squawk, "--version"]);
if (versionRun.exitCode !== 0) {
  console.error(`compare-squawk: "${squawk} --version" failed: ${versionRun.stderr.toString().trim()}`);
  process.exit(3);
}
const squawkVersion = versionRun.stdout.toString().trim();

// ---- rules -> hazard tags ------------------------------------------------------

/** Which hazard(s) a finding of each rule is about. Rules not listed map to their own name. */
const RULE_HAZARDS: Record<string, string[]> = {
  // safemigrate: phase rules
  "safemigrate:drop-table": ["drop-table", "drop-schema"],
  "safemigrate:drop-column": ["drop-column"],
  "safemigrate:drop-view": ["drop-view"],
  "safemigrate:drop-function": ["drop-function"],
  "safemigrate:rename-table": ["rename-table", "rename-view"],
  "safemigrate:rename-column": ["rename-column"],
  "safemigrate:change-column-type": ["type-change-phase"],
  "safemigrate:add-not-null": ["not-null-phase"],
  "safemigrate:not-null-column-without-default": ["required-column"],
  "safemigrate:drop-default": ["drop-default"],
  // safemigrate: lock rules
  "safemigrate:index-not-concurrently": ["index-lock", "pk-lock", "unique-lock"],
  "safemigrate:concurrently-in-transaction": ["needs-no-tx"],
  "safemigrate:foreign-key-not-valid": ["validation-lock"],
  "safemigrate:check-not-valid": ["validation-lock"],
  "safemigrate:set-not-null-scan": ["not-null-scan"],
  "safemigrate:volatile-default": ["add-column-rewrite"],
  "safemigrate:type-change-rewrite": ["type-change-rewrite"],
  "safemigrate:vacuum-full": ["rewrite-maint"],
  "safemigrate:cluster": ["rewrite-maint"],
  "safemigrate:reindex-not-concurrently": ["reindex-lock"],
  "safemigrate:lock-table": ["explicit-lock"],
  "safemigrate:transaction-control": ["tx-control"],
  "safemigrate:drop-index-not-concurrently": ["drop-index-lock"],
  "safemigrate:backfill-under-lock": ["backfill-lock"],
  "safemigrate:syntax-error": ["syntax-error"],
  // squawk
  "squawk:require-concurrent-index-creation": ["index-lock"],
  "squawk:require-concurrent-index-deletion": ["drop-index-lock"],
  "squawk:ban-concurrent-index-creation-in-transaction": ["needs-no-tx"],
  "squawk:constraint-missing-not-valid": ["validation-lock", "pk-lock", "unique-lock", "not-null-scan"],
  "squawk:adding-foreign-key-constraint": ["validation-lock"],
  "squawk:adding-not-nullable-field": ["not-null-scan"],
  "squawk:adding-field-with-default": ["add-column-rewrite"],
  "squawk:changing-column-type": ["type-change-rewrite"],
  "squawk:adding-serial-primary-key-field": ["pk-lock"],
  "squawk:disallowed-unique-constraint": ["unique-lock"],
  "squawk:renaming-column": ["rename-column"],
  "squawk:renaming-table": ["rename-table", "rename-view"],
  "squawk:ban-drop-column": ["drop-column"],
  "squawk:ban-drop-table": ["drop-table"],
  "squawk:ban-drop-database": ["drop-database"],
  "squawk:ban-drop-not-null": ["drop-not-null"],
  "squawk:adding-required-field": ["required-column"],
  "squawk:transaction-nesting": ["tx-control"],
  "squawk:ban-uncommitted-transaction": ["tx-control"],
  "squawk:require-concurrent-reindex": ["reindex-lock"],
  "squawk:prefer-repack": ["rewrite-maint"],
  "squawk:require-concurrent-partition-detach": ["detach-lock"],
  "squawk:ban-truncate-cascade": ["truncate-cascade"],
  "squawk:ban-alter-domain-with-add-constraint": ["domain-constraint"],
  "squawk:ban-create-domain-with-constraint": ["domain-constraint"],
  "squawk:identifier-too-long": ["identifier-too-long"],
  "squawk:prefer-text-field": ["style-varchar"],
  "squawk:prefer-bigint-over-int": ["style-int"],
  "squawk:prefer-bigint-over-smallint": ["style-int"],
  "squawk:prefer-big-int": ["style-int"],
  "squawk:prefer-identity": ["style-serial"],
  "squawk:prefer-timestamp-tz": ["style-timestamp"],
  "squawk:prefer-timestamptz": ["style-timestamp"],
  "squawk:ban-char-field": ["style-char"],
};
const hazardsOf = (tool: Tool, rule: string) => RULE_HAZARDS[`${tool}:${rule}`] ?? [rule];

/** squawk rules about how the migration is run, not what it does (see the header). */
const RUNNER_LEVEL: Record<string, string> = {
  "require-lock-timeout": "LT",
  "require-statement-timeout": "ST",
  "require-timeout-settings": "TS",
  "prefer-robust-stmts": "RS",
};

// ---- the corpus ----------------------------------------------------------------

type Tool = "safemigrate" | "squawk";

interface Case {
  id: string;
  path: string;
  files: string[];
  what: string;
  why: string;
  hazards: string[];
  /** "before_deploy", "after_deploy, no tx", ... of the case's (first) migration. */
  setting: string;
}

function readCase(path: string): Case {
  const files = statSync(path).isDirectory()
    ? readdirSync(path).filter((f) => f.endsWith(".sql")).sort().map((f) => join(path, f))
    : [path];
  if (files.length === 0) throw new Error(`${path}: no .sql files`);
  const text = readFileSync(files[0], "utf8");
  const meta = (key: string) =>
    [...text.matchAll(new RegExp(`^--\\s*@${key}:\\s*(.*)$`, "gm"))].map((m) => m[1].trim()).join(" ");
  const hazard = meta("hazard");
  if (!hazard) throw new Error(`${files[0]}: no "-- @hazard:" line (use "none" for a near miss)`);
  const settings = files.map((f) => {
    const m = parseMigration(basename(f, ".sql"), f, readFileSync(f, "utf8"));
    return m.safe + (m.up.transaction ? "" : ", no tx");
  });
  return {
    id: basename(path, ".sql"),
    path,
    files,
    what: meta("what"),
    why: meta("why"),
    hazards: hazard === "none" ? [] : hazard.split(/[\s,]+/).filter(Boolean),
    setting: [...new Set(settings)].join(" / "),
  };
}

// ---- running the tools ---------------------------------------------------------

interface ToolResult {
  rules: string[];
  /** rule @ file:line, for the JSON output. */
  findings: { rule: string; file: string; line: number; message: string }[];
  error: string | null;
}

async function run(cmd: string[], cwd = REPO): Promise<{ code: number; stdout: string; stderr: string }> {
  const proc = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe", cwd, env: { ...process.env, NO_COLOR: "1" } });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, stdout, stderr };
}

async function runSafemigrate(c: Case): Promise<ToolResult> {
  const dir = mkdtempSync(join(tmpdir(), "safemigrate-cmp-"));
  try {
    for (const f of c.files) cpSync(f, join(dir, basename(f)));
    const { stdout, stderr } = await run([process.execPath, SAFEMIGRATE, "--lint", "--dir", dir, "--format", "json"]);
    let out: { findings?: { rule: string; file: string; line: number; message: string; waived: string | null }[]; error?: string };
    try {
      out = JSON.parse(stdout.trim().split("\n").pop() ?? "");
    } catch {
      return { rules: [], findings: [], error: (stderr || stdout).trim() || "no output" };
    }
    if (out.error) return { rules: [], findings: [], error: out.error };
    const open = (out.findings ?? []).filter((f) => f.waived === null);
    return {
      rules: [...new Set(open.map((f) => f.rule))],
      findings: open.map((f) => ({ rule: f.rule, file: basename(f.file), line: f.line, message: f.message })),
      error: null,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** squawk sees only what safemigrate would run: the up section, at its own line numbers. */
async function runSquawk(c: Case, runnerLevel: Set<string>): Promise<ToolResult> {
  const dir = mkdtempSync(join(tmpdir(), "squawk-cmp-"));
  const result: ToolResult = { rules: [], findings: [], error: null };
  try {
    for (const f of c.files) {
      const m = parseMigration(basename(f, ".sql"), f, readFileSync(f, "utf8"));
      const target = join(dir, basename(f));
      writeFileSync(target, "\n".repeat(m.up.line - 1) + m.up.sql + "\n");
      const cmd = [squawk!, "--reporter", "json", ...(assumeInTransaction && m.up.transaction ? ["--assume-in-transaction"] : []), target];
      // Run where no .squawk.toml is found, so squawk's defaults apply.
      const { code, stdout, stderr } = await run(cmd, dir);
      let diagnostics: { rule_name: string; line: number; message: string }[];
      try {
        diagnostics = JSON.parse(stdout || "[]");
      } catch {
        result.error = `squawk exited ${code}: ${(stderr || stdout).trim()}`;
        continue;
      }
      for (const d of diagnostics) {
        if (d.rule_name in RUNNER_LEVEL) {
          runnerLevel.add(d.rule_name);
          continue;
        }
        result.findings.push({ rule: d.rule_name, file: basename(f), line: d.line + 1, message: d.message });
      }
    }
    result.rules = [...new Set(result.findings.map((f) => f.rule))];
    return result;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---- verdicts ------------------------------------------------------------------

interface Row {
  c: Case;
  safemigrate: ToolResult;
  squawk: ToolResult;
  runnerLevel: string[];
  /** hazard -> which tools caught it */
  caught: Record<string, Tool[]>;
  falsePositives: string[];
  verdict: string;
}

function judge(c: Case, s: ToolResult, q: ToolResult, runnerLevel: string[]): Row {
  const caught: Record<string, Tool[]> = {};
  for (const h of c.hazards) {
    caught[h] = [];
    if (s.rules.some((r) => hazardsOf("safemigrate", r).includes(h))) caught[h].push("safemigrate");
    if (q.rules.some((r) => hazardsOf("squawk", r).includes(h))) caught[h].push("squawk");
  }
  const offTopic = (tool: Tool, rules: string[]) =>
    rules.filter((r) => !hazardsOf(tool, r).some((h) => c.hazards.includes(h))).map((r) => `${tool}:${r}`);
  const falsePositives = [...offTopic("safemigrate", s.rules), ...offTopic("squawk", q.rules)];
  const word = (tools: Tool[]) =>
    tools.length === 2 ? "both" : tools.length === 0 ? "missed by both" : `only ${tools[0]}`;
  const parts: string[] = [];
  if (s.error) parts.push(`safemigrate error`);
  if (q.error) parts.push(`squawk error`);
  if (c.hazards.length === 0) {
    if (falsePositives.length === 0) parts.push("neither (correct)");
  } else if (c.hazards.length === 1) {
    parts.push(word(caught[c.hazards[0]]));
  } else {
    parts.push(c.hazards.map((h) => `${h}: ${word(caught[h])}`).join("; "));
  }
  if (falsePositives.length > 0) parts.push(`false positive of ${falsePositives.join(", ")}`);
  return { c, safemigrate: s, squawk: q, runnerLevel, caught, falsePositives, verdict: parts.join("; ") };
}

// ---- the real corpus (--real) -----------------------------------------------------

if (flag("--real")) {
  const { compareReal, projectsIn, realLabelsPath } = await import("./compare-squawk-real.ts");
  const realCorpus = resolve(value("--corpus", join(import.meta.dir, ".corpus")));
  console.log(await compareReal({
    squawk, squawkVersion, corpus: realCorpus, projects: projectsIn(realCorpus, argv.includes("--projects") ? value("--projects", "") : null),
    sample: Number(value("--sample", "3")), labels: resolve(value("--labels", realLabelsPath(import.meta.dir))), review: flag("--disagreements") ? "disagreements" : flag("--review"),
    hazardsOf, runnerLevel: RUNNER_LEVEL,
  }));
  process.exit(0);
}

// ---- main ----------------------------------------------------------------------

const entries = readdirSync(corpus)
  .filter((name) => /^\d/.test(name) && (name.endsWith(".sql") || statSync(join(corpus, name)).isDirectory()))
  .sort();
const cases = entries.map((name) => readCase(join(corpus, name)));

const rows: Row[] = new Array(cases.length);
let next = 0;
await Promise.all(
  Array.from({ length: 4 }, async () => {
    while (next < cases.length) {
      const i = next++;
      const c = cases[i];
      const runnerLevel = new Set<string>();
      const [s, q] = await Promise.all([runSafemigrate(c), runSquawk(c, runnerLevel)]);
      rows[i] = judge(c, s, q, [...runnerLevel].map((r) => RUNNER_LEVEL[r]).sort());
    }
  }),
);

const command = `bun ${relative(REPO, import.meta.path)}` + (assumeInTransaction ? "" : " --no-assume-in-transaction");

if (asJson) {
  console.log(JSON.stringify({ squawk: squawkVersion, command, corpus: relative(REPO, corpus), rows: rows.map((r) => ({
    case: r.c.id, what: r.c.what, setting: r.c.setting, hazards: r.c.hazards, why: r.c.why,
    safemigrate: r.safemigrate, squawk: r.squawk, squawkRunnerLevel: r.runnerLevel, caught: r.caught,
    falsePositives: r.falsePositives, verdict: r.verdict,
  })) }, null, 2));
  process.exit(rows.some((r) => r.safemigrate.error || r.squawk.error) ? 1 : 0);
}

const cell = (text: string) => text.replace(/\|/g, "\\|");
const rulesCell = (t: ToolResult) => (t.error ? `error: ${cell(t.error.split("\n")[0]).slice(0, 80)}` : t.rules.join(", ") || "—");

const out: string[] = [];
out.push(`safemigrate --lint vs ${squawkVersion}, ${cases.length} cases from ${relative(REPO, corpus)}/`);
out.push(`command: ${command}${process.env.SQUAWK ? ` (SQUAWK=${process.env.SQUAWK})` : ""}`);
out.push(`squawk flags: --reporter json${assumeInTransaction ? ", --assume-in-transaction for transactional migrations" : ""}; default rules, default --pg-version`);
out.push("");
out.push("| case | what it does | phase | hazard | safemigrate rule(s) | squawk rule(s) | squawk runner-level | verdict |");
out.push("| --- | --- | --- | --- | --- | --- | --- | --- |");
for (const r of rows) {
  out.push(`| ${r.c.id} | ${cell(r.c.what)} | ${r.c.setting} | ${r.c.hazards.join(", ") || "none"} | ${rulesCell(r.safemigrate)} | ${rulesCell(r.squawk)} | ${r.runnerLevel.join(" ") || "—"} | ${cell(r.verdict)} |`);
}
out.push("");
out.push("squawk runner-level rules (kept out of the verdicts; safemigrate's runner covers them): " +
  Object.entries(RUNNER_LEVEL).map(([rule, short]) => `${short} = ${rule}`).join(", ") + ".");

// Per-rule summary: where each rule fired, on-topic (true positive) or not (false positive).
out.push("");
out.push("### Per rule");
out.push("");
out.push("| tool | rule | hazard(s) | fired | true positives | false positives |");
out.push("| --- | --- | --- | --- | --- | --- |");
const perRule = new Map<string, { tool: Tool; rule: string; tp: string[]; fp: string[] }>();
for (const r of rows) {
  for (const tool of ["safemigrate", "squawk"] as Tool[]) {
    for (const rule of r[tool].rules) {
      const key = `${tool}:${rule}`;
      const entry = perRule.get(key) ?? { tool, rule, tp: [], fp: [] };
      (hazardsOf(tool, rule).some((h) => r.c.hazards.includes(h)) ? entry.tp : entry.fp).push(r.c.id.slice(0, 4));
      perRule.set(key, entry);
    }
  }
}
const { RULES } = await import("../safemigrate.ts");
for (const [rule, def] of Object.entries(RULES)) {
  if (def.kind !== "waiver" && !perRule.has(`safemigrate:${rule}`)) perRule.set(`safemigrate:${rule}`, { tool: "safemigrate", rule, tp: [], fp: [] });
}
for (const e of [...perRule.values()].sort((a, b) => a.tool.localeCompare(b.tool) || a.rule.localeCompare(b.rule))) {
  out.push(`| ${e.tool} | ${e.rule} | ${hazardsOf(e.tool, e.rule).join(", ")} | ${e.tp.length + e.fp.length} | ${e.tp.join(" ") || "—"} | ${e.fp.join(" ") || "—"} |`);
}

// Per-hazard summary: which cases had it and who caught it.
out.push("");
out.push("### Per hazard");
out.push("");
out.push("| hazard | cases | caught by safemigrate | caught by squawk | missed by both |");
out.push("| --- | --- | --- | --- | --- |");
const hazards = [...new Set(rows.flatMap((r) => r.c.hazards))].sort();
for (const h of hazards) {
  const withIt = rows.filter((r) => r.c.hazards.includes(h));
  const ids = (pred: (r: Row) => boolean) => withIt.filter(pred).map((r) => r.c.id.slice(0, 4));
  const s = ids((r) => r.caught[h].includes("safemigrate"));
  const q = ids((r) => r.caught[h].includes("squawk"));
  const none = ids((r) => r.caught[h].length === 0);
  out.push(`| ${h} | ${withIt.length} | ${s.length}/${withIt.length} ${s.join(" ")} | ${q.length}/${withIt.length} ${q.join(" ")} | ${none.join(" ") || "—"} |`);
}

// Totals.
const hazardCases = rows.filter((r) => r.c.hazards.length > 0);
const nearMisses = rows.filter((r) => r.c.hazards.length === 0);
const pairs = hazardCases.flatMap((r) => r.c.hazards.map((h) => ({ r, h })));
const styleFree = pairs.filter((p) => !p.h.startsWith("style-"));
const count = (list: typeof pairs, tool: Tool) => list.filter((p) => p.r.caught[p.h].includes(tool)).length;
const fpRows = (tool: Tool) => rows.filter((r) => r.falsePositives.some((f) => f.startsWith(`${tool}:`))).map((r) => r.c.id.slice(0, 4));
out.push("");
out.push("### Totals");
out.push("");
out.push(`- ${rows.length} cases: ${hazardCases.length} with a hazard (${pairs.length} case-hazard pairs, ${styleFree.length} of them not style), ${nearMisses.length} near misses that are safe.`);
out.push(`- hazards caught (style excluded): safemigrate ${count(styleFree, "safemigrate")}/${styleFree.length}, squawk ${count(styleFree, "squawk")}/${styleFree.length}; style hazards: safemigrate ${count(pairs, "safemigrate") - count(styleFree, "safemigrate")}/${pairs.length - styleFree.length}, squawk ${count(pairs, "squawk") - count(styleFree, "squawk")}/${pairs.length - styleFree.length}.`);
out.push(`- cases with a false positive: safemigrate ${fpRows("safemigrate").length} (${fpRows("safemigrate").join(" ") || "none"}), squawk ${fpRows("squawk").length} (${fpRows("squawk").join(" ") || "none"}).`);
const errors = rows.filter((r) => r.safemigrate.error || r.squawk.error);
if (errors.length > 0) out.push(`- tool errors in: ${errors.map((r) => r.c.id).join(", ")}`);

console.log(out.join("\n"));
process.exit(errors.length > 0 ? 1 : 0);
