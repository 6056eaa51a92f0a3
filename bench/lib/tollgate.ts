import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { freePort, type Server, spawnServer } from "../harness.js";
import { onCleanup } from "./cleanup.js";
import { type BenchDatabase, createBenchDatabase } from "./postgres.js";
import { deleteOrgKeys, redisUrl } from "./redis.js";
import { log } from "./report.js";

export const OPERATOR_KEY = "bench-operator-key-0123456789abcdef";
export const operatorHeaders = {
  authorization: `Bearer ${OPERATOR_KEY}`,
  "content-type": "application/json",
};

export interface Tollgate extends Server {
  /** One JSON request with the operator key; throws unless the status is the expected one. */
  call<T = unknown>(method: string, path: string, body?: unknown, expect?: number): Promise<T>;
  /** The raw text of a response (for the baseline server's body). */
  text(method: string, path: string, body?: unknown): Promise<string>;
}

export interface StartOptions {
  databaseUrl: string;
  redisUrl?: string | undefined;
  /** Catalog file, relative to the repository (default: the kolekt demo catalog). */
  catalog?: string;
  /** When set, the server runs under `node --cpu-prof` and writes its profile here on exit. */
  profileDir?: string | undefined;
  /** Another built Tollgate to run (e.g. a branch checked out elsewhere, to compare); default this one. */
  dir?: string | undefined;
}

const repository = path.resolve(import.meta.dirname, "../..");

/**
 * The built server (`bin/tollgate.js start`, run `npm run build` first) as a real process, in
 * Postgres (+ Redis) mode, logging warnings only. Stopped when the benchmark ends.
 */
export async function startTollgate(options: StartOptions): Promise<Tollgate> {
  const dir = options.dir ?? repository;
  if (!fs.existsSync(path.join(dir, "dist/cli.js"))) {
    throw new Error(
      `Tollgate is not built in ${dir}: run \`npm run build\` first (the npm bench scripts do).`,
    );
  }
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "tollgate-bench-"));
  const nodeArgs = options.profileDir ? ["--cpu-prof", `--cpu-prof-dir=${options.profileDir}`] : [];
  // Extra flags for the server's node, e.g. `--perf-basic-prof` to read a `perf record` of it.
  nodeArgs.push(...(process.env.BENCH_NODE_ARGS ?? "").split(" ").filter(Boolean));
  const server = await spawnServer(
    [...nodeArgs, path.join(dir, "bin/tollgate.js"), "start"],
    {
      DATABASE_URL: options.databaseUrl,
      ...(options.redisUrl ? { REDIS_URL: options.redisUrl } : {}),
      TOLLGATE_DATA_DIR: dataDir,
      TOLLGATE_LOG_LEVEL: "warn",
      TOLLGATE_ADMIN_KEY: OPERATOR_KEY,
      TOLLGATE_CATALOG: path.resolve(repository, options.catalog ?? "catalogs/kolekt.yaml"),
      // How consuming checks are acknowledged (docs/operations.md): to bench either mode.
      ...(process.env.TOLLGATE_CHECK_ACK ? { TOLLGATE_CHECK_ACK: process.env.TOLLGATE_CHECK_ACK } : {}),
      // Server processes (docs/operations.md): the benchmarks report with how many they ran.
      ...(process.env.TOLLGATE_WORKERS ? { TOLLGATE_WORKERS: process.env.TOLLGATE_WORKERS } : {}),
    },
    await freePort(),
  );
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await server.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  };
  const unregister = onCleanup("stop tollgate", stop);
  const request = async (method: string, p: string, body?: unknown) =>
    fetch(server.url + p, {
      method,
      headers: operatorHeaders,
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
  return {
    url: server.url,
    pid: server.pid,
    stop: async () => {
      unregister();
      await stop();
    },
    async call<T>(method: string, p: string, body?: unknown, expect?: number): Promise<T> {
      const res = await request(method, p, body);
      const text = await res.text();
      if (expect !== undefined ? res.status !== expect : !res.ok) {
        throw new Error(`${method} ${p} answered ${res.status}: ${text}`);
      }
      return (text ? JSON.parse(text) : undefined) as T;
    },
    async text(method: string, p: string, body?: unknown): Promise<string> {
      const res = await request(method, p, body);
      const text = await res.text();
      if (!res.ok) throw new Error(`${method} ${p} answered ${res.status}: ${text}`);
      return text;
    },
  };
}

/**
 * The hot-path benchmarks' setup: a fresh database, Tollgate on it in Postgres + Redis mode, and
 * `orgCount` orgs on the kolekt catalog's pay_as_you_go plan (unlimited), their Redis keys deleted at
 * the end.
 */
export async function tollgateWithOrgs(
  orgCount: number,
  profileDir: string | undefined,
): Promise<{ database: BenchDatabase; tollgate: Tollgate; orgs: string[] }> {
  const database = await createBenchDatabase();
  log(`database ${database.name}; starting Tollgate (Postgres + Redis)`);
  const tollgate = await startTollgate({ databaseUrl: database.url, redisUrl, profileDir });
  const orgs = await createOrgs(tollgate, orgCount, "pay_as_you_go");
  log(`${orgs.length} orgs on pay_as_you_go`);
  onCleanup("delete the orgs' Redis keys", async () => void (await deleteOrgKeys(orgs)));
  return { database, tollgate, orgs };
}

/** Creates `count` orgs through the API (as the operator) and puts each on `plan` without payment. */
export async function createOrgs(tollgate: Tollgate, count: number, plan: string): Promise<string[]> {
  const ids: string[] = [];
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < count; i = next++) {
      const org = await tollgate.call<{ id: string }>("POST", "/v1/orgs", { name: `Bench org ${i}` }, 201);
      await tollgate.call("POST", `/v1/orgs/${org.id}/subscription`, { plan, skip_payment: true });
      ids[i] = org.id;
    }
  };
  await Promise.all(Array.from({ length: Math.min(8, count) }, worker));
  return ids;
}
