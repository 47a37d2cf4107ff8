/**
 * Servers a test starts for itself and removes afterwards: a PgBouncer in
 * transaction pooling mode in front of the test server, and an extra
 * PostgreSQL cluster on a port of its own (to restart, to configure as a
 * test needs). The machine's main cluster is never restarted or reconfigured.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";

/** A TCP port nothing listens on now. */
export async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

async function waitForServer(url: string, seconds = 60): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const sql = postgres(url, { max: 1, connect_timeout: 2, onnotice: () => {} });
    try {
      await sql`select 1`;
      return;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await Bun.sleep(200);
    } finally {
      await sql.end({ timeout: 1 }).catch(() => {});
    }
  }
}

export interface Pooler {
  /** The same database reached through the pooler. */
  urlFor(databaseUrl: string): string;
  stop(): Promise<void>;
}

/** PgBouncer (Debian's package) on a loopback port, transaction pooling, in front of `serverUrl`'s server. */
export async function startPgbouncer(serverUrl: string): Promise<Pooler> {
  const server = new URL(serverUrl);
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "safemigrate-pgbouncer-"));
  writeFileSync(join(dir, "userlist.txt"), `"${decodeURIComponent(server.username || "postgres")}" ""\n`);
  writeFileSync(
    join(dir, "pgbouncer.ini"),
    [
      "[databases]",
      `* = host=${server.hostname} port=${server.port || 5432}`,
      "[pgbouncer]",
      "listen_addr = 127.0.0.1",
      `listen_port = ${port}`,
      "unix_socket_dir =",
      "auth_type = trust",
      `auth_file = ${join(dir, "userlist.txt")}`,
      "pool_mode = transaction",
      "max_client_conn = 500",
      "default_pool_size = 8",
      "ignore_startup_parameters = extra_float_digits",
      `logfile = ${join(dir, "pgbouncer.log")}`,
    ].join("\n") + "\n",
  );
  // PgBouncer refuses to run as root.
  execFileSync("chown", ["-R", "postgres", dir]);
  chmodSync(dir, 0o755);
  const child = Bun.spawn(["runuser", "-u", "postgres", "--", "pgbouncer", join(dir, "pgbouncer.ini")], {
    stdout: "ignore",
    stderr: "ignore",
  });
  const urlFor = (databaseUrl: string) => {
    const url = new URL(databaseUrl);
    url.hostname = "127.0.0.1";
    url.port = String(port);
    return url.toString();
  };
  await waitForServer(urlFor(serverUrl), 30);
  return {
    urlFor,
    stop: async () => {
      child.kill("SIGTERM");
      await child.exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface Cluster {
  url: string;
  createDatabase(name: string): Promise<string>;
  /** `pg_ctlcluster restart -m fast`: every session is ended, as in a failover or a crash-restart. */
  restart(): Promise<void>;
  drop(): Promise<void>;
}

const MAJOR = () => readdirSync("/etc/postgresql").sort().at(-1)!;

/** A new cluster of the machine's PostgreSQL on a free port, trust auth, started; `drop()` removes it. */
export async function startCluster(purpose: string): Promise<Cluster> {
  const name = `sm_${purpose}_${process.pid}`;
  const port = await freePort();
  const major = MAJOR();
  execFileSync("pg_createcluster", [major, name, "-p", String(port), "--start", "--", "--auth=trust"], { stdio: "ignore" });
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  await waitForServer(url);
  return {
    url,
    createDatabase: async (db: string) => {
      const sql = postgres(url, { max: 1, onnotice: () => {} });
      await sql.unsafe(`create database ${db}`);
      await sql.end();
      return `postgres://postgres@127.0.0.1:${port}/${db}`;
    },
    restart: async () => {
      execFileSync("pg_ctlcluster", ["--skip-systemctl-redirect", major, name, "restart", "-m", "fast"], { stdio: "ignore" });
      await waitForServer(url);
    },
    drop: async () => {
      execFileSync("pg_dropcluster", [major, name, "--stop"], { stdio: "ignore" });
    },
  };
}
