#!/usr/bin/env bun
/**
 * Regenerates the real-world corpus: the migration histories of public
 * projects, converted to safemigrate migration files, in bench/.corpus/<project>/
 * (gitignored: the projects' SQL is never committed).
 *
 *   bun bench/corpus.ts [--mirror /work/.mirror] [--out bench/.corpus] [--only lemmy,crates.io,sourcegraph]
 *
 * The sources are bare git mirrors fetched beforehand (the search tool's
 * `fetch` verb puts them in /work/.mirror/<owner>+<name>/repo); a plain
 * `git clone --mirror` of the same repository works too:
 *
 *   project      repository                 ref       tree                   layout
 *   lemmy        LemmyNet/lemmy             0.19.20   migrations/            diesel, 233 migrations
 *   crates.io    rust-lang/crates.io        HEAD      migrations/            diesel, 285
 *   sourcegraph  sourcegraph/artifacts      HEAD      migrations/frontend/   sourcegraph migrator (a DAG), 340
 *
 * (sourcegraph/sourcegraph itself is too big to mirror here; sourcegraph/artifacts
 * publishes the same `migrations/` tree for every release.)
 *
 * Conversion, one file per migration, `<id>.sql` where id is the directory name
 * (for diesel with the dashes taken out of the version, `2017-09-23-182408_x` ->
 * `20170923182408_x`: diesel orders by that number, and crates.io mixes both spellings):
 *
 *   -- <project> <ref> <directory>        provenance, an ordinary comment
 *   -- safe: before_deploy | after_deploy  see below
 *   -- depends: <ids>                      sourcegraph only: metadata.yaml `parents` (`[]` for a root)
 *   -- transaction: false                  diesel metadata.toml `run_in_transaction = false`,
 *                                          sourcegraph `createIndexConcurrently: true`
 *   <up.sql>
 *   -- migrate:down
 *   -- transaction: false                  (same condition: both tools apply it to the down too)
 *   <down.sql>
 *
 * The phase follows the README (expand before the deploy, contract after): a
 * migration whose up SQL drops or renames something (table, column, view,
 * function, type, schema), changes a column's type, sets NOT NULL or drops a
 * default is `after_deploy`; every other one only expands and is
 * `before_deploy`. This is a keyword test on the SQL with comments stripped,
 * deliberately independent of safemigrate's analysis, so that changing the
 * analysis never changes the corpus it is measured on.
 *
 * Every converted file is read back with safemigrate's own parseMigration; a
 * file it rejects is reported (exit 1).
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { parseMigration } from "../safemigrate.ts";

interface Project {
  name: string;
  repo: string;
  ref: string;
  tree: string;
  layout: "diesel" | "sourcegraph";
}

export const PROJECTS: readonly Project[] = [
  { name: "lemmy", repo: "LemmyNet+lemmy", ref: "0.19.20", tree: "migrations", layout: "diesel" },
  { name: "crates.io", repo: "rust-lang+crates.io", ref: "HEAD", tree: "migrations", layout: "diesel" },
  { name: "sourcegraph", repo: "sourcegraph+artifacts", ref: "HEAD", tree: "migrations/frontend", layout: "sourcegraph" },
];

/** One migration as the source project stores it. */
interface SourceMigration {
  id: string;
  /** The directory it came from. */
  dir: string;
  up: string;
  down: string | null;
  transaction: boolean;
  /** null: the default (previous id). */
  depends: string[] | null;
}

// ---- reading a bare git mirror ------------------------------------------------

function git(gitDir: string, ...args: string[]): string {
  return execFileSync("git", ["--git-dir", gitDir, ...args], { encoding: "utf8", maxBuffer: 256 * 1024 * 1024 });
}

/** path -> blob text for every file under `tree` at `ref`, read in one `git cat-file --batch`. */
function readTree(gitDir: string, ref: string, tree: string): Map<string, string> {
  const listing = git(gitDir, "ls-tree", "-r", ref, "--", `${tree}/`).trim().split("\n").filter(Boolean);
  const entries = listing.map((line) => {
    const [meta, path] = line.split("\t");
    return { sha: meta.split(" ")[2], path: path.slice(tree.length + 1) };
  });
  const out = execFileSync("git", ["--git-dir", gitDir, "cat-file", "--batch"], {
    input: entries.map((e) => e.sha).join("\n") + "\n",
    maxBuffer: 1024 * 1024 * 1024,
  });
  const files = new Map<string, string>();
  let at = 0;
  for (const entry of entries) {
    const headerEnd = out.indexOf(10, at);
    const size = Number(out.subarray(at, headerEnd).toString().split(" ")[2]);
    files.set(entry.path, out.subarray(headerEnd + 1, headerEnd + 1 + size).toString("utf8"));
    at = headerEnd + 1 + size + 1;
  }
  return files;
}

/** Directory names directly under the tree that hold an up.sql. */
function migrationDirs(files: Map<string, string>): string[] {
  return [...new Set([...files.keys()].filter((p) => /^[^/]+\/up\.sql$/.test(p)).map((p) => p.split("/")[0]))].sort();
}

// ---- layouts ------------------------------------------------------------------

/**
 * diesel orders migrations by their version with the dashes removed
 * (`2017-09-23-182408` is 20170923182408), so crates.io's mix of both spellings
 * sorts by date; the id drops the dashes too, so byte order is diesel's order.
 */
export const dieselId = (dir: string): string => dir.replace(/^[\d-]+(?=_)/, (version) => version.replaceAll("-", ""));

function readDiesel(files: Map<string, string>): SourceMigration[] {
  return migrationDirs(files).map((dir) => ({
    id: dieselId(dir),
    dir,
    up: files.get(`${dir}/up.sql`)!,
    down: files.get(`${dir}/down.sql`) ?? null,
    transaction: !/run_in_transaction\s*=\s*false/.test(files.get(`${dir}/metadata.toml`) ?? ""),
    depends: null,
  }));
}

/** `parents: [a, b]`, `parent: a`, or a block list of `- a` lines. */
export function sourcegraphParents(yaml: string): string[] {
  const lines = yaml.split("\n");
  const at = lines.findIndex((l) => /^parents?\s*:/.test(l));
  if (at < 0) return [];
  const inline = lines[at].replace(/^parents?\s*:/, "").trim();
  if (inline) return inline.replace(/^\[|\]$/g, "").split(",").map((s) => s.trim()).filter(Boolean);
  const list: string[] = [];
  for (const line of lines.slice(at + 1)) {
    const item = /^\s*-\s*(\S+)/.exec(line);
    if (!item) break;
    list.push(item[1]);
  }
  return list;
}

function readSourcegraph(files: Map<string, string>): SourceMigration[] {
  const dirs = migrationDirs(files);
  const byNumber = new Map(dirs.map((dir) => [dir.split("_")[0], dir]));
  return dirs.map((dir) => {
    const meta = files.get(`${dir}/metadata.yaml`) ?? "";
    const depends = sourcegraphParents(meta).map((n) => {
      const parent = byNumber.get(n);
      if (!parent) throw new Error(`sourcegraph ${dir}: parent ${n} is not in the tree`);
      return parent;
    });
    return {
      id: dir,
      dir,
      up: files.get(`${dir}/up.sql`)!,
      down: files.get(`${dir}/down.sql`) ?? null,
      transaction: !/createIndexConcurrently\s*:\s*true/.test(meta),
      depends,
    };
  });
}

// ---- conversion ---------------------------------------------------------------

const CONTRACT = [
  /\bdrop\s+(table|column|view|materialized\s+view|function|procedure|type|domain|schema)\b/,
  /\brename\b/,
  /\balter\s+column\s+\S+\s+(set\s+data\s+)?type\b/,
  /\bset\s+not\s+null\b/,
  /\bdrop\s+default\b/,
];

function stripComments(sql: string): string {
  return sql.replace(/\/\*[\s\S]*?\*\//g, " ").replace(/--[^\n]*/g, " ").toLowerCase();
}

/** The README's recommendation: contract after the deploy, expand before it. */
export function phaseOf(upSql: string): "before_deploy" | "after_deploy" {
  const sql = stripComments(upSql);
  return CONTRACT.some((pattern) => pattern.test(sql)) ? "after_deploy" : "before_deploy";
}

export function convert(project: Project, m: SourceMigration): string {
  const head = [
    `-- ${project.repo.replace("+", "/")} ${project.ref} ${project.tree}/${m.dir}`,
    `-- safe: ${phaseOf(m.up)}`,
    ...(m.depends ? [`-- depends: ${m.depends.length ? m.depends.join(", ") : "[]"}`] : []),
    ...(m.transaction ? [] : ["-- transaction: false"]),
    "",
  ];
  const down = m.down === null ? [] : ["", "-- migrate:down", ...(m.transaction ? [] : ["-- transaction: false"]), m.down.trimEnd()];
  return [...head, m.up.trimEnd(), ...down, ""].join("\n");
}

// ---- main ---------------------------------------------------------------------

if (import.meta.main) {
  const argv = process.argv.slice(2);
  const value = (name: string, fallback: string) => {
    const i = argv.indexOf(name);
    return i >= 0 && argv[i + 1] ? argv[i + 1] : fallback;
  };
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(
      require("node:fs").readFileSync(import.meta.path, "utf8").split("*/")[0].replace(/^#!.*\n\/\*\*\n/, "").replace(/^ \* ?/gm, ""),
    );
    process.exit(0);
  }
  const mirror = resolve(value("--mirror", "/work/.mirror"));
  const out = resolve(value("--out", join(import.meta.dir, ".corpus")));
  const only = value("--only", PROJECTS.map((p) => p.name).join(",")).split(",");
  let failed = false;
  for (const project of PROJECTS.filter((p) => only.includes(p.name))) {
    const gitDir = join(mirror, project.repo, "repo");
    if (!existsSync(gitDir)) {
      console.error(`${project.name}: no mirror at ${gitDir} (fetch github:${project.repo.replace("+", "/")} first)`);
      failed = true;
      continue;
    }
    const files = readTree(gitDir, project.ref, project.tree);
    const migrations = project.layout === "diesel" ? readDiesel(files) : readSourcegraph(files);
    const dir = join(out, project.name);
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    const phases = { before_deploy: 0, after_deploy: 0 };
    let bytes = 0;
    for (const m of migrations) {
      const text = convert(project, m);
      const file = join(dir, `${m.id}.sql`);
      writeFileSync(file, text);
      bytes += text.length;
      try {
        phases[parseMigration(m.id, file, text).safe as keyof typeof phases]++;
      } catch (error) {
        console.error(`${project.name}: ${(error as Error).message}`);
        failed = true;
      }
    }
    const dag = migrations.filter((m) => (m.depends?.length ?? 1) > 1).length;
    console.log(
      `${project.name}: ${migrations.length} migrations (${phases.before_deploy} before_deploy, ${phases.after_deploy} after_deploy, ` +
        `${migrations.filter((m) => !m.transaction).length} transaction: false${dag ? `, ${dag} with several parents` : ""}, ` +
        `${Math.round(bytes / 1024)} KB) -> ${relative(process.cwd(), dir) || "."}`,
    );
  }
  process.exit(failed ? 1 : 0);
}
