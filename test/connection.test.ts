/**
 * Connections as PostgreSQL users expect them: the libpq variables (PGHOST,
 * PGPASSWORD, PGSSLMODE, .pgpass, ...), sslmode against a real TLS server,
 * `.env` under Bun and Deno, --wait for a server that comes up later, and a
 * role that may not create the history table.
 *
 * The TLS server is a second cluster this file creates (pg_createcluster on a
 * free port, ssl = on with a self-signed certificate made by openssl) and
 * drops afterwards; the machine's main cluster is only connected to.
 */
import { afterAll, afterEach, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { chmodSync, existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import { connectPostgres, libpqUrl, postgresOptions } from "../safemigrate.ts";
import { appliedIds, cleanup, type CliRun, migrationsDir, open, runCli, SERVER_URL, serverDatabaseUrl, tempDir } from "./helpers.ts";

// Creating a cluster and spawning CLIs takes a while on a loaded machine.
setDefaultTimeout(120_000);

afterEach(cleanup);

const shown = (run: CliRun) => `exit ${run.code}\n--- stdout ---\n${run.stdout}\n--- stderr ---\n${run.stderr}`;
function expectExit(run: CliRun, code: number): void {
  if (run.code !== code) throw new Error(`expected exit ${code}, got ${shown(run)}`);
}

const ONE_TABLE = { "0001_t": "-- safe: before_deploy\ncreate table t (id int);\n" };
/** Records whether the migration's own session used SSL. */
const SSL_PROBE = {
  "0001_probe": "-- safe: always\ncreate table probe as select ssl, current_user as role from pg_stat_ssl where pid = pg_backend_pid();\n",
};

/** Runs a command and fails with its output when it exits non-zero. */
async function sh(command: string[]): Promise<string> {
  const child = Bun.spawn(command, { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  if (code !== 0) throw new Error(`${command.join(" ")} exited ${code}:\n${out}\n${err}`);
  return out;
}

function freePort(): number {
  const server = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = server.port;
  server.stop(true);
  return port;
}

// ----------------------------------------------------------------------------
// The libpq environment, on the main server (no SSL there)
// ----------------------------------------------------------------------------

describe("the URL libpq's environment makes", () => {
  test("no URL and none of the variables: none (the embedded default)", () => {
    expect(libpqUrl(null, { PGAPPNAME: "x", HOME: "/nowhere" })).toBeNull();
  });
  test("PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, PGAPPNAME, PGCONNECT_TIMEOUT", () => {
    const url = new URL(libpqUrl(null, {
      PGHOST: "db.internal", PGPORT: "6543", PGUSER: "deploy", PGPASSWORD: "p@ss:word", PGDATABASE: "app",
      PGSSLMODE: "verify-full", PGAPPNAME: "release", PGCONNECT_TIMEOUT: "3",
    })!);
    expect([url.hostname, url.port, url.username, decodeURIComponent(url.password), url.pathname]).toEqual(["db.internal", "6543", "deploy", "p@ss:word", "/app"]);
    expect(Object.fromEntries(url.searchParams)).toEqual({ sslmode: "verify-full", application_name: "release", connect_timeout: "3" });
  });
  test("a socket directory in PGHOST becomes libpq's ?host=, which the driver connects through", () => {
    const url = libpqUrl(null, { PGHOST: "/var/run/postgresql", PGUSER: "postgres" })!;
    expect(new URL(url).searchParams.get("host")).toBe("/var/run/postgresql");
    expect(postgresOptions(url).options.path).toBe("/var/run/postgresql/.s.PGSQL.5432");
  });
  test("a URL keeps what it says; the variables fill only what it leaves out", () => {
    const url = new URL(libpqUrl("postgres://app@h/db?sslmode=disable", { PGUSER: "other", PGPASSWORD: "pw", PGSSLMODE: "require", PGDATABASE: "x" })!);
    expect([url.username, url.password, url.pathname, url.searchParams.get("sslmode")]).toEqual(["app", "pw", "/db", "disable"]);
  });
  test("the password comes from PGPASSFILE when nothing else gives one, with * and escaped colons", () => {
    const file = join(tempDir(), "pgpass");
    writeFileSync(file, "# comment\nother:5432:*:u:wrong\nh:5432:db\\:1:*:right\\:one\n");
    const url = new URL(libpqUrl("postgres://u@h:5432/db%3A1", { PGPASSFILE: file })!);
    expect(decodeURIComponent(url.password)).toBe("right:one");
  });
});

describe.skipIf(!SERVER_URL)("PG* variables on the command line", () => {
  const server = new URL(SERVER_URL ?? "postgres://x");
  const pgEnv = (database: string) => ({ PGHOST: server.hostname, PGPORT: server.port || "5432", PGUSER: decodeURIComponent(server.username), PGDATABASE: database });

  test("with no URL, PGHOST/PGPORT/PGUSER/PGDATABASE choose the server, as psql does; nothing embedded is created", async () => {
    const url = await serverDatabaseUrl();
    const cwd = tempDir();
    const run = await runCli(["--all", "--dir", migrationsDir(ONE_TABLE)], { cwd, env: pgEnv(new URL(url).pathname.slice(1)) });
    expectExit(run, 0);
    expect(run.stderr).not.toContain("embedded");
    expect(await appliedIds(await open(url))).toEqual(["0001_t"]);
    expect(existsSync(join(cwd, ".safemigrate"))).toBe(false);
  });

  test("with none of them set, the embedded default is used and says so", async () => {
    const run = await runCli(["--status", "--dir", migrationsDir(ONE_TABLE)], { cwd: tempDir() });
    expectExit(run, 0);
    expect(run.stderr).toContain(
      "no DATABASE_URL; using the embedded PGlite database in .safemigrate/ (neither --database-url, DATABASE_URL nor any of PGHOST, PGHOSTADDR, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE is set)",
    );
  });

  test("DATABASE_URL wins over the PG* variables", async () => {
    const url = await serverDatabaseUrl();
    const run = await runCli(["--all", "--dir", migrationsDir(ONE_TABLE)], { env: { DATABASE_URL: url, ...pgEnv("no_such_database") } });
    expectExit(run, 0);
    expect(await appliedIds(await open(url))).toEqual(["0001_t"]);
  });

  test("sslmode=require against a server without SSL says that the server has no SSL", async () => {
    const url = await serverDatabaseUrl();
    const run = await runCli(["--status", "--dir", migrationsDir(ONE_TABLE)], { env: { ...pgEnv(new URL(url).pathname.slice(1)), PGSSLMODE: "require" } });
    expectExit(run, 1);
    expect(run.stderr).toContain("the server does not accept SSL connections, and sslmode=require requires SSL");
  });

  for (const [name, env, message] of [
    ["in the URL", { DATABASE_URL: "postgres://u@127.0.0.1/db?sslmode=on" }, `sslmode "on" in postgres://u@127.0.0.1/db is not one of disable, allow, prefer, require, verify-ca, verify-full, no-verify`],
    ["in PGSSLMODE", { PGSSLMODE: "required", PGHOST: "127.0.0.1" }, `PGSSLMODE "required" is not one of disable, allow, prefer, require, verify-ca, verify-full, no-verify`],
  ] as const) {
    test(`an unknown sslmode ${name} is invalid input`, async () => {
      const run = await runCli(["--status", "--dir", migrationsDir(ONE_TABLE)], { env });
      expectExit(run, 2);
      expect(run.stderr).toContain(`safemigrate: error: ${message}`);
    });
  }
});

describe.skipIf(!SERVER_URL)("closing a session", () => {
  // close() returns once the Terminate message is written, without waiting for the server to hang up:
  // the server must still see the session end, in a process that goes on living (a fleet, the API).
  test("an idle session's close ends it on the server, though close does not wait for that", async () => {
    const url = await serverDatabaseUrl();
    const db = await connectPostgres(url);
    const [{ pid }] = await db.query<{ pid: number }>("select pg_backend_pid() as pid");
    await db.close();
    const watch = await open(url);
    let alive = true;
    for (let waited = 0; alive && waited < 30_000; waited += 50) {
      alive = (await watch.query<{ n: number }>(`select count(*)::int as n from pg_stat_activity where pid = ${pid}`))[0].n > 0;
      if (alive) await Bun.sleep(50);
    }
    expect(alive).toBe(false);
  });
});

// ----------------------------------------------------------------------------
// A role without CREATE on public (PostgreSQL 15's default for non-owners)
// ----------------------------------------------------------------------------

describe.skipIf(!SERVER_URL)("a role that may not create the history table", () => {
  const role = `sm_noperm_${process.pid}`;
  let admin: postgres.Sql;
  beforeAll(async () => {
    admin = postgres(SERVER_URL!, { max: 1, onnotice: () => {} });
    await admin.unsafe(`drop role if exists ${role}`);
    await admin.unsafe(`create role ${role} login`);
  });
  afterAll(async () => {
    await cleanup();
    await admin.unsafe(`drop role if exists ${role}`);
    await admin.end();
  });

  test("gets a message naming the history table, its schema and the grant that fixes it", async () => {
    const url = new URL(await serverDatabaseUrl());
    url.username = role;
    const run = await runCli(["--all", "--dir", migrationsDir(ONE_TABLE), "--database-url", url.toString()]);
    expectExit(run, 1);
    expect(run.stderr).toContain(`cannot create the history table safemigrate_history (and safemigrate_history_lock) in schema "public"`);
    expect(run.stderr).toContain(`grant create on schema public to ${role};`);
    expect(run.stderr).toContain("--history-table");
    expect(run.stderr).not.toContain("unexpected error");

    // The fix it names works.
    const db = await open(url.toString().replace(`${role}@`, `${decodeURIComponent(new URL(SERVER_URL!).username)}@`));
    await db.exec(`grant create on schema public to ${role}`);
    expectExit(await runCli(["--all", "--dir", migrationsDir(ONE_TABLE), "--database-url", url.toString()]), 0);
    expect(await appliedIds(db)).toEqual(["0001_t"]);
    await db.exec(`drop owned by ${role}`);
  });
});

// ----------------------------------------------------------------------------
// .env, the same under Bun and Deno
// ----------------------------------------------------------------------------

const DENO = Bun.which("deno");

describe.skipIf(!SERVER_URL)(".env files", () => {
  for (const runtime of ["bun", "deno"] as const) {
    test.skipIf(runtime === "deno" && !DENO)(`${runtime}: DATABASE_URL from .env in the current directory is the database migrated`, async () => {
      const url = await serverDatabaseUrl();
      const cwd = tempDir();
      writeFileSync(join(cwd, ".env"), `# the app's settings\nexport DATABASE_URL="${url}"\n`);
      const run = await runCli(["--all", "--dir", migrationsDir(ONE_TABLE)], { cwd, runtime });
      expectExit(run, 0);
      expect(run.stdout).toContain(`on ${url}`);
      expect(await appliedIds(await open(url))).toEqual(["0001_t"]);
      expect(existsSync(join(cwd, ".safemigrate"))).toBe(false);
    });
  }

  for (const runtime of ["bun", "deno"] as const) {
    test.skipIf(runtime === "deno" && !DENO)(`${runtime}: .env.local wins over .env, and the real environment over both`, async () => {
      const [fromEnv, fromLocal, fromShell] = [await serverDatabaseUrl(), await serverDatabaseUrl(), await serverDatabaseUrl()];
      const cwd = tempDir();
      writeFileSync(join(cwd, ".env"), `DATABASE_URL=${fromEnv}\n`);
      writeFileSync(join(cwd, ".env.local"), `DATABASE_URL='${fromLocal}'\n`);
      // bun test sets NODE_ENV=test, under which (as in Bun) .env.local is not read.
      const env = { NODE_ENV: "development" };
      const local = await runCli(["--all", "--dir", migrationsDir(ONE_TABLE)], { cwd, runtime, env });
      expectExit(local, 0);
      expect(await appliedIds(await open(fromLocal))).toEqual(["0001_t"]);
      const shell = await runCli(["--all", "--dir", migrationsDir(ONE_TABLE)], { cwd, runtime, env: { ...env, DATABASE_URL: fromShell } });
      expectExit(shell, 0);
      expect(await appliedIds(await open(fromShell))).toEqual(["0001_t"]);
      expect(await appliedIds(await open(fromEnv))).toEqual([]);
    });
  }
});

// ----------------------------------------------------------------------------
// A real TLS server: a cluster of our own with a self-signed certificate
// ----------------------------------------------------------------------------

const HAVE_CLUSTER_TOOLS = Boolean(Bun.which("pg_createcluster") && Bun.which("openssl")) && process.getuid?.() === 0;

describe.skipIf(!HAVE_CLUSTER_TOOLS)("a TLS server (a cluster this test creates)", () => {
  const cluster = `sm_tls_${process.pid}`;
  const port = freePort();
  const config = `/etc/postgresql/15/${cluster}`;
  const password = "s3cret-for-tls-test";
  let certFile = "";
  let database = "";

  const psql = (sql: string, db = "postgres") =>
    sh(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "-d", db, "-Atc", sql]);
  const start = () => sh(["pg_ctlcluster", "--skip-systemctl-redirect", "15", cluster, "start"]);
  const stop = () => sh(["pg_ctlcluster", "--skip-systemctl-redirect", "15", cluster, "stop", "-m", "fast"]);
  const url = (host: string, query: string, user = "postgres") => `postgres://${user}@${host}:${port}/${database}${query}`;
  /** Whether the session that ran the probe migration used SSL. */
  const usedSsl = async (): Promise<boolean> => (await psql("select ssl from probe", database)).trim() === "t";

  beforeAll(async () => {
    const dir = tempDir("safemigrate-tls-");
    certFile = join(dir, "server.crt");
    await sh([
      "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
      "-addext", "subjectAltName=DNS:localhost", "-keyout", join(dir, "server.key"), "-out", certFile,
    ]);
    await sh(["pg_dropcluster", "--stop", "15", cluster]).catch(() => {});
    await sh(["pg_createcluster", "15", cluster, "-p", String(port), "--", "--auth-local=trust", "--auth-host=trust"]);
    await sh(["cp", certFile, join(dir, "server.key"), config]);
    certFile = `${config}/server.crt`; // the temporary directory goes after the first test
    await sh(["chown", "postgres:postgres", `${config}/server.crt`, `${config}/server.key`]);
    chmodSync(`${config}/server.key`, 0o600);
    writeFileSync(`${config}/conf.d/safemigrate-test.conf`, [
      "listen_addresses = '127.0.0.1'", "ssl = on", `ssl_cert_file = '${config}/server.crt'`, `ssl_key_file = '${config}/server.key'`,
      "fsync = off", "shared_buffers = 16MB", "",
    ].join("\n"));
    // One role logs in by password; everyone else is trusted.
    writeFileSync(`${config}/pg_hba.conf`, [
      "local all all trust", "host all sm_pw 127.0.0.1/32 scram-sha-256", "host all all 127.0.0.1/32 trust", "",
    ].join("\n"));
    await start();
    await psql(`create role sm_pw login password '${password}'`);
  });
  afterAll(async () => {
    await cleanup();
    await sh(["pg_dropcluster", "--stop", "15", cluster]).catch(() => {});
  });
  afterEach(async () => {
    if (database) await psql(`drop database if exists ${database} with (force)`).catch(() => {});
  });
  /** A fresh database on the TLS cluster for one test. */
  const freshDatabase = async () => {
    database = `t_${Math.random().toString(36).slice(2, 10)}`;
    await psql(`create database ${database} owner sm_pw`);
  };

  const migrate = (databaseUrl: string, env: Record<string, string> = {}) =>
    runCli(["--all", "--dir", migrationsDir(SSL_PROBE), ...(databaseUrl ? ["--database-url", databaseUrl] : [])], { env });

  for (const [mode, ssl] of [["require", true], ["no-verify", true], ["prefer", true], ["allow", true], ["disable", false], ["", true]] as const) {
    test(`sslmode=${mode || "(none: libpq's prefer)"} connects ${ssl ? "with" : "without"} SSL`, async () => {
      await freshDatabase();
      const run = await migrate(url("127.0.0.1", mode ? `?sslmode=${mode}` : ""));
      expectExit(run, 0);
      expect(await usedSsl()).toBe(ssl);
    });
  }

  test("verify-full with the server's certificate as sslrootcert connects by the certificate's host name", async () => {
    await freshDatabase();
    expectExit(await migrate(url("localhost", `?sslmode=verify-full&sslrootcert=${certFile}`)), 0);
    expect(await usedSsl()).toBe(true);
  });

  test("verify-full refuses a host name the certificate does not name; verify-ca accepts it", async () => {
    await freshDatabase();
    const full = await migrate(url("127.0.0.1", `?sslmode=verify-full&sslrootcert=${certFile}`));
    expectExit(full, 1);
    expect(full.stderr).toContain("the server's SSL certificate could not be verified");
    expectExit(await migrate(url("127.0.0.1", `?sslmode=verify-ca&sslrootcert=${certFile}`)), 0);
    expect(await usedSsl()).toBe(true);
  });

  test("verify-full without the CA says how to give it (PGSSLROOTCERT works too)", async () => {
    await freshDatabase();
    const run = await migrate(url("localhost", "?sslmode=verify-full"));
    expectExit(run, 1);
    expect(run.stderr).toContain("give its CA with sslrootcert=<file> (or PGSSLROOTCERT), or use sslmode=require");
    expect(run.stderr).not.toMatch(/\n\s+at /);
    expectExit(await migrate(url("localhost", "?sslmode=verify-full"), { PGSSLROOTCERT: certFile }), 0);
  });

  test("only PG* variables: PGPASSWORD logs in by password over SSL (PGSSLMODE=require), and is never printed", async () => {
    await freshDatabase();
    const env = { PGHOST: "127.0.0.1", PGPORT: String(port), PGUSER: "sm_pw", PGDATABASE: database, PGSSLMODE: "require" };
    expectExit(await migrate("", { ...env, PGPASSWORD: password }), 0);
    expect(await usedSsl()).toBe(true);
    const wrong = await runCli(["--status", "--dir", migrationsDir(SSL_PROBE)], { env: { ...env, PGPASSWORD: "wrong-password-123" } });
    expectExit(wrong, 1);
    expect(wrong.stderr).toContain("password authentication failed");
    expect(wrong.stdout + wrong.stderr).not.toContain("wrong-password-123");
  });

  test("the password from a .pgpass file (PGPASSFILE)", async () => {
    await freshDatabase();
    const file = join(tempDir(), "pgpass");
    writeFileSync(file, `127.0.0.1:${port}:*:sm_pw:${password}\n`, { mode: 0o600 });
    expectExit(await migrate(url("127.0.0.1", "?sslmode=require", "sm_pw"), { PGPASSFILE: file }), 0);
    expect((await psql("select role from probe", database)).trim()).toBe("sm_pw");
  });

  test("--wait: a run started before the server waits for it to come up, then migrates", async () => {
    await freshDatabase();
    await stop();
    try {
      const child = Bun.spawn([process.execPath, join(import.meta.dir, "..", "safemigrate.ts"), "--all", "--wait", "2m",
        "--dir", migrationsDir(SSL_PROBE), "--database-url", url("127.0.0.1", "")], { stdout: "pipe", stderr: "pipe", env: { ...process.env, NO_COLOR: "1" } });
      const stderr = new Response(child.stderr).text();
      // It is waiting (the server is down) before the server starts.
      await Bun.sleep(1_500);
      expect(child.exitCode).toBeNull();
      await start();
      const [code, out, err] = await Promise.all([child.exited, new Response(child.stdout).text(), stderr]);
      if (code !== 0) throw new Error(`exit ${code}\n${out}\n${err}`);
      expect(err).toContain(`waiting up to 2m for postgres://postgres@127.0.0.1:${port}/${database} to accept connections`);
      expect(await usedSsl()).toBe(true);
    } finally {
      await start().catch(() => {});
    }
  });

  test("--wait gives up after its time with the connection error", async () => {
    const closed = freePort();
    const run = await runCli(["--status", "--wait", "1s", "--dir", migrationsDir(SSL_PROBE), "--database-url", `postgres://postgres@127.0.0.1:${closed}/x`]);
    expectExit(run, 1);
    expect(run.stderr).toContain("connection refused");
    expect(run.stderr).toContain("(waited 1s with --wait)");
  });
});
