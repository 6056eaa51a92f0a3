import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, hasRedis, requireRedisUrl, type TestDatabase } from "./support/storage.js";
import { killAllTollgates, runCli, startTollgate, writeCatalog } from "./support/tollgate-process.js";

/**
 * Production topology: an API process that runs no jobs (TOLLGATE_RUN_JOBS=0) and a `tollgate worker`
 * on BullMQ. The worker is killed with SIGKILL while it is delivering a webhook; a new worker
 * completes the delivery, once: the endpoint's log ends with one success, and the receiver, which
 * deduplicates on `webhook-id` as the Standard Webhooks spec asks, has the event exactly once.
 */

const ADMIN_KEY = "worker-crash-operator-key-0123456789";
const catalog = writeCatalog(`
currency: USD
default_plan: free
meters:
  - { key: calls, name: Calls, aggregation: count }
features:
  - { key: calls, type: metered, meter: calls }
plans:
  - { key: free, name: Free, price: { month: "0" }, entitlements: { calls: { limit: 10 } } }
`);

describe.runIf(process.env.DATABASE_URL && hasRedis)("a worker killed mid-job (postgres + redis)", () => {
  let db: TestDatabase;
  const requests: { id: string; at: number }[] = [];
  let hang = true;
  let arrived: () => void = () => {};
  const firstArrival = new Promise<void>((resolve) => {
    arrived = resolve;
  });
  const receiver = createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    req.on("end", () => {
      requests.push({ id: String(req.headers["webhook-id"]), at: Date.now() });
      arrived();
      if (hang) return; // never answered: the worker dies waiting
      res.writeHead(200).end("ok");
    });
  });
  let port = 0;
  beforeAll(async () => {
    db = await createTestDatabase("postgres");
    await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", () => resolve()));
    port = (receiver.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await killAllTollgates();
    receiver.closeAllConnections();
    await new Promise((resolve) => receiver.close(resolve));
    await db?.drop();
  });

  it("completes the job after a restart, once", { timeout: 120_000 }, async () => {
    const env = {
      DATABASE_URL: db.url as string,
      REDIS_URL: requireRedisUrl(),
      TOLLGATE_ADMIN_KEY: ADMIN_KEY,
      TOLLGATE_SECRET: "test-secret-0123456789abcdef0123456789",
      TOLLGATE_CATALOG: catalog,
      TOLLGATE_WEBHOOK_ALLOWED_TARGETS: `127.0.0.1:${port}`,
      TOLLGATE_WEBHOOK_TIMEOUT_MS: "1000",
    };
    const api = await startTollgate({ ...env, TOLLGATE_RUN_JOBS: "0" });
    const call = (method: string, path: string, body?: unknown) =>
      api.call(method, path, { auth: ADMIN_KEY, ...(body !== undefined ? { body } : {}) });
    const org = (await call("POST", "/v1/orgs", { name: "Crashy" })).body.id as string;
    const endpoint = await call("POST", `/v1/orgs/${org}/webhook-endpoints`, {
      url: `http://127.0.0.1:${port}/hook`,
      events: ["api_key.created"],
    });
    expect(endpoint.status, endpoint.text).toBe(201);

    const worker = runCli(["worker"], env);
    expect(
      (await call("POST", `/v1/orgs/${org}/api-keys`, { name: "k", scopes: ["usage:read"] })).status,
    ).toBe(201);
    await firstArrival;
    worker.child.kill("SIGKILL");
    await worker.exited;
    const eventId = requests[0]?.id;
    expect(eventId).toMatch(/^msg_/);

    hang = false;
    const second = runCli(["worker"], env);
    const log = async () =>
      (await call("GET", `/v1/orgs/${org}/webhook-endpoints/${endpoint.body.id}/deliveries`)).body.data;
    const deadline = Date.now() + 90_000;
    while ((await log())[0]?.status !== "succeeded") {
      if (Date.now() > deadline) throw new Error(`not delivered after the restart: ${second.stderr()}`);
      await new Promise((r) => setTimeout(r, 250));
    }
    // A little longer: nothing else arrives.
    await new Promise((r) => setTimeout(r, 1500));
    const [delivery] = await log();
    expect(delivery).toMatchObject({ status: "succeeded", event_id: eventId, last_status: 200 });
    // At least once on the wire (the killed attempt reached the receiver), once by id.
    expect(new Set(requests.map((r) => r.id))).toEqual(new Set([eventId]));
    expect(requests.length).toBeGreaterThanOrEqual(2);
    const succeeded = await db.handle.query<{ n: number }>(
      sql`select count(*)::int as n from webhook_attempts where status = 200`,
    );
    expect(succeeded).toEqual([{ n: 1 }]);
    second.child.kill("SIGTERM");
    expect(await second.exited).toBe(0);
  });
});
