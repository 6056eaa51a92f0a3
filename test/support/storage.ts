import { randomBytes } from "node:crypto";
import pg from "pg";
import { type DatabaseHandle, openDatabase } from "../../src/db/client.js";
import { runMigrations } from "../../src/db/migrate.js";

/**
 * Storage for tests. Every storage test runs on embedded PGlite, and also on real Postgres when
 * DATABASE_URL is set (CI sets it); every Redis-backed twin runs when REDIS_URL is set. Tests are
 * the one place besides src/lib/env.ts that read the environment.
 */
const postgresUrl = process.env.DATABASE_URL || undefined;
const redisUrl = process.env.REDIS_URL || undefined;

export type DatabaseMode = "pglite" | "postgres";
export const databaseModes: DatabaseMode[] = postgresUrl ? ["pglite", "postgres"] : ["pglite"];
export const hasRedis = Boolean(redisUrl);

export function requireRedisUrl(): string {
  if (!redisUrl) throw new Error("REDIS_URL is not set");
  return redisUrl;
}

export function requirePostgresUrl(): string {
  if (!postgresUrl) throw new Error("DATABASE_URL is not set");
  return postgresUrl;
}

/** A unique Redis key prefix, so concurrent test files never see each other's keys. */
export function uniquePrefix(): string {
  return `tgtest:${randomBytes(6).toString("hex")}:`;
}

export interface TestDatabase {
  handle: DatabaseHandle;
  /** Connection URL (postgres mode only): for tests that start a second process on the same data. */
  url: string | undefined;
  drop(): Promise<void>;
}

/** A fresh, migrated database: in-memory PGlite, or a new Postgres database dropped afterwards. */
export async function createTestDatabase(mode: DatabaseMode): Promise<TestDatabase> {
  if (mode === "pglite") {
    const handle = await openDatabase({ dataDir: "memory://" });
    await runMigrations(handle);
    return { handle, url: undefined, drop: () => handle.close() };
  }
  const admin = requirePostgresUrl();
  const name = `tollgate_test_${randomBytes(6).toString("hex")}`;
  await withAdmin(admin, (client) => client.query(`create database ${name}`));
  const url = new URL(admin);
  url.pathname = `/${name}`;
  const handle = await openDatabase({ url: url.toString(), poolSize: 10 });
  await runMigrations(handle);
  return {
    handle,
    url: url.toString(),
    drop: async () => {
      await handle.close().catch(() => {});
      await withAdmin(admin, (client) => client.query(`drop database if exists ${name} with (force)`));
    },
  };
}

async function withAdmin<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}
