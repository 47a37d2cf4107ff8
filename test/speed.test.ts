/**
 * The fast paths taken for speed must mean exactly what the slow ones meant:
 * checksums stay the sha256 already stored in every history table, id order
 * stays code point order, cycle detection (now iterative) still finds a cycle
 * through a very long chain, and the history read as one JSON row keeps every field.
 * (How fast they are is measured in bench/, not here.)
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createHash } from "node:crypto";
import { checksumOf, compareIds, findCycle, migrate, readHistory } from "../safemigrate.ts";
import { BACKENDS, cleanup, migration, open } from "./helpers.ts";

setDefaultTimeout(300_000);
afterEach(cleanup);

const sha256 = (text: string) => createHash("sha256").update(text).digest("hex");

describe("checksums", () => {
  test("are node:crypto's sha256 of the trimmed up SQL, with and without the line-by-line pass", () => {
    expect(checksumOf("  create table t (id int);\n\n")).toBe(sha256("create table t (id int);"));
    // \r\n and a waiver take the slow path; the digest is that of the normalised text.
    expect(checksumOf("create table t (id int);\r\nselect 1;\r\n")).toBe(sha256("create table t (id int);\nselect 1;"));
    expect(checksumOf("-- safemigrate-ignore: add-column-volatile-default -- small table\nalter table t add c int;"))
      .toBe(sha256("alter table t add c int;"));
    // Mentioning the word elsewhere is not a waiver: the line stays in the checksum.
    expect(checksumOf("select 'safemigrate-ignore';")).toBe(sha256("select 'safemigrate-ignore';"));
    expect(checksumOf("é ünïcode 🙂")).toBe(sha256("é ünïcode 🙂"));
  });
});

describe("id order", () => {
  test("is code point order (UTF-8 byte order), astral characters included", () => {
    const byCodePoint = (a: string, b: string) => {
      const [x, y] = [[...a].map((c) => c.codePointAt(0)!), [...b].map((c) => c.codePointAt(0)!)];
      for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
      return x.length - y.length;
    };
    const alphabet = ["0", "9", "_", "a", "z", "é", "\ud7ff", "\ue000", "\uffff", "🙂", "\u{10000}", "\u{10ffff}"];
    let seed = 7;
    const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % alphabet.length;
    const ids = Array.from({ length: 2000 }, () => Array.from({ length: 1 + (next() % 4) }, () => alphabet[next()]).join(""));
    expect([...ids].sort(compareIds)).toEqual([...ids].sort(byCodePoint));
    expect(compareIds("\uffff", "🙂")).toBeLessThan(0);
    expect(compareIds("0001_a", "0001_a")).toBe(0);
    expect(compareIds("0001", "0001_a")).toBeLessThan(0);
  });
});

describe("cycles", () => {
  test("a chain of 200,000 migrations has none; the cycle that closes it is found whole", () => {
    const ids = Array.from({ length: 200_000 }, (_, i) => `m${String(i).padStart(6, "0")}`);
    // Only ids and dependencies matter to the graph.
    const base = migration("m");
    const chain = ids.map((id, i) => ({ ...base, id, depends: i === 0 ? [] : [ids[i - 1]] }));
    expect(findCycle(chain)).toBeNull();
    chain[0] = { ...chain[0], depends: [ids[ids.length - 1]] };
    const cycle = findCycle(chain)!;
    expect(cycle.length).toBe(200_001);
    expect(cycle[0]).toBe(cycle[cycle.length - 1]);
  });
});

for (const backend of BACKENDS) {
  describe.skipIf(!backend.available)(`history read in one row on ${backend.name}`, () => {
    test("keeps ids, checksums, phases, times, durations, down SQL and dependencies", async () => {
      const db = await open(await backend.databaseUrl());
      const files = [
        migration("0001_a", { safe: "before_deploy" }, "create table a (id int);\n-- migrate:down\ndrop table a;"),
        migration("0002_b", { safe: "after_deploy", depends: ["0001_a"], delay: "1d" }, "create table b (id int);"),
      ];
      await migrate(db, files, { phase: "pre", mode: "strict" });
      const rows = await readHistory(db);
      const raw = await db.query<{ id: string; applied_at: Date | null; detected_at: Date | null; depends: string }>(
        `select id, applied_at, detected_at, depends from safemigrate_history order by id`,
      );
      expect(rows.map((r) => [r.id, r.checksum, r.safe, r.phase, r.downSql, r.depends])).toEqual([
        ["0001_a", files[0].checksum, "before_deploy", "pre", "-- migrate:down\ndrop table a;", []],
        ["0002_b", null, "after_deploy", null, null, null],
      ]);
      expect(rows.map((r) => r.appliedAt?.getTime() ?? null)).toEqual(raw.map((r) => (r.applied_at ? new Date(r.applied_at).getTime() : null)));
      expect(rows[1].detectedAt?.getTime()).toBe(new Date(raw[1].detected_at!).getTime());
      expect(typeof rows[0].durationMs).toBe("number");
    });

    test("a database without the history table reads as empty and is left without one", async () => {
      const db = await open(await backend.databaseUrl());
      expect(await readHistory(db)).toEqual([]);
      const [row] = await db.query<{ found: string | null }>(`select to_regclass('safemigrate_history')::text as found`);
      expect(row.found).toBeNull();
    });
  });
}
