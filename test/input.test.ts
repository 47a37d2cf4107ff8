/**
 * Input that must not be lost or changed silently (issue 7): migration files
 * behind symbolic links, files that cannot be read, bytes that are not UTF-8,
 * ids any file name can hold, front-matter lines that once made the regexes
 * backtrack, statement splitting of big files, and the errors that used to be
 * "unexpected". Most run the CLI as a separate process, the way a user does,
 * and check the exit code, the message and what reached the database.
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { chmodSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parse } from "libpg-query";
import {
  analyzeMigration,
  checksumOf,
  decodeMigrationText,
  lexStatements,
  parseMigration,
  parseSection,
  parseSections,
  readMigrations,
  statementAt,
  statementBatches,
} from "../safemigrate.ts";
import { appliedIds, BACKENDS, type CliRun, cleanup, CLI, migrationsDir, open, runCli, SERVER_URL, serverDatabaseUrl, tables, tempDir } from "./helpers.ts";

// Real databases, CLI processes and files of megabytes, on a busy shared machine.
setDefaultTimeout(240_000);

afterEach(cleanup);

const shown = (run: CliRun) => `exit ${run.code}\n--- stdout ---\n${run.stdout}\n--- stderr ---\n${run.stderr}`;
function expectExit(run: CliRun, code: number): void {
  if (run.code !== code) throw new Error(`expected exit ${code}, got ${shown(run)}`);
}
const cli = (dir: string, url: string, ...args: string[]) => runCli(["--dir", dir, "--database-url", url, ...args]);

/** Runs `check` (no database needed): the migrations are read and parsed, nothing else. */
const check = (dir: string) => runCli(["--check", "--dir", dir]);

// ----------------------------------------------------------------------------
// Files
// ----------------------------------------------------------------------------

/**
 * A Kubernetes ConfigMap volume: the files live in a timestamped hidden
 * folder, `..data` links to it, and each name links into `..data` — so every
 * migration is a link to a link to the file.
 */
function configMapDir(files: Record<string, string>): string {
  const dir = tempDir("safemigrate-configmap-");
  const stamped = join(dir, "..2026_11_30_04_32_20.123456789");
  mkdirSync(stamped);
  for (const [name, text] of Object.entries(files)) writeFileSync(join(stamped, name), text);
  symlinkSync("..2026_11_30_04_32_20.123456789", join(dir, "..data"));
  for (const name of Object.keys(files)) symlinkSync(join("..data", name), join(dir, name));
  return dir;
}

describe("migration files", () => {
  for (const backend of BACKENDS) {
    test.skipIf(!backend.available)(`${backend.name}: symlinked files (a ConfigMap's link -> ..data -> file) are applied`, async () => {
      const dir = configMapDir({
        "0001_a.sql": "create table a (id int);",
        "0002_b.sql": "-- safe: before_deploy\ncreate table b (id int);",
      });
      // And a plain link to a file elsewhere.
      const elsewhere = tempDir();
      writeFileSync(join(elsewhere, "c.sql"), "create table c (id int);");
      symlinkSync(join(elsewhere, "c.sql"), join(dir, "0003_c.sql"));
      const url = await backend.databaseUrl();
      const run = await cli(dir, url, "--all");
      expectExit(run, 0);
      const db = await open(url);
      expect(await appliedIds(db)).toEqual(["0001_a", "0002_b", "0003_c"]);
      expect((await tables(db)).filter((t) => t !== "safemigrate_history")).toEqual(["a", "b", "c"]);
    });
  }

  test.skipIf(!SERVER_URL)("a dangling link, a FIFO and a directory named *.sql are each reported by name; nothing is applied", async () => {
    const dir = migrationsDir({ "0001_a": "create table a (id int);" });
    symlinkSync("gone.sql", join(dir, "0002_dangling.sql"));
    const fifo = Bun.spawnSync(["mkfifo", join(dir, "0003_fifo.sql")]);
    expect(fifo.exitCode).toBe(0);
    mkdirSync(join(dir, "0004_folder.sql"));
    symlinkSync("0005_loop.sql", join(dir, "0005_loop.sql"));
    const url = await serverDatabaseUrl();
    const run = await cli(dir, url, "--all"); // must return: reading the FIFO would block forever
    expectExit(run, 2);
    expect(run.stderr).toMatch(/0002_dangling\.sql: a symbolic link to gone\.sql, which does not exist/);
    expect(run.stderr).toMatch(/0003_fifo\.sql: a FIFO \(named pipe\), not a regular file/);
    expect(run.stderr).toMatch(/0004_folder\.sql: a directory, not a migration file/);
    expect(run.stderr).toMatch(/0005_loop\.sql: too many levels of symbolic links/);
    expect(run.stderr).not.toMatch(/unexpected|\n\s+at /);
    const db = await open(url);
    expect(await tables(db)).toEqual([]);
  });

  test("an unreadable file is reported by name with what to do (EACCES)", () => {
    const dir = migrationsDir({ "0001_a": "select 1;", "0002_secret": "select 2;" });
    chmodSync(dir, 0o755);
    chmodSync(join(dir, "0002_secret.sql"), 0o000);
    // Root reads anything: run as nobody when the tests run as root.
    const asRoot = process.getuid?.() === 0;
    const command = asRoot
      ? ["runuser", "-u", "nobody", "--", process.execPath, CLI, "--check", "--dir", dir]
      : [process.execPath, CLI, "--check", "--dir", dir];
    const run = Bun.spawnSync(command, { env: { PATH: process.env.PATH!, HOME: "/tmp", NO_COLOR: "1" }, stdout: "pipe", stderr: "pipe" });
    const stderr = run.stderr.toString();
    expect(run.exitCode, stderr).toBe(2);
    expect(stderr).toMatch(/0002_secret\.sql: permission denied — the user running safemigrate cannot read this migration file; make it readable/);
    expect(stderr).not.toMatch(/unexpected/);
  });

  test("*.SQL (wrong case) and .sql files in subfolders are errors that name them; hidden folders are not looked into", async () => {
    const dir = migrationsDir({ "0001_a": "select 1;" });
    writeFileSync(join(dir, "0002_b.SQL"), "select 2;");
    mkdirSync(join(dir, "later", "deeper"), { recursive: true });
    writeFileSync(join(dir, "later", "deeper", "0003_c.sql"), "select 3;");
    mkdirSync(join(dir, ".git"));
    writeFileSync(join(dir, ".git", "0004_d.sql"), "select 4;");
    const run = await check(dir);
    expectExit(run, 2);
    expect(run.stderr).toMatch(/0002_b\.SQL: ends in "\.SQL"; migration files end in lowercase "\.sql" — rename it to 0002_b\.sql/);
    expect(run.stderr).toMatch(/later: a subfolder with \.sql files \(.*later\/deeper\/0003_c\.sql\)/);
    expect(run.stderr).not.toMatch(/0004_d/);
  });

  test("--dir pointing at a file, or through one (ENOTDIR), says so", async () => {
    const dir = migrationsDir({ "0001_a": "select 1;" });
    const file = join(dir, "0001_a.sql");
    const atFile = await check(file);
    expectExit(atFile, 2);
    expect(atFile.stderr).toContain(`${file} is a file, not a directory — point --dir at the folder that holds the migration .sql files`);
    const through = await check(join(file, "sub"));
    expectExit(through, 2);
    expect(through.stderr).toMatch(/a part of this path is a file, not a directory/);
    expect(through.stderr).not.toMatch(/unexpected/);
  });
});

// ----------------------------------------------------------------------------
// Bytes
// ----------------------------------------------------------------------------

const bytes = (...parts: (string | number[])[]) =>
  Buffer.concat(parts.map((p) => typeof p === "string" ? Buffer.from(p, "utf8") : Buffer.from(p)));

describe("bytes in migration files", () => {
  test("a NUL byte is an error naming the file and line, not a silently shortened migration", () => {
    expect(() => decodeMigrationText(bytes("create table a (id int);\n\ncreate table b (id int);", [0], ";\ncreate table c (id int);\n"), "x.sql"))
      .toThrow(/^x\.sql:3: contains a NUL byte/);
  });

  test.skipIf(!SERVER_URL)("through the CLI: a NUL byte stops the run before anything is applied or recorded", async () => {
    const dir = migrationsDir({});
    writeFileSync(join(dir, "0001_a.sql"), bytes("create table a (id int);\n-- a comment", [0], "\ncreate table b (id int);\n"));
    const url = await serverDatabaseUrl();
    const run = await cli(dir, url, "--all");
    expectExit(run, 2);
    expect(run.stderr).toMatch(/0001_a\.sql:2: contains a NUL byte/);
    const db = await open(url);
    expect(await tables(db)).toEqual([]);
  });

  test("bytes that are not UTF-8 (Latin-1) are an error naming the file, line and byte", () => {
    // "café" in Latin-1: 0xE9 where UTF-8 needs two bytes.
    expect(() => decodeMigrationText(bytes("-- safe: always\ninsert into t values ('caf", [0xe9], "');\n"), "x.sql"))
      .toThrow(/^x\.sql:2: not valid UTF-8 \(byte 0xe9\) — save the file as UTF-8/);
    // A truncated sequence at the very end.
    expect(() => decodeMigrationText(bytes("select 1;\nselect 2;\n", [0xc3]), "y.sql")).toThrow(/^y\.sql:3: not valid UTF-8 \(byte 0xc3\)/);
    // Valid multi-byte text passes unchanged.
    expect(decodeMigrationText(bytes("select 'café ✓ 𝄞';"), "z.sql")).toBe("select 'café ✓ 𝄞';");
  });

  test("a UTF-16 file says it is UTF-16", () => {
    expect(() => decodeMigrationText(Buffer.from("\ufeffselect 1;", "utf16le"), "x.sql")).toThrow(/^x\.sql:1: the file is UTF-16/);
  });

  test("a UTF-8 byte-order mark is ignored: the first line's directive counts and the checksum is unchanged", () => {
    const text = "-- safe: before_deploy\ncreate table a (id int);\n";
    const dir = migrationsDir({});
    writeFileSync(join(dir, "0001_bom.sql"), bytes([0xef, 0xbb, 0xbf], text));
    writeFileSync(join(dir, "0002_plain.sql"), text);
    const [bom, plain] = readMigrations(dir);
    expect(bom.safe).toBe("before_deploy");
    expect(bom.checksum).toBe(plain.checksum);
    expect(bom.up.sql).toBe(plain.up.sql);
    expect(bom.source.charCodeAt(0)).not.toBe(0xfeff);
  });
});

// ----------------------------------------------------------------------------
// Ids
// ----------------------------------------------------------------------------

describe("migration ids", () => {
  const names = [
    "0001_ends with $sm",
    "0002_$sm$ tag $sm0$ and $$",
    "0003_it's \"quoted\" \\back\\slash\\",
    "0004_ünïcödé ✓ 𝄞",
    "0005_E'not an escape'",
  ];
  for (const backend of BACKENDS) {
    test.skipIf(!backend.available)(`${backend.name}: any text a file name can hold works through the history insert`, async () => {
      const dir = migrationsDir(Object.fromEntries(names.map((id, i) => [id, `create table t${i} (id int);`])));
      const url = await backend.databaseUrl();
      const run = await cli(dir, url, "--all");
      expectExit(run, 0);
      const db = await open(url);
      expect(await appliedIds(db)).toEqual(names);
      // And read back the same: the next run has nothing to do.
      const again = await cli(dir, url, "--all");
      expectExit(again, 0);
      expect(again.stdout).toMatch(/Nothing to apply|0 migrations|up to date/i);
    });
  }
});

// ----------------------------------------------------------------------------
// Front-matter in linear time
// ----------------------------------------------------------------------------

describe("front-matter lines of 100,000 spaces parse (no regex backtracking)", () => {
  const S = " ".repeat(100_000);
  const cases: [string, string, RegExp | null][] = [
    ["loose directive, value then junk", `-- safe${S}before_deploy x\nselect 1;`, null],
    ["loose directive with = and spaces", `-- safe${S}=${S}always\nselect 1;`, /write the directive as "-- safe: always"/],
    ["loose directive, = then two words", `-- safe${S}=${S}always x\nselect 1;`, null],
    ["spaces before the key", `--${S}safe: always\nselect 1;`, null],
    ["spaces between key and colon", `-- safe${S}: always\nselect 1;`, null],
    ["no key at all", `--${S}1\nselect 1;`, null],
    ["duration of 100,000 digits and no unit", `-- delay: ${"1".repeat(100_000)}\nselect 1;`, /not a duration/],
    ["duration of 50,000 parts", `-- delay: ${"1s".repeat(50_000)}x\nselect 1;`, /not a duration/],
    ["section marker", `-- migrate:up${S}transaction${S}:${S}false\nselect 1;`, null],
    ["waiver-like comment in the body", `select 1;\n${S}--${S}safemigrate-ignore${S}x\n`, null],
  ];
  for (const [name, text, error] of cases) {
    test(name, () => {
      const run = () => parseMigration("x", "x.sql", text);
      if (error) expect(run).toThrow(error);
      else expect(run().up.sql).toMatch(/select 1;/);
      expect(checksumOf(text)).toHaveLength(64);
    });
  }
});

// ----------------------------------------------------------------------------
// Statements
// ----------------------------------------------------------------------------

/** What libpg-query makes of the whole text in one parse: the statements' text. */
async function parserStatements(sql: string): Promise<string[]> {
  const tree = await parse(sql);
  const buffer = Buffer.from(sql);
  return (tree.stmts ?? []).map(({ stmt_location, stmt_len }) =>
    buffer.subarray(stmt_location ?? 0, stmt_len ? (stmt_location ?? 0) + stmt_len : undefined).toString().replace(/^(\s|--[^\n]*\n?)*/, "").trim()
  );
}

const TRICKY = [
  "create table \"odd;name\" (id int, note text default 'a;b''c')",
  "insert into \"odd;name\" values (1, E'it\\'s; escaped \\\\'), (2, U&'d\\0061t;a'), (3, 'x\\'), (4, $$dollar; $$), (5, $t$ $$ ; $t$)",
  "create function f() returns int language sql begin atomic select 1; select case when true then 2 end; end",
  "create rule r as on insert to \"odd;name\" do also (select 1; select 2)",
  "select /* a /* nested; */ comment; */ 'ünï;cödé ✓' as \"𝄞;\"",
  "create function g() returns int as $body$ begin return 1; end; $body$ language plpgsql",
  "select 1 -- a comment; with a semicolon\n  + 1",
  "update \"odd;name\" set note = 'x' where id = 1",
  "select a$b$c from (select 1 as a$b$c) s",
];

describe("splitting into statements", () => {
  test("the lexer ends statements where the parser does: quotes, E'' strings, dollar quotes, nested comments, parentheses, BEGIN ATOMIC", async () => {
    const sql = TRICKY.join(";\n") + ";\n";
    const lexed = lexStatements(sql).map(({ start, end }) => sql.slice(start, end).replace(/^(\s|--[^\n]*\n?)*/, "").trim().replace(/;$/, "").trim());
    expect(lexed).toEqual(await parserStatements(sql));
  });

  test("a section of several pieces gives the same statements, lines and offsets as one parse of the whole", async () => {
    // ~1.2 MB: the tricky statements repeated, so cuts fall among them and between data and other statements.
    const parts: string[] = [];
    for (let i = 0; parts.join("").length < 1_200_000; i++) {
      parts.push(`${TRICKY[i % TRICKY.length]};\n`);
      for (let k = 0; k < 40; k++) parts.push(`insert into "odd;name" values (${i * 100 + k}, 'n;${k} ✓');\n`);
    }
    const sql = parts.join("");
    const section = { sql, line: 5, transaction: true };
    const { statements, place } = await parseSection(section, "big.sql");
    const whole = await parserStatements(sql);
    expect(statements.length).toBe(whole.length);
    expect(statements.map((s) => s.sql)).toEqual(whole);
    // Lines from the one-pass index agree with counting newlines before each statement.
    const encoded = Buffer.from(sql);
    for (const statement of [statements[0], statements[777], statements[statements.length - 1]]) {
      const before = encoded.subarray(0, statement.offset).toString();
      expect(statement.line).toBe(5 + (before.match(/\n/g)?.length ?? 0));
      expect(place(statement.offset).line).toBe(statement.line);
      expect(sql.slice(before.length).startsWith(statement.sql)).toBe(true);
    }
    // Statements the analysis reads keep their tree.
    expect(Object.keys(statements.find((s) => s.sql.startsWith("create rule"))!.node)).toEqual(["RuleStmt"]);
    expect((statements.find((s) => s.sql.startsWith("update"))!.node as { UpdateStmt: { whereClause?: unknown } }).UpdateStmt.whereClause).toBeDefined();
    expect(statements.find((s) => s.sql.startsWith("insert"))!.node).toEqual({ InsertStmt: {} });
  });

  test("a finding in a later piece of a big section points at its line and column", async () => {
    const inserts = Array.from({ length: 6_000 }, (_, i) => `insert into users values (${i}, 'name ${i} ✓');`);
    const text = `-- safe: before_deploy\n${inserts.join("\n")}\n\n    alter table users drop column name;\n`;
    const findings = await analyzeMigration({ ...parseMigration("0002_m", "m.sql", text), depends: [], dependsLine: null });
    const drop = findings.find((f) => f.rule === "drop-column");
    expect(drop).toBeDefined();
    expect([drop!.line, drop!.column]).toEqual([6_003, 17]);
  });

  test("sections parsed together give each the statements, lines, offsets and trees it has parsed alone", async () => {
    // Every way a section can end: its own semicolon or none, a line comment with no line break after it,
    // multi-byte text before later statements (offsets are bytes), PostgreSQL 18's list locations (IN lists).
    const texts = [
      ...TRICKY.map((sql, i) => `-- safe: always\n${sql}${i % 2 ? ";" : ""}`),
      "select 'ünï ✓' as a; select 2 where 1 in (1, 2, 3) -- no line break after this",
      "\n\n  update t set v = 1 where id in (1, 2);\n-- only a comment after the last statement\n",
      "with x as (select 1) select * from x",
    ];
    const sectionsOf = () => texts.map((sql, i) => ({ section: { sql, line: 3 + i, transaction: true }, file: `${i}.sql` }));
    const together = sectionsOf();
    await parseSections(together);
    for (const [i, alone] of sectionsOf().entries()) {
      const a = await parseSection(alone.section, alone.file);
      const b = await parseSection(together[i].section, together[i].file);
      expect(b.statements).toEqual(a.statements);
      expect(b.statements.map((s) => b.place(s.offset))).toEqual(a.statements.map((s) => a.place(s.offset)));
    }
  });

  test("sections parsed together still name the file and line of a syntax error, and of SQL left open at a section's end", async () => {
    const unterminated = [
      { section: { sql: "create table a (id int);", line: 2, transaction: true }, file: "a.sql" },
      { section: { sql: "create function f() returns int as $$ select 1", line: 2, transaction: true }, file: "b.sql" },
      { section: { sql: "select 2; $$ language sql;", line: 2, transaction: true }, file: "c.sql" },
    ];
    // Joined, b's open dollar quote would run into c: each is parsed alone instead.
    await parseSections(unterminated);
    expect((await parseSection(unterminated[0].section, "a.sql")).statements.map((s) => s.sql)).toEqual(["create table a (id int)"]);
    await expect(parseSection(unterminated[1].section, "b.sql")).rejects.toThrow(/^b\.sql:2: SQL syntax error: unterminated dollar-quoted string/);
    await expect(parseSection(unterminated[2].section, "c.sql")).rejects.toThrow(/^c\.sql:2: SQL syntax error: /);

    const broken = ["create table a (id int);", "create table b (id int);\n\ncreat table c (id int);", "create table d (id int);"]
      .map((sql, i) => ({ section: { sql, line: 4, transaction: true }, file: `${i}.sql` }));
    await parseSections(broken);
    await expect(parseSection(broken[1].section, "1.sql")).rejects.toThrow(/^1\.sql:6: SQL syntax error: syntax error at or near "creat"/);
    expect((await parseSection(broken[2].section, "2.sql")).statements.map((s) => s.sql)).toEqual(["create table d (id int)"]);
  });

  test("a syntax error deep in a big file names its line", async () => {
    const lines = ["create table t (id int);"];
    for (let i = 1; i <= 30_000; i++) lines.push(i === 20_000 ? `insert into t valuez (${i});` : `insert into t values (${i});`);
    const section = { sql: lines.join("\n"), line: 3, transaction: true };
    await expect(parseSection(section, "big.sql")).rejects.toThrow(/^big\.sql:20003: SQL syntax error: syntax error at or near "valuez"/);
  });

  test("batches: every statement once, in order, within the size; a position maps back to the statement and line", () => {
    const statements = Array.from({ length: 50 }, (_, i) => ({ sql: `select ${i}\n  + ${i}`, line: 10 + 2 * i, node: {}, offset: 0 }));
    const batches = statementBatches(statements, 100, 10);
    expect(statementBatches(statements.slice(0, 9), 100, 10).map((b) => b.statements.length)).toEqual(Array(9).fill(1));
    expect(batches.flatMap((b) => b.statements)).toEqual(statements);
    for (const batch of batches) expect(batch.text.length <= 100 || batch.statements.length === 1).toBe(true);
    const batch = batches[1];
    const second = batch.statements[1];
    const position = batch.text.indexOf(second.sql) + second.sql.indexOf("+") + 1;
    expect(statementAt(batch, position)).toEqual({ statement: second, line: second.line + 1 });
  });
});

describe.skipIf(!SERVER_URL)("big migrations against the server", () => {
  /** N INSERTs after a create table; `broken` replaces statement k (1-based among the inserts). */
  function inserts(n: number, broken: Record<number, string> = {}): string {
    const lines = ["create table big_items (id bigint primary key, name text);"];
    for (let i = 1; i <= n; i++) lines.push(broken[i] ?? `insert into big_items (id, name) values (${i}, 'item number ${i} ✓');`);
    return lines.join("\n") + "\n";
  }
  const count = async (url: string) => {
    const db = await open(url);
    return (await db.query<{ n: number }>(`select count(*)::int as n from big_items`).catch(() => [{ n: -1 }]))[0].n;
  };

  test("2 MB of INSERTs (about 21,000 statements) applies", async () => {
    const dir = migrationsDir({ "0001_data": inserts(21_000) });
    const url = await serverDatabaseUrl();
    const run = await cli(dir, url, "--all");
    expectExit(run, 0);
    expect(await count(url)).toBe(21_000);
  });

  test("an error without a position (unique violation) deep in a batch names its statement's line; nothing stays", async () => {
    const dir = migrationsDir({ "0001_data": inserts(15_000, { 12_345: `insert into big_items (id, name) values (7, 'duplicate');` }) });
    const url = await serverDatabaseUrl();
    const run = await cli(dir, url, "--all");
    expectExit(run, 1);
    expect(run.stderr).toMatch(/0001_data\.sql:12346: migration 0001_data failed: duplicate key value/);
    expect(run.stderr).toMatch(/\(statement 12346 of 15001\): nothing of it took effect/);
    expect(await count(url)).toBe(-1);
  });

  test("an error with a position in a later batch names the line within a multi-line statement", async () => {
    const dir = migrationsDir({ "0001_data": inserts(9_000, { 8_000: `insert into big_items (id,\n  no_such_column) values (1, 2);` }) });
    const url = await serverDatabaseUrl();
    const run = await cli(dir, url, "--all");
    expectExit(run, 1);
    expect(run.stderr).toMatch(/0001_data\.sql:8002: migration 0001_data failed: column "no_such_column" of relation "big_items" does not exist/);
  });

  // The 50 MB file of the issue takes minutes on a shared machine: bench/big-file.ts measures it; this proves it applies.
  test.skipIf(!process.env.SAFEMIGRATE_BIG_FILE)("a valid 50 MB file of 533,000 INSERTs applies (SAFEMIGRATE_BIG_FILE=1)", async () => {
    const dir = migrationsDir({ "0001_data": inserts(533_000) });
    const url = await serverDatabaseUrl();
    const run = await cli(dir, url, "--all", "--no-lint");
    expectExit(run, 0);
    expect(await count(url)).toBe(533_000);
  }, 1_800_000);
});

// ----------------------------------------------------------------------------
// Errors that were "unexpected"
// ----------------------------------------------------------------------------

describe.skipIf(!SERVER_URL)("errors that say what is wrong and what to do", () => {
  test("a read-only database (default_transaction_read_only, as on a standby): exit 1, says to use the primary", async () => {
    const url = await serverDatabaseUrl();
    const dir = migrationsDir({ "0001_a": "create table a (id int);" });
    const name = new URL(url).pathname.slice(1);
    const admin = await open(SERVER_URL!);
    // With and without the history table already there.
    for (const historyFirst of [false, true]) {
      if (historyFirst) {
        await admin.exec(`alter database ${name} reset default_transaction_read_only`);
        expectExit(await cli(dir, url, "--all"), 0);
        writeFileSync(join(dir, "0002_b.sql"), "create table b (id int);");
      }
      await admin.exec(`alter database ${name} set default_transaction_read_only = on`);
      const run = await cli(dir, url, "--all");
      expectExit(run, 1);
      expect(run.stderr).toMatch(/read-only/);
      expect(run.stderr).toMatch(/SQLSTATE 25006|the database is read-only/);
      expect(run.stderr).toMatch(/primary|default_transaction_read_only = off/);
      expect(run.stderr).not.toMatch(/unexpected error/);
    }
  });

  test("malformed JSON in the history's depends column names the row and how to fix it (exit 2)", async () => {
    const url = await serverDatabaseUrl();
    const dir = migrationsDir({ "0001_a": "create table a (id int);" });
    expectExit(await cli(dir, url, "--all"), 0);
    const db = await open(url);
    await db.exec(`update safemigrate_history set depends = '["0000_x", ' where id = '0001_a'`);
    const run = await cli(dir, url, "--status");
    expectExit(run, 2);
    expect(run.stderr).toMatch(/safemigrate_history: the row of 0001_a has depends = .*not a JSON array of migration ids/);
    expect(run.stderr).not.toMatch(/unexpected|SyntaxError/);
  });

  for (const [character, encoded] of [["#", "%23"], ["?", "%3F"]]) {
    test(`a password with an unencoded "${character}" says to write it as ${encoded}, without printing the password`, async () => {
      const password = `s3cret${character}Tail42`;
      const base = new URL(SERVER_URL!);
      const url = `postgres://postgres:${password}@${base.host}${base.pathname}`;
      const run = await cli(migrationsDir({ "0001_a": "select 1;" }), url, "--status");
      expectExit(run, 2);
      expect(run.stderr).toContain(`contains "${character}", which must be percent-encoded in a URL (${character} as ${encoded})`);
      expect(run.stderr + run.stdout).not.toContain("s3cret");
      expect(run.stderr + run.stdout).not.toContain("Tail42");
    });
  }
});
