import { type Context, Hono } from "hono";
import { describe, expect, it } from "vitest";
import { tollgate } from "../src/hono.js";
import { createGate, MAX_COUNT_UNITS, Tollgate, type TrackProblem } from "../src/index.js";
import { hang, json, scripted } from "./scripted.js";
import { sleep } from "./support.js";

/**
 * The middleware's core against a scripted Tollgate: how a route's quotas are held to the catalog
 * (before anything is consumed), how they are tracked, and what reaches a response the handler built
 * itself. The behaviour against a real Tollgate is in middleware-suite.ts.
 */

const BASE = "http://tollgate.test";
const KEY = "tg_gate_key_0123456789abcdefghijklmnopqrstuvwxyz012345";
const header = (_ctx: unknown, name: string) => (name === "authorization" ? `Bearer ${KEY}` : undefined);
const VALID = { valid: true, org_id: "org_a", key_id: "key_1", scopes: [], plan: "free" };

const PLANS = {
  data: [],
  features: [
    { key: "emails", type: "metered", meter: "emails", name: "E-mails", description: null },
    { key: "tokens", type: "metered", meter: "tokens", name: "Tokens", description: null },
    { key: "seats", type: "limit", meter: null, name: "Seats", description: null },
    { key: "api_requests", type: "rate", meter: null, name: "API requests", description: null },
  ],
  meters: [
    { key: "emails", name: "E-mails", aggregation: "count" },
    { key: "tokens", name: "Tokens", aggregation: "sum" },
  ],
};

const allowed = (feature: string) => ({
  allowed: true,
  feature,
  type: "metered",
  limit: null,
  used: 0,
  remaining: null,
  resets_at: null,
});

/** A stand-in whose key is valid and whose checks are all allowed; events are accepted. */
function tollgateStandIn(plans: () => Response | Promise<Response> = () => json(200, PLANS)) {
  const events: { meter: string; value: number; org_id: string }[] = [];
  const standIn = scripted({
    "GET /v1/plans": plans,
    "POST /v1/keys/verify": (body) =>
      json(
        200,
        body.features === undefined
          ? VALID
          : {
              ...VALID,
              checks: {
                allowed: true,
                results: body.features.map((f: { feature: string }) => allowed(f.feature)),
              },
            },
      ),
    "POST /v1/events": (body) => {
      events.push(...body.events);
      return json(200, { accepted: body.events.length, duplicates: 0, rejected: [] });
    },
  });
  return { ...standIn, events };
}

const client = (fetch: ConstructorParameters<typeof Tollgate>[0]["fetch"], problems: TrackProblem[] = []) =>
  new Tollgate({
    baseUrl: BASE,
    apiKey: "op",
    fetch,
    track: { flushIntervalMs: 60_000, onError: (p) => problems.push(p) },
  });

describe("a route's quotas", () => {
  it("are refused before anything is consumed when the feature is not metered", async () => {
    const standIn = tollgateStandIn();
    const decide = createGate(
      client(standIn.fetch),
      { quota: [{ feature: "seats", meter: "seats" }] },
      header,
    );
    await expect(async () => decide({})).rejects.toThrow(
      /quota seats is a limit feature; only a metered feature can be a quota/,
    );
    expect(standIn.count("POST /v1/keys/verify")).toBe(0);
  });

  it("are refused when tracked on a meter other than the feature's own", async () => {
    const standIn = tollgateStandIn();
    const decide = createGate(
      client(standIn.fetch),
      { quota: [{ feature: "emails", meter: "tokens" }] },
      header,
    );
    await expect(async () => decide({})).rejects.toThrow(/counted on meter emails, not tokens/);
    expect(standIn.count("POST /v1/keys/verify")).toBe(0);
  });

  it("answer a bad key with 401 before saying the request has too many units", async () => {
    const standIn = scripted({
      "GET /v1/plans": () => json(200, PLANS),
      "POST /v1/keys/verify": () => json(200, { valid: false, reason: "revoked" }),
    });
    const decide = createGate(
      client(standIn.fetch),
      { quota: [{ feature: "emails", meter: "emails", amount: () => 5000 }] },
      header,
    );
    const decision = await decide({});
    if (decision.allowed) throw new Error("expected a refusal");
    expect(decision.rejection.status).toBe(401);
    expect(decision.rejection.body.code).toBe("unauthenticated");
  });

  it("refuse a fixed amount past MAX_COUNT_UNITS on a count meter as the route's own mistake", async () => {
    const standIn = tollgateStandIn();
    const decide = createGate(
      client(standIn.fetch),
      { quota: [{ feature: "emails", meter: "emails", amount: 12_000 }] },
      header,
    );
    await expect(async () => decide({})).rejects.toThrow(/whole number of at most 1000 \(got 12000\)/);
    expect(standIn.count("POST /v1/keys/verify")).toBe(0);
  });

  it("on a count meter take a whole number of at most MAX_COUNT_UNITS units, one event each", async () => {
    const standIn = tollgateStandIn();
    const problems: TrackProblem[] = [];
    const tg = client(standIn.fetch, problems);
    let recipients = 12_000;
    const decide = createGate(
      tg,
      { quota: [{ feature: "emails", meter: "emails", amount: () => recipients }] },
      header,
    );
    // Too many units computed from the caller's request: the caller is told (413) once the key is
    // known good, and nothing is checked or consumed.
    const tooMany = await decide({});
    if (tooMany.allowed) throw new Error("expected a refusal");
    expect(tooMany.rejection.status).toBe(413);
    expect(tooMany.rejection.body).toMatchObject({
      code: "too_many_units",
      feature: "emails",
      amount: 12_000,
      max_amount: MAX_COUNT_UNITS,
    });
    expect(tooMany.rejection.body.detail).toMatch(/at most 1000/);
    expect(standIn.calls.filter((c) => c.route === "POST /v1/keys/verify").map((c) => c.body)).toEqual([
      { key: KEY },
    ]);
    // A fraction of an event is the route's own bug: thrown, as a misconfiguration is.
    recipients = 2.5;
    await expect(async () => decide({})).rejects.toThrow(/got 2\.5/);
    expect(standIn.count("POST /v1/keys/verify")).toBe(1);

    recipients = MAX_COUNT_UNITS;
    const decision = await decide({});
    if (!decision.allowed) throw new Error("expected the request to be allowed");
    // The handler may not raise it past the bound either.
    expect(() => decision.context.usage("emails", MAX_COUNT_UNITS + 1)).toThrow(/at most 1000/);
    decision.finish(200);
    await tg.flush();
    expect(standIn.events).toHaveLength(MAX_COUNT_UNITS);
    expect(standIn.events.every((e) => e.meter === "emails" && e.value === 1)).toBe(true);
    expect(problems).toEqual([]);
    await tg.shutdown();
  });

  it("on a sum meter are one event of the whole amount, fractions included", async () => {
    const standIn = tollgateStandIn();
    const tg = client(standIn.fetch);
    const decide = createGate(
      tg,
      { quota: [{ feature: "tokens", meter: "tokens", amount: 12_000.5 }] },
      header,
    );
    const decision = await decide({});
    if (!decision.allowed) throw new Error("expected the request to be allowed");
    decision.finish(201);
    await tg.flush();
    expect(standIn.events).toEqual([expect.objectContaining({ meter: "tokens", value: 12_000.5 })]);
    await tg.shutdown();
  });

  it("go unchecked, not refused, when the catalog cannot be read in a quarter of the budget", async () => {
    const standIn = tollgateStandIn(() => hang(undefined, undefined));
    // Tollgate verifies slowly (150 ms) but within the route's budget, catalog wait included.
    const fetch: typeof standIn.fetch = async (input, init) => {
      if (typeof init?.body === "string" && init.body.includes("features")) await sleep(150);
      return standIn.fetch(input, init);
    };
    const tg = client(fetch);
    const decide = createGate(tg, { quota: [{ feature: "seats", meter: "seats" }], timeoutMs: 400 }, header);
    const started = Date.now();
    expect((await decide({})).allowed).toBe(true);
    expect(Date.now() - started).toBeLessThan(400);
    // The load asked for when the gate was made is shared, not repeated per request.
    expect((await decide({})).allowed).toBe(true);
    expect(standIn.count("GET /v1/plans")).toBe(1);
    await tg.shutdown();
  });

  it("go unchecked when the catalog's answer lacks its lists, which is not asked again per request", async () => {
    const standIn = tollgateStandIn(() => json(200, { data: [] }));
    const tg = client(standIn.fetch);
    const decide = createGate(tg, { quota: [{ feature: "seats", meter: "seats" }] }, header);
    for (let i = 0; i < 3; i++) expect((await decide({})).allowed).toBe(true);
    expect(standIn.count("GET /v1/plans")).toBe(1);
    await tg.shutdown();
  });

  it("are counted right on a count meter when the catalog came only after the request", async () => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    const standIn = tollgateStandIn(() => held.then(() => json(200, PLANS)));
    const tg = client(standIn.fetch);
    const decide = createGate(
      tg,
      { quota: [{ feature: "emails", meter: "emails", amount: 1500 }], timeoutMs: 40 },
      header,
    );
    const decision = await decide({}); // the catalog is not known in time: unchecked
    if (!decision.allowed) throw new Error("expected the request to be allowed");
    release();
    await sleep(10);
    decision.finish(200);
    await tg.flush();
    expect(standIn.events).toHaveLength(1500);
    await tg.shutdown();
  });
});

describe("the Hono adapter", () => {
  it("puts the rate headers on a Response the handler built itself", async () => {
    const standIn = scripted({
      "POST /v1/keys/verify": () =>
        json(200, {
          ...VALID,
          checks: {
            allowed: true,
            results: [{ ...allowed("api_requests"), type: "rate", limit: 10, remaining: 9 }],
          },
        }),
    });
    // Tollgate's RateLimit headers ride on its answer.
    const fetch: typeof standIn.fetch = async (input, init) => {
      const res = await standIn.fetch(input, init);
      const headers = new Headers(res.headers);
      headers.set("ratelimit-policy", '"api_requests";q=10;w=60');
      headers.set("ratelimit", '"api_requests";r=9;t=6');
      return new Response(res.body, { status: res.status, headers });
    };
    const app = new Hono();
    app.post("/raw", tollgate(client(fetch), { consume: [{ feature: "api_requests" }] }), () => {
      return new Response("made by hand", { status: 201, headers: { "x-handler": "1" } });
    });
    app.post("/json", tollgate(client(fetch), { consume: [{ feature: "api_requests" }] }), (c) =>
      c.json({ ok: true }, 201),
    );
    // A Response passed on as it came (immutable headers) goes out as it is.
    app.post("/passed-on", tollgate(client(fetch), { consume: [{ feature: "api_requests" }] }), () =>
      Response.redirect("https://example.com/elsewhere", 302),
    );
    for (const path of ["/raw", "/json"]) {
      const res = await app.request(path, { method: "POST", headers: { authorization: `Bearer ${KEY}` } });
      expect(res.status).toBe(201);
      expect(res.headers.get("ratelimit")).toBe('"api_requests";r=9;t=6');
      expect(res.headers.get("ratelimit-policy")).toBe('"api_requests";q=10;w=60');
    }
    const raw = await app.request("/raw", { method: "POST", headers: { authorization: `Bearer ${KEY}` } });
    expect(raw.headers.get("x-handler")).toBe("1");
    expect(await raw.text()).toBe("made by hand");
    const passed = await app.request("/passed-on", {
      method: "POST",
      headers: { authorization: `Bearer ${KEY}` },
    });
    expect(passed.status).toBe(302);
    expect(passed.headers.get("location")).toBe("https://example.com/elsewhere");
  });
});

describe("the warm path", () => {
  it("on Hono, behaves as the cold path does: the handler's answer, errors and a missing answer", async () => {
    const standIn = tollgateStandIn();
    const tg = client(standIn.fetch);
    const app = new Hono();
    app.onError((error, c) => c.text(`handled: ${error.message}`, 500));
    app.get("/ok", tollgate(tg), (c) =>
      c.json({ org: c.get("tollgate").orgId, source: c.get("tollgate").source }),
    );
    app.get("/throws", tollgate(tg), () => {
      throw new Error("boom");
    });
    // A handler that forgets to return its answer: Hono's own error, not the context sent as one.
    app.get("/no-answer", tollgate(tg), ((c: Context) => {
      c.json({});
    }) as never);
    const get = (path: string) => app.request(path, { headers: { authorization: `Bearer ${KEY}` } });
    for (const round of ["cold", "warm"]) {
      const ok = await get("/ok");
      expect(ok.status, round).toBe(200);
      expect(await ok.json(), round).toEqual({
        org: "org_a",
        source: round === "cold" ? "tollgate" : "cache",
      });
      const thrown = await get("/throws");
      expect([thrown.status, await thrown.text()], round).toEqual([500, "handled: boom"]);
      const missing = await get("/no-answer");
      expect(missing.status, round).toBe(500);
      expect(await missing.text(), round).toMatch(/handled: Context is not finalized/);
    }
    expect(standIn.count("POST /v1/keys/verify")).toBe(1);
    await tg.shutdown();
  });

  it("shares a results list no handler can change", async () => {
    const standIn = tollgateStandIn();
    const tg = client(standIn.fetch);
    const decide = createGate(tg, {}, header);
    const first = await decide({});
    if (!first.allowed) throw new Error("expected the request to be allowed");
    await sleep(0);
    const warm = decide({});
    if (warm instanceof Promise || !warm.allowed) throw new Error("expected a warm, synchronous decision");
    expect(() => (warm.context.results as unknown[]).push({})).toThrow(TypeError);
    expect(warm.context.results).toEqual([]);
    await tg.shutdown();
  });
});
