import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { emails, webhookDeliveries } from "../src/db/schema.js";
import { appModes, createTestApp, type TestApp } from "./support/app.js";
import { writeCatalog } from "./support/tollgate-process.js";

/**
 * Outbound webhooks, judged from the receiving end: a receiver on loopback verifies every delivery
 * with its own Standard Webhooks verifier (HMAC-SHA256 over `id.timestamp.body`, written here from
 * the spec, not the library Tollgate signs with), and the test clock moves outages along.
 */

const catalog = writeCatalog(`
currency: USD
default_plan: free
meters:
  - { key: calls, name: Calls, aggregation: count }
features:
  - { key: calls, type: metered, meter: calls }
plans:
  - { key: free, name: Free, price: { month: "0" }, entitlements: { calls: { limit: 10 } } }
  - { key: pro, name: Pro, price: { month: "20" }, entitlements: { calls: { limit: 1000 } } }
`);

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const iso = (ms: number) => new Date(ms).toISOString();

interface Received {
  id: string;
  type: string;
  data: Record<string, unknown>;
  headers: IncomingHttpHeaders;
}

/** A webhook receiver: verifies each request, answers 503 while `down`, keeps what it accepted. */
class Receiver {
  server: Server;
  secrets: string[] = [];
  down = false;
  /** Refuse (503) the events whose data matches this, even while up. */
  refuse: ((data: Record<string, unknown>) => boolean) | undefined;
  accepted: Received[] = [];
  refused = 0;
  forged = 0;
  constructor() {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (chunk: Buffer) => chunks.push(chunk));
      req.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        if (!this.verify(req.headers, body)) {
          this.forged++;
          res.writeHead(400).end("bad signature");
          return;
        }
        const payload = JSON.parse(body) as { type: string; data: Record<string, unknown> };
        if (this.down || this.refuse?.(payload.data)) {
          this.refused++;
          res.writeHead(503).end("down for maintenance");
          return;
        }
        this.accepted.push({
          id: String(req.headers["webhook-id"]),
          type: payload.type,
          data: payload.data,
          headers: req.headers,
        });
        res.writeHead(204).end();
      });
    });
  }
  /** Standard Webhooks, from the spec: v1 = base64(HMAC-SHA256(key, `${id}.${ts}.${body}`)). */
  verify(headers: IncomingHttpHeaders, body: string): boolean {
    const id = headers["webhook-id"];
    const timestamp = headers["webhook-timestamp"];
    const signatures = headers["webhook-signature"];
    if (typeof id !== "string" || typeof timestamp !== "string" || typeof signatures !== "string")
      return false;
    // Signed at the real time of sending, whatever the test clock says.
    if (Math.abs(Date.now() / 1000 - Number(timestamp)) > 300) return false;
    return this.secrets.some((secret) => {
      const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
      const expected = createHmac("sha256", key).update(`${id}.${timestamp}.${body}`).digest();
      return signatures.split(" ").some((entry) => {
        const [version, signature] = entry.split(",");
        const given = Buffer.from(signature ?? "", "base64");
        return version === "v1" && given.length === expected.length && timingSafeEqual(given, expected);
      });
    });
  }
  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", () => resolve()));
    return (this.server.address() as AddressInfo).port;
  }
  close() {
    return new Promise((resolve) => this.server.close(resolve));
  }
}

describe.each(appModes)("outbound webhooks ($name)", (mode) => {
  let t: TestApp;
  const receiver = new Receiver();
  let url: string;
  beforeAll(async () => {
    const port = await receiver.listen();
    url = `http://127.0.0.1:${port}/hooks`;
    t = await createTestApp({
      ...mode,
      env: {
        TOLLGATE_TEST_CLOCK: "1",
        TOLLGATE_CATALOG: catalog,
        TOLLGATE_WEBHOOK_ALLOWED_TARGETS: `127.0.0.1:${port}`,
        TOLLGATE_WEBHOOK_TIMEOUT_MS: "2000",
      },
    });
  });
  afterAll(async () => {
    await t.close();
    await receiver.close();
  });

  const now = async () => Date.parse((await t.call("GET", "/v1/test-clock", { auth: "operator" })).body.now);
  const advanceBy = async (ms: number) => {
    const res = await t.call("POST", "/v1/test-clock/advance", {
      auth: "operator",
      body: { to: iso((await now()) + ms) },
    });
    expect(res.status, res.text).toBe(200);
  };

  let counter = 0;
  async function newOrg() {
    counter++;
    const res = await t.call("POST", "/v1/auth/register", {
      body: {
        email: `hooks${counter}-${mode.name.replace(/\W/g, "")}@example.com`,
        password: "correct horse battery staple",
        name: "Ada",
      },
    });
    expect(res.status, res.text).toBe(201);
    return { org: res.body.org.id as string, token: res.body.access_token as string };
  }
  const op = (method: string, path: string, body?: unknown) =>
    t.call(method, path, { auth: "operator", ...(body !== undefined ? { body } : {}) });

  async function addEndpoint(org: string, events: string[], target = url) {
    const res = await op("POST", `/v1/orgs/${org}/webhook-endpoints`, { url: target, events });
    expect(res.status, res.text).toBe(201);
    receiver.secrets.push(res.body.secret);
    return res.body as { id: string; secret: string };
  }
  const createKey = async (org: string, name: string) => {
    const res = await op("POST", `/v1/orgs/${org}/api-keys`, { name, scopes: ["usage:read"] });
    expect(res.status, res.text).toBe(201);
    return res.body.id as string;
  };
  const forOrg = (org: string) => receiver.accepted.filter((r) => r.data.org_id === org);

  it("signs every delivery so that an independent verifier accepts it", async () => {
    const { org } = await newOrg();
    const endpoint = await addEndpoint(org, ["api_key.*"]);
    expect(endpoint.secret).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    const key = await createKey(org, "first");
    await advanceBy(1000);
    const got = forOrg(org);
    expect(got.map((r) => r.type)).toEqual(["api_key.created"]);
    expect(got[0]?.id).toMatch(/^msg_/);
    expect(got[0]?.data).toMatchObject({ id: key, name: "first", scopes: ["usage:read"] });
    expect(JSON.stringify(got[0]?.data)).not.toMatch(/tg_[A-Za-z0-9]{20,}/); // never the key itself
    expect(got[0]?.headers["user-agent"]).toBe("Tollgate-Webhooks/1");
    expect(receiver.forged).toBe(0);
    // The log says so.
    const log = await op("GET", `/v1/orgs/${org}/webhook-endpoints/${endpoint.id}/deliveries`);
    expect(log.body.data).toMatchObject([
      { event_type: "api_key.created", status: "succeeded", attempts: 1 },
    ]);
  });

  it("sends only subscribed types, and nothing for a change that rolled back", async () => {
    const { org } = await newOrg();
    await addEndpoint(org, ["api_key.revoked"]);
    const key = await createKey(org, "quiet");
    expect((await op("DELETE", `/v1/orgs/${org}/api-keys/${key}`)).status).toBe(200);
    // Rotating a revoked key fails (409): its transaction, event included, rolls back.
    expect((await op("POST", `/v1/orgs/${org}/api-keys/${key}/rotate`, {})).status).toBe(409);
    await advanceBy(1000);
    expect(forOrg(org).map((r) => r.type)).toEqual(["api_key.revoked"]);
  });

  it("survives a day-long outage: every event arrives once, in order", async () => {
    const { org } = await newOrg();
    const endpoint = await addEndpoint(org, ["*"]);
    receiver.down = true;
    onTestFinished(() => {
      receiver.down = false;
    });
    const keys: string[] = [];
    for (let hour = 0; hour < 24; hour++) {
      if (hour % 3 === 0) keys.push(await createKey(org, `k${hour}`));
      await advanceBy(HOUR);
    }
    expect(forOrg(org)).toEqual([]);
    const during = await op("GET", `/v1/orgs/${org}/webhook-endpoints/${endpoint.id}`);
    expect(during.body).toMatchObject({ status: "enabled" });
    expect(during.body.failing_since).not.toBeNull();
    receiver.down = false;
    // The endpoint's backoff is at most a day: within one more day it is tried and drains its queue.
    for (let step = 0; step < 26 && forOrg(org).length < keys.length; step++) await advanceBy(HOUR);
    const got = forOrg(org);
    expect(got.map((r) => r.data.id)).toEqual(keys);
    expect(new Set(got.map((r) => r.id)).size).toBe(keys.length);
    // Replays of the same id would be dropped by a receiver; here none happened at all.
    const healthy = await op("GET", `/v1/orgs/${org}/webhook-endpoints/${endpoint.id}`);
    expect(healthy.body).toMatchObject({ status: "enabled", failing_since: null, next_attempt_at: null });
    const [first] = (
      await op(
        "GET",
        `/v1/orgs/${org}/webhook-endpoints/${endpoint.id}/deliveries?status=succeeded&limit=500`,
      )
    ).body.data.slice(-1);
    const detail = await op("GET", `/v1/orgs/${org}/webhook-endpoints/${endpoint.id}/deliveries/${first.id}`);
    expect(detail.body.attempt_log.length).toBeGreaterThan(3);
    expect(detail.body.attempt_log.at(0)).toMatchObject({ status: 503, error: "HTTP status 503" });
    expect(detail.body.attempt_log.at(-1)).toMatchObject({ status: 204, error: null });
    const metrics = (await t.call("GET", "/metrics")).text;
    expect(metrics).toMatch(/tollgate_webhook_requests_total\{outcome="failed",code="http_status"\} [1-9]/);
    expect(metrics).toMatch(/tollgate_webhook_requests_total\{outcome="succeeded",code="none"\} [1-9]/);
  });

  it("starts the backoff afresh once the endpoint has answered again", async () => {
    const { org } = await newOrg();
    const endpoint = await addEndpoint(org, ["api_key.created"]);
    receiver.down = true;
    onTestFinished(() => {
      receiver.down = false;
      receiver.refuse = undefined;
    });
    await createKey(org, "before");
    for (let hour = 0; hour < 30; hour++) await advanceBy(HOUR); // failures pile up: a long backoff
    await createKey(org, "poison");
    receiver.down = false;
    receiver.refuse = (data) => data.name === "poison";
    for (let step = 0; step < 26 && forOrg(org).length === 0; step++) await advanceBy(HOUR);
    expect(forOrg(org).map((r) => r.data.name)).toEqual(["before"]);
    // The success reset the count: the next failure (the poison one) waits a minute, not a day.
    const state = (await op("GET", `/v1/orgs/${org}/webhook-endpoints/${endpoint.id}`)).body;
    const current = await now();
    expect(Date.parse(state.next_attempt_at) - current).toBeLessThanOrEqual(60_000);
    expect(Date.parse(state.failing_since)).toBeGreaterThan(current - HOUR);
  });

  it("gives deliveries up after three days, disables a failing endpoint after five and e-mails the owner", async () => {
    const { org } = await newOrg();
    const endpoint = await addEndpoint(org, ["api_key.created"]);
    receiver.down = true;
    onTestFinished(() => {
      receiver.down = false;
    });
    // An event every 12 hours: the endpoint always has something to deliver, and fails each time.
    const keys: string[] = [];
    for (let step = 0; step < 12; step++) {
      keys.push(await createKey(org, `doomed${step}`));
      await advanceBy(12 * HOUR);
    }
    const state = await op("GET", `/v1/orgs/${org}/webhook-endpoints/${endpoint.id}`);
    expect(state.body.status).toBe("disabled");
    expect(state.body.disabled_reason).toMatch(/5 days/);
    const log = (await op("GET", `/v1/orgs/${org}/webhook-endpoints/${endpoint.id}/deliveries?limit=500`))
      .body.data as { id: string; status: string; last_status: number | null; created_at: string }[];
    // Newest first. Those created more than three days before the last failure are given up.
    const given = log.filter((d) => d.status === "failed");
    const pending = log.filter((d) => d.status === "pending");
    expect(given.length).toBeGreaterThanOrEqual(4);
    expect(pending.length).toBeGreaterThan(0);
    // Every delivery is given up or waiting; events after the endpoint was disabled have none.
    expect(given.length + pending.length).toBe(log.length);
    expect(log.length).toBeGreaterThanOrEqual(10);
    expect(log.length).toBeLessThan(keys.length);
    expect(given.every((d) => d.last_status === 503 || d.last_status === null)).toBe(true);
    const mails = (await t.database.db.select().from(emails).where(eq(emails.orgId, org))).filter(
      (m) => m.template === "webhook_disabled",
    );
    expect(mails).toHaveLength(1);
    // A disabled endpoint is not sent to, nor retried by hand.
    receiver.down = false;
    await advanceBy(DAY);
    expect(forOrg(org)).toEqual([]);
    const oldest = given.at(-1);
    if (!oldest) throw new Error("no given-up delivery");
    const path = `/v1/orgs/${org}/webhook-endpoints/${endpoint.id}/deliveries/${oldest.id}/retry`;
    expect((await op("POST", path)).status).toBe(409);
    // Turned back on: the queue drains at once, and the retried given-up delivery goes first.
    const enabled = await op("PATCH", `/v1/orgs/${org}/webhook-endpoints/${endpoint.id}`, { enabled: true });
    expect(enabled.body).toMatchObject({ status: "enabled", failing_since: null });
    expect((await op("POST", path)).status).toBe(202);
    await advanceBy(1000);
    const got = forOrg(org).map((r) => r.data.id as string);
    expect(got[0]).toBe(keys[0]);
    expect(got.slice(1)).toEqual(keys.slice(log.length - pending.length, log.length));
  });

  it("replays a time range under the original ids", async () => {
    const { org } = await newOrg();
    const endpoint = await addEndpoint(org, ["api_key.*"]);
    const since = iso(await now());
    await createKey(org, "a");
    await createKey(org, "b");
    await advanceBy(1000);
    const first = forOrg(org).map((r) => r.id);
    expect(first).toHaveLength(2);
    const replay = await op("POST", `/v1/orgs/${org}/webhook-endpoints/${endpoint.id}/replay`, { since });
    expect(replay.body).toEqual({ queued: 2, truncated: false });
    await advanceBy(1000);
    expect(forOrg(org).map((r) => r.id)).toEqual([...first, ...first]);
  });

  it("announces a quota crossing once per threshold and period: one e-mail and one webhook", async () => {
    const { org } = await newOrg();
    await addEndpoint(org, ["usage.threshold_reached"]);
    // 10 calls allowed: the 8th crosses 80%, the 10th 100%; concurrent checks, then more denied ones.
    await Promise.all(
      Array.from({ length: 14 }, () => op("POST", "/v1/check", { org_id: org, feature: "calls", amount: 1 })),
    );
    await advanceBy(1000);
    await advanceBy(1000);
    const hooks = forOrg(org).filter((r) => r.type === "usage.threshold_reached");
    expect(hooks.map((r) => r.data.threshold).sort()).toEqual([100, 80]);
    expect(hooks[0]?.data).toMatchObject({ feature: "calls", limit: "10" });
    expect(String(hooks[0]?.data.upgrade_url)).toContain("plan=pro");
    const mails = (await t.database.db.select().from(emails).where(eq(emails.orgId, org))).map(
      (m) => m.template,
    );
    expect(mails.filter((m) => m === "quota_80")).toHaveLength(1);
    expect(mails.filter((m) => m === "quota_100")).toHaveLength(1);
    // Nothing more on the next runs.
    await advanceBy(HOUR);
    expect(forOrg(org).filter((r) => r.type === "usage.threshold_reached")).toHaveLength(2);
  });

  it("refuses private, loopback and link-local targets that are not allowed", async () => {
    const { org, token } = await newOrg();
    for (const target of [
      "http://10.0.0.5/hook",
      "http://169.254.169.254/latest/meta-data",
      "http://localhost:9/hook",
      "http://[::1]:9/hook",
      "http://127.0.0.1:9/hook", // loopback, but another port than the allowed one
      "ftp://example.com/hook",
    ]) {
      const res = await t.call("POST", `/v1/orgs/${org}/webhook-endpoints`, {
        auth: token,
        body: { url: target, events: ["*"] },
      });
      expect(res.status, target).toBe(400);
      expect(res.body.errors[0].field).toBe("url");
    }
    const badType = await t.call("POST", `/v1/orgs/${org}/webhook-endpoints`, {
      auth: token,
      body: { url, events: ["invoice.exploded"] },
    });
    expect(badType.status).toBe(400);
    expect((await t.call("GET", `/v1/orgs/${org}/webhook-endpoints`, { auth: token })).body.data).toEqual([]);
  });

  it("keeps each org's endpoints and deliveries to itself", async () => {
    const a = await newOrg();
    const b = await newOrg();
    const endpoint = await addEndpoint(a.org, ["*"]);
    for (const [method, path] of [
      ["GET", `/v1/orgs/${a.org}/webhook-endpoints`],
      ["GET", `/v1/orgs/${a.org}/webhook-endpoints/${endpoint.id}`],
      ["DELETE", `/v1/orgs/${a.org}/webhook-endpoints/${endpoint.id}`],
      ["GET", `/v1/orgs/${a.org}/webhook-endpoints/${endpoint.id}/deliveries`],
    ] as const) {
      expect((await t.call(method, path, { auth: b.token })).status, `${method} ${path}`).toBe(404);
    }
    // B's own org path with A's endpoint id: not found either.
    expect(
      (await t.call("GET", `/v1/orgs/${b.org}/webhook-endpoints/${endpoint.id}`, { auth: b.token })).status,
    ).toBe(404);
    // Deleting removes the endpoint and its log.
    expect(
      (await t.call("DELETE", `/v1/orgs/${a.org}/webhook-endpoints/${endpoint.id}`, { auth: a.token }))
        .status,
    ).toBe(204);
    const left = await t.database.db
      .select()
      .from(webhookDeliveries)
      .where(eq(webhookDeliveries.endpointId, endpoint.id));
    expect(left).toEqual([]);
  });
});
