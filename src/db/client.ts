import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { PGlite } from "@electric-sql/pglite";
import type { SQL } from "drizzle-orm";
import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import { type PgDatabase, PgDialect, type PgQueryResultHKT } from "drizzle-orm/pg-core";
import { drizzle as drizzlePglite } from "drizzle-orm/pglite";
import pg from "pg";
import type { Logger } from "../lib/logger.js";
import * as schema from "./schema.js";

/** One Drizzle type for both drivers; code above this file never knows which one it talks to. */
export type Database = PgDatabase<PgQueryResultHKT, typeof schema>;

export interface DatabaseHandle {
  db: Database;
  kind: "pglite" | "postgres";
  /**
   * Runs raw SQL and returns its rows, on either driver. With `name`, Postgres prepares the statement
   * once per connection and reuses its plan: for hot statements whose text never changes (their
   * values are parameters), where planning would cost as much as running.
   */
  query<T extends Record<string, unknown>>(statement: SQL, options?: { name?: string }): Promise<T[]>;
  /** Rejects when the database cannot answer within `timeoutMs`. */
  ping(timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
  /** Runs `fn` while holding an exclusive, instance-wide lock (a Postgres advisory lock). */
  withExclusiveLock<T>(lockId: number, fn: (db: Database) => Promise<T>): Promise<T>;
}

export interface OpenDatabaseOptions {
  /** Postgres URL; when absent, embedded PGlite is used. */
  url?: string | undefined;
  /** PGlite data directory; `memory://` (or undefined with no url) keeps it in memory. */
  dataDir?: string | undefined;
  logger?: Logger;
  /** Postgres pool size. */
  poolSize?: number;
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const rowsOf = <T>(result: unknown): T[] => (result as { rows: T[] }).rows;

export async function openDatabase(options: OpenDatabaseOptions): Promise<DatabaseHandle> {
  return options.url ? openPostgres(options.url, options) : openPglite(options.dataDir, options);
}

async function openPostgres(url: string, options: OpenDatabaseOptions): Promise<DatabaseHandle> {
  const pool = new pg.Pool({
    connectionString: url,
    max: options.poolSize ?? 20,
    // Fail fast while Postgres is down (readyz goes red) and reconnect by itself when it is back.
    connectionTimeoutMillis: 3000,
    idleTimeoutMillis: 30_000,
  });
  // An idle client losing its connection must not crash the process; the pool replaces it.
  pool.on("error", (error) => options.logger?.warn({ err: error.message }, "postgres connection lost"));
  const db = drizzlePg(pool, { schema }) as unknown as Database;
  const dialect = new PgDialect();
  return {
    db,
    kind: "postgres",
    query: async (statement, queryOptions) => {
      if (!queryOptions?.name) return rowsOf(await db.execute(statement));
      const { sql: text, params } = dialect.sqlToQuery(statement);
      return rowsOf(await pool.query({ name: queryOptions.name, text, values: params as unknown[] }));
    },
    ping: async (timeoutMs = 2000) => {
      await withTimeout(pool.query("select 1"), timeoutMs, "Postgres");
    },
    close: () => pool.end(),
    withExclusiveLock: async (lockId, fn) => {
      const client = await pool.connect();
      try {
        await client.query("select pg_advisory_lock($1)", [lockId]);
        try {
          return await fn(drizzlePg(client, { schema }) as unknown as Database);
        } finally {
          await client.query("select pg_advisory_unlock($1)", [lockId]);
        }
      } finally {
        client.release();
      }
    },
  };
}

async function openPglite(
  dataDir: string | undefined,
  options: OpenDatabaseOptions,
): Promise<DatabaseHandle> {
  const inMemory = !dataDir || dataDir === "memory://";
  let releaseLock = () => {};
  if (!inMemory) {
    fs.mkdirSync(dataDir, { recursive: true });
    releaseLock = lockDataDir(dataDir);
  }
  let client: PGlite;
  try {
    client = inMemory ? new PGlite() : new PGlite(path.join(dataDir, "pgdata"));
    await client.waitReady;
  } catch (error) {
    releaseLock();
    throw error;
  }
  const db = drizzlePglite(client, { schema }) as unknown as Database;
  options.logger?.debug({ dataDir: inMemory ? "memory" : dataDir }, "embedded postgres (PGlite) ready");
  return {
    db,
    kind: "pglite",
    query: async (statement) => rowsOf(await db.execute(statement)),
    ping: async (timeoutMs = 2000) => {
      await withTimeout(client.query("select 1"), timeoutMs, "PGlite");
    },
    close: async () => {
      await client.close();
      releaseLock();
    },
    // PGlite is a single connection inside this process: serialising through it is already exclusive.
    withExclusiveLock: (_lockId, fn) => fn(db),
  };
}

/**
 * PGlite runs inside this process; two processes opening one data directory would corrupt it. A lock
 * file names the holder (host and pid) and is refreshed every few seconds. A second process is
 * refused while the holder is alive: on this host, by its pid; on another host (a second container
 * on a shared volume, where every server is pid 1), by a fresh heartbeat. A stale file left by a
 * crash is taken over.
 */
const HEARTBEAT_MS = 5000;
const STALE_MS = 3 * HEARTBEAT_MS;

interface LockHolder {
  pid: number;
  host: string;
  heartbeat: number;
}

function lockDataDir(dataDir: string): () => void {
  const lockFile = path.join(dataDir, "tollgate.pid");
  const me = () => JSON.stringify({ pid: process.pid, host: os.hostname(), heartbeat: Date.now() });
  const ours = (holder: LockHolder | undefined) =>
    holder?.pid === process.pid && holder.host === os.hostname();
  // Exclusive create, so two processes starting at once cannot both take the lock. A stale file is
  // removed and the create tried again; if another process wins that race, it holds the lock.
  for (let attempt = 0; ; attempt++) {
    try {
      fs.writeFileSync(lockFile, me(), { flag: "wx" });
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      const holder = readHolder(lockFile);
      if (attempt > 0 || (holder && isHeld(holder))) {
        const who = holder ? describeHolder(holder) : "another process";
        throw new Error(
          `The embedded database in ${dataDir} is in use by ${who}. Stop it first, or set DATABASE_URL ` +
            "to share a real Postgres between processes.",
        );
      }
      fs.rmSync(lockFile, { force: true });
    }
  }
  const timer = setInterval(() => {
    try {
      if (ours(readHolder(lockFile))) fs.writeFileSync(lockFile, me());
    } catch {
      // The directory went away; the database will report it.
    }
  }, HEARTBEAT_MS);
  timer.unref();
  return () => {
    clearInterval(timer);
    if (ours(readHolder(lockFile))) fs.rmSync(lockFile, { force: true });
  };
}

function describeHolder(holder: LockHolder): string {
  return holder.host === os.hostname() ? `process ${holder.pid}` : `process ${holder.pid} on ${holder.host}`;
}

function readHolder(lockFile: string): LockHolder | undefined {
  let text: string;
  try {
    text = fs.readFileSync(lockFile, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  try {
    const parsed = JSON.parse(text) as LockHolder;
    return typeof parsed.pid === "number" ? parsed : undefined;
  } catch {
    return undefined; // unreadable: treat as stale
  }
}

function isHeld(holder: LockHolder): boolean {
  if (holder.host !== os.hostname()) return Date.now() - holder.heartbeat < STALE_MS;
  // Same host: our own pid means a previous life of this process slot (a restarted container).
  return holder.pid !== process.pid && isAlive(holder.pid);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}
