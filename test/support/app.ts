import { Writable } from "node:stream";
import type { OpenAPIHono } from "@hono/zod-openapi";
import { Redis } from "ioredis";
import { createApp } from "../../src/app.js";
import type { DatabaseHandle } from "../../src/db/client.js";
import { type AppEnv, buildDeps, closeDeps, type Deps } from "../../src/deps.js";
import { parseEnv } from "../../src/lib/env.js";
import { createLogger } from "../../src/lib/logger.js";
import { startBackground } from "../../src/modules/jobs/runtime.js";
import { createTestDatabase, type DatabaseMode, hasRedis, requireRedisUrl, uniquePrefix } from "./storage.js";

export const ADMIN_KEY = "test-operator-key-0123456789abcdef";

/** Every combination of storage the suite runs on: PGlite always; Postgres and Redis when configured. */
export const appModes: { name: string; database: DatabaseMode; redis: boolean }[] = [
  { name: "pglite + in-process", database: "pglite", redis: false },
  ...(hasRedis ? [{ name: "pglite + redis", database: "pglite" as const, redis: true }] : []),
  ...(process.env.DATABASE_URL
    ? [{ name: "postgres + in-process", database: "postgres" as const, redis: false }]
    : []),
  ...(process.env.DATABASE_URL && hasRedis
    ? [{ name: "postgres + redis", database: "postgres" as const, redis: true }]
    : []),
];

/** Collects log lines so tests can assert what was (and was not) logged. */
export class LogCapture extends Writable {
  lines: string[] = [];
  override _write(chunk: Buffer, _encoding: string, callback: () => void) {
    this.lines.push(...chunk.toString().split("\n").filter(Boolean));
    callback();
  }
  get text() {
    return this.lines.join("\n");
  }
}

export interface TestApp {
  app: OpenAPIHono<AppEnv>;
  deps: Deps;
  logs: LogCapture;
  database: DatabaseHandle;
  /** JSON request helper; `auth: "operator"` sends the admin key. */
  call(
    method: string,
    path: string,
    options?: { body?: unknown; auth?: "operator" | string; headers?: Record<string, string> },
  ): Promise<{ status: number; headers: Headers; body: any; text: string }>;
  close(): Promise<void>;
}

export interface TestAppOptions {
  database: DatabaseMode;
  redis: boolean;
  env?: Record<string, string>;
  /** Reuse a database (e.g. to see data survive a "restart"); the caller drops it. */
  sharedDatabase?: DatabaseHandle;
  redisPrefix?: string;
}

/** Builds the real app on a fresh database (and Redis when asked), as main.ts would. */
export async function createTestApp(options: TestAppOptions): Promise<TestApp> {
  const testDb = options.sharedDatabase ? undefined : await createTestDatabase(options.database);
  const database = options.sharedDatabase ?? testDb?.handle;
  if (!database) throw new Error("no database");
  const env = parseEnv({
    TOLLGATE_ADMIN_KEY: ADMIN_KEY,
    TOLLGATE_SECRET: "test-secret-0123456789abcdef0123456789",
    TOLLGATE_LOG_LEVEL: "debug",
    ...(options.redis ? { REDIS_URL: requireRedisUrl() } : {}),
    ...options.env,
  });
  const redisPrefix = options.redisPrefix ?? uniquePrefix();
  const logs = new LogCapture();
  const logger = createLogger(env.logLevel, logs);
  const deps = await buildDeps(env, {
    logger,
    database,
    redisPrefix,
    processMetrics: false,
  });
  const app = createApp(deps);
  await startBackground(deps);
  return {
    app,
    deps,
    logs,
    database,
    call: async (method, path, { body, auth, headers = {} } = {}) => {
      const init: RequestInit = { method, headers: { ...headers } };
      const h = init.headers as Record<string, string>;
      if (auth) h.authorization = `Bearer ${auth === "operator" ? ADMIN_KEY : auth}`;
      if (body !== undefined) {
        h["content-type"] ??= "application/json";
        init.body = typeof body === "string" ? body : JSON.stringify(body);
        // As every real HTTP/1.1 client does; the body rules decide from it.
        h["content-length"] ??= String(Buffer.byteLength(init.body));
      }
      const res = await app.request(path, init);
      const text = await res.text();
      let parsed: unknown;
      try {
        parsed = text ? JSON.parse(text) : undefined;
      } catch {
        parsed = undefined;
      }
      return { status: res.status, headers: res.headers, body: parsed, text };
    },
    close: async () => {
      await closeDeps(deps, { keepDatabase: true });
      await testDb?.drop();
      // Shared prefixes (several apps on one Redis namespace) are cleaned up by whoever made them.
      if (options.redis && !options.redisPrefix) await deleteRedisPrefix(redisPrefix);
    },
  };
}

/** Deletes every key under a test's prefix (BullMQ leaves its queue metadata behind). */
export async function deleteRedisPrefix(prefix: string): Promise<void> {
  const redis = new Redis(requireRedisUrl());
  try {
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500);
      if (keys.length > 0) await redis.del(...keys);
      cursor = next;
    } while (cursor !== "0");
  } finally {
    redis.disconnect();
  }
}
