#!/usr/bin/env bun
/**
 * safemigrate — deploy-safe PostgreSQL migrations from plain `.sql` files.
 *
 * Each migration says in its front-matter whether it is safe to run before the
 * new code is deployed (`-- safe: before_deploy`), only after it
 * (`after_deploy`, the default) or at any time (`always`). The release step
 * runs `safemigrate --pre`, which applies exactly the migrations that are safe
 * before the deploy; `safemigrate --all` applies the rest afterwards.
 *
 * The file reads top-down in the order data flows:
 *   1. types and errors
 *   2. reading migration files and their front-matter
 *   3. the dependency graph and the consistency checks
 *   4. the planner (pure: files + history + clock + mode -> plan), rollback and sync plans
 *   5. deploy-safety analysis (the parse tree of each migration against its phase)
 *   6. database adapters (postgres.js and PGlite behind one interface)
 *   7. executing a plan (the lease and its fence, history, transactions, markers for
 *      interrupted `transaction: false` migrations, timeouts and retries, rehearsal)
 *   8. output (human, JSON, GitHub annotations)
 *   9. the command line (one database, or a fleet of them)
 *
 * Runs under Bun (`bun safemigrate.ts`), Deno (`deno run -A safemigrate.ts`) and
 * Node 22.18+ (`node safemigrate.ts`, which strips types only: so no enums,
 * namespaces or constructor parameter properties in this file).
 */
import { type Dirent, existsSync, fstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, statSync, type Stats, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import process from "node:process";
// The output's edge (section 9): synchronous writes that survive pipes, and finding the main module on every runtime.
import { realpathSync, writeSync } from "node:fs";
import mri from "mri";
// node:child_process, node:tty, node:url and node:os are loaded where they are used (see `builtin`): on Bun
// each is JavaScript evaluated on import, and node:tty or node:child_process alone (they pull in the stream
// modules) cost --version more than everything else it does.
// Types only: postgres.js is imported when a postgres:// URL is opened, so
// --version, --help, --lint and --check without a database never load it.
import type postgres from "postgres";

export const VERSION = "0.1.0";

/** A Node built-in module, loaded on first use: `builtin("node:tty")`. */
const builtin = <T extends keyof BuiltinModules>(name: T): BuiltinModules[T] =>
  (process as unknown as { getBuiltinModule(id: string): unknown }).getBuiltinModule(name) as BuiltinModules[T];
interface BuiltinModules {
  "node:child_process": typeof import("node:child_process");
  "node:crypto": typeof import("node:crypto");
  "node:os": typeof import("node:os");
  "node:tty": typeof import("node:tty");
  "node:url": typeof import("node:url");
  "node:v8": typeof import("node:v8");
}

/**
 * Whether WebAssembly stays at V8's baseline compiler under Node: set by the
 * command line (a program that imports safemigrate keeps its own V8 settings).
 * V8 recompiles the hot functions of libpg-query's parser and of PGlite's
 * PostgreSQL with its optimising compiler; in a run of seconds that costs more
 * than it saves, and memory peaks at about 0.6 GB for the parser and 1.1–1.4 GB
 * for PGlite. At the baseline tier the peaks are about 0.1 GB and 0.45 GB and
 * the runs are faster, long rehearsals included (README, "WebAssembly under
 * Node and Deno"). Deno takes the same flags only on its command line
 * (`--v8-flags`); Bun's JavaScriptCore has no such switch.
 */
let baselineWasmWanted = false; // set by the command line, cleared once the flags are set

/** Called before libpg-query or PGlite compiles its WebAssembly module; the flags apply to modules compiled after them. */
function beforeWebAssembly(): void {
  if (!baselineWasmWanted || "Bun" in globalThis || "Deno" in globalThis || !process.versions.v8) return;
  baselineWasmWanted = false;
  try {
    const v8 = builtin("node:v8");
    v8.setFlagsFromString("--no-wasm-tier-up");
    v8.setFlagsFromString("--no-wasm-dynamic-tiering");
  } catch { /* a runtime without them only keeps its default */ }
}

// ============================================================================
// 1. Types and errors
// ============================================================================

export type Safe = "before_deploy" | "after_deploy" | "always";
export const SAFE_VALUES: readonly Safe[] = ["before_deploy", "after_deploy", "always"];

/** strict: refuse when anything is blocked; nonstrict: skip it; disabled: --pre acts as --all. */
export type Mode = "strict" | "nonstrict" | "disabled";
export const MODES: readonly Mode[] = ["strict", "nonstrict", "disabled"];

/** Which command is running: the release step (`pre`) or after the deploy (`all`). */
export type Phase = "pre" | "all";

export const EXIT = { ok: 0, failed: 1, invalid: 2, blocked: 3 } as const;

/** The table safemigrate keeps its history in, in the current schema, unless --history-table names another. */
export const HISTORY_TABLE = "safemigrate_history";

/**
 * Where one migration set keeps its history: several services sharing a
 * database each name their own (`--history-table billing.migrations`). The
 * lease table that serialises runs sits beside it, so each set has its own lock.
 */
export interface HistoryTable {
  /** As the user wrote it, for messages. */
  name: string;
  /** Quoted SQL identifiers. */
  sql: string;
  lockSql: string;
  /** For to_regclass: the quoted identifier as text. */
  regclass: string;
}

const quoteIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;

/** `name` or `schema.name`; each part a plain identifier (letters, digits, _ and $, not starting with a digit). */
export function historyTable(spec: string = HISTORY_TABLE): HistoryTable {
  const parts = spec.split(".");
  const plain = /^[A-Za-z_][A-Za-z0-9_$]{0,58}$/;
  if (parts.length > 2 || !parts.every((part) => plain.test(part))) {
    throw new InputError(
      `--history-table "${spec}" is not a table name: use name or schema.name, letters, digits and _ ` +
        `(at most 59 characters each, so the "_lock" table beside it fits PostgreSQL's 63)`,
    );
  }
  const quoted = parts.map(quoteIdent);
  const lock = [...quoted.slice(0, -1), quoteIdent(`${parts[parts.length - 1]}_lock`)];
  return { name: spec, sql: quoted.join("."), lockSql: lock.join("."), regclass: quoted.join(".") };
}

/** A SQL section of a migration file (up or down) and where it starts in the file. */
export interface SqlSection {
  sql: string;
  /** 1-based line in the file of the first line of `sql`. */
  line: number;
  /** false when the section declared `transaction: false`. */
  transaction: boolean;
}

export interface Migration {
  id: string;
  /** Path of the file, as shown in messages. */
  file: string;
  safe: Safe;
  depends: string[];
  /** Line of the `depends:` directive; null when the default (previous id) applies. */
  dependsLine: number | null;
  delayMs: number | null;
  up: SqlSection;
  /** The down section as written, from its `-- migrate:down` marker on; null when the file has none. */
  down: (SqlSection & { raw: string }) | null;
  /** sha256 of the up SQL with normalised line endings; front-matter and down excluded. */
  checksum: string;
  /** `lock-timeout:` and `statement-timeout:` from the front-matter; null when not set, 0 for off. */
  lockTimeoutMs: number | null;
  statementTimeoutMs: number | null;
  /** The whole file, line endings normalised: the analysis reads waivers from it. */
  source: string;
}

/** One row of `safemigrate_history`. A row with `appliedAt` null was only detected (delays). */
export interface HistoryRow {
  id: string;
  checksum: string | null;
  safe: string | null;
  phase: string | null;
  detectedAt: Date | null;
  appliedAt: Date | null;
  durationMs: number | null;
  downSql: string | null;
  /** Dependencies as declared when it was applied, so a migration whose file is gone can still be ordered. */
  depends: string[] | null;
  /**
   * Set when a `transaction: false` migration started and cleared of meaning
   * once `appliedAt` is set: started but not applied means a run was
   * interrupted in it, after `statementsDone` of its statements took effect.
   */
  startedAt?: Date | null;
  statementsDone?: number | null;
  /** Free text: how --fake or --accept-changed recorded it, or which statement of a marker failed. */
  note?: string | null;
}

/**
 * A history row as far as planning `--pre` or `--all` reads it: applied or
 * not, the checksum for drift, the delay clock, an interrupted run. The no-op
 * reads only these columns (half of a row's values on a typical history).
 */
export type PlanRow = Pick<HistoryRow, "id" | "checksum" | "detectedAt" | "appliedAt" | "startedAt" | "statementsDone" | "note">;

/** An error meant for the user: one readable message and the exit code it maps to. */
export class SafemigrateError extends Error {
  // Declared fields, not constructor parameter properties: Node runs this file by stripping types only.
  readonly exitCode: number;
  constructor(message: string, exitCode: number) {
    super(message);
    this.name = "SafemigrateError";
    this.exitCode = exitCode;
  }
}

/** Bad input: usage, front-matter, dependency graph, checksum drift (exit 2). */
export class InputError extends SafemigrateError {
  constructor(message: string) {
    super(message, EXIT.invalid);
  }
}

/** A migration or the database failed (exit 1). */
export class DatabaseError extends SafemigrateError {
  constructor(message: string) {
    super(message, EXIT.failed);
  }
}

// ============================================================================
// 2. Reading migration files and their front-matter
// ============================================================================

const DIRECTIVES = ["safe", "depends", "delay", "transaction", "lock-timeout", "statement-timeout"] as const;
type Directive = (typeof DIRECTIVES)[number];

/** `-- key: value`; the key must start with a letter so `-- 12:30` stays a comment. */
const DIRECTIVE_LINE = /^--\s*([A-Za-z][\w-]*)\s*:(.*)$/;
/** dbmate's section markers, with its optional `transaction:false` on the same line. */
const SECTION_MARKER = /^--\s*migrate:(up|down)\b(.*)$/i;
const COMMENT_LINE = /^\s*--/;

const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

/** Parses `7d`, `90s`, `1h30m`, `500ms` into milliseconds; null when it is not a duration. */
export function parseDuration(text: string): number | null {
  const value = text.trim().toLowerCase();
  if (!/^(\d+(ms|[smhdw]))+$/.test(value)) return null;
  let total = 0;
  for (const [, amount, unit] of value.matchAll(/(\d+)(ms|[smhdw])/g)) {
    total += Number(amount) * DURATION_UNITS[unit];
  }
  return total;
}

/** Shortest readable form of a duration in ms: 604800000 -> "7d". */
export function formatDuration(ms: number): string {
  for (const unit of ["d", "h", "m", "s"]) {
    const size = DURATION_UNITS[unit];
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/** Edits (insert, delete, substitute, swap two neighbours) that turn `a` into `b`. */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => i || j));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

/** The candidate a mistyped word most likely meant, if any is close enough. */
export function closest(word: string, candidates: readonly string[]): string | null {
  const w = word.toLowerCase();
  let best: string | null = null;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const distance = editDistance(w, candidate);
    const allowed = Math.max(1, Math.floor(candidate.length / 3));
    const isPrefix = w.length >= 3 && candidate.startsWith(w);
    if ((distance <= allowed || isPrefix) && distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best;
}

/**
 * Byte order of the UTF-8 encoding, which is code point order. UTF-16 code
 * units already sort that way except surrogates (U+10000 and up) against
 * U+E000..U+FFFF, so only the first differing unit is looked at, and only
 * when both are at or above U+D800 is it corrected. Sorting 10,000 ids calls
 * this ~130,000 times: no allocation here.
 */
export function compareIds(a: string, b: string): number {
  const shorter = Math.min(a.length, b.length);
  for (let i = 0; i < shorter; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    return x >= 0xd800 && y >= 0xd800 ? codePointRank(x) - codePointRank(y) : x - y;
  }
  return a.length - b.length;
}

/** Surrogates (astral code points) rank above U+E000..U+FFFF. */
const codePointRank = (unit: number): number => (unit >= 0xe000 ? unit - 0x800 : unit + 0x2000);

/**
 * Waiver comments are excluded, so waiving a finding in an applied migration
 * is not drift. Most files have neither \r nor a waiver: they skip the
 * line-by-line pass (a no-op over 10,000 applied migrations hashes every one).
 */
export function checksumOf(upSql: string): string {
  const plain = !upSql.includes("\r") && !/safemigrate-ignore/i.test(upSql);
  const normalised = plain
    ? upSql.trim()
    : upSql.replace(/\r\n?/g, "\n").split("\n").filter((line) => !WAIVER_LINE.test(line)).join("\n").trim();
  return sha256Hex(normalised);
}

/**
 * Bun's native hasher where there is one: importing node:crypto costs Bun
 * ~15 ms of start-up (it loads the stream modules). Deno and Node get
 * node:crypto on first use, without a static import.
 */
function sha256Hex(text: string): string {
  const bun = (globalThis as { Bun?: { SHA256: { hash(input: string, encoding: "hex"): string } } }).Bun;
  if (bun) return bun.SHA256.hash(text, "hex");
  return builtin("node:crypto").createHash("sha256").update(text).digest("hex");
}

/** `-- safemigrate-ignore: rule[, rule] -- reason` directly above a statement. */
const WAIVER_LINE = /^\s*--\s*safemigrate-ignore\s*:/i;
const WAIVER_ANYWHERE = /safemigrate-ignore/i;

interface ParsedDirectives {
  "lock-timeout"?: { value: number; line: number };
  "statement-timeout"?: { value: number; line: number };
  safe?: { value: Safe; line: number };
  depends?: { value: string[]; line: number };
  delay?: { value: number; text: string; line: number };
  transaction?: { value: boolean; line: number };
}

/**
 * Recognises a front-matter directive on one line. Returns null for an ordinary
 * comment (`-- Note: ...`, `-- https://...`); throws for a near miss so a typo
 * like `-- saf: always` is never silently ignored.
 */
function directiveOn(line: string, where: string): { key: Directive; value: string } | null {
  const match = DIRECTIVE_LINE.exec(line.trim());
  if (!match) {
    const loose = looseDirective(line.trim());
    if (loose && (loose.equals || isValidValue(loose.key, loose.value))) {
      throw new InputError(`${where}: write the directive as "-- ${loose.key}: ${loose.value}"`);
    }
    return null;
  }
  const key = match[1].toLowerCase();
  if ((DIRECTIVES as readonly string[]).includes(key)) return { key: key as Directive, value: match[2].trim() };
  const meant = closest(key, DIRECTIVES);
  if (meant) {
    throw new InputError(`${where}: unknown directive "${match[1]}:" — did you mean "${meant}:"?`);
  }
  return null;
}

/**
 * `-- safe = always` or `-- safe before_deploy`: clearly meant as a directive.
 * Split with string operations, not one regex: `\s*(=\s*|\s+)` backtracks
 * quadratically over a long run of spaces, and a front-matter line can hold any text.
 */
function looseDirective(line: string): { key: Directive; value: string; equals: boolean } | null {
  const head = /^--\s*(safe|depends|delay|transaction)\b/i.exec(line);
  if (!head) return null;
  const after = line.slice(head[0].length);
  const rest = after.trim();
  const equals = rest.startsWith("=");
  const value = equals ? rest.slice(1).trim() : rest;
  if (!equals && !/^\s/.test(after)) return null;
  if (value === "" || /\s/.test(value)) return null;
  return { key: head[1].toLowerCase() as Directive, value, equals };
}

function isValidValue(key: Directive, value: string): boolean {
  switch (key) {
    case "safe":
      return (SAFE_VALUES as readonly string[]).includes(value);
    case "delay":
      return parseDuration(value) !== null;
    case "transaction":
      return value === "true" || value === "false";
    case "lock-timeout":
      return parseDuration(value) !== null;
    case "statement-timeout":
      return value === "off" || value === "0" || parseDuration(value) !== null;
    case "depends":
      return false;
  }
}

/**
 * The ids of a `depends:` line. They are separated by commas, not whitespace,
 * because real ids contain spaces (crates.io's
 * `2019-11-15-182353_Add email notifications to crate owners`); an id with a
 * comma or a quote is written in double (or single) quotes, the quote itself
 * doubled inside. Optional `[ ]` around the list; `[]` is none.
 */
export function dependsList(value: string, where: string): string[] {
  const text = value.trim().replace(/^\[([^]*)\]$/, "$1");
  const item = /\s*(?:"((?:[^"]|"")*)"|'((?:[^']|'')*)'|([^,"']*?))\s*(,|$)/y;
  const ids: string[] = [];
  for (item.lastIndex = 0; item.lastIndex < text.length;) {
    const at = item.lastIndex;
    const match = item.exec(text);
    if (!match) {
      throw new InputError(
        `${where}: cannot read "depends: ${value}" at "${text.slice(at)}" — separate ids with commas and close every quote ` +
          `(an id with a comma or a quote goes in double quotes, a quote inside doubled: "a ""b""")`,
      );
    }
    const id = match[1]?.replace(/""/g, '"') ?? match[2]?.replace(/''/g, "'") ?? match[3];
    if (id !== "") ids.push(id);
    if (match[4] === "") break;
  }
  return ids;
}

function applyDirective(
  parsed: ParsedDirectives,
  key: Directive,
  value: string,
  line: number,
  where: string,
): void {
  if (parsed[key]) {
    throw new InputError(`${where}: "${key}:" is given twice (first on line ${parsed[key]!.line})`);
  }
  switch (key) {
    case "safe": {
      if (!isValidValue("safe", value)) {
        const meant = closest(value.replace(/[\s-]/g, "_"), SAFE_VALUES);
        throw new InputError(
          `${where}: "safe: ${value}" is not valid — use before_deploy, after_deploy or always` +
            (meant ? ` (did you mean "${meant}"?)` : ""),
        );
      }
      parsed.safe = { value: value as Safe, line };
      return;
    }
    case "depends": {
      parsed.depends = { value: dependsList(value, where).map((id) => id.replace(/\.sql$/, "")), line };
      return;
    }
    case "delay": {
      const ms = parseDuration(value);
      if (ms === null) {
        throw new InputError(
          `${where}: "delay: ${value}" is not a duration — use a number and a unit s, m, h, d or w, like "delay: 7d"`,
        );
      }
      parsed.delay = { value: ms, text: value, line };
      return;
    }
    case "lock-timeout":
    case "statement-timeout": {
      if (!isValidValue(key, value)) {
        throw new InputError(
          `${where}: "${key}: ${value}" is not a duration — use a number and a unit s, m or h, like "${key}: 5s"` +
            (key === "statement-timeout" ? ` (or "off")` : ""),
        );
      }
      parsed[key] = { value: value === "off" || value === "0" ? 0 : parseDuration(value)!, line };
      return;
    }
    case "transaction": {
      if (!isValidValue("transaction", value)) {
        throw new InputError(`${where}: "transaction: ${value}" is not valid — use true or false`);
      }
      parsed.transaction = { value: value === "true", line };
      return;
    }
  }
}

/**
 * Parses one migration file. Pure: the caller reads the file.
 *
 * Layout: front-matter (comment and blank lines at the top, directives among
 * them), the up SQL, then optionally `-- migrate:down` and the down SQL, which
 * may start with its own `-- transaction: false`. An optional `-- migrate:up`
 * marker is accepted so dbmate files only need front-matter added.
 */
export function parseMigration(id: string, file: string, text: string): Omit<Migration, "depends" | "dependsLine"> & {
  declaredDepends: { value: string[]; line: number } | null;
} {
  const { depends, dependsLine, ...rest } = migrationFrom(id, file, text, null);
  return { ...rest, declaredDepends: dependsLine === null ? null : { value: depends, line: dependsLine } };
}

/** Where each line starts: a section is a slice of the source (a big file is not copied line by line). */
function lineIndex(source: string) {
  const starts: number[] = [];
  for (let offset = 0; offset >= 0; offset = source.indexOf("\n", offset) + 1 || -1) starts.push(offset);
  const count = starts.length;
  return {
    starts,
    count,
    /** Where line `i` ends, before its newline. */
    end: (i: number) => (i + 1 < count ? starts[i + 1] - 1 : source.length),
    /** Lines `start` up to (not including) `end`, as one slice. */
    from: (start: number, end = count) => source.slice(starts[start], end < count ? starts[end] - 1 : source.length),
  };
}
type LineIndex = ReturnType<typeof lineIndex>;

/** What one pass over a file's lines finds: each section's directives, and where its SQL starts and ends (line indexes, -1 for none). */
interface SectionScan {
  up: ParsedDirectives;
  down: ParsedDirectives;
  section: "up" | "down";
  inFrontMatter: boolean;
  upStart: number;
  upEnd: number;
  downMarker: number;
  downStart: number;
}

/**
 * One pass over the lines: markers, front-matter directives, and directives
 * that come too late to count. Most lines are SQL: one that starts (after
 * spaces and tabs) with an ASCII character other than `-` is neither blank, a
 * comment nor a marker, and is looked at no further once the front-matter has ended.
 */
function scanSections(source: string, lines: LineIndex, at: (index: number) => string): SectionScan {
  const scan: SectionScan = {
    up: {}, down: {}, section: "up", inFrontMatter: true, upStart: -1, upEnd: lines.count, downMarker: -1, downStart: -1,
  };
  for (let i = 0; i < lines.count; i++) {
    const end = lines.end(i);
    let first = lines.starts[i];
    while (first < end && (source.charCodeAt(first) === 32 || source.charCodeAt(first) === 9)) first++;
    const code = first < end ? source.charCodeAt(first) : 0;
    if (code > 32 && code < 128 && code !== 45 && !scan.inFrontMatter) continue;
    const trimmed = source.slice(first, end).trim();
    const marker = trimmed.startsWith("--") ? SECTION_MARKER.exec(trimmed) : null;
    if (marker) sectionMarker(scan, marker, i, at);
    else if (scan.inFrontMatter) frontMatterLine(scan, trimmed, i, at);
    else refuseLateDirective(scan, trimmed, i, at);
  }
  return scan;
}

/** `-- migrate:up` (only before any SQL) or `-- migrate:down` (once), with an optional `transaction:` of its own. */
function sectionMarker(scan: SectionScan, marker: RegExpExecArray, i: number, at: (index: number) => string): void {
  if (marker[1].toLowerCase() === "up") {
    if (scan.section === "down" || !scan.inFrontMatter) {
      throw new InputError(`${at(i)}: "-- migrate:up" must come before the up SQL and before "-- migrate:down"`);
    }
  } else {
    if (scan.section === "down") throw new InputError(`${at(i)}: a second "-- migrate:down" (the first is on line ${scan.downMarker + 1})`);
    scan.section = "down";
    scan.inFrontMatter = true;
    scan.downMarker = i;
    scan.upEnd = i;
  }
  const option = /transaction\s*:\s*(\S+)/i.exec(marker[2]);
  if (option) applyDirective(scan.section === "up" ? scan.up : scan.down, "transaction", option[1], i + 1, at(i));
}

/** A blank line or comment of the front-matter (a directive, maybe), or the first SQL line, which ends it. */
function frontMatterLine(scan: SectionScan, trimmed: string, i: number, at: (index: number) => string): void {
  if (trimmed === "" || COMMENT_LINE.test(trimmed)) {
    const directive = trimmed === "" ? null : directiveOn(trimmed, at(i));
    if (!directive) return;
    if (scan.section === "down" && directive.key !== "transaction") {
      throw new InputError(
        `${at(i)}: "${directive.key}:" belongs in the front-matter at the top of the file; ` +
          `the down section may only set "transaction:"`,
      );
    }
    applyDirective(scan.section === "up" ? scan.up : scan.down, directive.key, directive.value, i + 1, at(i));
    return;
  }
  scan.inFrontMatter = false;
  if (scan.section === "up") scan.upStart = i;
  else scan.downStart = i;
}

/** Below the front-matter a directive has no effect: say so instead of ignoring it. */
function refuseLateDirective(scan: SectionScan, trimmed: string, i: number, at: (index: number) => string): void {
  if (!COMMENT_LINE.test(trimmed)) return;
  const directive = directiveOn(trimmed, at(i));
  if (!directive) return;
  throw new InputError(
    `${at(i)}: "-- ${directive.key}:" has no effect here — directives must be in the front-matter ` +
      `before the first SQL (line ${(scan.section === "up" ? scan.upStart : scan.downStart) + 1}); move it to the top of the ${scan.section === "up" ? "file" : "down section"}`,
  );
}

/**
 * parseMigration's work, building the Migration itself: `previous` (the id
 * before it) is its dependency unless it declares its own. readMigrations
 * builds 10,000 of these on a large no-op, so no object is copied.
 */
function migrationFrom(id: string, file: string, text: string, previous: string | null): Migration {
  const source = text.includes("\r") ? text.replace(/\r\n?/g, "\n") : text;
  const at = (index: number) => `${file}:${index + 1}`;
  const lines = lineIndex(source);
  const { up, down, upStart, upEnd, downMarker, downStart } = scanSections(source, lines, at);

  if (up.delay && up.safe && up.safe.value !== "after_deploy") {
    throw new InputError(
      `${at(up.delay.line - 1)}: "delay:" only applies to after_deploy migrations, but this one is ${up.safe.value} — ` +
        `remove the delay or mark it "safe: after_deploy"`,
    );
  }

  const upSql = upStart < 0 ? "" : lines.from(upStart, upEnd).trimEnd();
  const downSection = downMarker < 0
    ? null
    : {
      // From the marker on, so dbmate's `-- migrate:down transaction:false` survives in the stored copy.
      raw: lines.from(downMarker).trim(),
      sql: downStart < 0 ? "" : lines.from(downStart).trimEnd(),
      line: downStart < 0 ? downMarker + 2 : downStart + 1,
      transaction: down.transaction?.value ?? true,
    };

  return {
    id,
    file,
    safe: up.safe?.value ?? "after_deploy",
    depends: up.depends ? up.depends.value : previous === null ? [] : [previous],
    dependsLine: up.depends?.line ?? null,
    delayMs: up.delay?.value ?? null,
    lockTimeoutMs: up["lock-timeout"]?.value ?? null,
    statementTimeoutMs: up["statement-timeout"]?.value ?? null,
    source,
    up: { sql: upSql, line: upStart < 0 ? 1 : upStart + 1, transaction: up.transaction?.value ?? true },
    down: downSection,
    checksum: checksumOf(upSql),
  };
}

// ---- Reading the files -------------------------------------------------------
//
// A file that is not read is a migration that is silently not applied, so
// every name in the directory that looks like a migration either becomes one
// or is reported by name: links are followed (a Kubernetes ConfigMap mounts
// each file as a link into its `..data` folder), and anything that cannot be
// read as a regular UTF-8 file is an error (exit 2) before anything runs.
// Hidden folders (`.git`, ConfigMap's `..data`) are not looked into.

/** A file-system error in words a user can act on; `what` names the thing ("migrations directory", "migration file"). */
export function fileSystemProblem(path: string, error: unknown, what: string): string {
  const e = error as { code?: string; message?: string };
  switch (e?.code) {
    case "ENOENT":
      return `${path}: ${what} does not exist`;
    case "EACCES":
    case "EPERM":
      return `${path}: permission denied — the user running safemigrate cannot read this ${what}; ` +
        `make it readable (chmod a+r, and a+x on its folders) or run as a user who can`;
    case "ENOTDIR":
      return `${path}: a part of this path is a file, not a directory — point it at the folder that holds the .sql files`;
    case "ELOOP":
      return `${path}: too many levels of symbolic links (a link that points back at itself) — fix or remove the link`;
    default:
      return `${path}: cannot read ${what}: ${e?.message ?? String(error)}`;
  }
}

/** Why the entry `path` (named `*.sql`) is not a readable regular file, or null when it is one. */
function notARegularFile(path: string): string | null {
  let stat: Stats;
  try {
    stat = statSync(path);
  } catch (error) {
    if ((error as { code?: string }).code !== "ENOENT") return fileSystemProblem(path, error, "migration file");
    let target = "a missing file";
    try {
      target = readlinkSync(path);
    } catch { /* not a link after all: it vanished while being read */ }
    return `${path}: a symbolic link to ${target}, which does not exist (a dangling link) — fix the link or remove it`;
  }
  if (stat.isFile()) return null;
  if (stat.isDirectory()) return `${path}: a directory, not a migration file — rename it or move it out of the migrations directory`;
  const kind = stat.isFIFO() ? "a FIFO (named pipe)" : stat.isSocket() ? "a socket" : "a device";
  return `${path}: ${kind}, not a regular file — safemigrate reads only regular files (reading this one could block forever)`;
}

/** `.sql` files (any case) in the non-hidden subfolders of `dir`, at any depth; links to folders are not followed. */
function sqlFilesBelow(dir: string): string[] {
  const found: string[] = [];
  let entries: Dirent[];
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return found;
  }
  for (const entry of entries) {
    if (entry.name.startsWith(".")) continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory()) found.push(...sqlFilesBelow(path));
    else if (entry.name.toLowerCase().endsWith(".sql")) found.push(path);
  }
  return found;
}

/** Names of the migrations in `dir` (file name without `.sql`), and every entry that looks like one but cannot be. */
function listMigrationFiles(dir: string): { ids: string[]; problems: string[] } {
  let entries: Dirent[];
  try {
    if (!statSync(dir).isDirectory()) {
      throw new InputError(`${dir} is a file, not a directory — point --dir at the folder that holds the migration .sql files`);
    }
    entries = readdirSync(dir, { withFileTypes: true });
  } catch (error) {
    if (error instanceof InputError) throw error;
    const code = (error as { code?: string }).code;
    throw new InputError(
      code === "ENOENT"
        ? `migrations directory ${dir} does not exist (set it with --dir)`
        : fileSystemProblem(dir, error, "migrations directory"),
    );
  }
  const ids: string[] = [];
  const problems: string[] = [];
  for (const entry of entries) {
    if (entry.name.endsWith(".sql")) {
      // A regular file as the directory lists it needs no stat of its own; a link or anything else is looked at.
      const problem = entry.isFile() ? null : notARegularFile(join(dir, entry.name));
      if (problem) problems.push(problem);
      else ids.push(entry.name.slice(0, -".sql".length));
      continue;
    }
    const path = join(dir, entry.name);
    if (entry.name.toLowerCase().endsWith(".sql")) {
      const renamed = `${entry.name.slice(0, -".sql".length)}.sql`;
      problems.push(`${path}: ends in "${entry.name.slice(-".sql".length)}"; migration files end in lowercase ".sql" — rename it to ${renamed}`);
    } else if (entry.isDirectory() && !entry.name.startsWith(".")) {
      const nested = sqlFilesBelow(path);
      if (nested.length > 0) {
        const shown = nested.slice(0, 5).join(", ") + (nested.length > 5 ? ` and ${nested.length - 5} more` : "");
        problems.push(
          `${path}: a subfolder with .sql files (${shown}); safemigrate reads only the files directly in ${dir} — ` +
            `move them up into ${dir}, or out of it (a folder whose name starts with "." is not looked into)`,
        );
      }
    }
  }
  // The engine's own string order is compareIds' order unless an id has a surrogate or a unit from U+D800 up.
  const engineOrder = ids.every((id) => !/[\ud800-\uffff]/.test(id));
  return { ids: engineOrder ? ids.sort() : ids.sort(compareIds), problems };
}

/**
 * The text of a migration file: UTF-8, a leading byte-order mark dropped (so
 * it changes neither lines nor checksum). A NUL byte or bytes that are not
 * UTF-8 are an error naming the line: PostgreSQL cannot store NUL in SQL text
 * (the parser would stop there and drop the statements after it), and
 * decoding Latin-1 leniently would store U+FFFD in place of every accent.
 */
let strictUtf8: TextDecoder | null = null;
export function decodeMigrationText(bytes: Uint8Array, file: string): string {
  const lineOf = (index: number) => {
    let line = 1;
    for (let i = 0; i < index; i++) if (bytes[i] === 0x0a) line++;
    return line;
  };
  if ((bytes[0] === 0xff && bytes[1] === 0xfe) || (bytes[0] === 0xfe && bytes[1] === 0xff)) {
    throw new InputError(`${file}:1: the file is UTF-16 (it starts with a UTF-16 byte-order mark) — save it as UTF-8`);
  }
  const nul = bytes.indexOf(0);
  if (nul >= 0) {
    throw new InputError(
      `${file}:${lineOf(nul)}: contains a NUL byte (\\0) — PostgreSQL cannot take it in SQL text; ` +
        `remove it (is this a binary file, or one saved as UTF-16?)`,
    );
  }
  const body = bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? bytes.subarray(3) : bytes;
  try {
    return (strictUtf8 ??= new TextDecoder("utf-8", { fatal: true })).decode(body);
  } catch {
    const bad = firstInvalidUtf8(body) + (body === bytes ? 0 : 3);
    throw new InputError(
      `${file}:${lineOf(bad)}: not valid UTF-8 (byte 0x${bytes[bad].toString(16).padStart(2, "0")}) — save the file as UTF-8 ` +
        `(from Latin-1: iconv -f latin1 -t utf-8 ${file} > fixed.sql)`,
    );
  }
}

/** Index of the first byte of the first sequence that is not valid UTF-8 (only called once decoding failed). */
function firstInvalidUtf8(bytes: Uint8Array): number {
  for (let i = 0; i < bytes.length;) {
    const lead = bytes[i];
    const length = lead < 0x80 ? 1 : lead >= 0xc2 && lead < 0xe0 ? 2 : lead >= 0xe0 && lead < 0xf0 ? 3 : lead >= 0xf0 && lead < 0xf5 ? 4 : 0;
    if (length === 0 || i + length > bytes.length) return i;
    try {
      // The strict decoder also knows the finer rules (overlong forms, surrogates) for this one sequence.
      new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(i, i + length));
    } catch {
      return i;
    }
    i += length;
  }
  return bytes.length - 1;
}

/** Reads one migration file as text; every way it can fail is an InputError naming the file. */
function readMigrationText(file: string): string {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(file);
  } catch (error) {
    throw new InputError(fileSystemProblem(file, error, "migration file"));
  }
  return decodeMigrationText(bytes, file);
}

/**
 * Reads every `*.sql` file directly in `dir` (links followed), sorted by id
 * in byte order, and fills in the default dependency (the previous id).
 * Reports every bad file at once so a user fixes them in one pass.
 */
export function readMigrations(dir: string): Migration[] {
  const { ids: names, problems } = listMigrationFiles(dir);
  const migrations: Migration[] = [];
  // join(dir, name) for a name without slashes, joined once.
  const prefix = join(dir, "x").slice(0, -1);
  for (let index = 0; index < names.length; index++) {
    const id = names[index];
    const file = `${prefix}${id}.sql`;
    try {
      migrations.push(migrationFrom(id, file, readMigrationText(file), index === 0 ? null : names[index - 1]));
    } catch (error) {
      if (!(error instanceof InputError)) throw error;
      problems.push(error.message);
    }
  }
  if (problems.length > 0) throw new InputError(problems.join("\n"));
  return migrations;
}

// ---- Splitting a section into statements ---------------------------------------
//
// The real PostgreSQL parser (libpg-query) decides what the statements are,
// but it is given the section in pieces of about PARSE_PIECE_CHARS: one parse
// of a 50 MB file builds a JSON tree larger than its 1 GB heap, and decoding a
// byte prefix per statement made the old splitting quadratic. The pieces are
// cut after a `;` that a small lexer (quotes, dollar quotes, comments,
// parentheses, BEGIN ATOMIC bodies) sees at the top level; if a cut was wrong
// the piece does not parse, so it is joined with the next one and parsed
// again, and only an error that stays where it was is reported. Byte offsets
// (the parser counts UTF-8 bytes) map to lines through one index built in a
// single forward pass. Everything here is linear in the size of the section.

/** Characters of SQL given to the parser at once: big enough that a normal migration is one piece. */
const PARSE_PIECE_CHARS = 1 << 18;
/** A section the parser takes whole: it fits one piece, and has no INSERTs to be only syntax-checked. */
const fitsOnePiece = (sql: string) => sql.length <= PARSE_PIECE_CHARS && !/^\s*insert\b/im.test(sql);

/**
 * Statement kinds whose tree the analysis never reads (it asks only their
 * kind), so it is not kept: INSERTs are most of a big data migration's size.
 * A rule that needs an INSERT's tree must take the kind out of this list.
 */
const DATA_STATEMENTS = new Set(["InsertStmt"]);

const isWordChar = (c: number) =>
  (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c === 95 || c === 36 || c >= 0x80;

/** Index just past the quoted text opening at `start` (`'` or `"`); backslashes escape in E'' strings. */
function endOfQuoted(sql: string, start: number, quote: number, backslashEscapes: boolean): number {
  if (!backslashEscapes) {
    const mark = String.fromCharCode(quote);
    for (let i = start + 1;;) {
      const close = sql.indexOf(mark, i);
      if (close < 0) return sql.length;
      if (sql.charCodeAt(close + 1) !== quote) return close + 1;
      i = close + 2;
    }
  }
  for (let i = start + 1; i < sql.length; i++) {
    const c = sql.charCodeAt(i);
    if (c === 92) i++;
    else if (c === quote) {
      if (sql.charCodeAt(i + 1) !== quote) return i + 1;
      i++;
    }
  }
  return sql.length;
}

/** Whether the quote at `i` opens an E'' string, where a backslash escapes the next character. */
function isEscapeString(sql: string, i: number): boolean {
  const prefix = sql.charCodeAt(i - 1);
  return (prefix === 69 || prefix === 101) && !isWordChar(sql.charCodeAt(i - 2));
}

/** Index just past the comment or quoted text at `i`, or `i` when none starts there. */
function skipLexeme(sql: string, i: number): number {
  const c = sql.charCodeAt(i);
  const next = sql.charCodeAt(i + 1);
  if (c === 45 && next === 45) {
    const newline = sql.indexOf("\n", i);
    return newline < 0 ? sql.length : newline + 1;
  }
  if (c === 47 && next === 42) {
    let depth = 0;
    for (let j = i; j < sql.length; j++) {
      if (sql.charCodeAt(j) === 47 && sql.charCodeAt(j + 1) === 42) (depth++, j++);
      else if (sql.charCodeAt(j) === 42 && sql.charCodeAt(j + 1) === 47 && (j++, --depth === 0)) return j + 1;
    }
    return sql.length;
  }
  if (c === 39) return endOfQuoted(sql, i, 39, isEscapeString(sql, i));
  if (c === 34) return endOfQuoted(sql, i, 34, false);
  if (c === 36 && !isWordChar(sql.charCodeAt(i - 1))) {
    const tag = /\$(?:[A-Za-z_\u0080-\uffff][\w\u0080-\uffff]*)?\$/y;
    tag.lastIndex = i;
    const open = tag.exec(sql);
    if (open) {
      const close = sql.indexOf(open[0], i + open[0].length);
      return close < 0 ? sql.length : close + open[0].length;
    }
  }
  return i;
}

/** A statement as the lexer sees it: its character range in the section and its first word, lowercased. */
export interface LexedStatement {
  start: number;
  end: number;
  first: string;
}

/**
 * The statements of `sql` by its `;` at the top level, the way psql splits a
 * file: quotes, dollar quotes, comments, parentheses, and BEGIN/CASE ... END in
 * a routine body. Text after the last `;` is a statement when it holds a word.
 */
export function lexStatements(sql: string): LexedStatement[] {
  const found: LexedStatement[] = [];
  let start = 0;
  let parens = 0;
  let blocks = 0;
  let words: string[] = [];
  let routine = false;
  // A loop over character codes: several times faster than a regex over a 50 MB file.
  for (let i = 0; i < sql.length; i++) {
    const c = sql.charCodeAt(i);
    if (c === 39 || c === 34 || c === 45 || c === 47 || c === 36) {
      const skipped = skipLexeme(sql, i);
      if (skipped > i) i = skipped - 1;
    } else if (c === 40) parens++;
    else if (c === 41) parens = Math.max(0, parens - 1);
    else if (c === 59 && parens === 0 && blocks === 0) {
      found.push({ start, end: i + 1, first: words[0] ?? "" });
      start = i + 1;
      words = [];
      routine = false;
    } else if ((words.length === 0 || (words[0] === "create" && words.length < 6) || routine) && isWordChar(c) && !(c >= 48 && c <= 57)) {
      // Words matter at the start of a statement and in a routine body only.
      let j = i + 1;
      while (j < sql.length && isWordChar(sql.charCodeAt(j))) j++;
      const word = sql.slice(i, j).toLowerCase();
      if (words.length < 6) words.push(word);
      routine = words[0] === "create" && (words.includes("function") || words.includes("procedure"));
      if (routine && (word === "begin" || (word === "case" && blocks > 0))) blocks++;
      else if (routine && word === "end" && blocks > 0) blocks--;
      i = j - 1;
    }
  }
  if (words.length > 0) found.push({ start, end: sql.length, first: words[0] });
  return found;
}

/** The first word that makes a statement one of DATA_STATEMENTS for certain (WITH may wrap anything: not listed). */
const DATA_FIRST_WORDS: Record<string, string> = { insert: "InsertStmt" };

/** One shared, frozen tree per data statement kind: half a million INSERTs need no half a million trees. */
const dataNodes = new Map<string, Record<string, unknown>>();
const dataNode = (kind: string) => {
  let node = dataNodes.get(kind);
  if (!node) dataNodes.set(kind, node = Object.freeze({ [kind]: Object.freeze({}) }));
  return node;
};

/** A run of statements given to the parser at once; `data` when all are INSERTs (DATA_STATEMENTS). */
interface Piece {
  statements: LexedStatement[];
  data: boolean;
}

/** Consecutive statements in pieces of about `size` characters, INSERTs apart from the rest. */
function parsePieces(statements: LexedStatement[], size: number): Piece[] {
  const pieces: Piece[] = [];
  for (const statement of statements) {
    const data = statement.first in DATA_FIRST_WORDS;
    const last = pieces[pieces.length - 1];
    if (last && last.data === data && statement.end - last.statements[0].start <= size) last.statements.push(statement);
    else pieces.push({ statements: [statement], data });
  }
  return pieces;
}

/** UTF-8 length of one UTF-16 code unit (a surrogate pair counts 4 on its first half, 0 on its second). */
const utf8Width = (c: number) => c < 0x80 ? 1 : c < 0x800 ? 2 : c >= 0xd800 && c < 0xdc00 ? 4 : c >= 0xdc00 && c < 0xe000 ? 0 : 3;

const utf8Length = (text: string): number => {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) bytes += utf8Width(text.charCodeAt(i));
  return bytes;
};

/** Byte offset -> file line and column in a SQL section, through line starts found in one pass. */
function sectionPlaces(section: SqlSection): (offset: number) => { line: number; column: number } {
  const sql = section.sql;
  const lineBytes: number[] = [0];
  const lineChars: number[] = [0];
  let bytes = 0;
  for (let i = 0; i < sql.length; i++) {
    const c = sql.charCodeAt(i);
    bytes += utf8Width(c);
    if (c === 10) {
      lineBytes.push(bytes);
      lineChars.push(i + 1);
    }
  }
  return (offset) => {
    let low = 0;
    let high = lineBytes.length - 1;
    while (low < high) {
      const mid = (low + high + 1) >> 1;
      if (lineBytes[mid] <= offset) low = mid;
      else high = mid - 1;
    }
    let column = 1;
    for (let i = lineChars[low], b = lineBytes[low]; b < offset && i < sql.length; i++, column++) b += utf8Width(sql.charCodeAt(i));
    return { line: section.line + low, column };
  };
}

/** A statement of a SQL section: its text, the file line it starts on, and its parse tree. */
export interface Statement {
  sql: string;
  line: number;
  /** libpg-query's parse tree of the statement (`{ CreateStmt: {...} }`); only the kind for DATA_STATEMENTS. */
  node: Record<string, unknown>;
  /** Byte offset of the statement's first token in the section. */
  offset: number;
}

export interface ParsedSection {
  statements: Statement[];
  /** File line and column of a byte offset in the section (parse-tree locations count UTF-8 bytes). */
  place(offset: number): { line: number; column: number };
}

/**
 * Parses a SQL section with the real PostgreSQL parser, so semicolons in
 * strings, dollar quotes and comments are handled. libpg-query is loaded only here.
 */
export async function parseSection(section: SqlSection, file: string): Promise<ParsedSection> {
  // The analysis and the runner both need a migration's statements: parse each section once.
  let parsed = parsedSections.get(section);
  if (!parsed) {
    parsed = parseSectionUncached(section, file);
    parsedSections.set(section, parsed);
  }
  return await parsed;
}

const parsedSections = new WeakMap<SqlSection, Promise<ParsedSection>>();

/** libpg-query, loaded on first use (under Node after beforeWebAssembly). */
async function loadParser(): Promise<typeof import("libpg-query")> {
  beforeWebAssembly();
  return await import("libpg-query");
}

/**
 * Parses many small sections in few calls of the parser, and caches each
 * section's own statements as parseSection would. JavaScriptCore compiles a
 * WebAssembly function further once it has been called often: a thousand
 * one-table migrations parsed one call each cost Bun ~0.25 s of CPU and
 * ~30 MB compiling the parser in the background after the parsing was done;
 * one call over the same text does not (README, "Parsing many small files").
 * The sections are joined with `;` on a line of its own and the statements
 * handed back by position. A joined parse that fails, or has a statement
 * reaching from one section into the next (an unterminated dollar quote), is
 * not used: those sections are parsed one by one, which names the file and
 * line of an error as before.
 */
export async function parseSections(sections: readonly { section: SqlSection; file: string }[]): Promise<void> {
  const small = sections.filter(({ section }) =>
    !parsedSections.has(section) && section.sql.trim() !== "" && fitsOnePiece(section.sql)
  );
  if (small.length < 2) return;
  const { parse } = await loadParser();
  for (const chunk of chunksOfSections(small.map((s) => s.section), PARSE_PIECE_CHARS)) {
    const joined = chunk.map((section) => section.sql).join(SECTION_JOINER);
    const tree = await (parse(joined) as Promise<ParseTree>).catch(() => null);
    const split = tree && splitJoinedTree(chunk, tree);
    if (!split) continue;
    chunk.forEach((section, k) => {
      const place = sectionPlaces(section);
      parsedSections.set(section, Promise.resolve({ statements: parsedStatements(section.sql, 0, split[k], place), place }));
    });
  }
}

const upSections = (migrations: readonly Migration[]) => migrations.map((m) => ({ section: m.up, file: m.file }));
const downSections = (migrations: readonly Migration[]) => migrations.flatMap((m) => m.down ? [{ section: m.down, file: m.file }] : []);

/** Between two joined sections: a line comment at the end of one ends with the line, and the `;` ends its last statement. */
const SECTION_JOINER = "\n;\n";

/** Consecutive sections, each run at most `chars` long (one longer section makes a run of its own). */
function chunksOfSections(sections: readonly SqlSection[], chars: number): SqlSection[][] {
  const chunks: SqlSection[][] = [];
  let size = Infinity;
  for (const section of sections) {
    if (size + section.sql.length > chars) (chunks.push([]), size = 0);
    chunks.at(-1)!.push(section);
    size += section.sql.length + SECTION_JOINER.length;
  }
  return chunks;
}

/**
 * The joined parse's statements given back to their sections, with offsets
 * and parse-tree locations counted from each section's start (as a parse of
 * the section alone counts them); null when a statement reaches past the `;`
 * that follows its section.
 */
function splitJoinedTree(chunk: readonly SqlSection[], tree: ParseTree): ParseTree[] | null {
  const joinerBytes = SECTION_JOINER.length;
  const starts: number[] = [];
  let at = 0;
  for (const section of chunk) {
    starts.push(at);
    at += utf8Length(section.sql) + joinerBytes;
  }
  const total = at - joinerBytes;
  const trees: ParseTree[] = chunk.map(() => ({ stmts: [] }));
  let k = 0;
  for (const { stmt, stmt_location = 0, stmt_len = 0 } of tree.stmts ?? []) {
    // A statement starts in its section, or in the joiner's line break before it.
    while (k + 1 < chunk.length && stmt_location >= starts[k + 1] - 1) k++;
    const start = starts[k];
    const end = k + 1 < chunk.length ? starts[k + 1] - joinerBytes : total;
    const stop = stmt_len ? stmt_location + stmt_len : total;
    // It may end at the joiner's `;` (one byte past the section's line break), not beyond it.
    if (stop > end + 1) return null;
    const from = Math.max(stmt_location, start) - start;
    const until = Math.min(stop, end) - start;
    trees[k].stmts!.push({ stmt: stmt && shiftLocations(stmt, -start), stmt_location: from, stmt_len: until - from });
  }
  return trees;
}

/**
 * The statements the runner sends: their text, line and offset, and of each
 * parse tree only its kind. Once the analysis has read a section's trees they
 * can go (releaseParseTrees): a run of a thousand migrations need not carry a
 * thousand trees while it applies them.
 */
export async function runnableStatements(section: SqlSection, file: string): Promise<Statement[]> {
  let statements = runnable.get(section);
  if (!statements) {
    statements = (await parseSection(section, file)).statements.map(({ sql, line, offset, node }) => ({ sql, line, offset, node: dataNode(Object.keys(node)[0]) }));
    runnable.set(section, statements);
  }
  return statements;
}

const runnable = new WeakMap<SqlSection, Statement[]>();

/** Keeps the runnable statements of these sections and lets their trees go; parseSection parses again if asked. */
export async function releaseParseTrees(sections: readonly { section: SqlSection; file: string }[]): Promise<void> {
  for (const { section, file } of sections) {
    await runnableStatements(section, file);
    parsedSections.delete(section);
  }
}

type ParseTree = { stmts?: { stmt?: Record<string, unknown>; stmt_location?: number; stmt_len?: number }[] };

async function parseSectionUncached(section: SqlSection, file: string): Promise<ParsedSection> {
  const place = sectionPlaces(section);
  if (section.sql.trim() === "") return { statements: [], place };
  const { parse, normalize } = await loadParser();
  const sql = section.sql;
  // A section that fits one piece needs no cutting (the parser is its own lexer), unless its INSERTs are to be only syntax-checked.
  const pieces = fitsOnePiece(sql)
    ? [{ statements: [{ start: 0, end: sql.length, first: "" }], data: false }]
    : parsePieces(lexStatements(sql), PARSE_PIECE_CHARS);
  const statements: Statement[] = [];
  const bytes = byteOffsets(sql);
  let lastError = "";
  for (let from = 0, to = 1; from < pieces.length; to++) {
    const start = pieces[from].statements[0].start;
    const end = pieces[to - 1].statements.at(-1)!.end;
    const text = sql.slice(start, end);
    const joined = to - from > 1;
    try {
      if (pieces[from].data && !joined && lastError !== "normalize") {
        // A syntax check that builds no tree: INSERTs are most of a big file, and the analysis needs only their kind.
        await normalize(text);
        statements.push(...pieces[from].statements.map((lexed) => lexedStatement(sql, lexed, bytes, place)));
      } else {
        statements.push(...parsedStatements(text, bytes(start), await parse(text) as ParseTree, place));
      }
    } catch (error) {
      if (pieces[from].data && !joined && lastError === "") {
        lastError = "normalize";
        to--; // parse the same piece again, for the error's position
        continue;
      }
      const at = bytes(start) + ((error as { sqlDetails?: { cursorPosition?: number } }).sqlDetails?.cursorPosition ?? 0);
      const message = (error as Error).message;
      // A wrong cut fails differently once the next piece is joined on; a real error stays put.
      if (to < pieces.length && `${at} ${message}` !== lastError) {
        lastError = `${at} ${message}`;
        continue;
      }
      throw new InputError(`${file}:${place(at).line}: SQL syntax error: ${message}`);
    }
    from = to;
    lastError = "";
  }
  return { statements, place };
}

/** Character offset -> UTF-8 byte offset, cheapest when asked in increasing order (one pass over the text). */
function byteOffsets(sql: string): (char: number) => number {
  let char = 0;
  let byte = 0;
  return (target) => {
    if (target < char) (char = 0, byte = 0);
    for (; char < target; char++) byte += utf8Width(sql.charCodeAt(char));
    return byte;
  };
}

/** The parser may count comments before a statement as part of it; a statement's line is that of its first token. */
const LEADING_COMMENTS = /^(\s|--[^\n]*\n?)*/;

/** A statement of a data piece, as the lexer split it (the piece as a whole passed the parser). */
function lexedStatement(
  sql: string,
  { start, end, first }: LexedStatement,
  bytes: (char: number) => number,
  place: (offset: number) => { line: number },
): Statement {
  const leading = LEADING_COMMENTS.exec(sql.slice(start, end))![0].length;
  const offset = bytes(start + leading);
  // One slice, no trimmed copies: the text ends before the `;` and the white space around it.
  let last = end;
  while (last > start + leading && /\s/.test(sql[last - 1])) last--;
  if (sql.charCodeAt(last - 1) === 59) last--;
  while (last > start + leading && /\s/.test(sql[last - 1])) last--;
  const text = sql.slice(start + leading, last);
  return { sql: text, line: place(offset).line, node: dataNode(DATA_FIRST_WORDS[first]), offset };
}

/** The statements of one parsed piece that starts at byte `base` of the section. */
function parsedStatements(text: string, base: number, tree: ParseTree, place: (offset: number) => { line: number }): Statement[] {
  const encoder = new TextEncoder();
  const bytes = encoder.encode(text);
  const ascii = bytes.length === text.length;
  const decoder = new TextDecoder();
  const slice = (start: number, end: number) => ascii ? text.slice(start, end) : decoder.decode(bytes.subarray(start, end));
  return (tree.stmts ?? []).flatMap(({ stmt, stmt_location, stmt_len }) => {
    const start = stmt_location ?? 0;
    const raw = slice(start, stmt_len ? start + stmt_len : bytes.length);
    const leading = LEADING_COMMENTS.exec(raw)![0];
    const offset = base + start + (ascii ? leading.length : encoder.encode(leading).length);
    const sql = raw.slice(leading.length).trim();
    if (!stmt || !sql) return [];
    const kind = Object.keys(stmt)[0];
    const node = DATA_STATEMENTS.has(kind) ? dataNode(kind) : shiftLocations(stmt, base);
    return [{ sql, line: place(offset).line, node, offset }];
  });
}

/**
 * Parse-tree locations count bytes from the start of the piece; the analysis
 * needs them from the start of the section. PostgreSQL 18's trees hold them as
 * `location`, `name_location`, and the start and end of a list
 * (`list_start`, `rexpr_list_end`, ...).
 */
function shiftLocations<T>(node: T, by: number): T {
  if (by === 0 || node === null || typeof node !== "object") return node;
  if (Array.isArray(node)) {
    for (const item of node) shiftLocations(item, by);
    return node;
  }
  const fields = node as Record<string, unknown>;
  // for...in, not Object.entries: a tree of a thousand statements would make an array per node.
  for (const key in fields) {
    const value = fields[key];
    if (typeof value !== "number" || value < 0 || !LOCATION_KEY.test(key)) shiftLocations(value, by);
    // The parser's JSON leaves out a location of 0 (a protobuf default), so a shifted one does too.
    else if (value + by === 0) delete fields[key];
    else fields[key] = value + by;
  }
  return node;
}
const LOCATION_KEY = /(^|_)location$|list_(start|end)$/;

// ---- Batches: many statements per round trip --------------------------------
//
// A transactional section is sent in batches of statements (the simple
// protocol runs a multi-statement query in order, in the one transaction): a
// 50 MB file of INSERTs costs a few hundred round trips instead of half a
// million. An error then has to be traced back to its statement: by the
// position the server gives, or (for errors without one, like a unique
// violation) by running the section again, statement by statement, in a
// transaction that is always rolled back (see runSection).

/** Characters of SQL sent in one round trip. */
export const BATCH_CHARS = 1 << 18;
/**
 * Sections with fewer statements than this send them one by one: a schema
 * migration's few round trips cost little, and a lost connection can then name
 * the statement that was in flight (in a batch it is one of the batch's).
 */
export const BATCH_FROM_STATEMENTS = 100;

/** Between two statements: a newline first, so a trailing `-- comment` cannot swallow the `;`. */
const BATCH_SEPARATOR = "\n;\n";

export interface StatementBatch {
  /** The statements joined, built on each read. */
  readonly text: string;
  statements: Statement[];
  /** Character offset of each statement in `text`. */
  starts: number[];
}

/**
 * Consecutive statements in batches of at most `maxChars` (a longer statement
 * is a batch of its own); one statement per batch when there are fewer than `from`.
 */
export function statementBatches(statements: readonly Statement[], maxChars: number, from = BATCH_FROM_STATEMENTS): StatementBatch[] {
  if (statements.length < from) return statements.map((statement) => ({ text: statement.sql, statements: [statement], starts: [0] }));
  const batches: StatementBatch[] = [];
  let current: { statements: Statement[]; starts: number[]; length: number } | null = null;
  // The text is joined when sent, so a big section is not held twice.
  const close = () => {
    if (!current) return;
    const { statements: these, starts } = current;
    batches.push({ get text() { return these.map((s) => s.sql).join(BATCH_SEPARATOR); }, statements: these, starts });
  };
  for (const statement of statements) {
    const start = current ? current.length + BATCH_SEPARATOR.length : 0;
    if (!current || start + statement.sql.length > maxChars) {
      close();
      current = { statements: [], starts: [], length: 0 };
    }
    const at = current.statements.length === 0 ? 0 : current.length + BATCH_SEPARATOR.length;
    current.statements.push(statement);
    current.starts.push(at);
    current.length = at + statement.sql.length;
  }
  close();
  return batches;
}

/** The statement of a batch at a 1-based character `position` of its text, and the file line there. */
export function statementAt(batch: StatementBatch, position: number): { statement: Statement; line: number } | null {
  if (!(position > 0)) return null;
  let low = 0;
  for (let high = batch.starts.length - 1; low < high;) {
    const mid = (low + high + 1) >> 1;
    if (batch.starts[mid] <= position - 1) low = mid;
    else high = mid - 1;
  }
  const statement = batch.statements[low];
  const within = statement.sql.slice(0, Math.max(0, position - 1 - batch.starts[low]));
  return { statement, line: statement.line + (within.match(/\n/g)?.length ?? 0) };
}

/**
 * `--new <name>`: the next file in the numbering the directory already uses,
 * so a project keeps one convention. The style is read from the newest id
 * that has one: 14-digit UTC timestamps (20240105093000, dbmate and Rails),
 * diesel's 2019-11-15-182353, Unix milliseconds (node-pg-migrate), or a
 * zero-padded sequence (0007) whose width is kept; the separator after the
 * number, the one between words and lower case are kept too.
 */
export interface NumberingStyle {
  kind: "sequence" | "timestamp" | "dashed-timestamp" | "unix-ms";
  /** Digits of a sequence number. */
  width: number;
  /** Between the number and the name. */
  separator: string;
  /** Between the words of the name. */
  wordSeparator: string;
  lowercase: boolean;
}

const NUMBERED_ID = /^(\d{4}-\d{2}-\d{2}-\d{6}|\d+)([_-])(.+)$/;

export function numberingStyle(ids: readonly string[]): NumberingStyle {
  const numbered = ids.map((id) => NUMBERED_ID.exec(id)).filter((m) => m !== null);
  const names = numbered.map((m) => m[3]);
  const count = (pattern: RegExp) => names.join("").match(pattern)?.length ?? 0;
  const style: NumberingStyle = {
    kind: "sequence",
    width: 4,
    separator: "_",
    wordSeparator: count(/-/g) > count(/_/g) ? "-" : "_",
    lowercase: names.every((name) => name === name.toLowerCase()),
  };
  const newest = numbered.at(-1);
  if (!newest) return style;
  const [, number, separator] = newest;
  style.separator = separator;
  if (number.includes("-")) style.kind = "dashed-timestamp";
  else if (number.length === 14 && /^(19|20)/.test(number)) style.kind = "timestamp";
  else if (number.length === 13 && /^1/.test(number)) style.kind = "unix-ms";
  else style.width = number.length;
  return style;
}

/** The moment a timestamp id stands for, so a new one can be made later than it. */
function timeOfNumber(number: string, kind: NumberingStyle["kind"]): number {
  if (kind === "unix-ms") return Number(number);
  const d = number.replace(/-/g, "");
  return Date.UTC(+d.slice(0, 4), +d.slice(4, 6) - 1, +d.slice(6, 8), +d.slice(8, 10), +d.slice(10, 12), +d.slice(12, 14));
}

/** The id of a new migration called `name`, after every id in `ids`, in their style. */
export function nextMigrationId(ids: readonly string[], name: string, now: Date): string {
  const words = name.replace(/\.sql$/, "").split(/[\s_-]+/).filter(Boolean);
  if (words.length === 0 || !words.every((w) => /^[\p{L}\p{N}]+$/u.test(w))) {
    throw new InputError(`--new "${name}": a migration name is words of letters and digits, like add_orders_status`);
  }
  const style = numberingStyle(ids);
  const numbers = ids.map((id) => NUMBERED_ID.exec(id)?.[1]).filter((n) => n !== undefined);
  const last = numbers.at(-1);
  let number: string;
  if (style.kind === "sequence") {
    // A loop, not Math.max(...numbers): spreading 100,000 arguments overflows the stack on some engines.
    const next = numbers.filter((n) => /^\d+$/.test(n)).reduce((max, n) => Math.max(max, Number(n)), 0) + 1;
    number = String(next).padStart(style.width, "0");
  } else {
    // Never before the newest id, even with a clock behind it: ids sort in byte order.
    const time = Math.max(now.getTime(), last ? timeOfNumber(last, style.kind) + (style.kind === "unix-ms" ? 1 : 1_000) : 0);
    const iso = new Date(time).toISOString(); // 2024-01-05T09:30:00.000Z
    number = style.kind === "unix-ms" ? String(time)
      : style.kind === "timestamp" ? iso.slice(0, 19).replace(/\D/g, "")
      : `${iso.slice(0, 10)}-${iso.slice(11, 19).replace(/:/g, "")}`;
  }
  const title = words.join(style.wordSeparator);
  return `${number}${style.separator}${style.lowercase ? title.toLowerCase() : title}`;
}

/**
 * The new file: front-matter with the default phase spelled out (and a
 * `depends:` line when the directory writes them: its newest file declares
 * one), an up section to fill in and a down section.
 */
export function newMigrationText(previous: Migration | undefined): string {
  return [
    "-- safe: after_deploy",
    "-- (before_deploy if the code running now keeps working with it; always if no code depends on it)",
    ...(previous?.dependsLine != null ? [`-- depends: ${previous.id}`] : []),
    "",
    "-- migrate:up",
    "",
    "",
    "-- migrate:down",
    "",
  ].join("\n");
}

// ============================================================================
// 3. The dependency graph and the consistency checks
// ============================================================================

const isApplied = (row: PlanRow | undefined): boolean => row?.appliedAt != null;

/**
 * A binary heap: the planners take "the smallest ready id" or "the newest
 * applied free migration" thousands of times, which a sorted array re-spliced
 * on every insert turns quadratic.
 */
class Heap<T> {
  private items: T[] = [];
  private readonly before: (a: T, b: T) => boolean;
  // No parameter properties: Node's type stripping refuses them.
  constructor(before: (a: T, b: T) => boolean) {
    this.before = before;
  }
  get size(): number {
    return this.items.length;
  }
  push(item: T): void {
    const items = this.items;
    items.push(item);
    for (let i = items.length - 1; i > 0;) {
      const parent = (i - 1) >> 1;
      if (!this.before(items[i], items[parent])) break;
      [items[i], items[parent]] = [items[parent], items[i]];
      i = parent;
    }
  }
  pop(): T | undefined {
    const items = this.items;
    const top = items[0];
    const last = items.pop();
    if (items.length === 0 || last === undefined) return top;
    items[0] = last;
    for (let i = 0; ;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let first = i;
      if (left < items.length && this.before(items[left], items[first])) first = left;
      if (right < items.length && this.before(items[right], items[first])) first = right;
      if (first === i) break;
      [items[i], items[first]] = [items[first], items[i]];
      i = first;
    }
    return top;
  }
}

/**
 * Orders migrations so every one comes after its dependencies, ties broken by
 * id. Dependencies outside `migrations` (already applied, or missing) are
 * ignored here; `consistencyProblems` reports the missing ones. Kahn's
 * algorithm with a heap of ready ids: n log n.
 */
export function dependencyOrder(migrations: readonly Migration[]): Migration[] {
  const byId = new Map(migrations.map((m) => [m.id, m]));
  const waitingOn = new Map<string, number>();
  const dependents = new Map<string, string[]>();
  for (const m of migrations) {
    const inSet = [...new Set(m.depends)].filter((d) => byId.has(d));
    waitingOn.set(m.id, inSet.length);
    for (const d of inSet) {
      const list = dependents.get(d);
      if (list) list.push(m.id);
      else dependents.set(d, [m.id]);
    }
  }
  const ready = new Heap<string>((a, b) => compareIds(a, b) < 0);
  for (const m of migrations) if (waitingOn.get(m.id) === 0) ready.push(m.id);
  const ordered: Migration[] = [];
  while (ready.size > 0) {
    const id = ready.pop()!;
    ordered.push(byId.get(id)!);
    for (const dependent of dependents.get(id) ?? []) {
      const left = waitingOn.get(dependent)! - 1;
      waitingOn.set(dependent, left);
      if (left === 0) ready.push(dependent);
    }
  }
  return ordered;
}

/**
 * One cycle among the migrations, as a list of ids ending where it started;
 * null if none. Depth-first with an explicit stack, so a chain of 10,000
 * migrations does not exhaust the call stack.
 */
export function findCycle(
  migrations: readonly Migration[],
  byId: ReadonlyMap<string, Migration> = new Map(migrations.map((m) => [m.id, m])),
): string[] | null {
  const state = new Map<string, "visiting" | "done">();
  for (const start of migrations) {
    if (state.has(start.id)) continue;
    const path: string[] = [start.id];
    const next: number[] = [0];
    state.set(start.id, "visiting");
    while (path.length > 0) {
      const id = path[path.length - 1];
      const depends = byId.get(id)!.depends;
      const i = next[next.length - 1]++;
      if (i >= depends.length) {
        state.set(id, "done");
        path.pop();
        next.pop();
        continue;
      }
      const d = depends[i];
      if (!byId.has(d) || state.get(d) === "done") continue;
      if (state.get(d) === "visiting") return [...path.slice(path.indexOf(d)), d];
      state.set(d, "visiting");
      path.push(d);
      next.push(0);
    }
  }
  return null;
}

/**
 * One mechanical edit that resolves a problem, so a person, an editor or a
 * script can apply it without interpreting prose: replace a line, insert one
 * (1-based; the new line becomes that line), or rename the file (a path in the
 * same directory).
 */
export type Edit =
  | { file: string; line: number; replace: string }
  | { file: string; line: number; insert: string }
  | { file: string; rename: string };

/**
 * A problem found before anything runs. `fix` is the one edit after which the
 * same command passes; null where only a person can decide (a cycle, drift).
 * Warnings are printed and do not fail --check.
 */
export interface CheckProblem {
  level: "error" | "warning";
  message: string;
  fix: Edit | null;
}

/** An InputError that carries its problems, so --json can hand the fixes to a script. */
export class CheckError extends InputError {
  readonly problems: CheckProblem[];
  constructor(problems: CheckProblem[]) {
    super(problems.map((p) => p.message).join("\n"));
    this.problems = problems;
  }
}

/** A `depends:` line for these ids; an id that a plain list would misread goes in quotes. */
export function dependsLineFor(ids: readonly string[]): string {
  const quote = (id: string) => (/[,"'\[\]]|^\s|\s$/.test(id) || id === "" ? `"${id.replace(/"/g, '""')}"` : id);
  return `-- depends: ${ids.length === 0 ? "[]" : ids.map(quote).join(", ")}`;
}

/** The edit that makes `m` declare exactly `ids`: its own depends: line replaced, or one inserted at the top. */
export function setDepends(m: Migration, ids: readonly string[]): Edit {
  const text = dependsLineFor(ids);
  return m.dependsLine === null ? { file: m.file, line: 1, insert: text } : { file: m.file, line: m.dependsLine, replace: text };
}

/** The edit in words, for the human output. */
export function describeEdit(edit: Edit): string {
  if ("rename" in edit) return `rename ${edit.file} -> ${edit.rename}`;
  if ("replace" in edit) return `in ${edit.file}, replace line ${edit.line} with: ${edit.replace}`;
  return `in ${edit.file}, insert as line ${edit.line}: ${edit.insert}`;
}

/**
 * The version at the start of an id: the digit groups before the name
 * (`0042` of `0042_add_orders`, `2024-01-01-000000` of
 * `2024-01-01-000000_a`, `20240105093000` of `20240105093000-import-x-2`).
 */
export const versionOf = (id: string): string | null => /^\d+(?:[-_]\d+(?=[-_.]|$))*/.exec(id)?.[0] ?? null;

/**
 * New names for files that must sort after everything known, in the
 * directory's own style: the version one past the highest (same width and
 * separators), then the file's own separator and name, case kept.
 */
export function newNames(migrations: readonly Migration[], history: readonly PlanRow[]): (m: Migration) => string {
  const digits = (v: string) => BigInt(v.replace(/\D/g, ""));
  // The highest version is looked for on the first rename: nearly every run renames nothing.
  let last: string | null | undefined;
  const highest = () => {
    const versions = [...migrations.map((m) => m.id), ...history.map((row) => row.id)].map(versionOf).filter((v): v is string => v !== null);
    return versions.reduce<string | null>((max, v) => (max === null || digits(v) > digits(max) ? v : max), null);
  };
  return (m) => {
    if (last === undefined) last = highest();
    const own = versionOf(m.id);
    const shape = last ?? own ?? "0000";
    const width = shape.replace(/\D/g, "").length;
    const next = String(digits(shape) + 1n).padStart(width, "0");
    // Put the separators back where the shape has them: 2024-01-01-000000 -> 2024-01-01-000001.
    let at = 0;
    const version = shape.replace(/\d+/g, (group, offset: number) => {
      const length = group.length + (offset === 0 ? next.length - width : 0); // 9999 + 1 widens the first group
      return next.slice(at, (at += length));
    });
    last = version;
    const name = own === null ? `_${m.id}` : m.id.slice(own.length);
    return join(dirname(m.file), `${version}${name}.sql`);
  };
}

/**
 * Everything that must stop a run before it starts: unknown dependencies,
 * cycles, applied migrations that depend on pending ones (typical after
 * merging branches), and applied migrations whose up SQL changed.
 * `rename` allocates new names; --check shares one with treeProblems so
 * two renames never collide.
 */
export function consistencyFindings(
  migrations: readonly Migration[],
  history: readonly PlanRow[],
  rename: (m: Migration) => string = newNames(migrations, history),
): CheckProblem[] {
  return consistencyFindingsIn(indexOf(migrations, history), rename);
}

/**
 * The files and the history rows by id, built once per plan, not once per
 * check: a no-op over 10,000 applied migrations runs every check on cold code,
 * where each Map lookup counts, so each file's row is looked up once here.
 */
interface PlanIndex<R extends PlanRow = PlanRow> {
  migrations: readonly Migration[];
  history: readonly R[];
  /** By id; built on first use (a no-op whose history lines up with its files needs neither map). */
  readonly files: ReadonlyMap<string, Migration>;
  readonly rows: ReadonlyMap<string, R>;
  /** The history row of each file, at the file's position in `migrations`. */
  rowOf: readonly (R | undefined)[];
  /** `migrations` is sorted by id (as readMigrations gives it), so no id comes twice. */
  inOrder: boolean;
  /** The history's rows are the first files' rows, in the same order: every row has its file. */
  linedUp: boolean;
}
function indexOf<R extends PlanRow>(migrations: readonly Migration[], history: readonly R[]): PlanIndex<R> {
  let files: Map<string, Migration> | null = null;
  let rows: Map<string, R> | null = null;
  const rowsById = () => (rows ??= new Map(history.map((row) => [row.id, row])));
  let inOrder = true;
  for (let i = 1; i < migrations.length && inOrder; i++) inOrder = compareIds(migrations[i - 1].id, migrations[i].id) < 0;
  // The history comes in byte order (collate "C"), the files' order: then each file's row is the one at its position.
  let linedUp = inOrder && history.length <= migrations.length;
  for (let i = 0; i < history.length && linedUp; i++) linedUp = history[i].id === migrations[i].id;
  const rowOf: (R | undefined)[] = linedUp ? history.slice() : migrations.map((m) => rowsById().get(m.id));
  rowOf.length = migrations.length;
  return {
    migrations, history, rowOf, inOrder, linedUp,
    get files() {
      return (files ??= new Map(migrations.map((m) => [m.id, m])));
    },
    get rows() {
      return rowsById();
    },
  };
}

/** `d`, a dependency of migrations[i], is the file just before it: its default dependency, known without a lookup. */
const isPreviousFile = (migrations: readonly Migration[], i: number, d: string): boolean => i > 0 && migrations[i - 1].id === d;

/**
 * Every dependency sorts before its dependent, so the dependencies only point
 * back in id order and cannot form a cycle: no search needed. Nearly always
 * true (a file's default dependency is the one before it).
 */
function dependsOnlyOnEarlierIds({ migrations, inOrder }: PlanIndex): boolean {
  for (let i = 0; i < migrations.length; i++) {
    const { id, depends } = migrations[i];
    for (let k = 0; k < depends.length; k++) {
      if (!(inOrder && isPreviousFile(migrations, i, depends[k])) && compareIds(depends[k], id) >= 0) return false;
    }
  }
  return true;
}

function consistencyFindingsIn(index: PlanIndex, rename: (m: Migration) => string = newNames(index.migrations, index.history)): CheckProblem[] {
  const { migrations, rowOf } = index;
  const problems: CheckProblem[] = [];
  const error = (message: string, fix: Edit | null = null) => problems.push({ level: "error", message, fix });

  for (let i = 0; i < migrations.length; i++) {
    const m = migrations[i];
    for (const d of m.depends) {
      if (isPreviousFile(migrations, i, d) || index.files.has(d) || isApplied(index.rows.get(d))) continue;
      const { files, rows } = index;
      const meant = closest(d, [...files.keys()].filter((id) => id !== m.id));
      const words = d.split(/\s+/);
      const spaced = words.length > 1 && words.every((w) => files.has(w.replace(/\.sql$/, "")) || isApplied(rows.get(w)));
      error(
        `${m.file}:${m.dependsLine ?? 1}: depends on "${d}", which is neither a file in the migrations directory nor applied` +
          (spaced ? ` — separate ids with commas (an id may contain spaces)` : meant ? ` — did you mean "${meant}"?` : ""),
        spaced ? setDepends(m, m.depends.flatMap((x) => (x === d ? words : [x])))
          : meant && m.dependsLine !== null ? setDepends(m, m.depends.map((x) => (x === d ? meant : x))) : null,
      );
    }
  }

  const cycle = dependsOnlyOnEarlierIds(index) ? null : findCycle(migrations, index.files);
  if (cycle) {
    error(
      `dependency cycle: ${cycle.join(" -> ")} — each waits for the next, so none can run; ` +
        `remove one of these "depends:" entries (${index.files.get(cycle[0])!.file})`,
    );
  }

  for (const [pending, appliedAfter] of pendingAmongApplied(index)) {
    const to = rename(pending);
    error(
      `inconsistent history: ${appliedAfter.id} is applied, but it depends on ${pending.id}, which is not` +
        (appliedAfter.depends.includes(pending.id) ? "" : ` (once the pending files between them are renamed)`) +
        `. This usually happens after merging branches that both added migrations. ` +
        `Rename ${pending.file} -> ${to} so it sorts after the applied migrations ` +
        `(if another database already applied it under its old name, roll it back there first)`,
      { file: pending.file, rename: to },
    );
  }
  if (problems.some((p) => p.fix && "rename" in p.fix)) {
    problems.push(...renamedReferences(migrations, problems, afterFixes(migrations, problems)));
  }
  for (let i = 0; i < migrations.length; i++) {
    const m = migrations[i];
    if (m.dependsLine === null || !isApplied(rowOf[i])) continue;
    for (const d of m.depends.filter((d) => index.files.has(d) && !isApplied(index.rows.get(d)))) {
      error(
        `${m.file}:${m.dependsLine}: inconsistent history: ${m.id} is applied, but its "depends:" names ${d}, which is not: ` +
          `was the line edited after ${m.id} was applied? Correct it (front-matter is not part of the checksum)`,
      );
    }
  }

  for (let i = 0; i < migrations.length; i++) {
    const m = migrations[i];
    const row = rowOf[i];
    if (isApplied(row) && row!.checksum !== null && row!.checksum !== m.checksum) {
      error(
        `${m.file}: the up SQL changed after the migration was applied (checksum ${row!.checksum!.slice(0, 12)} ` +
          `in the database, ${m.checksum.slice(0, 12)} on disk). Applied migrations are not re-run: ` +
          `undo the edit and put the change in a new migration, or, if the edit was on purpose and the schema ` +
          `already matches it, record it with --accept-changed ${m.id}. On a development database, ` +
          `--sync rolls it back and applies the file as it is now`,
      );
    }
  }
  return problems;
}

export function consistencyProblems(migrations: readonly Migration[], history: readonly PlanRow[]): string[] {
  return consistencyFindings(migrations, history).map((p) => p.message);
}

/**
 * The pending files an applied one takes as its default parent (the previous
 * id), each with that applied file. Walking back from the newest: renaming a
 * pending file makes the file before it the parent, so that one is listed too
 * if it is pending. Renaming exactly these makes every applied file's parent
 * applied, in one round.
 */
function pendingAmongApplied(index: PlanIndex): [Migration, Migration][] {
  const { migrations, rowOf, inOrder } = index;
  // readMigrations gives them in id order already; only another caller's list is sorted here.
  const sorted = inOrder ? migrations : [...migrations].sort((a, b) => compareIds(a.id, b.id));
  const found: [Migration, Migration][] = [];
  let child: Migration | null = null;
  for (let i = sorted.length - 1; i >= 0; i--) {
    const m = sorted[i];
    const applied = isApplied(inOrder ? rowOf[i] : index.rows.get(m.id));
    if (child && !applied) {
      found.push([m, child]);
      continue;
    }
    child = applied && m.dependsLine === null ? m : null;
  }
  return found.reverse();
}

// ============================================================================
// 4. The planner (pure: no I/O)
// ============================================================================

export interface PlanInput {
  migrations: readonly Migration[];
  history: readonly PlanRow[];
  now: Date;
  mode: Mode;
  phase: Phase;
}

export interface DelayedMigration {
  id: string;
  safe: Safe;
  /** When a delayed after_deploy becomes safe for --pre; null when it has no delay or was not seen yet. */
  dueAt: Date | null;
  delayMs: number | null;
  /** Pending dependencies that cannot run now either: why it waits even when due or safe; absent when none. */
  waitsFor?: string[];
}

export interface BlockedMigration {
  id: string;
  safe: Safe;
  /** Direct dependencies that are pending and not safe to run now. */
  blockedBy: string[];
}

export interface Plan {
  phase: Phase;
  mode: Mode;
  /** Pending migrations to apply now, in dependency order. */
  apply: Migration[];
  /** Pending migrations left for --all (after_deploy, or always/before_deploy waiting on one). */
  delayed: DelayedMigration[];
  blocked: BlockedMigration[];
  /** Delayed migrations with a delay that no --pre run has seen before: record them as detected. */
  detect: string[];
  /** strict mode found blocked migrations: apply nothing, record nothing. */
  refused: boolean;
  /** --all: delayed migrations it applies before their delay has passed (or before any --pre started it). */
  early: DelayedMigration[];
  /** Applied migrations with no file in this checkout. */
  missingFiles: string[];
  /** When refused: the edits that let this release through --pre (see preAdvice). */
  advice?: CheckProblem[];
}

export function pendingMigrations(migrations: readonly Migration[], history: readonly PlanRow[]): Migration[] {
  return pendingIn(indexOf(migrations, history));
}

const pendingIn = ({ migrations, rowOf }: PlanIndex): Migration[] => migrations.filter((_, i) => !isApplied(rowOf[i]));

/** Applied migrations with no file, in history order. */
function missingFiles(index: PlanIndex): string[] {
  if (index.linedUp) return [];
  return index.history.filter((row) => isApplied(row) && !index.files.has(row.id)).map((row) => row.id);
}

/**
 * The deploy-phase filter, after django-safemigrate 6.0. Pending migrations
 * only; applied ones satisfy dependencies. Throws InputError when the
 * migrations and history are inconsistent (see consistencyProblems).
 */
export function planRun({ migrations, history, now, mode, phase }: PlanInput): Plan {
  const index = indexOf(migrations, history);
  const problems = consistencyFindingsIn(index);
  if (problems.length > 0) throw new CheckError(problems);

  const pending = dependencyOrder(pendingIn(index));
  const plan: Plan = { phase, mode, apply: [], delayed: [], blocked: [], detect: [], refused: false, early: [], missingFiles: missingFiles(index) };
  const dueAt = (m: Migration): Date | null => {
    // Only a delayed migration looks its row up (the map of rows is built on first use).
    if (m.delayMs === null) return null;
    const detectedAt = index.rows.get(m.id)?.detectedAt;
    return detectedAt ? new Date(detectedAt.getTime() + m.delayMs) : null;
  };

  if (phase === "all" || mode === "disabled") {
    plan.apply = pending;
    plan.early = pending
      .filter((m) => m.delayMs !== null && m.safe === "after_deploy" && (dueAt(m) === null || dueAt(m)! > now))
      .map((m) => ({ id: m.id, safe: m.safe, dueAt: dueAt(m), delayMs: m.delayMs }));
    return plan;
  }

  // 1. An after_deploy whose delay has passed since a --pre run first saw it counts as always.
  const resolved = new Map<string, Safe>();
  for (const m of pending) {
    const due = dueAt(m);
    resolved.set(m.id, m.safe === "after_deploy" && due !== null && due <= now ? "always" : m.safe);
  }

  // 2. Split into ready / delayed / blocked.
  const ready = new Set(pending.filter((m) => resolved.get(m.id) !== "after_deploy").map((m) => m.id));
  const delayed = new Set(pending.filter((m) => resolved.get(m.id) === "after_deploy").map((m) => m.id));
  const blocked = new Set<string>();
  const unsafeNow = (id: string) => delayed.has(id) || blocked.has(id);

  // 3. A ready migration that depends on something unsafe now cannot run either.
  for (let moved = true; moved;) {
    moved = false;
    for (const m of pending) {
      if (!ready.has(m.id) || !m.depends.some(unsafeNow)) continue;
      ready.delete(m.id);
      (resolved.get(m.id) === "before_deploy" ? blocked : delayed).add(m.id);
      moved = true;
    }
  }
  // 4. A delayed migration behind a blocked one is blocked too.
  for (let moved = true; moved;) {
    moved = false;
    for (const m of pending) {
      if (delayed.has(m.id) && m.depends.some((d) => blocked.has(d))) {
        delayed.delete(m.id);
        blocked.add(m.id);
        moved = true;
      }
    }
  }

  for (const m of pending) {
    if (ready.has(m.id)) plan.apply.push(m);
    else if (blocked.has(m.id)) plan.blocked.push({ id: m.id, safe: m.safe, blockedBy: m.depends.filter(unsafeNow) });
    else {
      const waitsFor = m.depends.filter(unsafeNow);
      plan.delayed.push({ id: m.id, safe: m.safe, dueAt: dueAt(m), delayMs: m.delayMs, ...(waitsFor.length > 0 ? { waitsFor } : {}) });
    }
  }

  // 5. strict: anything blocked means nothing runs.
  if (mode === "strict" && plan.blocked.length > 0) {
    plan.refused = true;
    plan.apply = [];
    plan.advice = preAdvice(plan, pending);
    return plan;
  }
  // 6. Start the clock on delayed migrations the first time a --pre run sees them.
  const byId = new Map(pending.map((m) => [m.id, m]));
  plan.detect = plan.delayed
    .filter((d) => byId.get(d.id)!.delayMs !== null && !index.rows.get(d.id)?.detectedAt)
    .map((d) => d.id);
  return plan;
}

export type MigrationState = "applied" | "pending" | "changed" | "file missing";

export interface StatusRow {
  id: string;
  safe: string | null;
  state: MigrationState;
  appliedAt: Date | null;
  detectedAt: Date | null;
}

/** What --status reads of a history row (columns every version of the table has). */
export type StatusHistoryRow = Pick<HistoryRow, "id" | "checksum" | "safe" | "detectedAt" | "appliedAt">;

/**
 * Every migration known from the files or the history, in id order. The files
 * come sorted and unique from readMigrations: when no applied row lacks its
 * file, that order is the answer and nothing is sorted.
 */
export function migrationStatus(migrations: readonly Migration[], history: readonly StatusHistoryRow[]): StatusRow[] {
  const index = indexOf(migrations, history);
  if (index.linedUp) return migrations.map((m, i) => statusRow(m.id, m, index.rowOf[i]));
  const { files, rows } = index;
  const ids = [...new Set([...files.keys(), ...history.filter(isApplied).map((row) => row.id)])].sort(compareIds);
  return ids.map((id) => statusRow(id, files.get(id), rows.get(id)));
}

function statusRow(id: string, m: Migration | undefined, row: StatusHistoryRow | undefined): StatusRow {
  const state: MigrationState = !m
    ? "file missing"
    : !isApplied(row)
    ? "pending"
    : row!.checksum !== null && row!.checksum !== m.checksum
    ? "changed"
    : "applied";
  return {
    id,
    safe: m?.safe ?? row?.safe ?? null,
    state,
    appliedAt: row?.appliedAt ?? null,
    detectedAt: row?.detectedAt ?? null,
  };
}

// ---- Rollback, sync and --check (pure) ----------------------------------------

/**
 * Where the down SQL of a step comes from. The file is the truth while its up
 * SQL is the one that was applied (so a down fixed in the file is what runs);
 * the copy stored at apply time is for a file that is gone or whose up changed.
 */
export type DownOrigin = "file" | "stored";

/** One applied migration to undo, with the down SQL that will undo it. */
export interface RevertStep {
  id: string;
  /** Where the down SQL comes from, for messages: the file, or `safemigrate_history[<id>]` for the copy stored when it was applied. */
  source: string;
  origin: DownOrigin;
  down: SqlSection | null;
  /** A down section with no SQL (empty, or only comments like `-- Nothing`): irreversible on purpose. */
  irreversible: boolean;
  /** Why the stored copy was used, or that the file's down differs from it; null when there is nothing to say. */
  note: string | null;
}

/** True when SQL holds no statement: only whitespace, comments and semicolons. */
export function hasNoStatements(sql: string): boolean {
  return sql.replace(/\/\*[\s\S]*?\*\//g, "").replace(/--[^\n]*/g, "").replace(/[\s;]/g, "") === "";
}

/**
 * The down SQL to undo an applied migration: the file's while its up SQL is
 * the applied one (a fixed down is used), else the copy stored in the history
 * when it was applied (the file is gone on this branch, or its up changed).
 */
export function downFor(row: HistoryRow, file: Migration | undefined): Omit<RevertStep, "id"> {
  const stored = row.downSql === null ? null : parseMigration(row.id, `${HISTORY_TABLE}[${row.id}]`, row.downSql).down;
  const step = (origin: DownOrigin, down: SqlSection | null, note: string | null) => ({
    source: origin === "file" ? file!.file : `${HISTORY_TABLE}[${row.id}]`,
    origin,
    down,
    irreversible: down !== null && hasNoStatements(down.sql),
    note,
  });
  const upUnchanged = file !== undefined && (row.checksum === null || row.checksum === file.checksum);
  if (upUnchanged) {
    const differs = row.downSql !== null && row.downSql !== (file.down?.raw ?? null);
    return step("file", file.down, differs ? "which differs from the copy stored when it was applied (--accept-changed refreshes that copy)" : null);
  }
  if (stored) {
    return step("stored", stored, file ? "the file's up SQL changed since it was applied" : "its file is gone");
  }
  // Applied without a down section: the changed file's down is all there is.
  return file ? step("file", file.down, null) : { ...step("stored", null, "its file is gone"), source: row.id };
}

/** Dependencies of an applied migration: from its file if present, else as recorded when applied. */
function dependenciesOf(id: string, files: Map<string, Migration>, rows: Map<string, HistoryRow>): string[] {
  return files.get(id)?.depends ?? rows.get(id)?.depends ?? [];
}

/**
 * The applied migrations to undo so that `roots` can be undone: the roots and
 * every applied migration that depends on one of them, transitively, newest first.
 */
export function revertSteps(
  roots: Iterable<string>,
  migrations: readonly Migration[],
  history: readonly HistoryRow[],
): RevertStep[] {
  const files = new Map(migrations.map((m) => [m.id, m]));
  const rows = new Map(history.filter(isApplied).map((row) => [row.id, row]));
  // Each applied migration's applied dependents, built once: the walks below are linear.
  const dependents = new Map<string, string[]>();
  for (const id of rows.keys()) {
    for (const d of new Set(dependenciesOf(id, files, rows))) {
      if (!rows.has(d)) continue;
      const list = dependents.get(d);
      if (list) list.push(id);
      else dependents.set(d, [id]);
    }
  }
  const undo = new Set(roots);
  for (const queue = [...undo]; queue.length > 0;) {
    for (const dependent of dependents.get(queue.pop()!) ?? []) {
      if (!undo.has(dependent)) {
        undo.add(dependent);
        queue.push(dependent);
      }
    }
  }
  // Dependents before what they depend on; among the free ones, the latest applied first.
  const waitingFor = new Map([...undo].map((id) => [id, (dependents.get(id) ?? []).filter((d) => undo.has(d)).length]));
  const free = new Heap<HistoryRow>(newerThan);
  for (const [id, count] of waitingFor) if (count === 0 && rows.has(id)) free.push(rows.get(id)!);
  const steps: RevertStep[] = [];
  const left = new Set([...undo].filter((id) => rows.has(id)));
  while (left.size > 0) {
    // A cycle among applied migrations leaves nothing free: take the first left, as before.
    const next = free.pop() ?? rows.get(left.values().next().value!)!;
    if (!left.delete(next.id)) continue;
    steps.push({ id: next.id, ...downFor(next, files.get(next.id)) });
    for (const d of new Set(dependenciesOf(next.id, files, rows))) {
      if (!left.has(d)) continue;
      const count = waitingFor.get(d)! - 1;
      waitingFor.set(d, count);
      if (count === 0) free.push(rows.get(d)!);
    }
  }
  return steps;
}

/** Applied later; ties (same millisecond, as --baseline records) by id, last first. */
const newerThan = (a: HistoryRow, b: HistoryRow): boolean =>
  (b.appliedAt!.getTime() - a.appliedAt!.getTime() || compareIds(b.id, a.id)) < 0;

/** Latest applied first; ties (same millisecond, as --baseline records) by id, last first. */
function newestFirst(rows: HistoryRow[]): HistoryRow[] {
  return [...rows].sort((a, b) => b.appliedAt!.getTime() - a.appliedAt!.getTime() || compareIds(b.id, a.id));
}

/** Refuses, before anything changes, steps that cannot be undone: no down section, or one irreversible on purpose. */
function refuseUnrevertable(steps: RevertStep[], what: string): void {
  const missing = steps.filter((s) => s.down === null);
  const irreversible = steps.filter((s) => s.irreversible);
  if (missing.length === 0 && irreversible.length === 0) return;
  const named = (list: RevertStep[]) => list.map((s) => `${s.id} (${s.source})`).join(", ");
  const reasons = [
    missing.length > 0 &&
    `${named(missing)} ${missing.length === 1 ? "has" : "have"} no "-- migrate:down" section: add one to the file ` +
      `(the down SQL is not part of the checksum, so that is not drift), or undo it by hand and delete its row from ${HISTORY_TABLE}`,
    irreversible.length > 0 &&
    `${named(irreversible)} ${irreversible.length === 1 ? "is" : "are"} irreversible: the down section has no SQL, ` +
      `only comments, which marks a migration that cannot be undone. Roll back to a later migration instead, ` +
      `or write the down SQL in the file`,
  ].filter(Boolean);
  throw new InputError(`cannot ${what}: ${reasons.join("; ")}. Nothing was changed.`);
}

/** `--rollback <id>` (or the most recently applied with `last`): what to undo, newest first. */
export function rollbackPlan(
  target: string | { last: true },
  migrations: readonly Migration[],
  history: readonly HistoryRow[],
): RevertStep[] {
  const applied = history.filter(isApplied);
  let id: string;
  if (typeof target === "string") {
    id = target.replace(/\.sql$/, "");
    if (!applied.some((row) => row.id === id)) {
      const known = [...migrations.map((m) => m.id), ...applied.map((row) => row.id)];
      const meant = known.includes(id) ? null : known.find((k) => k.startsWith(`${id}_`)) ?? closest(id, known);
      // "--rollback 1" is how some tools say "one step".
      const steps = !meant && /^\d+$/.test(id) ? ` — --rollback takes a migration id; --rollback --last undoes the most recent` : "";
      throw new InputError(
        known.includes(id) ? `${id} is not applied; there is nothing to roll back`
          : `no migration "${id}" is known${meant ? ` — did you mean "${meant}"?` : steps}`,
      );
    }
  } else {
    if (applied.length === 0) throw new InputError("no migration is applied; there is nothing to roll back");
    // The latest applied among those no other applied migration depends on.
    const files = new Map(migrations.map((m) => [m.id, m]));
    const rows = new Map(applied.map((row) => [row.id, row]));
    const dependedOn = new Set(applied.flatMap((row) => dependenciesOf(row.id, files, rows)));
    id = newestFirst(applied.filter((row) => !dependedOn.has(row.id)))[0]?.id ?? newestFirst(applied)[0].id;
  }
  const steps = revertSteps([id], migrations, history);
  refuseUnrevertable(steps, `roll back ${id}`);
  return steps;
}

export interface SyncPlan {
  revert: RevertStep[];
  apply: Migration[];
}

/**
 * `--sync`: make the database match this branch's migrations directory. Undo
 * the applied migrations that are gone from the directory or whose up SQL
 * changed (and what depends on them), then apply everything pending.
 */
export function syncPlan(migrations: readonly Migration[], history: readonly HistoryRow[], now: Date): SyncPlan {
  const files = new Map(migrations.map((m) => [m.id, m]));
  const diverged = history
    .filter(isApplied)
    .filter((row) => !files.has(row.id) || (row.checksum !== null && row.checksum !== files.get(row.id)!.checksum))
    .map((row) => row.id);
  const revert = revertSteps(diverged, migrations, history);
  refuseUnrevertable(revert, "switch the database to this branch");
  const undone = new Set(revert.map((s) => s.id));
  const remaining = history.filter((row) => !undone.has(row.id));
  return { revert, apply: planRun({ migrations, history: remaining, now, mode: "strict", phase: "all" }).apply };
}

/** Where the files came from in version control (see gitOrigins); null outside a checkout. */
export interface FileOrigins {
  /** true when the two files were added on different branches: neither adding commit contains the other. */
  concurrent(a: Migration, b: Migration): boolean;
}

export interface TreeContext {
  history?: readonly HistoryRow[];
  /** How to tell a merge from a batch; null (not a checkout) turns those findings into warnings. */
  origins?: FileOrigins | null;
  rename?: (m: Migration) => string;
}

/**
 * `--check` on the files: what a merge of two branches breaks. Files sharing
 * a version are a clash only when two branches each added one (files added
 * together, or one after the other on one branch, run in id order by
 * design); separate leaves likewise, and never when every leaf declares its
 * own `depends:` (the heads of a deliberate DAG). Outside a git checkout
 * both are warnings, since only the history can tell. Each step looks at the
 * files as the previous steps' fixes leave them, so all fixes apply in one round.
 */
export function treeProblems(migrations: readonly Migration[], context: TreeContext = {}): CheckProblem[] {
  const history = context.history ?? [];
  const rows = new Map(history.map((row) => [row.id, row]));
  const origins = context.origins ?? null;
  const clashes = versionClashes(migrations, rows, origins, context.rename ?? newNames(migrations, history));
  const renamed = afterFixes(migrations, clashes);
  const references = renamedReferences(migrations, clashes, renamed);
  return [...clashes, ...references, ...separateLeaves(afterFixes(renamed, references), rows, origins)];
}

/** Files sharing a version that two branches each added, each with its rename. */
function versionClashes(
  migrations: readonly Migration[],
  rows: Map<string, HistoryRow>,
  origins: FileOrigins | null,
  rename: (m: Migration) => string,
): CheckProblem[] {
  const applied = (m: Migration) => isApplied(rows.get(m.id));
  const problems: CheckProblem[] = [];
  const byVersion = new Map<string, Migration[]>();
  for (const m of migrations) {
    const version = versionOf(m.id);
    if (version !== null) byVersion.set(version, [...(byVersion.get(version) ?? []), m]);
  }
  for (const [version, same] of byVersion) {
    if (same.length < 2 || same.slice(1).every((m) => m.dependsLine !== null)) continue;
    if (!origins) {
      const target = same.findLast((m) => !applied(m));
      if (!target) continue;
      const to = rename(target);
      problems.push({
        level: "warning",
        message: `${same.map((x) => x.id).join(", ")} share the version ${version}. This is not a git checkout, so safemigrate cannot ` +
          `tell files added together (fine: they run in id order) from two branches that each added one. If two branches ` +
          `did, rename the one not applied anywhere yet so it sorts last: ${target.file} -> ${to}`,
        fix: { file: target.file, rename: to },
      });
      continue;
    }
    // Applied files keep their names, and so do files that declare their order; each
    // pending one in the default order that another branch added is renamed.
    const fixed = (m: Migration) => applied(m) || m.dependsLine !== null;
    const kept: Migration[] = [];
    for (const m of [...same.filter(fixed), ...same.filter((m) => !fixed(m))]) {
      const other = fixed(m) ? undefined : kept.find((k) => origins.concurrent(k, m));
      if (!other) {
        kept.push(m);
        continue;
      }
      const to = rename(m);
      problems.push({
        level: "error",
        message: `${other.id} and ${m.id} share the version ${version} and were added on different branches: two branches both ` +
          `added a migration. Rename the one not applied anywhere yet so it sorts last: ${m.file} -> ${to}`,
        fix: { file: m.file, rename: to },
      });
    }
  }
  return problems;
}

/**
 * The migrations as they are once these fixes are applied: renamed files
 * take their new ids, edited `depends:` lines their new lists, and every
 * file without one its new default parent (the previous id).
 */
export function afterFixes(migrations: readonly Migration[], problems: readonly CheckProblem[]): Migration[] {
  const byFile = new Map(migrations.map((m) => [m.file, m]));
  for (const { fix } of problems) {
    const m = fix && byFile.get(fix.file);
    if (!fix || !m) continue;
    byFile.delete(fix.file);
    const edited: Migration = "rename" in fix
      ? { ...m, file: fix.rename, id: basename(fix.rename, ".sql") }
      : { ...m, depends: dependsList(("replace" in fix ? fix.replace : fix.insert).replace(/^--\s*depends:/, ""), fix.file), dependsLine: fix.line };
    byFile.set(edited.file, edited);
  }
  const sorted = [...byFile.values()].sort((a, b) => compareIds(a.id, b.id));
  return sorted.map((m, i) => (m.dependsLine !== null ? m : { ...m, depends: i === 0 ? [] : [sorted[i - 1].id] }));
}

/** A `depends:` line naming a file that a rename moves: the same line with the new id. */
export function renamedReferences(before: readonly Migration[], renames: readonly CheckProblem[], after: readonly Migration[]): CheckProblem[] {
  const byFile = new Map(before.map((m) => [m.file, m.id]));
  const newId = new Map(renames.flatMap(({ fix }) => (fix && "rename" in fix ? [[byFile.get(fix.file)!, basename(fix.rename, ".sql")]] : [])));
  return after.filter((m) => m.dependsLine !== null && m.depends.some((d) => newId.has(d))).map((m) => {
    const fix = setDepends(m, m.depends.map((d) => newId.get(d) ?? d));
    return { level: "error", message: `${m.file}:${m.dependsLine}: names ${m.depends.filter((d) => newId.has(d)).join(", ")}, which a rename above moves: ${describeEdit(fix)}`, fix };
  });
}

/** Groups of leaves per connected part of the graph that nothing orders, each with the one line that joins them. */
function separateLeaves(migrations: readonly Migration[], rows: Map<string, HistoryRow>, origins: FileOrigins | null): CheckProblem[] {
  const byId = new Map(migrations.map((m) => [m.id, m]));
  const parent = new Map(migrations.map((m) => [m.id, m.id]));
  const find = (id: string): string => {
    let root = id;
    while (parent.get(root) !== root) root = parent.get(root)!;
    for (let at = id; at !== root;) {
      const up = parent.get(at)!;
      parent.set(at, root);
      at = up;
    }
    return root;
  };
  const dependedOn = new Set<string>();
  for (const m of migrations) {
    for (const d of m.depends) {
      if (!byId.has(d)) continue;
      dependedOn.add(d);
      parent.set(find(m.id), find(d));
    }
  }
  const groups = new Map<string, Migration[]>();
  for (const m of migrations) {
    if (!dependedOn.has(m.id)) groups.set(find(m.id), [...(groups.get(find(m.id)) ?? []), m]);
  }
  const problems: CheckProblem[] = [];
  for (const leaves of groups.values()) {
    if (leaves.length < 2 || leaves.every((m) => m.dependsLine !== null)) continue;
    if (origins && !leaves.some((a, i) => leaves.slice(i + 1).some((b) => origins.concurrent(a, b)))) continue;
    // The newest pending leaf lists the others and keeps its own parents: then it is the only leaf.
    const pending = leaves.filter((m) => !isApplied(rows.get(m.id)));
    const target = (pending.length > 0 ? pending : leaves).reduce((a, b) => (compareIds(a.id, b.id) > 0 ? a : b));
    const others = leaves.filter((m) => m !== target).map((m) => m.id);
    const fix = setDepends(target, [...new Set([...target.depends, ...others])]);
    problems.push({
      level: origins ? "error" : "warning",
      message: `${leaves.map((m) => m.id).join(", ")} are separate leaves of one dependency chain: nothing orders them, which ` +
        `usually means branches each added migrations on the same parent` +
        (origins ? "" : " (this is not a git checkout, so safemigrate cannot tell)") +
        `. Make ${target.id} depend on the other leaves as well as its own parent: ${describeEdit(fix)}`,
      fix,
    });
  }
  return problems;
}

/**
 * What --pre would refuse (strict) or leave for --all: a before_deploy or
 * always migration that waits behind a pending after_deploy one. When that is
 * only the default order (no `depends:` line), the fix is the line that
 * depends on what lies past the after_deploy ones instead; the after_deploy
 * ones then wait for --all on their own.
 */
export function preAdvice(plan: Plan, pending: readonly Migration[]): CheckProblem[] {
  const byId = new Map(pending.map((m) => [m.id, m]));
  const held = new Set([...plan.delayed.map((d) => d.id), ...plan.blocked.map((b) => b.id)]);
  const afterDeploy = (id: string) => held.has(id) && byId.get(id)?.safe === "after_deploy";
  const past = new Map<string, string[]>();
  const pastAfterDeploy = (id: string): string[] => {
    if (!past.has(id)) past.set(id, [...new Set(byId.get(id)!.depends.flatMap((d) => (afterDeploy(d) ? pastAfterDeploy(d) : [d])))]);
    return past.get(id)!;
  };
  const problems: CheckProblem[] = [];
  for (const m of pending) {
    const behind = m.depends.filter(afterDeploy);
    if (m.safe === "after_deploy" || !held.has(m.id) || behind.length === 0) continue;
    const effect = m.safe === "before_deploy" ? "--pre refuses the release (strict mode) or skips it" : "--pre leaves it for --all";
    if (m.dependsLine !== null) {
      problems.push({
        level: "warning",
        message: `${m.file}:${m.dependsLine}: ${m.id} is ${m.safe} but declares "depends:" on ${behind.join(", ")} (after_deploy, ` +
          `not applied), so ${effect}. Ship ${behind.join(", ")} in an earlier release, or drop it from the line if ${m.id} does not need it`,
        fix: null,
      });
      continue;
    }
    const fix = setDepends(m, [...new Set(m.depends.flatMap((d) => (afterDeploy(d) ? pastAfterDeploy(d) : [d])))]);
    problems.push({
      level: "warning",
      message: `${m.id} is ${m.safe} but comes after ${behind.join(", ")} (after_deploy, not applied) only by the default order, ` +
        `so ${effect}. If it does not need ${behind.join(", ")}: ${describeEdit(fix)} — then --pre applies it before the deploy ` +
        `and --all applies ${behind.join(", ")} after it`,
      fix,
    });
  }
  return problems;
}

// ============================================================================
// 5. Deploy-safety analysis (the parse tree of each migration, checked against its phase)
// ============================================================================

/**
 * The analysis reads each migration's parse tree in dependency order, carrying
 * what earlier migrations declared (column types, tables, functions, indexes),
 * and turns each hazardous statement into a finding about one object. Whether
 * a finding stops a run is decided last, by one small function (`gateReason`)
 * against what the live database holds before the run: an object the run
 * itself creates, or a table small enough that a lock on it is brief, cannot
 * stop a run, so a fresh database takes a project's whole history. Without a
 * database (`--lint`), every table is assumed live and large.
 *
 * Rule kinds: phase rules (old code must keep working after a before_deploy or
 * always migration, so contraction belongs in after_deploy); lock rules (a
 * strong lock held on an existing table for long); effects (the statement does
 * more, or other, than it says: TRUNCATE ... CASCADE empties other tables, a
 * name over 63 bytes is cut); failures (the statement cannot run as written);
 * waiver problems; information (never gating).
 */
export interface Rule {
  kind: "phase" | "lock" | "effect" | "failure" | "waiver" | "info";
  /** How to do the same thing safely; the message has already said why. */
  fix: string;
}

const EXPAND_CONTRACT = "expand/contract: add the new thing now, backfill, switch the code, and remove the old thing in an after_deploy migration";

export const RULES = {
  "drop-table": { kind: "phase", fix: `stop using the table in the code, deploy, then drop it in an after_deploy migration (${EXPAND_CONTRACT})` },
  "drop-column": { kind: "phase", fix: `deploy code that no longer reads or writes the column first, then drop it in an after_deploy migration (${EXPAND_CONTRACT})` },
  "drop-view": { kind: "phase", fix: "stop using the view in the code, deploy, then drop it in an after_deploy migration" },
  "drop-function": { kind: "phase", fix: "stop calling the function, deploy, then drop it in an after_deploy migration" },
  "rename-table": { kind: "phase", fix: `keep both names for one release: create a view under the new name (or the new table and backfill), switch the code, drop the old name after the deploy (${EXPAND_CONTRACT})` },
  "rename-column": { kind: "phase", fix: `add the new column, backfill it, write both from the code, switch reads, drop the old column in an after_deploy migration (${EXPAND_CONTRACT})` },
  "change-column-type": { kind: "phase", fix: `add a column of the new type, backfill, switch the code, drop the old column after the deploy (${EXPAND_CONTRACT})` },
  "add-not-null": { kind: "phase", fix: "set NOT NULL in an after_deploy migration, once the deployed code always writes the column (or give the column a DEFAULT in the same migration)" },
  "not-null-column-without-default": { kind: "phase", fix: "give it a DEFAULT, or add it nullable now and set NOT NULL after the deploy" },
  "drop-default": { kind: "phase", fix: "drop the default in an after_deploy migration" },
  "drop-not-null": { kind: "phase", fix: "first ship code that reads NULL from the column safely, then drop NOT NULL (waive this finding, naming that release), and only then write NULLs" },
  "index-not-concurrently": { kind: "lock", fix: "use CREATE [UNIQUE] INDEX CONCURRENTLY in a migration with \"-- transaction: false\"; for a constraint, then ADD CONSTRAINT ... UNIQUE/PRIMARY KEY USING INDEX" },
  "drop-index-not-concurrently": { kind: "lock", fix: "use DROP INDEX CONCURRENTLY in a migration with \"-- transaction: false\"" },
  "concurrently-in-transaction": { kind: "failure", fix: "add \"-- transaction: false\" to the front-matter (of the down section, for a down)" },
  "foreign-key-not-valid": { kind: "lock", fix: "add the foreign key NOT VALID, then ALTER TABLE ... VALIDATE CONSTRAINT in a later migration, or later in a \"transaction: false\" one" },
  "check-not-valid": { kind: "lock", fix: "add the CHECK constraint NOT VALID, then VALIDATE CONSTRAINT it in a later migration, or later in a \"transaction: false\" one" },
  "set-not-null-scan": { kind: "lock", fix: "first ADD CONSTRAINT ... CHECK (col IS NOT NULL) NOT VALID and VALIDATE CONSTRAINT it; then SET NOT NULL skips the scan (PostgreSQL 12+) and the check can be dropped" },
  "volatile-default": { kind: "lock", fix: "add the column without a default (or with a constant one), then SET DEFAULT, and backfill existing rows in batches" },
  "type-change-rewrite": { kind: "lock", fix: `add a new column of the new type and backfill it (${EXPAND_CONTRACT}); only widening varchar or numeric, varchar -> text, and timestamp -> timestamptz with the session time zone UTC are free` },
  "backfill-under-lock": { kind: "lock", fix: "put the ALTER TABLE and the UPDATE/DELETE in separate migrations (or a \"transaction: false\" one) and backfill in batches" },
  "vacuum-full": { kind: "lock", fix: "use plain VACUUM, or pg_repack outside the migration" },
  "cluster": { kind: "lock", fix: "use pg_repack outside the migration" },
  "reindex-not-concurrently": { kind: "lock", fix: "use REINDEX ... CONCURRENTLY in a migration with \"-- transaction: false\"" },
  "lock-table": { kind: "lock", fix: "remove it and let each statement take the lock it needs" },
  "truncate-cascade": { kind: "effect", fix: "TRUNCATE the tables you mean to empty by name, without CASCADE: then a table still referencing them stops it with an error instead of being emptied" },
  "identifier-too-long": { kind: "effect", fix: "choose a name of at most 63 bytes" },
  "transaction-control": { kind: "lock", fix: "remove them; for work that must commit in steps, use \"-- transaction: false\" (or one migration per step)" },
  "syntax-error": { kind: "failure", fix: "correct the SQL; a down section is only run during a rollback, often in an incident" },
  "dynamic-sql": { kind: "info", fix: "review the statements it runs by hand, or write them as plain SQL so they can be checked" },
  "phase-suggestion": { kind: "info", fix: "mark it \"-- safe: before_deploy\" so it ships with the release step" },
  "waiver-without-reason": { kind: "waiver", fix: "say why: -- safemigrate-ignore: <rule> -- <reason>" },
  "unknown-rule": { kind: "waiver", fix: "name a rule from the README's list of rules" },
} satisfies Record<string, Rule>;

export type RuleId = keyof typeof RULES;

export interface Finding {
  rule: RuleId;
  migration: string;
  file: string;
  line: number;
  column: number;
  message: string;
  fix: string;
  /** The reason from the waiver, when one covers the finding. */
  waived: string | null;
  /** The table, view, index or function it is about ("users", "app.users"); null for the migration as a whole. */
  subject: string | null;
  /** Why this finding does not stop a run (information, or what the live database holds); null when it does. */
  notGating: string | null;
}

/** A finding stops `--pre`/`--all` (and makes `--lint` exit 2) when it is neither waived nor judged harmless here. */
export const isGating = (f: Finding): boolean => f.waived === null && f.notGating === null;

// The parse tree is libpg-query's JSON; these are the few shapes the rules read.
type Node = Record<string, any>;
interface RangeVar {
  schemaname?: string;
  relname: string;
  location?: number;
}

/** Functions whose default value differs row by row, so ADD COLUMN ... DEFAULT f() rewrites the table. */
const VOLATILE_FUNCTIONS = new Set([
  "random", "gen_random_uuid", "uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v4", "uuidv4", "uuidv7",
  "clock_timestamp", "timeofday", "nextval", "txid_current", "statement_timestamp", "setseed",
]);
const SERIAL_TYPES = new Set(["serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"]);
/** The parser's names for types people spell otherwise; messages show the spelling people write. */
const TYPE_SPELLING: Record<string, string> = {
  int2: "smallint", int4: "integer", int8: "bigint", float4: "real", float8: "double precision", bool: "boolean",
  bpchar: "char", timestamp: "timestamp", timestamptz: "timestamptz", varbit: "varbit",
};
/** Session time zones in which timestamp and timestamptz have the same bytes. */
const UTC_ZONES = /^(utc|etc\/utc|gmt|etc\/gmt|z|zulu|universal|etc\/universal|utc0|gmt0)$/i;
/** Words that make a DO block or a dynamic EXECUTE change the schema. */
const DDL_WORDS = /\b(create|alter|drop|truncate|reindex|cluster|vacuum|lock)\s/i;

const nameOf = (names: Node[] | undefined): string => (names ?? []).map((n) => n.String?.sval).filter((n) => n && n !== "public" && n !== "pg_catalog").join(".");
const tableKey = (rel: RangeVar): string => (rel.schemaname && rel.schemaname !== "public" ? `${rel.schemaname}.${rel.relname}` : rel.relname);
const quoted = (rel: RangeVar): string => (rel.schemaname ? `${rel.schemaname}.${rel.relname}` : rel.relname);
const typeNameOf = (typeName: Node | undefined): string =>
  (typeName?.names ?? []).map((n: Node) => n.String?.sval).filter((n: string) => n !== "pg_catalog").join(".");

/** Every FuncCall name inside an expression tree. */
function functionsIn(node: unknown, into: string[] = []): string[] {
  if (Array.isArray(node)) for (const item of node) functionsIn(item, into);
  else if (node && typeof node === "object") {
    const call = (node as Node).FuncCall;
    if (call) into.push(nameOf(call.funcname));
    for (const value of Object.values(node)) functionsIn(value, into);
  }
  return into;
}

/** A column type as written: `varchar` with modifiers [255], `numeric` with [10, 2]. */
interface ColumnType {
  name: string;
  modifiers: number[];
  array: boolean;
}

/** `varchar(200)`, `numeric(10,2)`, `integer[]`: the type as the migration spelled it. */
export const formatType = (t: ColumnType): string =>
  `${TYPE_SPELLING[t.name] ?? t.name}${t.modifiers.length ? `(${t.modifiers.join(",")})` : ""}${t.array ? "[]" : ""}`;

/** State the rules carry from one migration to the next, in dependency order. */
export interface AnalysisState {
  /** CHECK (col IS NOT NULL) constraints by "table.constraint" -> column. */
  notNullChecks: Map<string, string>;
  /** "table.column" pairs with a validated NOT NULL check: SET NOT NULL on them skips the scan. */
  provenNotNull: Set<string>;
  /** Column types by "table.column", as the migrations declared them, to tell a widening from a rewrite. */
  columnTypes: Map<string, ColumnType>;
  /** Tables the migrations created, so CREATE TABLE IF NOT EXISTS of a table no migration made creates it. */
  tables: Set<string>;
  /** Functions the migrations created: trigger functions are never called by the code; VOLATILE ones rewrite as defaults. */
  functions: Map<string, { trigger: boolean; volatile: boolean }>;
  /** Index name -> the table it is on. */
  indexes: Map<string, string>;
  /** Table -> the tables with a foreign key to it, as the migrations declared them: TRUNCATE ... CASCADE empties those too. */
  references: Map<string, Set<string>>;
  /** Tables the migrations dropped (and did not create again): the database's foreign keys from them are gone. */
  droppedTables: Set<string>;
  /** Names over 63 bytes, by the relation name PostgreSQL cut them to ("schema.name") -> the name as written and where. */
  longNames: Map<string, { name: string; migration: string }>;
}

export const newAnalysisState = (): AnalysisState => ({
  notNullChecks: new Map(), provenNotNull: new Set(), columnTypes: new Map(), tables: new Set(), functions: new Map(), indexes: new Map(),
  references: new Map(), droppedTables: new Set(), longNames: new Map(),
});

interface RawFinding {
  rule: RuleId;
  message: string;
  /** Byte offset into the statement's SQL section, for line:column. */
  location: number;
  subject: string | null;
}

const columnTypeOf = (typeName: Node | undefined): ColumnType => ({
  name: typeNameOf(typeName),
  modifiers: (typeName?.typmods ?? []).map((m: Node) => m.A_Const?.ival?.ival ?? NaN),
  array: (typeName?.arrayBounds ?? []).length > 0,
});

/**
 * A type change that keeps every value valid and needs no rewrite (binary
 * coercible): widening varchar or numeric, varchar to text, and timestamp to
 * timestamptz when the session time zone is UTC (PostgreSQL 12+). With `from`
 * unknown (the table predates the migrations) only varchar/text targets pass.
 */
function isFreeWidening(from: ColumnType | undefined, to: ColumnType, utc: boolean): boolean {
  const textual = (t: ColumnType) => t.name === "text" || t.name === "varchar";
  if (!from) return textual(to) && to.modifiers.length === 0 && !to.array;
  if (from.array !== to.array) return false;
  if (textual(from) && to.name === "text") return true;
  if (from.name === "varchar" && to.name === "varchar") {
    return to.modifiers.length === 0 || (from.modifiers.length > 0 && to.modifiers[0] >= from.modifiers[0]);
  }
  if (from.name === "text" && to.name === "varchar") return to.modifiers.length === 0;
  if (from.name === "numeric" && to.name === "numeric") {
    if (to.modifiers.length === 0) return true;
    const [p1, s1 = 0] = from.modifiers;
    const [p2, s2 = 0] = to.modifiers;
    return from.modifiers.length > 0 && s1 === s2 && p2 >= p1;
  }
  if (from.name === "timestamp" && to.name === "timestamptz") return utc && (to.modifiers[0] ?? 6) >= (from.modifiers[0] ?? 6);
  return false;
}

/** A USING that only names the column itself converts nothing a plain cast would not. */
const isTrivialUsing = (using: Node | undefined, column: string): boolean =>
  !using || using.ColumnRef?.fields?.at(-1)?.String?.sval === column;

/** Views and functions the migration creates anywhere: dropping or replacing them in it is its own business. */
function objectsCreatedIn(statements: readonly Statement[]): Set<string> {
  const created = new Set<string>();
  for (const { node } of statements) {
    const [kind, body] = Object.entries(node)[0] as [string, Node];
    if (kind === "ViewStmt") created.add(tableKey(body.view));
    if (kind === "CreateFunctionStmt") created.add(nameOf(body.funcname));
  }
  return created;
}

const TRANSACTION_CONTROL = new Set([
  "TRANS_STMT_BEGIN", "TRANS_STMT_START", "TRANS_STMT_COMMIT", "TRANS_STMT_ROLLBACK", "TRANS_STMT_PREPARE",
  "TRANS_STMT_COMMIT_PREPARED", "TRANS_STMT_ROLLBACK_PREPARED",
]);

/** ALTER TABLE subcommands that take less than ACCESS EXCLUSIVE; every other one takes it. */
const WEAKER_THAN_EXCLUSIVE = new Set([
  "AT_ValidateConstraint", "AT_SetStatistics", "AT_SetOptions", "AT_ResetOptions", "AT_ClusterOn", "AT_DropCluster",
  "AT_AttachPartition", "AT_DetachPartitionFinalize", "AT_EnableTrig", "AT_EnableAlwaysTrig", "AT_EnableReplicaTrig",
  "AT_DisableTrig", "AT_EnableTrigAll", "AT_DisableTrigAll", "AT_EnableTrigUser", "AT_DisableTrigUser",
]);

const takesExclusive = (cmd: Node): boolean =>
  !WEAKER_THAN_EXCLUSIVE.has(cmd.subtype) && !(cmd.subtype === "AT_AddConstraint" && cmd.def?.Constraint?.contype === "CONSTR_FOREIGN");

/** The body of a DO block or of a function, as written. */
const bodyOf = (options: Node[] | undefined): string =>
  (options ?? []).filter((o) => o.DefElem?.defname === "as").map((o) => {
    const arg = o.DefElem.arg;
    return arg.String?.sval ?? (arg.List?.items ?? []).map((i: Node) => i.String?.sval ?? "").join("\n");
  }).join("\n");

/** What one migration has done so far, statement by statement. */
interface MigrationScope {
  /** Tables created earlier in this migration. */
  tables: Set<string>;
  /** Views and functions created anywhere in this migration. */
  objects: Set<string>;
  /** Indexes created earlier in this migration. */
  indexes: Set<string>;
  /** Constraints added NOT VALID in this migration, "table.constraint": validating them in the same transaction scans under that lock. */
  notValidHere: Map<string, RuleId>;
  /** "table.column" given a default in this migration: old code's INSERTs get it, so NOT NULL cannot break them. */
  defaults: Set<string>;
  /** Existing tables an earlier ALTER TABLE of this transaction holds ACCESS EXCLUSIVE on -> line of that statement. */
  exclusive: Map<string, number>;
  /** Tables TRUNCATEd earlier in this migration: adding a NOT NULL column cannot fail on rows. */
  emptied: Set<string>;
  /** Columns DROPped earlier in this migration, "table.column": renaming another column to that name swaps it in place. */
  dropped: Set<string>;
  /** `SET timezone = 'UTC'` ran earlier in this migration. */
  utc: boolean;
  /** server_version_num of the database the migration runs on (NEWEST_SERVER_VERSION without one). */
  serverVersion: number;
  /** Foreign keys the database had before the run (null without a database). */
  liveReferences: Map<string, Set<string>> | null;
  /** Functions created in this migration whose body runs dynamic DDL (EXECUTE). */
  dynamicFunctions: Set<string>;
  /** How many BEGIN/COMMIT statements the migration has: reported once, on the first. */
  transactionControl: number;
  /** Rules already reported for this migration, for those reported once per migration. */
  reported: Set<RuleId>;
}

/**
 * The findings of one statement, before waivers. The rules are a table: one
 * small function per kind of statement (the parse tree's node name), each
 * reading the statement's tree, learning what it declares into the state, and
 * reporting through the context's sinks. Statements no rule names declare
 * nothing the analysis tracks.
 */
function statementFindings(
  statement: Statement,
  migration: Migration,
  scope: MigrationScope,
  state: AnalysisState,
): RawFinding[] {
  const [kind, node] = Object.entries(statement.node)[0] as [string, Node];
  const context = statementContext(statement, migration, scope, state);
  learnForeignKeys(kind, node, statement, state);
  context.found.push(...longNameFindings(statement, kind, node, migration, state));
  STATEMENT_RULES[kind]?.(node, context, kind);
  return context.found;
}

/** What every statement rule needs: the statement, where it runs, and where its findings go. */
interface StatementContext extends FindingSinks {
  statement: Statement;
  migration: Migration;
  scope: MigrationScope;
  state: AnalysisState;
  inTransaction: boolean;
  found: RawFinding[];
  /** Rules reported once per migration: true the first time. */
  once: (rule: RuleId) => boolean;
}

type StatementRule = (node: Node, context: StatementContext, kind: string) => void;

function statementContext(statement: Statement, migration: Migration, scope: MigrationScope, state: AnalysisState): StatementContext {
  const at = statement.offset;
  const found: RawFinding[] = [];
  const beforeDeploy = migration.safe !== "after_deploy";
  const phase = migration.safe === "always" ? "an always migration (it may run before the deploy)" : "a before_deploy migration";
  const inTransaction = migration.up.transaction;
  return {
    statement, migration, scope, state, inTransaction, found, at,
    untilCommit: inTransaction ? " and the migration commits" : "",
    phaseFinding: (rule, subject, what, location = at, why = "the old code still serving traffic may use it") => {
      if (beforeDeploy) found.push({ rule, message: `${what} in ${phase}: ${why}`, location, subject });
    },
    lockFinding: (rule, subject, message, location = at) => found.push({ rule, message, location, subject }),
    existing: (rel) => rel !== undefined && !scope.tables.has(tableKey(rel)),
    once: (rule) => !scope.reported.has(rule) && Boolean(scope.reported.add(rule)),
  };
}

/** Foreign keys a table declares, remembered for TRUNCATE ... CASCADE. */
function learnForeignKeys(kind: string, node: Node, statement: Statement, state: AnalysisState): void {
  if ((kind !== "CreateStmt" && kind !== "AlterTableStmt") || !/references/i.test(statement.sql)) return;
  for (const target of foreignKeysIn(node)) {
    const from = state.references.get(target) ?? new Set<string>();
    state.references.set(target, from.add(tableKey(node.relation)));
  }
}

/** A table created here: exempt for the rest of the migration. IF NOT EXISTS may name one already there, but not one no earlier migration created. */
function learnCreatedTable(relation: RangeVar, ifNotExists: boolean, { scope, state }: StatementContext): string {
  const key = tableKey(relation);
  if (!ifNotExists || !state.tables.has(key)) scope.tables.add(key);
  state.tables.add(key);
  state.droppedTables.delete(key);
  return key;
}

const createTableRule: StatementRule = (node, context) => {
  const key = learnCreatedTable(node.relation, node.if_not_exists, context);
  for (const element of node.tableElts ?? []) {
    const column = element.ColumnDef;
    if (column) context.state.columnTypes.set(`${key}.${column.colname}`, columnTypeOf(column.typeName));
  }
};

const createTableAsRule: StatementRule = (node, context) => {
  if (node.into?.rel) learnCreatedTable(node.into.rel, node.if_not_exists, context);
};

/** Functions are remembered with their volatility (a volatile default rewrites) and whether they are trigger functions. */
const createFunctionRule: StatementRule = (node, { state, scope }) => {
  const name = nameOf(node.funcname);
  const volatility = (node.options ?? []).find((o: Node) => o.DefElem?.defname === "volatility")?.DefElem.arg.String?.sval;
  state.functions.set(name, { trigger: typeNameOf(node.returnType) === "trigger", volatile: !volatility || volatility === "volatile" });
  const body = bodyOf(node.options);
  if (/\bexecute\b/i.test(body) && DDL_WORDS.test(body)) scope.dynamicFunctions.add(name);
};

const setTimeZoneRule: StatementRule = (node, { scope }) => {
  if (node.name === "timezone") scope.utc = UTC_ZONES.test(node.args?.[0]?.A_Const?.sval?.sval ?? "");
};

const dropRule: StatementRule = (node, context) => {
  const names: string[] = (node.objects ?? []).map((o: Node) => nameOf(o.List?.items ?? o.ObjectWithArgs?.objname ?? [o]));
  const removeType = node.removeType as string;
  if (node.concurrent && context.inTransaction) {
    context.lockFinding("concurrently-in-transaction", null, "DROP INDEX CONCURRENTLY cannot run inside a transaction: the migration would fail");
  }
  dropFindings(removeType, names, Boolean(node.concurrent), context);
  forgetDropped(removeType, names, context.state);
};

/** Dropping what old code may use is a phase finding; dropping an index without CONCURRENTLY, a lock finding. */
function dropFindings(removeType: string, names: string[], concurrent: boolean, { scope, state, phaseFinding, lockFinding, at, inTransaction }: StatementContext): void {
  const notHere = (set: Set<string>) => names.find((n) => !set.has(n));
  const list = names.join(", ");
  if (removeType === "OBJECT_TABLE") {
    const table = notHere(scope.tables);
    if (table) phaseFinding("drop-table", table, `DROP TABLE ${list}`);
  } else if (removeType === "OBJECT_SCHEMA") {
    phaseFinding("drop-table", names[0], `DROP SCHEMA ${list}`, at, "the old code may use the tables in it");
  } else if (removeType === "OBJECT_VIEW" || removeType === "OBJECT_MATVIEW") {
    const view = notHere(scope.objects);
    if (view) phaseFinding("drop-view", view, `DROP VIEW ${list}`);
  } else if (removeType === "OBJECT_FUNCTION" || removeType === "OBJECT_PROCEDURE") {
    // A trigger function is only called by its trigger, never by the application.
    const called = names.find((n) => !scope.objects.has(n) && !state.functions.get(n)?.trigger);
    if (called) phaseFinding("drop-function", called, `DROP FUNCTION ${list}`);
  } else if (removeType === "OBJECT_INDEX" && !concurrent) {
    const index = names.find((n) => !scope.indexes.has(n) && !scope.tables.has(state.indexes.get(n) ?? ""));
    if (!index) return;
    const table = state.indexes.get(index);
    const on = table ? ` on ${table}` : "";
    lockFinding(
      "drop-index-not-concurrently", index,
      `DROP INDEX ${index} takes an ACCESS EXCLUSIVE lock${on || " on the table it indexes"}: it waits for every running query${on} ` +
        `(up to lock_timeout) while new ones queue behind it, then holds it${inTransaction ? " until the migration commits" : " briefly"}`,
    );
  }
}

/** What a DROP removes is no longer known: its indexes, its foreign keys both ways, its long name. */
function forgetDropped(removeType: string, names: string[], state: AnalysisState): void {
  if (removeType === "OBJECT_TABLE") {
    for (const n of names) {
      state.tables.delete(n);
      state.droppedTables.add(n);
      state.references.delete(n);
    }
    for (const from of state.references.values()) for (const n of names) from.delete(n);
  }
  if (removeType === "OBJECT_INDEX") for (const n of names) state.indexes.delete(n);
  if (["OBJECT_TABLE", "OBJECT_INDEX", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_SEQUENCE"].includes(removeType)) for (const n of names) state.longNames.delete(n);
}

/** A rename breaks the code on one side of the deploy whatever the phase: old code before it, new code after it. */
const renameRule: StatementRule = (node, context) => {
  const { scope, state, lockFinding } = context;
  const relation = node.relation as RangeVar | undefined;
  if (relation && node.renameType === "OBJECT_INDEX") return renameIndex(relation.relname, node.newname, context);
  const existed = context.existing(relation);
  if (relation && node.renameType === "OBJECT_TABLE") renameTable(state, scope, tableKey(relation), relation.schemaname ? `${relation.schemaname}.${node.newname}` : node.newname);
  if (!relation || !existed) return;
  const why = "old code breaks if it runs before the deploy, new code if it runs after; no phase makes a rename safe";
  const location = relation.location ?? context.at;
  const key = tableKey(relation);
  if (["OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW"].includes(node.renameType)) {
    lockFinding("rename-table", key, `renaming ${node.renameType === "OBJECT_TABLE" ? "table" : "view"} ${quoted(relation)} to ${node.newname}: ${why}`, location);
  } else if (node.renameType === "OBJECT_COLUMN") {
    // Dropping a column and renaming its replacement to its name: code using the name finds a column either way.
    if (!scope.dropped.has(`${key}.${node.newname}`)) lockFinding("rename-column", key, `renaming column ${quoted(relation)}.${node.subname} to ${node.newname}: ${why}`, location);
    const type = state.columnTypes.get(`${key}.${node.subname}`);
    if (type) state.columnTypes.set(`${key}.${node.newname}`, type);
  }
  if (context.inTransaction) scope.exclusive.set(key, context.statement.line);
};

function renameIndex(from: string, to: string, { scope, state }: StatementContext): void {
  const table = state.indexes.get(from);
  if (table) state.indexes.set(to, table);
  if (scope.indexes.has(from)) scope.indexes.add(to);
}

const createIndexRule: StatementRule = (node, { scope, state, inTransaction, existing, lockFinding, untilCommit }) => {
  const table = tableKey(node.relation);
  if (node.idxname) {
    state.indexes.set(node.idxname, table);
    scope.indexes.add(node.idxname);
  }
  if (node.concurrent && inTransaction) {
    lockFinding("concurrently-in-transaction", null, "CREATE INDEX CONCURRENTLY cannot run inside a transaction: the migration would fail");
  } else if (!node.concurrent && existing(node.relation)) {
    lockFinding(
      "index-not-concurrently", table,
      `CREATE INDEX on ${quoted(node.relation)} takes a SHARE lock: writes to it wait until the index is built${untilCommit} (reads go on)`,
    );
  }
};

const reindexRule: StatementRule = (node, { inTransaction, lockFinding }) => {
  const concurrently = (node.params ?? []).some((p: Node) => p.DefElem?.defname === "concurrently");
  if (concurrently && inTransaction) {
    lockFinding("concurrently-in-transaction", null, "REINDEX CONCURRENTLY cannot run inside a transaction: the migration would fail");
  } else if (!concurrently) {
    lockFinding("reindex-not-concurrently", node.relation ? tableKey(node.relation) : null, "REINDEX without CONCURRENTLY blocks writes to the table, and reads that use its indexes, until it ends");
  }
};

const vacuumRule: StatementRule = (node, { inTransaction, lockFinding }) => {
  const relation = node.rels?.[0]?.VacuumRelation?.relation;
  if ((node.options ?? []).some((o: Node) => o.DefElem?.defname === "full")) {
    lockFinding("vacuum-full", relation ? tableKey(relation) : null, "VACUUM FULL rewrites the table under an ACCESS EXCLUSIVE lock: reads and writes wait until it ends");
  } else if (node.is_vacuumcmd && inTransaction) {
    lockFinding("concurrently-in-transaction", null, "VACUUM cannot run inside a transaction: the migration would fail");
  }
};

const clusterRule: StatementRule = (node, { lockFinding }) => lockFinding(
  "cluster", node.relation ? tableKey(node.relation) : null,
  `CLUSTER${node.relation ? ` ${quoted(node.relation)}` : ""} rewrites the table under an ACCESS EXCLUSIVE lock: reads and writes wait until it ends`,
);

const lockTableRule: StatementRule = (node, { lockFinding }) => {
  const relation = node.relations?.[0]?.RangeVar;
  lockFinding("lock-table", relation ? tableKey(relation) : null, `LOCK TABLE holds its lock until the migration commits; every conflicting query queues behind it`);
};

/** " (and 2 more BEGIN/COMMIT statements)" after the first of `count`. */
const andMoreTransactionControl = (count: number): string =>
  count > 1 ? ` (and ${count - 1} more BEGIN/COMMIT statement${count > 2 ? "s" : ""})` : "";

/** One finding per migration says it all, however many COMMITs it has. */
const transactionControlRule: StatementRule = (node, { scope, inTransaction, once, lockFinding }) => {
  if (!TRANSACTION_CONTROL.has(node.kind)) return;
  // A COMMIT (AND CHAIN) ends the transaction: the locks taken so far are released.
  scope.exclusive.clear();
  if (!inTransaction || scope.transactionControl === 0 || !once("transaction-control")) return;
  const count = scope.transactionControl;
  lockFinding(
    "transaction-control", null,
    `${node.kind.replace("TRANS_STMT_", "")}${andMoreTransactionControl(count)} inside a migration safemigrate runs in one transaction: ` +
      `it commits part of the migration, so a later failure leaves that part applied`,
  );
};

/** DDL built at run time cannot be analysed: said once per migration rather than passed over in silence. */
const dynamicSqlRule: StatementRule = (node, { scope, once, lockFinding }, kind) => {
  const dynamic = kind === "DoStmt" ? DDL_WORDS.test(bodyOf(node.args)) : functionsIn(node).some((f) => scope.dynamicFunctions.has(f));
  if (!dynamic || !once("dynamic-sql")) return;
  lockFinding(
    "dynamic-sql", null,
    `${kind === "DoStmt" ? "a DO block" : "a function this migration defines"} runs DDL built at run time (EXECUTE or a DO body), which this analysis cannot see: ` +
      `the locks it takes and its phase are not checked (reported once per migration)`,
  );
};

/** A whole-table UPDATE/DELETE while an earlier ALTER of the same transaction still holds ACCESS EXCLUSIVE. */
const backfillRule: StatementRule = (node, { scope, lockFinding }, kind) => {
  const rel = node.relation as RangeVar | undefined;
  // A data statement the parser only syntax-checked (a big data migration) has no tree to read.
  if (!rel) return;
  const since = scope.exclusive.get(tableKey(rel));
  const everyRow = !node.whereClause || node.whereClause.NullTest !== undefined;
  if (since === undefined || !everyRow) return;
  lockFinding(
    "backfill-under-lock", tableKey(rel),
    `${kind === "UpdateStmt" ? "UPDATE" : "DELETE"} of ${node.whereClause ? "the rows" : "every row"} of ${quoted(rel)} runs while this transaction holds ` +
      `the ACCESS EXCLUSIVE lock the ALTER TABLE on line ${since} took: every read and write of ${quoted(rel)} waits until the migration commits`,
  );
};

const STATEMENT_RULES: Record<string, StatementRule> = {
  CreateStmt: createTableRule,
  CreateTableAsStmt: createTableAsRule,
  CreateFunctionStmt: createFunctionRule,
  VariableSetStmt: setTimeZoneRule,
  DropStmt: dropRule,
  RenameStmt: renameRule,
  IndexStmt: createIndexRule,
  ReindexStmt: reindexRule,
  VacuumStmt: vacuumRule,
  ClusterStmt: clusterRule,
  LockStmt: lockTableRule,
  TransactionStmt: transactionControlRule,
  DoStmt: dynamicSqlRule,
  SelectStmt: dynamicSqlRule,
  TruncateStmt: (node, c) => c.found.push(...truncateFindings(node, c.scope, c.state, c.existing, c.at)),
  UpdateStmt: backfillRule,
  DeleteStmt: backfillRule,
  AlterTableStmt: alterTableFindings,
};

/** What the migrations declared about a table follows it to its new name. */
function renameTable(state: AnalysisState, scope: MigrationScope, from: string, to: string): void {
  const to_ = to.startsWith("public.") ? to.slice("public.".length) : to;
  for (const [column, type] of [...state.columnTypes]) {
    if (column.startsWith(`${from}.`)) state.columnTypes.set(`${to_}.${column.slice(from.length + 1)}`, type);
  }
  for (const [index, table] of state.indexes) if (table === from) state.indexes.set(index, to_);
  if (state.tables.delete(from)) state.tables.add(to_);
  if (scope.tables.delete(from)) scope.tables.add(to_);
}

/**
 * TRUNCATE empties the tables it names (a NOT NULL column added later cannot
 * fail on rows); with CASCADE also every table referencing them, which the
 * finding names from the foreign keys the migrations declared and, with a
 * database, those it has. A table nothing references empties nothing more.
 */
function truncateFindings(node: Node, scope: MigrationScope, state: AnalysisState, existing: (rel: RangeVar | undefined) => boolean, at: number): RawFinding[] {
  const rels: RangeVar[] = (node.relations ?? []).map((r: Node) => r.RangeVar).filter(Boolean);
  const named = rels.map(tableKey);
  const cascade = node.behavior === "DROP_CASCADE";
  const cascaded = cascade ? referencingClosure(named, state.droppedTables, state.references, scope.liveReferences) : [];
  for (const table of [...named, ...cascaded]) scope.emptied.add(table);
  // Without a database, a table older than the migrations may be referenced by tables no migration declared.
  const olderThanMigrations = scope.liveReferences ? [] : rels.filter((rel) => !state.tables.has(tableKey(rel)));
  const live = rels.find(existing);
  if (!cascade || !live || (cascaded.length === 0 && olderThanMigrations.length === 0)) return [];
  const them = named.length > 1 ? "them" : quoted(live);
  const source = scope.liveReferences ? "as the migrations declared them and the database has them" : "as the migrations declared them";
  const known = cascaded.length
    ? `${cascaded.join(", ")} (every table with a foreign key to ${them}, and those referencing them, ${source})`
    : `every table with a foreign key to ${them}, and those referencing them`;
  const unknown = olderThanMigrations.length
    ? `${cascaded.length ? "; and" : ":"} ${olderThanMigrations.map(quoted).join(", ")} predates the migrations, so only the database knows which tables reference it`
    : "";
  return [{ rule: "truncate-cascade", subject: tableKey(live), location: at, message: `TRUNCATE ${rels.map(quoted).join(", ")} CASCADE also empties ${known}${unknown}` }];
}

/** The tables a statement's FOREIGN KEY / REFERENCES constraints point at. */
function foreignKeysIn(node: unknown, into: string[] = []): string[] {
  if (Array.isArray(node)) for (const item of node) foreignKeysIn(item, into);
  else if (node && typeof node === "object") {
    const constraint = (node as Node).Constraint;
    if (constraint?.contype === "CONSTR_FOREIGN" && constraint.pktable) into.push(tableKey(constraint.pktable));
    for (const value of Object.values(node)) foreignKeysIn(value, into);
  }
  return into;
}

/** Every table TRUNCATE ... CASCADE of `tables` empties besides them: those referencing them, and so on, by the given foreign keys, `gone` aside. */
function referencingClosure(tables: string[], gone: Set<string>, ...references: (Map<string, Set<string>> | null)[]): string[] {
  const seen = new Set([...tables, ...gone]);
  const queue = [...tables];
  for (let table = queue.shift(); table !== undefined; table = queue.shift()) {
    for (const known of references) for (const from of known?.get(table) ?? []) if (!seen.has(from)) (seen.add(from), queue.push(from));
  }
  return [...seen].filter((t) => !tables.includes(t) && !gone.has(t));
}

// ---- names over 63 bytes ------------------------------------------------------
//
// PostgreSQL cuts an identifier to 63 bytes (NAMEDATALEN - 1) while it reads
// the SQL, with only a NOTICE; the parse tree holds the cut name, so the long
// one is found in the statement's text. Only names the statement defines are
// reported (a later reference is cut the same way and finds the object).

const MAX_IDENTIFIER_BYTES = 63;
/** Statements without a run this long skip the scan: 64 ASCII characters, or 22 code units once any is not ASCII (3 UTF-8 bytes each at most). */
const LONG_ASCII_WORD = /[\w$]{64}|"[^"]{64}/;
const LONG_WORD = /[\w$\u0080-\uffff]{22}|"[^"]{22}/;
const NOT_ASCII = /[^\x00-\x7f]/;
const mayHoldLongName = (sql: string): boolean => LONG_ASCII_WORD.test(sql) || (NOT_ASCII.test(sql) && LONG_WORD.test(sql));

/** The name as PostgreSQL keeps it: at most 63 bytes, never half a character. */
function cutIdentifier(name: string): string {
  let bytes = 0;
  let i = 0;
  for (; i < name.length; i++) {
    const width = utf8Width(name.charCodeAt(i));
    if (bytes + width > MAX_IDENTIFIER_BYTES) break;
    bytes += width;
  }
  return name.slice(0, i);
}

/** Identifiers over 63 bytes in a statement's text, outside strings and comments, as PostgreSQL reads them (unquoted: ASCII lowercased). */
function longIdentifiers(sql: string): { name: string; index: number }[] {
  const found: { name: string; index: number }[] = [];
  const keep = (name: string, index: number) => utf8Length(name) > MAX_IDENTIFIER_BYTES && found.push({ name, index });
  for (let i = 0; i < sql.length; i++) {
    const c = sql.charCodeAt(i);
    if (c === 34) {
      const end = endOfQuoted(sql, i, 34, false);
      keep(sql.slice(i + 1, end - 1).replace(/""/g, "\""), i);
      i = end - 1;
    } else if (c === 39 || c === 45 || c === 47 || c === 36) {
      const skipped = skipLexeme(sql, i);
      if (skipped > i) i = skipped - 1;
    } else if (isWordChar(c)) {
      let j = i + 1;
      while (j < sql.length && isWordChar(sql.charCodeAt(j))) j++;
      if (!(c >= 48 && c <= 57)) keep(sql.slice(i, j).replace(/[A-Z]+/g, (m) => m.toLowerCase()), i);
      i = j - 1;
    }
  }
  return found;
}

/** Keys whose value, anywhere in a statement's tree, is a name the statement gives something. */
const DEFINING_KEYS = new Set(["colname", "conname", "idxname", "trigname", "newname", "policy_name"]);

/** The relation a statement creates or renames (tables, indexes, views, sequences share one namespace per schema), and the other names it defines. */
function definedNames(kind: string, node: Node): { relation: string | null; names: Set<string> } {
  const names = new Set<string>();
  const walk = (value: unknown): void => {
    if (Array.isArray(value)) for (const item of value) walk(item);
    else if (value && typeof value === "object") {
      for (const [key, inner] of Object.entries(value)) typeof inner === "string" ? DEFINING_KEYS.has(key) && names.add(inner) : walk(inner);
    }
  };
  walk(node);
  const last = (list: Node[] | undefined) => list?.at(-1)?.String?.sval as string | undefined;
  const relationOf: Record<string, () => RangeVar | undefined> = {
    CreateStmt: () => node.relation, ViewStmt: () => node.view, CreateTableAsStmt: () => node.into?.rel, CreateSeqStmt: () => node.sequence,
    IndexStmt: () => node.idxname ? { schemaname: node.relation?.schemaname, relname: node.idxname } : undefined,
    RenameStmt: () => ["OBJECT_TABLE", "OBJECT_INDEX", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_SEQUENCE"].includes(node.renameType)
      ? { schemaname: node.relation?.schemaname, relname: node.newname } : undefined,
  };
  const otherNameOf: Record<string, () => string | undefined> = {
    CreateSchemaStmt: () => node.schemaname, CreateFunctionStmt: () => last(node.funcname), CreateEnumStmt: () => last(node.typeName),
    CreateDomainStmt: () => last(node.domainname), CompositeTypeStmt: () => node.typevar?.relname,
  };
  const relation = relationOf[kind]?.();
  const other = relation?.relname ?? otherNameOf[kind]?.();
  if (other) names.add(other);
  return { relation: relation ? tableKey(relation) : null, names };
}

/** A name the statement defines that is over 63 bytes: what PostgreSQL cuts it to, and whether it then collides with another long name. */
function longNameFindings(statement: Statement, kind: string, node: Node, migration: Migration, state: AnalysisState): RawFinding[] {
  if (!mayHoldLongName(statement.sql)) return [];
  const long = longIdentifiers(statement.sql);
  if (long.length === 0) return [];
  const defined = definedNames(kind, node);
  const found: RawFinding[] = [];
  const reported = new Set<string>();
  for (const { name, index } of long) {
    const cut = cutIdentifier(name);
    if (!defined.names.has(cut) || reported.has(name)) continue;
    reported.add(name);
    const relation = defined.relation !== null && defined.relation.endsWith(cut) ? defined.relation : null;
    const earlier = relation ? state.longNames.get(relation) : undefined;
    if (relation) state.longNames.set(relation, { name, migration: migration.id });
    const collides = earlier && earlier.name !== name
      ? `: "${earlier.name}" (migration ${earlier.migration}) was cut to the same name, so this ${node.if_not_exists ? "statement is skipped as if done (IF NOT EXISTS) and the object never exists" : "CREATE fails: the relation already exists"}`
      : `; a second name sharing those 63 bytes would be the same name (its CREATE fails, or IF NOT EXISTS skips it)`;
    found.push({
      rule: "identifier-too-long", subject: earlier && earlier.name !== name ? null : relation ?? cut,
      location: statement.offset + utf8Length(statement.sql.slice(0, index)),
      message: `the name "${name}" is ${utf8Length(name)} bytes: PostgreSQL silently cuts it to 63, "${cut}"${collides}`,
    });
  }
  return found;
}

interface FindingSinks {
  at: number;
  phaseFinding: (rule: RuleId, subject: string, what: string, location?: number, why?: string) => void;
  lockFinding: (rule: RuleId, subject: string | null, message: string, location?: number) => void;
  existing: (rel: RangeVar | undefined) => boolean;
  untilCommit: string;
}

/** What every ALTER TABLE subcommand rule needs: the statement's context and the table it alters. */
interface AlterContext extends StatementContext {
  key: string;
  table: string;
  location: number;
  /** "under an ACCESS EXCLUSIVE lock: ... wait until it ends", for messages. */
  exclusively: string;
  /** The phase finding for NOT NULL on a column, unless the migration gave it a default (old code's INSERTs get it). */
  notNull: (column: string) => void;
}

type AlterRule = (cmd: Node, context: AlterContext) => void;

/** ALTER TABLE: each subcommand by its own rule; a table created earlier in this migration only teaches column types. */
function alterTableFindings(node: Node, context: StatementContext): void {
  const { scope, state, phaseFinding } = context;
  const rel = node.relation as RangeVar;
  const key = tableKey(rel);
  const cmds: Node[] = (node.cmds ?? []).map((c: Node) => c.AlterTableCmd).filter(Boolean);
  if (!context.existing(rel)) return learnColumnTypes(key, cmds, state);
  if (context.inTransaction && cmds.some(takesExclusive) && !scope.exclusive.has(key)) scope.exclusive.set(key, context.statement.line);
  const table = quoted(rel);
  const location = rel.location ?? context.at;
  const alter: AlterContext = {
    ...context, key, table, location,
    exclusively: `under an ACCESS EXCLUSIVE lock: reads and writes of ${table} wait until it ends${context.untilCommit}`,
    notNull: (column) => {
      if (!scope.defaults.has(`${key}.${column}`)) phaseFinding("add-not-null", key, `NOT NULL on ${table}.${column}`, location, "the old code may still write NULL");
    },
  };
  for (const cmd of cmds) ALTER_TABLE_RULES[cmd.subtype]?.(cmd, alter);
}

function learnColumnTypes(key: string, cmds: Node[], state: AnalysisState): void {
  for (const cmd of cmds) {
    if (cmd.subtype === "AT_AddColumn" || cmd.subtype === "AT_AlterColumnType") {
      const name = cmd.def?.ColumnDef?.colname ?? cmd.name;
      state.columnTypes.set(`${key}.${name}`, columnTypeOf(cmd.def?.ColumnDef?.typeName));
    }
  }
}

const dropColumnRule: AlterRule = (cmd, { key, table, location, scope, state, phaseFinding }) => {
  scope.dropped.add(`${key}.${cmd.name}`);
  phaseFinding("drop-column", key, `dropping column ${table}.${cmd.name}`, location);
  state.columnTypes.delete(`${key}.${cmd.name}`);
};

const alterColumnTypeRule: AlterRule = (cmd, { key, table, location, scope, state, phaseFinding, lockFinding, exclusively }) => {
  const column = `${key}.${cmd.name}`;
  const target = columnTypeOf(cmd.def?.ColumnDef?.typeName);
  const from = state.columnTypes.get(column);
  // Under UTC timestamp and timestamptz have the same bytes, but only PostgreSQL 12+ keeps the table's file.
  const sameBytes = scope.utc && scope.serverVersion >= 120000;
  const free = isTrivialUsing(cmd.def?.ColumnDef?.raw_default, cmd.name) && isFreeWidening(from, target, sameBytes);
  const change = `${table}.${cmd.name}${from ? ` from ${formatType(from)}` : ""} to ${formatType(target)}`;
  if (!(free && from)) phaseFinding("change-column-type", key, `changing the type of ${change}`, location, "the old code may write values the new type rejects");
  const olderServer = scope.utc && !sameBytes && from?.name === "timestamp" && target.name === "timestamptz" ? ` (on PostgreSQL ${majorVersion(scope.serverVersion)} even with the time zone UTC; 12+ keeps the file)` : "";
  if (!free) lockFinding("type-change-rewrite", key, `changing ${change} rewrites ${table}${olderServer} and rebuilds its indexes ${exclusively}`, location);
  state.columnTypes.set(column, target);
};

const setNotNullRule: AlterRule = (cmd, { key, table, location, scope, state, lockFinding, exclusively, notNull }) => {
  notNull(cmd.name);
  // A validated CHECK (col IS NOT NULL) lets PostgreSQL 12+ skip the scan.
  const proven = state.provenNotNull.has(`${key}.${cmd.name}`);
  if (proven && scope.serverVersion >= 120000) return;
  const older = proven ? ` (PostgreSQL ${majorVersion(scope.serverVersion)} does not use the validated CHECK to skip it; 12+ does)` : "";
  lockFinding("set-not-null-scan", key, `SET NOT NULL on ${table}.${cmd.name} scans every row (no rewrite)${older} ${exclusively}`, location);
};

const dropNotNullRule: AlterRule = (cmd, { key, table, location, phaseFinding }) => phaseFinding(
  "drop-not-null", key, `DROP NOT NULL on ${table}.${cmd.name}`, location,
  "once the new code writes NULL there, the old code still serving traffic during the deploy (and again after a rollback of the code) reads NULL where it always found a value",
);

const columnDefaultRule: AlterRule = (cmd, { key, table, location, scope, phaseFinding }) => {
  if (cmd.def) scope.defaults.add(`${key}.${cmd.name}`);
  else phaseFinding("drop-default", key, `DROP DEFAULT on ${table}.${cmd.name}`, location, "the old code may rely on the default when it inserts");
};

const validateConstraintRule: AlterRule = (cmd, { key, location, scope, state, inTransaction, lockFinding }) => {
  const constraint = `${key}.${cmd.name}`;
  const column = state.notNullChecks.get(constraint);
  if (column) state.provenNotNull.add(`${key}.${column}`);
  const rule = scope.notValidHere.get(constraint);
  if (!rule || !inTransaction) return;
  lockFinding(rule, key, `VALIDATE CONSTRAINT ${cmd.name} in the same transaction that added it NOT VALID scans every row while that lock is still held, until the migration commits`, location);
};

const ALTER_TABLE_RULES: Record<string, AlterRule> = {
  AT_DropColumn: dropColumnRule,
  AT_AlterColumnType: alterColumnTypeRule,
  AT_SetNotNull: setNotNullRule,
  AT_DropNotNull: dropNotNullRule,
  AT_ColumnDefault: columnDefaultRule,
  AT_AddColumn: (cmd, c) => addColumnFindings(cmd.def?.ColumnDef ?? {}, c.key, c.table, c.location, c.migration, c.scope, c.state, c, c.exclusively),
  AT_AddConstraint: (cmd, c) => addConstraintFindings(cmd.def?.Constraint ?? {}, c.key, c.table, c.location, c.scope, c.state, c, c.notNull, c.exclusively),
  AT_ValidateConstraint: validateConstraintRule,
};

function addColumnFindings(
  column: Node, key: string, table: string, location: number, migration: Migration, scope: MigrationScope, state: AnalysisState,
  { phaseFinding, lockFinding }: FindingSinks, exclusively: string,
): void {
  const constraints: Node[] = (column.constraints ?? []).map((c: Node) => c.Constraint);
  // DEFAULT NULL is what a column has without a default.
  const hasDefault = constraints.find((c) => c.contype === "CONSTR_DEFAULT" && !c.raw_expr?.A_Const?.isnull);
  const generated = constraints.some((c) => c.contype === "CONSTR_IDENTITY" || c.contype === "CONSTR_GENERATED");
  const type = typeNameOf(column.typeName);
  state.columnTypes.set(`${key}.${column.colname}`, columnTypeOf(column.typeName));
  if (hasDefault) scope.defaults.add(`${key}.${column.colname}`);
  const required = constraints.some((c) => c.contype === "CONSTR_NOTNULL" || c.contype === "CONSTR_PRIMARY");
  if (required && !hasDefault && !generated && !SERIAL_TYPES.has(type)) {
    const what = `adding NOT NULL column ${table}.${column.colname} without a default`;
    if (migration.safe !== "after_deploy") phaseFinding("not-null-column-without-default", key, what, location, "the old code's INSERTs do not name it and will fail");
    else if (!scope.emptied.has(key)) lockFinding("not-null-column-without-default", key, `${what}: it fails on a table that has rows`, location);
  }
  const called = functionsIn(hasDefault?.raw_expr);
  const volatile = called.find((f) => VOLATILE_FUNCTIONS.has(f)) ??
    called.find((f) => state.functions.get(f)?.volatile);
  // Before PostgreSQL 11 every default was written into each row, a constant one too.
  const anyDefaultRewrites = hasDefault && scope.serverVersion < 110000;
  if (volatile || SERIAL_TYPES.has(type) || generated || anyDefaultRewrites) {
    const why = volatile
      ? `${volatile}()${VOLATILE_FUNCTIONS.has(volatile) ? "" : " (declared without IMMUTABLE or STABLE, so VOLATILE)"} as its default`
      : SERIAL_TYPES.has(type) ? `type ${type}` : generated ? (constraints.some((c) => c.contype === "CONSTR_GENERATED") ? "a GENERATED ... STORED value" : "an identity")
      : `a default (PostgreSQL ${majorVersion(scope.serverVersion)} writes any default into each row; 11+ only a volatile one)`;
    const written = volatile || SERIAL_TYPES.has(type) || generated ? "a value computed for each row" : "the value written into each row";
    lockFinding("volatile-default", key, `adding ${table}.${column.colname} with ${why} rewrites ${table} (${written}) ${exclusively}`, location);
  }
  // A new column whose value is NULL has nothing to validate; with a default or a generated value every row is checked.
  if ((hasDefault || generated) && constraints.some((c) => c.contype === "CONSTR_FOREIGN")) {
    lockFinding("foreign-key-not-valid", key, `adding ${table}.${column.colname} with ${hasDefault ? "a default" : "a generated value"} and REFERENCES checks every row under a SHARE ROW EXCLUSIVE lock on ${table} and the referenced table: writes to both wait until it ends`, location);
  }
  const indexed = constraints.find((c) => c.contype === "CONSTR_PRIMARY") ? "PRIMARY KEY" : constraints.some((c) => c.contype === "CONSTR_UNIQUE") ? "UNIQUE" : null;
  if (indexed) lockFinding("index-not-concurrently", key, `adding ${table}.${column.colname} as ${indexed} builds its index ${exclusively}`, location);
}

function addConstraintFindings(
  constraint: Node, key: string, table: string, location: number, scope: MigrationScope, state: AnalysisState,
  { lockFinding }: FindingSinks, notNull: (column: string) => void, exclusively: string,
): void {
  const name = constraint.conname ? ` ${constraint.conname}` : "";
  if (constraint.skip_validation && constraint.conname) {
    scope.notValidHere.set(`${key}.${constraint.conname}`, constraint.contype === "CONSTR_FOREIGN" ? "foreign-key-not-valid" : "check-not-valid");
  }
  switch (constraint.contype) {
    case "CONSTR_FOREIGN":
      if (!constraint.skip_validation) {
        lockFinding("foreign-key-not-valid", key, `adding foreign key${name} on ${table} without NOT VALID checks every row under a SHARE ROW EXCLUSIVE lock on ${table} and the referenced table: writes to both wait until it ends`, location);
      }
      break;
    case "CONSTR_CHECK": {
      const test = constraint.raw_expr?.NullTest;
      const column = test?.nulltesttype === "IS_NOT_NULL" ? test.arg?.ColumnRef?.fields?.at(-1)?.String?.sval : null;
      // NOT VALID still checks new rows: old code writing NULL breaks at once.
      if (column) notNull(column);
      if (!constraint.skip_validation) {
        lockFinding("check-not-valid", key, `adding CHECK${name} on ${table} without NOT VALID scans every row (no rewrite) ${exclusively}`, location);
      }
      if (column && constraint.conname) state.notNullChecks.set(`${key}.${constraint.conname}`, column);
      if (column && !constraint.skip_validation) state.provenNotNull.add(`${key}.${column}`);
      break;
    }
    case "CONSTR_NOTNULL": {
      // PostgreSQL 18: ADD CONSTRAINT name NOT NULL column [NOT VALID].
      for (const k of constraint.keys ?? []) {
        const column = k.String?.sval;
        notNull(column);
        if (!constraint.skip_validation && !state.provenNotNull.has(`${key}.${column}`)) {
          lockFinding("set-not-null-scan", key, `NOT NULL on ${table}.${column} scans every row (no rewrite) ${exclusively}`, location);
        }
      }
      break;
    }
    case "CONSTR_PRIMARY":
    case "CONSTR_UNIQUE":
    case "CONSTR_EXCLUSION":
      if (!constraint.indexname) {
        const kind = { CONSTR_PRIMARY: "a primary key", CONSTR_UNIQUE: "a unique", CONSTR_EXCLUSION: "an exclusion" }[constraint.contype as string];
        lockFinding("index-not-concurrently", key, `adding ${kind} constraint${name} on ${table} builds its index ${exclusively}`, location);
      }
      break;
  }
}

/** BEGIN/COMMIT statements that split the migration; a lone COMMIT as the very last statement splits nothing. */
function transactionControlCount(statements: readonly Statement[]): number {
  const control = statements.filter(({ node }) => TRANSACTION_CONTROL.has((node as Node).TransactionStmt?.kind));
  return control.length === 1 && control[0] === statements.at(-1) ? 0 : control.length;
}

/** Statements that only add (tables, columns with a default or nullable, indexes, new functions, rows): old code never notices them. */
function onlyExpands(statements: readonly Statement[]): boolean {
  const expands = ({ node }: Statement): boolean => {
    const [kind, body] = Object.entries(node)[0] as [string, Node];
    switch (kind) {
      case "CreateStmt": case "CreateTableAsStmt": case "CreateSeqStmt": case "CreateEnumStmt": case "CreateDomainStmt":
      case "CreateExtensionStmt": case "CreateSchemaStmt": case "CommentStmt": case "GrantStmt": case "InsertStmt":
      case "VariableSetStmt": case "CompositeTypeStmt":
        return true;
      case "IndexStmt":
        return !body.unique;
      case "CreateFunctionStmt":
        return !body.replace;
      case "ViewStmt":
        return !body.replace;
      case "AlterTableStmt":
        return (body.cmds ?? []).every(({ AlterTableCmd: cmd }: Node) => {
          if (cmd?.subtype !== "AT_AddColumn") return false;
          const constraints = (cmd.def?.ColumnDef?.constraints ?? []).map((c: Node) => c.Constraint.contype);
          return !constraints.includes("CONSTR_NOTNULL") || constraints.includes("CONSTR_DEFAULT");
        });
      default:
        return false;
    }
  };
  return statements.length > 0 && statements.every(expands);
}

/** Waivers written directly above the statement starting on `line` (1-based file line). */
function waiversAbove(lines: string[], line: number): { rules: string[]; reason: string; line: number; column: number }[] {
  const waivers = [];
  for (let i = line - 2; i >= 0 && /^\s*--/.test(lines[i]); i--) {
    if (!WAIVER_LINE.test(lines[i])) continue;
    const body = lines[i].replace(/^\s*--\s*safemigrate-ignore\s*:/i, "");
    const [ruleText, ...reasonParts] = body.split(/\s--\s?/);
    waivers.push({
      rules: ruleText.split(/[\s,]+/).filter(Boolean),
      reason: reasonParts.join(" -- ").trim(),
      line: i + 1,
      column: lines[i].indexOf("--") + 1,
    });
  }
  return waivers;
}

/**
 * Analyses one migration's up SQL with the real PostgreSQL parser. Pure but
 * for loading the parser; `state` carries what earlier migrations declared,
 * `gate` (the live database before the run) decides which findings stop it.
 */
export async function analyzeMigration(
  migration: Migration,
  state: AnalysisState = newAnalysisState(),
  gate: Gate | null = null,
): Promise<Finding[]> {
  if (migration.up.sql.trim() === "") return [];
  const { statements, place } = await parseSection(migration.up, migration.file);
  // Split into lines only when there is a waiver to find: a 50 MB data migration has none.
  const fileLines = WAIVER_ANYWHERE.test(migration.source) ? migration.source.split("\n") : null;
  const findings: Finding[] = [];
  const scope: MigrationScope = {
    tables: new Set(), objects: objectsCreatedIn(statements), indexes: new Set(), notValidHere: new Map(), defaults: new Set(),
    exclusive: new Map(), utc: false, dynamicFunctions: new Set(), reported: new Set(), emptied: new Set(), dropped: new Set(),
    transactionControl: transactionControlCount(statements), serverVersion: gate?.live.serverVersion ?? NEWEST_SERVER_VERSION,
    liveReferences: gate?.live.references ?? null,
  };
  const add = (raw: RawFinding, where: { line: number; column: number }, waived: string | null) => {
    const finding: Finding = { rule: raw.rule, migration: migration.id, file: migration.file, ...where, message: raw.message, fix: RULES[raw.rule].fix, waived, subject: raw.subject, notGating: null };
    finding.notGating = gateReason(finding, gate);
    findings.push(finding);
  };
  for (const statement of statements) {
    const waivers = fileLines ? waiversAbove(fileLines, statement.line) : [];
    for (const waiver of waivers) {
      const where = { line: waiver.line, column: waiver.column };
      if (!waiver.reason) add({ rule: "waiver-without-reason", message: `waiver of ${waiver.rules.join(", ")} gives no reason`, location: 0, subject: null }, where, null);
      for (const rule of waiver.rules.filter((r) => !(r in RULES))) {
        const meant = closest(rule, Object.keys(RULES));
        add({ rule: "unknown-rule", message: `the waiver names no known rule "${rule}"${meant ? ` — did you mean "${meant}"?` : ""}`, location: 0, subject: null }, where, null);
      }
    }
    for (const raw of statementFindings(statement, migration, scope, state)) {
      add(raw, place(raw.location), waivers.find((w) => w.rules.includes(raw.rule) && w.reason)?.reason ?? null);
    }
  }
  if (migration.safe === "after_deploy" && onlyExpands(statements)) {
    add({
      rule: "phase-suggestion", subject: null, location: statements[0].offset,
      message: "declared after_deploy, but its SQL only adds (no drop, rename, type change or new constraint): it could run before the deploy and ship a release earlier",
    }, place(statements[0].offset), null);
  }
  return findings;
}

export interface AnalysisOptions {
  /** Which migrations to report; all of them are analysed, in dependency order, for what they declare. */
  report?: (m: Migration) => boolean;
  /** The live database before the run: decides which findings stop it. Null: every table is assumed live and large. */
  gate?: Gate | null;
}

/** Analyses migrations in dependency order, so what one declares (a column type, a validated check) counts for the next. */
export async function analyzeMigrations(migrations: readonly Migration[], options: AnalysisOptions = {}): Promise<Finding[]> {
  await parseSections(upSections(migrations));
  const state = newAnalysisState();
  const findings: Finding[] = [];
  for (const m of dependencyOrder(migrations)) {
    const found = await analyzeMigration(m, state, options.gate ?? null);
    if (!options.report || options.report(m)) findings.push(...found);
  }
  return findings;
}

// ---- the gate: what is dangerous on this database, now ----------------------

/** What the database held before the run, read once from the catalog. */
export interface LiveSchema {
  /** Tables, views and indexes by key ("users", "app.users"): the table a lock on it falls on, and that table's size. */
  relations: Map<string, { table: string; bytes: number; heapBytes: number }>;
  /** Functions by name ("full_name", "app.full_name"). */
  functions: Set<string>;
  /** server_version_num (150004 for 15.4): some rewrites and scans depend on it. Absent: the newest PostgreSQL is assumed. */
  serverVersion?: number;
  /** Table -> the tables with a foreign key to it: what TRUNCATE ... CASCADE also empties. */
  references?: Map<string, Set<string>>;
}

/** The PostgreSQL the analysis assumes without a database: the newest (the parser's), so it never reports what current servers no longer do. */
export const NEWEST_SERVER_VERSION = 180000;

/** `15`, `9.6`: the major version of a server_version_num, as people say it. */
const majorVersion = (num: number): string => num >= 100000 ? String(Math.floor(num / 10000)) : `${Math.floor(num / 10000)}.${Math.floor(num / 100) % 100}`;

export interface Gate {
  live: LiveSchema;
  /** `pre` runs before the deploy (phase rules apply); `all` after it. */
  phase: Phase;
  /** Tables smaller than this (table, indexes and TOAST) are locked briefly: lock rules on them do not gate. */
  smallTableBytes: number;
}

/** 1 MB: rewritten, scanned or indexed in under half a second even on a busy 2-core server (README, "The gate"). */
export const DEFAULT_SMALL_TABLE_BYTES = 1024 * 1024;

/** Reads the relations and functions of the database, with sizes (pg_total_relation_size is the files' real size, not an estimate). */
export async function readLiveSchema(db: Queryable): Promise<LiveSchema> {
  // pg_relation_size takes an ACCESS SHARE lock: a table another session holds exclusively would stall the gate
  // before anything ran. After a second, read the sizes from the catalog instead, without locks; a table the
  // catalog knows no size of (never vacuumed or analysed) then counts as big, so it gates.
  try {
    return await withLockTimeout(db, (q) => readLiveSchemaWith(q, EXACT_SIZES, tableOf(db)));
  } catch (error) {
    if ((error as { code?: string }).code !== LOCK_NOT_AVAILABLE) throw error;
    return await readLiveSchemaWith(db, CATALOG_SIZES, tableOf(db));
  }
}

async function withLockTimeout<T>(db: Queryable, work: (q: Queryable) => Promise<T>): Promise<T> {
  const transaction = (db as Partial<Connection>).transaction;
  if (!transaction) return await work(db);
  return await transaction(async (tx) => {
    await tx.exec("set local lock_timeout = 1000");
    return await work(tx);
  });
}

/** A partitioned table and its partitions, at every level (pg_partition_tree is PostgreSQL 12+; pg_inherits is everywhere). */
const partitionsOf = (size: string) => `(with recursive tree(relid) as (select t.oid union all select i.inhrelid from pg_inherits i join tree on i.inhparent = tree.relid)
                 select coalesce(sum(${size}(relid)), 0) from tree)`;
const EXACT_SIZES = {
  bytes: `case when t.relkind = 'p' then ${partitionsOf("pg_total_relation_size")} else pg_total_relation_size(t.oid) end`,
  heap: `case when t.relkind = 'p' then ${partitionsOf("pg_relation_size")} else pg_relation_size(t.oid) end`,
};
const CATALOG_SIZES = {
  bytes: `case when t.relpages > 0 then t.relpages::bigint * current_setting('block_size')::int else 'Infinity'::float8 end`,
  heap: `case when t.relpages > 0 then t.relpages::bigint * current_setting('block_size')::int else 'Infinity'::float8 end`,
};

async function readLiveSchemaWith(db: Queryable, sizes: { bytes: string; heap: string }, history: HistoryTable): Promise<LiveSchema> {
  const own = (sql: string) => `coalesce(to_regclass('${sql.replace(/'/g, "''")}')::oid, 0)`;
  const rows = await db.query<{ schema: string; name: string; table_schema: string; table_name: string; bytes: string; heap_bytes: string }>(
    `select n.nspname as schema, c.relname as name, tn.nspname as table_schema, t.relname as table_name,
            (${sizes.bytes})::float8 as bytes, (${sizes.heap})::float8 as heap_bytes
       from pg_class c
       join pg_namespace n on n.oid = c.relnamespace
       left join pg_index i on i.indexrelid = c.oid
       join pg_class t on t.oid = coalesce(i.indrelid, c.oid)
       join pg_namespace tn on tn.oid = t.relnamespace
      where c.relkind in ('r', 'p', 'v', 'm', 'i', 'I', 'f')
        and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_toast'
        and t.oid not in (${own(history.sql)}, ${own(history.lockSql)})`,
  );
  const key = (schema: string, name: string) => (schema === "public" ? name : `${schema}.${name}`);
  // The server's version rides on the functions query (one row even with no functions): no extra round trip.
  const functions = await db.query<{ version: string; schema: string | null; name: string | null }>(
    `select current_setting('server_version_num') as version, f.schema, f.name
       from (select 1) one
       left join (select n.nspname as schema, p.proname as name from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                   where n.nspname not in ('pg_catalog', 'information_schema')) f on true`,
  );
  const foreignKeys = await db.query<{ schema: string; name: string; target_schema: string; target_name: string }>(
    `select rn.nspname as schema, r.relname as name, tn.nspname as target_schema, t.relname as target_name
       from pg_constraint k
       join pg_class r on r.oid = k.conrelid join pg_namespace rn on rn.oid = r.relnamespace
       join pg_class t on t.oid = k.confrelid join pg_namespace tn on tn.oid = t.relnamespace
      where k.contype = 'f'`,
  );
  const references = new Map<string, Set<string>>();
  for (const fk of foreignKeys) {
    const target = key(fk.target_schema, fk.target_name);
    references.set(target, (references.get(target) ?? new Set()).add(key(fk.schema, fk.name)));
  }
  return {
    relations: new Map(rows.map((r) => [key(r.schema, r.name), { table: key(r.table_schema, r.table_name), bytes: Number(r.bytes), heapBytes: Number(r.heap_bytes) }])),
    functions: new Set(functions.filter((f) => f.schema !== null && f.name !== null).map((f) => key(f.schema!, f.name!))),
    serverVersion: Number(functions[0].version),
    references,
  };
}

/** `1.5 MB`, `640 kB`: sizes as pg_size_pretty writes them (1024-based). */
export function formatSize(bytes: number): string {
  const units = ["bytes", "kB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${Number.isInteger(value) ? value : value.toFixed(1)} ${units[unit]}`;
}

/** `10MB`, `512kB`, `1GB`, `0` -> bytes; null when it is not a size. */
export function parseSize(text: string): number | null {
  const match = /^(\d+(?:\.\d+)?)\s*(b|bytes|kb|mb|gb|tb)?$/i.exec(text.trim());
  if (!match) return null;
  const unit = ["b", "kb", "mb", "gb", "tb"].indexOf((match[2] ?? "b").toLowerCase().replace("bytes", "b"));
  return Math.round(Number(match[1]) * 1024 ** unit);
}

/**
 * Why a finding does not stop this run, or null when it does. Without a live
 * database every finding but information gates. With one: an object that did
 * not exist before the run was created by it (nothing depends on it yet); a
 * phase rule gates only before the deploy; a lock rule only on a table at
 * least `smallTableBytes` large; an effect on any existing object.
 */
export function gateReason(f: Finding, gate: Gate | null): string | null {
  const rule: Rule = RULES[f.rule];
  if (rule.kind === "info") return "information only";
  if (!gate || rule.kind === "failure" || rule.kind === "waiver") return null;
  const { live } = gate;
  if (f.subject === null) return live.relations.size === 0 ? "the database had no tables before this run" : null;
  const relation = live.relations.get(f.subject);
  const schema = [...live.relations.keys()].some((k) => k.startsWith(`${f.subject}.`));
  if (!relation && !live.functions.has(f.subject) && !schema) return `${f.subject} did not exist before this run`;
  // What a statement does beyond what it says (rows emptied, a name cut) does not shrink with the table.
  if (rule.kind === "effect") return null;
  const bytes = relation?.bytes ?? 0;
  if (f.rule === "not-null-column-without-default" && gate.phase === "all") {
    return relation && relation.heapBytes === 0 ? `${relation.table} is empty` : null;
  }
  if (rule.kind === "phase") {
    const everyPhase = f.rule === "rename-table" || f.rule === "rename-column";
    return gate.phase === "all" && !everyPhase ? "--all runs after the deploy: no old code is left to break" : null;
  }
  if (relation && bytes < gate.smallTableBytes) {
    return `${relation.table} is small (${formatSize(bytes)}, below --small-table ${formatSize(gate.smallTableBytes)}): the lock is held briefly`;
  }
  return null;
}

// ---- down sections ------------------------------------------------------------

/**
 * Checks a migration's down section the way it will run during a rollback:
 * it must parse, and CONCURRENTLY, VACUUM or BEGIN/COMMIT must match the down's
 * own `transaction:` setting. Exported for `--check` too.
 */
export async function analyzeDown(migration: Migration): Promise<Finding[]> {
  const down = migration.down;
  if (!down || down.sql.trim() === "") return [];
  const finding = (rule: RuleId, message: string, where: { line: number; column: number }): Finding => ({
    rule, migration: migration.id, file: migration.file, ...where, message: `down section: ${message}`, fix: RULES[rule].fix,
    waived: null, subject: null, notGating: null,
  });
  let parsed: ParsedSection;
  try {
    parsed = await parseSection(down, migration.file);
  } catch (error) {
    if (!(error instanceof InputError)) throw error;
    const line = Number(/:(\d+): /.exec(error.message)?.[1] ?? down.line);
    return [finding("syntax-error", error.message.replace(/^.*?: SQL syntax error: /, "SQL syntax error: "), { line, column: 1 })];
  }
  const findings: Finding[] = [];
  let transactionControl: { kind: string; offset: number; count: number } | null = null;
  for (const { node, offset } of parsed.statements) {
    const [kind, body] = Object.entries(node)[0] as [string, Node];
    const concurrently = body.concurrent || (kind === "ReindexStmt" && (body.params ?? []).some((p: Node) => p.DefElem?.defname === "concurrently")) ||
      (kind === "VacuumStmt" && body.is_vacuumcmd);
    if (concurrently && down.transaction) {
      findings.push(finding("concurrently-in-transaction", `${statementWords(kind)} cannot run inside a transaction: the rollback would fail`, parsed.place(offset)));
    }
    if (kind === "TransactionStmt" && down.transaction && TRANSACTION_CONTROL.has(body.kind)) {
      transactionControl ??= { kind: body.kind, offset, count: 0 };
      transactionControl.count++;
    }
  }
  // As for an up: one finding per section says it all, however many COMMITs it has (Sourcegraph has downs with 150).
  if (transactionControl) {
    const { kind, offset, count } = transactionControl;
    findings.push(finding("transaction-control", `${kind.replace("TRANS_STMT_", "")}${andMoreTransactionControl(count)} inside a down section safemigrate runs in one transaction: it commits part of the rollback`, parsed.place(offset)));
  }
  return findings;
}

const statementWords = (kind: string): string =>
  ({ IndexStmt: "CREATE INDEX CONCURRENTLY", DropStmt: "DROP INDEX CONCURRENTLY", ReindexStmt: "REINDEX CONCURRENTLY", VacuumStmt: "VACUUM" })[kind] ?? kind;

// ============================================================================
// 6. Database adapters
// ============================================================================
//
// Two adapters, postgres.js for a server and PGlite embedded, behind one small
// interface. The one thing they must get right for the lock (section 7) is
// that a run's working session never changes under it: the postgres.js
// adapter keeps one connection with no lifetime limit and TCP keepalive, and
// once that connection has closed for any reason it refuses every further
// query instead of silently opening a new session (which would have lost the
// session's timeouts and, before this design, its lock). A second, stateless
// connection serves the lease's heartbeat; losing that one costs nothing.

/** What the runner needs from a connection: run SQL, with or without parameters. */
export interface Queryable {
  /** One statement, extended protocol, with parameters. */
  query<T = Record<string, unknown>>(text: string, params?: unknown[]): Promise<T[]>;
  /** One or more statements, simple protocol, no parameters. */
  exec(text: string): Promise<void>;
}

/** A connection that can also run a transaction and be closed: the lease's heartbeat and the pooler probe use one. */
export interface Connection extends Queryable {
  /** Runs `work` in a transaction, then the SQL `last` gives (if any) and COMMIT; rolls back if anything fails. */
  transaction<T>(work: (tx: Queryable) => Promise<T>, last?: () => string): Promise<T>;
  close(): Promise<void>;
}

export interface Database extends Connection {
  /** The database named for people: no password. */
  readonly label: string;
  /** Where this migration set's history (and the lease beside it) live. */
  readonly history: HistoryTable;
  /** A server reached over the network, where other runs and poolers can exist; false for embedded PGlite. */
  readonly server: boolean;
  /** A second connection to the same database (the same one again on PGlite, which has a single connection). */
  openSide(): Promise<Connection>;
  /**
   * The backend pid the login announced (BackendKeyData), null before the
   * first query. A pooler announces a pid of its own, so when it differs from
   * the server's pg_backend_pid() there is a pooler between us.
   */
  announcedPid(): number | null;
  /** The lease held by the run on this connection, once section 7 has taken it: every migration checks it. */
  lease: Lease | null;
}

/** The working session is gone: nothing more may run on it, and what was in flight did not commit (or may have, at COMMIT). */
export class ConnectionLostError extends SafemigrateError {
  constructor(message: string) {
    super(message, EXIT.failed);
    this.name = "ConnectionLostError";
  }
}

/** SQLSTATEs of a session the server ended: admin shutdown, crash shutdown, cannot connect now, and the 08 class. */
const SESSION_ENDED = /^(57P0[123]|08...)$/;
/** postgres.js's codes for a connection that closed, and the socket errors beneath them. */
const DRIVER_CONNECTION_CODES = new Set([
  "CONNECTION_CLOSED", "CONNECTION_ENDED", "CONNECTION_DESTROYED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "ECONNABORTED",
]);

/** Whether an error means the connection is gone (as opposed to a statement that failed on a live one). */
export function isConnectionLoss(error: unknown): boolean {
  if (error instanceof ConnectionLostError) return true;
  const e = error as { code?: string; message?: string; name?: string };
  if (typeof e?.code === "string" && (SESSION_ENDED.test(e.code) || DRIVER_CONNECTION_CODES.has(e.code))) return true;
  // postgres.js writing to a socket it has already dropped.
  return e instanceof TypeError && /\b(write|socket)\b/.test(e.message ?? "");
}

/** Secrets that must never reach any output; filled as URLs are parsed. */
const secrets = new Set<string>();

/**
 * Hides passwords: any `scheme://user:password@` in the text, and each known
 * password where it stands as `:password@` or, if long enough not to be an
 * ordinary word, on its own. (Replacing every occurrence of a password like
 * "postgres" would mangle the output and tell the reader what it was.)
 */
export function redact(text: string): string {
  // Most text holds no URL: the pattern needs "://", so a 10,000-line listing is not scanned for it.
  let out = text.includes("://") ? text.replace(/(\w+:\/\/[^:/@\s]*:)(?!<password>@)[^@\s]*@/g, "$1***@") : text;
  for (const secret of secrets) {
    out = out.split(`:${secret}@`).join(":***@");
    if (secret.length >= 12) out = out.split(secret).join("***");
  }
  return out;
}

/** `postgres://user@host:5432/db` for messages; the password never appears. */
export function describeUrl(url: string): string {
  if (url.startsWith("pglite:")) return url;
  try {
    const parsed = new URL(url);
    const user = parsed.username ? `${decodeURIComponent(parsed.username)}@` : "";
    return `${parsed.protocol}//${user}${parsed.host}${parsed.pathname}`;
  } catch {
    return "the database URL";
  }
}

function rememberPassword(url: string): void {
  const match = /^[a-z][\w+.-]*:\/\/[^:/@]*:([^@]*)@/i.exec(url);
  if (!match || !match[1]) return;
  secrets.add(match[1]);
  try {
    secrets.add(decodeURIComponent(match[1]));
  } catch { /* not percent-encoded */ }
}

/** Server errors raised while logging in: wrong password, no such role, no such database. */
const LOGIN_ERRORS = ["28P01", "28000", "3D000"];

/** Turns a driver or network error into one line a person can act on. */
function describeConnectionError(error: unknown, label: string): string {
  const e = error as { code?: string; message?: string; errno?: string };
  const message = e?.message ?? String(error);
  switch (e?.code) {
    case "ECONNREFUSED":
      return `could not connect to ${label}: connection refused — is the server running and accepting TCP connections?`;
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return `could not connect to ${label}: unknown host`;
    case "CONNECT_TIMEOUT":
    case "ETIMEDOUT":
      return `could not connect to ${label}: timed out`;
    case "28P01":
      return `could not connect to ${label}: ${message} (check the password in the database URL or PGPASSWORD)`;
    case "DEPTH_ZERO_SELF_SIGNED_CERT":
    case "SELF_SIGNED_CERT_IN_CHAIN":
    case "UNABLE_TO_VERIFY_LEAF_SIGNATURE":
    case "UNABLE_TO_GET_ISSUER_CERT_LOCALLY":
    case "CERT_HAS_EXPIRED":
    case "ERR_TLS_CERT_ALTNAME_INVALID":
      return `could not connect to ${label}: the server's SSL certificate could not be verified (${message}) — ` +
        `give its CA with sslrootcert=<file> (or PGSSLROOTCERT), or use sslmode=require to encrypt without verifying`;
    case "28000":
    case "3D000":
      return `could not connect to ${label}: ${message}`;
    default:
      return `database error on ${label}: ${message}`;
  }
}

/** postgres.js, imported on first use: --version, --help, --lint and --check without a database never load it. */
let postgresDriver: Promise<typeof postgres> | null = null;
let driver: typeof postgres | null = null;
export const loadPostgres = (): Promise<typeof postgres> => (postgresDriver ??= import("postgres").then((m) => (driver = m.default)));
/**
 * libpq's sslmode values, and what each asks of postgres.js. postgres.js
 * alone verifies under "no-verify" and never falls back under "allow", so
 * every mode is mapped here. "allow" is treated as "prefer" (both connect
 * with or without SSL; libpq only tries the plain connection first).
 */
export const SSL_MODES = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full", "no-verify"] as const;
export type SslMode = (typeof SSL_MODES)[number];

/** The URL shape shown in hints; redact() leaves its `<password>` placeholder alone. */
const URL_EXAMPLE = "postgres://user:<password>@host:5432/db";

/** Query parameters safemigrate interprets itself; the rest go to the server as settings, as postgres.js does. */
const URL_PARAMETERS = ["sslmode", "ssl", "sslrootcert", "host", "connect_timeout", "application_name"];

/** What a URL asks of the driver beyond DRIVER_OPTIONS: sslmode, libpq's `?host=/socket/dir`, connect_timeout, application_name. */
export function postgresOptions(url: string): { url: string; sslMode: SslMode; applicationName: string | null; options: postgres.Options<{}> } {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new InputError(`the database URL is not a valid URL — expected ${URL_EXAMPLE}`);
  }
  const param = (name: string) => parsed.searchParams.get(name);
  const sslText = param("sslmode") ?? param("ssl") ?? "prefer";
  const sslMode = (sslText === "true" ? "require" : sslText === "false" ? "disable" : sslText) as SslMode;
  if (!SSL_MODES.includes(sslMode)) {
    throw new InputError(`sslmode "${sslText}" in ${describeUrl(url)} is not one of ${SSL_MODES.join(", ")}`);
  }
  const rootCertFile = param("sslrootcert");
  let ca: string | undefined;
  if (rootCertFile && rootCertFile !== "system") {
    try {
      ca = readFileSync(rootCertFile, "utf8");
    } catch (error) {
      throw new InputError(`cannot read sslrootcert ${rootCertFile}: ${(error as Error).message}`);
    }
  }
  const verify = { rejectUnauthorized: true, ...(ca ? { ca } : {}) };
  const ssl: postgres.Options<{}>["ssl"] = {
    disable: false,
    allow: "prefer",
    prefer: "prefer",
    require: "require",
    "no-verify": "require",
    // verify-ca checks the chain but not the host name.
    "verify-ca": { ...verify, checkServerIdentity: () => undefined },
    "verify-full": verify,
  }[sslMode] as postgres.Options<{}>["ssl"];
  const socketDir = param("host")?.startsWith("/") ? param("host")! : null;
  const port = Number(parsed.port || 5432);
  const connectTimeout = Number(param("connect_timeout") || 0);
  for (const name of URL_PARAMETERS) parsed.searchParams.delete(name);
  return {
    url: parsed.toString(),
    sslMode,
    applicationName: param("application_name"),
    options: {
      ssl,
      ...(socketDir ? { path: `${socketDir}/.s.PGSQL.${port}` } : {}),
      ...(connectTimeout > 0 ? { connect_timeout: connectTimeout } : {}),
    },
  };
}

/** Whether the server answers an SSLRequest with "S"; null when it cannot be asked. */
async function serverAcceptsSsl(host: string, port: number): Promise<boolean | null> {
  const { connect: connectTcp } = await import("node:net");
  return await new Promise((resolve) => {
    const socket = connectTcp({ host, port }, () => socket.write(new Uint8Array([0, 0, 0, 8, 4, 210, 22, 47])));
    socket.setTimeout(5_000, () => (socket.destroy(), resolve(null)));
    socket.once("data", (data) => (socket.destroy(), resolve(data[0] === 83)));
    socket.once("error", () => resolve(null));
  });
}

/** A session that holds a lock a migration waits for, from pg_blocking_pids and pg_stat_activity. */
export interface BlockingSession {
  pid: number;
  application: string;
  state: string;
  query: string;
  /** How long its transaction (or, outside one, its query) has been running. */
  forMs: number;
}

/** Asked from a second session while the working session (its pid as the login announced it) waits. */
const BLOCKERS_QUERY = `
select b.pid, b.application_name as application, b.state, left(b.query, 200) as query,
       (extract(epoch from now() - coalesce(b.xact_start, b.query_start)) * 1000)::int as "forMs"
  from unnest(pg_blocking_pids($1)) as blocking(pid)
  join pg_stat_activity b on b.pid = blocking.pid
 order by b.pid`;

export interface ConnectOptions {
  /** --history-table; the default `safemigrate_history` in the current schema. */
  historyTable?: HistoryTable;
  /** For an embedded database: the contrib extensions to load (see extensionsCreatedBy). */
  extensions?: string[];
}

/**
 * postgres.js options for a connection a run depends on: no lifetime limit
 * (the driver's default of 30 to 60 minutes would replace the connection in
 * the middle of a long CREATE INDEX CONCURRENTLY) and TCP keepalive, so a
 * NAT or load balancer that drops idle connections sees traffic.
 */
const DRIVER_OPTIONS = {
  max: 1,
  connect_timeout: 10,
  max_lifetime: null,
  idle_timeout: 0,
  keep_alive: 30,
  // No array or custom-type parameters are ever sent: skip the catalog query on connect.
  fetch_types: false,
  // Never named prepared statements, not even the driver's own BEGIN and COMMIT: behind a transaction pooler a
  // name prepared on one server connection is missing on the next, and a COMMIT that fails that way and is
  // retried commits an aborted transaction, which is a ROLLBACK that reports success (seen in test/faults.test.ts).
  prepare: false,
  onnotice: () => {},
} as const;

/** A driver for the URL; `application_name` is the URL's (or PGAPPNAME's, see libpqUrl) when it gives one. */
function openDriver(url: string, label: string, applicationName: string, onclose?: () => void): postgres.Sql {
  const resolved = postgresOptions(url);
  try {
    return driver!(resolved.url, {
      ...DRIVER_OPTIONS,
      ...resolved.options,
      onclose,
      connection: { application_name: resolved.applicationName ?? applicationName },
    });
  } catch (error) {
    throw new InputError(`invalid database URL ${label}: ${redact((error as Error).message)}`);
  }
}

function driverQueryable(sql: postgres.Sql | postgres.TransactionSql): Queryable {
  return {
    query: <T>(text: string, params: unknown[] = []) =>
      sql.unsafe(text, params as postgres.ParameterOrJSON<never>[]) as unknown as Promise<T[]>,
    exec: async (text: string) => {
      await sql.unsafe(text);
    },
  };
}

/**
 * A postgres.js connection whose errors read as safemigrate's; `guard` runs
 * before each call, `lost` after a call that failed because the connection went.
 */
function driverConnection(
  client: postgres.Sql,
  url: string,
  label: string,
  guard: () => void = () => {},
  lost: () => void = () => {},
): Connection {
  // A lost connection has nothing left to finish: closing it need not wait (postgres.js would wait out its timeout).
  let gone = false;
  const wrap = async <T>(run: () => Promise<T>): Promise<T> => {
    try {
      guard();
      return await run();
    } catch (error) {
      const described = (await withoutSslExplained(error, url, label)) ?? asDriverError(error, label);
      if (isConnectionLoss(described)) {
        gone = true;
        lost();
      }
      throw described;
    }
  };
  const base = driverQueryable(client);
  return {
    query: (text, params) => wrap(() => base.query(text, params)),
    exec: (text) => wrap(() => base.exec(text)),
    transaction: (work, last) =>
      wrap(() =>
        client.begin((tx) => thenClosing(work, last)(driverQueryable(tx))) as Promise<never>
      ),
    close: () => client.end({ timeout: gone ? 0 : 5 }),
  };
}

export async function connectPostgres(url: string, options: ConnectOptions = {}): Promise<Database> {
  await loadPostgres();
  rememberPassword(url);
  const label = describeUrl(url);
  // The working session: once it closes, it stays closed (see the section's introduction). It counts as closed
  // when the driver reports the close, and earlier when a query fails because the connection went (a reset
  // socket): nothing more is sent on it. A query sent on a socket that is going may never settle: on Bun the
  // lease's release did that, and the run spun at 100% CPU instead of exiting 1 (test/faults.test.ts).
  let closed = false;
  let opened = false;
  const lost = () => new ConnectionLostError(`the connection to ${label} was lost`);
  const lose = () => {
    if (opened) closed = true;
  };
  // What is in flight when the session closes fails then: on Bun the driver can drop a socket without settling
  // what was sent on it (postgres.js's own transactions race their queries against the close the same way).
  const inFlight = new Set<(error: Error) => void>();
  const client = openDriver(url, label, "safemigrate", () => {
    lose();
    // The driver's own error, where it gives one, goes first.
    if (closed) setTimeout(() => inFlight.forEach((fail) => fail(lost())), 0);
  });
  const untilClosed = <T>(pending: Promise<T>): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      inFlight.add(reject);
      pending.then(resolve, reject).finally(() => inFlight.delete(reject));
    });
  const working = driverConnection(client, url, label, () => {
    if (closed) throw lost();
  }, lose);
  let announced: number | null = null;
  // Opened on the first successful query; a failed first connect is an ordinary connection error.
  const query: Queryable["query"] = async (text, params) => {
    const rows = await untilClosed(working.query(text, params));
    opened = true;
    announced ??= (rows as { state?: { pid?: number } }).state?.pid ?? null;
    return rows as never;
  };
  const exec: Queryable["exec"] = async (text) => {
    await untilClosed(working.exec(text));
    opened = true;
  };
  return {
    label,
    history: options.historyTable ?? historyTable(),
    server: true,
    lease: null,
    query,
    exec,
    transaction: (work, last) => transactionInMessages({ query, exec }, work, last),
    openSide: async () => driverConnection(openDriver(url, label, "safemigrate-lease"), url, label),
    announcedPid: () => announced,
    close: async () => {
      const closing = working.close();
      if (inFlight.size > 0) return await closing;
      // Idle, the session ends with the Terminate message the driver writes at once; waiting for the server to
      // hang up as well (~4 ms, a tenth of a no-op) only delays the exit.
      closing.catch(() => {});
      await Promise.race([closing, new Promise((resolve) => setTimeout(resolve, 0))]);
    },
  };
}

/** A transaction's work followed by the SQL `last` gives (a migration's history row), before COMMIT. */
const thenClosing = <T>(work: (tx: Queryable) => Promise<T>, last?: () => string) => async (tx: Queryable): Promise<T> => {
  const result = await work(tx);
  const closing = last?.();
  if (closing) await tx.exec(closing);
  return result;
};

/**
 * A transaction on the working session in as few round trips as it takes:
 * BEGIN goes out in one simple-protocol message with the first SQL `work`
 * sends, and `last()` (a migration's history row) in one with COMMIT, so a
 * migration of one statement costs two round trips instead of postgres.js's
 * four. This is safe on the working session only, which never reconnects
 * behind the run's back (once closed it refuses every query); and the COMMIT
 * message begins with a SAVEPOINT, which fails outside a transaction block,
 * so even a session that was somehow replaced could never commit `last`
 * without the work before it. Positions in errors count from the caller's text.
 */
async function transactionInMessages<T>(session: Queryable, work: (tx: Queryable) => Promise<T>, last?: () => string): Promise<T> {
  let begin = "begin;\n";
  let sent = false;
  const tx: Queryable = {
    query: async (text, params) => {
      if (begin) await session.exec(begin);
      begin = "";
      sent = true;
      return await session.query(text, params);
    },
    exec: async (text) => {
      const ahead = begin;
      begin = "";
      sent = true;
      try {
        await session.exec(ahead + text);
      } catch (error) {
        const e = error as { position?: string | number };
        if (ahead && Number(e?.position) > ahead.length) e.position = String(Number(e.position) - ahead.length);
        throw error;
      }
    },
  };
  try {
    const result = await work(tx);
    const closing = last?.();
    sent = true;
    await session.exec(`${begin}savepoint safemigrate_commit; release safemigrate_commit;\n${closing ? `${closing};\n` : ""}commit`);
    return result;
  } catch (error) {
    if (sent) await session.exec("rollback").catch(() => {});
    throw error;
  }
}

/**
 * postgres.js under sslmode=require against a server without SSL reports a
 * reset socket; ask the server (one SSLRequest) and say what is wrong.
 */
async function withoutSslExplained(error: unknown, url: string, label: string): Promise<DatabaseError | null> {
  const code = (error as { code?: string })?.code;
  if (!["ECONNRESET", "EPROTO", "EPIPE", "CONNECTION_CLOSED"].includes(code ?? "")) return null;
  const { sslMode: mode, options } = postgresOptions(url);
  if (options.path || ["disable", "allow", "prefer"].includes(mode)) return null;
  const server = new URL(url);
  if ((await serverAcceptsSsl(server.hostname || "localhost", Number(server.port || 5432))) !== false) return null;
  return new DatabaseError(
    `could not connect to ${label}: the server does not accept SSL connections, and sslmode=${mode} requires SSL — ` +
      `turn on ssl in the server's postgresql.conf, or use sslmode=prefer (or disable) for a server on a trusted network`,
  );
}

/** Errors raised by the server keep their fields (position, code) for the runner; others become DatabaseError. */
function asDriverError(error: unknown, label: string): unknown {
  if (error instanceof SafemigrateError) return error;
  if (isConnectionLoss(error)) {
    const e = error as { message?: string; code?: string };
    return Object.assign(new ConnectionLostError(redact(`the connection to ${label} was lost (${e?.message ?? String(error)})`)), { code: e?.code });
  }
  const e = error as { name?: string; severity?: string; code?: string };
  const fromServer = e?.name === "PostgresError" || (e?.severity !== undefined && e?.code !== undefined);
  if (fromServer && !LOGIN_ERRORS.includes(e.code!)) return error;
  // The code stays on the error: --wait retries the ones that mean "not up yet".
  return Object.assign(new DatabaseError(redact(describeConnectionError(error, label))), { code: e?.code });
}

/**
 * A new PGlite database runs initdb in WebAssembly: seconds, and the bulk of
 * a first run. A copy of a freshly initialised data directory (PGlite's
 * dumpDataDir, about 4.5 MB) is kept in the user's cache and loaded instead:
 * several times faster, for new directories, `pglite:memory`, --rehearse and
 * --plan without a database. A copy another PGlite build cannot start is
 * replaced. Null when there is no home to keep it in.
 */
function pgliteTemplateFile(): string | null {
  const base = process.env.XDG_CACHE_HOME || (process.env.HOME ? join(process.env.HOME, ".cache") : null);
  return base ? join(base, "safemigrate", "pglite-template.tar.gz") : null;
}

/** Keeps a dump of a database that was just initialised and not yet used; best effort. */
async function saveTemplate(db: { dumpDataDir(compression?: "gzip"): Promise<Blob | File> }, file: string): Promise<void> {
  try {
    const bytes = new Uint8Array(await (await db.dumpDataDir("gzip")).arrayBuffer());
    mkdirSync(join(file, ".."), { recursive: true });
    const temporary = `${file}.${process.pid}.tmp`;
    writeFileSync(temporary, bytes);
    renameSync(temporary, file);
  } catch { /* a read-only home only loses the speed-up */ }
}

/**
 * PGlite: `pglite:memory` or `pglite:<directory>`. Loaded only when used.
 * `options.extensions` are the contrib extensions to load (PGlite takes them when it starts).
 */
export async function connectPglite(url: string, options: ConnectOptions = {}): Promise<Database> {
  const target = url.slice("pglite:".length);
  const inMemory = target === "memory" || target === "";
  beforeWebAssembly();
  const { PGlite } = await import("@electric-sql/pglite");
  const extensions = await pgliteExtensions(options.extensions ?? []);
  // Only into nothing: a template is never unpacked over files already there.
  const isNew = inMemory || !existsSync(target) || readdirSync(target).length === 0;
  const templateFile = isNew ? pgliteTemplateFile() : null;
  const template = templateFile && existsSync(templateFile) ? new Blob([readFileSync(templateFile)]) : null;
  const open = async (loadDataDir: Blob | null) => {
    const settings = loadDataDir ? { loadDataDir, extensions } : { extensions };
    const db = inMemory ? new PGlite(settings) : new PGlite(target, settings);
    await db.waitReady;
    return db;
  };
  let db: Awaited<ReturnType<typeof open>>;
  try {
    try {
      db = await open(template);
    } catch (error) {
      if (!template) throw error;
      // A template from another PGlite build: start over without it.
      if (!inMemory) rmSync(target, { recursive: true, force: true });
      db = await open(null);
    }
  } catch (error) {
    throw new DatabaseError(`could not open the PGlite database in ${target}: ${(error as Error).message}`);
  }
  if (templateFile && !template) await saveTemplate(db, templateFile);
  type Conn = Pick<typeof db, "query" | "exec">;
  const queryable = (conn: Conn): Queryable => ({
    query: async <T>(text: string, params?: unknown[]) => (await conn.query(text, params)).rows as T[],
    exec: async (text: string) => {
      await conn.exec(text);
    },
  });
  const connection: Connection = {
    ...queryable(db),
    transaction: (work, last) =>
      db.transaction((tx) => thenClosing(work, last)(queryable(tx))),
    close: () => db.close(),
  };
  return {
    label: url,
    history: options.historyTable ?? historyTable(),
    server: false,
    lease: null,
    ...connection,
    // One connection: the heartbeat shares it (PGlite queues its queries), and must not close it.
    openSide: async () => ({ ...connection, close: async () => {} }),
    announcedPid: () => null,
  };
}

/** SQLSTATE of a write refused by a read-only transaction, a read-only database or a hot standby. */
const READ_ONLY_SQL_TRANSACTION = "25006";

/** An error no code path turned into a message: what it means and what to do, where that is known. */
export function describeUnexpected(error: unknown): string {
  const e = error as { code?: string; message?: string };
  const message = e?.message ?? String(error);
  if (e?.code === READ_ONLY_SQL_TRANSACTION) {
    return `the database is read-only (${message}): it is a hot standby / read replica, or default_transaction_read_only is on — ` +
      `point --database-url at the primary, or turn it off for this database (alter database <name> set default_transaction_read_only = off)`;
  }
  return `unexpected error: ${message}`;
}

/** Characters that end the password part of a URL early, with the form that keeps them in it. */
const URL_ENCODED: Record<string, string> = { "#": "%23", "?": "%3F", "/": "%2F", "@": "%40" };

/**
 * A password holding `#`, `?`, `/` or `@` must be percent-encoded in a URL;
 * unencoded, the URL parser cuts the URL there and the error says nothing
 * useful. Says which characters to encode, never showing the password.
 */
export function unencodedPassword(url: string): string | null {
  const scheme = /^[a-z][\w+.-]*:\/\//i.exec(url);
  const at = url.lastIndexOf("@");
  if (!scheme || at < 0) return null;
  const userinfo = url.slice(scheme[0].length, at);
  const colon = userinfo.indexOf(":");
  if (colon < 0) return null;
  const password = userinfo.slice(colon + 1);
  // An `@` in the query string (`?options=a@b`) is not the end of the password.
  if (/\?[^#]*=/.test(password) && /\//.test(userinfo)) return null;
  secrets.add(password);
  const bad = [...new Set([...password].filter((c) => c in URL_ENCODED))];
  if (bad.length === 0) return null;
  return `the password in the database URL contains ${bad.map((c) => `"${c}"`).join(", ")}, which must be percent-encoded in a URL ` +
    `(${bad.map((c) => `${c} as ${URL_ENCODED[c]}`).join(", ")}): ` +
    `${scheme[0]}${userinfo.slice(0, colon)}:<password, encoded>@${url.slice(at + 1)} ` +
    `(encodeURIComponent in JavaScript, urllib.parse.quote(p, safe="") in Python)`;
}

/** Extensions PGlite ships as contrib modules, by the name CREATE EXTENSION uses. */
async function pgliteExtensions(names: string[]): Promise<import("@electric-sql/pglite").Extensions> {
  const loaded: import("@electric-sql/pglite").Extensions = {};
  for (const name of new Set(names)) {
    const module = name.replace(/-/g, "_");
    try {
      loaded[module] = (await import(`@electric-sql/pglite/contrib/${module}`))[module];
    } catch {
      // Not shipped with PGlite: CREATE EXTENSION will say so, naming the migration.
    }
  }
  return loaded;
}

/** Extensions the migrations create (`create extension [if not exists] "name"`), for PGlite to load. */
export function extensionsCreatedBy(migrations: readonly Migration[]): string[] {
  const names = migrations.flatMap((m) =>
    [...m.source.matchAll(/create\s+extension\s+(?:if\s+not\s+exists\s+)?"?([\w-]+)"?/gi)].map((match) => match[1].toLowerCase())
  );
  return [...new Set(names)].sort();
}

/** Network errors and "the database system is starting up": the server is not there yet, so --wait retries them. */
const NOT_UP_YET = ["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "CONNECT_TIMEOUT", "ETIMEDOUT", "ECONNRESET", "EHOSTUNREACH", "57P03"];

/**
 * --wait: a first query, retried while the server is not up yet, for at most
 * `waitMs` (containers start together; the database may come up after us).
 */
export async function waitForDatabase(db: Database, waitMs: number, onWait?: () => void): Promise<void> {
  const deadline = Date.now() + waitMs;
  for (let attempt = 0;; attempt++) {
    try {
      await db.query("select 1");
      return;
    } catch (error) {
      if (!NOT_UP_YET.includes((error as { code?: string }).code ?? "")) throw error;
      if (Date.now() >= deadline) {
        throw new DatabaseError(`${(error as Error).message} (waited ${formatDuration(waitMs)} with --wait)`);
      }
      if (attempt === 0) onWait?.();
      await sleep(Math.min(100 * 2 ** attempt, 2_000, Math.max(deadline - Date.now(), 10)));
    }
  }
}

export function connect(url: string, options: ConnectOptions = {}): Promise<Database> {
  if (url.startsWith("pglite:")) return connectPglite(url, options);
  const password = unencodedPassword(url);
  if (password) throw new InputError(password);
  if (/^postgres(ql)?:\/\//i.test(url)) return connectPostgres(url, options);
  throw new InputError(
    `unsupported database URL ${describeUrl(url)} — use ${URL_EXAMPLE}, pglite:<dir> or pglite:memory`,
  );
}

// ============================================================================
// 7. Executing a plan
// ============================================================================
//
// One run at a time per migration set, and a migration never commits unless
// its run still holds the lock. The lock is a lease: one row in a table beside
// the history (`safemigrate_history_lock`) naming its owner, renewed by a
// heartbeat on a second connection. Every migration's transaction begins with
// a fence: it takes a KEY SHARE lock on that row and fails unless this run
// owns it, so no other run can take the lease over until that transaction has
// committed or rolled back, and a run that lost the lease (its process paused
// past the expiry, its heartbeat cut off) cannot commit anything more. This
// holds through a transaction pooler, where a session-level advisory lock
// would stay behind on a pooled server connection and protect nothing.
//
// A lease whose holder died would block everyone until it expires; on a
// direct connection the row records the holder's backend, and a lease whose
// backend has gone is taken over at once. The history row is a plain insert,
// so even if all of this failed, a second application of a transactional
// migration would hit the primary key and roll back. A `transaction: false`
// migration cannot be fenced statement by statement through a pooler, so it
// is refused there (use --direct-url); elsewhere it leaves a marker in the
// history before its first statement, so an interrupted one is named by the
// next run instead of failing it with "already exists".

const historyDdl = (t: HistoryTable) => `
create table if not exists ${t.sql} (
  id              text primary key,
  checksum        text,
  safe            text,
  phase           text,
  detected_at     timestamptz,
  applied_at      timestamptz,
  duration_ms     integer,
  down_sql        text,
  depends         text,
  note            text,
  started_at      timestamptz,
  statements_done integer
)`;

/** Columns added since the first release: a history table made by it is brought up to date once. */
const historyUpgradeDdl = (t: HistoryTable) =>
  `alter table ${t.sql} add column if not exists started_at timestamptz, add column if not exists statements_done integer`;

const leaseDdl = (t: HistoryTable) => `
create table if not exists ${t.lockSql} (
  id            integer primary key default 1 check (id = 1),
  owner         text not null unique,
  holder        text not null,
  pid           integer,
  backend_start timestamptz,
  acquired_at   timestamptz not null,
  expires_at    timestamptz not null
)`;

const tableOf = (db: Queryable): HistoryTable => (db as Partial<Database>).history ?? historyTable();

/** Creates the history table (current columns) if needed; for rehearsals and tests that run without a lease. */
export async function createHistoryTable(db: Queryable): Promise<void> {
  await db.exec(`${historyDdl(tableOf(db))}; ${historyUpgradeDdl(tableOf(db))}`);
}

/** The working session as the server knows it: a lease taken by it names it, so that a run can tell when it is gone. */
interface ServerSession {
  pid: number | null;
  /** pg_stat_activity's backend_start, as text in this session's own format. */
  backendStart: string | null;
}

/**
 * Checks the tables in one round trip and creates what is missing. Racing
 * first runs can both try to create a table; the loser sees a duplicate and
 * simply checks again. Also returns the session's pid and start.
 */
async function prepareTables(db: Database): Promise<ServerSession> {
  const t = db.history;
  for (let attempt = 1;; attempt++) {
    const [state] = await db.query<{ history: boolean; lease: boolean; current: boolean; pid: number | null; backend_start: string | null }>(
      // Literals, not parameters: a parameterised query costs postgres.js a second round trip (Parse/Describe first).
      `select to_regclass(${sqlLiteral(t.sql)}) is not null as history, to_regclass(${sqlLiteral(t.lockSql)}) is not null as lease,
              exists (select from pg_attribute where attrelid = to_regclass(${sqlLiteral(t.sql)}) and attname = 'statements_done'
                      and not attisdropped) as current,
              ${db.server ? SESSION_SETTINGS : "0"} as settings, pg_backend_pid() as pid,
              (select backend_start::text from pg_stat_activity where pid = pg_backend_pid()) as backend_start`,
    );
    const session = { pid: state.pid, backendStart: state.backend_start };
    if (state.history && state.lease && state.current) return session;
    try {
      await db.exec([historyDdl(t), historyUpgradeDdl(t), leaseDdl(t)].join(";\n"));
      return session;
    } catch (error) {
      const code = (error as { code?: string }).code;
      // Runs creating the tables at once: the loser sees a duplicate key in the catalog, the table, or its row type.
      if (attempt >= 3 || !["23505", "42P07", "42710"].includes(code ?? "")) throw await historyTableRefused(db, error);
    }
  }
}

/**
 * The working session must outlive idle periods: a database that sets
 * idle_session_timeout would otherwise end it (and, through it, the run).
 * set_config only for settings this server has (PostgreSQL 14+ for one of them).
 */
const SESSION_SETTINGS = `(select count(set_config(name, '0', false)) from pg_settings
   where name in ('idle_session_timeout', 'idle_in_transaction_session_timeout'))`;

export async function historyTableExists(db: Queryable): Promise<boolean> {
  // A literal, not a parameter: one round trip instead of postgres.js's two.
  const [row] = await db.query<{ found: string | null }>(`select to_regclass(${sqlLiteral(tableOf(db).sql)})::text as found`);
  return row.found !== null;
}

/**
 * Every column (a table from before the marker columns reads the same, its
 * missing columns undefined), as plain rows: aggregating them into one JSON
 * value on the server cost it twice the time of sending the rows (3.5 µs a
 * row), and decoding 10,000 rows is no slower than parsing that JSON on Bun,
 * Deno or Node.
 */
const historyRows = (table: string) => `select * from ${table} order by id`;

/** The history, the table known to exist (under the lease, prepareTables made it). */
async function queryHistory(db: Queryable): Promise<HistoryRow[]> {
  const rows = await db.query<Record<string, unknown>>(historyRows(tableOf(db).sql));
  const table = tableOf(db).name;
  const history: HistoryRow[] = new Array(rows.length);
  for (let i = 0; i < rows.length; i++) history[i] = historyRowFrom(rows[i], table);
  return history;
}

/**
 * What a plan needs of the history, under the lease (so the table has every
 * column). Leaving out the down SQL, the stored dependencies (a JSON.parse a
 * row) and the rest cut a no-op's decoding of 10,000 rows by a quarter.
 */
async function queryPlanRows(db: Queryable): Promise<PlanRow[]> {
  const rows = await db.query<Record<string, unknown>>(
    `select id, checksum, ${epochMs("detected_at")}, ${epochMs("applied_at")}, ${epochMs("started_at")}, statements_done, note
       from ${tableOf(db).sql} order by id collate "C"`,
  );
  const history: PlanRow[] = new Array(rows.length);
  for (let i = 0; i < rows.length; i++) {
    const row = rows[i];
    history[i] = {
      id: row.id as string,
      checksum: row.checksum as string | null,
      detectedAt: dateOf(row.detected_at),
      appliedAt: dateOf(row.applied_at),
      startedAt: dateOf(row.started_at),
      statementsDone: row.statements_done as number | null,
      note: row.note as string | null,
    };
  }
  return history;
}

export async function readHistory(db: Queryable): Promise<HistoryRow[]> {
  if (!(await historyTableExists(db))) return [];
  return await queryHistory(db);
}

/**
 * The history as --status shows it: not the down SQL and the rest. The stored
 * dependencies are read to be checked: --status is where a hand-edited row
 * that a rollback could not read is named.
 */
async function readStatusRows(db: Queryable): Promise<StatusHistoryRow[]> {
  if (!(await historyTableExists(db))) return [];
  const rows = await db.query<Record<string, unknown>>(`select id, checksum, safe, ${epochMs("detected_at")}, ${epochMs("applied_at")}, depends from ${tableOf(db).sql} order by id collate "C"`);
  const table = tableOf(db).name;
  const history: StatusHistoryRow[] = new Array(rows.length);
  for (let i = 0; i < rows.length; i++) {
    const row = rows[i];
    storedDepends(table, row.id as string, row.depends as string | null);
    history[i] = {
      id: row.id as string,
      checksum: row.checksum as string | null,
      safe: row.safe as string | null,
      detectedAt: dateOf(row.detected_at),
      appliedAt: dateOf(row.applied_at),
    };
  }
  return history;
}

/** A timestamp column: the drivers give a Date; milliseconds (epochMs) or a string (a JSON copy of a row) are converted. */
const dateOf = (value: unknown): Date | null =>
  value === null || value === undefined ? null : value instanceof Date ? value : new Date(value as string | number);

/**
 * A timestamp column as milliseconds since 1970 (a float8), under its own
 * name: a number costs the client a quarter of parsing the timestamp's text
 * (10,000 rows: 2 ms against 7). Cut to the millisecond first, as Date
 * parsing the text does, so both give the same Date.
 */
const epochMs = (column: string) => `round(extract(epoch from date_trunc('milliseconds', ${column})) * 1000)::float8 as ${column}`;

function historyRowFrom(row: Record<string, unknown>, table: string): HistoryRow {
  return {
    id: row.id as string,
    checksum: row.checksum as string | null,
    safe: row.safe as string | null,
    phase: row.phase as string | null,
    detectedAt: dateOf(row.detected_at),
    appliedAt: dateOf(row.applied_at),
    durationMs: row.duration_ms as number | null,
    downSql: row.down_sql as string | null,
    depends: storedDepends(table, row.id as string, (row.depends as string | null | undefined) ?? null),
    startedAt: dateOf(row.started_at),
    statementsDone: (row.statements_done as number | null) ?? null,
    note: (row.note as string | null) ?? null,
  };
}

/** The `depends` column: a JSON array of ids, or null. Anything else was written by hand and is named, not crashed on. */
function storedDepends(table: string, id: string, text: string | null): string[] | null {
  if (text === null) return null;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    value = undefined;
  }
  if (Array.isArray(value) && value.every((v) => typeof v === "string")) return value;
  throw new InputError(
    `${table}: the row of ${id} has depends = ${JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}…` : text)}, ` +
      `which is not a JSON array of migration ids — correct it, e.g. ` +
      `update ${table} set depends = '["0001_previous"]' where id = ${sqlLiteral(id)} (or set it to null)`,
  );
}

export type RunEvent =
  | { type: "waiting-for-lock"; holder: string }
  | { type: "starting"; id: string; safe: Safe | null; verb: "apply" | "roll back" }
  | { type: "statement"; id: string; file: string; line: number; sql: string }
  | { type: "applied"; migration: Migration; durationMs: number }
  | { type: "reverted"; step: RevertStep; durationMs: number }
  | {
    type: "lock-timeout"; id: string; file: string; line: number; attempt: number; attempts: number; waitMs: number;
    /** Who held the lock, asked while the statement waited. */
    blockers: BlockingSession[];
  }
  | { type: "dropped-invalid-index"; name: string };

export interface AppliedMigration {
  id: string;
  safe: Safe;
  durationMs: number;
}

export interface RunResult {
  plan: Plan;
  applied: AppliedMigration[];
  dryRun: boolean;
  /** Invalid indexes found before the run (left by a failed CREATE INDEX CONCURRENTLY), and whether they were dropped. */
  invalidIndexes: { name: string; definition: string; dropped: boolean }[];
  /** The analysis of what is (or would be) applied, each finding judged by the gate; a plan keeps the gating ones too. */
  findings?: Finding[];
}

export interface LockOptions {
  lockWaitMs?: number;
  /** How long the lease lasts without a heartbeat (default 60 s): how long a dead run behind a pooler blocks the next. */
  leaseMs?: number;
  onEvent?: (event: RunEvent) => void;
  /** Timeouts and retries for the statements that run; DEFAULT_EXECUTION when absent. */
  execution?: Omit<ExecutionSettings, "onEvent">;
}

const executionOf = (options: LockOptions): ExecutionSettings => ({ ...(options.execution ?? DEFAULT_EXECUTION), onEvent: options.onEvent });

export interface RunOptions extends LockOptions {
  phase: Phase;
  mode: Mode;
  /** false skips the deploy-safety analysis (--no-lint). */
  lint?: boolean;
  /** Drop invalid indexes left by a failed CREATE INDEX CONCURRENTLY before applying (--repair-invalid-indexes). */
  repairInvalidIndexes?: boolean;
  /** Interrupted `transaction: false` migrations to run again from their first statement (--rerun). */
  rerun?: string[];
  /** Show the plan only: no lock, no history table, no detection. */
  dryRun?: boolean;
  now?: () => Date;
  /** The gate: tables below this size are locked briefly (--small-table); findings of migrations up to `lintAfter` are not reported. */
  smallTableBytes?: number;
  lintAfter?: string | null;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- The lease ----------------------------------------------------------------

export const DEFAULT_LEASE_MS = 60_000;

/** The lock a run holds: see the section's introduction. */
export interface Lease {
  readonly token: string;
  /** Through a pooler (the backend the server reports is not the one the login announced): no session state to rely on. */
  readonly pooled: boolean;
  /** Why this run no longer holds the lease; null while it does. Set by the heartbeat, checked before every statement. */
  lost: string | null;
  /** SQL that fails with SQLSTATE SM001 unless this run owns the lease, and otherwise keeps it from being taken over until the transaction ends. */
  readonly fence: string;
  release(): Promise<void>;
}

const FENCE_FAILED = "SM001";

/** Raised when the run finds it no longer holds the lease: it stops before its next statement. */
export class LeaseLostError extends SafemigrateError {
  constructor(message: string) {
    super(message, EXIT.failed);
    this.name = "LeaseLostError";
  }
}

function fenceSql(t: HistoryTable, token: string): string {
  return `do $fence$ begin
  perform 1 from ${t.lockSql} where id = 1 and owner = '${token}' for key share;
  if not found then
    raise exception 'this run no longer holds the migration lease on ${t.name.replace(/'/g, "")}' using errcode = '${FENCE_FAILED}';
  end if;
end $fence$`;
}

/**
 * Takes the lease if it is free, expired, or held by a backend that no longer
 * exists (a killed run on a direct connection). Behind a pooler the backend
 * says nothing about the client, so only expiry frees it there. One statement,
 * so one round trip and its own transaction: its lock timeout is set (locally,
 * for that transaction) by `set_config` in the row it inserts from, which is
 * computed before the insert can wait for the lease row's lock.
 *
 * pg_stat_activity is read nowhere else in this statement: the server takes
 * its snapshot of it once per transaction, at the first read. Read before a
 * wait on the lease row (for this session's own backend_start, as it once
 * was), that snapshot predates the holder found after the wait, and a live
 * holder that connected meanwhile looked gone. The session's own start comes
 * from prepareTables instead.
 */
const TAKE_LEASE = (t: HistoryTable, token: string, holder: string, leaseMs: number, session: ServerSession | null) => `
insert into ${t.lockSql} as l (id, owner, holder, pid, backend_start, acquired_at, expires_at)
select 1, ${sqlLiteral(token)}, ${sqlLiteral(holder)}, p.pid, p.backend_start, clock_timestamp(), clock_timestamp() + ${sqlLiteral(Math.round(leaseMs))} * interval '1 millisecond'
  from (select ${session?.backendStart ? "pg_backend_pid()" : "null::integer"} as pid,
               ${session?.backendStart ? `${sqlLiteral(session.backendStart)}::timestamptz` : "null::timestamptz"} as backend_start,
               set_config('lock_timeout', '1000', true) as lock_timeout) p
on conflict (id) do update
   set owner = excluded.owner, holder = excluded.holder, pid = excluded.pid, backend_start = excluded.backend_start,
       acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
 where l.expires_at < clock_timestamp()
    or (l.backend_start is not null
        and not exists (select from pg_stat_activity a where a.pid = l.pid and a.backend_start = l.backend_start))
returning owner`;

const describeHolder = (t: HistoryTable) => `
select holder, acquired_at as "acquiredAt", greatest(0, extract(epoch from expires_at - clock_timestamp()))::int as "expiresIn"
  from ${t.lockSql} where id = 1`;

async function currentHolder(db: Database): Promise<string> {
  const [row] = await db.query<{ holder: string; acquiredAt: Date; expiresIn: number }>(describeHolder(db.history)).catch(() => []);
  return row ? `${row.holder}, since ${new Date(row.acquiredAt).toISOString()}; its lease runs out in ${row.expiresIn} s unless renewed` : "unknown";
}

/**
 * One attempt. Taking over an expired lease waits for the lease row's KEY
 * SHARE lock, which every fenced transaction holds: a run paused inside a
 * migration would make that wait endless, so each attempt waits at most a
 * second and the caller keeps to --lock-wait.
 */
/** `session` is null through a pooler: the backend then says nothing about the run. */
async function takeLease(db: Database, token: string, holder: string, leaseMs: number, session: ServerSession | null): Promise<boolean> {
  try {
    // Literals, not parameters: one round trip instead of two (see prepareTables).
    return (await db.query(TAKE_LEASE(db.history, token, holder, leaseMs, session))).length > 0;
  } catch (error) {
    if ((error as { code?: string }).code === LOCK_NOT_AVAILABLE) return false;
    throw error;
  }
}

export async function acquireLease(
  db: Database,
  session: ServerSession,
  options: { waitMs: number; leaseMs: number; onWait?: (holder: string) => void },
): Promise<Lease> {
  const t = db.history;
  const token = crypto.randomUUID();
  const announced = db.server ? db.announcedPid() : null;
  const pooled = db.server && (announced === null || announced !== session.pid);
  const holder = `${builtin("node:os").hostname()} pid ${process.pid}${pooled ? " (through a pooler)" : ""}`;
  const deadline = Date.now() + options.waitMs;
  for (let attempt = 0;; attempt++) {
    if (await takeLease(db, token, holder, options.leaseMs, pooled ? null : session)) break;
    if (attempt === 0) options.onWait?.(await currentHolder(db));
    if (Date.now() >= deadline) {
      throw new DatabaseError(
        `another safemigrate run holds the migration lock on ${db.label} (${await currentHolder(db)}); ` +
          `gave up after ${formatDuration(options.waitMs)} (wait longer with --lock-wait, or find the other run)`,
      );
    }
    await sleep(Math.min(50 * 2 ** attempt, 1_000) * (0.5 + Math.random() / 2));
  }
  const lease: Lease = { token, pooled, lost: null, fence: fenceSql(t, token), release: async () => {} };
  lease.release = startHeartbeat(db, lease, options.leaseMs);
  return lease;
}

/**
 * Renews the lease every quarter of its length on a side connection, opened
 * only if the run lasts that long; marks it lost when another run owns it.
 * Returns what stops the heartbeat and gives the lease up.
 */
function startHeartbeat(db: Database, lease: Lease, leaseMs: number): () => Promise<void> {
  const t = db.history;
  let side: Promise<Connection> | null = null;
  let beating: Promise<void> = Promise.resolve();
  // The side connection idles between beats: each beat also switches the idle timeouts off for its session.
  const renew = `update ${t.lockSql} set expires_at = clock_timestamp() + $2 * interval '1 millisecond'
     where id = 1 and owner = $1 and ${SESSION_SETTINGS} >= 0 returning id`;
  const beat = async () => {
    // A session the server ended between beats fails once; the driver reconnects for the second try.
    for (let attempt = 1; attempt <= 2; attempt++) {
      try {
        side ??= db.openSide();
        const renewed = await (await side).query(renew, [lease.token, leaseMs]);
        if (renewed.length === 0) lease.lost ??= "another run took the lease over after it expired (was this process paused?)";
        return;
      } catch {
        // A failed renewal is not a lost lease: the fence decides.
      }
    }
  };
  const timer = setInterval(() => (beating = beat()), Math.max(10, Math.floor(leaseMs / 4)));
  (timer as { unref?: () => void }).unref?.();
  return async () => {
    clearInterval(timer);
    await beating;
    await db.exec(`delete from ${t.lockSql} where id = 1 and owner = '${lease.token}'`).catch(() => {});
    if (side) await (await side).close().catch(() => {});
  };
}

/**
 * Everything that writes runs here: with the tables in place, under the
 * lease, reading the history (with `read`: all of it, or what a plan needs)
 * only once the lease is held.
 */
export async function underLock<T, R extends PlanRow>(
  db: Database,
  options: LockOptions,
  read: (db: Database) => Promise<R[]>,
  work: (history: R[]) => Promise<T>,
): Promise<T> {
  const session = await prepareTables(db);
  const lease = await acquireLease(db, session, {
    waitMs: options.lockWaitMs ?? 5 * 60_000,
    leaseMs: options.leaseMs ?? DEFAULT_LEASE_MS,
    onWait: (holder) => options.onEvent?.({ type: "waiting-for-lock", holder }),
  });
  db.lease = lease;
  try {
    return await work(await read(db));
  } finally {
    db.lease = null;
    await lease.release();
  }
}

/**
 * PostgreSQL 15 gives only the owner CREATE on `public`: a deploy role that
 * does not own it cannot create the history table. Say where the table goes
 * and how to place it, instead of the bare "permission denied".
 */
async function historyTableRefused(db: Database, error: unknown): Promise<unknown> {
  // Anything else (a read-only database, say) is explained where every unexpected error is: describeUnexpected.
  if ((error as { code?: string })?.code !== "42501") return error;
  const t = db.history;
  const [where] = await db.query<{ role: string; schema: string | null; path: string }>(
    `select current_user as role, current_schema() as schema, current_setting('search_path') as path`,
  ).catch(() => [{ role: "<role>", schema: null, path: "?" }]);
  const qualified = t.name.includes(".");
  const schema = qualified ? t.name.split(".")[0] : where.schema ?? "public";
  return new DatabaseError(
    `cannot create the history table ${t.name} (and ${t.name}_lock) in schema "${schema}" on ${db.label}: ${(error as Error).message}\n` +
      (qualified ? "" : `  safemigrate keeps its history in the first schema of the search_path (${where.path}), where your migrations' tables go too. `) +
      `As the schema's owner (or a superuser), run:\n` +
      `    grant create on schema ${schema} to ${where.role};\n` +
      `  or keep the history in a schema the role owns: create schema safemigrate authorization ${where.role}; ` +
      `and pass --history-table safemigrate.${HISTORY_TABLE}`,
  );
}

/** `transaction: false` statements commit one by one: through a pooler nothing can fence them, so refuse before starting. */
export function refuseUnfencedThroughPooler(db: Database, sections: readonly { id: string; file: string; section: SqlSection }[]): void {
  if (!db.lease?.pooled) return;
  const unfenced = sections.filter((s) => !s.section.transaction);
  if (unfenced.length === 0) return;
  throw new InputError(
    `${unfenced.map((s) => `${s.file}:${s.section.line}`).join(", ")}: ${unfenced.map((s) => s.id).join(", ")} ` +
      `${unfenced.length === 1 ? "runs" : "run"} outside a transaction ("transaction: false"), and ${db.label} is reached ` +
      `through a connection pooler (the server's backend is not the one the login announced). Through a transaction ` +
      `pooler its statements could land on different server connections, without its timeouts and without the lock's ` +
      `protection. Nothing was applied. Give a direct connection to the database with --direct-url or ` +
      `SAFEMIGRATE_DIRECT_URL (the pooled URL can stay in DATABASE_URL for the application)`,
  );
}

function describeServerError(error: unknown): string {
  const e = error as { message?: string; code?: string; detail?: string; hint?: string };
  let text = e?.message ?? String(error);
  if (e?.code) text += ` (SQLSTATE ${e.code})`;
  if (e?.detail) text += `\n  detail: ${e.detail}`;
  if (e?.hint) text += `\n  hint: ${e.hint}`;
  return text;
}

/** How statements run: the timeouts safemigrate sets and how often a lock timeout is retried. */
export interface ExecutionSettings {
  /** lock_timeout in ms (default 5 s): a statement waiting this long for a lock gives up instead of queueing everyone behind it. */
  lockTimeoutMs: number;
  /** statement_timeout in ms; 0 for off (the default). */
  statementTimeoutMs: number;
  /** Attempts for a statement that hit lock_timeout (default 5). */
  attempts: number;
  /**
   * A transactional section of at least this many statements is sent in
   * batches (default BATCH_FROM_STATEMENTS); a shorter one statement by
   * statement, so that a lost connection names the statement in flight.
   */
  batchFrom?: number;
  onEvent?: (event: RunEvent) => void;
}

export const DEFAULT_EXECUTION: ExecutionSettings = { lockTimeoutMs: 5_000, statementTimeoutMs: 0, attempts: 5 };

const LOCK_NOT_AVAILABLE = "55P03";
const isLockTimeout = (error: unknown) => (error as { code?: string })?.code === LOCK_NOT_AVAILABLE;
/** 0.5 s, 1 s, 2 s, ... up to 30 s, with jitter so competing runs don't retry in step. */
const backoffMs = (attempt: number) => Math.min(500 * 2 ** (attempt - 1), 30_000) * (0.75 + Math.random() / 2);

/** What one SQL section is, for messages and for the marker a `transaction: false` one leaves. */
export interface SectionRun {
  id: string;
  file: string;
  verb: string;
  lockTimeoutMs?: number | null;
  statementTimeoutMs?: number | null;
  /** `transaction: false` only: record that it started (in a fenced transaction) and how far it got. */
  marker?: {
    start(q: Queryable): Promise<void>;
    progress(q: Queryable, done: number): Promise<void>;
    /** A statement failed on a live connection: say which, so the next run reports a failure, not an interruption. */
    failed(q: Queryable, statement: number, message: string): Promise<void>;
    /** All statements ran: the migration is applied (in place of `record`). */
    complete(q: Queryable, durationMs: number): Promise<void>;
  };
}

/** Stops the run before its next statement when the lease is gone. */
function checkLease(db: Database, what: SectionRun): void {
  if (db.lease?.lost) throw new LeaseLostError(`stopped before ${what.verb} ${what.id}: ${db.lease.lost}`);
}

/**
 * While a statement waits, asks once (just before lock_timeout would end the
 * wait) who holds the lock: once the timeout has fired, the wait and with it
 * pg_blocking_pids are gone.
 */
function watchBlockers(db: Database, lockTimeoutMs: number): { seen: () => Promise<BlockingSession[]>; stop: () => void } {
  let asked: Promise<BlockingSession[]> = Promise.resolve([]);
  const ask = async (pid: number) => {
    const side = await db.openSide();
    try {
      return await side.query<BlockingSession>(BLOCKERS_QUERY, [pid]);
    } finally {
      await side.close();
    }
  };
  // PGlite has one session (nothing else holds locks); through a pooler the announced pid is not the server's.
  const pid = db.server ? db.announcedPid() : null;
  const timer = lockTimeoutMs > 0 && pid !== null
    ? setTimeout(() => asked = ask(pid).catch(() => []), Math.max(lockTimeoutMs - Math.min(lockTimeoutMs / 5, 500), 1))
    : null;
  return { seen: () => asked, stop: () => timer && clearTimeout(timer) };
}

/**
 * Runs one SQL section (the up or down of a migration) and then the SQL
 * `record` gives, which writes the history. In a transaction both commit
 * together or not at all, behind the lease's fence, and a lock timeout retries
 * the whole transaction; with `transaction: false` the statements run one by
 * one, each after a fence check, a lock timeout retries only the statement
 * that hit it, and the marker is completed (or `record` run) after the last.
 * Returns the duration in ms.
 */
export async function runSection(
  db: Database,
  section: SqlSection,
  what: SectionRun,
  record: (durationMs: number) => string,
  settings: ExecutionSettings = DEFAULT_EXECUTION,
): Promise<number> {
  const run = sectionRunner(db, section, what, settings, await runnableStatements(section, what.file));
  // Until a statement is sent, a lost connection means nothing of this section ran.
  whenLost = (e) => run.failure(section.line, e, "it had not started: nothing of it took effect");
  try {
    return section.transaction ? await runInTransaction(run, record) : await runStatementByStatement(run, record);
  } finally {
    whenLost = null;
  }
}

/** What both ways of running a section share: its statements, timeouts, fence, retries and how a failure is told. */
interface SectionRunner {
  db: Database;
  section: SqlSection;
  what: SectionRun;
  started: number;
  /** Statement by statement, so an error names the statement that failed even when the server gives no position. */
  statements: Statement[];
  /** From how many statements a transactional section goes in batches. */
  batchFrom: number;
  /** The fence on the lease row, with its `; `, or "" without a lease (PGlite). */
  fence: string;
  timeouts: (scope: "local" | "session") => string;
  /** Runs `attempt` until it does not fail on lock_timeout, at most settings.attempts times. */
  withRetries: (line: number, attempt: () => Promise<void>) => Promise<void>;
  announce: (statement: Statement) => void;
  failure: (line: number, error: unknown, consequence: string) => SafemigrateError;
  /** The file line an error points at; `prefix` is SQL sent ahead of the statement in the same query. */
  lineOf: (statement: Statement, error: unknown, prefix?: string) => number;
}

function sectionRunner(db: Database, section: SqlSection, what: SectionRun, settings: ExecutionSettings, statements: Statement[]): SectionRunner {
  const lockTimeout = what.lockTimeoutMs ?? settings.lockTimeoutMs;
  const statementTimeout = what.statementTimeoutMs ?? settings.statementTimeoutMs;
  const local = (scope: "local" | "session") => (scope === "local" ? "local " : "");
  return {
    db, section, what, statements, started: performance.now(), batchFrom: settings.batchFrom ?? BATCH_FROM_STATEMENTS,
    fence: db.lease ? `${db.lease.fence}; ` : "",
    timeouts: (scope) => `set ${local(scope)}lock_timeout = ${lockTimeout}; set ${local(scope)}statement_timeout = ${statementTimeout}`,
    withRetries: (line, attempt) => retryOnLockTimeout(db, what, settings, lockTimeout, line, attempt),
    announce: (statement) => settings.onEvent?.({ type: "statement", id: what.id, file: what.file, line: statement.line, sql: statement.sql }),
    failure: (line, error, consequence) => sectionFailure(what, line, error, consequence, lockTimeout),
    lineOf: (statement, error, prefix = "") => {
      const position = Number((error as { position?: string | number }).position ?? 0) - prefix.length;
      return statement.line + (position > 0 ? statement.sql.slice(0, position - 1).match(/\n/g)?.length ?? 0 : 0);
    },
  };
}

async function retryOnLockTimeout(
  db: Database, what: SectionRun, settings: ExecutionSettings, lockTimeout: number, line: number, attempt: () => Promise<void>,
): Promise<void> {
  for (let n = 1;; n++) {
    const watch = watchBlockers(db, lockTimeout);
    try {
      return await attempt();
    } catch (error) {
      if (!isLockTimeout(error) || n >= settings.attempts) throw Object.assign(error as object, { attempts: n });
      const waitMs = backoffMs(n);
      settings.onEvent?.({
        type: "lock-timeout", id: what.id, file: what.file, line, attempt: n, attempts: settings.attempts, waitMs, blockers: await watch.seen(),
      });
      await sleep(waitMs);
    } finally {
      watch.stop();
    }
  }
}

/**
 * BEGIN, the timeouts and the fence ride along with the first batch, the
 * history row with COMMIT: a migration of one statement costs two round
 * trips. Many statements go per round trip (see statementBatches); a failure
 * is traced back to its statement afterwards.
 */
async function runInTransaction(run: SectionRunner, record: (durationMs: number) => string): Promise<number> {
  const { db, section, what, statements, started, failure } = run;
  const prefix = `${run.timeouts("local")}; ${run.fence}`;
  const batches = statementBatches(statements, BATCH_CHARS, run.batchFrom);
  let failed: { batch: number | null; prefix: string } | null = null;
  try {
    await run.withRetries(section.line, () =>
      db.transaction(async (tx) => {
        checkLease(db, what);
        failed = { batch: null, prefix };
        if (batches.length === 0) await tx.exec(prefix);
        for (const [index, batch] of batches.entries()) {
          checkLease(db, what);
          const sent = index === 0 ? prefix : "";
          failed = { batch: index, prefix: sent };
          const first = batch.statements[0];
          whenLost = (e) => failure(first.line, e, transactionalConsequence(e, statements.indexOf(first), statements.length, false));
          run.announce(first);
          await tx.exec(sent + batch.text);
        }
      }, () => {
        // The history row goes out with COMMIT: from here a lost connection may have committed.
        failed = { batch: null, prefix: "COMMIT" };
        whenLost = (e) => failure(section.line, e, transactionalConsequence(e, -1, statements.length, true));
        return record(performance.now() - started);
      })
    );
  } catch (error) {
    const at = failed as { batch: number | null; prefix: string } | null;
    const found = at?.batch != null ? await failedStatement(db, batches, at.batch, error, at.prefix, prefix, run.lineOf) : null;
    const index = found ? statements.indexOf(found.statement) : -1;
    throw failure(found?.line ?? section.line, found?.error ?? error, transactionalConsequence(error, index, statements.length, at?.prefix === "COMMIT"));
  }
  return performance.now() - started;
}

/** Outside a transaction (CREATE INDEX CONCURRENTLY): each statement commits on its own, each after the fence; the marker follows its progress. */
async function runStatementByStatement(run: SectionRunner, record: (durationMs: number) => string): Promise<number> {
  const { db, section, what, statements, fence, failure } = run;
  refuseUnfencedThroughPooler(db, [{ id: what.id, file: what.file, section }]);
  checkLease(db, what);
  if (what.marker) await writeMarkerBehindFence(run);
  await db.exec(run.timeouts("session"));
  try {
    for (const [index, statement] of statements.entries()) {
      try {
        checkLease(db, what);
        whenLost = (e) => failure(statement.line, e, nonTransactionalConsequence(e, statements, index, Boolean(what.marker)));
        if (fence) await db.exec(fence);
        run.announce(statement);
        await run.withRetries(statement.line, () => db.exec(statement.sql));
        await what.marker?.progress(db, index + 1);
      } catch (error) {
        if (!isConnectionLoss(error)) await what.marker?.failed(db, index + 1, (error as Error).message).catch(() => {});
        throw failure(run.lineOf(statement, error), error, nonTransactionalConsequence(error, statements, index, Boolean(what.marker)));
      }
    }
    const durationMs = performance.now() - run.started;
    try {
      if (what.marker) await what.marker.complete(db, durationMs);
      else await db.exec(record(durationMs));
    } catch (error) {
      throw failure(section.line, error, `all ${plural(statements.length, "statement")} took effect, but recording it failed`);
    }
    return durationMs;
  } finally {
    whenLost = null;
    await db.exec("reset lock_timeout; reset statement_timeout").catch(() => {});
  }
}

/** The marker row is written behind the fence before the first statement, so an interruption is always named by the next run. */
async function writeMarkerBehindFence({ db, section, what, fence, failure }: SectionRunner): Promise<void> {
  try {
    await db.transaction(async (tx) => {
      if (fence) await tx.exec(fence);
      await what.marker!.start(tx);
    });
  } catch (error) {
    throw failure(section.line, error, "nothing of it ran");
  }
}

/**
 * The error to report if the connection goes at this moment of a run. The
 * driver can notice a dropped socket where no caller awaits it (see
 * exitCleanlyOnDriverCrash); this keeps the migration, file and line for it.
 */
let whenLost: ((error: unknown) => SafemigrateError) | null = null;

/** One error for a failed section: its file and line, what went wrong, and what of it took effect. */
function sectionFailure(what: SectionRun, line: number, error: unknown, consequence: string, lockTimeout: number): SafemigrateError {
  const where = `${what.file}:${line}: ${what.verb} ${what.id}`;
  const attempts = (error as { attempts?: number })?.attempts ?? 1;
  if ((error as { code?: string })?.code === FENCE_FAILED || error instanceof LeaseLostError) {
    return new LeaseLostError(redact(`${where} stopped: this run no longer holds the migration lock ` +
      `(another run took it over after this one's lease expired); ${consequence}`));
  }
  if (isConnectionLoss(error)) {
    // The driver's own TypeError (a write to a socket it has dropped) says nothing a user can act on.
    const detail = error instanceof TypeError ? "the server closed it" : (error as Error).message;
    return new ConnectionLostError(redact(`${where}: the connection to the database was lost (${detail}); ${consequence}`));
  }
  if (error instanceof SafemigrateError) return error;
  return new DatabaseError(redact(
    `${where} failed: ${describeServerError(error)}` +
      (isLockTimeout(error)
        ? `\n  it waited ${formatDuration(lockTimeout)} for a lock ${plural(attempts, "time")}; another session holds a lock on the table ` +
          `(look in pg_locks and pg_stat_activity), or raise "-- lock-timeout:" / --lock-timeout`
        : "") +
      `\n  ${consequence}`,
  ));
}

function transactionalConsequence(error: unknown, index: number, total: number, atCommit: boolean): string {
  if (atCommit && isConnectionLoss(error)) {
    return "the connection went while committing, so it may or may not have committed: its history row commits " +
      "with it, so --status tells which (recorded means applied, not recorded means nothing of it took effect)";
  }
  const where = index >= 0 ? ` (statement ${index + 1} of ${total})` : "";
  return `it ran in one transaction, which did not commit${where}: nothing of it took effect`;
}

function nonTransactionalConsequence(error: unknown, statements: readonly Statement[], index: number, marked: boolean): string {
  const done = statements.slice(0, index);
  const lost = isConnectionLoss(error);
  return `statement ${index + 1} of ${statements.length} ${lost ? "was in flight" : "failed"}; this runs without a transaction, so ` +
    (done.length === 0 ? "nothing before it took effect" : `the statements before it (lines ${done.map((s) => s.line).join(", ")}) took effect and stay`) +
    (lost ? ", and the one in flight may have completed on the server" : "") +
    (marked
      ? `; it is recorded as started and not applied, and the next run says so by name until it is re-run (--rerun) or recorded (--fake)`
      : "; it is not recorded") +
    `. Make its statements safe to re-run (IF NOT EXISTS) before retrying`;
}

/**
 * The statement a failed batch failed on, and its error: by the position the
 * server gave, or, for an error without one (a unique violation) in a batch
 * of several statements, by running the section again up to that batch and
 * then statement by statement, in a transaction that is always rolled back.
 */
async function failedStatement(
  db: Database,
  batches: readonly StatementBatch[],
  index: number,
  error: unknown,
  prefix: string,
  settings: string,
  lineOf: (statement: Statement, error: unknown, prefix?: string) => number,
): Promise<{ statement: Statement; line: number; error: unknown }> {
  const batch = batches[index];
  const byPosition = statementAt(batch, Number((error as { position?: string | number }).position ?? 0) - prefix.length);
  if (byPosition) return { ...byPosition, error };
  const first = { statement: batch.statements[0], line: batch.statements[0].line, error };
  // A lost connection or lease is not run again; neither is a batch of one.
  if (batch.statements.length === 1 || error instanceof SafemigrateError || isConnectionLoss(error)) return first;
  let found: { statement: Statement; line: number; error: unknown } | null = null;
  await db.transaction(async (tx) => {
    await tx.exec(settings);
    for (const earlier of batches.slice(0, index)) await tx.exec(earlier.text);
    for (const statement of batch.statements) {
      try {
        await tx.exec(statement.sql);
      } catch (again) {
        found = { statement, line: lineOf(statement, again), error: again };
        break;
      }
    }
    throw new Error("only finding the failed statement: roll back");
  }).catch(() => {});
  return found ?? first;
}

/**
 * A SQL literal. Strings are written as E'...' with quotes and backslashes
 * escaped: an escape string means the same under any standard_conforming_strings
 * setting, and unlike a dollar-quoted string no content can end it early
 * (a migration id is any text a file name can hold, `$sm` included).
 */
export function sqlLiteral(value: string | number | null): string {
  if (value === null) return "null";
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new Error(`not a finite number: ${value}`);
    return String(value);
  }
  return `E'${value.replace(/\\/g, "\\\\").replace(/'/g, "''")}'`;
}

/** The history columns of a migration being applied, as SQL literals in column order. */
function historyValues(migration: Migration, phase: string, note: string | null): Record<string, string> {
  return {
    id: sqlLiteral(migration.id),
    checksum: sqlLiteral(migration.checksum),
    safe: sqlLiteral(migration.safe),
    phase: sqlLiteral(phase),
    down_sql: sqlLiteral(migration.down?.raw ?? null),
    depends: sqlLiteral(JSON.stringify(migration.depends)),
    note: sqlLiteral(note),
  };
}

/**
 * The history row of an applied migration, written in the migration's own
 * transaction: a plain insert, so a second application of the same migration
 * fails on the primary key and rolls back whatever else happened. Only a row
 * that records no application (a delay's detection, an interrupted start) is
 * replaced. Values go in as literals over the simple protocol, so the row
 * can ride in the same message as COMMIT (see runSection).
 */
function appliedRowSql(
  table: HistoryTable,
  migration: Migration,
  phase: string,
  durationMs: number | null,
  note: string | null = null,
): string {
  const v = historyValues(migration, phase, note);
  return `delete from ${table.sql} where id = ${v.id} and applied_at is null;
insert into ${table.sql} (id, checksum, safe, phase, applied_at, duration_ms, down_sql, depends, note)
values (${v.id}, ${v.checksum}, ${v.safe}, ${v.phase}, clock_timestamp(), ${sqlLiteral(durationMs === null ? null : Math.round(durationMs))}, ${v.down_sql}, ${v.depends}, ${v.note})`;
}

/**
 * A `transaction: false` migration's marker: inserted (plainly, as above)
 * before its first statement, advanced after each, completed after the last.
 */
function startMarker(table: HistoryTable, migration: Migration, phase: string): NonNullable<SectionRun["marker"]> {
  const v = historyValues(migration, phase, null);
  return {
    complete: async (q, durationMs) => {
      const rows = await q.query(
        `update ${table.sql} set applied_at = clock_timestamp(), duration_ms = $2 where id = $1 and applied_at is null returning id`,
        [migration.id, Math.round(durationMs)],
      );
      if (rows.length !== 1) throw new DatabaseError(`${migration.file}: the marker of ${migration.id} in ${table.name} disappeared while it ran`);
    },
    start: (q) =>
      q.exec(
        `delete from ${table.sql} where id = ${v.id} and applied_at is null;
         insert into ${table.sql} (id, checksum, safe, phase, started_at, statements_done, down_sql, depends)
         values (${v.id}, ${v.checksum}, ${v.safe}, ${v.phase}, clock_timestamp(), 0, ${v.down_sql}, ${v.depends})`,
      ),
    progress: (q, done) => q.exec(`update ${table.sql} set statements_done = ${done} where id = ${v.id} and applied_at is null`),
    failed: (q, statement, message) =>
      q.exec(`update ${table.sql} set note = ${sqlLiteral(`failed: ${message}`)}, statements_done = ${statement - 1} where id = ${v.id} and applied_at is null`),
  };
}

/** Runs one migration's up SQL; its history row commits with it or not at all. */
export function applyMigration(
  db: Database,
  migration: Migration,
  phase: string,
  settings: ExecutionSettings = DEFAULT_EXECUTION,
): Promise<number> {
  const table = db.history;
  const transactional = migration.up.transaction;
  return runSection(
    db,
    migration.up,
    {
      id: migration.id,
      file: migration.file,
      verb: "migration",
      lockTimeoutMs: migration.lockTimeoutMs,
      statementTimeoutMs: migration.statementTimeoutMs,
      marker: transactional ? undefined : startMarker(table, migration, phase),
    },
    // transaction: false completes its marker instead.
    (durationMs) => appliedRowSql(table, migration, phase, durationMs),
    settings,
  );
}

/** Runs one migration's down SQL; its history row goes with it or not at all. */
export function revertMigration(db: Database, step: RevertStep, settings: ExecutionSettings = DEFAULT_EXECUTION): Promise<number> {
  return runSection(
    db,
    step.down!,
    { id: step.id, file: step.source, verb: "rollback of" },
    () => `delete from ${db.history.sql} where id = ${sqlLiteral(step.id)}`,
    settings,
  );
}

async function recordDetected(db: Database, plan: Plan, migrations: readonly Migration[]): Promise<void> {
  if (plan.detect.length === 0) return;
  const byId = new Map(migrations.map((m) => [m.id, m]));
  const t = db.history.sql;
  for (const id of plan.detect) {
    await db.query(
      `insert into ${t} as h (id, safe, detected_at) values ($1, $2, clock_timestamp())
       on conflict (id) do update set detected_at = coalesce(h.detected_at, excluded.detected_at)`,
      [id, byId.get(id)!.safe],
    );
  }
}

/** Migrations a run started outside a transaction and never finished (a marker with no application). */
export function interruptedMigrations<R extends PlanRow>(history: readonly R[], rerun: readonly string[] = []): R[] {
  return history.filter((row) => row.startedAt && !row.appliedAt && !rerun.includes(row.id));
}

/**
 * The refusal for an interrupted migration: by name, what took effect, what
 * may have, and the two ways on. Never a bare "already exists" on the re-run.
 */
export async function interruptedReport(rows: readonly PlanRow[], migrations: readonly Migration[]): Promise<string> {
  const files = new Map(migrations.map((m) => [m.id, m]));
  const parts: string[] = [];
  for (const row of rows) {
    const m = files.get(row.id);
    const done = row.statementsDone ?? 0;
    const failedWith = row.note?.startsWith("failed: ") ? row.note.slice("failed: ".length) : null;
    const statements = m ? (await parseSection(m.up, m.file)).statements : [];
    const describe = (s: Statement) => `${m!.file}:${s.line} ${s.sql.split("\n")[0].slice(0, 80)}`;
    const lines = [
      `${m?.file ?? row.id}: ${row.id} ${failedWith ? "failed part-way" : "was interrupted"}: a run started it at ` +
        `${row.startedAt!.toISOString()} and ${failedWith ? `statement ${done + 1} failed (${failedWith})` : "stopped"} ` +
        `after ${done}${statements.length ? ` of ${statements.length}` : ""} statements. It runs without a transaction ` +
        `(transaction: false), so each statement commits on its own:`,
      ...(done > 0 ? [`  took effect: ${statements.slice(0, done).map(describe).join("; ") || `${done} statements`}`] : []),
      ...(statements[done] ? [`  ${failedWith ? "failed" : "may have taken effect"}: ${describe(statements[done])} ` +
        `(${failedWith ? "a failed" : "it was in flight; an interrupted"} CREATE INDEX CONCURRENTLY leaves an INVALID index, ` +
        `which --repair-invalid-indexes drops)`] : []),
      ...(statements.length > done + 1 ? [`  did not run: ${statements.slice(done + 1).map(describe).join("; ")}`] : []),
      ...(m && row.checksum !== m.checksum ? [`  note: the file has changed since that run started`] : []),
      `  Check the database, then either re-run it from its first statement (if its statements are safe to re-run): ` +
        `add --rerun ${row.id}; or, if everything it does is in place, record it as applied: --fake ${row.id}`,
    ];
    parts.push(lines.join("\n"));
  }
  return `refusing to run: ${plural(rows.length, "transaction: false migration")} an earlier run started and did not finish. ` +
    `Nothing was applied.\n${parts.join("\n")}`;
}

async function applyAll(db: Database, migrations: readonly Migration[], phase: string, options: LockOptions) {
  const applied: AppliedMigration[] = [];
  for (const migration of migrations) {
    options.onEvent?.({ type: "starting", id: migration.id, safe: migration.safe, verb: "apply" });
    const durationMs = await applyMigration(db, migration, phase, executionOf(options));
    // Whole milliseconds in results (and so in JSON); the event keeps the fraction for the human line.
    applied.push({ id: migration.id, safe: migration.safe, durationMs: Math.round(durationMs) });
    options.onEvent?.({ type: "applied", migration, durationMs });
  }
  return applied;
}

/** How far a rollback or sync got: what was undone and applied, the step that failed and what was not reached. */
export interface Progress {
  /** Steps planned: downs to run, then ups. */
  planned: { revert: number; apply: number };
  reverted: { id: string; durationMs: number }[];
  applied: AppliedMigration[];
  /** The step that failed and what of it took effect; null when every step ran. */
  failed: { id: string; action: "revert" | "apply"; source: string; tookEffect: string } | null;
  notReached: { id: string; action: "revert" | "apply" }[];
}

/** A rollback or sync that stopped at a failing step: exit 1, with the progress for the human and JSON reports. */
export class StoppedMidway extends DatabaseError {
  readonly progress: Progress;
  constructor(message: string, progress: Progress) {
    super(message);
    this.progress = progress;
  }
}

/**
 * A failed down says what it left behind and that its migration is still
 * recorded as applied: runSection's words fit an up ("it is not recorded"),
 * which for a down would say the opposite of what happened.
 */
function revertFailure(error: unknown, step: RevertStep): { message: string; tookEffect: string } {
  const message = (error as Error).message;
  const tookEffect = tookEffectOf(message, step.down!.transaction);
  if (step.down!.transaction) return { message: `${message}; ${step.id} stays applied`, tookEffect };
  const stays = `; ${step.id} stays recorded as applied. Make the down's statements safe to re-run (IF EXISTS) before retrying`;
  const rewritten = message.replace(/; it is not recorded\. Make its statements safe to re-run \(IF NOT EXISTS\) before retrying$/, stays);
  return { message: rewritten === message ? `${message}${stays}` : rewritten, tookEffect };
}

/** What of a failed section took effect, read from runSection's message: nothing, or the statements before the failing one. */
function tookEffectOf(message: string, transactional: boolean): string {
  const partly = /statement (\d+) of (\d+) failed; this runs without a transaction, so the statements before it \(lines ([\d, ]+)\)/
    .exec(message);
  return transactional || !partly ? "nothing" : `statements 1 to ${Number(partly[1]) - 1} of ${partly[2]} (lines ${partly[3]})`;
}

/**
 * Runs the downs, then the ups, one by one. A failing step stops the run with
 * a StoppedMidway that lists what was done, what failed and what was not reached.
 */
async function runSteps(
  db: Database,
  revert: readonly RevertStep[],
  apply: readonly Migration[],
  phase: string,
  options: LockOptions,
): Promise<Progress> {
  const progress: Progress = { planned: { revert: revert.length, apply: apply.length }, reverted: [], applied: [], failed: null, notReached: [] };
  const stop = (index: number, failed: NonNullable<Progress["failed"]>, message: string): never => {
    progress.failed = failed;
    progress.notReached = [
      ...revert.slice(failed.action === "revert" ? index + 1 : revert.length).map(({ id }) => ({ id, action: "revert" as const })),
      ...apply.slice(failed.action === "apply" ? index + 1 : 0).map(({ id }) => ({ id, action: "apply" as const })),
    ];
    throw new StoppedMidway(`${message}\n${describeProgress(progress)}`, progress);
  };
  for (const [index, step] of revert.entries()) {
    try {
      options.onEvent?.({ type: "starting", id: step.id, safe: null, verb: "roll back" });
      const durationMs = await revertMigration(db, step, executionOf(options));
      progress.reverted.push({ id: step.id, durationMs: Math.round(durationMs) });
      options.onEvent?.({ type: "reverted", step, durationMs });
    } catch (error) {
      if (!(error instanceof DatabaseError)) throw error;
      const { message, tookEffect } = revertFailure(error, step);
      stop(index, { id: step.id, action: "revert", source: step.source, tookEffect }, message);
    }
  }
  for (const [index, migration] of apply.entries()) {
    try {
      options.onEvent?.({ type: "starting", id: migration.id, safe: migration.safe, verb: "apply" });
      const durationMs = await applyMigration(db, migration, phase, executionOf(options));
      progress.applied.push({ id: migration.id, safe: migration.safe, durationMs: Math.round(durationMs) });
      options.onEvent?.({ type: "applied", migration, durationMs });
    } catch (error) {
      if (!(error instanceof DatabaseError)) throw error;
      stop(index, { id: migration.id, action: "apply", source: migration.file, tookEffect: tookEffectOf(error.message, migration.up.transaction) }, error.message);
    }
  }
  return progress;
}

/** "rolled back 75 of 83 ...": where the database is after a rollback or sync stopped. */
export function describeProgress(progress: Progress): string {
  const { revert, apply } = progress.planned;
  const lines = [
    `stopped at ${progress.failed!.id}: rolled back ${progress.reverted.length} of ${revert}` +
    (apply > 0 ? `, applied ${progress.applied.length} of ${apply}` : "") + " before it",
  ];
  if (progress.reverted.length > 0) lines.push(`  rolled back: ${progress.reverted.map((s) => s.id).join(", ")}`);
  if (progress.applied.length > 0) lines.push(`  applied: ${progress.applied.map((s) => s.id).join(", ")}`);
  lines.push(`  failed: ${progress.failed!.id} (${progress.failed!.tookEffect === "nothing" ? "nothing of it took effect" : `took effect: ${progress.failed!.tookEffect}`})`);
  const notReverted = progress.notReached.filter((s) => s.action === "revert").map((s) => s.id);
  const notApplied = progress.notReached.filter((s) => s.action === "apply").map((s) => s.id);
  if (notReverted.length > 0) lines.push(`  not reached, still applied: ${notReverted.join(", ")}`);
  if (notApplied.length > 0) lines.push(`  not reached, still pending: ${notApplied.join(", ")}`);
  return lines.join("\n");
}

/**
 * Every down (and up) about to run is parsed first: a syntax error refuses
 * before anything changes, naming the file and line and where the SQL came from.
 */
async function parseBeforeActing(revert: readonly RevertStep[], apply: readonly Migration[] = []): Promise<void> {
  await parseSections([...revert.map((step) => ({ section: step.down!, file: step.source })), ...upSections(apply)]);
  for (const step of revert) {
    try {
      await parseSection(step.down!, step.source);
    } catch (error) {
      if (!(error instanceof InputError)) throw error;
      throw new InputError(
        `${error.message}\n  in the down SQL of ${step.id} ` +
          (step.origin === "file"
            ? `from its file`
            : `stored in ${HISTORY_TABLE} when it was applied (lines count from its "-- migrate:down" line)`) +
          `. Nothing was changed.`,
      );
    }
  }
  for (const m of apply) await parseSection(m.up, m.file);
}

/** `--pre` / `--all`: plan against the history as it is once the lock is held, apply, record detection. */
export async function migrate(db: Database, migrations: readonly Migration[], options: RunOptions): Promise<RunResult> {
  const now = options.now ?? (() => new Date());
  const plan = (history: PlanRow[]) =>
    planRun({ migrations, history, now: now(), mode: options.mode, phase: options.phase });
  if (options.dryRun) {
    const invalidIndexes = (await findInvalidIndexes(db)).map((index) => ({ ...index, dropped: false }));
    const planned = plan(await readHistory(db));
    const gate = options.lint !== false && !planned.refused && planned.apply.length > 0;
    const findings = gate ? await gateFindings(db, migrations, planned.apply, options) : [];
    return { plan: planned, applied: [], dryRun: true, invalidIndexes, findings };
  }

  return await underLock(db, options, queryPlanRows, async (history) => {
    const result: RunResult = { plan: plan(history), applied: [], dryRun: false, invalidIndexes: [] };
    const interrupted = interruptedMigrations(history, options.rerun);
    if (interrupted.length > 0) throw new InputError(await interruptedReport(interrupted, migrations));
    if (result.plan.refused || result.plan.apply.length === 0) {
      if (!result.plan.refused) await recordDetected(db, result.plan, migrations);
      return result;
    }
    // A syntax error anywhere stops the run before anything is applied (each section is parsed once, then cached).
    await parseSections(upSections(result.plan.apply));
    for (const m of result.plan.apply) await parseSection(m.up, m.file);
    refuseUnfencedThroughPooler(db, result.plan.apply.map((m) => ({ id: m.id, file: m.file, section: m.up })));
    if (options.lint !== false) result.findings = await refuseUnsafe(db, migrations, result.plan.apply, options);
    // The analysis has read the trees: applying needs only the statements.
    await releaseParseTrees(result.plan.apply.map((m) => ({ section: m.up, file: m.file })));
    result.invalidIndexes = await repairInvalidIndexes(db, Boolean(options.repairInvalidIndexes), options.onEvent);
    result.applied = await applyAll(db, result.plan.apply, options.phase, options);
    await recordDetected(db, result.plan, migrations);
    return result;
  });
}

/** Findings that stop a run: raised before anything is applied, exit 2. */
export class LintError extends InputError {
  readonly findings: Finding[];
  constructor(findings: Finding[], all: readonly Finding[] = findings) {
    const others = all.filter((f) => !isGating(f)).length;
    super(
      `refusing to apply: ${plural(findings.length, "gating finding")} in migrations about to run:\n` +
        findings.map((f) => `  ${formatFinding(f)}`).join("\n") +
        (others > 0 ? `\n(${plural(others, "other finding")} did not gate: waived, or harmless on this database)` : "") +
        `\nFix the migration, waive a finding with "-- safemigrate-ignore: <rule> -- <reason>" above the statement, or pass --no-lint`,
    );
    this.findings = findings;
  }
}

/** The analysis of the migrations about to run (all of them analysed, so what earlier ones declared counts), judged against the live database. */
export async function gateFindings(
  db: Queryable,
  migrations: readonly Migration[],
  toApply: readonly Migration[],
  options: { phase: Phase; smallTableBytes?: number; lintAfter?: string | null },
): Promise<Finding[]> {
  const ids = new Set(toApply.map((m) => m.id));
  const gate: Gate = { live: await readLiveSchema(db), phase: options.phase, smallTableBytes: options.smallTableBytes ?? DEFAULT_SMALL_TABLE_BYTES };
  return await analyzeMigrations(migrations, { gate, report: (m) => ids.has(m.id) && isLinted(m.id, options.lintAfter ?? null) });
}

/** Migrations up to `--lint-after` (like strong_migrations' start_after) are analysed but not reported. */
export const isLinted = (id: string, lintAfter: string | null): boolean => lintAfter === null || compareIds(id, lintAfter) > 0;

/** Raises LintError when a finding gates; returns every finding, for the run to show. */
async function refuseUnsafe(
  db: Queryable,
  migrations: readonly Migration[],
  toApply: readonly Migration[],
  options: RunOptions,
): Promise<Finding[]> {
  const findings = await gateFindings(db, migrations, toApply, options);
  const gating = findings.filter(isGating);
  if (gating.length > 0) throw new LintError(gating, findings);
  return findings;
}

/**
 * Indexes a failed CREATE INDEX CONCURRENTLY left behind: they cost writes and
 * are never used. An index that is invalid because some session is building
 * it right now (CREATE INDEX or REINDEX CONCURRENTLY, or the backend of a
 * killed run still finishing) is not left behind: any build in progress on
 * its table puts all of that table's invalid indexes out of reach.
 */
export async function findInvalidIndexes(db: Queryable): Promise<{ name: string; definition: string }[]> {
  return await db.query<{ name: string; definition: string }>(
    `select format('%I.%I', n.nspname, c.relname) as name, pg_get_indexdef(i.indexrelid) as definition
       from pg_index i join pg_class c on c.oid = i.indexrelid join pg_namespace n on n.oid = c.relnamespace
      where not i.indisvalid and n.nspname not in ('pg_catalog', 'information_schema')
        and not exists (select from pg_stat_progress_create_index p where p.relid = i.indrelid or p.index_relid = i.indexrelid)
      order by 1`,
  );
}

/**
 * A migration re-run over an invalid index would fail ("already exists") or,
 * with IF NOT EXISTS, succeed and keep the broken index: refuse, or drop them
 * when asked to.
 */
async function repairInvalidIndexes(
  db: Database,
  repair: boolean,
  onEvent?: (event: RunEvent) => void,
): Promise<RunResult["invalidIndexes"]> {
  const invalid = await findInvalidIndexes(db);
  if (invalid.length === 0) return [];
  if (!repair) {
    throw new InputError(
      `invalid ${invalid.length === 1 ? "index" : "indexes"} left by a failed CREATE INDEX CONCURRENTLY: ` +
        `${invalid.map((i) => i.name).join(", ")}. Re-running the migration would fail or keep the broken index; ` +
        `run again with --repair-invalid-indexes to drop ${invalid.length === 1 ? "it" : "them"} first ` +
        `(or DROP INDEX CONCURRENTLY by hand)`,
    );
  }
  for (const index of invalid) {
    await db.exec(`drop index concurrently if exists ${index.name}`);
    onEvent?.({ type: "dropped-invalid-index", name: index.name });
  }
  return invalid.map((index) => ({ ...index, dropped: true }));
}

export interface RollbackResult {
  steps: RevertStep[];
  reverted: { id: string; durationMs: number }[];
  dryRun: boolean;
}

/** `--rollback <id>` / `--rollback --last`: undo it and what depends on it, newest first. */
export async function rollback(
  db: Database,
  migrations: readonly Migration[],
  target: string | { last: true },
  options: LockOptions & { dryRun?: boolean },
): Promise<RollbackResult> {
  if (options.dryRun) {
    const steps = rollbackPlan(target, migrations, await readHistory(db));
    await parseBeforeActing(steps);
    return { steps, reverted: [], dryRun: true };
  }
  return await underLock(db, options, queryHistory, async (history) => {
    const steps = rollbackPlan(target, migrations, history);
    await parseBeforeActing(steps);
    return { steps, reverted: (await runSteps(db, steps, [], "rollback", options)).reverted, dryRun: false };
  });
}

export interface SyncResult {
  plan: SyncPlan;
  reverted: { id: string; durationMs: number }[];
  applied: AppliedMigration[];
  dryRun: boolean;
}

/** `--sync`: undo what this branch does not have, then apply what it has. */
export async function sync(
  db: Database,
  migrations: readonly Migration[],
  options: LockOptions & { dryRun?: boolean; onPlan?: (plan: SyncPlan) => void; now?: () => Date },
): Promise<SyncResult> {
  const now = options.now ?? (() => new Date());
  if (options.dryRun) {
    const plan = syncPlan(migrations, await readHistory(db), now());
    await parseBeforeActing(plan.revert, plan.apply);
    options.onPlan?.(plan);
    return { plan, reverted: [], applied: [], dryRun: true };
  }
  return await underLock(db, options, queryHistory, async (history) => {
    const interrupted = interruptedMigrations(history);
    if (interrupted.length > 0) throw new InputError(await interruptedReport(interrupted, migrations));
    const plan = syncPlan(migrations, history, now());
    await parseBeforeActing(plan.revert, plan.apply);
    options.onPlan?.(plan);
    const { reverted, applied } = await runSteps(db, plan.revert, plan.apply, "sync", options);
    return { plan, reverted, applied, dryRun: false };
  });
}

/**
 * `--fake <id>` records one migration as applied without running it;
 * `--baseline <id>` records it and everything it depends on (adopting a
 * database whose schema already has them). Both refuse an applied target.
 */
/** The migration file a command names (`0003_x` or `0003_x.sql`); an InputError with a suggestion otherwise. */
function migrationNamed(migrations: readonly Migration[], target: string): Migration {
  const id = target.replace(/\.sql$/, "");
  const found = migrations.find((m) => m.id === id);
  if (found) return found;
  const meant = closest(id, migrations.map((m) => m.id));
  throw new InputError(`no migration file "${id}" in the migrations directory${meant ? ` — did you mean "${meant}"?` : ""}`);
}

export async function recordWithoutRunning(
  db: Database,
  migrations: readonly Migration[],
  target: string,
  kind: "fake" | "baseline",
  options: LockOptions = {},
): Promise<string[]> {
  const files = new Map(migrations.map((m) => [m.id, m]));
  const { id } = migrationNamed(migrations, target);
  return await underLock(db, options, queryHistory, async (history) => {
    const applied = new Set(history.filter(isApplied).map((row) => row.id));
    if (applied.has(id)) throw new InputError(`${id} is already applied; --${kind} only records migrations that are not`);
    const wanted = new Set([id]);
    if (kind === "baseline") {
      // Every unapplied dependency, transitively: each id is looked at once (a chain of 10,000 is 10,000 steps).
      for (const unvisited = [id]; unvisited.length > 0;) {
        for (const d of files.get(unvisited.pop()!)?.depends ?? []) {
          if (wanted.has(d) || applied.has(d) || !files.has(d)) continue;
          wanted.add(d);
          unvisited.push(d);
        }
      }
    }
    const record = dependencyOrder(migrations.filter((m) => wanted.has(m.id)));
    await db.transaction(async (tx) => {
      for (const m of record) {
        await tx.exec(appliedRowSql(db.history, m, kind, null, `recorded by --${kind} ${id} without running its SQL`));
      }
    });
    return record.map((m) => m.id);
  });
}

/**
 * `--accept-changed <id>`: take the edited file's checksum as the applied one,
 * and say so in the history; the stored down SQL is refreshed from the file
 * (alone, when only the down was edited).
 */
export async function acceptChanged(
  db: Database,
  migrations: readonly Migration[],
  target: string,
  options: LockOptions = {},
): Promise<{ id: string; from: string; to: string; downRefreshed: boolean }> {
  const m = migrationNamed(migrations, target);
  const id = m.id;
  return await underLock(db, options, queryHistory, async (history) => {
    const row = history.find((r) => r.id === id);
    if (!isApplied(row)) throw new InputError(`${id} is not applied; there is no recorded checksum to replace`);
    const down = m.down?.raw ?? null;
    if (row!.checksum === m.checksum) {
      if (row!.downSql === down) throw new InputError(`${id} has not changed since it was applied; nothing to accept`);
      // Only the down was fixed: refresh the stored copy, which a rollback uses once the file is gone.
      await db.query(
        `update ${HISTORY_TABLE} set down_sql = $2, note = concat_ws(E'\\n', note, $3::text) where id = $1`,
        [id, down, `refreshed the stored down SQL from ${m.file} at ${new Date().toISOString()}`],
      );
      return { id, from: m.checksum, to: m.checksum, downRefreshed: true };
    }
    const from = row!.checksum ?? "none";
    await db.query(
      `update ${db.history.sql} set checksum = $2, down_sql = $3,
         note = concat_ws(E'\\n', note, $4::text) where id = $1`,
      [id, m.checksum, m.down?.raw ?? null, `accepted changed up SQL at ${new Date().toISOString()}: checksum ${from} -> ${m.checksum}`],
    );
    return { id, from, to: m.checksum, downRefreshed: row!.downSql !== down };
  });
}

// ---- Rehearsal: prove the down migrations on a scratch database ---------------
//
// A rehearsal compares the schema before and after each step, hundreds of
// times. Reading the whole catalog each time (pg_get_functiondef and friends
// for thousands of objects) would cost more than the migrations themselves, so
// the snapshot is kept up to date incrementally: only the objects a step
// touched, and what depends on them, are read again. Which ones those are,
// event triggers on the scratch database record as each step runs (one round
// trip per read, which reads nothing else); where they cannot be created (a
// role that is not superuser, PostgreSQL before 14) a fingerprint of every object's catalog rows
// (their xmin) finds them instead, at the cost of scanning the catalogs on
// every read.

/** Catalog objects by a key ("column public.users.email") and their definition. */
export type SchemaSnapshot = Map<string, string>;

/** The schema the rehearsal's event triggers keep their log and functions in, on the scratch database. */
const TRACKING = "safemigrate_rehearsal";
const USER_SCHEMAS = `n.nspname not in ('pg_catalog', 'information_schema', '${TRACKING}') and n.nspname not like 'pg\\_toast%'
  and n.nspname not like 'pg\\_temp%'`;
const NOT_HISTORY = `c.relname not in ('${HISTORY_TABLE}', '${HISTORY_TABLE}_lock')`;
/** Objects that belong to an extension are the extension's business, not the migration's. */
const NOT_EXTENSION = (catalog: string, oid: string) =>
  `not exists (select from pg_depend dep where dep.classid = '${catalog}'::regclass and dep.objid = ${oid} and dep.deptype = 'e')`;

/**
 * Each query yields key, definition and unit: the catalog object whose change
 * means the row must be read again ('r' relation, 'p' function, 't' type,
 * 'n' schema, 'e' extension, then its oid). `oid` is the column a re-read of
 * some units filters on.
 */
interface SnapshotQuery {
  kind: "r" | "p" | "t" | "n" | "e";
  oid: string;
  sql: string;
  /** Its rows name a fourth column, the unit they belong to besides their own (an index's table). */
  parent?: true;
}

const SNAPSHOT_QUERIES: SnapshotQuery[] = [
  {
    kind: "n", oid: "n.oid",
    sql: `select 'schema ' || quote_ident(n.nspname) as key, '' as def, 'n' || n.oid as unit from pg_namespace n
           where ${USER_SCHEMAS} and ${NOT_EXTENSION("pg_namespace", "n.oid")}`,
  },
  { kind: "e", oid: "e.oid", sql: `select 'extension ' || e.extname, e.extversion, 'e' || e.oid from pg_extension e where true` },
  {
    kind: "r", oid: "c.oid",
    sql: `select (case c.relkind when 'r' then 'table ' when 'p' then 'table ' when 'v' then 'view ' when 'm' then 'materialized view '
                  when 'f' then 'foreign table ' end) || format('%I.%I', n.nspname, c.relname),
                 case when c.relkind in ('v', 'm') then pg_get_viewdef(c.oid) else '' end, 'r' || c.oid
            from pg_class c join pg_namespace n on n.oid = c.relnamespace
           where c.relkind in ('r', 'p', 'v', 'm', 'f') and ${USER_SCHEMAS} and ${NOT_HISTORY}
             and ${NOT_EXTENSION("pg_class", "c.oid")}`,
  },
  {
    kind: "r", oid: "c.oid",
    sql: `select format('column %I.%I.%I', n.nspname, c.relname, a.attname),
                 format_type(a.atttypid, a.atttypmod)
                 || case when a.attnotnull then ' not null' else '' end
                 || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
                 || case a.attidentity when 'a' then ' generated always as identity' when 'd' then ' generated by default as identity' else '' end
                 || case a.attgenerated when 's' then ' stored' else '' end
                 || coalesce(' collate ' || nullif(co.collname, 'default'), ''), 'r' || c.oid
            from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
            left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
            left join pg_collation co on co.oid = a.attcollation and a.attcollation <> 0
           where a.attnum > 0 and not a.attisdropped and c.relkind in ('r', 'p', 'v', 'm', 'f')
             and ${USER_SCHEMAS} and ${NOT_HISTORY} and ${NOT_EXTENSION("pg_class", "c.oid")}`,
  },
  {
    kind: "r", oid: "c.oid",
    sql: `select format('constraint %I.%I.%I', n.nspname, c.relname, con.conname), pg_get_constraintdef(con.oid), 'r' || c.oid
            from pg_constraint con join pg_class c on c.oid = con.conrelid join pg_namespace n on n.oid = c.relnamespace
           where ${USER_SCHEMAS} and ${NOT_HISTORY}`,
  },
  {
    kind: "r", oid: "c.oid",
    parent: true,
    sql: `select format('index %I.%I', n.nspname, c.relname), pg_get_indexdef(i.indexrelid), 'r' || c.oid, 'r' || i.indrelid
            from pg_index i join pg_class c on c.oid = i.indexrelid join pg_namespace n on n.oid = c.relnamespace
            join pg_class t on t.oid = i.indrelid
           where ${USER_SCHEMAS} and t.relname not in ('${HISTORY_TABLE}', '${HISTORY_TABLE}_lock')`,
  },
  {
    kind: "r", oid: "c.oid",
    sql: `select format('sequence %I.%I', n.nspname, c.relname),
                 format('%s start %s increment %s min %s max %s cache %s%s', format_type(s.seqtypid, null), s.seqstart,
                        s.seqincrement, s.seqmin, s.seqmax, s.seqcache, case when s.seqcycle then ' cycle' else '' end),
                 'r' || c.oid
            from pg_sequence s join pg_class c on c.oid = s.seqrelid join pg_namespace n on n.oid = c.relnamespace
           where ${USER_SCHEMAS}`,
  },
  {
    kind: "p", oid: "p.oid",
    sql: `select format('function %I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)),
                 case when p.prokind in ('f', 'p') then pg_get_functiondef(p.oid) else p.prokind::text end, 'p' || p.oid
            from pg_proc p join pg_namespace n on n.oid = p.pronamespace
           where ${USER_SCHEMAS} and ${NOT_EXTENSION("pg_proc", "p.oid")}`,
  },
  {
    kind: "r", oid: "c.oid",
    sql: `select format('trigger %I.%I.%I', n.nspname, c.relname, t.tgname), pg_get_triggerdef(t.oid), 'r' || c.oid
            from pg_trigger t join pg_class c on c.oid = t.tgrelid join pg_namespace n on n.oid = c.relnamespace
           where not t.tgisinternal and ${USER_SCHEMAS}`,
  },
  {
    kind: "t", oid: "t.oid",
    sql: `select format('type %I.%I', n.nspname, t.typname),
                 case t.typtype when 'e' then 'enum (' || (select string_agg(quote_literal(e.enumlabel), ', ' order by e.enumsortorder)
                                                          from pg_enum e where e.enumtypid = t.oid) || ')'
                                when 'd' then 'domain ' || format_type(t.typbasetype, t.typtypmod)
                                else t.typtype::text end, 't' || t.oid
            from pg_type t join pg_namespace n on n.oid = t.typnamespace
           where t.typtype in ('e', 'd', 'c') and ${USER_SCHEMAS}
             and not exists (select from pg_class c where c.oid = t.typrelid and c.relkind <> 'c')
             and ${NOT_EXTENSION("pg_type", "t.oid")}`,
  },
];

/** Key, definition, unit and parent (an index's table, else null) of the rows of one query. */
const snapshotRows = ({ parent }: SnapshotQuery, sql: string) =>
  `select key, def, unit, ${parent ? "parent" : "null::text"} from (${sql}) q(key, def, unit${parent ? ", parent" : ""})`;

/** The snapshot rows of the given units (all of them when `units` is null), in one query. */
function snapshotQuery(units: string[] | null): string {
  return SNAPSHOT_QUERIES.flatMap((query) => {
    if (units === null) return [snapshotRows(query, query.sql)];
    const oids = units.filter((u) => u[0] === query.kind).map((u) => u.slice(1));
    return oids.length === 0 ? [] : [snapshotRows(query, `${query.sql} and ${query.oid} = any('{${oids.join(",")}}'::oid[])`)];
  }).join("\n union all ");
}

/**
 * The same rows for the oids in the arrays r_oids, p_oids, ... (variables of
 * the function that reads them), as plpgsql: one query per kind of unit, run
 * only when there are units of that kind. Most reads touch only tables, and
 * every query not run is plan nodes not set up (setting them up was a quarter of a read).
 */
const snapshotOfArrays = [...new Set(SNAPSHOT_QUERIES.map((q) => q.kind))].map((kind) => {
  const rows = SNAPSHOT_QUERIES.filter((q) => q.kind === kind)
    .map((query) => snapshotRows(query, `${query.sql} and ${query.oid} = any(${kind}_oids)`))
    .join("\n union all ");
  return `if cardinality(${kind}_oids) > 0 then\n      return query ${rows};\n    end if;`;
}).join("\n    ");

/** Per catalog: how many rows an object has there and the sum of their xmins; any insert, update or delete changes it. */
const rowVersions = (catalog: string, id: string, where = "true") =>
  `(select ${id} as id, count(*) || ':' || sum(xmin::text::bigint) as v from ${catalog} where ${id} >= 16384 and ${where} group by ${id})`;

/**
 * The version of every object (unit) in the schema, compared with the one the
 * last refresh stored in a temporary table: returns the units that changed or
 * went away, and those whose definitions render their names (a foreign key
 * names the table it references), and stores the new versions.
 */
const FINGERPRINT_TABLE = "pg_temp.safemigrate_fingerprint";
export const FINGERPRINT_QUERY = `
  with fingerprint as (
    select 'n' || n.oid as unit, n.xmin::text as version from pg_namespace n where ${USER_SCHEMAS}
    union all select 'e' || e.oid, e.xmin::text from pg_extension e
    union all
    select 'r' || c.oid, concat_ws('/', c.xmin, a.v, d.v, con.v, tg.v, r.v, i.xmin, s.xmin)
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
      left join ${rowVersions("pg_attribute", "attrelid", "attnum > 0")} a on a.id = c.oid
      left join ${rowVersions("pg_attrdef", "adrelid")} d on d.id = c.oid
      left join ${rowVersions("pg_constraint", "conrelid")} con on con.id = c.oid
      left join ${rowVersions("pg_trigger", "tgrelid")} tg on tg.id = c.oid
      left join ${rowVersions("pg_rewrite", "ev_class")} r on r.id = c.oid
      left join pg_index i on i.indexrelid = c.oid
      left join pg_sequence s on s.seqrelid = c.oid
     where c.relkind in ('r', 'p', 'v', 'm', 'S', 'f', 'i') and ${USER_SCHEMAS}
    union all select 'p' || p.oid, p.xmin::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace where ${USER_SCHEMAS}
    union all
    select 't' || t.oid, concat_ws('/', t.xmin, e.v)
      from pg_type t join pg_namespace n on n.oid = t.typnamespace
      left join ${rowVersions("pg_enum", "enumtypid")} e on e.id = t.oid
     where t.typtype in ('e', 'd', 'c') and ${USER_SCHEMAS}
  ),
  changed as (
    select f.unit from fingerprint f left join ${FINGERPRINT_TABLE} o on o.unit = f.unit where o.version is distinct from f.version
    union all select o.unit from ${FINGERPRINT_TABLE} o where not exists (select from fingerprint f where f.unit = o.unit)
  ),
  stored as (
    insert into ${FINGERPRINT_TABLE} select * from fingerprint f where f.unit in (select unit from changed)
    on conflict (unit) do update set version = excluded.version
  ),
  removed as (
    delete from ${FINGERPRINT_TABLE} o where not exists (select from fingerprint f where f.unit = o.unit)
  )
  select unit from changed
  union
  select case d.classid
           when 'pg_class'::regclass then 'r' || d.objid
           when 'pg_proc'::regclass then 'p' || d.objid
           when 'pg_type'::regclass then 't' || d.objid
           when 'pg_constraint'::regclass then (select 'r' || x.conrelid from pg_constraint x where x.oid = d.objid)
           when 'pg_rewrite'::regclass then (select 'r' || x.ev_class from pg_rewrite x where x.oid = d.objid)
           when 'pg_attrdef'::regclass then (select 'r' || x.adrelid from pg_attrdef x where x.oid = d.objid)
           when 'pg_trigger'::regclass then (select 'r' || x.tgrelid from pg_trigger x where x.oid = d.objid)
         end
    from (
      -- A renamed type renames its array type too, and a column of the array type depends on that one.
      select unit from changed
      union all select 't' || t.typarray from changed c join pg_type t on t.oid = substr(c.unit, 2)::oid
       where left(c.unit, 1) = 't' and t.typarray <> 0
    ) c join pg_depend d
      on d.refclassid = case left(c.unit, 1) when 'r' then 'pg_class'::regclass when 'p' then 'pg_proc'::regclass
                                             when 't' then 'pg_type'::regclass end
     and d.refobjid = substr(c.unit, 2)::oid`;

/**
 * The unit of a catalog object the event triggers logged: a constraint,
 * default, trigger or rule counts for its table; an object the snapshot does
 * not show is 'o' and its oids, for what depends on it.
 */
const UNIT_OF = (classid: string, objid: string) => `case ${classid}
    when 'pg_class'::regclass then 'r' || ${objid}
    when 'pg_proc'::regclass then 'p' || ${objid}
    when 'pg_type'::regclass then 't' || ${objid}
    when 'pg_namespace'::regclass then 'n' || ${objid}
    when 'pg_extension'::regclass then 'e' || ${objid}
    when 'pg_constraint'::regclass then (select case when x.conrelid <> 0 then 'r' || x.conrelid else 't' || x.contypid end
                                           from pg_constraint x where x.oid = ${objid})
    when 'pg_attrdef'::regclass then (select 'r' || x.adrelid from pg_attrdef x where x.oid = ${objid})
    when 'pg_trigger'::regclass then (select 'r' || x.tgrelid from pg_trigger x where x.oid = ${objid})
    when 'pg_rewrite'::regclass then (select 'r' || x.ev_class from pg_rewrite x where x.oid = ${objid})
    else 'o' || ${classid} || ':' || ${objid} end`;

/** The oids of the units in `units` of one kind, as a plpgsql assignment. */
const oidsOfKind = (kind: string) => `${kind}_oids := array(select substr(u, 2)::oid from unnest(units) u where left(u, 1) = '${kind}');`;

/**
 * The event triggers and their log, in a schema of their own that the
 * snapshot leaves out. `changes()` drains the log and returns one row per unit
 * to read again (key null), then their snapshot rows. Those units are the ones
 * touched; a table's indexes and an index's table (renaming an index renames
 * its constraint); a table's inheritance children and partitions (a column
 * added to the parent is theirs too); and, for an object whose name changed
 * (its identity differs from the one last logged, or none was), what renders
 * that name: its dependents, through types, extensions and parts (an enum's
 * array type, a table's row type and indexes). A table altered in place does
 * not re-read the hundred tables whose foreign keys reference it. The plans
 * are generic and never compiled (JIT), so a read costs no planning; and they
 * look objects up by index only (no sequential scans, hash or merge joins):
 * a generic plan does not know that `c.oid = any(r_oids)` holds a few oids,
 * and scanned all of pg_class for them in five places per read (a read after
 * DDL on the crates.io schema now costs the server half the CPU time it did).
 */
const TRACKING_SQL = `
  drop event trigger if exists ${TRACKING}_ddl; drop event trigger if exists ${TRACKING}_drop;
  drop schema if exists ${TRACKING} cascade;
  create schema ${TRACKING};
  do $$ begin
    -- pg_identify_object returns nulls for a dropped object since PostgreSQL 14; before, the fingerprint.
    if current_setting('server_version_num')::int < 140000 then raise exception 'PostgreSQL 14 or later'; end if;
  end $$;
  -- The triggers only log what the commands report (as little work as possible on every DDL statement);
  -- changes() makes units of it. A dropped constraint, default, trigger or rule is gone from the catalog
  -- by then, so its table is found by name (a table renamed or dropped since is in the log itself).
  create unlogged table ${TRACKING}.touched (classid oid, objid oid, objsubid int, address text[], type text);
  create unlogged table ${TRACKING}.names (classid oid, objid oid, objsubid int, identity text, primary key (classid, objid, objsubid));
  create function ${TRACKING}.ddl_end() returns event_trigger language plpgsql as $$
  begin
    insert into ${TRACKING}.touched select c.classid, c.objid, c.objsubid, null, null from pg_event_trigger_ddl_commands() c;
  end $$;
  create function ${TRACKING}.dropped() returns event_trigger language plpgsql as $$
  begin
    insert into ${TRACKING}.touched select d.classid, d.objid, d.objsubid, d.address_names, d.object_type from pg_event_trigger_dropped_objects() d;
  end $$;
  create event trigger ${TRACKING}_ddl on ddl_command_end execute procedure ${TRACKING}.ddl_end();
  create event trigger ${TRACKING}_drop on sql_drop execute procedure ${TRACKING}.dropped();
  -- Also under session_replication_role = replica, which a migration may set for a bulk load.
  alter event trigger ${TRACKING}_ddl enable always;
  alter event trigger ${TRACKING}_drop enable always;
  create function ${TRACKING}.changes() returns table (key text, def text, unit text, parent text)
  language plpgsql set plan_cache_mode = force_generic_plan set jit = off
  set enable_seqscan = off set enable_hashjoin = off set enable_mergejoin = off as $fn$
  #variable_conflict use_column
  declare
    units text[];
    r_oids oid[]; p_oids oid[]; t_oids oid[]; n_oids oid[]; e_oids oid[];
  begin
    if (select count(*) from pg_event_trigger where evtname like '${TRACKING}%' and evtenabled = 'A') <> 2 then
      return query select null::text, null::text, '*'::text, null::text;
      return;
    end if;
    with recursive drained as (delete from ${TRACKING}.touched returning *),
    reported as (select distinct d.classid, d.objid, d.objsubid from drained d where d.type is null and d.classid <> 0),
    -- An object whose name changed since it was last reported (or that was never reported) renders into its dependents.
    identified as (
      select r.*, (pg_identify_object(r.classid, r.objid, r.objsubid)).identity from reported r
    ),
    renamed as (
      select i.classid, i.objid from identified i
        left join ${TRACKING}.names n on n.classid = i.classid and n.objid = i.objid and n.objsubid = i.objsubid
       where n.identity is distinct from i.identity or n.identity is null
    ),
    remembered as (
      insert into ${TRACKING}.names select * from identified
      on conflict (classid, objid, objsubid) do update set identity = excluded.identity
    ),
    -- Materialized: inlined, the unit's expression and its subqueries were copied into the sort, group and filter.
    touched (unit, follow) as materialized (
      select case
               when d.type in ('table constraint', 'default value', 'trigger', 'rule', 'policy')
                 then 'r' || to_regclass(format('%I.%I', d.address[1], d.address[2]))::oid
               when d.type = 'domain constraint' then 't' || to_regtype(d.address[1])::oid
               else ${UNIT_OF("d.classid", "d.objid")}
             end,
             d.type is null and exists (select from renamed x where x.classid = d.classid and x.objid = d.objid)
        from drained d where d.classid <> 0
    ),
    related (unit, classid, objid, follow, depth) as (
      select d.unit,
             case left(d.unit, 1) when 'r' then 'pg_class'::regclass::oid when 'p' then 'pg_proc'::regclass::oid
                                  when 't' then 'pg_type'::regclass::oid when 'e' then 'pg_extension'::regclass::oid
                                  when 'o' then split_part(substr(d.unit, 2), ':', 1)::oid end,
             case when left(d.unit, 1) = 'o' then split_part(d.unit, ':', 2)::oid
                  when left(d.unit, 1) in ('r', 'p', 't', 'e') then substr(d.unit, 2)::oid end,
             bool_or(d.follow), 0
        from touched d where d.unit is not null group by d.unit
      union
      select ${UNIT_OF("dep.classid", "dep.objid")}, dep.classid, dep.objid,
             dep.classid = 'pg_type'::regclass or dep.deptype in ('i', 'e', 'a', 'P', 'S'), r.depth + 1
        from related r join pg_depend dep on dep.refclassid = r.classid and dep.refobjid = r.objid
       where r.follow and r.depth < 4
    )
    select array_agg(distinct r.unit) into units from related r where r.unit is not null;
    with recursive relations (oid) as (select substr(u, 2)::oid from unnest(units) u where left(u, 1) = 'r'),
    family (oid) as (
      select r.oid from relations r
      union
      select i.indrelid from relations r join pg_index i on i.indexrelid = r.oid
      union
      select h.inhrelid from family f join pg_inherits h on h.inhparent = f.oid
    )
    select array(select distinct x from (select unnest(units) union all select 'r' || f.oid from family f
                                                              union all select 'r' || i.indexrelid from family f join pg_index i on i.indrelid = f.oid) q(x)
                  where left(x, 1) <> 'o')
      into units;
    ${oidsOfKind("r")} ${oidsOfKind("p")} ${oidsOfKind("t")} ${oidsOfKind("n")} ${oidsOfKind("e")}
    return query select null::text, null::text, u, null::text from unnest(units) u;
    ${snapshotOfArrays}
  end $fn$;
  delete from ${TRACKING}.touched;`;

/**
 * The schema as it is now, read again only where it changed since the last
 * refresh. `refresh` returns a snapshot that later refreshes do not modify.
 * With `events` (a rehearsal's scratch database) it installs the event
 * triggers on the first read and `close` removes them; without, or where they
 * cannot be created, it uses the fingerprint.
 */
export class SchemaTracker {
  private keysOf = new Map<string, Set<string>>();
  /** The indexes last read for each table: a table read again drops those that are gone (a type change rebuilds them unreported). */
  private indexesOf = new Map<string, Set<string>>();
  /** Which unit each key was last read for: an object recreated under a new oid moves its key to the new unit. */
  private unitOf = new Map<string, string>();
  private current: SchemaSnapshot | null = null;
  private stale = true;
  private finder: "events" | "fingerprint";

  private readonly db: Queryable;
  private readonly verify: boolean;
  /** `verify` (tests, `bench/rehearse.ts --verify`): read everything after each refresh too and throw where they differ. */
  constructor(db: Queryable, options: { events?: boolean; verify?: boolean } = {}) {
    this.db = db;
    this.finder = options.events ? "events" : "fingerprint";
    this.verify = options.verify ?? false;
  }

  /** How it finds what changed: "events" once the triggers are installed, else "fingerprint". */
  get finds(): "events" | "fingerprint" {
    return this.finder;
  }

  /** Something ran on the database: the next `now` reads the catalog. */
  touched(): void {
    this.stale = true;
  }

  /** The schema now: the last snapshot when nothing ran since, else a refresh. */
  async now(): Promise<SchemaSnapshot> {
    return this.stale || this.current === null ? await this.refresh() : this.current;
  }

  async refresh(): Promise<SchemaSnapshot> {
    const read = await this.read();
    if (this.verify) {
      const full = await snapshotSchema(this.db);
      const wrong = [...new Set([...full.keys(), ...read.keys()])].filter((key) => full.get(key) !== read.get(key));
      if (wrong.length > 0) {
        throw new Error(`the ${this.finder} snapshot differs from a full read: ` +
          wrong.map((key) => `${key}: ${read.get(key) ?? "(none)"} / ${full.get(key) ?? "(none)"}`).join("; "));
      }
    }
    return read;
  }

  private async read(): Promise<SchemaSnapshot> {
    this.stale = false;
    const found = this.current === null ? (await this.start(), null) : await this.changes();
    // A renamed schema renders into everything in it: read everything again.
    if (found === null || found.units.some((u) => u === "*" || (u[0] === "n" && this.keysOf.has(u)))) {
      return this.replace(new Map(), null, await this.db.query(snapshotQuery(null)));
    }
    if (found.units.length === 0) return this.current!;
    const units = [...found.units, ...found.units.flatMap((u) => [...this.indexesOf.get(u) ?? []])];
    return this.replace(new Map(this.current), units, found.rows ?? await this.db.query(snapshotQuery(units)));
  }

  /** Removes the triggers and their schema; the fingerprint's temporary table goes with the session. */
  async close(): Promise<void> {
    if (this.finder !== "events" || this.current === null) return;
    await this.db.exec(`drop event trigger if exists ${TRACKING}_ddl; drop event trigger if exists ${TRACKING}_drop;
                        drop schema if exists ${TRACKING} cascade`).catch(() => {});
  }

  /** Before the first read: the triggers (falling back to the fingerprint where they cannot be created), or the fingerprint's table. */
  private async start(): Promise<void> {
    if (this.finder === "events") {
      try {
        await this.db.exec(TRACKING_SQL);
        return;
      } catch {
        this.finder = "fingerprint";
      }
    }
    await this.db.exec(`create temporary table if not exists safemigrate_fingerprint (unit text primary key, version text);
                        truncate ${FINGERPRINT_TABLE}`);
    await this.db.query(FINGERPRINT_QUERY);
  }

  /** The units that changed since the last read, with their rows when the finder read them too; null: read everything. */
  private async changes(): Promise<{ units: string[]; rows: SnapshotRow[] | null } | null> {
    try {
      if (this.finder === "events") {
        const rows = await this.db.query<SnapshotRow>(`select * from ${TRACKING}.changes()`);
        return { units: rows.flatMap((r) => (r.key === null ? [r.unit] : [])), rows: rows.filter((r) => r.key !== null) };
      }
      const units = await this.db.query<{ unit: string | null }>(FINGERPRINT_QUERY);
      return { units: units.flatMap((r) => (r.unit ? [r.unit] : [])), rows: null };
    } catch (error) {
      // A migration dropped the triggers' schema, or ended the session's temporary table (DISCARD ALL): start over.
      if (!["42P01", "42883", "3F000"].includes((error as { code?: string }).code ?? "")) throw error;
      await this.start();
      return null;
    }
  }

  /** The snapshot with the keys of `units` (all of them when null) replaced by `rows`. */
  private replace(next: Map<string, string>, units: string[] | null, rows: SnapshotRow[]): SchemaSnapshot {
    if (units === null) (this.keysOf.clear(), this.unitOf.clear(), this.indexesOf.clear());
    for (const unit of units ?? []) {
      for (const key of this.keysOf.get(unit) ?? []) {
        if (this.unitOf.get(key) === unit) (next.delete(key), this.unitOf.delete(key));
      }
      this.keysOf.delete(unit);
      this.indexesOf.delete(unit);
    }
    for (const row of rows) {
      if (row.parent) this.indexesOf.set(row.parent, (this.indexesOf.get(row.parent) ?? new Set()).add(row.unit));
      next.set(row.key!, row.def ?? "");
      if (!this.keysOf.has(row.unit)) this.keysOf.set(row.unit, new Set());
      this.keysOf.get(row.unit)!.add(row.key!);
      this.unitOf.set(row.key!, row.unit);
    }
    this.current = next;
    return next;
  }
}

type SnapshotRow = { key: string | null; def: string | null; unit: string; parent: string | null };

/** The user-visible schema, read from the catalog (no pg_dump needed; the same on PGlite and a server). */
export async function snapshotSchema(db: Queryable): Promise<SchemaSnapshot> {
  const rows = await db.query<SnapshotRow>(snapshotQuery(null));
  return new Map(rows.map((r) => [r.key!, r.def ?? ""]));
}

/**
 * What a definition means for comparison: function bodies without comments
 * and with whitespace collapsed; in views, timestamps PostgreSQL folded from
 * 'now' or 'today' when the view was created are one placeholder.
 */
function comparable(key: string, def: string): string {
  if (key.startsWith("function ")) {
    return def.replace(/\/\*[\s\S]*?\*\//g, " ").replace(/--[^\n]*/g, " ").replace(/\s+/g, " ").replace(/ ?([(),;]) ?/g, "$1").trim();
  }
  if (key.startsWith("view ") || key.startsWith("materialized view ")) {
    return def.replace(/'\d{4}-\d\d-\d\d( \d\d:\d\d:\d\d(\.\d+)?([+-]\d\d(:\d\d)?)?)?'::(timestamp|date)[a-z ]*/g, "'<now>'::$5");
  }
  return def;
}

/** A line diff of two multi-line definitions: changed lines with one line of context, at most 30 lines. */
function lineDiff(before: string, after: string): string[] {
  const a = before.split("\n");
  const b = after.split("\n");
  // Longest common subsequence, table from the end.
  const lcs = Array.from({ length: a.length + 1 }, () => new Uint16Array(b.length + 1));
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  }
  const ops: { mark: " " | "-" | "+"; line: string }[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) ops.push({ mark: " ", line: a[i++] }), j++;
    else if (j < b.length && (i === a.length || lcs[i][j + 1] > lcs[i + 1][j])) ops.push({ mark: "+", line: b[j++] });
    else ops.push({ mark: "-", line: a[i++] });
  }
  const near = (k: number) => ops.slice(Math.max(0, k - 1), k + 2).some((op) => op.mark !== " ");
  const shown = ops.flatMap((op, k) => (near(k) ? [`${op.mark} ${op.line}`] : []));
  return shown.length > 30 ? [...shown.slice(0, 30), `  ... ${shown.length - 30} more lines`] : shown;
}

/** A one-line change with only the part that differs and some context around it. */
function inlineDiff(before: string, after: string): string {
  const oneLine = (def: string) => def.replace(/\s+/g, " ").trim();
  const [a, b] = [oneLine(before), oneLine(after)];
  if (a.length + b.length <= 200) return `${a} -> ${b}`;
  let start = 0;
  while (start < a.length && a[start] === b[start]) start++;
  let end = 0;
  while (end < a.length - start && end < b.length - start && a[a.length - 1 - end] === b[b.length - 1 - end]) end++;
  const from = Math.max(0, start - 40);
  const cut = (s: string) => `${from > 0 ? "..." : ""}${s.slice(from, s.length - end + 40)}${end > 40 ? "..." : ""}`;
  return `${cut(a)} -> ${cut(b)}`;
}

/**
 * What differs between two snapshots, one entry per object, sorted. A changed
 * multi-line definition (a function, a view) comes as a line diff.
 */
export function diffSchemas(before: SchemaSnapshot, after: SchemaSnapshot): string[] {
  const oneLine = (def: string) => def.replace(/\s+/g, " ").trim();
  const described = (key: string, def: string) => {
    const text = oneLine(def);
    return `${key}${text ? ` (${text.length > 120 ? `${text.slice(0, 117)}...` : text})` : ""}`;
  };
  const lines: string[] = [];
  for (const [key, def] of before) {
    const now = after.get(key);
    if (now === undefined) lines.push(`missing: ${described(key, def)}`);
    else if (now !== def && comparable(key, now) !== comparable(key, def)) {
      lines.push(
        def.includes("\n") || now.includes("\n")
          ? [`changed: ${key}:`, ...lineDiff(def.trim(), now.trim()).map((l) => `  ${l}`)].join("\n")
          : `changed: ${key}: ${inlineDiff(def, now)}`,
      );
    }
  }
  for (const [key, def] of after) {
    if (!before.has(key)) lines.push(`left behind: ${described(key, def)}`);
  }
  return lines.sort();
}

export type RehearsalProblemKind =
  | "up failed"
  | "no down"
  | "down failed"
  | "down does not restore"
  | "up fails again"
  | "second up differs"
  | "rollback failed"
  | "rollback does not restore";

export interface RehearsalProblem {
  id: string;
  file: string;
  kind: RehearsalProblemKind;
  message: string;
  /** Schema differences, for "does not restore" and "second up differs". */
  differences?: string[];
}

/** What happened to one migration in a rehearsal, in the order they ran. */
export type RehearsalStep =
  | { id: string; status: "ok" | "problems"; problems: RehearsalProblem[] }
  | { id: string; status: "irreversible"; problems: RehearsalProblem[] }
  | { id: string; status: "not reached"; because: string; problems: RehearsalProblem[] }
  | { id: string; status: "applied"; problems: RehearsalProblem[] };

export interface RehearsalResult {
  /** Migrations that went up, down and up again (or tried to). */
  rehearsed: string[];
  problems: RehearsalProblem[];
  /** Migrations whose down section has no SQL: applied once, not undone. */
  irreversible: string[];
  /** Migrations skipped because a migration they declare a dependency on failed. */
  notReached: { id: string; because: string }[];
  /** Applied without a round trip (`--after`). */
  appliedOnly: string[];
  /** The rollback a user would run at the end: the newest migrations back to the last one that cannot be undone. */
  rollback: { ids: string[]; reverted: number } | null;
  /** Why there was no rollback to rehearse: the newest migration cannot be undone cleanly. */
  noRollback: string | null;
}

export interface RehearseOptions {
  /** Apply the migrations up to and including this id without a round trip; rehearse the ones after it. */
  after?: string | null;
  /** For tests: compare every incremental schema read with a full one and fail on a difference (slow). */
  verifySnapshots?: boolean;
  onStep?: (step: RehearsalStep) => void;
}

/**
 * On a scratch database, in dependency order: apply each migration, undo it,
 * compare the schema with the one before, apply it again and compare with the
 * first application. A failure is recorded and the rehearsal goes on: a
 * migration whose up failed counts as not applied, and the migrations that
 * declare a dependency on it (`depends:`) are not reached; the default
 * dependency on the previous file is only an order, so the next one still runs.
 * At the end it rolls back the newest migrations, newest first, as a user
 * would, and compares with the schema before them.
 */
export async function rehearse(
  db: Database,
  migrations: readonly Migration[],
  options: RehearseOptions | RehearseOptions["onStep"] = {},
): Promise<RehearsalResult> {
  const { after = null, onStep, verifySnapshots = false } = typeof options === "function" ? { onStep: options } : options;
  const problems = consistencyProblems(migrations, []);
  if (problems.length > 0) throw new InputError(problems.join("\n"));
  const order = dependencyOrder(migrations);
  const start = after === null ? 0 : order.findIndex((m) => m.id === after.replace(/\.sql$/, "")) + 1;
  if (start === 0 && after !== null) {
    const meant = closest(after, order.map((m) => m.id));
    throw new InputError(`--after ${after}: no such migration${meant ? ` — did you mean "${meant}"?` : ""}`);
  }
  await createHistoryTable(db);
  const tracker = new SchemaTracker(db, { events: true, verify: verifySnapshots });
  try {
    return await rehearseInOrder(db, order, start, tracker, onStep);
  } finally {
    await tracker.close();
  }
}

/** Each migration's round trip (the first `start` only applied), then the user's rollback of the clean newest ones. */
async function rehearseInOrder(
  db: Database,
  order: readonly Migration[],
  start: number,
  tracker: SchemaTracker,
  onStep: RehearseOptions["onStep"],
): Promise<RehearsalResult> {
  const result: RehearsalResult = { rehearsed: [], problems: [], irreversible: [], notReached: [], appliedOnly: [], rollback: null, noRollback: null };
  const notApplied = new Set<string>();
  /** The newest migrations that all went round cleanly, and the schema before the first of them. */
  let tail: { migrations: Migration[]; before: SchemaSnapshot } | null = null;

  for (const [index, m] of order.entries()) {
    const found: RehearsalProblem[] = [];
    const problem = (kind: RehearsalProblemKind, message: string, differences?: string[]) =>
      found.push({ id: m.id, file: m.file, kind, message, ...(differences ? { differences } : {}) });
    const blocker = m.dependsLine === null ? undefined : m.depends.find((d) => notApplied.has(d));
    const step = blocker !== undefined
      ? { status: "not reached" as const, because: blocker }
      : index < start
      ? (tracker.touched(), await applyOnce(db, m, problem))
      : await roundTrip(db, m, tracker, problem);
    if (step.status === "not reached") result.notReached.push({ id: m.id, because: step.because });
    else if (step.status === "applied") result.appliedOnly.push(m.id);
    else result.rehearsed.push(m.id);
    if (step.status === "irreversible") result.irreversible.push(m.id);
    if (step.status === "not reached" || step.status === "failed") notApplied.add(m.id);
    result.problems.push(...found);
    if (index >= start && step.status === "ok" && found.length === 0) {
      tail = tail ?? { migrations: [], before: step.before! };
      tail.migrations.push(m);
    } else {
      tail = null;
      result.noRollback = `the newest migration that cannot be undone cleanly is ${m.id} (${
        step.status === "ok" || step.status === "failed" ? found.map((p) => p.kind).join(", ") : step.status
      })`;
    }
    const status = step.status === "failed" ? "problems" : step.status === "ok" && found.length > 0 ? "problems" : step.status;
    onStep?.({ id: m.id, status, problems: found, ...(step.status === "not reached" ? { because: step.because } : {}) } as RehearsalStep);
  }
  if (tail) {
    result.noRollback = null;
    result.rollback = await rehearseRollback(db, tail.migrations, tail.before, tracker, result.problems);
  }
  return result;
}

type Problem = (kind: RehearsalProblemKind, message: string, differences?: string[]) => void;
type StepOutcome =
  | { status: "ok"; before?: SchemaSnapshot }
  | { status: "failed" | "irreversible" | "applied" }
  | { status: "not reached"; because: string };

const messageOf = (error: unknown) => (error as Error).message;

/** A migration before `--after`: applied, not rehearsed. */
async function applyOnce(db: Database, m: Migration, problem: Problem): Promise<StepOutcome> {
  try {
    await applyMigration(db, m, "rehearse", REHEARSAL_EXECUTION);
    return { status: "applied" };
  } catch (error) {
    problem("up failed", messageOf(error));
    return { status: "failed" };
  }
}

/**
 * The runner's settings, except that a transactional section goes in one
 * round trip (batched as the runner batches a long section) instead of one
 * per statement: on a scratch database no one needs to know which statement
 * was in flight when the connection went, and a statement that fails is still
 * found and named with its line. About a quarter fewer round trips on crates.io.
 */
const REHEARSAL_EXECUTION: ExecutionSettings = { ...DEFAULT_EXECUTION, batchFrom: 1 };

const fileStep = (m: Migration): RevertStep => ({ id: m.id, source: m.file, origin: "file", down: m.down, irreversible: false, note: null });

/**
 * Up, down, compare, up again, compare: what one migration's round trip
 * finds. The schema is read only where a comparison needs it: not at all for
 * a migration without a down (or an irreversible one).
 */
async function roundTrip(db: Database, m: Migration, tracker: SchemaTracker, problem: Problem): Promise<StepOutcome> {
  const reversible = m.down !== null && !hasNoStatements(m.down.sql);
  const before = reversible ? await tracker.now() : undefined;
  const run = async (work: Promise<unknown>, kind: RehearsalProblemKind) => {
    tracker.touched();
    try {
      await work;
      return true;
    } catch (error) {
      problem(kind, messageOf(error));
      return false;
    }
  };
  if (!(await run(applyMigration(db, m, "rehearse", REHEARSAL_EXECUTION), "up failed"))) return { status: "failed" };
  if (!m.down) {
    problem("no down", `${m.file}: has no "-- migrate:down" section`);
    return { status: "ok" };
  }
  if (!reversible) return { status: "irreversible" };
  const afterUp = await tracker.now();
  if (!(await run(revertMigration(db, fileStep(m), REHEARSAL_EXECUTION), "down failed"))) return { status: "ok" };
  const differences = diffSchemas(before!, await tracker.now());
  if (differences.length > 0) {
    problem("down does not restore", `${m.file}:${m.down.line}: the down section does not restore the schema from before the up`, differences);
  }
  if (!(await run(applyMigration(db, m, "rehearse", REHEARSAL_EXECUTION), "up fails again"))) return { status: "failed" };
  const again = diffSchemas(afterUp, await tracker.now());
  if (again.length > 0) {
    problem("second up differs", `${m.file}:${m.up.line}: applied again after its down, the up leaves a different schema than the first time`, again);
  }
  return { status: "ok", before };
}

/** The rollback a user runs: the newest clean migrations, newest first, back to the schema before the first of them. */
async function rehearseRollback(
  db: Database,
  tail: Migration[],
  before: SchemaSnapshot,
  tracker: SchemaTracker,
  problems: RehearsalProblem[],
): Promise<RehearsalResult["rollback"]> {
  const newestFirst = [...tail].reverse();
  const ids = newestFirst.map((m) => m.id);
  for (const [index, m] of newestFirst.entries()) {
    try {
      tracker.touched();
      await revertMigration(db, fileStep(m), REHEARSAL_EXECUTION);
    } catch (error) {
      problems.push({
        id: m.id,
        file: m.file,
        kind: "rollback failed",
        message: `rolling back the newest ${tail.length} migrations (${ids[0]} back to ${ids[ids.length - 1]}), ` +
          `${index} of ${tail.length} were undone before ${m.id} failed: ${messageOf(error)}`,
      });
      return { ids, reverted: index };
    }
  }
  const differences = diffSchemas(before, await tracker.now());
  if (differences.length > 0) {
    const oldest = tail[0];
    problems.push({
      id: oldest.id,
      file: oldest.file,
      kind: "rollback does not restore",
      message: `rolling back the newest ${tail.length} migrations, newest first (${ids[0]} back to ${oldest.id}), ` +
        `does not restore the schema from before ${oldest.id}`,
      differences,
    });
  }
  return { ids, reverted: tail.length };
}

/*
 * The programmatic API: the CLI's commands for a program (a test setup, a
 * deploy script), on a Database from connect() and the migrations from
 * readMigrations(). Thin names over the functions above, documented in the
 * README; rollback() and rehearse() already have that shape.
 */

/** What `--pre` or `--all` would do now: apply, delayed, blocked. Changes nothing, takes no lock. */
export async function plan(db: Database, migrations: readonly Migration[], options: RunOptions): Promise<Plan> {
  return (await migrate(db, migrations, { ...options, dryRun: true })).plan;
}

/** `--pre` or `--all`: apply what the plan says under the migration lock; throws a SafemigrateError on failure. */
export function run(db: Database, migrations: readonly Migration[], options: Omit<RunOptions, "dryRun">): Promise<RunResult> {
  return migrate(db, migrations, { ...options, dryRun: false });
}

/** `--status`: every migration from the files or the history, with its state. */
export async function status(db: Queryable, migrations: readonly Migration[]): Promise<StatusRow[]> {
  return migrationStatus(migrations, await readStatusRows(db));
}

/** `--lint`: every finding of the deploy-safety analysis, waived ones with their reason. No database. */
export function lint(migrations: readonly Migration[]): Promise<Finding[]> {
  return analyzeMigrations(migrations);
}

// ============================================================================
// 8. Output
// ============================================================================

export interface Output {
  out(line: string): void;
  err(line: string): void;
  color: boolean;
  /** On a terminal: show `line` in place of the previous status line (null clears it). Absent elsewhere. */
  status?(line: string | null): void;
  /** Set by the console output once the reader of stdout or stderr went away (`| head`): the run stops quietly. */
  closed?: boolean;
}

const paint = (output: Output, code: number, text: string) => output.color ? `\x1b[${code}m${text}\x1b[0m` : text;
const green = (o: Output, t: string) => paint(o, 32, t);
const yellow = (o: Output, t: string) => paint(o, 33, t);
const red = (o: Output, t: string) => paint(o, 31, t);
const dim = (o: Output, t: string) => paint(o, 2, t);

const ms = (value: number) => `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`;
const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;

function delayNote(d: DelayedMigration, now: Date): string {
  const behind = d.waitsFor ? `, and it waits for ${d.waitsFor.join(", ")}, which cannot run before the deploy` : "";
  if (d.delayMs === null) return `${d.safe}: waits for --all${behind}`;
  if (d.dueAt === null) return `after_deploy, delay ${formatDuration(d.delayMs)}: the clock starts at this --pre${behind}`;
  return `after_deploy, delay ${formatDuration(d.delayMs)}: due ${d.dueAt.toISOString()}` +
    (d.dueAt <= now ? "" : ` (in ${formatDuration(Math.ceil((d.dueAt.getTime() - now.getTime()) / 60_000) * 60_000)})`) + behind;
}

/** Where a step's down SQL comes from, and why, for the plan and the progress lines. */
const downSource = (step: RevertStep) =>
  step.origin === "stored"
    ? `down SQL stored in ${HISTORY_TABLE} when it was applied${step.note ? `: ${step.note}` : ""}`
    : `down SQL from ${step.source}${step.note ? `, ${step.note}` : ""}`;

export function humanRunEvent(output: Output, event: RunEvent): void {
  if (event.type === "waiting-for-lock") {
    output.err(`waiting for another safemigrate run to release the migration lock (held by ${event.holder})...`);
  } else if (event.type === "applied") {
    output.out(`  ${green(output, "applied")}  ${event.migration.id}  ${dim(output, `(${event.migration.safe})`)}  ${ms(event.durationMs)}`);
  } else if (event.type === "lock-timeout") {
    output.err(
      `  ${yellow(output, "lock timeout")}  ${event.id}  ${dim(output, `(${event.file}:${event.line})`)}  attempt ${event.attempt} of ${event.attempts}, ` +
        `retrying in ${(event.waitMs / 1000).toFixed(1)} s`,
    );
    for (const b of event.blockers) {
      output.err(
        `      held by pid ${b.pid} (${b.application || "no application_name"}, ${b.state ?? "?"} for ${formatSeconds(b.forMs)}): ` +
          `${b.query.replace(/\s+/g, " ").trim()}`,
      );
    }
  } else if (event.type === "dropped-invalid-index") {
    output.out(`  ${yellow(output, "dropped invalid index")}  ${event.name}`);
  } else if (event.type === "reverted") {
    output.out(`  ${yellow(output, "rolled back")}  ${event.step.id}  ${dim(output, `(${downSource(event.step)})`)}  ${ms(event.durationMs)}`);
  }
}

const formatSeconds = (ms: number) => ms < 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 1000)} s`;

/**
 * Progress of a run for people: a line when a migration starts (so a log
 * shows what is running when a deploy hangs). On a terminal that line is
 * rewritten in place with the elapsed time, then replaced by the result line.
 * `--verbose` adds each statement as it is sent. `stop` clears what is left.
 */
export function humanProgress(output: Output, verbose: boolean): { onEvent: (event: RunEvent) => void; stop: () => void } {
  let current: string | null = null;
  let ticker: ReturnType<typeof setInterval> | null = null;
  const stop = () => {
    if (ticker) clearInterval(ticker);
    ticker = current = null;
    output.status?.(null);
  };
  /** Prints over the status line, then puts it back. */
  const around = (print: () => void) => {
    output.status?.(null);
    print();
    if (current) output.status?.(current);
  };
  const onEvent = (event: RunEvent) => {
    if (event.type === "starting") {
      const line = `  ${event.verb === "apply" ? "applying" : "rolling back"}  ${event.id}` +
        (event.safe ? `  ${dim(output, `(${event.safe})`)}` : "");
      if (!output.status) return output.out(line);
      const started = Date.now();
      output.status(current = line);
      ticker = setInterval(() => output.status!(current = `${line}  ${dim(output, formatSeconds(Date.now() - started))}`), 1_000);
      (ticker as { unref?: () => void }).unref?.();
    } else if (event.type === "statement") {
      if (verbose) {
        around(() => {
          output.out(dim(output, `    ${event.file}:${event.line}`));
          for (const line of event.sql.trim().split("\n")) output.out(`      ${line}`);
        });
      }
    } else if (event.type === "applied" || event.type === "reverted") {
      stop();
      humanRunEvent(output, event);
    } else {
      around(() => humanRunEvent(output, event));
    }
  };
  return { onEvent, stop };
}

/** The SQL a step would run, indented under its plan line (--plan --sql). */
function planSql(output: Output, section: SqlSection | null | undefined): void {
  if (!section) return;
  if (!section.transaction) output.out(dim(output, "      -- runs outside a transaction, statement by statement"));
  for (const line of section.sql.trim().split("\n")) output.out(`      ${line}`);
}

export function blockedReport(plan: Plan): string {
  const lines = plan.blocked.map((b) => `  ${b.id} (${b.safe}) is blocked by ${b.blockedBy.join(", ")}`);
  const fixes = (plan.advice ?? []).map((a) => `  ${a.fix ? `fix: ${describeEdit(a.fix)}` : a.message}`);
  return [
    `refusing to run --pre: ${plural(plan.blocked.length, "migration")} cannot run before the deploy because ` +
    `${plan.blocked.length === 1 ? "it depends" : "they depend"} on migrations that are only safe after it:`,
    ...lines,
    `Nothing was applied.` + (fixes.length > 0 ? ` Where the dependency is only the default order, declare what the migration really needs:` : ""),
    ...fixes,
    `Or change "safe:" of the blocking migrations if they really are safe before the deploy, or use --mode nonstrict to ` +
    `apply only what is not blocked. Run --all first only if the blocking migrations shipped with an earlier release: ` +
    `if they are new in this one, --all would apply them under the old code.`,
  ].join("\n");
}

/** A run's exit code; a plan's is the one the run would have. */
export function runExitCode(result: RunResult): number {
  if (result.plan.refused) return EXIT.blocked;
  return result.findings?.some(isGating) ? EXIT.invalid : EXIT.ok;
}

const createdByTheRun = (f: Finding) => /did not exist before this run$|no tables before this run$/.test(f.notGating ?? "");

/**
 * The gate's findings in a run or plan: in a plan, the refusal the run would
 * print; then each finding that does not gate, with why, except those on
 * objects the run itself creates and information, which are counted (a fresh
 * database has hundreds; --lint lists them).
 */
function humanGateFindings(output: Output, result: RunResult): void {
  const findings = (result.findings ?? []).filter((f) => f.waived === null);
  const gating = findings.filter(isGating);
  if (result.dryRun && gating.length > 0) {
    output.err(red(output, `safemigrate: the run would stop (exit ${EXIT.invalid}), nothing applied: ${new LintError(gating, findings).message}`));
  }
  const created = findings.filter(createdByTheRun);
  const information = findings.filter((f) => RULES[f.rule].kind === "info");
  for (const f of findings.filter((f) => !isGating(f) && !createdByTheRun(f) && RULES[f.rule].kind !== "info")) {
    output.out(`  ${yellow(output, "not gating")}  ${f.file}:${f.line}: ${f.rule}: ${f.message} ${dim(output, `(${f.notGating})`)}`);
  }
  const counted = [
    created.length > 0 ? `${plural(created.length, "finding")} on objects this run creates, not gating` : "",
    information.length > 0 ? `${plural(information.length, "information finding")}` : "",
  ].filter(Boolean);
  if (counted.length > 0) output.out(`  ${dim(output, `${counted.join("; ")} (--lint lists them)`)}`);
}

export function humanRunSummary(output: Output, result: RunResult, total: number, now: Date, showSql = false): void {
  const { plan } = result;
  humanGateFindings(output, result);
  if (result.dryRun) {
    output.out(`plan for --${plan.phase}${plan.phase === "pre" ? ` (${plan.mode})` : ""}:`);
    for (const index of result.invalidIndexes) {
      output.out(`  ${red(output, "invalid index")}  ${index.name}  ${dim(output, "(a run would refuse until --repair-invalid-indexes drops it)")}`);
    }
    const wouldApply = (m: Migration) => `  ${green(output, "would apply")}  ${m.id}  ${dim(output, `(${m.safe})`)}`;
    if (showSql) {
      for (const m of plan.apply) {
        output.out(wouldApply(m));
        planSql(output, m.up);
      }
    } else {
      outLines(output, plan.apply.map(wouldApply));
    }
  }
  outLines(output, plan.delayed.map((d) => `  ${yellow(output, "waits")}  ${d.id}  ${dim(output, `(${delayNote(d, now)})`)}`));
  for (const d of plan.early) {
    const clock = d.dueAt === null ? "no --pre has started its clock" : `due ${d.dueAt.toISOString()}`;
    output.out(
      `  ${yellow(output, "before its delay")}  ${d.id}  ` +
        dim(output, `(delay ${formatDuration(d.delayMs!)}, ${clock}; --all ${result.dryRun ? "would apply" : "applied"} it now)`),
    );
  }
  if (plan.missingFiles.length > 0) {
    output.out(
      `  ${yellow(output, "no file")}  ${plan.missingFiles.join(", ")}  ${dim(output, `(applied, but not in this checkout: ` +
        `an older checkout or another branch? --status lists them, --sync rolls them back on a development database)`)}`,
    );
  }
  if (plan.refused) {
    output.err(red(output, `safemigrate: ${blockedReport(plan)}`));
    return;
  }
  for (const b of plan.blocked) {
    output.out(`  ${yellow(output, "skipped")}  ${b.id}  ${dim(output, `(${b.safe}, blocked by ${b.blockedBy.join(", ")})`)}`);
  }
  const pendingAfter = plan.delayed.length + plan.blocked.length;
  const later = pendingAfter > 0 ? `; ${plural(pendingAfter, "migration")} left for --all` : "";
  if (result.dryRun && runExitCode(result) !== EXIT.ok) {
    output.out(`The run would apply nothing and exit ${runExitCode(result)}. Nothing was changed.`);
  } else if (result.dryRun) {
    output.out(`${plural(plan.apply.length, "migration")} would be applied${later}. Nothing was changed.`);
  } else if (result.applied.length === 0) {
    output.out(`Nothing to apply${later}.`);
  } else {
    output.out(`Applied ${plural(result.applied.length, "migration")} in ${ms(total)}${later}.`);
  }
}

export function runResultJson(result: RunResult, database: string): unknown {
  const { plan } = result;
  return {
    ok: runExitCode(result) === EXIT.ok,
    exitCode: runExitCode(result),
    command: plan.phase,
    mode: plan.mode,
    database,
    dryRun: result.dryRun,
    ...(result.dryRun
      ? { wouldApply: plan.apply.map((m) => ({ id: m.id, safe: m.safe })) }
      : { applied: result.applied }),
    delayed: plan.delayed,
    blocked: plan.blocked,
    ...(plan.advice ? { advice: plan.advice } : {}),
    detected: result.dryRun ? [] : plan.detect,
    invalidIndexes: result.invalidIndexes,
    findings: result.findings ?? [],
  };
}

/**
 * Lines for stdout, given to `output.out` a thousand at a time: a listing of
 * 10,000 migrations is ten writes, not 10,000 system calls.
 */
function outLines(output: Output, lines: readonly string[]): void {
  for (let i = 0; i < lines.length; i += 1000) output.out(lines.slice(i, i + 1000).join("\n"));
}

export function humanStatus(output: Output, rows: StatusRow[]): void {
  if (rows.length === 0) {
    output.out("No migrations.");
    return;
  }
  // Not Math.max(...rows): Deno's V8 cannot take 200,000 arguments (RangeError).
  const width = rows.reduce((max, r) => Math.max(max, r.id.length), 2);
  const lines = [`${"id".padEnd(width)}  ${"safe".padEnd(13)}  ${"state".padEnd(12)}  applied at`];
  // The state and safe columns take a handful of values: each is padded (and coloured) once, not once a row.
  const states: Record<MigrationState, string> = {
    applied: green(output, "applied".padEnd(12)),
    pending: yellow(output, "pending".padEnd(12)),
    changed: red(output, "changed".padEnd(12)),
    "file missing": red(output, "file missing".padEnd(12)),
  };
  const safeCells = new Map<string, string>();
  for (const row of rows) {
    const safe = row.safe ?? "?";
    let safeCell = safeCells.get(safe);
    if (safeCell === undefined) {
      safeCell = safe.padEnd(13);
      safeCells.set(safe, safeCell);
    }
    const detected = row.state === "pending" && row.detectedAt ? `(delay clock started ${row.detectedAt.toISOString()})` : "";
    lines.push(`${row.id.padEnd(width)}  ${safeCell}  ${states[row.state]}  ${row.appliedAt?.toISOString() ?? detected}`);
  }
  outLines(output, lines);
}

/** `file:line:column: rule: message` and the fix on the next line. */
export function formatFinding(f: Finding): string {
  return `${f.file}:${f.line}:${f.column}: ${f.rule}: ${f.message}\n    fix: ${f.fix}` + (f.waived ? `\n    waived: ${f.waived}` : "") +
    (f.notGating && !f.waived ? `\n    not gating: ${f.notGating}` : "");
}

/** A GitHub Actions workflow command: the finding shows as an annotation on the file in the pull request. */
export function githubAnnotation(f: Finding): string {
  const escape = (text: string) => text.replace(/%/g, "%25").replace(/\r/g, "%0D").replace(/\n/g, "%0A");
  const property = (text: string) => escape(text).replace(/:/g, "%3A").replace(/,/g, "%2C");
  return `::${isGating(f) ? "error" : "notice"} file=${property(f.file)},line=${f.line},col=${f.column},title=${property(`safemigrate ${f.rule}`)}::` +
    escape(`${f.message}. Fix: ${f.fix}`);
}

/** A revert step as JSON: where its down SQL comes from, without the SQL. */
export function stepJson(step: RevertStep): Pick<RevertStep, "id" | "source" | "origin" | "note"> {
  return { id: step.id, source: step.source, origin: step.origin, note: step.note };
}

export function humanRevertPlan(
  output: Output,
  title: string,
  steps: readonly RevertStep[],
  apply: readonly Migration[] = [],
  showSql = false,
): void {
  output.out(title);
  if (steps.length === 0 && apply.length === 0) output.out("  nothing to do");
  for (const s of steps) {
    output.out(`  ${yellow(output, "roll back")}  ${s.id}  ${dim(output, `(${downSource(s)})`)}`);
    if (showSql) planSql(output, s.down);
  }
  for (const m of apply) {
    output.out(`  ${green(output, "apply")}  ${m.id}  ${dim(output, `(${m.safe})`)}`);
    if (showSql) planSql(output, m.up);
  }
}

const REHEARSAL_NOTE: Record<string, string> = {
  ok: "up, down, schema restored, up again, same schema",
  irreversible: "its down section has no SQL: applied once, not undone",
  applied: "applied without a round trip (--after)",
};

export function humanRehearsalStep(output: Output, step: RehearsalStep): void {
  if (step.status === "not reached") {
    output.out(`  ${yellow(output, "not reached")}  ${step.id}  ${dim(output, `(depends on ${step.because}, which is not applied)`)}`);
    return;
  }
  if (step.problems.length === 0) {
    const paint = step.status === "ok" ? green : yellow;
    output.out(`  ${paint(output, step.status)}  ${step.id}  ${dim(output, `(${REHEARSAL_NOTE[step.status]})`)}`);
    return;
  }
  for (const p of step.problems) humanRehearsalProblem(output, p);
}

function humanRehearsalProblem(output: Output, p: RehearsalProblem): void {
  output.out(`  ${red(output, p.kind)}  ${p.id}`);
  for (const line of p.message.split("\n")) output.out(`      ${line}`);
  for (const d of p.differences ?? []) for (const line of d.split("\n")) output.out(`        ${line}`);
}

/** The end of a rehearsal: the rollback a user would run, every problem on one line, and the counts. */
export function humanRehearsalSummary(output: Output, result: RehearsalResult, totalMs: number): void {
  for (const p of result.problems.filter((p) => p.kind.startsWith("rollback"))) humanRehearsalProblem(output, p);
  if (result.rollback && result.rollback.reverted === result.rollback.ids.length && !result.problems.some((p) => p.kind.startsWith("rollback"))) {
    const { ids } = result.rollback;
    output.out(`  ${green(output, "rollback ok")}  ${dim(output, `(the newest ${plural(ids.length, "migration")}, ${ids[0]} back to ${ids[ids.length - 1]}, newest first: schema restored)`)}`);
  }
  if (result.noRollback) output.out(`  ${yellow(output, "no rollback rehearsed")}  ${dim(output, `(${result.noRollback})`)}`);
  if (result.problems.length > 0) {
    output.out(`Problems:`);
    for (const p of result.problems) output.out(`  ${p.file}: ${p.kind}`);
  }
  const counts = [
    plural(result.problems.length, "problem"),
    `${result.irreversible.length} irreversible`,
    `${result.notReached.length} not reached`,
  ];
  output.out(
    `Rehearsed ${plural(result.rehearsed.length, "migration")} in ${(totalMs / 1000).toFixed(1)} s: ${counts.join(", ")}` +
      (result.appliedOnly.length > 0 ? ` (${result.appliedOnly.length} applied first without a round trip)` : "") + ".",
  );
}

export function rehearsalJson(result: RehearsalResult, database: string): unknown {
  const ok = result.problems.length === 0;
  return {
    ok,
    exitCode: ok ? EXIT.ok : EXIT.invalid,
    command: "rehearse",
    database,
    counts: {
      rehearsed: result.rehearsed.length,
      problems: result.problems.length,
      irreversible: result.irreversible.length,
      notReached: result.notReached.length,
      appliedOnly: result.appliedOnly.length,
    },
    ...result,
  };
}

// ============================================================================
// 9. The command line
// ============================================================================

export const USAGE = `safemigrate ${VERSION} — deploy-safe PostgreSQL migrations

Usage:
  bun safemigrate.ts --pre              apply the migrations that are safe before the deploy (release step)
  bun safemigrate.ts --all              apply every pending migration (after the deploy)
  bun safemigrate.ts --status           list every migration and its state
  bun safemigrate.ts --rollback <id>    undo <id> and the applied migrations that depend on it, newest first
  bun safemigrate.ts --rollback --last  undo the most recently applied migration
  bun safemigrate.ts --sync             make the database match this branch's migrations (development only)
  bun safemigrate.ts --fake <id>        record <id> as applied without running it
  bun safemigrate.ts --baseline <id>    record <id> and everything it depends on as applied without running them
  bun safemigrate.ts --accept-changed <id>  accept the edited up SQL of an applied migration
  bun safemigrate.ts --check            check the files (and, with --database-url, the history) for CI and pre-commit
  bun safemigrate.ts --rehearse         apply, undo and re-apply every migration, then roll back the newest, on a scratch database
  bun safemigrate.ts --lint [<file>...] check each migration's SQL against its declared phase and for long locks
                                        (named files only, still knowing what earlier migrations declared)
  bun safemigrate.ts --new <name>       create the next migration file, numbered as the directory already is

Options:
  --plan                 with --pre, --all, --rollback or --sync: show what would happen, change nothing
  --sql                  with --plan: also show the SQL that would run
  --verbose              show each statement as it is sent
  --json                 print one JSON object on stdout
  --dir <path>           migrations directory (default ./migrations)
  --database-url <url>   postgres://user@host:5432/db (sslmode honoured), pglite:<dir> or pglite:memory
                         (default: env DATABASE_URL, else PGHOST/PGUSER/... as psql reads them,
                         else an embedded PGlite in .safemigrate/)
                         Give --database-url several times to run on a fleet of databases.
  --targets <file>       a fleet: one database URL a line, # comments (--pre, --all, --plan, --status, --check)
  --parallel <n>         databases of a fleet worked on at once (default 4)
  --wait <time>          wait this long for the database to accept connections, e.g. 30s
  --mode <mode>          strict | nonstrict | disabled (default: env SAFEMIGRATE, else strict)
  --lock-wait <time>     how long to wait for another run's lock, e.g. 30s, 5m (default 5m)
  --force                let --sync run in a release environment
  --format <f>           --lint output: human (default), github (Actions annotations) or json
  --no-lint              let --pre/--all apply migrations with gating findings
  --small-table <size>   lock rules do not gate on existing tables smaller than this (default 1MB; 0: every table)
  --lint-after <id>      report findings only for migrations after <id> (a project setting, like strong_migrations' start_after)
  --lock-timeout <t>     lock_timeout for every statement (default 5s; a file's "-- lock-timeout:" wins)
  --statement-timeout <t>  statement_timeout (default off; a file's "-- statement-timeout:" wins)
  --lock-retries <n>     attempts for a statement that hits lock_timeout (default 5)
  --after <id>           with --rehearse: apply the migrations up to <id> without a round trip, rehearse the rest
  --repair-invalid-indexes  drop invalid indexes left by a failed CREATE INDEX CONCURRENTLY, then run
  --rerun <id>           with --pre/--all: run an interrupted "transaction: false" migration again from its start
  --history-table <t>    keep the history in <t> or <schema>.<t> (default safemigrate_history); one per service
  --direct-url <url>     a direct connection for the run when --database-url is a pooler (env SAFEMIGRATE_DIRECT_URL)
  --lease <time>         how long the run's lock lasts without a heartbeat (default 60s)
  -h, --help             show this help
  -v, --version          print the version

Options other than --plan, --sql, --rerun, --force and --format can also be set in safemigrate.json (or a
"safemigrate" section of package.json) and as SAFEMIGRATE_<OPTION> (SAFEMIGRATE_LOCK_TIMEOUT=10s); a flag wins over
the environment, the environment over the file. .env files are read as Bun reads them.

Exit codes: 0 done or nothing to do, 1 a migration or the database failed,
2 invalid input (usage, front-matter, dependency graph, checksum drift, a failed check or rehearsal),
3 strict mode found migrations blocked by after_deploy ones,
141 the reader of the output went away (| head): the run stopped there.
On a fleet the most severe code of any database: 1 over 2 over 3.
`;

const COMMANDS = ["pre", "all", "status", "sync", "check", "rehearse", "lint", "rollback", "fake", "baseline", "accept-changed", "new"] as const;
type Command = (typeof COMMANDS)[number];
/** Commands that take a value: a migration id, or for --new the name of the new migration. */
const ID_COMMANDS: readonly Command[] = ["rollback", "fake", "baseline", "accept-changed", "new"];
const PLANNABLE: readonly Command[] = ["pre", "all", "rollback", "sync"];
const BOOLEAN_FLAGS = [
  "pre", "all", "status", "sync", "check", "rehearse", "lint", "plan", "json", "last", "force", "repair-invalid-indexes", "help", "version",
  "verbose", "sql",
];
const STRING_FLAGS = [
  "dir", "database-url", "mode", "lock-wait", "rollback", "fake", "baseline", "accept-changed", "format", "lock-timeout",
  "statement-timeout", "lock-retries", "rerun", "history-table", "direct-url", "lease", "small-table", "lint-after", "wait", "new", "after",
  "targets", "parallel",
];
/**
 * Options that can be set once for a project instead of on every command
 * line: in the project file and in SAFEMIGRATE_<NAME> variables. A flag wins
 * over the environment, the environment over the file. Commands are never
 * settings: what to do is always said on the command line.
 */
export const SETTINGS = [
  "dir", "database-url", "mode", "lock-wait", "lock-timeout", "statement-timeout", "lock-retries", "wait",
  "lint", "repair-invalid-indexes", "verbose", "json", "history-table", "direct-url", "lease", "small-table", "lint-after",
] as const;
const BOOLEAN_SETTINGS: readonly string[] = ["lint", "repair-invalid-indexes", "verbose", "json"];
/** `lock-wait` -> `SAFEMIGRATE_LOCK_WAIT`. */
export const settingVariable = (setting: string) => `SAFEMIGRATE_${setting.toUpperCase().replace(/-/g, "_")}`;
/** A missing URL here is an error: a release step must never migrate a local toy database. */
const RELEASE_ENVIRONMENT = ["DYNO", "FLY_APP_NAME", "RENDER", "CI"];
/** Where --sync refuses without --force: deployed apps (CI runs review apps, so it is not listed). */
const DEPLOYED_ENVIRONMENT = ["DYNO", "FLY_APP_NAME", "RENDER"];
export const DEFAULT_PGLITE_DIR = ".safemigrate";
/** `CI=false` or `CI=0` is not a CI. */
const isSet = (value: string | undefined) => value !== undefined && !["", "0", "false"].includes(value.toLowerCase());

export interface CliOptions {
  command: Command | "help" | "version";
  /** The migration id for --rollback, --fake, --baseline, --accept-changed, the name for --new; null for --rollback --last. */
  target: string | null;
  plan: boolean;
  json: boolean;
  force: boolean;
  /** --verbose: show each statement as it runs. */
  verbose: boolean;
  /** --plan --sql: show the SQL that would run. */
  sql: boolean;
  dir: string;
  /** From --database-url or SAFEMIGRATE_DATABASE_URL; DATABASE_URL and PG* are consulted in resolveDatabaseUrl. */
  databaseUrl: string | null;
  /** "database-url" from the project file: used when the environment names no database. */
  projectDatabaseUrl: string | null;
  /** Every --database-url given (a fleet when more than one). */
  databaseUrls: string[];
  /** --targets: a file listing a fleet's database URLs. */
  targetsFile: string | null;
  /** --parallel: databases of a fleet worked on at once. */
  parallel: number;
  mode: Mode;
  lockWaitMs: number;
  /** --wait: how long to wait for the database to accept connections; 0 to fail at once. */
  waitMs: number;
  format: "human" | "github" | "json";
  /** false with --no-lint. */
  lint: boolean;
  /** --small-table in bytes, --lint-after, and the files or ids named after --lint. */
  smallTableBytes: number;
  lintAfter: string | null;
  lintOnly: string[];
  repairInvalidIndexes: boolean;
  execution: Omit<ExecutionSettings, "onEvent">;
  /** --rerun: interrupted migrations to run again from their first statement. */
  rerun: string[];
  historyTable: HistoryTable;
  /** --direct-url; the environment's SAFEMIGRATE_DIRECT_URL is consulted in resolveDatabaseUrl. */
  directUrl: string | null;
  leaseMs: number;
  /** --rehearse --after <id>: apply up to <id> without a round trip. */
  after: string | null;
}

/** The settings from the project file, and the name to give it in messages. */
export interface ProjectSettings {
  file: string;
  values: Record<string, unknown>;
}

/**
 * The project file, in the directory safemigrate runs in: `safemigrate.json`,
 * else the "safemigrate" section of `package.json`. Same names as the flags.
 */
export function readProjectSettings(cwd: string): ProjectSettings | null {
  const candidates: [string, string, (json: Record<string, unknown>) => unknown][] = [
    ["safemigrate.json", "safemigrate.json", (json) => json],
    ["package.json", `package.json "safemigrate"`, (json) => json?.safemigrate],
  ];
  for (const [name, file, section] of candidates) {
    const path = join(cwd, name);
    if (!existsSync(path)) continue;
    let values: unknown;
    try {
      values = section(JSON.parse(readFileSync(path, "utf8")));
    } catch (error) {
      if (name === "package.json") continue; // someone else's file; not ours to judge
      throw new InputError(`${file}: not valid JSON: ${(error as Error).message}`);
    }
    if (values === undefined) continue;
    if (typeof values !== "object" || values === null || Array.isArray(values)) throw new InputError(`${file}: expected an object of settings`);
    for (const [key, value] of Object.entries(values)) {
      if (!(SETTINGS as readonly string[]).includes(key)) {
        const meant = closest(key, SETTINGS);
        throw new InputError(`${file}: unknown setting "${key}"${meant ? ` — did you mean "${meant}"?` : ""} (settings: ${SETTINGS.join(", ")})`);
      }
      const expected = BOOLEAN_SETTINGS.includes(key) ? "boolean" : key === "lock-retries" ? "number" : "string";
      // A size may be written as a number of bytes too ("small-table": 0).
      const sizeInBytes = key === "small-table" && typeof value === "number";
      if (typeof value !== expected && !sizeInBytes) throw new InputError(`${file}: "${key}" must be a ${expected}, not ${JSON.stringify(value)}`);
    }
    return { file, values: values as Record<string, unknown> };
  }
  return null;
}

/** One option's value and where it came from, for messages: `--lock-wait`, `SAFEMIGRATE_LOCK_WAIT`, `safemigrate.json "lock-wait"`. */
interface Setting<T> {
  value: T;
  from: string;
}

/** A flag, else SAFEMIGRATE_<NAME>, else the project file. */
function settingOf(
  name: (typeof SETTINGS)[number],
  args: Record<string, unknown>,
  env: Record<string, string | undefined>,
  project: ProjectSettings | null,
): Setting<string | boolean> | undefined {
  const boolean = BOOLEAN_SETTINGS.includes(name);
  // --lint is the command; only --no-lint sets the option.
  const flag = name === "lint" ? (args.lint === false ? false : undefined) : args[name];
  if (flag !== undefined) return { value: flag as string | boolean, from: `--${name}` };
  const variable = settingVariable(name);
  const fromEnv = env[variable] || (name === "mode" && env.SAFEMIGRATE ? env.SAFEMIGRATE : undefined);
  if (fromEnv !== undefined) {
    return { value: boolean ? isSet(fromEnv) : fromEnv, from: env[variable] ? variable : "SAFEMIGRATE" };
  }
  const fromFile = project?.values[name];
  if (fromFile !== undefined) return { value: typeof fromFile === "number" ? String(fromFile) : fromFile as string | boolean, from: `${project!.file} "${name}"` };
  return undefined;
}

/**
 * mri reads `--rollback --plan 0003` as an empty --rollback and a stray
 * argument (the number 3, even): put a lone bare word back after the command
 * that takes it, so flags can come in any order.
 */
function valueAfterItsCommand(argv: string[]): string[] {
  const at = argv.findIndex((token) => ID_COMMANDS.some((c) => token === `--${c}`));
  if (at < 0 || (argv[at + 1] !== undefined && !argv[at + 1].startsWith("-"))) return argv;
  const bare: number[] = [];
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i];
    if (token === "--") break;
    if (token.startsWith("-")) {
      if (i !== at && STRING_FLAGS.includes(token.replace(/^--?/, "")) && !token.includes("=")) i++;
      continue;
    }
    bare.push(i);
  }
  if (bare.length !== 1) return argv;
  const rest = argv.filter((_, i) => i !== bare[0]);
  rest.splice(rest.indexOf(argv[at]) + 1, 0, argv[bare[0]]);
  return rest;
}

/** Turns argv, the environment and the project file into options; every mistake is an InputError. */
export function parseArgs(
  argv: string[],
  env: Record<string, string | undefined>,
  project: ProjectSettings | null = null,
): CliOptions {
  const args = mri(valueAfterItsCommand(argv), { boolean: BOOLEAN_FLAGS, string: STRING_FLAGS, alias: { h: "help", v: "version" } });
  const setting: SettingReader = (name) => settingOf(name, args, env, project);
  rejectUnknownOptions(args);
  const options = defaultOptions(args, env, setting);
  if (args.help) return options;
  if (args.version) return { ...options, command: "version" };
  rejectMissingValues(args);
  options.command = commandOf(args);
  if (ID_COMMANDS.includes(options.command)) options.target = args[options.command] || null;
  readRunSettings(options, args, setting);
  readTargetSettings(options, args, setting, project);
  return options;
}

// What mri gives: the flags by name, and the bare words.
type Args = { _: string[]; [flag: string]: any };
type SettingReader = (name: (typeof SETTINGS)[number]) => ReturnType<typeof settingOf>;

/** Every option before the command line and the settings say otherwise. */
function defaultOptions(args: Args, env: Record<string, string | undefined>, setting: SettingReader): CliOptions {
  const json = Boolean(setting("json")?.value);
  return {
    command: "help",
    target: null,
    plan: Boolean(args.plan),
    json,
    force: Boolean(args.force),
    verbose: Boolean(setting("verbose")?.value),
    sql: Boolean(args.sql),
    dir: "./migrations",
    databaseUrl: null,
    projectDatabaseUrl: null,
    databaseUrls: [],
    targetsFile: null,
    parallel: 4,
    mode: "strict",
    lockWaitMs: 5 * 60_000,
    waitMs: 0,
    format: json ? "json" : "human",
    lint: setting("lint")?.value !== false,
    smallTableBytes: DEFAULT_SMALL_TABLE_BYTES,
    lintAfter: (setting("lint-after")?.value as string | undefined) ?? null,
    lintOnly: args.lint === true ? args._.map(String) : [],
    repairInvalidIndexes: Boolean(setting("repair-invalid-indexes")?.value),
    execution: { ...DEFAULT_EXECUTION },
    rerun: [],
    historyTable: historyTable(),
    directUrl: null,
    leaseMs: DEFAULT_LEASE_MS,
    after: args.after ?? null,
  };
}

function rejectUnknownOptions(args: Args): void {
  for (const key of Object.keys(args)) {
    if (key === "_" || key === "h" || key === "v" || BOOLEAN_FLAGS.includes(key) || STRING_FLAGS.includes(key)) continue;
    const meant = closest(key, [...BOOLEAN_FLAGS, ...STRING_FLAGS]);
    throw new InputError(`unknown option ${key.length === 1 ? "-" : "--"}${key}${meant ? ` — did you mean --${meant}?` : ""} (see --help)`);
  }
}

function rejectMissingValues(args: Args): void {
  if (args._.length > 0 && args.lint !== true) throw new InputError(`unexpected argument "${args._[0]}" (see --help)`);
  for (const key of STRING_FLAGS) {
    if (Array.isArray(args[key]) && key !== "rerun" && key !== "database-url") throw new InputError(`--${key} is given more than once`);
    const lastIsTheValue = key === "rollback" && args.last;
    if (args[key] === "" && !lastIsTheValue) {
      throw new InputError(
        `--${key} needs a value${key === "rollback" ? " (a migration id, or --last)" : key === "new" ? " (a name, like add_orders_status)" : ""}`,
      );
    }
  }
}

/** Exactly one command, and only the options that go with it. */
function commandOf(args: Args): Command {
  // mri reads --no-lint as lint: false, which is an option, not the --lint command.
  const commands = COMMANDS.filter((c) => args[c] !== undefined && args[c] !== false);
  if (commands.length === 0) {
    throw new InputError(
      args.plan ? "--plan goes with --pre, --all, --rollback or --sync" : "say what to do: --pre, --all, --status, ... (see --help)",
    );
  }
  if (commands.length > 1) throw new InputError(`choose one of ${commands.map((c) => `--${c}`).join(", ")}`);
  const command = commands[0];
  if (args.plan && !PLANNABLE.includes(command)) throw new InputError(`--plan goes with --pre, --all, --rollback or --sync, not --${command}`);
  if (args.sql && !args.plan) throw new InputError("--sql goes with --plan: it shows the SQL that would run");
  if (args.last && command !== "rollback") throw new InputError("--last goes with --rollback");
  if (args.after !== undefined && command !== "rehearse") throw new InputError("--after goes with --rehearse");
  if (command === "rollback" && args.last && args.rollback !== "") throw new InputError("give --rollback either a migration id or --last, not both");
  if (args.format !== undefined && command !== "lint") throw new InputError("--format goes with --lint");
  if (args.rerun !== undefined && command !== "pre" && command !== "all") throw new InputError("--rerun goes with --pre or --all");
  return command;
}

/** A duration setting in ms (undefined when not set); with allowOff, "off" or 0 is 0. */
function durationSetting(setting: SettingReader, name: (typeof SETTINGS)[number], allowOff = false): number | undefined {
  const given = setting(name);
  if (given === undefined) return undefined;
  const text = String(given.value);
  if (allowOff && (text === "off" || text === "0")) return 0;
  const parsed = parseDuration(text);
  if (parsed === null) throw new InputError(`${given.from} "${text}" is not a duration (like 500ms, 30s or 5m${allowOff ? `, or "off"` : ""})`);
  return parsed;
}

/** How the run behaves: mode, waits, timeouts, retries, the gate's threshold, the output format, what to re-run. */
function readRunSettings(options: CliOptions, args: Args, setting: SettingReader): void {
  const mode = setting("mode") ?? { value: "strict", from: "--mode" };
  if (!(MODES as readonly string[]).includes(mode.value as string)) throw new InputError(`${mode.from} must be strict, nonstrict or disabled, not "${mode.value}"`);
  options.mode = mode.value as Mode;
  options.lockWaitMs = durationSetting(setting, "lock-wait") ?? options.lockWaitMs;
  options.waitMs = durationSetting(setting, "wait", true) ?? options.waitMs;
  options.leaseMs = durationSetting(setting, "lease") ?? options.leaseMs;
  options.execution.lockTimeoutMs = durationSetting(setting, "lock-timeout") ?? options.execution.lockTimeoutMs;
  options.execution.statementTimeoutMs = durationSetting(setting, "statement-timeout", true) ?? options.execution.statementTimeoutMs;
  const retries = setting("lock-retries");
  if (retries !== undefined) {
    const attempts = Number(retries.value);
    if (!Number.isInteger(attempts) || attempts < 1) throw new InputError(`${retries.from} must be a whole number of attempts, 1 or more`);
    options.execution.attempts = attempts;
  }
  if (args.format !== undefined) {
    if (!["human", "github", "json"].includes(args.format)) throw new InputError(`--format must be human, github or json, not "${args.format}"`);
    options.format = args.format;
    options.json ||= args.format === "json";
  }
  const smallTable = setting("small-table");
  if (smallTable !== undefined) {
    const bytes = parseSize(String(smallTable.value));
    if (bytes === null) throw new InputError(`${smallTable.from} "${smallTable.value}" is not a size (like 10MB, 512kB or 0)`);
    options.smallTableBytes = bytes;
  }
  if (args.rerun !== undefined) options.rerun = [args.rerun].flat().map((id: string) => id.replace(/\.sql$/, ""));
}

/** Where: the migrations' directory, the database or databases (a fleet), the history table. */
function readTargetSettings(options: CliOptions, args: Args, setting: SettingReader, project: ProjectSettings | null): void {
  options.dir = (setting("dir")?.value as string | undefined) ?? options.dir;
  const url = setting("database-url");
  if (url && !url.from.startsWith(project?.file ?? "\0")) options.databaseUrl = url.value as string;
  else if (url) options.projectDatabaseUrl = url.value as string;
  options.directUrl = (setting("direct-url")?.value as string | undefined) ?? null;
  options.historyTable = historyTable((setting("history-table")?.value as string | undefined) ?? HISTORY_TABLE);
  // Several --database-url: a fleet (see runFleet); the first stands for the single-database paths.
  options.databaseUrls = [args["database-url"] ?? []].flat() as string[];
  if (options.databaseUrls.includes("")) throw new InputError("--database-url needs a value");
  if (options.databaseUrls.length > 1) options.databaseUrl = options.databaseUrls[0];
  options.targetsFile = (args.targets as string | undefined) ?? null;
  if (args.parallel !== undefined) {
    const parallel = Number(args.parallel);
    if (!Number.isInteger(parallel) || parallel < 1) throw new InputError("--parallel must be a whole number of databases, 1 or more");
    options.parallel = parallel;
  }
}

/**
 * `.env` files, read the way Bun reads them by itself (same files, same
 * precedence), so a command migrates the same database under Bun, Deno and
 * Node: `.env`, `.env.<mode>`, `.env.local` (not in test), `.env.<mode>.local`,
 * later files winning, where mode is NODE_ENV if it is production or test and
 * development otherwise. Variables already set in the environment win over
 * every file. Under Bun this changes nothing; elsewhere it does what Bun did.
 */
export function withEnvFiles(env: Record<string, string | undefined>, cwd: string): Record<string, string | undefined> {
  const mode = env.NODE_ENV === "production" || env.NODE_ENV === "test" ? env.NODE_ENV : "development";
  const names = [".env", `.env.${mode}`, ...(mode === "test" ? [] : [".env.local"]), `.env.${mode}.local`];
  const fromFiles: Record<string, string> = {};
  for (const name of names) {
    const path = join(cwd, name);
    if (existsSync(path)) Object.assign(fromFiles, parseEnvFile(readFileSync(path, "utf8")));
  }
  const merged: Record<string, string | undefined> = { ...fromFiles, ...env };
  // $NAME and ${NAME} refer to the environment or to any file's variable, as in Bun.
  const expand = (value: string) =>
    value.replace(/\$(?:\{(\w+)\}|(\w+))/g, (_, braced, bare) => merged[braced ?? bare] ?? "");
  for (const [key, value] of Object.entries(fromFiles)) if (env[key] === undefined) merged[key] = expand(value);
  return merged;
}

/** KEY=value lines: `export ` allowed, quotes (double ones may span lines and know \n), `#` comments. */
export function parseEnvFile(text: string): Record<string, string> {
  const values: Record<string, string> = {};
  const entry = /^\s*(?:export\s+)?([\w.-]+)\s*=\s*(?:"((?:\\.|[^"\\])*)"|'([^']*)'|`([^`]*)`|([^#\r\n]*))/gm;
  for (const [, key, double, single, backtick, bare] of text.matchAll(entry)) {
    values[key] = double !== undefined ? double.replace(/\\n/g, "\n").replace(/\\(["\\])/g, "$1")
      : (single ?? backtick ?? bare).trim();
  }
  return values;
}

/**
 * libpq's environment, read as psql reads it. Any of the first group means
 * "a server is configured": the embedded default is then never used.
 */
const LIBPQ_SERVER_VARIABLES = ["PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE"];
/** URL query parameters libpq fills from the environment when the URL does not give them. */
const LIBPQ_PARAMETERS: [variable: string, parameter: string][] = [
  ["PGSSLMODE", "sslmode"],
  ["PGSSLROOTCERT", "sslrootcert"],
  ["PGAPPNAME", "application_name"],
  ["PGCONNECT_TIMEOUT", "connect_timeout"],
];

/** The password for a connection from the password file (PGPASSFILE, else ~/.pgpass), as libpq looks it up. */
export function passwordFromFile(env: Record<string, string | undefined>, host: string, port: string, database: string, user: string): string | null {
  const file = env.PGPASSFILE || (env.HOME ? join(env.HOME, ".pgpass") : null);
  if (!file || !existsSync(file)) return null;
  const wanted = [host, port, database, user];
  for (const line of readFileSync(file, "utf8").split(/\r?\n/)) {
    if (line.trim() === "" || line.startsWith("#")) continue;
    // host:port:database:user:password; a backslash escapes ":" and itself.
    const fields = [""];
    for (let i = 0; i < line.length; i++) {
      if (line[i] === "\\" && i + 1 < line.length) fields[fields.length - 1] += line[++i];
      else if (line[i] === ":" && fields.length < 5) fields.push("");
      else fields[fields.length - 1] += line[i];
    }
    if (fields.length < 5) continue;
    const matches = wanted.every((value, i) => fields[i] === "*" || fields[i] === value ||
      (i === 0 && value === "localhost" && fields[i] === "127.0.0.1"));
    if (matches) return fields[4];
  }
  return null;
}

/**
 * A postgres:// URL with everything libpq would take from the environment
 * made explicit: with no URL, one built from PGHOST, PGPORT, PGUSER,
 * PGDATABASE (null when none of them is set); with a URL, the parts it leaves
 * out (user, password, sslmode, ...) from the same variables. Explicit so the
 * result is the same under every runtime and does not depend on which of them
 * the driver reads by itself.
 */
export function libpqUrl(given: string | null, env: Record<string, string | undefined>): string | null {
  if (given !== null && !/^postgres(ql)?:\/\//i.test(given)) return given;
  if (env.PGSSLMODE && !(SSL_MODES as readonly string[]).includes(env.PGSSLMODE)) {
    throw new InputError(`PGSSLMODE "${env.PGSSLMODE}" is not one of ${SSL_MODES.join(", ")}`);
  }
  if (given === null && !LIBPQ_SERVER_VARIABLES.some((name) => env[name])) return null;
  let url: URL;
  try {
    url = new URL(given ?? "postgres://localhost");
  } catch {
    return given; // connect() reports the invalid URL
  }
  const host = env.PGHOST || env.PGHOSTADDR || "localhost";
  if (given === null) {
    if (host.startsWith("/")) url.searchParams.set("host", host);
    else url.hostname = host;
    url.port = env.PGPORT || "5432";
  }
  if (!url.username) url.username = encodeURIComponent(env.PGUSER || env.USER || env.LOGNAME || "postgres");
  const user = decodeURIComponent(url.username);
  if (url.pathname === "" || url.pathname === "/") url.pathname = `/${encodeURIComponent(env.PGDATABASE || user)}`;
  if (!url.password) {
    const password = env.PGPASSWORD ||
      passwordFromFile(env, url.searchParams.get("host") ?? (url.hostname || "localhost"), url.port || "5432", decodeURIComponent(url.pathname.slice(1)), user);
    if (password) url.password = encodeURIComponent(password);
  }
  for (const [variable, parameter] of LIBPQ_PARAMETERS) {
    if (env[variable] && !url.searchParams.has(parameter) && !(parameter === "sslmode" && url.searchParams.has("ssl"))) {
      url.searchParams.set(parameter, env[variable]!);
    }
  }
  return url.toString();
}

/**
 * The database to use: --database-url or SAFEMIGRATE_DATABASE_URL, else
 * DATABASE_URL, else the PG* variables, else the project file; the embedded
 * default only when none of them names one — and never in a release environment.
 */
export function resolveDatabaseUrl(
  options: CliOptions,
  env: Record<string, string | undefined>,
  output: Output,
): string {
  // A direct URL, when given, carries the run: the pooled one stays the application's.
  const url = libpqUrl(options.directUrl ?? (env.SAFEMIGRATE_DIRECT_URL || null) ?? options.databaseUrl ?? (env.DATABASE_URL || null), env) ??
    libpqUrl(options.projectDatabaseUrl, env);
  if (url) return url;
  const release = RELEASE_ENVIRONMENT.filter((name) => isSet(env[name]));
  if (release.length > 0) {
    throw new InputError(
      `no database URL: set DATABASE_URL or pass --database-url (or set PGHOST, PGDATABASE, ...). This looks like a release environment ` +
        `(${release.join(", ")} set), where migrating an embedded toy database would report success for nothing`,
    );
  }
  output.err(
    `safemigrate: no DATABASE_URL; using the embedded PGlite database in ${DEFAULT_PGLITE_DIR}/ ` +
      `(neither --database-url, DATABASE_URL nor any of ${LIBPQ_SERVER_VARIABLES.join(", ")} is set)`,
  );
  return `pglite:${DEFAULT_PGLITE_DIR}`;
}

/**
 * --plan, --status and --check change nothing, not even by creating an
 * embedded database: a PGlite directory that holds no database yet reads as
 * an empty in-memory one.
 */
export function withoutCreating(url: string): string {
  const dir = url.startsWith("pglite:") ? url.slice("pglite:".length) : null;
  return dir && dir !== "memory" && !existsSync(join(dir, "PG_VERSION")) ? "pglite:memory" : url;
}

/**
 * Opens the database; creating an embedded one takes seconds (initdb in
 * WebAssembly), so that is said before it starts and timed when it ends.
 */
async function openDatabase(url: string, output: Output, options: ConnectOptions): Promise<Database> {
  const dir = url.startsWith("pglite:") ? url.slice("pglite:".length) : "memory";
  if (dir === "memory" || existsSync(join(dir, "PG_VERSION"))) return await connect(url, options);
  output.err(`safemigrate: creating the embedded PostgreSQL (PGlite) database in ${dir}/ — a first run takes a few seconds...`);
  const started = performance.now();
  const db = await connect(url, options);
  output.err(`safemigrate: created ${dir}/ in ${(Math.round((performance.now() - started) / 100) / 10).toFixed(1)} s`);
  return db;
}

/**
 * A scratch database for --rehearse: a temporary one on the server the URL
 * names, else an in-memory PGlite. `drop` removes it; it also works while a
 * statement runs (on SIGINT or SIGTERM), ending the session that runs it.
 */
async function scratchDatabase(
  url: string | null,
  extensions: string[],
): Promise<{ db: Database; label: string; drop: () => Promise<void> }> {
  if (!url || url.startsWith("pglite:")) {
    const db = await connect("pglite:memory", { extensions });
    return { db, label: `pglite:memory, embedded PostgreSQL ${await serverVersion(db)}`, drop: () => db.close() };
  }
  const admin = await connect(url);
  const name = `safemigrate_rehearsal_${process.pid}_${Math.random().toString(36).slice(2, 8)}`;
  try {
    await admin.exec(`create database ${name}`);
  } catch (error) {
    await admin.close();
    throw new DatabaseError(`could not create a scratch database on ${admin.label}: ${(error as Error).message}`);
  }
  const scratchUrl = new URL(url);
  scratchUrl.pathname = `/${name}`;
  const db = await connect(scratchUrl.toString());
  let dropped: Promise<void> | null = null;
  return {
    db,
    label: `${db.label}, PostgreSQL ${await serverVersion(db)}`,
    drop: () =>
      dropped ??= (async () => {
        await admin.exec(`drop database if exists ${name} with (force)`).catch(() => {});
        await Promise.all([db.close().catch(() => {}), admin.close().catch(() => {})]);
      })(),
  };
}

async function serverVersion(db: Queryable): Promise<string> {
  const [row] = await db.query<{ version: string }>(`select current_setting('server_version') as version`);
  return row.version.split(" ")[0];
}

/**
 * postgres.js writes small queries on the next tick; if the socket dropped in
 * between, the driver throws there, where no caller can catch it. That is a
 * lost connection, not a crash: one message and exit 1, never a stack trace.
 */
function exitCleanlyOnDriverCrash(output: Output): void {
  if (driverCrashGuarded) return;
  driverCrashGuarded = true;
  process.on("uncaughtException", (error) => {
    if (!isConnectionLoss(error)) throw error;
    const inFlight = whenLost?.(error);
    if (inFlight) {
      output.err(`safemigrate: error: ${inFlight.message}`);
      process.exit(EXIT.failed);
    }
    // No statement in flight: the lease's heartbeat connection, or the working one between statements. Its own
    // error (a lost connection, named) is on its way through the ordinary path; should it never come, say so.
    setTimeout(() => {
      output.err(`safemigrate: error: the connection to the database was lost (${redact((error as Error).message)}); ` +
        `a migration in flight did not commit, or --status tells whether it did`);
      process.exit(EXIT.failed);
    }, 10_000);
  });
}
let driverCrashGuarded = false;

/** Runs one command; returns the exit code. Never throws: every error becomes one message. */
export async function main(
  argv: string[],
  env: Record<string, string | undefined> = process.env,
  output: Output = consoleOutput(env),
): Promise<number> {
  let json = argv.includes("--json");
  let db: Database | null = null;
  let progress: ReturnType<typeof humanProgress> | null = null;
  try {
    // Alone, --version and --help answer before anything is read (the project's settings, its .env files).
    const alone = argv.length === 1 ? argv[0] : null;
    if (alone === "--version" || alone === "-v" || alone === "--help" || alone === "-h") {
      output.out(alone === "--version" || alone === "-v" ? VERSION : USAGE);
      return EXIT.ok;
    }
    exitCleanlyOnDriverCrash(output);
    const options = parseArgs(argv, env, readProjectSettings(process.cwd()));
    json = options.json;
    if (options.command === "help" || options.command === "version") {
      output.out(options.command === "help" ? USAGE : VERSION);
      return EXIT.ok;
    }
    if (options.command === "new") return newMigrationCommand(options, output);
    const migrations = readMigrations(options.dir);
    progress = json ? null : humanProgress(output, options.verbose);
    if (isFleet(options)) return await runFleet(migrations, options, output);
    const withoutDatabase = COMMANDS_WITHOUT_USER_DATABASE[options.command];
    if (withoutDatabase) return await withoutDatabase(migrations, options, output, env);

    refuseSyncWhereDeployed(options, env);
    const url = resolveDatabaseUrl(options, env, output);
    db = await openCommandDatabase(url, options, migrations, output);
    const label = describeUrl(url);
    if (options.waitMs > 0) {
      await waitForDatabase(db, options.waitMs, () =>
        output.err(`safemigrate: waiting up to ${formatDuration(options.waitMs)} for ${label} to accept connections...`));
    }
    // Timed from here: opening an embedded database for the first time is not the migrations' time.
    const run: CommandRun = {
      db, migrations, options, output, label, json, started: performance.now(),
      lock: { lockWaitMs: options.lockWaitMs, leaseMs: options.leaseMs, onEvent: progress?.onEvent, execution: options.execution },
      printJson: (value) => output.out(JSON.stringify(value)),
      header: (title) => void (!json && !options.plan && output.out(`safemigrate ${title} on ${label}`)),
    };
    return await DATABASE_COMMANDS[options.command as DatabaseCommand](run);
  } catch (error) {
    progress?.stop();
    return reportError(error, output, json);
  } finally {
    await db?.close().catch(() => {});
  }
}

/** One readable line on stderr (and, with --json, one object on stdout) for whatever stopped the command. */
function reportError(error: unknown, output: Output, json: boolean): number {
  // The reader went away (`| head`): stop quietly; whatever the error became on its way up.
  if (output.closed) return EXIT_OUTPUT_CLOSED;
  const known = error instanceof SafemigrateError;
  const exitCode = known ? error.exitCode : EXIT.failed;
  const message = redact(known ? error.message : describeUnexpected(error));
  output.err(red(output, `safemigrate: error: ${message}`));
  if (json) {
    output.out(JSON.stringify({
      ok: false, exitCode, error: message,
      ...(error instanceof LintError ? { findings: error.findings } : {}),
      ...(error instanceof CheckError ? { problems: error.problems } : {}),
      ...(error instanceof StoppedMidway ? error.progress : {}),
    }));
  }
  return exitCode;
}

/** Commands that need no database of the user's (--check and --lint may read one, --rehearse makes a scratch one). */
const COMMANDS_WITHOUT_USER_DATABASE: Partial<Record<Command, (migrations: Migration[], options: CliOptions, output: Output, env: Record<string, string | undefined>) => Promise<number>>> = {
  check: runCheck,
  lint: runLint,
  rehearse: runRehearse,
};

/** --sync rolls back: refused where the environment says this is a deployed app, unless forced. */
function refuseSyncWhereDeployed(options: CliOptions, env: Record<string, string | undefined>): void {
  if (options.command !== "sync" || options.force || options.plan) return;
  const deployed = DEPLOYED_ENVIRONMENT.filter((name) => isSet(env[name]));
  if (deployed.length === 0) return;
  throw new InputError(
    `--sync rolls back migrations and is meant for development and review apps; this looks like a deployed ` +
      `environment (${deployed.join(", ")} set). Pass --force if you really mean it`,
  );
}

/** Read-only commands never create the history table; only an embedded database loads extensions (a server has them installed). */
function openCommandDatabase(url: string, options: CliOptions, migrations: Migration[], output: Output): Promise<Database> {
  const readOnly = options.plan || options.command === "status";
  return openDatabase(readOnly ? withoutCreating(url) : url, output, {
    historyTable: options.historyTable,
    extensions: url.startsWith("pglite:") ? extensionsCreatedBy(migrations) : [],
  });
}

/** What a command run on the user's database is given. */
interface CommandRun {
  db: Database;
  migrations: Migration[];
  options: CliOptions;
  output: Output;
  label: string;
  json: boolean;
  started: number;
  lock: { lockWaitMs: number; leaseMs: number; onEvent: ((event: RunEvent) => void) | undefined; execution: ExecutionSettings };
  printJson: (value: unknown) => void;
  header: (title: string) => void;
}

type DatabaseCommand = Exclude<Command, "check" | "lint" | "rehearse" | "new">;

const DATABASE_COMMANDS: Record<DatabaseCommand, (run: CommandRun) => Promise<number>> = {
  status: statusCommand,
  pre: migrateCommand,
  all: migrateCommand,
  rollback: rollbackCommand,
  sync: syncCommand,
  fake: recordCommand,
  baseline: recordCommand,
  "accept-changed": acceptChangedCommand,
};

async function statusCommand({ db, migrations, output, label, json, printJson }: CommandRun): Promise<number> {
  const rows = await status(db, migrations);
  if (json) printJson({ ok: true, exitCode: 0, command: "status", database: label, migrations: rows });
  else humanStatus(output, rows);
  return EXIT.ok;
}

async function migrateCommand({ db, migrations, options, output, label, json, started, lock, printJson, header }: CommandRun): Promise<number> {
  header(`--${options.command}${options.command === "pre" ? ` (${options.mode})` : ""}`);
  const result = await migrate(db, migrations, {
    ...lock,
    phase: options.command as "pre" | "all",
    mode: options.mode,
    dryRun: options.plan,
    lint: options.lint,
    smallTableBytes: options.smallTableBytes,
    lintAfter: options.lintAfter,
    repairInvalidIndexes: options.repairInvalidIndexes,
    rerun: options.rerun,
  });
  if (json) printJson(runResultJson(result, label));
  else humanRunSummary(output, result, performance.now() - started, new Date(), options.sql);
  return runExitCode(result);
}

async function rollbackCommand({ db, migrations, options, output, label, json, started, lock, printJson, header }: CommandRun): Promise<number> {
  const target = options.target ?? { last: true as const };
  header(`--rollback ${options.target ?? "--last"}`);
  const result = await rollback(db, migrations, target, { ...lock, dryRun: options.plan });
  if (json) printJson({ ok: true, exitCode: 0, command: "rollback", database: label, dryRun: result.dryRun, steps: result.steps.map(stepJson), reverted: result.reverted });
  else if (result.dryRun) humanRevertPlan(output, `plan for --rollback ${options.target ?? "--last"}:`, result.steps, [], options.sql);
  else output.out(`Rolled back ${plural(result.reverted.length, "migration")} in ${ms(performance.now() - started)}.`);
  return EXIT.ok;
}

async function syncCommand({ db, migrations, options, output, label, json, started, lock, printJson, header }: CommandRun): Promise<number> {
  header("--sync");
  const result = await sync(db, migrations, {
    ...lock,
    dryRun: options.plan,
    onPlan: json ? undefined : (plan) => humanRevertPlan(output, options.plan ? "plan for --sync:" : "sync plan:", plan.revert, plan.apply, options.sql),
  });
  if (json) {
    printJson({
      ok: true, exitCode: 0, command: "sync", database: label, dryRun: result.dryRun,
      revert: result.plan.revert.map(stepJson),
      apply: result.plan.apply.map((m) => m.id), reverted: result.reverted, applied: result.applied,
    });
  } else if (!result.dryRun) {
    output.out(`Rolled back ${plural(result.reverted.length, "migration")}, applied ${plural(result.applied.length, "migration")} in ${ms(performance.now() - started)}.`);
  }
  return EXIT.ok;
}

/** --fake and --baseline: recorded as applied without running them. */
async function recordCommand({ db, migrations, options, output, label, json, lock, printJson }: CommandRun): Promise<number> {
  const command = options.command as "fake" | "baseline";
  const recorded = await recordWithoutRunning(db, migrations, options.target!, command, lock);
  if (json) printJson({ ok: true, exitCode: 0, command, database: label, recorded });
  else output.out(`Recorded as applied without running them: ${recorded.join(", ")}.`);
  return EXIT.ok;
}

async function acceptChangedCommand({ db, migrations, options, output, label, json, lock, printJson }: CommandRun): Promise<number> {
  const accepted = await acceptChanged(db, migrations, options.target!, lock);
  if (json) printJson({ ok: true, exitCode: 0, command: "accept-changed", database: label, ...accepted });
  else if (accepted.from === accepted.to) {
    output.out(`Refreshed the stored down SQL of ${accepted.id} from its file; the history notes it.`);
  } else {
    output.out(`Accepted the changed up SQL of ${accepted.id} (checksum ${accepted.from.slice(0, 12)} -> ${accepted.to.slice(0, 12)}); ` +
      `the history notes it. The edit is not run: apply any schema change it implies in a new migration.`);
  }
  return EXIT.ok;
}

/** `--new <name>`: writes the next migration file; no database needed. */
function newMigrationCommand(options: CliOptions, output: Output): number {
  mkdirSync(options.dir, { recursive: true });
  const migrations = readMigrations(options.dir);
  const id = nextMigrationId(migrations.map((m) => m.id), options.target!, new Date());
  const file = join(options.dir, `${id}.sql`);
  writeFileSync(file, newMigrationText(migrations.at(-1)), { flag: "wx" });
  if (options.json) output.out(JSON.stringify({ ok: true, exitCode: 0, command: "new", id, file }));
  else output.out(`Created ${file}`);
  return EXIT.ok;
}

/**
 * `--rehearse`: every migration's round trip and the rollback a user would
 * run, on a scratch database next to the one the other commands use
 * (--database-url, then DATABASE_URL, then an embedded PGlite). Interrupted,
 * it drops the scratch database before exiting.
 */
async function runRehearse(
  migrations: Migration[],
  options: CliOptions,
  output: Output,
  env: Record<string, string | undefined>,
): Promise<number> {
  const started = performance.now();
  const scratch = await scratchDatabase(options.databaseUrl ?? (env.DATABASE_URL || null), extensionsCreatedBy(migrations));
  const interrupted = (signal: "SIGINT" | "SIGTERM") => async () => {
    output.err(`safemigrate: ${signal}: dropping the scratch database and stopping`);
    // Dropping it ends the session running the rehearsal; that lost connection is expected now, not a crash.
    process.removeAllListeners("uncaughtException");
    process.on("uncaughtException", () => {});
    await scratch.drop();
    process.exit(signal === "SIGINT" ? 130 : 143);
  };
  const onInt = interrupted("SIGINT");
  const onTerm = interrupted("SIGTERM");
  process.on("SIGINT", onInt);
  process.on("SIGTERM", onTerm);
  try {
    // The scratch database is dropped at the end: its commits need not wait for the disk.
    if (scratch.db.server) await scratch.db.exec("set synchronous_commit = off");
    if (!options.json) output.out(`safemigrate --rehearse on a scratch database (${scratch.label})`);
    const result = await rehearse(scratch.db, migrations, {
      after: options.after,
      onStep: options.json ? undefined : (step) => humanRehearsalStep(output, step),
    });
    if (options.json) output.out(JSON.stringify(rehearsalJson(result, scratch.label)));
    else humanRehearsalSummary(output, result, performance.now() - started);
    return result.problems.length === 0 ? EXIT.ok : EXIT.invalid;
  } finally {
    process.off("SIGINT", onInt);
    process.off("SIGTERM", onTerm);
    await scratch.drop();
  }
}

/**
 * `--lint`: the deploy-safety analysis, up and down sections. Every migration
 * is analysed in dependency order (so a file is judged knowing what earlier
 * ones declared); findings are reported for the migrations named on the
 * command line (all by default), after `--lint-after`, and, with
 * --database-url, only for pending ones, judged as `--pre` would judge them.
 */
async function runLint(migrations: Migration[], options: CliOptions, output: Output): Promise<number> {
  const named = lintTargets(migrations, options);
  let applied = new Set<string>();
  let gate: Gate | null = null;
  if (options.databaseUrl) {
    const db = await connect(withoutCreating(options.databaseUrl), { historyTable: options.historyTable });
    try {
      applied = new Set((await readHistory(db)).filter((row) => row.appliedAt !== null).map((row) => row.id));
      gate = { live: await readLiveSchema(db), phase: "pre", smallTableBytes: options.smallTableBytes };
    } finally {
      await db.close();
    }
  }
  const report = (m: Migration) => !applied.has(m.id) && isLinted(m.id, options.lintAfter) && (named === null || named.has(m.id));
  const reported = migrations.filter(report);
  const findings = await analyzeMigrations(migrations, { report, gate });
  await parseSections(downSections(reported));
  for (const m of reported) findings.push(...(await analyzeDown(m)));
  const gating = findings.filter(isGating);
  const exitCode = gating.length === 0 ? EXIT.ok : EXIT.invalid;
  const shown = findings.filter((f) => f.waived === null);
  if (options.format === "json") {
    output.out(JSON.stringify({ ok: gating.length === 0, exitCode, command: "lint", migrations: reported.length, findings }));
  } else if (options.format === "github") {
    for (const f of shown) output.out(githubAnnotation(f));
  } else {
    for (const f of shown) output.out(formatFinding(f));
    const waived = findings.length - shown.length;
    const other = shown.length - gating.length;
    output.out(
      (gating.length === 0 ? `ok: ${plural(reported.length, "migration")}, no gating findings` : `${plural(gating.length, "gating finding")}`) +
        (other > 0 ? `, ${other} not gating` : "") + (waived > 0 ? ` (${waived} waived)` : "") + ".",
    );
  }
  return exitCode;
}

/** The migrations named after `--lint` (as files or ids); null when none are named. */
function lintTargets(migrations: readonly Migration[], options: CliOptions): Set<string> | null {
  const ids = migrations.map((m) => m.id);
  const check = (id: string, what: string) => {
    if (ids.includes(id)) return id;
    const meant = closest(id, ids);
    throw new InputError(`${what} "${id}" is not a migration in ${options.dir}${meant ? ` — did you mean "${meant}"?` : ""}`);
  };
  if (options.lintAfter !== null) check(options.lintAfter, "--lint-after");
  if (options.lintOnly.length === 0) return null;
  return new Set(options.lintOnly.map((arg) => check(arg.replace(/^.*[\\/]/, "").replace(/\.sql$/, ""), "--lint")));
}

/**
 * `--check`: files (and with --database-url, the history) without changing
 * anything. Every problem comes with its fix as text and, in --json, as an
 * edit a script can apply.
 */
async function runCheck(
  migrations: Migration[],
  options: CliOptions,
  output: Output,
): Promise<number> {
  let history: HistoryRow[] = [];
  if (options.databaseUrl) {
    const db = await connect(withoutCreating(options.databaseUrl), { historyTable: options.historyTable });
    try {
      history = await readHistory(db);
    } finally {
      await db.close();
    }
  }
  const all = [...checkProblems(migrations, history, gitOrigins(options.dir), options.databaseUrl !== null), ...(await downProblems(migrations))];
  const errors = all.filter((p) => p.level === "error");
  const exitCode = errors.length === 0 ? EXIT.ok : EXIT.invalid;
  if (options.json) {
    output.out(JSON.stringify({ ok: errors.length === 0, exitCode, command: "check", migrations: migrations.length, problems: all }));
    return exitCode;
  }
  for (const p of all) {
    output.err(`safemigrate: ${p.level === "warning" ? "warning: " : ""}${p.message}` + (p.fix ? `\n    fix: ${describeEdit(p.fix)}` : ""));
  }
  if (errors.length === 0) {
    output.out(`ok: ${plural(migrations.length, "migration")}, front-matter valid, dependency graph complete and acyclic, down sections parse` +
      (options.databaseUrl ? ", consistent with the database's history" : "") +
      (all.length > 0 ? ` (${plural(all.length, "warning")})` : ""));
  }
  return exitCode;
}

/** Down sections that would fail during a rollback (analyzeDown): a syntax error, CONCURRENTLY or BEGIN/COMMIT against the down's own transaction setting. */
async function downProblems(migrations: readonly Migration[]): Promise<CheckProblem[]> {
  const problems: CheckProblem[] = [];
  await parseSections(downSections(migrations));
  for (const m of migrations) {
    for (const f of await analyzeDown(m)) problems.push({ level: "error", message: `${f.file}:${f.line}:${f.column}: ${f.rule}: ${f.message}\n    fix: ${f.fix}`, fix: null });
  }
  return problems;
}

/**
 * The problems --check reports, in the order a user fixes them: the history
 * (the same findings and fixes --all refuses with), the files, and with a
 * history what --pre would refuse. One name allocator, so no two renames collide.
 */
export function checkProblems(
  migrations: readonly Migration[],
  history: readonly HistoryRow[],
  origins: FileOrigins | null,
  withHistory: boolean,
): CheckProblem[] {
  const rename = newNames(migrations, history);
  const consistency = consistencyFindings(migrations, history, rename);
  const state = afterFixes(migrations, consistency);
  const tree = treeProblems(state, { history, origins, rename });
  const problems = [...consistency, ...tree];
  if (!withHistory || consistency.some((p) => p.fix === null)) return problems;
  const final = afterFixes(state, tree);
  const pre = planRun({ migrations: final, history, now: new Date(), mode: "nonstrict", phase: "pre" });
  return [...problems, ...preAdvice(pre, pendingMigrations(final, history))];
}

/**
 * Tells a merge from a batch with git: a file's adding commit is the newest
 * `git log --diff-filter=A` entry for it (renames count as adds, so a
 * renamed file belongs to the commit that renamed it; an uncommitted file
 * to the change in progress). Two files are concurrent when neither adding
 * commit is an ancestor of the other. null when `dir` is not in a checkout.
 */
export function gitOrigins(dir: string): FileOrigins | null {
  const git = (...args: string[]) => builtin("node:child_process").spawnSync("git", ["-C", dir, ...args], { encoding: "utf8" });
  let inside: ReturnType<typeof git>;
  try {
    inside = git("rev-parse", "--is-inside-work-tree");
  } catch {
    return null;
  }
  if (inside.status !== 0 || inside.stdout.trim() !== "true") return null;
  const heads = ["HEAD", ...(git("rev-parse", "-q", "--verify", "MERGE_HEAD").status === 0 ? ["MERGE_HEAD"] : [])];
  const added = new Map<string, string | null>();
  const addedBy = (m: Migration): string | null => {
    if (!added.has(m.file)) {
      const log = git("log", "--no-renames", "--diff-filter=A", "--format=%H", ...heads, "--", `${m.id}.sql`);
      added.set(m.file, log.status === 0 ? log.stdout.split("\n")[0] || null : null);
    }
    return added.get(m.file)!;
  };
  const isAncestor = (a: string, b: string) => git("merge-base", "--is-ancestor", a, b).status === 0;
  return {
    concurrent(a, b) {
      const [x, y] = [addedBy(a), addedBy(b)];
      return x !== null && y !== null && x !== y && !isAncestor(x, y) && !isAncestor(y, x);
    },
  };
}

/*
 * Writing to the terminal or a pipe. Every line is written synchronously and
 * completely before the program goes on, so process.exit can never cut output:
 * Bun makes a piped stdout non-blocking and drops what is still queued at exit
 * (JSON was cut at 64 KB), so a write that meets EAGAIN waits a moment and
 * tries the rest again. When the reader goes away (EPIPE, as after `| head -1`)
 * the run stops at that line without a word, like a Unix tool killed by
 * SIGPIPE, and exits 141 (128 + SIGPIPE), the code a shell shows for those:
 * the command did not run to its end. Each migration is all or nothing, so
 * stopping between two lines leaves the history true.
 */

/** Exit code when the reader of the output went away: what a shell reports for a process killed by SIGPIPE. */
export const EXIT_OUTPUT_CLOSED = 141;

/** Raised by a write once the reader is gone; main turns it into a quiet exit 141. */
export class OutputClosedError extends Error {
  constructor() {
    super("the reader of the output went away");
    this.name = "OutputClosedError";
  }
}

const pauseCell = new Int32Array(new SharedArrayBuffer(4));
/** Blocks the thread for `ms`: the output is all this CLI waits for while a slow reader catches up. */
const pause = (ms: number) => Atomics.wait(pauseCell, 0, 0, ms);

/** Writes all of `text` to `fd`, waiting out a full non-blocking pipe; throws OutputClosedError on EPIPE. */
export function writeFully(fd: number, text: string): void {
  const bytes = new TextEncoder().encode(text);
  let waitMs = 1;
  for (let offset = 0; offset < bytes.length;) {
    try {
      offset += writeSync(fd, bytes, offset, bytes.length - offset);
      waitMs = 1;
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code === "EPIPE") throw new OutputClosedError();
      if (code !== "EAGAIN" && code !== "EWOULDBLOCK") throw error;
      pause(waitMs);
      waitMs = Math.min(waitMs * 2, 50);
    }
  }
}

// ---- Fleets: the same command on many databases -------------------------------
//
// A thin layer over the single-database functions: each target gets its own
// connection, lock, plan and result, exactly as if safemigrate had been run
// on it alone, and a failure on one target never stops the others. The files
// are read and checked once. At most --parallel targets are open at a time,
// so memory stays bounded however long the list is; each target's output is
// held until it finishes so blocks never interleave, then one summary table.

const FLEET_COMMANDS: readonly CliOptions["command"][] = ["pre", "all", "status", "check"];

const isFleet = (options: CliOptions) => options.targetsFile !== null || options.databaseUrls.length > 1;

/** A targets file: one URL a line; blank lines and `#` comments (a whole line, or after a space) ignored. */
export function parseTargets(text: string, file: string): string[] {
  const urls: string[] = [];
  for (const [index, raw] of text.split(/\r?\n/).entries()) {
    const line = raw.replace(/(^|\s)#.*$/, "").trim();
    if (line === "") continue;
    const where = `${file}:${index + 1}`;
    if (!/^(postgres(ql)?:\/\/|pglite:)/i.test(line)) {
      throw new InputError(`${where}: "${redact(line)}" is not a database URL (postgres://user@host:5432/db, pglite:<dir>)`);
    }
    rememberPassword(line);
    urls.push(line);
  }
  return urls;
}

/** Every target of the fleet, in the order given: --database-url ones, then the file's. Duplicates are refused. */
function fleetTargets(options: CliOptions): string[] {
  const fromFile = options.targetsFile === null ? [] : parseTargets(readTargetsFile(options.targetsFile), options.targetsFile);
  const urls = [...options.databaseUrls, ...fromFile];
  urls.forEach(rememberPassword);
  if (urls.length === 0) throw new InputError(`${options.targetsFile}: lists no database URL`);
  const seen = new Set<string>();
  for (const url of urls) {
    if (seen.has(url)) throw new InputError(`${describeUrl(url)} is a target twice; each database takes the lock once`);
    seen.add(url);
  }
  return urls;
}

function readTargetsFile(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (error) {
    throw new InputError(`cannot read the targets file ${file}: ${(error as { code?: string }).code ?? (error as Error).message}`);
  }
}

export interface TargetResult {
  database: string;
  exitCode: number;
  /** Migrations applied (or, with --plan, that would be); applied ones for --status and --check. */
  applied: number;
  /** Pending ones left for later (--pre), or pending (--status, --check). */
  waiting: number;
  blocked: number;
  error: string | null;
  durationMs: number;
  /** What --json prints for this target alone. */
  json: Record<string, unknown>;
}

/** Runs `work` on every item, at most `limit` at a time; results in the items' order. */
async function inParallel<T, R>(items: readonly T[], limit: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await work(items[index]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** One target, as the single-database command would run it, its output into `output`. */
async function runTarget(url: string, migrations: Migration[], options: CliOptions, output: Output): Promise<TargetResult> {
  const database = describeUrl(url);
  const started = performance.now();
  const result: TargetResult = { database, exitCode: EXIT.ok, applied: 0, waiting: 0, blocked: 0, error: null, durationMs: 0, json: {} };
  const readOnly = options.plan || options.command === "status" || options.command === "check";
  let db: Database | null = null;
  try {
    db = await connect(readOnly ? withoutCreating(url) : url, { historyTable: options.historyTable });
    if (options.command === "pre" || options.command === "all") {
      const run = await migrate(db, migrations, {
        lockWaitMs: options.lockWaitMs,
        leaseMs: options.leaseMs,
        rerun: options.rerun,
        execution: options.execution,
        onEvent: options.json ? undefined : (event) => humanRunEvent(output, event),
        phase: options.command,
        mode: options.mode,
        dryRun: options.plan,
        lint: options.lint,
        repairInvalidIndexes: options.repairInvalidIndexes,
      });
      if (!options.json) humanRunSummary(output, run, performance.now() - started, new Date());
      Object.assign(result, {
        exitCode: run.plan.refused ? EXIT.blocked : EXIT.ok,
        applied: run.dryRun ? run.plan.apply.length : run.applied.length,
        waiting: run.plan.delayed.length,
        blocked: run.plan.blocked.length,
        json: runResultJson(run, database),
      });
    } else {
      const history = await readHistory(db);
      const rows = migrationStatus(migrations, history);
      result.applied = rows.filter((r) => r.state !== "pending").length;
      result.waiting = rows.length - result.applied;
      if (options.command === "status") {
        if (!options.json) humanStatus(output, rows);
        result.json = { ok: true, exitCode: 0, command: "status", database, migrations: rows };
      } else {
        const problems = consistencyProblems(migrations, history);
        for (const problem of problems) output.err(`safemigrate: ${problem}`);
        if (problems.length === 0 && !options.json) output.out("ok: consistent with the database's history");
        result.exitCode = problems.length === 0 ? EXIT.ok : EXIT.invalid;
        result.error = problems.length === 0 ? null : `${plural(problems.length, "problem")} with the history`;
        result.json = { ok: problems.length === 0, exitCode: result.exitCode, command: "check", database, problems };
      }
    }
  } catch (error) {
    const known = error instanceof SafemigrateError;
    result.exitCode = known ? error.exitCode : EXIT.failed;
    result.error = redact(known ? error.message : `unexpected error: ${(error as Error)?.message ?? error}`);
    if (!options.json) output.err(red(output, `safemigrate: error: ${result.error}`));
    result.json = { ok: false, exitCode: result.exitCode, database, error: result.error, ...(error instanceof LintError ? { findings: error.findings } : {}) };
  } finally {
    await db?.close().catch(() => {});
  }
  result.durationMs = performance.now() - started;
  return result;
}

/** The fleet's exit code: the most severe of any target's. A failure outranks invalid input, which outranks blocked. */
export function fleetExitCode(codes: readonly number[]): number {
  return [EXIT.failed, EXIT.invalid, EXIT.blocked].find((code) => codes.includes(code)) ?? EXIT.ok;
}

/** One line per target: what happened, and how long it took. */
export function fleetTable(output: Output, results: readonly TargetResult[]): void {
  const width = results.reduce((widest, r) => Math.max(widest, r.database.length), 6);
  output.out(`${"target".padEnd(width)}  ${"applied".padStart(7)}  ${"waiting".padStart(7)}  ${"blocked".padStart(7)}  failed  ${"time".padStart(8)}`);
  for (const r of results) {
    const failed = r.exitCode === EXIT.ok || r.exitCode === EXIT.blocked ? "-" : red(output, `exit ${r.exitCode}`);
    const blocked = r.blocked > 0 ? yellow(output, String(r.blocked).padStart(7)) : String(r.blocked).padStart(7);
    output.out(`${r.database.padEnd(width)}  ${String(r.applied).padStart(7)}  ${String(r.waiting).padStart(7)}  ${blocked}  ${failed.padEnd(6)}  ${ms(r.durationMs).padStart(8)}`);
  }
}

/** `--pre`, `--all` (also with --plan), `--status` and `--check` on every target of a fleet. */
async function runFleet(migrations: Migration[], options: CliOptions, output: Output): Promise<number> {
  if (!FLEET_COMMANDS.includes(options.command)) {
    throw new InputError(`--${options.command} works on one database at a time; a fleet (--targets, several --database-url) takes --pre, --all, --plan, --status or --check`);
  }
  if (options.directUrl) throw new InputError("--direct-url names one database; in a fleet, list each database's direct URL as its target");
  const urls = fleetTargets(options);
  if (options.command === "check") {
    const problems = [...treeProblems(migrations), ...(await downProblems(migrations)).map((p) => p.message)];
    if (problems.length > 0) throw new InputError(problems.join("\n"));
  }
  const started = performance.now();
  const results = await inParallel(urls, options.parallel, async (url) => {
    const lines: [keyof Output & ("out" | "err"), string][] = [];
    // Errors name their target: stderr is read apart from the blocks on stdout.
    const held: Output = { out: (line) => lines.push(["out", line]), err: (line) => lines.push(["err", `${describeUrl(url)}: ${line}`]), color: output.color };
    const result = await runTarget(url, migrations, options, held);
    if (!options.json) {
      output.out(dim(output, `== ${result.database}`));
      for (const [stream, line] of lines) output[stream](line);
    }
    return result;
  });
  const exitCode = fleetExitCode(results.map((r) => r.exitCode));
  const command = options.command + (options.plan ? " --plan" : "");
  if (options.json) {
    output.out(JSON.stringify({
      ok: exitCode === EXIT.ok,
      exitCode,
      command: options.command,
      dryRun: options.plan,
      durationMs: Math.round(performance.now() - started),
      targets: results.map((r) => ({ ...r.json, durationMs: Math.round(r.durationMs) })),
    }));
    return exitCode;
  }
  output.out("");
  fleetTable(output, results);
  const count = (code: number) => results.filter((r) => r.exitCode === code).length;
  output.out(
    `--${command} on ${plural(results.length, "database")} in ${ms(performance.now() - started)}: ` +
      `${count(EXIT.ok)} ok, ${count(EXIT.failed)} failed, ${count(EXIT.invalid)} invalid, ${count(EXIT.blocked)} blocked.`,
  );
  return exitCode;
}

/**
 * Whether `fd` is a terminal. Only a character device can be one, and asking
 * fstat first keeps node:tty (and the stream modules it loads) out of every
 * run whose output goes to a pipe or a file.
 */
function isTerminal(fd: number): boolean {
  try {
    // Only a character device can be a terminal, and /dev/null (a cron job's `> /dev/null`) is not one:
    // both answered without loading node:tty, which costs Bun its stream modules (~8 ms).
    const stat = fstatSync(fd);
    if (!stat.isCharacterDevice() || (existsSync("/dev/null") && statSync("/dev/null").rdev === stat.rdev)) return false;
    return builtin("node:tty").isatty(fd);
  } catch {
    return false;
  }
}

export function consoleOutput(env: Record<string, string | undefined>): Output {
  const terminal = isTerminal(1);
  const output: Output = {
    out: (line) => write(1, `${redact(line)}\n`),
    err: (line) => write(2, `${redact(line)}\n`),
    color: terminal && !env.NO_COLOR,
    closed: false,
    ...(terminal ? { status: (line: string | null) => write(1, `\r\x1b[K${line === null ? "" : redact(line)}`) } : {}),
  };
  /** Every write to the console goes through here: complete, in order, and silent once the reader is gone. */
  const write = (fd: number, text: string) => {
    if (output.closed) return;
    try {
      writeFully(fd, text);
    } catch (error) {
      if (error instanceof OutputClosedError) output.closed = true;
      throw error;
    }
  };
  return output;
}

/**
 * True when this file is the program being run rather than imported:
 * `import.meta.main` on Bun, Deno and Node 24.2+; on older Node the script
 * named on the command line (through the symlinks npx and bin links add).
 */
function isMainModule(): boolean {
  const main = (import.meta as { main?: boolean }).main;
  if (typeof main === "boolean") return main;
  const script = process.argv[1];
  try {
    return script !== undefined && builtin("node:url").pathToFileURL(realpathSync(script)).href === import.meta.url;
  } catch {
    return false;
  }
}

if (isMainModule()) {
  baselineWasmWanted = true;
  const output = consoleOutput(process.env);
  const argv = process.argv.slice(2);
  const env = argv.length === 1 && ["--version", "-v", "--help", "-h"].includes(argv[0]) ? process.env : withEnvFiles(process.env, process.cwd());
  const code = await main(argv, env, output);
  // Every byte is written by now (writeFully); exit at once, since PGlite keeps handles open.
  process.exit(output.closed ? EXIT_OUTPUT_CLOSED : code);
}
