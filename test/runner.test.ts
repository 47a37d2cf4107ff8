/** The runner against real databases: the same cases on the PostgreSQL server and on PGlite. */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import postgres from "postgres";
import {
  DatabaseError,
  migrate,
  readHistory,
  readMigrations,
  parseSection,
} from "../safemigrate.ts";
import { ALL, appliedIds, BACKENDS, cleanup, columns, failure, migrationsDir, open, PRE, SERVER_REQUIRED, SERVER_URL, tables } from "./helpers.ts";

// A guard against a hang, not a speed target (speed lives in bench/): on a loaded 2-core machine one
// PGlite start took 21 s and a whole pipeline test minutes, so no test may fail for being slow.
setDefaultTimeout(15 * 60_000);

afterEach(cleanup);

const pre = PRE;
const all = ALL;


test("server tests are required under CI", () => {
  if (SERVER_REQUIRED) expect(SERVER_URL).not.toBeNull();
});

for (const backend of BACKENDS) {
  describe.skipIf(!backend.available)(`runner on ${backend.name}`, () => {
    test("--pre applies the safe migrations with their history rows; --all applies the rest", async () => {
      const dir = migrationsDir({
        "0001_users": "-- safe: before_deploy\ncreate table users (id int, name text);\n-- migrate:down\ndrop table users;",
        "0002_email": "-- safe: always\nalter table users add column email text;",
        "0003_drop_name": "-- safe: after_deploy\nalter table users drop column name;",
      });
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(dir);

      const first = await migrate(db, migrations, pre);
      expect(first.applied.map((a) => a.id)).toEqual(["0001_users", "0002_email"]);
      expect(await columns(db, "users")).toEqual(["id", "name", "email"]);

      const history = await readHistory(db);
      expect(history.map((h) => [h.id, h.safe, h.phase])).toEqual([
        ["0001_users", "before_deploy", "pre"],
        ["0002_email", "always", "pre"],
      ]);
      expect(history[0].checksum).toBe(migrations[0].checksum);
      expect(history[0].downSql).toBe("-- migrate:down\ndrop table users;");
      expect(history[1].downSql).toBeNull();
      expect(history[0].appliedAt).toBeInstanceOf(Date);

      const second = await migrate(db, migrations, all);
      expect(second.applied.map((a) => a.id)).toEqual(["0003_drop_name"]);
      expect(await columns(db, "users")).toEqual(["id", "email"]);
      expect((await readHistory(db)).find((h) => h.id === "0003_drop_name")?.phase).toBe("all");

      const third = await migrate(db, migrations, all);
      expect(third.applied).toEqual([]);
    });

    test("the history keeps the down SQL exactly, whatever quotes and dollar signs it holds", async () => {
      const down = "-- migrate:down\nselect 'it''s', $sm$ $$ \\n $sm0$;\ndrop table odd;";
      const dir = migrationsDir({ "0001_odd": `-- safe: before_deploy\ncreate table odd (id int);\n${down}` });
      const db = await open(await backend.databaseUrl());
      await migrate(db, readMigrations(dir), pre);
      const [row] = await readHistory(db);
      expect(row.downSql).toBe(down);
    });

    test("a history row that cannot be written (it goes out with COMMIT) rolls its migration back; the session stays usable", async () => {
      const dir = migrationsDir({
        "0001_guard": "-- safe: before_deploy\ncreate function refuse() returns trigger language plpgsql as $$ begin " +
          "if new.id = '0002_refused' then raise exception 'history refused'; end if; return new; end $$;\n" +
          "create trigger refuse before insert on safemigrate_history for each row execute function refuse();",
        "0002_refused": "-- safe: before_deploy\ncreate table refused (id int);",
        "0003_later": "-- safe: before_deploy\ncreate table later (id int);",
      });
      const db = await open(await backend.databaseUrl());
      const error = await failure(migrate(db, readMigrations(dir), pre));
      expect(error).toBeInstanceOf(DatabaseError);
      expect(error.message).toContain(`${dir}/0002_refused.sql:2: migration 0002_refused failed: history refused`);
      expect(error.message).toContain("did not commit: nothing of it took effect");
      // The same session answers: the failed transaction was rolled back, not left open.
      expect(await tables(db)).not.toContain("refused");
      expect(await tables(db)).not.toContain("later");
      expect(await appliedIds(db)).toEqual(["0001_guard"]);
    });

    test("a SQL error rolls back its whole migration and stops the run", async () => {
      const dir = migrationsDir({
        "0001_ok": "-- safe: before_deploy\ncreate table ok (id int);",
        "0002_bad": "-- safe: before_deploy\n\ncreate table half (id int);\ninsert into missing_table values (1);\n",
        "0003_later": "-- safe: before_deploy\ncreate table later (id int);",
      });
      const db = await open(await backend.databaseUrl());
      const error = await failure(migrate(db, readMigrations(dir), pre));
      expect(error).toBeInstanceOf(DatabaseError);
      expect(error.message).toContain(`${dir}/0002_bad.sql:4: migration 0002_bad failed: relation "missing_table" does not exist`);
      expect(error.message).toContain("did not commit (statement 2 of 2): nothing of it took effect");
      expect(await tables(db)).toEqual(["ok", "safemigrate_history"]);
      expect(await appliedIds(db)).toEqual(["0001_ok"]);
    });

    test("transaction: false runs statement by statement, outside a transaction", async () => {
      const dir = migrationsDir({
        "0001_table": "-- safe: before_deploy\ncreate table items (id int, sku text);",
        "0002_index": [
          "-- safe: before_deploy",
          "-- transaction: false",
          "create index concurrently items_sku_idx on items (sku);",
          "-- a function whose body holds semicolons",
          "create function sku_of(i items) returns text language sql as $$ select i.sku; $$;",
        ].join("\n"),
      });
      const db = await open(await backend.databaseUrl());
      await migrate(db, readMigrations(dir), pre);
      const [index] = await db.query<{ valid: boolean }>(
        `select indisvalid as valid from pg_index where indexrelid = 'items_sku_idx'::regclass`,
      );
      expect(index.valid).toBe(true);
      expect(await appliedIds(db)).toEqual(["0001_table", "0002_index"]);
    });

    test("a failing statement of a transaction: false migration names its line; earlier statements stay", async () => {
      const dir = migrationsDir({
        "0001_split": [
          "-- safe: before_deploy",
          "-- transaction: false",
          "create table first_half (id int);",
          "",
          "insert into nowhere values (1);",
          "create table never (id int);",
        ].join("\n"),
      });
      const db = await open(await backend.databaseUrl());
      const error = await failure(migrate(db, readMigrations(dir), pre));
      expect(error.message).toContain(`${dir}/0001_split.sql:5: migration 0001_split failed: relation "nowhere" does not exist`);
      expect(error.message).toContain("statement 2 of 3 failed");
      expect(error.message).toContain("(lines 3) took effect");
      expect(await tables(db)).toEqual(["first_half", "safemigrate_history"]);
      expect(await appliedIds(db)).toEqual([]);
    });

    test("a strict refusal applies nothing and records no detection", async () => {
      const dir = migrationsDir({
        "0001_contract": "-- safe: after_deploy\n-- delay: 1d\ncreate table a (id int);",
        "0002_expand": "-- safe: before_deploy\ncreate table b (id int);",
      });
      const db = await open(await backend.databaseUrl());
      const result = await migrate(db, readMigrations(dir), pre);
      expect(result.plan.refused).toBe(true);
      expect(result.plan.blocked).toEqual([{ id: "0002_expand", safe: "before_deploy", blockedBy: ["0001_contract"] }]);
      expect(await tables(db)).toEqual(["safemigrate_history"]);
      expect(await readHistory(db)).toEqual([]);
    });

    test("--pre records the first detection of a delayed migration and keeps it on later runs", async () => {
      const dir = migrationsDir({ "0001_drop": "-- delay: 7d\ncreate table gone (id int);" });
      const db = await open(await backend.databaseUrl());
      const migrations = readMigrations(dir);
      const first = await migrate(db, migrations, pre);
      expect(first.plan.detect).toEqual(["0001_drop"]);
      const [seen] = await readHistory(db);
      expect(seen.detectedAt).toBeInstanceOf(Date);
      expect(seen.appliedAt).toBeNull();

      const second = await migrate(db, migrations, pre);
      expect(second.plan.detect).toEqual([]);
      expect((await readHistory(db))[0].detectedAt).toEqual(seen.detectedAt);

      // Eight days later by the clock, --pre applies it.
      const later = await migrate(db, migrations, { ...pre, now: () => new Date(Date.now() + 8 * 86_400_000) });
      expect(later.applied.map((a) => a.id)).toEqual(["0001_drop"]);
      expect(await tables(db)).toContain("gone");
    });

    test("a dry run changes nothing, not even the history table", async () => {
      const dir = migrationsDir({ "0001_a": "-- safe: before_deploy\ncreate table a (id int);", "0002_b": "-- delay: 1d\nselect 1;" });
      const db = await open(await backend.databaseUrl());
      const result = await migrate(db, readMigrations(dir), { ...pre, dryRun: true });
      expect(result.plan.apply.map((m) => m.id)).toEqual(["0001_a"]);
      expect(result.plan.detect).toEqual(["0002_b"]);
      expect(await tables(db)).toEqual([]);
    });

    test("drift in an applied migration is refused before anything runs", async () => {
      const db = await open(await backend.databaseUrl());
      await migrate(db, readMigrations(migrationsDir({ "0001_a": "-- safe: before_deploy\ncreate table a (id int);" })), pre);
      const edited = migrationsDir({
        "0001_a": "-- safe: before_deploy\ncreate table a (id bigint);",
        "0002_b": "-- safe: before_deploy\ncreate table b (id int);",
      });
      const error = await failure(migrate(db, readMigrations(edited), pre));
      expect(error.message).toContain("0001_a.sql: the up SQL changed after the migration was applied");
      expect(await tables(db)).toEqual(["a", "safemigrate_history"]);
    });
  });
}

describe.skipIf(!SERVER_URL)("the migration lock on the server", () => {
  test("a run waits for another run's lease, gives up after --lock-wait naming the holder, and proceeds once it is released", async () => {
    const url = await BACKENDS[0].databaseUrl();
    // The first run's migration waits on a table the test keeps locked, so that run holds the lease meanwhile.
    const gate = postgres(url, { max: 2, onnotice: () => {} });
    await gate.unsafe("create table gate (id int)");
    const closed = await gate.reserve();
    await closed.unsafe("begin; lock table gate in access exclusive mode");
    try {
      const dir = migrationsDir({
        "0001_a": "-- safe: before_deploy\nlock table gate in access share mode;\ncreate table a (id int);",
        "0002_b": "-- safe: before_deploy\ncreate table b (id int);",
      });
      const slow = { lockTimeoutMs: 60_000, statementTimeoutMs: 0, attempts: 1 };
      const first = migrate(await open(url), readMigrations(dir), { ...pre, lint: false, execution: slow });
      while (!(await gate.unsafe("select 1 from pg_locks where relation = 'gate'::regclass and not granted")).length) await Bun.sleep(50);

      const db = await open(url);
      let waited = "";
      const error = await failure(
        migrate(db, readMigrations(dir), { ...pre, lint: false, lockWaitMs: 300, onEvent: (e) => (waited ||= e.type === "waiting-for-lock" ? e.holder : "") }),
      );
      expect(waited).toContain(`pid ${process.pid}`);
      expect(error).toBeInstanceOf(DatabaseError);
      expect(error.message).toContain("another safemigrate run holds the migration lock");
      expect(error.message).toContain(`pid ${process.pid}`);
      expect(await tables(db)).toEqual(["gate", "safemigrate_history"]);

      // Released while a run waits: the first finishes, and the waiting one then finds nothing left to do.
      const waiting = migrate(db, readMigrations(dir), { ...pre, lint: false, lockWaitMs: 30_000 });
      await Bun.sleep(200);
      await closed.unsafe("commit");
      expect((await first).applied.map((a) => a.id)).toEqual(["0001_a", "0002_b"]);
      expect((await waiting).applied).toEqual([]);
      expect(await gate.unsafe("select * from safemigrate_history_lock")).toEqual([]);
    } finally {
      closed.release();
      await gate.end();
    }
  });
});

describe.skipIf(!SERVER_URL)("the lease is never taken from a live run", () => {
  test("a run that waited for the lease row does not take it from a run whose session connected while it waited", async () => {
    // The server's activity snapshot (pg_stat_activity) is taken once per transaction. A lease
    // statement that read it before waiting on the row judged the holder it found after the wait by
    // that old snapshot: a session younger than the snapshot looked dead, and its live lease was taken
    // over (seen as "another run took it over" in 1 of 3 runs of eight concurrent --all under load).
    const url = await BACKENDS[0].databaseUrl();
    const base = { "0001_base": "-- safe: before_deploy\ncreate table base (id int);" };
    await migrate(await open(url), readMigrations(migrationsDir(base)), { ...pre, lint: false });
    const watch = postgres(url, { max: 1, onnotice: () => {} });
    const previous = postgres(url, { max: 1, onnotice: () => {} });
    const younger = postgres(url, { max: 1, onnotice: () => {} });
    try {
      // A lease held by `previous`, whose row stays locked (as by a fenced transaction) while the run starts waiting.
      const row = await previous.reserve();
      await row.unsafe(`insert into safemigrate_history_lock (id, owner, holder, pid, backend_start, acquired_at, expires_at)
        select 1, 'previous', 'test', pid, backend_start, now(), now() + interval '1 hour' from pg_stat_activity where pid = pg_backend_pid()`);
      await row.unsafe("begin; update safemigrate_history_lock set holder = 'test, handing over' where id = 1");
      const dir = migrationsDir({ ...base, "0002_a": "-- safe: before_deploy\ncreate table a (id int);" });
      const waiting = failure(migrate(await open(url), readMigrations(dir), { ...pre, lint: false, lockWaitMs: 3_000 }));
      while (!(await watch.unsafe(`select 1 from pg_stat_activity where wait_event_type = 'Lock' and query like '%into%safemigrate_history_lock%'`)).length) {
        await Bun.sleep(10);
      }
      // While it waits, a session that did not exist when its statement began takes the lease over, alive and unexpired.
      const [session] = await younger.unsafe(`select pid, backend_start::text as started from pg_stat_activity where pid = pg_backend_pid()`);
      await row.unsafe(`update safemigrate_history_lock set owner = 'younger', pid = ${session.pid}, backend_start = '${session.started}' where id = 1; commit`);
      row.release();

      const error = await waiting;
      expect(error.message).toContain("another safemigrate run holds the migration lock");
      const [lease] = await watch.unsafe("select owner from safemigrate_history_lock");
      expect(lease.owner).toBe("younger");
      expect(await tables(await open(url))).not.toContain("a");
    } finally {
      await Promise.all([watch.end(), previous.end(), younger.end()]);
    }
  });
});

describe("splitting statements with the PostgreSQL parser", () => {
  test("semicolons in strings, dollar quotes and comments do not split; each statement knows its line", async () => {
    const sql = [
      "create table t (v text default 'a;b');", // line 10
      "-- a comment; with a semicolon",
      "create function f() returns int language plpgsql as $body$",
      "begin return 1; end;",
      "$body$;",
      "/* block; comment */ insert into t values ('é;');",
    ].join("\n");
    const { statements } = await parseSection({ sql, line: 10, transaction: false }, "x.sql");
    expect(statements.map((s) => s.line)).toEqual([10, 12, 15]);
    expect(statements[1].sql).toStartWith("create function f()");
    expect(statements[1].sql).toEndWith("$body$");
    expect(statements[2].sql).toContain("insert into t values ('é;')");
  });

  test("a syntax error names the file and line", async () => {
    const error = await failure(parseSection({ sql: "select 1;\nselect from from;", line: 3, transaction: false }, "m.sql"));
    expect(error.message).toStartWith("m.sql:4: SQL syntax error");
  });
});

describe("syntax errors", () => {
  test("a syntax error in a later migration stops the run before anything is applied, even with lint off", async () => {
    const dir = migrationsDir({
      "0001_ok": "-- safe: before_deploy\ncreate table ok (id int);",
      "0002_typo": "-- safe: before_deploy\n\ncreate tabel nope (id int);",
    });
    const db = await open(await BACKENDS[1].databaseUrl());
    const error = await failure(migrate(db, readMigrations(dir), { ...PRE, lint: false }));
    expect(error.message).toStartWith(`${dir}/0002_typo.sql:3: SQL syntax error`);
    expect(await tables(db)).toEqual(["safemigrate_history"]);
  });
});
