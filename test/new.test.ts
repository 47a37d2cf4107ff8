/**
 * `--new <name>`: the next migration file in the directory's own numbering,
 * with the front-matter template and a down section. The numbering styles are
 * those of real projects: dbmate/Rails timestamps, diesel's dashed ones,
 * node-pg-migrate's Unix milliseconds and zero-padded sequences.
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { nextMigrationId, readMigrations } from "../safemigrate.ts";
import { appliedIds, cleanup, type CliRun, migrationsDir, open, runCli, SERVER_URL, serverDatabaseUrl, tempDir } from "./helpers.ts";

setDefaultTimeout(60_000);
afterEach(cleanup);

const NOW = new Date("2026-11-30T04:05:06.789Z");

function expectExit(run: CliRun, code: number): void {
  if (run.code !== code) throw new Error(`expected exit ${code}, got ${run.code}\n${run.stdout}\n${run.stderr}`);
}

describe("the next id follows the directory's numbering", () => {
  const cases: [string, string[], string, string][] = [
    ["an empty directory: a four-digit sequence", [], "add_orders_status", "0001_add_orders_status"],
    ["a sequence keeps its width", ["0001_users", "0007_orders"], "add_orders_status", "0008_add_orders_status"],
    ["a three-digit sequence", ["001_a", "002_b"], "c", "003_c"],
    ["a sequence past its width grows", ["9_a"], "b", "10_b"],
    ["dbmate/Rails timestamps, UTC", ["20240105093000_create_users"], "add_orders_status", "20261130040506_add_orders_status"],
    ["diesel's dashed timestamps", ["2019-11-15-182353_create_users"], "add_orders_status", "2026-11-30-040506_add_orders_status"],
    ["node-pg-migrate's Unix milliseconds with dashes between words", ["1700000000000_create-users"], "add orders status", `${NOW.getTime()}_add-orders-status`],
    ["a dash after the number is kept", ["0001-create-users"], "add_orders_status", "0002-add-orders-status"],
    ["mixed case names keep the given case", ["0001_CreateUsers"], "AddOrders", "0002_AddOrders"],
    ["lower-case names make the new one lower case", ["0001_create_users"], "Add_Orders", "0002_add_orders"],
    ["the newest style wins over an older one", ["0001_old", "20240105093000_new"], "x", "20261130040506_x"],
    ["a timestamp in the future is never preceded", ["20990101000000_future"], "x", "20990101000001_x"],
    ["a dashed timestamp at the end of a minute rolls over", ["2099-01-01-235959_future"], "x", "2099-01-02-000000_x"],
    [".sql typed by habit is dropped", ["0001_a"], "b.sql", "0002_b"],
  ];
  for (const [name, ids, wanted, expected] of cases) {
    test(name, () => expect(nextMigrationId(ids, wanted, NOW)).toBe(expected));
  }

  test("a name must be words", () => {
    expect(() => nextMigrationId([], "../etc/passwd", NOW)).toThrow(`--new "../etc/passwd": a migration name is words of letters and digits`);
    expect(() => nextMigrationId([], "  ", NOW)).toThrow("a migration name is words");
  });
});

describe("safemigrate --new", () => {
  test("writes a file that passes --check, with the template, and creates the directory if needed", async () => {
    const dir = join(tempDir(), "db", "migrations");
    const run = await runCli(["--new", "add_orders_status", "--dir", dir]);
    expectExit(run, 0);
    expect(run.stdout.trim()).toBe(`Created ${dir}/0001_add_orders_status.sql`);
    const text = readFileSync(join(dir, "0001_add_orders_status.sql"), "utf8");
    expect(text).toStartWith("-- safe: after_deploy\n");
    expect(text).toContain("\n-- migrate:up\n");
    expect(text).toContain("\n-- migrate:down\n");
    expect(text).not.toContain("-- depends:");
    expectExit(await runCli(["--check", "--dir", dir]), 0);
  });

  test("adds a depends: line when the directory's newest file declares one", async () => {
    const dir = migrationsDir({
      "20240105093000_users": "-- safe: always\ncreate table users (id int);\n",
      "20240106093000_orders": "-- safe: always\n-- depends: 20240105093000_users\ncreate table orders (id int);\n",
    });
    const run = await runCli(["--new", "add_orders_status", "--dir", dir, "--json"]);
    expectExit(run, 0);
    const { id, file } = JSON.parse(run.stdout);
    expect(id).toMatch(/^\d{14}_add_orders_status$/);
    expect(readFileSync(file, "utf8")).toContain("-- depends: 20240106093000_orders\n");
    expect(readMigrations(dir).map((m) => m.id).at(-1)).toBe(id);
  });

  test("an invalid name or no name is invalid input, and nothing is written", async () => {
    const dir = migrationsDir({ "0001_a": "select 1;\n" });
    for (const [args, message] of [[["--new", "a/b"], "a migration name is words"], [["--new"], "--new needs a value (a name, like add_orders_status)"]] as const) {
      const run = await runCli([...args, "--dir", dir]);
      expectExit(run, 2);
      expect(run.stderr).toContain(message);
    }
    expect(readdirSync(dir)).toEqual(["0001_a.sql"]);
  });

  test.skipIf(!SERVER_URL)("the new file, once filled in, applies with --all and rolls back with its down section", async () => {
    const dir = migrationsDir({ "0001_users": "-- safe: always\ncreate table users (id int);\n" });
    const run = await runCli(["--new", "add_email", "--dir", dir]);
    expectExit(run, 0);
    const file = run.stdout.trim().slice("Created ".length);
    const filled = readFileSync(file, "utf8")
      .replace("-- migrate:up\n", "-- migrate:up\nalter table users add column email text;\n")
      .replace("-- migrate:down\n", "-- migrate:down\nalter table users drop column email;\n");
    await Bun.write(file, filled);
    const url = await serverDatabaseUrl();
    expectExit(await runCli(["--all", "--dir", dir, "--database-url", url]), 0);
    const db = await open(url);
    expect(await appliedIds(db)).toEqual(["0001_users", "0002_add_email"]);
    expectExit(await runCli(["--rollback", "--last", "--dir", dir, "--database-url", url]), 0);
    expect(await appliedIds(db)).toEqual(["0001_users"]);
  });
});
