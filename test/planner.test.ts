/** The deploy-phase filter, exhaustively, with no database: files + history + clock + mode -> plan. */
import { describe, expect, test } from "bun:test";
import {
  dependencyOrder,
  findCycle,
  type HistoryRow,
  InputError,
  type Migration,
  migrationStatus,
  type Mode,
  type Phase,
  planRun,
  revertSteps,
  rollbackPlan,
  syncPlan,
} from "../safemigrate.ts";
import { migration } from "./helpers.ts";

const NOW = new Date("2026-11-21T12:00:00Z");
const DAY = 86_400_000;

function row(m: Migration | string, fields: Partial<HistoryRow> = {}): HistoryRow {
  const id = typeof m === "string" ? m : m.id;
  return {
    id,
    checksum: typeof m === "string" ? null : m.checksum,
    safe: typeof m === "string" ? "before_deploy" : m.safe,
    phase: "pre",
    detectedAt: null,
    appliedAt: null,
    durationMs: null,
    downSql: null,
    ...fields,
  };
}
const applied = (m: Migration | string) => row(m, { appliedAt: new Date("2026-01-01T00:00:00Z") });
const detected = (m: Migration, at: Date) => row(m, { detectedAt: at });

function plan(
  migrations: Migration[],
  { history = [], mode = "strict", phase = "pre", now = NOW }: {
    history?: HistoryRow[];
    mode?: Mode;
    phase?: Phase;
    now?: Date;
  } = {},
) {
  const p = planRun({ migrations, history, now, mode, phase });
  return {
    ...p,
    applyIds: p.apply.map((m) => m.id),
    delayedIds: p.delayed.map((d) => d.id),
    blockedIds: p.blocked.map((b) => b.id),
  };
}

function inputError(run: () => unknown): string {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(InputError);
    return (error as Error).message;
  }
  throw new Error("expected an InputError");
}

describe("--pre in strict mode", () => {
  test("applies before_deploy and always migrations and leaves after_deploy ones for --all", () => {
    const p = plan([
      migration("0001", { safe: "before_deploy" }),
      migration("0002", { safe: "always", depends: ["0001"] }),
      migration("0003", { safe: "after_deploy", depends: ["0002"] }),
    ]);
    expect(p.applyIds).toEqual(["0001", "0002"]);
    expect(p.delayedIds).toEqual(["0003"]);
    expect(p.blocked).toEqual([]);
    expect(p.refused).toBe(false);
  });

  test("an unmarked migration is after_deploy and never runs before the deploy", () => {
    const p = plan([migration("0001")]);
    expect(p.applyIds).toEqual([]);
    expect(p.delayedIds).toEqual(["0001"]);
  });

  test("strict mode refuses a before_deploy that depends on an after_deploy and applies nothing", () => {
    const p = plan([
      migration("0001", { safe: "before_deploy" }),
      migration("0002", { safe: "after_deploy", depends: ["0001"] }),
      migration("0003", { safe: "before_deploy", depends: ["0002"] }),
    ]);
    expect(p.refused).toBe(true);
    expect(p.apply).toEqual([]);
    expect(p.blocked).toEqual([{ id: "0003", safe: "before_deploy", blockedBy: ["0002"] }]);
    expect(p.detect).toEqual([]);
  });

  test("an always migration behind an after_deploy waits for --all instead of blocking", () => {
    const p = plan([
      migration("0001", { safe: "after_deploy" }),
      migration("0002", { safe: "always", depends: ["0001"] }),
    ]);
    expect(p.refused).toBe(false);
    expect(p.delayedIds).toEqual(["0001", "0002"]);
  });

  test("blocking travels through an always migration to a before_deploy behind it", () => {
    const p = plan([
      migration("0001", { safe: "after_deploy" }),
      migration("0002", { safe: "always", depends: ["0001"] }),
      migration("0003", { safe: "before_deploy", depends: ["0002"] }),
    ]);
    expect(p.refused).toBe(true);
    expect(p.blocked).toEqual([{ id: "0003", safe: "before_deploy", blockedBy: ["0002"] }]);
  });

  test("an after_deploy behind a blocked migration is reported as blocked too", () => {
    const p = plan([
      migration("0001", { safe: "after_deploy" }),
      migration("0002", { safe: "before_deploy", depends: ["0001"] }),
      migration("0003", { safe: "after_deploy", depends: ["0002"] }),
      migration("0004", { safe: "always", depends: ["0003"] }),
    ]);
    // 0004 is always-safe, moves to delayed behind 0003, and then to blocked with it.
    expect(p.blockedIds).toEqual(["0002", "0003", "0004"]);
    expect(p.blocked.find((b) => b.id === "0003")?.blockedBy).toEqual(["0002"]);
    expect(p.blocked.find((b) => b.id === "0004")?.blockedBy).toEqual(["0003"]);
    expect(p.delayedIds).toEqual(["0001"]);
  });

  test("applied migrations satisfy dependencies, whatever their safety", () => {
    const after = migration("0001", { safe: "after_deploy" });
    const p = plan([after, migration("0002", { safe: "before_deploy", depends: ["0001"] })], {
      history: [applied(after)],
    });
    expect(p.applyIds).toEqual(["0002"]);
    expect(p.refused).toBe(false);
  });

  test("a dependency on an applied migration whose file is gone is satisfied", () => {
    const p = plan([migration("0002", { safe: "before_deploy", depends: ["0001_squashed"] })], {
      history: [applied("0001_squashed")],
    });
    expect(p.applyIds).toEqual(["0002"]);
  });

  test("independent branches: only the branch with the unsafe dependency is blocked", () => {
    const p = plan(
      [
        migration("0001", { safe: "after_deploy", depends: [] }),
        migration("0002", { safe: "before_deploy", depends: ["0001"] }),
        migration("0003", { safe: "before_deploy", depends: [] }),
      ],
      { mode: "nonstrict" },
    );
    expect(p.applyIds).toEqual(["0003"]);
    expect(p.blockedIds).toEqual(["0002"]);
  });

  test("a migration with several dependencies is blocked by each unsafe one", () => {
    const p = plan([
      migration("0001", { safe: "after_deploy", depends: [] }),
      migration("0002", { safe: "after_deploy", depends: [] }),
      migration("0003", { safe: "before_deploy", depends: [] }),
      migration("0004", { safe: "before_deploy", depends: ["0001", "0002", "0003"] }),
    ]);
    expect(p.blocked).toEqual([{ id: "0004", safe: "before_deploy", blockedBy: ["0001", "0002"] }]);
  });
});

describe("modes", () => {
  const blockedSet = () => [
    migration("0001", { safe: "before_deploy" }),
    migration("0002", { safe: "after_deploy", depends: ["0001"] }),
    migration("0003", { safe: "before_deploy", depends: ["0002"] }),
    migration("0004", { safe: "before_deploy", depends: [] }),
  ];

  test("nonstrict applies what is not blocked and skips the rest", () => {
    const p = plan(blockedSet(), { mode: "nonstrict" });
    expect(p.refused).toBe(false);
    expect(p.applyIds).toEqual(["0001", "0004"]);
    expect(p.blockedIds).toEqual(["0003"]);
    expect(p.delayedIds).toEqual(["0002"]);
  });

  test("disabled makes --pre behave like --all", () => {
    const p = plan(blockedSet(), { mode: "disabled" });
    expect(p.applyIds).toEqual(["0001", "0002", "0003", "0004"]);
    expect(p.blocked).toEqual([]);
  });

  test("--all applies every pending migration in dependency order, ties by id, in any mode", () => {
    const p = plan(
      [
        migration("a", { safe: "before_deploy", depends: ["c"] }),
        migration("b", { safe: "after_deploy", depends: [] }),
        migration("c", { safe: "after_deploy", depends: [] }),
        migration("d", { safe: "always", depends: ["a"] }),
      ],
      { phase: "all" },
    );
    expect(p.applyIds).toEqual(["b", "c", "a", "d"]);
    expect(p.refused).toBe(false);
  });
});

describe("delays", () => {
  const delayed = () => migration("0001", { safe: "after_deploy", delay: "7d" });

  test("the first --pre that sees a delayed migration records it as detected and leaves it", () => {
    const p = plan([delayed()]);
    expect(p.applyIds).toEqual([]);
    expect(p.detect).toEqual(["0001"]);
    expect(p.delayed).toEqual([{ id: "0001", safe: "after_deploy", dueAt: null, delayMs: 7 * DAY }]);
  });

  test("before the delay has passed it still waits, and is not detected again", () => {
    const m = delayed();
    const seen = new Date(NOW.getTime() - 6 * DAY);
    const p = plan([m], { history: [detected(m, seen)] });
    expect(p.applyIds).toEqual([]);
    expect(p.detect).toEqual([]);
    expect(p.delayed[0].dueAt).toEqual(new Date(seen.getTime() + 7 * DAY));
  });

  test("once the delay has passed since detection it runs in --pre like an always migration", () => {
    const m = delayed();
    expect(plan([m], { history: [detected(m, new Date(NOW.getTime() - 7 * DAY))] }).applyIds).toEqual(["0001"]);
    expect(plan([m], { history: [detected(m, new Date(NOW.getTime() - 8 * DAY))] }).applyIds).toEqual(["0001"]);
  });

  test("a due delayed migration still waits for an after_deploy it depends on", () => {
    const first = migration("0001", { safe: "after_deploy" });
    const m = migration("0002", { safe: "after_deploy", delay: "1d", depends: ["0001"] });
    const p = plan([first, m], { history: [detected(m, new Date(NOW.getTime() - 2 * DAY))] });
    expect(p.applyIds).toEqual([]);
    expect(p.delayedIds).toEqual(["0001", "0002"]);
    expect(p.refused).toBe(false);
  });

  test("a before_deploy behind a due delayed migration is not blocked", () => {
    const m = delayed();
    const next = migration("0002", { safe: "before_deploy", depends: ["0001"] });
    const p = plan([m, next], { history: [detected(m, new Date(NOW.getTime() - 7 * DAY))] });
    expect(p.applyIds).toEqual(["0001", "0002"]);
  });

  test("only migrations that declare a delay are recorded as detected", () => {
    const p = plan([migration("0001", { safe: "after_deploy" }), migration("0002", { safe: "after_deploy", delay: "1h" })]);
    expect(p.detect).toEqual(["0002"]);
  });

  test("a strict refusal records no detection", () => {
    const p = plan([
      migration("0001", { safe: "after_deploy", delay: "1d" }),
      migration("0002", { safe: "before_deploy", depends: ["0001"] }),
    ]);
    expect(p.refused).toBe(true);
    expect(p.detect).toEqual([]);
  });

  test("a blocked delayed migration is not detected in nonstrict mode", () => {
    const p = plan(
      [
        migration("0001", { safe: "after_deploy", depends: [] }),
        migration("0002", { safe: "before_deploy", depends: ["0001"] }),
        migration("0003", { safe: "after_deploy", delay: "1d", depends: ["0002"] }),
      ],
      { mode: "nonstrict" },
    );
    expect(p.blockedIds).toEqual(["0002", "0003"]);
    expect(p.detect).toEqual([]);
  });
});

describe("consistency checks before anything runs", () => {
  test("a dependency that names no known migration is an error with the file, the line and a suggestion", () => {
    const message = inputError(() =>
      plan([migration("0001_users", { safe: "before_deploy" }), migration("0002", { depends: ["0001_user"] })])
    );
    expect(message).toContain('0002.sql:1: depends on "0001_user"');
    expect(message).toContain('did you mean "0001_users"?');
  });

  test("a cycle is an error that shows the cycle", () => {
    const message = inputError(() =>
      plan([migration("a", { depends: ["c"] }), migration("b", { depends: ["a"] }), migration("c", { depends: ["b"] })])
    );
    expect(message).toContain("dependency cycle: a -> c -> b -> a");
  });

  test("an applied migration that depends on a pending one is inconsistent history", () => {
    const a = migration("0042_alice", { safe: "before_deploy", depends: ["0041"] });
    const b = migration("0042_bob", { safe: "before_deploy", depends: ["0042_alice"] });
    const message = inputError(() => plan([migration("0041", { depends: [] }), a, b], { history: [applied("0041"), applied(b)] }));
    expect(message).toContain("inconsistent history: 0042_bob is applied, but it depends on 0042_alice, which is not");
    expect(message).toContain("Rename");
  });

  test("an applied migration whose up SQL changed is refused", () => {
    const original = migration("0001", { safe: "before_deploy" }, "create table t (id int);");
    const edited = migration("0001", { safe: "before_deploy" }, "create table t (id bigint);");
    const message = inputError(() => plan([edited], { history: [applied(original)] }));
    expect(message).toContain("0001.sql: the up SQL changed after the migration was applied");
  });

  test("changing only safe: after applying is not drift", () => {
    const original = migration("0001", { safe: "before_deploy" }, "create table t (id int);");
    const relabelled = migration("0001", { safe: "always" }, "create table t (id int);");
    expect(plan([relabelled], { history: [applied(original)] }).apply).toEqual([]);
  });

  test("all problems are reported together", () => {
    const message = inputError(() => plan([migration("a", { depends: ["x"] }), migration("b", { depends: ["y"] })]));
    expect(message.split("\n")).toHaveLength(2);
  });
});

describe("dependency order", () => {
  test("dependencies first, ties by id in byte order", () => {
    const order = dependencyOrder([
      migration("b", { depends: [] }),
      migration("a", { depends: ["c"] }),
      migration("c", { depends: [] }),
      migration("B", { depends: [] }),
    ]).map((m) => m.id);
    expect(order).toEqual(["B", "b", "c", "a"]);
  });
});

describe("status", () => {
  test("reports applied, pending, changed and file missing", () => {
    const a = migration("0001", { safe: "before_deploy" }, "select 1;");
    const b = migration("0002", { safe: "before_deploy" }, "select 2;");
    const bEdited = migration("0002", { safe: "before_deploy" }, "select 22;");
    const c = migration("0003", { safe: "after_deploy", delay: "1d" });
    const seen = new Date("2026-11-20T00:00:00Z");
    const rows = migrationStatus([a, bEdited, c], [applied(a), applied(b), applied("0000_gone"), detected(c, seen)]);
    expect(rows.map((r) => [r.id, r.state])).toEqual([
      ["0000_gone", "file missing"],
      ["0001", "applied"],
      ["0002", "changed"],
      ["0003", "pending"],
    ]);
    expect(rows[3].detectedAt).toEqual(seen);
  });
});

describe("planning at real-history scale (correctness; the speed figures are in bench/plan.ts)", () => {
  const N = 10_000;
  const id = (i: number) => `${String(i).padStart(5, "0")}_t${i}`;
  const chain = Array.from({ length: N }, (_, i) =>
    migration(id(i), { depends: i === 0 ? [] : [id(i - 1)] }, `create table t${i} (id int);\n-- migrate:down\ndrop table t${i};`));
  const history = chain.map((m, i) => row(m, { appliedAt: new Date(Date.UTC(2026, 0, 1) + i), downSql: m.down!.raw }));

  test("rolling back the first of 10,000 applied migrations undoes all of them, newest first", () => {
    const steps = rollbackPlan(id(0), chain, history);
    expect(steps).toHaveLength(N);
    expect(steps[0].id).toBe(id(N - 1));
    expect(steps[N - 1].id).toBe(id(0));
    expect(steps.every((s, i) => s.id === id(N - 1 - i))).toBe(true);
  });

  test("a DAG is undone dependents first; among free ones the latest applied first", () => {
    const dag = [
      migration("a", { depends: [] }),
      migration("b", { depends: ["a"] }),
      migration("c", { depends: ["a"] }),
      migration("d", { depends: ["b"] }),
    ];
    const at = (ms: number) => new Date(Date.UTC(2026, 0, 1) + ms);
    // c was applied last, but d depends on b: d, c, b in applied order newest first, a last.
    const rows = [row(dag[0], { appliedAt: at(0) }), row(dag[1], { appliedAt: at(1) }), row(dag[3], { appliedAt: at(2) }), row(dag[2], { appliedAt: at(3) })];
    expect(revertSteps(["a"], dag, rows).map((s) => s.id)).toEqual(["c", "d", "b", "a"]);
    expect(revertSteps(["b"], dag, rows).map((s) => s.id)).toEqual(["d", "b"]);
  });

  test("dependency order and the cycle search handle a 10,000-long chain given in reverse", () => {
    const reversed = [...chain].reverse();
    expect(dependencyOrder(reversed).map((m) => m.id)).toEqual(chain.map((m) => m.id));
    expect(findCycle(reversed)).toBeNull();
    const looped = [migration(id(0), { depends: [id(N - 1)] }), ...chain.slice(1)];
    const cycle = findCycle(looped)!;
    expect(cycle).toHaveLength(N + 1);
    expect(cycle[0]).toBe(cycle[N]);
  });

  test("sync over 10,000 applied migrations with the newest file gone undoes only that one", () => {
    const plan = syncPlan(chain.slice(0, N - 1), history, NOW);
    expect(plan.revert.map((s) => s.id)).toEqual([id(N - 1)]);
    expect(plan.apply).toEqual([]);
    expect(migrationStatus(chain, history).filter((r) => r.state !== "applied")).toEqual([]);
  });
});
