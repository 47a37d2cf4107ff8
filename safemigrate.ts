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
 *   4. the planner (pure: files + history + clock + mode -> plan)
 *   5. database adapters (postgres.js and PGlite behind one interface)
 *   6. executing a plan (lock, history table, transactions)
 *   7. output (human and JSON)
 *   8. the command line
 *
 * Runs under Bun (`bun safemigrate.ts`) and Deno (`deno run -A safemigrate.ts`).
 */
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import mri from "mri";
import postgres from "postgres";

export const VERSION = "0.1.0";

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
  /** The down section as written (its own directives included); null when the file has none. */
  down: (SqlSection & { raw: string }) | null;
  /** sha256 of the up SQL with normalised line endings; front-matter and down excluded. */
  checksum: string;
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
}

/** An error meant for the user: one readable message and the exit code it maps to. */
export class SafemigrateError extends Error {
  constructor(message: string, readonly exitCode: number) {
    super(message);
    this.name = "SafemigrateError";
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

const DIRECTIVES = ["safe", "depends", "delay", "transaction"] as const;
type Directive = (typeof DIRECTIVES)[number];

/** `-- key: value`; the key must start with a letter so `-- 12:30` stays a comment. */
const DIRECTIVE_LINE = /^--\s*([A-Za-z][\w-]*)\s*:(.*)$/;
/** dbmate's section markers, with its optional `transaction:false` on the same line. */
const SECTION_MARKER = /^--\s*migrate:(up|down)\b(.*)$/i;
const COMMENT_LINE = /^\s*--/;

const DURATION_UNITS: Record<string, number> = {
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

/** Parses `7d`, `90s`, `1h30m` into milliseconds; null when it is not a duration. */
export function parseDuration(text: string): number | null {
  const value = text.trim().toLowerCase();
  if (!/^(\d+[smhdw])+$/.test(value)) return null;
  let total = 0;
  for (const [, amount, unit] of value.matchAll(/(\d+)([smhdw])/g)) {
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

/** Byte order of the UTF-8 encoding, which is code point order. */
export function compareIds(a: string, b: string): number {
  const left = [...a];
  const right = [...b];
  for (let i = 0; i < Math.min(left.length, right.length); i++) {
    const diff = left[i].codePointAt(0)! - right[i].codePointAt(0)!;
    if (diff !== 0) return diff;
  }
  return left.length - right.length;
}

export function checksumOf(upSql: string): string {
  const normalised = upSql.replace(/\r\n?/g, "\n").trim();
  return createHash("sha256").update(normalised).digest("hex");
}

interface ParsedDirectives {
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
    // `-- safe = always` or `-- safe before_deploy`: clearly meant as a directive.
    const loose = /^--\s*(safe|depends|delay|transaction)\s*(=\s*|\s+)(\S+)\s*$/i.exec(line.trim());
    if (loose && (loose[2].startsWith("=") || isValidValue(loose[1].toLowerCase() as Directive, loose[3]))) {
      throw new InputError(`${where}: write the directive as "-- ${loose[1].toLowerCase()}: ${loose[3]}"`);
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

function isValidValue(key: Directive, value: string): boolean {
  switch (key) {
    case "safe":
      return (SAFE_VALUES as readonly string[]).includes(value);
    case "delay":
      return parseDuration(value) !== null;
    case "transaction":
      return value === "true" || value === "false";
    case "depends":
      return false;
  }
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
      const list = value.replace(/^\[|\]$/g, "").split(/[\s,]+/).filter(Boolean);
      parsed.depends = { value: list.map((id) => id.replace(/\.sql$/, "")), line };
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
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  const at = (index: number) => `${file}:${index + 1}`;

  const up: ParsedDirectives = {};
  const down: ParsedDirectives = {};
  let section: "up" | "down" = "up";
  let inFrontMatter = true;
  let upStart = -1;
  let upEnd = lines.length;
  let downMarker = -1;
  let downStart = -1;
  let firstSqlLine = -1;

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const trimmed = line.trim();
    const marker = SECTION_MARKER.exec(trimmed);

    if (marker) {
      const kind = marker[1].toLowerCase();
      const options = marker[2];
      if (kind === "up") {
        if (section === "down" || !inFrontMatter) {
          throw new InputError(`${at(i)}: "-- migrate:up" must come before the up SQL and before "-- migrate:down"`);
        }
      } else {
        if (section === "down") throw new InputError(`${at(i)}: a second "-- migrate:down" (the first is on line ${downMarker + 1})`);
        section = "down";
        inFrontMatter = true;
        downMarker = i;
        upEnd = i;
      }
      const option = /transaction\s*:\s*(\S+)/i.exec(options);
      if (option) applyDirective(section === "up" ? up : down, "transaction", option[1], i + 1, at(i));
      continue;
    }

    if (inFrontMatter && (trimmed === "" || COMMENT_LINE.test(trimmed))) {
      const directive = trimmed === "" ? null : directiveOn(trimmed, at(i));
      if (directive) {
        if (section === "down" && directive.key !== "transaction") {
          throw new InputError(
            `${at(i)}: "${directive.key}:" belongs in the front-matter at the top of the file; ` +
              `the down section may only set "transaction:"`,
          );
        }
        applyDirective(section === "up" ? up : down, directive.key, directive.value, i + 1, at(i));
      }
      continue;
    }

    if (inFrontMatter) {
      inFrontMatter = false;
      if (section === "up") {
        upStart = i;
        firstSqlLine = i;
      } else {
        downStart = i;
      }
      continue;
    }

    // Below the front-matter a directive has no effect: say so instead of ignoring it.
    if (COMMENT_LINE.test(trimmed)) {
      const directive = directiveOn(trimmed, at(i));
      if (directive) {
        throw new InputError(
          `${at(i)}: "-- ${directive.key}:" has no effect here — directives must be in the front-matter ` +
            `before the first SQL (line ${(section === "up" ? firstSqlLine : downStart) + 1}); move it to the top of the ${section === "up" ? "file" : "down section"}`,
        );
      }
    }
  }

  if (up.delay && up.safe && up.safe.value !== "after_deploy") {
    throw new InputError(
      `${at(up.delay.line - 1)}: "delay:" only applies to after_deploy migrations, but this one is ${up.safe.value} — ` +
        `remove the delay or mark it "safe: after_deploy"`,
    );
  }

  const upSql = upStart < 0 ? "" : lines.slice(upStart, upEnd).join("\n").trimEnd();
  const downSection = downMarker < 0
    ? null
    : {
      raw: lines.slice(downMarker + 1).join("\n").trim(),
      sql: downStart < 0 ? "" : lines.slice(downStart).join("\n").trimEnd(),
      line: downStart < 0 ? downMarker + 2 : downStart + 1,
      transaction: down.transaction?.value ?? true,
    };

  return {
    id,
    file,
    safe: up.safe?.value ?? "after_deploy",
    declaredDepends: up.depends ?? null,
    delayMs: up.delay?.value ?? null,
    up: { sql: upSql, line: upStart < 0 ? 1 : upStart + 1, transaction: up.transaction?.value ?? true },
    down: downSection,
    checksum: checksumOf(upSql),
  };
}

/**
 * Reads every `*.sql` file directly in `dir`, sorted by id in byte order, and
 * fills in the default dependency (the previous id). Reports every bad file at
 * once so a user fixes them in one pass.
 */
export function readMigrations(dir: string): Migration[] {
  if (!existsSync(dir)) {
    throw new InputError(`migrations directory ${dir} does not exist (set it with --dir)`);
  }
  const names = readdirSync(dir, { withFileTypes: true })
    .filter((entry) => entry.isFile() && entry.name.endsWith(".sql"))
    .map((entry) => entry.name.slice(0, -".sql".length))
    .sort(compareIds);

  const problems: string[] = [];
  const migrations: Migration[] = [];
  for (const [index, id] of names.entries()) {
    const file = join(dir, `${id}.sql`);
    try {
      const parsed = parseMigration(id, file, readFileSync(file, "utf8"));
      const { declaredDepends, ...rest } = parsed;
      migrations.push({
        ...rest,
        depends: declaredDepends ? declaredDepends.value : index === 0 ? [] : [names[index - 1]],
        dependsLine: declaredDepends?.line ?? null,
      });
    } catch (error) {
      if (!(error instanceof InputError)) throw error;
      problems.push(error.message);
    }
  }
  if (problems.length > 0) throw new InputError(problems.join("\n"));
  return migrations;
}

// ============================================================================
// 3. The dependency graph and the consistency checks
// ============================================================================

const isApplied = (row: HistoryRow | undefined): boolean => row?.appliedAt != null;

/**
 * Orders migrations so every one comes after its dependencies, ties broken by
 * id. Dependencies outside `migrations` (already applied, or missing) are
 * ignored here; `consistencyProblems` reports the missing ones.
 */
export function dependencyOrder(migrations: readonly Migration[]): Migration[] {
  const byId = new Map(migrations.map((m) => [m.id, m]));
  const waitingOn = new Map<string, number>();
  const dependents = new Map<string, string[]>();
  for (const m of migrations) {
    const inSet = [...new Set(m.depends)].filter((d) => byId.has(d));
    waitingOn.set(m.id, inSet.length);
    for (const d of inSet) dependents.set(d, [...(dependents.get(d) ?? []), m.id]);
  }
  // Ready ids kept sorted descending so pop() yields the smallest id.
  const ready = migrations.filter((m) => waitingOn.get(m.id) === 0).map((m) => m.id).sort((a, b) => compareIds(b, a));
  const ordered: Migration[] = [];
  while (ready.length > 0) {
    const id = ready.pop()!;
    ordered.push(byId.get(id)!);
    for (const dependent of dependents.get(id) ?? []) {
      const left = waitingOn.get(dependent)! - 1;
      waitingOn.set(dependent, left);
      if (left === 0) {
        const at = ready.findIndex((r) => compareIds(r, dependent) < 0);
        ready.splice(at < 0 ? ready.length : at, 0, dependent);
      }
    }
  }
  return ordered;
}

/** One cycle among the migrations, as a list of ids ending where it started; null if none. */
export function findCycle(migrations: readonly Migration[]): string[] | null {
  const byId = new Map(migrations.map((m) => [m.id, m]));
  const state = new Map<string, "visiting" | "done">();
  const path: string[] = [];
  const visit = (id: string): string[] | null => {
    if (state.get(id) === "done") return null;
    if (state.get(id) === "visiting") return [...path.slice(path.indexOf(id)), id];
    state.set(id, "visiting");
    path.push(id);
    for (const d of byId.get(id)!.depends) {
      if (!byId.has(d)) continue;
      const cycle = visit(d);
      if (cycle) return cycle;
    }
    path.pop();
    state.set(id, "done");
    return null;
  };
  for (const m of migrations) {
    const cycle = visit(m.id);
    if (cycle) return cycle;
  }
  return null;
}

/**
 * Everything that must stop a run before it starts: unknown dependencies,
 * cycles, applied migrations that depend on pending ones (typical after
 * merging branches), and applied migrations whose up SQL changed.
 */
export function consistencyProblems(migrations: readonly Migration[], history: readonly HistoryRow[]): string[] {
  const problems: string[] = [];
  const rows = new Map(history.map((row) => [row.id, row]));
  const files = new Map(migrations.map((m) => [m.id, m]));

  for (const m of migrations) {
    for (const d of m.depends) {
      if (files.has(d) || isApplied(rows.get(d))) continue;
      const meant = closest(d, [...files.keys()]);
      problems.push(
        `${m.file}:${m.dependsLine ?? 1}: depends on "${d}", which is neither a file in the migrations directory nor applied` +
          (meant ? ` — did you mean "${meant}"?` : ""),
      );
    }
  }

  const cycle = findCycle(migrations);
  if (cycle) {
    problems.push(
      `dependency cycle: ${cycle.join(" -> ")} — each waits for the next, so none can run; ` +
        `remove one of these "depends:" entries (${files.get(cycle[0])!.file})`,
    );
  }

  for (const m of migrations) {
    if (!isApplied(rows.get(m.id))) continue;
    for (const d of m.depends) {
      if (files.has(d) && !isApplied(rows.get(d))) {
        problems.push(
          `inconsistent history: ${m.id} is applied, but it depends on ${d}, which is not. ` +
            `This usually happens after merging branches that both added migrations. ` +
            `Rename ${files.get(d)!.file} so it sorts after the applied migrations, ` +
            `or declare the real order with "-- depends:" in ${m.file}`,
        );
      }
    }
  }

  for (const m of migrations) {
    const row = rows.get(m.id);
    if (isApplied(row) && row!.checksum !== null && row!.checksum !== m.checksum) {
      problems.push(
        `${m.file}: the up SQL changed after the migration was applied (checksum ${row!.checksum!.slice(0, 12)} ` +
          `in the database, ${m.checksum.slice(0, 12)} on disk). Applied migrations are not re-run: ` +
          `undo the edit and put the change in a new migration`,
      );
    }
  }
  return problems;
}

// ============================================================================
// 4. The planner (pure: no I/O)
// ============================================================================

export interface PlanInput {
  migrations: readonly Migration[];
  history: readonly HistoryRow[];
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
}

export function pendingMigrations(migrations: readonly Migration[], history: readonly HistoryRow[]): Migration[] {
  const rows = new Map(history.map((row) => [row.id, row]));
  return migrations.filter((m) => !isApplied(rows.get(m.id)));
}

/**
 * The deploy-phase filter, after django-safemigrate 6.0. Pending migrations
 * only; applied ones satisfy dependencies. Throws InputError when the
 * migrations and history are inconsistent (see consistencyProblems).
 */
export function planRun({ migrations, history, now, mode, phase }: PlanInput): Plan {
  const problems = consistencyProblems(migrations, history);
  if (problems.length > 0) throw new InputError(problems.join("\n"));

  const rows = new Map(history.map((row) => [row.id, row]));
  const pending = dependencyOrder(pendingMigrations(migrations, history));
  const plan: Plan = { phase, mode, apply: [], delayed: [], blocked: [], detect: [], refused: false };

  if (phase === "all" || mode === "disabled") {
    plan.apply = pending;
    return plan;
  }

  const dueAt = (m: Migration): Date | null => {
    const detectedAt = rows.get(m.id)?.detectedAt;
    return m.delayMs !== null && detectedAt ? new Date(detectedAt.getTime() + m.delayMs) : null;
  };
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
    else plan.delayed.push({ id: m.id, safe: m.safe, dueAt: dueAt(m), delayMs: m.delayMs });
  }

  // 5. strict: anything blocked means nothing runs.
  if (mode === "strict" && plan.blocked.length > 0) {
    plan.refused = true;
    plan.apply = [];
    return plan;
  }
  // 6. Start the clock on delayed migrations the first time a --pre run sees them.
  const byId = new Map(pending.map((m) => [m.id, m]));
  plan.detect = plan.delayed
    .filter((d) => byId.get(d.id)!.delayMs !== null && !rows.get(d.id)?.detectedAt)
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

/** Every migration known from the files or the history, in id order. */
export function migrationStatus(migrations: readonly Migration[], history: readonly HistoryRow[]): StatusRow[] {
  const rows = new Map(history.map((row) => [row.id, row]));
  const files = new Map(migrations.map((m) => [m.id, m]));
  const ids = [...new Set([...files.keys(), ...history.filter(isApplied).map((row) => row.id)])].sort(compareIds);
  return ids.map((id) => {
    const m = files.get(id);
    const row = rows.get(id);
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
  });
}

// ============================================================================
// 5. Database adapters
// ============================================================================

/** What the runner needs from a connection: run SQL, with or without parameters. */
export interface Queryable {
  /** One statement, extended protocol, with parameters. */
  query<T = Record<string, unknown>>(text: string, params?: unknown[]): Promise<T[]>;
  /** One or more statements, simple protocol, no parameters. */
  exec(text: string): Promise<void>;
}

export interface Database extends Queryable {
  /** The database named for people: no password. */
  readonly label: string;
  transaction<T>(work: (tx: Queryable) => Promise<T>): Promise<T>;
  /** Session-level advisory lock on a connection of its own; true when taken. */
  tryLock(): Promise<boolean>;
  unlock(): Promise<void>;
  close(): Promise<void>;
}

/** Key of the advisory lock every safemigrate run takes (classid, objid). */
const LOCK_KEY = [0x5afe, 0x1] as const;

/** Secrets that must never reach any output; filled as URLs are parsed. */
const secrets = new Set<string>();

export function redact(text: string): string {
  let out = text;
  for (const secret of secrets) if (secret) out = out.split(secret).join("***");
  return out.replace(/(\w+:\/\/[^:/@\s]*:)[^@\s]*@/g, "$1***@");
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
      return `could not connect to ${label}: ${message} (check the password in the database URL)`;
    case "28000":
    case "3D000":
      return `could not connect to ${label}: ${message}`;
    default:
      return `database error on ${label}: ${message}`;
  }
}

export async function connectPostgres(url: string): Promise<Database> {
  rememberPassword(url);
  const label = describeUrl(url);
  const options = {
    max: 1,
    connect_timeout: 10,
    onnotice: () => {},
    connection: { application_name: "safemigrate" },
  };
  let client: postgres.Sql;
  try {
    client = postgres(url, options);
  } catch (error) {
    throw new InputError(`invalid database URL ${label}: ${redact((error as Error).message)}`);
  }
  // The lock lives on its own connection: a session holding it idles outside
  // any transaction, so it never holds back CREATE INDEX CONCURRENTLY.
  let lockClient: postgres.Sql | null = null;

  const wrap = async <T>(run: () => Promise<T>): Promise<T> => {
    try {
      return await run();
    } catch (error) {
      throw asDriverError(error, label);
    }
  };
  const queryable = (sql: postgres.Sql | postgres.TransactionSql): Queryable => ({
    query: <T>(text: string, params: unknown[] = []) =>
      sql.unsafe(text, params as postgres.ParameterOrJSON<never>[]) as unknown as Promise<T[]>,
    exec: async (text: string) => {
      await sql.unsafe(text);
    },
  });
  const base = queryable(client);

  return {
    label,
    query: (text, params) => wrap(() => base.query(text, params)),
    exec: (text) => wrap(() => base.exec(text)),
    transaction: (work) => wrap(() => client.begin((tx) => work(queryable(tx))) as Promise<never>),
    tryLock: () =>
      wrap(async () => {
        lockClient ??= postgres(url, { ...options, connection: { application_name: "safemigrate-lock" } });
        const [row] = await lockClient`select pg_try_advisory_lock(${LOCK_KEY[0]}, ${LOCK_KEY[1]}) as locked`;
        return row.locked as boolean;
      }),
    unlock: async () => {
      if (lockClient) await lockClient`select pg_advisory_unlock(${LOCK_KEY[0]}, ${LOCK_KEY[1]})`.catch(() => {});
    },
    close: async () => {
      await Promise.all([client.end({ timeout: 5 }), lockClient?.end({ timeout: 5 })]);
    },
  };
}

/** Errors raised by the server keep their fields (position, code) for the runner; others become DatabaseError. */
function asDriverError(error: unknown, label: string): unknown {
  if (error instanceof SafemigrateError) return error;
  const e = error as { name?: string; severity?: string; code?: string };
  const fromServer = e?.name === "PostgresError" || (e?.severity !== undefined && e?.code !== undefined);
  if (fromServer && !["28P01", "28000", "3D000"].includes(e.code!)) return error;
  return new DatabaseError(redact(describeConnectionError(error, label)));
}

/** PGlite: `pglite:memory` or `pglite:<directory>`. Loaded only when used. */
export async function connectPglite(url: string): Promise<Database> {
  const target = url.slice("pglite:".length);
  const { PGlite } = await import("@electric-sql/pglite");
  const db = target === "memory" || target === "" ? new PGlite() : new PGlite(target);
  try {
    await db.waitReady;
  } catch (error) {
    throw new DatabaseError(`could not open the PGlite database in ${target}: ${(error as Error).message}`);
  }
  type Conn = Pick<typeof db, "query" | "exec">;
  const queryable = (conn: Conn): Queryable => ({
    query: async <T>(text: string, params?: unknown[]) => (await conn.query(text, params)).rows as T[],
    exec: async (text: string) => {
      await conn.exec(text);
    },
  });
  return {
    label: url,
    ...queryable(db),
    transaction: (work) => db.transaction((tx) => work(queryable(tx))),
    // One process owns an embedded database, so the lock always succeeds; it is
    // taken anyway so the runner has one code path.
    tryLock: async () => (await db.query<{ locked: boolean }>(
      `select pg_try_advisory_lock(${LOCK_KEY[0]}, ${LOCK_KEY[1]}) as locked`,
    )).rows[0].locked,
    unlock: async () => {
      await db.query(`select pg_advisory_unlock(${LOCK_KEY[0]}, ${LOCK_KEY[1]})`);
    },
    close: () => db.close(),
  };
}

export function connect(url: string): Promise<Database> {
  if (url.startsWith("pglite:")) return connectPglite(url);
  if (/^postgres(ql)?:\/\//i.test(url)) return connectPostgres(url);
  throw new InputError(
    `unsupported database URL ${describeUrl(url)} — use postgres://user:password@host:5432/db, pglite:<dir> or pglite:memory`,
  );
}

// ============================================================================
// 6. Executing a plan
// ============================================================================

export const HISTORY_TABLE = "safemigrate_history";

const CREATE_HISTORY = `
create table if not exists ${HISTORY_TABLE} (
  id          text primary key,
  checksum    text,
  safe        text,
  phase       text,
  detected_at timestamptz,
  applied_at  timestamptz,
  duration_ms integer,
  down_sql    text,
  note        text
)`;

export async function historyTableExists(db: Queryable): Promise<boolean> {
  const [row] = await db.query<{ found: string | null }>(`select to_regclass($1)::text as found`, [HISTORY_TABLE]);
  return row.found !== null;
}

export async function readHistory(db: Queryable): Promise<HistoryRow[]> {
  if (!(await historyTableExists(db))) return [];
  return await db.query<HistoryRow>(
    `select id, checksum, safe, phase, detected_at as "detectedAt", applied_at as "appliedAt",
            duration_ms as "durationMs", down_sql as "downSql"
       from ${HISTORY_TABLE} order by id`,
  );
}

export type RunEvent =
  | { type: "waiting-for-lock" }
  | { type: "applying"; migration: Migration }
  | { type: "applied"; migration: Migration; durationMs: number };

export interface AppliedMigration {
  id: string;
  safe: Safe;
  durationMs: number;
}

export interface RunResult {
  plan: Plan;
  applied: AppliedMigration[];
  dryRun: boolean;
}

export interface RunOptions {
  phase: Phase;
  mode: Mode;
  /** Show the plan only: no lock, no history table, no detection. */
  dryRun?: boolean;
  lockWaitMs?: number;
  now?: () => Date;
  onEvent?: (event: RunEvent) => void;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Polls pg_try_advisory_lock: a blocking pg_advisory_lock would sit in a
 * query holding a snapshot, and CREATE INDEX CONCURRENTLY in the run that
 * holds the lock would wait for that snapshot forever.
 */
export async function acquireLock(db: Database, waitMs: number, onWait?: () => void): Promise<void> {
  const deadline = Date.now() + waitMs;
  for (let attempt = 0;; attempt++) {
    if (await db.tryLock()) return;
    if (attempt === 0) onWait?.();
    if (Date.now() >= deadline) {
      throw new DatabaseError(
        `another safemigrate run has held the migration lock on ${db.label} for ${formatDuration(waitMs)}; ` +
          `gave up (wait longer with --lock-wait, or find the other run)`,
      );
    }
    await sleep(Math.min(50 * 2 ** attempt, 1_000) * (0.5 + Math.random() / 2));
  }
}

/** 1-based file line of a 1-based character position inside a SQL section. */
function lineAt(section: SqlSection, position: number): number {
  return section.line + (section.sql.slice(0, Math.max(0, position - 1)).match(/\n/g)?.length ?? 0);
}

function describeServerError(error: unknown): string {
  const e = error as { message?: string; code?: string; detail?: string; hint?: string };
  let text = e?.message ?? String(error);
  if (e?.code) text += ` (SQLSTATE ${e.code})`;
  if (e?.detail) text += `\n  detail: ${e.detail}`;
  if (e?.hint) text += `\n  hint: ${e.hint}`;
  return text;
}

function migrationFailure(migration: Migration, line: number, error: unknown, extra = ""): DatabaseError {
  if (error instanceof SafemigrateError) return error;
  return new DatabaseError(
    redact(`${migration.file}:${line}: migration ${migration.id} failed: ${describeServerError(error)}${extra}`),
  );
}

/** A statement of a SQL section, with the file line it starts on. */
export interface Statement {
  sql: string;
  line: number;
}

/**
 * Splits SQL into statements with the real PostgreSQL parser, so semicolons in
 * strings, dollar quotes and comments are handled. libpg-query is loaded only here.
 */
export async function splitStatements(section: SqlSection, file: string): Promise<Statement[]> {
  const { parse } = await import("libpg-query");
  let result: Awaited<ReturnType<typeof parse>>;
  try {
    result = await parse(section.sql);
  } catch (error) {
    const position = (error as { sqlDetails?: { cursorPosition?: number } }).sqlDetails?.cursorPosition ?? 0;
    throw new InputError(`${file}:${lineAt(section, position)}: SQL syntax error: ${(error as Error).message}`);
  }
  // stmt_location and stmt_len count UTF-8 bytes.
  const bytes = new TextEncoder().encode(section.sql);
  const decoder = new TextDecoder();
  return (result.stmts ?? []).map((stmt) => {
    const start = stmt.stmt_location ?? 0;
    const end = stmt.stmt_len ? start + stmt.stmt_len : bytes.length;
    const raw = decoder.decode(bytes.subarray(start, end));
    const leading = /^(\s|--[^\n]*\n?)*/.exec(raw)![0];
    const before = decoder.decode(bytes.subarray(0, start)) + leading;
    return { sql: raw.slice(leading.length).trim(), line: section.line + (before.match(/\n/g)?.length ?? 0) };
  }).filter((s) => s.sql !== "");
}

async function recordApplied(db: Queryable, migration: Migration, phase: Phase, durationMs: number): Promise<void> {
  await db.query(
    `insert into ${HISTORY_TABLE} (id, checksum, safe, phase, applied_at, duration_ms, down_sql)
     values ($1, $2, $3, $4, clock_timestamp(), $5, $6)
     on conflict (id) do update set checksum = excluded.checksum, safe = excluded.safe, phase = excluded.phase,
       applied_at = excluded.applied_at, duration_ms = excluded.duration_ms, down_sql = excluded.down_sql`,
    [migration.id, migration.checksum, migration.safe, phase, Math.round(durationMs), migration.down?.raw ?? null],
  );
}

/** Runs one migration's up SQL; its history row commits with it or not at all. */
export async function applyMigration(db: Database, migration: Migration, phase: Phase): Promise<number> {
  const started = performance.now();
  if (migration.up.transaction) {
    try {
      await db.transaction(async (tx) => {
        await tx.exec(migration.up.sql);
        await recordApplied(tx, migration, phase, performance.now() - started);
      });
    } catch (error) {
      const position = Number((error as { position?: string | number }).position ?? 0);
      throw migrationFailure(migration, position ? lineAt(migration.up, position) : migration.up.line, error,
        "\n  the migration was rolled back; nothing of it was applied");
    }
    return performance.now() - started;
  }

  // Outside a transaction (CREATE INDEX CONCURRENTLY): one statement at a time.
  const statements = await splitStatements(migration.up, migration.file);
  for (const [index, statement] of statements.entries()) {
    try {
      await db.exec(statement.sql);
    } catch (error) {
      const done = statements.slice(0, index);
      throw migrationFailure(
        migration,
        statement.line,
        error,
        `\n  statement ${index + 1} of ${statements.length} failed; this migration runs without a transaction, so ` +
          (done.length === 0
            ? "nothing of it took effect"
            : `the statements before it (lines ${done.map((s) => s.line).join(", ")}) took effect and stay`) +
          `; the migration is not recorded as applied. Make its statements safe to re-run (IF NOT EXISTS) before retrying`,
      );
    }
  }
  const durationMs = performance.now() - started;
  await recordApplied(db, migration, phase, durationMs);
  return durationMs;
}

async function recordDetected(db: Queryable, plan: Plan, migrations: readonly Migration[]): Promise<void> {
  const byId = new Map(migrations.map((m) => [m.id, m]));
  for (const id of plan.detect) {
    await db.query(
      `insert into ${HISTORY_TABLE} (id, safe, detected_at) values ($1, $2, clock_timestamp())
       on conflict (id) do update set detected_at = coalesce(${HISTORY_TABLE}.detected_at, excluded.detected_at)`,
      [id, byId.get(id)!.safe],
    );
  }
}

/**
 * The whole run: take the lock, make sure the history table exists, plan
 * against the history as it is once the lock is held, apply, record detection.
 */
export async function migrate(db: Database, migrations: readonly Migration[], options: RunOptions): Promise<RunResult> {
  const now = options.now ?? (() => new Date());
  if (options.dryRun) {
    const history = await readHistory(db);
    const plan = planRun({ migrations, history, now: now(), mode: options.mode, phase: options.phase });
    return { plan, applied: [], dryRun: true };
  }

  await acquireLock(db, options.lockWaitMs ?? 5 * 60_000, () => options.onEvent?.({ type: "waiting-for-lock" }));
  try {
    await db.exec(CREATE_HISTORY);
    const history = await readHistory(db);
    const plan = planRun({ migrations, history, now: now(), mode: options.mode, phase: options.phase });
    const applied: AppliedMigration[] = [];
    if (plan.refused) return { plan, applied, dryRun: false };

    for (const migration of plan.apply) {
      options.onEvent?.({ type: "applying", migration });
      const durationMs = await applyMigration(db, migration, options.phase);
      applied.push({ id: migration.id, safe: migration.safe, durationMs });
      options.onEvent?.({ type: "applied", migration, durationMs });
    }
    await recordDetected(db, plan, migrations);
    return { plan, applied, dryRun: false };
  } finally {
    await db.unlock();
  }
}

// ============================================================================
// 7. Output
// ============================================================================

export interface Output {
  out(line: string): void;
  err(line: string): void;
  color: boolean;
}

const paint = (output: Output, code: number, text: string) => output.color ? `\x1b[${code}m${text}\x1b[0m` : text;
const green = (o: Output, t: string) => paint(o, 32, t);
const yellow = (o: Output, t: string) => paint(o, 33, t);
const red = (o: Output, t: string) => paint(o, 31, t);
const dim = (o: Output, t: string) => paint(o, 2, t);

const ms = (value: number) => `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`;
const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;

function delayNote(d: DelayedMigration, now: Date): string {
  if (d.delayMs === null) return `${d.safe}: waits for --all`;
  if (d.dueAt === null) return `after_deploy, delay ${formatDuration(d.delayMs)}: the clock starts at this --pre`;
  return `after_deploy, delay ${formatDuration(d.delayMs)}: due ${d.dueAt.toISOString()}` +
    (d.dueAt <= now ? "" : ` (in ${formatDuration(Math.ceil((d.dueAt.getTime() - now.getTime()) / 60_000) * 60_000)})`);
}

export function humanRunEvent(output: Output, event: RunEvent): void {
  if (event.type === "waiting-for-lock") {
    output.err("waiting for another safemigrate run to release the migration lock...");
  } else if (event.type === "applied") {
    output.out(`  ${green(output, "applied")}  ${event.migration.id}  ${dim(output, `(${event.migration.safe})`)}  ${ms(event.durationMs)}`);
  }
}

export function blockedReport(plan: Plan): string {
  const lines = plan.blocked.map((b) => `  ${b.id} (${b.safe}) is blocked by ${b.blockedBy.join(", ")}`);
  return [
    `refusing to run --pre: ${plural(plan.blocked.length, "migration")} cannot run before the deploy because ` +
    `${plan.blocked.length === 1 ? "it depends" : "they depend"} on migrations that are only safe after it:`,
    ...lines,
    `Nothing was applied. Apply the blocking migrations first (run --all after the previous deploy), ` +
    `change their "safe:" if they really are safe before the deploy, or use --mode nonstrict to apply only what is not blocked.`,
  ].join("\n");
}

export function humanRunSummary(output: Output, result: RunResult, total: number, now: Date): void {
  const { plan } = result;
  if (result.dryRun) {
    output.out(`plan for --${plan.phase}${plan.phase === "pre" ? ` (${plan.mode})` : ""}:`);
    for (const m of plan.apply) output.out(`  ${green(output, "would apply")}  ${m.id}  ${dim(output, `(${m.safe})`)}`);
  }
  for (const d of plan.delayed) output.out(`  ${yellow(output, "waits")}  ${d.id}  ${dim(output, `(${delayNote(d, now)})`)}`);
  if (plan.refused) {
    output.err(red(output, `safemigrate: ${blockedReport(plan)}`));
    return;
  }
  for (const b of plan.blocked) {
    output.out(`  ${yellow(output, "skipped")}  ${b.id}  ${dim(output, `(${b.safe}, blocked by ${b.blockedBy.join(", ")})`)}`);
  }
  const pendingAfter = plan.delayed.length + plan.blocked.length;
  const later = pendingAfter > 0 ? `; ${plural(pendingAfter, "migration")} left for --all` : "";
  if (result.dryRun) {
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
    ok: !plan.refused,
    exitCode: plan.refused ? EXIT.blocked : EXIT.ok,
    command: plan.phase,
    mode: plan.mode,
    database,
    dryRun: result.dryRun,
    ...(result.dryRun
      ? { wouldApply: plan.apply.map((m) => ({ id: m.id, safe: m.safe })) }
      : { applied: result.applied }),
    delayed: plan.delayed,
    blocked: plan.blocked,
    detected: result.dryRun ? [] : plan.detect,
  };
}

export function humanStatus(output: Output, rows: StatusRow[]): void {
  if (rows.length === 0) {
    output.out("No migrations.");
    return;
  }
  const width = Math.max(2, ...rows.map((r) => r.id.length));
  output.out(`${"id".padEnd(width)}  ${"safe".padEnd(13)}  ${"state".padEnd(12)}  applied at`);
  for (const row of rows) {
    const state = row.state === "applied" ? green(output, row.state.padEnd(12))
      : row.state === "pending" ? yellow(output, row.state.padEnd(12))
      : red(output, row.state.padEnd(12));
    const detected = row.state === "pending" && row.detectedAt ? `(delay clock started ${row.detectedAt.toISOString()})` : "";
    output.out(`${row.id.padEnd(width)}  ${(row.safe ?? "?").padEnd(13)}  ${state}  ${row.appliedAt?.toISOString() ?? detected}`);
  }
}

// ============================================================================
// 8. The command line
// ============================================================================

export const USAGE = `safemigrate ${VERSION} — deploy-safe PostgreSQL migrations

Usage:
  bun safemigrate.ts --pre      apply the migrations that are safe before the deploy (release step)
  bun safemigrate.ts --all      apply every pending migration (after the deploy)
  bun safemigrate.ts --status   list every migration and its state

Options:
  --plan                 with --pre or --all: show what would happen, change nothing
  --json                 print one JSON object on stdout
  --dir <path>           migrations directory (default ./migrations)
  --database-url <url>   postgres://user:pass@host:5432/db, pglite:<dir> or pglite:memory
                         (default: env DATABASE_URL, else an embedded PGlite in .safemigrate/)
  --mode <mode>          strict | nonstrict | disabled (default: env SAFEMIGRATE, else strict)
  --lock-wait <time>     how long to wait for another run's lock, e.g. 30s, 5m (default 5m)
  -h, --help             show this help
  --version              print the version

Exit codes: 0 done or nothing to do, 1 a migration or the database failed,
2 invalid input (usage, front-matter, dependency graph, checksum drift),
3 strict mode found migrations blocked by after_deploy ones.
`;

const BOOLEAN_FLAGS = ["pre", "all", "plan", "status", "json", "help", "version"];
const STRING_FLAGS = ["dir", "database-url", "mode", "lock-wait"];
const RELEASE_ENVIRONMENT = ["DYNO", "FLY_APP_NAME", "RENDER", "CI"];
export const DEFAULT_PGLITE_DIR = ".safemigrate";

export interface CliOptions {
  command: "pre" | "all" | "status" | "help" | "version";
  plan: boolean;
  json: boolean;
  dir: string;
  databaseUrl: string | null;
  mode: Mode;
  lockWaitMs: number;
}

/** Turns argv and the environment into options; every mistake is an InputError. */
export function parseArgs(argv: string[], env: Record<string, string | undefined>): CliOptions {
  const args = mri(argv, { boolean: BOOLEAN_FLAGS, string: STRING_FLAGS, alias: { h: "help" } });
  for (const key of Object.keys(args)) {
    if (key === "_" || key === "h" || BOOLEAN_FLAGS.includes(key) || STRING_FLAGS.includes(key)) continue;
    const meant = closest(key, [...BOOLEAN_FLAGS, ...STRING_FLAGS]);
    throw new InputError(`unknown option --${key}${meant ? ` — did you mean --${meant}?` : ""} (see --help)`);
  }
  if (args._.length > 0) throw new InputError(`unexpected argument "${args._[0]}" (see --help)`);
  for (const key of STRING_FLAGS) {
    if (Array.isArray(args[key])) throw new InputError(`--${key} is given more than once`);
    if (args[key] === "") throw new InputError(`--${key} needs a value`);
  }

  const commands = (["pre", "all", "status"] as const).filter((c) => args[c]);
  if (args.help) return { ...defaults(), command: "help" };
  if (args.version) return { ...defaults(), command: "version" };
  if (commands.length === 0) {
    throw new InputError(args.plan ? "--plan goes with --pre or --all" : "say what to do: --pre, --all or --status (see --help)");
  }
  if (commands.length > 1) throw new InputError(`choose one of ${commands.map((c) => `--${c}`).join(", ")}`);
  if (args.plan && commands[0] === "status") throw new InputError("--plan goes with --pre or --all, not --status");

  const modeText = args.mode ?? env.SAFEMIGRATE ?? "strict";
  if (!(MODES as readonly string[]).includes(modeText)) {
    const source = args.mode ? "--mode" : "SAFEMIGRATE";
    throw new InputError(`${source} must be strict, nonstrict or disabled, not "${modeText}"`);
  }
  let lockWaitMs = 5 * 60_000;
  if (args["lock-wait"] !== undefined) {
    const parsed = parseDuration(args["lock-wait"]);
    if (parsed === null) throw new InputError(`--lock-wait "${args["lock-wait"]}" is not a duration (like 30s or 5m)`);
    lockWaitMs = parsed;
  }
  return {
    command: commands[0],
    plan: Boolean(args.plan),
    json: Boolean(args.json),
    dir: args.dir ?? "./migrations",
    databaseUrl: args["database-url"] ?? (env.DATABASE_URL || null),
    mode: modeText as Mode,
    lockWaitMs,
  };

  function defaults(): CliOptions {
    return { command: "help", plan: false, json: false, dir: "./migrations", databaseUrl: null, mode: "strict", lockWaitMs: 0 };
  }
}

/** The URL to use; without one, the embedded default — but never in a release environment. */
export function resolveDatabaseUrl(
  options: CliOptions,
  env: Record<string, string | undefined>,
  output: Output,
): string {
  if (options.databaseUrl) return options.databaseUrl;
  const release = RELEASE_ENVIRONMENT.filter((name) => env[name]);
  if (release.length > 0) {
    throw new InputError(
      `no database URL: set DATABASE_URL or pass --database-url. This looks like a release environment ` +
        `(${release.join(", ")} set), where migrating an embedded toy database would report success for nothing`,
    );
  }
  output.err(`safemigrate: no DATABASE_URL; using the embedded PGlite database in ${DEFAULT_PGLITE_DIR}/`);
  return `pglite:${DEFAULT_PGLITE_DIR}`;
}

export async function main(
  argv: string[],
  env: Record<string, string | undefined> = process.env,
  output: Output = consoleOutput(env),
): Promise<number> {
  let json = argv.includes("--json");
  let db: Database | null = null;
  try {
    const options = parseArgs(argv, env);
    json = options.json;
    if (options.command === "help") {
      output.out(USAGE);
      return EXIT.ok;
    }
    if (options.command === "version") {
      output.out(VERSION);
      return EXIT.ok;
    }

    const migrations = readMigrations(options.dir);
    let url = resolveDatabaseUrl(options, env, output);
    // --plan changes nothing, not even by creating an embedded database.
    const readOnly = options.plan || options.command === "status";
    if (readOnly && url.startsWith("pglite:") && url !== "pglite:memory" && !existsSync(url.slice(7))) {
      url = "pglite:memory";
    }
    db = await connect(url);
    const label = db.label;

    if (options.command === "status") {
      const rows = migrationStatus(migrations, await readHistory(db));
      if (json) output.out(JSON.stringify({ ok: true, exitCode: 0, command: "status", database: label, migrations: rows }));
      else humanStatus(output, rows);
      return EXIT.ok;
    }

    const started = performance.now();
    if (!json && !options.plan) {
      const mode = options.command === "pre" ? ` (${options.mode})` : "";
      output.out(`safemigrate --${options.command}${mode} on ${label}`);
    }
    const result = await migrate(db, migrations, {
      phase: options.command,
      mode: options.mode,
      dryRun: options.plan,
      lockWaitMs: options.lockWaitMs,
      onEvent: json ? undefined : (event) => humanRunEvent(output, event),
    });
    if (json) output.out(JSON.stringify(runResultJson(result, label)));
    else humanRunSummary(output, result, performance.now() - started, new Date());
    return result.plan.refused ? EXIT.blocked : EXIT.ok;
  } catch (error) {
    const known = error instanceof SafemigrateError;
    const exitCode = known ? error.exitCode : EXIT.failed;
    const message = redact(known ? error.message : `unexpected error: ${(error as Error)?.message ?? error}`);
    output.err(red(output, `safemigrate: error: ${message}`));
    if (json) output.out(JSON.stringify({ ok: false, exitCode, error: message }));
    return exitCode;
  } finally {
    await db?.close().catch(() => {});
  }
}

export function consoleOutput(env: Record<string, string | undefined>): Output {
  return {
    out: (line) => process.stdout.write(`${redact(line)}\n`),
    err: (line) => process.stderr.write(`${redact(line)}\n`),
    color: Boolean(process.stdout.isTTY) && !env.NO_COLOR,
  };
}

if (import.meta.main) {
  const code = await main(process.argv.slice(2));
  // Let piped output drain before exiting; PGlite keeps handles open otherwise.
  await new Promise<void>((resolve) => process.stdout.write("", () => resolve()));
  process.exit(code);
}
