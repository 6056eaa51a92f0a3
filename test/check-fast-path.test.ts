import http from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRequestListener, type TollgateListener } from "../src/listener.js";
import { ADMIN_KEY, appModes, createTestApp, type TestApp } from "./support/app.js";

/**
 * `POST /v1/check` is answered from node:http, outside Hono (src/listener.ts). Every kind of check
 * request goes through both the listener and the Hono app, for two orgs in the same state, and the
 * answers must be the same: status, body, and every header a client reads.
 */

const KOLEKT = fileURLToPath(new URL("../catalogs/kolekt.yaml", import.meta.url));
const ORG = "$ORG";

interface Case {
  name: string;
  /** The body, with "$ORG" standing for the org; a string is sent as is. */
  body: unknown;
  headers?: Record<string, string>;
  /** Whether the listener answers it itself (otherwise Hono does). */
  fast: boolean;
}

const json = { "content-type": "application/json" };
const operator = { ...json, authorization: `Bearer ${ADMIN_KEY}` };

const cases: Case[] = [
  { name: "consumes one", body: { org_id: ORG, feature: "kolekts" }, fast: true },
  { name: "consumes to the quota", body: { org_id: ORG, feature: "kolekts", amount: "9" }, fast: true },
  { name: "denied past the quota", body: { org_id: ORG, feature: "kolekts" }, fast: true },
  { name: "asks without consuming", body: { org_id: ORG, feature: "kolekts", consume: false }, fast: true },
  { name: "a rate feature", body: { org_id: ORG, feature: "api_requests" }, fast: true },
  {
    name: "a rate denial with Retry-After",
    body: { org_id: ORG, feature: "api_requests", amount: 10 },
    fast: true,
  },
  { name: "a boolean not in the plan", body: { org_id: ORG, feature: "premium_templates" }, fast: true },
  {
    name: "several features",
    body: { org_id: ORG, features: [{ feature: "team_members" }, { feature: "remove_ads" }] },
    fast: true,
  },
  {
    name: "several features, one only checked",
    body: {
      org_id: ORG,
      features: [{ feature: "api_requests" }, { feature: "kolekts", consume: false }],
    },
    fast: true,
  },
  {
    name: "a checked item denied, nothing consumed",
    body: {
      org_id: ORG,
      features: [{ feature: "api_requests" }, { feature: "premium_templates", consume: false }],
    },
    fast: true,
  },
  {
    name: "an idempotent allocation",
    body: { org_id: ORG, feature: "team_members", amount: -1, idempotency_key: "seat-1" },
    fast: true,
  },
  {
    name: "its replay",
    body: { org_id: ORG, feature: "team_members", amount: -1, idempotency_key: "seat-1" },
    fast: true,
  },
  {
    name: "its key reused with other parameters",
    body: { org_id: ORG, feature: "team_members", amount: 1, idempotency_key: "seat-1" },
    fast: true,
  },
  { name: "an unknown feature", body: { org_id: ORG, feature: "nope" }, fast: true },
  { name: "a fractional count", body: { org_id: ORG, feature: "kolekts", amount: 1.5 }, fast: true },
  { name: "an unknown field", body: { org_id: ORG, feature: "kolekts", extra: 1 }, fast: true },
  { name: "no org", body: { feature: "kolekts" }, fast: true },
  { name: "an org that does not exist", body: { org_id: "org_missing", feature: "kolekts" }, fast: true },
  {
    name: "consume of the wrong type",
    body: { org_id: ORG, feature: "kolekts", consume: "yes" },
    fast: true,
  },
  { name: "a NUL in the org id", body: { org_id: "org\u0000x", feature: "kolekts" }, fast: true },
  {
    name: "a NUL in the idempotency key",
    body: { org_id: ORG, feature: "kolekts", idempotency_key: "a\u0000b" },
    fast: true,
  },
  { name: "both forms at once", body: { org_id: ORG, feature: "kolekts", features: [] }, fast: true },
  { name: "an empty feature list", body: { org_id: ORG, features: [] }, fast: true },
  { name: "a body that is not JSON", body: "{not json", fast: true },
  { name: "a JSON array", body: "[]", fast: true },
  { name: "a JSON null", body: "null", fast: true },
  { name: "a caller request id", body: { org_id: ORG, feature: "remove_ads" }, fast: true },
  {
    name: "a JSON media type with a charset",
    body: { org_id: ORG, feature: "remove_ads" },
    headers: { ...operator, "content-type": "application/json; charset=utf-8" },
    fast: true,
  },
  {
    name: "a body with a byte-order mark",
    body: `\ufeff{"org_id":"${ORG}","feature":"remove_ads"}`,
    fast: true,
  },
  // Not the fast path's: Hono answers them, through the same listener.
  { name: "no credentials", body: { org_id: ORG, feature: "kolekts" }, headers: json, fast: false },
  {
    name: "wrong credentials",
    body: { org_id: ORG, feature: "kolekts" },
    headers: { ...json, authorization: "Bearer not-the-key" },
    fast: false,
  },
  {
    name: "a JSON media type with an empty parameter",
    body: { org_id: ORG, feature: "kolekts" },
    headers: { ...operator, "content-type": "application/json;" },
    fast: false,
  },
  {
    name: "a vendor JSON media type the route does not take",
    body: { org_id: ORG, feature: "kolekts" },
    headers: { ...operator, "content-type": "application/vnd.api.v2+json" },
    fast: false,
  },
  {
    name: "a body that is not declared JSON",
    body: { org_id: ORG, feature: "kolekts" },
    headers: { authorization: `Bearer ${ADMIN_KEY}`, "content-type": "text/plain" },
    fast: false,
  },
];

/** What a client reads of a response, with this run's org ids and request ids made comparable. */
async function observed(res: Response, org: string) {
  const text = (await res.text()).replaceAll(org, ORG);
  const body = text ? JSON.parse(text) : undefined;
  if (body && typeof body === "object" && "request_id" in body) body.request_id = "<id>";
  const headers: Record<string, string | null> = {};
  for (const name of [
    "content-type",
    "ratelimit",
    "ratelimit-policy",
    "retry-after",
    "idempotent-replayed",
    "www-authenticate",
  ]) {
    headers[name] = res.headers.get(name);
  }
  return { status: res.status, body, headers, requestId: res.headers.get("x-request-id") };
}

describe.each(appModes)("the /v1/check fast path ($name)", (mode) => {
  let t: TestApp;
  let server: http.Server;
  let listener: TollgateListener;
  let url: string;
  let fastOrg: string;
  let honoOrg: string;

  beforeAll(async () => {
    t = await createTestApp({ ...mode, env: { TOLLGATE_TEST_CLOCK: "1", TOLLGATE_CATALOG: KOLEKT } });
    listener = createRequestListener(t.deps, t.app);
    server = http.createServer(listener);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const newOrg = async () => {
      const res = await t.call("POST", "/v1/orgs", { auth: "operator", body: { name: "Acme" } });
      expect(res.status, res.text).toBe(201);
      return res.body.id as string;
    };
    [fastOrg, honoOrg] = [await newOrg(), await newOrg()];
  });
  afterAll(async () => {
    await new Promise((resolve) => server?.close(resolve));
    await t?.close();
  });

  it("answers every kind of check exactly as the Hono route does", async () => {
    for (const c of cases) {
      const bodyFor = (org: string) =>
        (typeof c.body === "string" ? c.body : JSON.stringify(c.body)).replaceAll(ORG, org);
      const headers = {
        ...(c.headers ?? operator),
        ...(c.name === "a caller request id" ? { "x-request-id": "caller-id-1" } : {}),
      };
      const before = listener.fastPathServed;
      const viaListener = await fetch(`${url}/v1/check`, { method: "POST", headers, body: bodyFor(fastOrg) });
      const fast = await observed(viaListener, fastOrg);
      expect(listener.fastPathServed - before, c.name).toBe(c.fast ? 1 : 0);
      const viaHono = await t.app.request("/v1/check", {
        method: "POST",
        headers: { ...headers, "content-length": String(Buffer.byteLength(bodyFor(honoOrg))) },
        body: bodyFor(honoOrg),
      });
      const slow = await observed(viaHono, honoOrg);
      expect({ case: c.name, ...fast, requestId: undefined }).toEqual({
        case: c.name,
        ...slow,
        requestId: undefined,
      });
      expect(fast.requestId, c.name).toMatch(c.name === "a caller request id" ? /^caller-id-1$/ : /^req_/);
      if (fast.status === 400) expect(fast.body.errors.length, c.name).toBeGreaterThan(0);
    }
  }, 60_000);

  it("writes an answer's fields in the documented order, allowed or denied, on both paths", async () => {
    const created = await t.call("POST", "/v1/orgs", { auth: "operator", body: { name: "Order" } });
    const org = created.body.id as string;
    const send = (body: unknown) =>
      Promise.all([
        fetch(`${url}/v1/check`, { method: "POST", headers: operator, body: JSON.stringify(body) }),
        t.app.request("/v1/check", { method: "POST", headers: operator, body: JSON.stringify(body) }),
      ]);
    const allowedKeys = ["allowed", "feature", "type", "limit", "used", "remaining", "resets_at"];
    // A denial lists the feature's state first, then the verdict, the reason and where to upgrade.
    const deniedKeys = [...allowedKeys.slice(1), "allowed", "reason", "upgrade_url", "upgrade_plan"];
    for (const [body, keys] of [
      [{ org_id: org, feature: "kolekts" }, allowedKeys],
      [{ org_id: org, feature: "kolekts", amount: 1000 }, deniedKeys],
    ] as const) {
      for (const res of await send(body)) {
        const text = await res.text();
        expect(res.status, text).toBe(200);
        const parsed = JSON.parse(text);
        expect(Object.keys(parsed)).toEqual(keys);
        expect(text).toBe(JSON.stringify(parsed));
      }
    }
  });

  it("leaves a request that repeats its credentials or media type to Hono, which refuses it", async () => {
    const post = (headers: Record<string, string | string[]>) =>
      new Promise<number>((resolve, reject) => {
        const body = JSON.stringify({ org_id: fastOrg, feature: "remove_ads" });
        const req = http.request(`${url}/v1/check`, { method: "POST", headers }, (res) => {
          res.resume();
          res.on("end", () => resolve(res.statusCode ?? 0));
        });
        req.on("error", reject);
        req.end(body);
      });
    const before = listener.fastPathServed;
    expect(await post({ ...json, authorization: [operator.authorization, "Bearer not-the-key"] })).toBe(401);
    expect(
      await post({
        authorization: operator.authorization,
        "content-type": ["application/json", "text/plain"],
      }),
    ).toBe(415);
    expect(listener.fastPathServed).toBe(before);
    expect(await post(operator)).toBe(200);
    expect(listener.fastPathServed).toBe(before + 1);
  });

  it("counts its requests in /metrics under the route, like every other route", async () => {
    const res = await fetch(`${url}/v1/check`, {
      method: "POST",
      headers: operator,
      body: JSON.stringify({ org_id: fastOrg, feature: "remove_ads", consume: false }),
    });
    expect(res.status).toBe(200);
    const metrics = await (await t.call("GET", "/metrics")).text;
    expect(metrics).toMatch(/http_requests_total\{[^}]*route="\/v1\/check"[^}]*status="200"[^}]*\} \d+/);
  });

  it("closes connections while draining", async () => {
    t.deps.draining = true;
    try {
      const res = await fetch(`${url}/v1/check`, {
        method: "POST",
        headers: operator,
        body: JSON.stringify({ org_id: fastOrg, feature: "remove_ads", consume: false }),
      });
      expect(res.status).toBe(200);
      expect(res.headers.get("connection")).toBe("close");
    } finally {
      t.deps.draining = false;
    }
  });
});
