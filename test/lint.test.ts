/** The deploy-safety analysis against the real parser: each rule's true positives and the near misses that must not fire. */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  analyzeDown, analyzeMigration, analyzeMigrations, type Finding, type Gate, type Migration, parseMigration, readMigrations,
} from "../safemigrate.ts";
import { cleanup, migration, migrationsDir, runCli, SERVER_URL, serverDatabaseUrl } from "./helpers.ts";

// A guard against a hang, not a speed target (speed lives in bench/): on a loaded 2-core machine one
// PGlite start took 21 s and a whole pipeline test minutes, so no test may fail for being slow.
setDefaultTimeout(15 * 60_000);

afterEach(cleanup);

/** A migration file 0002_m.sql with this front-matter and SQL. */
function file(sql: string, front: string[] = ["-- safe: before_deploy"]): Migration {
  const { declaredDepends: _, ...rest } = parseMigration("0002_m", "migrations/0002_m.sql", [...front, sql].join("\n"));
  return { ...rest, depends: [], dependsLine: null };
}

async function rules(sql: string, front?: string[]): Promise<string[]> {
  return (await analyzeMigration(file(sql, front))).filter((f) => f.waived === null).map((f) => f.rule);
}

describe("phase rules: contraction in a before_deploy or always migration", () => {
  const cases: [string, string][] = [
    ["drop-table", "drop table orders;"],
    ["drop-column", "alter table users drop column name;"],
    ["drop-view", "drop view active_users;"],
    ["drop-function", "drop function full_name(users);"],
    ["drop-default", "alter table users alter column status drop default;"],
  ];
  for (const [rule, sql] of cases) {
    test(`${rule}: flagged in before_deploy and always, not in after_deploy`, async () => {
      expect(await rules(sql)).toEqual([rule]);
      expect(await rules(sql, ["-- safe: always"])).toEqual([rule]);
      expect(await rules(sql, ["-- safe: after_deploy"])).toEqual([]);
    });
  }

  test("a rename is flagged in every phase: it breaks the code on one side of the deploy", async () => {
    for (const safe of ["before_deploy", "always", "after_deploy"]) {
      expect(await rules("alter table users rename to accounts;", [`-- safe: ${safe}`])).toEqual(["rename-table"]);
      expect(await rules("alter table users rename column name to full_name;", [`-- safe: ${safe}`])).toEqual(["rename-column"]);
    }
    expect(await rules("alter view active_users rename to current_users;")).toEqual(["rename-table"]);
  });

  test("DROP SCHEMA is a drop of everything in it", async () => {
    expect(await rules("drop schema reporting cascade;")).toEqual(["drop-table"]);
  });

  test("objects the migration itself creates may be dropped in it", async () => {
    const staging = "create table import_staging (id int);\ninsert into import_staging values (1);\ndrop table public.import_staging;";
    expect(await rules(staging)).toEqual([]);
    const helper = [
      "create function normalise_once(text) returns text language sql as $$ select lower($1) $$;",
      "update users set email = normalise_once(email);",
      "drop function normalise_once(text);",
    ].join("\n");
    expect(await rules(helper)).toEqual([]);
    expect(await rules("drop view if exists active_users;\ncreate view active_users as select 1 as id;")).toEqual([]);
  });

  test("a CHECK (col IS NOT NULL), even NOT VALID, breaks old code that writes NULL", async () => {
    expect(await rules("alter table users add constraint email_present check (email is not null) not valid;")).toEqual(["add-not-null"]);
  });

  test("PostgreSQL 18's ADD CONSTRAINT ... NOT NULL is a NOT NULL like SET NOT NULL", async () => {
    expect(await rules("alter table users add constraint email_nn not null email;")).toEqual(["add-not-null", "set-not-null-scan"]);
  });

  test("change-column-type: a phase finding, and a lock finding when it rewrites", async () => {
    expect(await rules("alter table users alter column age type bigint;")).toEqual(["change-column-type", "type-change-rewrite"]);
    expect(await rules("alter table users alter column age type bigint;", ["-- safe: after_deploy"])).toEqual(["type-change-rewrite"]);
  });

  test("add-not-null: SET NOT NULL breaks old code that writes NULL, and scans the table", async () => {
    expect(await rules("alter table users alter column email set not null;")).toEqual(["add-not-null", "set-not-null-scan"]);
  });

  test("not-null-column-without-default: old INSERTs would fail", async () => {
    expect(await rules("alter table users add column tenant_id int not null;")).toEqual(["not-null-column-without-default"]);
  });

  test("not-null-column-without-default in after_deploy: it fails on a table with rows", async () => {
    const [finding] = await analyzeMigration(file("alter table users add column tenant_id int not null;", ["-- safe: after_deploy"]));
    expect(finding.rule).toBe("not-null-column-without-default");
    expect(finding.message).toContain("fails on a table that has rows");
  });

  test("near misses: a NOT NULL column with a constant default, or a nullable one, is fine on PG 11+", async () => {
    expect(await rules("alter table users add column status text not null default 'active';")).toEqual([]);
    expect(await rules("alter table users add column nickname text;")).toEqual([]);
    expect(await rules("alter table users add column created_at timestamptz not null default now();")).toEqual([]);
  });

  test("the message explains the expand/contract recipe", async () => {
    const [finding] = await analyzeMigration(file("alter table users drop column name;"));
    expect(finding.message).toContain("in a before_deploy migration");
    expect(finding.fix).toContain("after_deploy");
    expect(finding.fix).toContain("expand/contract");
  });
});

describe("lock rules", () => {
  test("index-not-concurrently, and the CONCURRENTLY near miss in a transaction: false migration", async () => {
    expect(await rules("create index users_email on users (email);")).toEqual(["index-not-concurrently"]);
    expect(await rules("create index concurrently users_email on users (email);", ["-- safe: before_deploy", "-- transaction: false"])).toEqual([]);
  });

  test("concurrently-in-transaction: CONCURRENTLY fails inside safemigrate's transaction", async () => {
    expect(await rules("create index concurrently users_email on users (email);")).toEqual(["concurrently-in-transaction"]);
    expect(await rules("reindex index concurrently users_email;")).toEqual(["concurrently-in-transaction"]);
    expect(await rules("drop index concurrently users_email;")).toEqual(["concurrently-in-transaction"]);
    expect(await rules("vacuum analyze users;")).toEqual(["concurrently-in-transaction"]);
    expect(await rules("drop index concurrently users_email;", ["-- safe: before_deploy", "-- transaction: false"])).toEqual([]);
  });

  test("PRIMARY KEY and UNIQUE constraints build an index under the lock; USING INDEX is the near miss", async () => {
    expect(await rules("alter table users add primary key (id);")).toEqual(["index-not-concurrently"]);
    expect(await rules("alter table users add constraint users_email_key unique (email);")).toEqual(["index-not-concurrently"]);
    expect(await rules("alter table users add column handle text unique;")).toEqual(["index-not-concurrently"]);
    expect(await rules("alter table users add constraint users_email_key unique using index users_email_idx;")).toEqual([]);
  });

  test("CREATE TABLE IF NOT EXISTS creates the table unless an earlier migration did", async () => {
    const sql = "create table if not exists users (id int);\ncreate index users_id on users (id);";
    expect(await rules(sql)).toEqual([]);
    const earlier = migration("0001_users", { safe: "before_deploy" }, "create table users (id int);");
    const again = migration("0002_again", { safe: "before_deploy", depends: ["0001_users"] }, sql);
    expect((await analyzeMigrations([earlier, again])).map((f) => f.rule)).toEqual(["index-not-concurrently"]);
  });

  test("tables created in the same migration are exempt", async () => {
    const sql = [
      "create table orders (id bigint, user_id bigint, note text);",
      "create index orders_user on orders (user_id);",
      "alter table orders add constraint orders_user_fk foreign key (user_id) references users (id);",
      "alter table orders alter column note set not null;",
      "alter table orders drop column note;",
    ].join("\n");
    expect(await rules(sql)).toEqual([]);
  });

  test("CONCURRENTLY on a table created earlier in the same file is not flagged", async () => {
    const sql = "create table events (id bigint);\ncreate index concurrently events_id on events (id);";
    expect(await rules(sql, ["-- safe: before_deploy", "-- transaction: false"])).toEqual([]);
  });

  test("foreign-key-not-valid and check-not-valid; NOT VALID then VALIDATE is the near miss", async () => {
    expect(await rules("alter table orders add constraint fk foreign key (user_id) references users (id);")).toEqual([
      "foreign-key-not-valid",
    ]);
    expect(await rules("alter table orders add constraint positive check (total > 0);")).toEqual(["check-not-valid"]);
    // A new column with a NULL default has nothing to validate; with a default every row is checked.
    expect(await rules("alter table orders add column team_id bigint references teams (id);")).toEqual([]);
    expect(await rules("alter table orders add column team_id bigint default 1 references teams (id);")).toEqual(["foreign-key-not-valid"]);

    const recipe = [
      "alter table orders add constraint fk foreign key (user_id) references users (id) not valid;",
      "alter table orders validate constraint fk;",
      "alter table orders add constraint positive check (total > 0) not valid;",
      "alter table orders validate constraint positive;",
    ].join("\n");
    expect(await rules(recipe, ["-- safe: before_deploy", "-- transaction: false"])).toEqual([]);
    // In one transaction the lock from ADD CONSTRAINT is still held while VALIDATE scans.
    expect(await rules(recipe)).toEqual(["foreign-key-not-valid", "check-not-valid"]);
  });

  test("set-not-null-scan: not after a validated CHECK (col IS NOT NULL), in this or an earlier migration", async () => {
    const recipe = [
      "alter table users add constraint email_present check (email is not null) not valid;",
      "alter table users validate constraint email_present;",
      "alter table users alter column email set not null;",
    ].join("\n");
    expect(await rules(recipe, ["-- safe: after_deploy", "-- transaction: false"])).toEqual([]);
    expect(await rules(recipe, ["-- safe: after_deploy"])).toEqual(["check-not-valid"]);

    // The same recipe over three after_deploy migrations: add NOT VALID, validate, set NOT NULL.
    const add = migration("0001_check", { safe: "after_deploy", depends: [] },
      "alter table users add constraint email_present check (email is not null) not valid;");
    const validate = migration("0002_validate", { safe: "after_deploy", depends: ["0001_check"] },
      "alter table users validate constraint email_present;");
    const setNotNull = migration("0003_not_null", { safe: "after_deploy", depends: ["0002_validate"] },
      "alter table users alter column email set not null;");
    expect((await analyzeMigrations([add, validate, setNotNull])).map((f) => f.rule)).toEqual([]);
    // Without the check, or with one never validated, it scans.
    expect(await rules("alter table users alter column email set not null;", ["-- safe: after_deploy"])).toEqual(["set-not-null-scan"]);
    expect(
      await rules(
        "alter table users add constraint p check (email is not null) not valid;\nalter table users alter column email set not null;",
        ["-- safe: after_deploy"],
      ),
    ).toEqual(["set-not-null-scan"]);
  });

  test("volatile-default: gen_random_uuid(), random(), serial; a constant or now() is the near miss", async () => {
    expect(await rules("alter table users add column token uuid default gen_random_uuid();")).toEqual(["volatile-default"]);
    expect(await rules("alter table users add column r float8 default random();")).toEqual(["volatile-default"]);
    expect(await rules("alter table users add column n bigserial;")).toEqual(["volatile-default"]);
    expect(await rules("alter table users add column flag boolean default false;")).toEqual([]);
    expect(await rules("alter table users add column seen_at timestamptz default now();")).toEqual([]);
  });

  test("type-change-rewrite: widening varchar or numeric is the near miss, judged from the declared type", async () => {
    const after = ["-- safe: after_deploy"];
    expect(await rules("alter table users alter column id type bigint;", after)).toEqual(["type-change-rewrite"]);
    expect(await rules("alter table users alter column n type text using n::text;", after)).toEqual(["type-change-rewrite"]);

    const created = migration("0001_users", { safe: "before_deploy", depends: [] },
      "create table users (id int, name varchar(100), total numeric(10,2), code text);");
    const change = async (sql: string) =>
      (await analyzeMigrations([created, migration("0002_change", { safe: "before_deploy", depends: ["0001_users"] }, sql)]))
        .map((f) => f.rule);
    expect(await change("alter table users alter column name type varchar(200);")).toEqual([]);
    expect(await change("alter table users alter column name type text;")).toEqual([]);
    expect(await change("alter table users alter column total type numeric(12,2);")).toEqual([]);
    expect(await change("alter table users alter column name type varchar(50);")).toEqual(["change-column-type", "type-change-rewrite"]);
    expect(await change("alter table users alter column id type text;")).toEqual(["change-column-type", "type-change-rewrite"]);
    expect(await change("alter table users alter column code type varchar(8);")).toEqual(["change-column-type", "type-change-rewrite"]);
  });

  test("vacuum-full, cluster, reindex-not-concurrently, lock-table", async () => {
    const after = ["-- safe: after_deploy"];
    expect(await rules("vacuum full users;", after)).toEqual(["vacuum-full"]);
    expect(await rules("vacuum users;", ["-- safe: after_deploy", "-- transaction: false"])).toEqual([]);
    expect(await rules("cluster users using users_pkey;", after)).toEqual(["cluster"]);
    expect(await rules("reindex table users;", after)).toEqual(["reindex-not-concurrently"]);
    expect(await rules("reindex table concurrently users;", ["-- safe: after_deploy", "-- transaction: false"])).toEqual([]);
    expect(await rules("lock table users in access exclusive mode;", after)).toEqual(["lock-table"]);
  });

  test("transaction-control: BEGIN/COMMIT inside a transactional migration", async () => {
    const [once, ...more] = await analyzeMigration(file("begin;\nalter table users add column x int;\ncommit;\nbegin;\ncommit;"));
    expect([once.rule, more]).toEqual(["transaction-control", []]);
    expect(once.message).toStartWith("BEGIN (and 3 more BEGIN/COMMIT statements) inside a migration safemigrate runs in one transaction");
    expect(await rules("savepoint s;\nalter table users add column x int;\nrelease savepoint s;")).toEqual([]);
  });
});

describe("waivers", () => {
  test("a waiver with a reason directly above the statement covers it", async () => {
    const findings = await analyzeMigration(file([
      "-- safemigrate-ignore: index-not-concurrently -- the table has 40 rows",
      "create index tiny_idx on tiny (a);",
      "create index other_idx on other (a);",
    ].join("\n")));
    expect(findings.map((f) => [f.line, f.rule, f.waived])).toEqual([
      [3, "index-not-concurrently", "the table has 40 rows"],
      [4, "index-not-concurrently", null],
    ]);
  });

  test("a waiver in the front-matter covers the first statement", async () => {
    expect(await rules("create index tiny_idx on tiny (a);", [
      "-- safe: before_deploy",
      "-- safemigrate-ignore: index-not-concurrently -- tiny lookup table",
    ])).toEqual([]);
  });

  test("a waiver without a reason is itself a finding and waives nothing", async () => {
    const found = await rules("-- safemigrate-ignore: drop-column\nalter table users drop column name;");
    expect(found).toEqual(["waiver-without-reason", "drop-column"]);
  });

  test("a waiver naming an unknown rule is a finding with a suggestion", async () => {
    const findings = await analyzeMigration(file("-- safemigrate-ignore: drop-colum -- old code gone\nalter table users drop column name;"));
    expect(findings.find((f) => f.rule === "unknown-rule")?.message).toContain('did you mean "drop-column"?');
  });

  test("a waiver comment does not change the checksum, so waiving an applied migration is not drift", () => {
    const plain = file("alter table a add column b int;\nalter table a drop column c;");
    const waived = file("alter table a add column b int;\n-- safemigrate-ignore: drop-column -- code stopped using c in v41\nalter table a drop column c;");
    expect(waived.checksum).toBe(plain.checksum);
  });
});

describe("findings point at file:line:column", () => {
  test("the line and column of the table in the statement", async () => {
    const [f]: Finding[] = await analyzeMigration(file("select 1;\n\n  alter table users drop column name;"));
    expect([f.file, f.line, f.column]).toEqual(["migrations/0002_m.sql", 4, 15]);
  });
});

describe("--lint on the command line", () => {
  const bad = {
    "0001_users": "-- safe: before_deploy\ncreate table users (id int, name text);",
    "0002_drop": "-- safe: before_deploy\n\nalter table users drop column name;",
  };

  test("the project's own migrations lint clean", async () => {
    const run = await runCli(["--lint"]);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain("no gating findings");
  });

  test("findings print file:line:column, rule, message and fix, exit 2", async () => {
    const dir = migrationsDir(bad);
    const run = await runCli(["--lint", "--dir", dir]);
    expect(run.code).toBe(2);
    expect(run.stdout).toContain(`${dir}/0002_drop.sql:3:13: drop-column: dropping column users.name in a before_deploy migration`);
    expect(run.stdout).toContain("fix: deploy code that no longer reads or writes the column first");
  });

  test("--format github prints Actions annotations; --json one object", async () => {
    const dir = migrationsDir(bad);
    const github = await runCli(["--lint", "--format", "github", "--dir", dir]);
    expect(github.code).toBe(2);
    expect(github.stdout.trim()).toStartWith(`::error file=${dir}/0002_drop.sql,line=3,col=13,title=safemigrate drop-column::`);
    const json = await runCli(["--lint", "--json", "--dir", dir]);
    const parsed = JSON.parse(json.stdout);
    expect(parsed.ok).toBe(false);
    expect(parsed.findings.map((f: Finding) => f.rule)).toEqual(["drop-column"]);
  });

  test("--pre refuses a gating finding on an existing table before applying anything, unless --no-lint", async () => {
    const dir = migrationsDir({ "0001_users": bad["0001_users"] });
    const url = SERVER_URL ? await serverDatabaseUrl() : `pglite:${migrationsDir({})}/db`;
    expect((await runCli(["--pre", "--dir", dir, "--database-url", url])).code).toBe(0);
    writeFileSync(join(dir, "0002_drop.sql"), bad["0002_drop"]);
    writeFileSync(join(dir, "0003_later.sql"), "-- safe: before_deploy\ncreate table later (id int);");
    const refused = await runCli(["--pre", "--dir", dir, "--database-url", url]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain("refusing to apply: 1 gating finding");
    expect(refused.stderr).toContain("0002_drop.sql:3:13: drop-column");
    expect(refused.stdout).not.toContain("applied  0003_later");

    const forced = await runCli(["--pre", "--no-lint", "--dir", dir, "--database-url", url]);
    expect(forced.code).toBe(0);
    expect(forced.stdout).toContain("applied  0002_drop");
  });

  test("a file-level lock-timeout typo is caught like any directive", () => {
    const dir = migrationsDir({ "0001": "-- lock_timeout: 2s\nselect 1;" });
    expect(() => readMigrations(dir)).toThrow('did you mean "lock-timeout:"?');
  });
});

/** Rules found in the last of these migrations (each depends on the one before), earlier ones declaring the schema. */
async function rulesAfter(history: string[], sql: string, front = ["-- safe: before_deploy"]): Promise<string[]> {
  const earlier = history.map((text, i) => migration(`000${i}_h`, { safe: "before_deploy", depends: i ? [`000${i - 1}_h`] : [] }, text));
  const last = { ...file(sql, front), depends: earlier.length ? [earlier.at(-1)!.id] : [] };
  return (await analyzeMigrations([...earlier, last])).filter((f) => f.migration === last.id && f.waived === null).map((f) => f.rule);
}

describe("real-history false positives: each hazard fires, its harmless twin does not", () => {
  test("timestamp -> timestamptz is free with the session time zone UTC (PostgreSQL 12+), not without it", async () => {
    const history = ["create table post (published timestamp not null);"];
    const change = "alter table post alter column published type timestamptz using published;";
    expect(await rulesAfter(history, change)).toEqual(["change-column-type", "type-change-rewrite"]);
    expect(await rulesAfter(history, `set timezone = 'UTC';\n${change}`)).toEqual([]);
    expect(await rulesAfter(history, `set timezone = 'Europe/Paris';\n${change}`)).toEqual(["change-column-type", "type-change-rewrite"]);
    // A USING that computes something is a real conversion.
    expect(await rulesAfter(history, `set timezone = 'UTC';\nalter table post alter column published type timestamptz using published at time zone 'Asia/Tokyo';`))
      .toEqual(["change-column-type", "type-change-rewrite"]);
  });

  test("DROP FUNCTION of a trigger function is not a phase finding; of a function the code may call it is", async () => {
    const trigger = "create function touch() returns trigger language plpgsql as $$ begin new.at = now(); return new; end $$;";
    const called = "create function full_name(text) returns text language sql as $$ select $1 $$;";
    expect(await rulesAfter([trigger], "drop function touch();")).toEqual([]);
    expect(await rulesAfter([called], "drop function full_name(text);")).toEqual(["drop-function"]);
  });

  test("NOT NULL on a column this migration gave a default is no phase hazard (old INSERTs get the default); without it, it is", async () => {
    const history = ["create table users (id int, status text);"];
    expect(await rulesAfter(history, "alter table users alter column status set default 'new';\nupdate users set status = 'new' where status is null;\nalter table users alter column status set not null;"))
      .toEqual(["backfill-under-lock", "set-not-null-scan"]);
    expect(await rulesAfter(history, "alter table users alter column status set not null;")).toEqual(["add-not-null", "set-not-null-scan"]);
  });

  test("a renamed table keeps the column types earlier migrations declared, so a widening after the rename is proven", async () => {
    const history = ["create table user_ (name varchar(20));", "alter table user_ rename to person;"];
    expect(await rulesAfter(history, "alter table person alter column name type varchar(255);")).toEqual([]);
    expect(await rulesAfter(history, "alter table person alter column name type varchar(10);")).toEqual(["change-column-type", "type-change-rewrite"]);
    expect(await rules("create table t (id int);\nalter table t rename to u;")).toEqual([]);
  });

  test("BEGIN/COMMIT is reported once per migration; one in a transaction: false migration is not", async () => {
    const many = Array.from({ length: 50 }, (_, i) => `alter table users add column c${i} int; commit and chain;`).join("\n");
    expect(await rules(many)).toEqual(["transaction-control"]);
    expect(await rules(many, ["-- safe: before_deploy", "-- transaction: false"])).toEqual([]);
  });
});

describe("real-history misses: each hazard fires, its harmless twin does not", () => {
  test("a default calling a function declared without a volatility is VOLATILE: the table is rewritten", async () => {
    const plain = "create function new_token() returns text language sql as $$ select md5(random()::text) $$;";
    const stable = "create function site_name() returns text language sql stable as $$ select 'x' $$;";
    const history = ["create table users (id int);"];
    const [finding] = await analyzeMigrations([
      migration("0001_a", { safe: "before_deploy" }, `${history[0]}\n${plain}`),
      migration("0002_b", { safe: "before_deploy", depends: ["0001_a"] }, "alter table users add column token text default new_token();"),
    ]);
    expect(finding.rule).toBe("volatile-default");
    expect(finding.message).toBe(
      "adding users.token with new_token() (declared without IMMUTABLE or STABLE, so VOLATILE) as its default rewrites users (a value computed for each row) " +
        "under an ACCESS EXCLUSIVE lock: reads and writes of users wait until it ends and the migration commits",
    );
    expect(await rulesAfter([...history, stable], "alter table users add column site text default site_name();")).toEqual([]);
  });

  test("DROP INDEX without CONCURRENTLY locks its table; CONCURRENTLY (transaction: false) and an index made in the same migration do not", async () => {
    const history = ["create table users (id int, email text);", "create index users_email on users (email);"];
    const [finding] = (await analyzeMigrations([
      migration("0001_a", { safe: "before_deploy" }, history.join("\n")),
      migration("0002_b", { safe: "before_deploy", depends: ["0001_a"] }, "drop index users_email;"),
    ]));
    expect([finding.rule, finding.subject]).toEqual(["drop-index-not-concurrently", "users_email"]);
    expect(finding.message).toStartWith("DROP INDEX users_email takes an ACCESS EXCLUSIVE lock on users: it waits for every running query on users");
    expect(await rulesAfter(history, "drop index concurrently users_email;", ["-- safe: before_deploy", "-- transaction: false"])).toEqual([]);
    expect(await rulesAfter(history, "create index tmp on users (id);\ndrop index tmp;")).toEqual(["index-not-concurrently"]);
  });

  test("a whole-table UPDATE after an ALTER TABLE in the same transaction runs under its ACCESS EXCLUSIVE lock; in a transaction: false migration it does not", async () => {
    const history = ["create table users (id int, name text);"];
    const sql = "alter table users add column display text;\nupdate users set display = name;";
    const [finding] = (await analyzeMigrations([
      migration("0001_a", { safe: "before_deploy" }, history[0]),
      migration("0002_b", { safe: "before_deploy", depends: ["0001_a"] }, sql),
    ]));
    expect(finding.rule).toBe("backfill-under-lock");
    expect(finding.message).toBe(
      "UPDATE of every row of users runs while this transaction holds the ACCESS EXCLUSIVE lock the ALTER TABLE on line 2 took: " +
        "every read and write of users waits until the migration commits",
    );
    expect(await rulesAfter(history, sql, ["-- safe: before_deploy", "-- transaction: false"])).toEqual([]);
    expect(await rulesAfter(history, "update users set name = upper(name);")).toEqual([]);
    expect(await rulesAfter(history, "alter table users add column display text;\nupdate users set display = name where id = 1;")).toEqual([]);
  });

  test("DDL in a DO block or behind EXECUTE is reported once per migration as not analysable; a DO block without DDL is not", async () => {
    const dynamic = [
      "do $$ begin execute 'alter table users add column a int'; end $$;",
      "do $$ begin alter table users add column b int; end $$;",
    ].join("\n");
    const found = await analyzeMigration(file(dynamic));
    expect(found.map((f) => [f.rule, f.notGating])).toEqual([["dynamic-sql", "information only"]]);
    const helper = [
      "create function add_col(t text) returns void language plpgsql as $$ begin execute format('alter table %I add column x int', t); end $$;",
      "select add_col('users');",
    ].join("\n");
    expect(await rules(helper)).toEqual(["dynamic-sql"]);
    expect(await rules("do $$ begin raise notice 'hello'; end $$;")).toEqual([]);
  });

  test("a generated stored column with REFERENCES checks every row; a plain nullable one with REFERENCES does not", async () => {
    const history = ["create table users (id int primary key, org_key text);", "create table orgs (id int primary key);"];
    expect(await rulesAfter(history, "alter table users add column org_id int generated always as (length(org_key)) stored references orgs (id);"))
      .toEqual(["volatile-default", "foreign-key-not-valid"]);
    expect(await rulesAfter(history, "alter table users add column org_id int references orgs (id);")).toEqual([]);
  });
});

describe("hazards only squawk caught: each fires, its harmless twin does not", () => {
  /** The findings of the last migration, earlier ones declaring the schema. */
  async function findingsAfter(history: string[], sql: string, front = ["-- safe: before_deploy"]): Promise<Finding[]> {
    const earlier = history.map((text, i) => migration(`000${i}_h`, { safe: "before_deploy", depends: i ? [`000${i - 1}_h`] : [] }, text));
    const last = { ...file(sql, front), depends: earlier.length ? [earlier.at(-1)!.id] : [] };
    return (await analyzeMigrations([...earlier, last])).filter((f) => f.migration === last.id);
  }

  test("DROP NOT NULL is a phase hazard before the deploy (old code reads the NULLs new code writes), not after it nor on a table made in the same migration", async () => {
    const sql = "alter table users alter column email drop not null;";
    const [finding] = await findingsAfter(["create table users (email text not null);"], sql);
    expect([finding.rule, finding.subject, finding.line, finding.column]).toEqual(["drop-not-null", "users", 2, 13]);
    expect(finding.message).toBe(
      "DROP NOT NULL on users.email in a before_deploy migration: once the new code writes NULL there, the old code still serving traffic " +
        "during the deploy (and again after a rollback of the code) reads NULL where it always found a value",
    );
    expect(await rules(sql, ["-- safe: always"])).toEqual(["drop-not-null"]);
    expect(await rules(sql, ["-- safe: after_deploy"])).toEqual([]);
    expect(await rules(`create table users (email text not null);\n${sql}`)).toEqual([]);
  });

  test("TRUNCATE ... CASCADE names the tables it also empties; a plain TRUNCATE, or CASCADE of a table nothing references, does not fire", async () => {
    const history = [
      "create table orgs (id int primary key);",
      "create table users (id int primary key, org_id int references orgs);",
      "create table posts (user_id int, foreign key (user_id) references users (id));",
      "create table audit (x int);",
    ];
    const [finding] = await findingsAfter(history, "truncate table orgs cascade;");
    expect([finding.rule, finding.subject]).toEqual(["truncate-cascade", "orgs"]);
    expect(finding.message).toBe(
      "TRUNCATE orgs CASCADE also empties users, posts (every table with a foreign key to orgs, and those referencing them, as the migrations declared them)",
    );
    expect(await findingsAfter(history, "truncate table orgs;")).toEqual([]);
    expect(await findingsAfter(history, "truncate table audit cascade;")).toEqual([]);
    // A table older than the migrations: only the database knows what references it.
    expect((await findingsAfter([], "truncate legacy cascade;"))[0].message).toBe(
      "TRUNCATE legacy CASCADE also empties every table with a foreign key to legacy, and those referencing them: legacy predates the migrations, so only the database knows which tables reference it",
    );
    // Dropping the referencing table takes its foreign key with it.
    expect(await findingsAfter([...history, "drop table posts;\ndrop table users;"], "truncate table orgs cascade;")).toEqual([]);
  });

  test("a name over 63 bytes says what PostgreSQL cuts it to; 63 bytes, a reference to a long name, or a long string do not fire", async () => {
    const long = "idx_post_aggregates_featured_community_newest_comment_time_necro"; // 64 bytes
    const [finding] = await findingsAfter(["create table post (a int);"], `create index concurrently ${long} on post (a);`, ["-- safe: before_deploy", "-- transaction: false"]);
    expect([finding.rule, finding.subject, finding.column]).toEqual(["identifier-too-long", long.slice(0, 63), 27]);
    expect(finding.message).toBe(
      `the name "${long}" is 64 bytes: PostgreSQL silently cuts it to 63, "${long.slice(0, 63)}"; ` +
        "a second name sharing those 63 bytes would be the same name (its CREATE fails, or IF NOT EXISTS skips it)",
    );
    expect(await rules(`create table post (a int);\ncreate index ${long.slice(0, 63)} on post (a);`)).toEqual([]);
    expect(await rules(`drop index concurrently ${long};`, ["-- safe: before_deploy", "-- transaction: false"])).toEqual([]);
    expect(await rules(`create table t (a text default '${"x".repeat(80)}'); -- ${"y".repeat(80)}`)).toEqual([]);
    // Columns, constraints and triggers too; a multi-byte name is cut on a character boundary; quoted names keep their case.
    expect(await rules(`create table t (${"c".repeat(70)} int, constraint ${"k".repeat(64)} check (true));`)).toEqual(["identifier-too-long", "identifier-too-long"]);
    expect(await rules(`create table t (a int);\nalter table t rename to ${"r".repeat(64)};\ncreate schema ${"s".repeat(64)};`)).toEqual(["identifier-too-long", "identifier-too-long"]);
    const [umlaut] = await analyzeMigration(file(`create table "${"Ä".repeat(40)}" (a int);`));
    expect(umlaut.message).toStartWith(`the name "${"Ä".repeat(40)}" is 80 bytes: PostgreSQL silently cuts it to 63, "${"Ä".repeat(31)}"`);
  });

  test("two long names cut to the same 63 bytes collide: the second CREATE fails, or IF NOT EXISTS skips it", async () => {
    const base = "x".repeat(63);
    const history = [`create table t (a int);\ncreate index ${base}_one on t (a);`];
    const [collision] = await findingsAfter(history, `create index if not exists ${base}_two on t (a);`, ["-- safe: after_deploy", "-- transaction: false"]);
    expect([collision.rule, collision.subject]).toEqual(["identifier-too-long", null]);
    expect(collision.message).toEndWith(`: "${base}_one" (migration 0000_h) was cut to the same name, so this statement is skipped as if done (IF NOT EXISTS) and the object never exists`);
    // The same long name again after its object was dropped is no collision.
    const again = await findingsAfter([...history, `drop index ${base}_one;`], `create index concurrently ${base}_one on t (a);`, ["-- safe: before_deploy", "-- transaction: false"]);
    expect(again.map((f) => [f.rule, f.subject])).toEqual([["identifier-too-long", base]]);
  });
});

describe("the gate on the new rules", () => {
  const gate = (phase: "pre" | "all"): Gate => ({
    phase, smallTableBytes: 1024 * 1024,
    live: { relations: new Map([["orgs", { table: "orgs", bytes: 8192, heapBytes: 0 }], ["users", { table: "users", bytes: 8192, heapBytes: 0 }]]), functions: new Set() },
  });
  const notGating = async (sql: string, phase: "pre" | "all", front?: string[]) =>
    (await analyzeMigration(file(sql, front), undefined, gate(phase))).map((f) => [f.rule, f.notGating]);

  test("TRUNCATE ... CASCADE of an existing table gates however small it is; of a table the run creates it does not", async () => {
    expect(await notGating("truncate orgs cascade;", "all")).toEqual([["truncate-cascade", null]]);
    expect(await notGating("truncate fresh cascade;", "all")).toEqual([["truncate-cascade", "fresh did not exist before this run"]]);
  });

  test("DROP NOT NULL gates --pre on an existing table, like every phase rule, and not --all", async () => {
    const sql = "alter table users alter column email drop not null;";
    expect(await notGating(sql, "pre")).toEqual([["drop-not-null", null]]);
    expect(await notGating(sql, "all")).toEqual([["drop-not-null", "--all runs after the deploy: no old code is left to break"]]);
  });

  test("a long name of an object the run creates does not gate; a collision does", async () => {
    const long = "y".repeat(70);
    expect(await notGating(`create index ${long} on orgs (id);`, "all", ["-- safe: before_deploy"]))
      .toEqual([["identifier-too-long", `${"y".repeat(63)} did not exist before this run`], ["index-not-concurrently", "orgs is small (8 kB, below --small-table 1 MB): the lock is held briefly"]]);
    expect((await notGating(`create index ${long}a on orgs (id);\ncreate index ${long}b on orgs (id);`, "all", ["-- safe: after_deploy"]))
      .filter(([rule]) => rule === "identifier-too-long")).toEqual([["identifier-too-long", `${"y".repeat(63)} did not exist before this run`], ["identifier-too-long", null]]);
  });
});

describe("aware of the server's version (newest PostgreSQL assumed without a database)", () => {
  const on = (serverVersion?: number): Gate => ({ phase: "all", smallTableBytes: 0, live: { relations: new Map(), functions: new Set(), serverVersion } });
  const rulesOn = async (sql: string, serverVersion?: number, front = ["-- safe: after_deploy"]) =>
    (await analyzeMigration(file(sql, front), undefined, serverVersion === undefined ? null : on(serverVersion))).filter((f) => f.rule !== "phase-suggestion");

  test("ADD COLUMN with a constant default is free on PostgreSQL 11+, a rewrite on 10", async () => {
    const sql = "alter table users add column status text default 'new';";
    expect(await rulesOn(sql)).toEqual([]);
    expect(await rulesOn(sql, 110000)).toEqual([]);
    const [rewrite] = await rulesOn(sql, 100021);
    expect(rewrite.rule).toBe("volatile-default");
    expect(rewrite.message).toBe(
      "adding users.status with a default (PostgreSQL 10 writes any default into each row; 11+ only a volatile one) rewrites users " +
        "(the value written into each row) under an ACCESS EXCLUSIVE lock: reads and writes of users wait until it ends and the migration commits",
    );
    expect((await rulesOn("alter table users add column status text default null;", 100021)).map((f) => f.rule)).toEqual([]);
  });

  test("timestamp -> timestamptz under UTC keeps the table's file on PostgreSQL 12+, not on 11", async () => {
    const history = "create table post (published timestamp);";
    const change = "set timezone = 'UTC';\nalter table post alter column published type timestamptz;";
    const findings = async (serverVersion?: number) => {
      const gate = serverVersion === undefined ? null : on(serverVersion);
      return (await analyzeMigrations([migration("0001_a", { safe: "before_deploy" }, history), migration("0002_b", { safe: "after_deploy", depends: ["0001_a"] }, change)], { gate }))
        .filter((f) => f.migration === "0002_b");
    };
    expect(await findings()).toEqual([]);
    expect(await findings(120000)).toEqual([]);
    const [rewrite] = await findings(110005);
    expect(rewrite.message).toBe(
      "changing post.published from timestamp to timestamptz rewrites post (on PostgreSQL 11 even with the time zone UTC; 12+ keeps the file) " +
        "and rebuilds its indexes under an ACCESS EXCLUSIVE lock: reads and writes of post wait until it ends and the migration commits",
    );
  });

  test("SET NOT NULL after a validated CHECK skips the scan on PostgreSQL 12+, not on 11", async () => {
    const earlier = migration("0001_a", { safe: "after_deploy" }, "create table users (email text);");
    const validated = migration("0002_b", { safe: "after_deploy", depends: ["0001_a"] }, "alter table users add constraint email_present check (email is not null) not valid;\ncommit;\nalter table users validate constraint email_present;");
    const setNotNull = migration("0003_c", { safe: "after_deploy", depends: ["0002_b"] }, "alter table users alter column email set not null;");
    const rulesOf = async (serverVersion?: number) =>
      (await analyzeMigrations([earlier, validated, setNotNull], { gate: serverVersion === undefined ? null : on(serverVersion) })).filter((f) => f.migration === "0003_c").map((f) => f.rule);
    expect(await rulesOf()).toEqual([]);
    expect(await rulesOf(150004)).toEqual([]);
    expect(await rulesOf(110005)).toEqual(["set-not-null-scan"]);
  });
});

describe("messages say exactly what happens", () => {
  test("types as written, the lock, how long it is held; the fix does not repeat the reason", async () => {
    const [phase, rewrite] = await analyzeMigrations([
      migration("0001_a", { safe: "before_deploy" }, "create table users (name varchar(100));"),
      migration("0002_b", { safe: "before_deploy", depends: ["0001_a"] }, "alter table users alter column name type varchar(50);"),
    ]);
    expect(phase.message).toBe("changing the type of users.name from varchar(100) to varchar(50) in a before_deploy migration: the old code may write values the new type rejects");
    expect(rewrite.message).toBe(
      "changing users.name from varchar(100) to varchar(50) rewrites users and rebuilds its indexes under an ACCESS EXCLUSIVE lock: " +
        "reads and writes of users wait until it ends and the migration commits",
    );
    expect(rewrite.fix).not.toContain("rewrites");
    expect(phase.fix).not.toContain("old code may write");
  });
});

describe("phase suggestion", () => {
  test("an after_deploy migration that only adds is reported as information; one that drops is not", async () => {
    const [suggestion] = await analyzeMigration(file("create table audit (id int);\nalter table users add column note text;", ["-- safe: after_deploy"]));
    expect([suggestion.rule, suggestion.notGating]).toEqual(["phase-suggestion", "information only"]);
    expect(await rules("create table audit (id int);\nalter table users drop column note;", ["-- safe: after_deploy"])).toEqual([]);
  });
});

describe("down sections", () => {
  const withDown = (down: string, up = "create index concurrently users_email on users (email);") =>
    file(`${up}\n\n-- migrate:down\n${down}`, ["-- safe: before_deploy", "-- transaction: false"]);

  test("a syntax error in the down is found at its line; a valid down passes", async () => {
    const [finding] = await analyzeDown(withDown("drop index concurently users_email;"));
    expect([finding.rule, finding.line]).toEqual(["syntax-error", 6]);
    expect(finding.message).toContain("down section: SQL syntax error");
    expect(await analyzeDown(withDown("drop index users_email;"))).toEqual([]);
  });

  test("CONCURRENTLY in a transactional down fails during the rollback; with its own transaction: false it is fine", async () => {
    const [finding] = await analyzeDown(withDown("drop index concurrently users_email;"));
    expect([finding.rule, finding.line]).toEqual(["concurrently-in-transaction", 6]);
    expect(await analyzeDown(withDown("-- transaction: false\ndrop index concurrently users_email;"))).toEqual([]);
  });

  test("COMMITs in a transactional down are one finding at the first, with the count; with transaction: false there is none", async () => {
    const steps = "alter table a add column x int; commit and chain;\nalter table b add column x int; commit and chain;\nalter table c add column x int; commit;";
    const findings = await analyzeDown(withDown(steps));
    expect(findings.map((f) => [f.rule, f.line])).toEqual([["transaction-control", 6]]);
    expect(findings[0].message).toStartWith("down section: COMMIT (and 2 more BEGIN/COMMIT statements) inside a down section");
    const [single] = await analyzeDown(withDown("alter table a add column x int; commit;"));
    expect(single.message).toStartWith("down section: COMMIT inside a down section");
    expect(await analyzeDown(withDown(`-- transaction: false\n${steps}`))).toEqual([]);
  });

  test("--lint reports down problems with the file and line, exit 2", async () => {
    const dir = migrationsDir({ "0001_a": "-- safe: before_deploy\ncreate table t (id int);\n-- migrate:down\ndrop tabel t;" });
    const run = await runCli(["--lint", "--dir", dir]);
    expect(run.code).toBe(2);
    expect(run.stdout).toContain(`${dir}/0001_a.sql:4:1: syntax-error: down section: SQL syntax error`);
  });
});

describe("lint what is new", () => {
  const history = {
    "0001_users": "-- safe: before_deploy\ncreate table users (id int, name varchar(100));",
    "0002_index": "-- safe: before_deploy\ncreate index users_name on users (name);",
    "0003_widen": "-- safe: before_deploy\nalter table users alter column name type varchar(200);",
    "0004_drop": "-- safe: before_deploy\nalter table users drop column name;",
  };

  test("--lint-after <id> reports only later migrations, still knowing the types earlier ones declared", async () => {
    const dir = migrationsDir(history);
    const all = JSON.parse((await runCli(["--lint", "--json", "--dir", dir])).stdout);
    expect(all.findings.map((f: Finding) => `${f.migration} ${f.rule}`)).toEqual(["0002_index index-not-concurrently", "0004_drop drop-column"]);
    const after = await runCli(["--lint", "--json", "--lint-after", "0002_index", "--dir", dir]);
    expect(JSON.parse(after.stdout).findings.map((f: Finding) => `${f.migration} ${f.rule}`)).toEqual(["0004_drop drop-column"]);
    const env = await runCli(["--lint", "--json", "--dir", dir], { env: { SAFEMIGRATE_LINT_AFTER: "0003_widen" } });
    expect(JSON.parse(env.stdout).findings.map((f: Finding) => f.migration)).toEqual(["0004_drop"]);
    const typo = await runCli(["--lint", "--lint-after", "0002_indx", "--dir", dir]);
    expect([typo.code, typo.stderr]).toEqual([2, expect.stringContaining('did you mean "0002_index"?')]);
  });

  test("--lint <files> (a pull request's migrations) gives the same findings for them as linting the whole directory", async () => {
    const dir = migrationsDir(history);
    const whole = JSON.parse((await runCli(["--lint", "--json", "--dir", dir])).stdout).findings
      .filter((f: Finding) => ["0003_widen", "0004_drop"].includes(f.migration));
    const pr = await runCli(["--lint", "--json", "--dir", dir, join(dir, "0003_widen.sql"), "0004_drop"]);
    expect(pr.code).toBe(2);
    expect(JSON.parse(pr.stdout).findings).toEqual(whole);
  });
});
