import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createApp } from "../src/app.js";
import { openDatabase } from "../src/db/client.js";
import { buildDeps, closeDeps, type Deps } from "../src/deps.js";
import { parseEnv } from "../src/lib/env.js";
import { createLogger } from "../src/lib/logger.js";
import { ADMIN_KEY, deleteRedisPrefix, LogCapture } from "./support/app.js";
import { createTestDatabase, type TestDatabase, uniquePrefix } from "./support/storage.js";
import { TcpProxy, viaProxy } from "./support/tcp-proxy.js";

const postgresUrl = process.env.DATABASE_URL;
const redisUrl = process.env.REDIS_URL;

async function eventually(check: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("condition not met in time");
}

/**
 * /readyz must go red while Postgres or Redis is unreachable and green again when it returns,
 * without a restart. A TCP proxy stands between the app and the real servers so the test can cut
 * them for this app alone.
 */
describe.runIf(postgresUrl && redisUrl)("readiness through an outage (postgres + redis)", () => {
  let testDb: TestDatabase;
  let pgProxy: TcpProxy;
  let redisProxy: TcpProxy;
  let deps: Deps;
  let ready: () => Promise<{ status: number; body: any }>;
  const prefix = uniquePrefix();

  beforeAll(async () => {
    testDb = await createTestDatabase("postgres");
    const pgTarget = new URL(testDb.url as string);
    const redisTarget = new URL(redisUrl as string);
    pgProxy = await new TcpProxy(pgTarget.hostname, Number(pgTarget.port || 5432)).start();
    redisProxy = await new TcpProxy(redisTarget.hostname, Number(redisTarget.port || 6379)).start();
    const env = parseEnv({
      DATABASE_URL: viaProxy(testDb.url as string, pgProxy),
      REDIS_URL: viaProxy(redisUrl as string, redisProxy),
      TOLLGATE_ADMIN_KEY: ADMIN_KEY,
      TOLLGATE_SECRET: "test-secret-0123456789abcdef0123456789",
    });
    const logger = createLogger("warn", new LogCapture());
    const database = await openDatabase({ url: env.databaseUrl, logger });
    deps = await buildDeps(env, { logger, database, redisPrefix: prefix, processMetrics: false });
    const app = createApp(deps);
    ready = async () => {
      const res = await app.request("/readyz");
      return { status: res.status, body: await res.json() };
    };
  });

  afterAll(async () => {
    pgProxy.restore();
    redisProxy.restore();
    await closeDeps(deps);
    await pgProxy.close();
    await redisProxy.close();
    await testDb.drop();
    await deleteRedisPrefix(prefix);
  });

  it("is green, goes red when Postgres goes away, and green again when it returns", async () => {
    expect((await ready()).status).toBe(200);
    pgProxy.cut();
    const red = await ready();
    expect(red.status).toBe(503);
    expect(red.body.checks.database.status).toBe("down");
    expect(red.body.checks.redis.status).toBe("up");
    // Driver messages (hosts, ports, users) stay in the logs.
    expect(JSON.stringify(red.body)).not.toMatch(/ECONNREFUSED|127\.0\.0\.1|terminated/);
    pgProxy.restore();
    await eventually(async () => (await ready()).status === 200);
  });

  it("goes red when Redis goes away and recovers by itself", async () => {
    redisProxy.cut();
    await eventually(async () => {
      const res = await ready();
      return res.status === 503 && res.body.checks.redis.status === "down";
    });
    redisProxy.restore();
    await eventually(async () => (await ready()).status === 200);
  });
});
