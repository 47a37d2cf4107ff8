/**
 * The published JSON Schema (schema/output.schema.json) against the real
 * --json output of every command: each result must match exactly one of the
 * schema's result kinds, and every kind must be met at least once.
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Ajv2020 from "ajv/dist/2020";
import { BACKENDS, cleanup, migrationsDir, ROOT, runCli } from "./helpers.ts";

// A guard against a hang, not a speed target (speed lives in bench/): on a loaded 2-core machine one
// PGlite start took 21 s and a whole pipeline test minutes, so no test may fail for being slow.
setDefaultTimeout(15 * 60_000);

afterEach(cleanup);

const schema = JSON.parse(readFileSync(join(ROOT, "schema/output.schema.json"), "utf8"));
const ajv = new Ajv2020({ allErrors: true });
const validate = ajv.compile(schema);
const KINDS = (schema.oneOf as { $ref: string }[]).map((ref) => ref.$ref.replace("#/$defs/", ""));
const kindValidators = Object.fromEntries(KINDS.map((kind) => [kind, ajv.compile({ ...schema, oneOf: undefined, $ref: `#/$defs/${kind}` })]));

/** The kinds of the schema this output matches; fails with ajv's errors when it matches none or more than one. */
function kindOf(stdout: string, what: string): string {
  const value = JSON.parse(stdout);
  if (!validate(value)) throw new Error(`${what}: output does not match the schema:\n${ajv.errorsText(validate.errors)}\n${stdout}`);
  const kinds = KINDS.filter((kind) => kindValidators[kind](value));
  expect(kinds).toHaveLength(1);
  return kinds[0];
}

const backend = BACKENDS.find((b) => b.available)!;

describe(`every --json result matches schema/output.schema.json (${backend.name})`, () => {
  test("every command, its results and its errors", async () => {
    const dir = migrationsDir({
      "0001_a": "-- safe: before_deploy\ncreate table a (id int, old text);\n-- migrate:down\ndrop table a;\n",
      "0002_b": "-- safe: after_deploy\n-- delay: 1d\ncreate table b (id int);\n-- migrate:down\ndrop table b;\n",
      "0003_c": "-- safe: before_deploy\n-- depends: 0002_b\ncreate table c (id int);\n-- migrate:down\nselect 1;\n",
      "0004_d": "-- safe: before_deploy\n-- safemigrate-ignore: drop-column -- the old code never reads it\nalter table a drop column old;\n-- migrate:down\nalter table a add column old text;\n",
    });
    const url = await backend.databaseUrl();
    const seen = new Map<string, string[]>();
    const json = async (args: string[], expectedCode: number) => {
      const run = await runCli([...args, "--json", "--dir", dir, "--database-url", url]);
      if (run.code !== expectedCode) throw new Error(`${args.join(" ")} exited ${run.code}, not ${expectedCode}:\n${run.stdout}\n${run.stderr}`);
      const kind = kindOf(run.stdout, args.join(" "));
      seen.set(kind, [...(seen.get(kind) ?? []), args.join(" ")]);
      return JSON.parse(run.stdout);
    };

    await json(["--check"], 0);
    expect((await json(["--lint"], 0)).findings).toContainEqual(expect.objectContaining({ rule: "drop-column", waived: "the old code never reads it" }));
    expect((await json(["--rehearse"], 2)).problems[0]).toMatchObject({ id: "0003_c", kind: "down does not restore" });
    // The down SQL is not part of the checksum: fix it for what follows.
    writeFileSync(join(dir, "0003_c.sql"), "-- safe: before_deploy\n-- depends: 0002_b\ncreate table c (id int);\n-- migrate:down\ndrop table c;\n");
    await json(["--pre", "--plan"], 3);
    await json(["--pre"], 3);
    expect((await json(["--pre", "--mode", "nonstrict"], 0)).applied.map((m: { id: string }) => m.id)).toEqual(["0001_a"]);
    expect((await json(["--status"], 0)).migrations[1]).toMatchObject({ id: "0002_b", state: "pending", detectedAt: expect.any(String) });
    const all = await json(["--all"], 0);
    expect(all.applied.map((m: { id: string }) => m.id)).toEqual(["0002_b", "0003_c", "0004_d"]);
    await json(["--rollback", "--last", "--plan"], 0);
    expect((await json(["--rollback", "0003_c"], 0)).reverted).toEqual([{ id: "0004_d", durationMs: expect.any(Number) }, { id: "0003_c", durationMs: expect.any(Number) }]);
    await json(["--sync", "--plan"], 0);
    await json(["--sync"], 0);
    await json(["--rollback", "0002_b"], 0);
    expect((await json(["--baseline", "0002_b"], 0)).recorded).toEqual(["0002_b"]);
    expect((await json(["--fake", "0003_c"], 0)).recorded).toEqual(["0003_c"]);
    writeFileSync(join(dir, "0001_a.sql"), "-- safe: before_deploy\ncreate table a (id bigint, old text);\n-- migrate:down\ndrop table a;\n");
    await json(["--check"], 2);
    await json(["--accept-changed", "0001_a"], 0);
    // Errors: bad input, and a run refused for lint findings (the error lists them).
    await json(["--rollback", "9999_nope"], 2);
    writeFileSync(join(dir, "0005_e.sql"), "-- safe: before_deploy\nalter table a drop column old;\n");
    expect((await json(["--pre"], 2)).findings[0]).toMatchObject({ rule: "drop-column", migration: "0005_e", waived: null });

    expect((await json(["--new", "add_f"], 0)).id).toBe("0006_add_f");

    expect([...seen.keys()].sort()).toEqual([...KINDS].sort());
  });

  test("durations are whole milliseconds, in results and in JSON", async () => {
    const url = await backend.databaseUrl();
    const dir = migrationsDir({ "0001_a": "create table a (id int);\n-- migrate:down\ndrop table a;\n" });
    const all = await runCli(["--all", "--json", "--dir", dir, "--database-url", url]);
    const [applied] = JSON.parse(all.stdout).applied;
    expect(Number.isInteger(applied.durationMs)).toBe(true);
    const back = await runCli(["--rollback", "--last", "--json", "--dir", dir, "--database-url", url]);
    const [reverted] = JSON.parse(back.stdout).reverted;
    expect(Number.isInteger(reverted.durationMs)).toBe(true);
  });
});
