import { randomBytes } from "node:crypto";
import pg from "pg";
import { onCleanup } from "./cleanup.js";

/** Postgres for the benchmarks: DATABASE_URL names the server (and a database to connect to for admin). */
export const adminUrl = process.env.DATABASE_URL || "postgres://postgres@127.0.0.1:5432/postgres";

export interface BenchDatabase {
  name: string;
  url: string;
  drop(): Promise<void>;
}

export async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** A fresh database `tollgate_bench_<random>` on the same server, dropped when the benchmark ends. */
export async function createBenchDatabase(): Promise<BenchDatabase> {
  const host = new URL(adminUrl).hostname;
  if (!["127.0.0.1", "localhost", "::1", "[::1]"].includes(host)) {
    throw new Error(`DATABASE_URL must point at this machine (loopback), not ${host}`);
  }
  const name = `tollgate_bench_${randomBytes(5).toString("hex")}`;
  await withClient(adminUrl, (client) => client.query(`create database ${name}`));
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  let dropped = false;
  const drop = async () => {
    if (dropped) return;
    dropped = true;
    await withClient(adminUrl, (client) => client.query(`drop database if exists ${name} with (force)`));
  };
  onCleanup(`drop database ${name}`, drop);
  return { name, url: url.toString(), drop };
}

export async function serverVersion(url: string): Promise<string> {
  return withClient(url, async (client) => {
    const { rows } = await client.query<{ v: string }>("select current_setting('server_version') as v");
    return rows[0]?.v ?? "?";
  });
}
