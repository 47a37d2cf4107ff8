import { afterEach, describe, expect, test } from "bun:test";
import { checksumOf, InputError, parseDuration, parseMigration, readMigrations } from "../safemigrate.ts";
import { cleanup, migrationsDir } from "./helpers.ts";

afterEach(cleanup);

const parse = (text: string) => parseMigration("0002_x", "migrations/0002_x.sql", text);
const errorOf = (text: string): string => {
  try {
    parse(text);
  } catch (error) {
    expect(error).toBeInstanceOf(InputError);
    return (error as Error).message;
  }
  throw new Error("expected the file to be rejected");
};

describe("front-matter directives", () => {
  test("an unmarked migration is after_deploy, runs in a transaction and has no delay", () => {
    const m = parse("create table t (id int);");
    expect(m.safe).toBe("after_deploy");
    expect(m.up.transaction).toBe(true);
    expect(m.delayMs).toBeNull();
    expect(m.declaredDepends).toBeNull();
  });

  test("reads safe, depends, delay and transaction from the comment lines at the top", () => {
    const m = parse([
      "-- Adds the orders table.",
      "-- safe: after_deploy",
      "-- depends: 0001_users, 0000_init.sql",
      "-- delay: 1d12h",
      "-- transaction: false",
      "",
      "create index concurrently i on t (a);",
    ].join("\n"));
    expect(m.safe).toBe("after_deploy");
    expect(m.declaredDepends).toEqual({ value: ["0001_users", "0000_init"], line: 3 });
    expect(m.delayMs).toBe(36 * 3_600_000);
    expect(m.up.transaction).toBe(false);
    expect(m.up.line).toBe(7);
  });

  test("depends: [] declares no dependencies, and a bracketed list is accepted", () => {
    expect(parse("-- depends: []\nselect 1;").declaredDepends?.value).toEqual([]);
    expect(parse("-- depends: [a, b]\nselect 1;").declaredDepends?.value).toEqual(["a", "b"]);
  });

  test("ordinary comments with a colon are left alone", () => {
    const m = parse([
      "-- https://example.com/tickets/42",
      "-- Note: backfill runs separately",
      "-- squawk-ignore: ban-drop-column",
      "-- Author: someone",
      "-- safe: before_deploy",
      "alter table t add column c int;",
    ].join("\n"));
    expect(m.safe).toBe("before_deploy");
  });

  test("a near-miss key is an error naming the file, the line and the key it meant", () => {
    expect(errorOf("-- Note: x\n-- saf: always\nselect 1;")).toBe(
      'migrations/0002_x.sql:2: unknown directive "saf:" — did you mean "safe:"?',
    );
    expect(errorOf("-- depend: 0001_a\nselect 1;")).toContain('did you mean "depends:"?');
    expect(errorOf("-- transactions: false\nselect 1;")).toContain('did you mean "transaction:"?');
    expect(errorOf("-- dealy: 7d\nselect 1;")).toContain('did you mean "delay:"?');
  });

  test("a bad safe value suggests the right one", () => {
    const message = errorOf("-- safe: before-deploy\nselect 1;");
    expect(message).toContain("migrations/0002_x.sql:1:");
    expect(message).toContain('did you mean "before_deploy"?');
  });

  test("bad delay and transaction values are errors", () => {
    expect(errorOf("-- delay: 7 days\nselect 1;")).toContain("is not a duration");
    expect(errorOf("-- transaction: no\nselect 1;")).toContain("use true or false");
  });

  test("a directive written with = or without a colon is an error, not a comment", () => {
    expect(errorOf("-- safe = always\nselect 1;")).toContain('write the directive as "-- safe: always"');
    expect(errorOf("-- safe before_deploy\nselect 1;")).toContain('"-- safe: before_deploy"');
  });

  test("prose that starts with a directive word stays a comment", () => {
    expect(parse("-- safe to run twice, see the ticket\nselect 1;").safe).toBe("after_deploy");
  });

  test("delay on a migration that is not after_deploy is an error", () => {
    const message = errorOf("-- safe: before_deploy\n-- delay: 7d\nselect 1;");
    expect(message).toContain("migrations/0002_x.sql:2:");
    expect(message).toContain("only applies to after_deploy");
  });

  test("a directive given twice is an error", () => {
    expect(errorOf("-- safe: always\n-- safe: before_deploy\nselect 1;")).toContain("given twice (first on line 1)");
  });

  test("a directive below the first SQL is an error, not silently ignored", () => {
    const message = errorOf("-- safe: always\nselect 1;\n-- transaction: false\nselect 2;");
    expect(message).toContain("migrations/0002_x.sql:3:");
    expect(message).toContain("must be in the front-matter");
  });

  test("a near-miss directive below the first SQL is an error too", () => {
    expect(errorOf("select 1;\n-- saf: always\n")).toContain('did you mean "safe:"?');
  });
});

describe("up and down sections", () => {
  test("-- migrate:down splits up from down; the down may set its own transaction", () => {
    const m = parse([
      "-- safe: before_deploy",
      "create index concurrently i on t (a);",
      "-- migrate:down",
      "-- transaction: false",
      "drop index concurrently i;",
    ].join("\n"));
    expect(m.up.sql).toBe("create index concurrently i on t (a);");
    expect(m.down?.sql).toBe("drop index concurrently i;");
    expect(m.down?.line).toBe(5);
    expect(m.down?.transaction).toBe(false);
    expect(m.down?.raw).toBe("-- migrate:down\n-- transaction: false\ndrop index concurrently i;");
  });

  test("a dbmate file only needs front-matter added", () => {
    const m = parse([
      "-- safe: before_deploy",
      "-- migrate:up transaction:false",
      "create index concurrently i on t (a);",
      "",
      "-- migrate:down",
      "drop index i;",
    ].join("\n"));
    expect(m.safe).toBe("before_deploy");
    expect(m.up.transaction).toBe(false);
    expect(m.up.sql).toBe("create index concurrently i on t (a);");
    expect(m.down?.sql).toBe("drop index i;");
  });

  test("only transaction may be set in the down section", () => {
    expect(errorOf("select 1;\n-- migrate:down\n-- safe: always\nselect 2;")).toContain(
      'the down section may only set "transaction:"',
    );
  });

  test("a second migrate:down is an error", () => {
    expect(errorOf("select 1;\n-- migrate:down\nselect 2;\n-- migrate:down\nselect 3;")).toContain(
      'a second "-- migrate:down"',
    );
  });

  test("the checksum covers the up SQL only: front-matter, down SQL and line endings do not change it", () => {
    const base = parse("-- safe: before_deploy\ncreate table t (id int);\n-- migrate:down\ndrop table t;");
    const relabelled = parse("-- Note: now always\n-- safe: always\r\ncreate table t (id int);\r\n-- migrate:down\ndrop table t cascade;");
    const edited = parse("-- safe: before_deploy\ncreate table t (id bigint);");
    expect(relabelled.checksum).toBe(base.checksum);
    expect(edited.checksum).not.toBe(base.checksum);
    expect(base.checksum).toBe(checksumOf("create table t (id int);"));
  });
});

describe("durations", () => {
  test("units s, m, h, d, w and combinations", () => {
    expect(parseDuration("90s")).toBe(90_000);
    expect(parseDuration("5m")).toBe(300_000);
    expect(parseDuration("2h")).toBe(7_200_000);
    expect(parseDuration("7d")).toBe(604_800_000);
    expect(parseDuration("1w")).toBe(604_800_000);
    expect(parseDuration("1h30m")).toBe(5_400_000);
    expect(parseDuration("7")).toBeNull();
    expect(parseDuration("7 days")).toBeNull();
    expect(parseDuration("-1d")).toBeNull();
  });
});

describe("reading a migrations directory", () => {
  test("ids sort in byte order and each depends on the previous one by default", () => {
    const dir = migrationsDir({
      "0002_b": "select 2;",
      "0001_a": "select 1;",
      "0010_c": "-- depends: []\nselect 3;",
      "B_upper": "select 4;",
      "a_lower": "select 5;",
    });
    const migrations = readMigrations(dir);
    expect(migrations.map((m) => m.id)).toEqual(["0001_a", "0002_b", "0010_c", "B_upper", "a_lower"]);
    expect(migrations.map((m) => m.depends)).toEqual([[], ["0001_a"], [], ["0010_c"], ["B_upper"]]);
  });

  test("only *.sql files directly in the directory are migrations (hidden folders are not looked into)", async () => {
    const dir = migrationsDir({ "0001_a": "select 1;" });
    const { mkdirSync, writeFileSync } = await import("node:fs");
    writeFileSync(`${dir}/README.md`, "x");
    writeFileSync(`${dir}/0003_draft.sql.bak`, "y");
    mkdirSync(`${dir}/.old`);
    writeFileSync(`${dir}/.old/0000_z.sql`, "select 0;");
    expect(readMigrations(dir).map((m) => m.id)).toEqual(["0001_a"]);
  });

  test("every bad file is reported at once", () => {
    const dir = migrationsDir({ "0001_a": "-- saf: always\nselect 1;", "0002_b": "-- safe: sometimes\nselect 2;" });
    expect(() => readMigrations(dir)).toThrow(/0001_a\.sql:1:.*\n.*0002_b\.sql:1:/);
  });

  test("a missing directory is an input error that names it", () => {
    expect(() => readMigrations("/nonexistent/migrations")).toThrow("/nonexistent/migrations does not exist");
  });
});
