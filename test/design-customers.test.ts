import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Catalog } from "../src/modules/catalog/schema.js";
import { loadCatalog } from "../src/modules/catalog/validate.js";
import { appModes, createTestApp, type TestApp } from "./support/app.js";

/**
 * The four design customers of shared/spec/design-customers.md, each as its catalog in catalogs/:
 * the catalog loads (loadCatalog is what `tollgate catalog validate` and the server's boot use), and
 * an app running on it enforces every plan's limits through /v1/check and /v1/events. The tables
 * below are the spec's price lists (with the resolutions the catalogs note); the catalogs are what is
 * under test.
 */

type Limit = number | null;

interface PlanRow {
  plan: string;
  price: { month?: string; year?: string };
  /** Subscribe with this interval (default: the plan's monthly price). */
  interval?: "month" | "year";
  /** Metered features: the quota per billing period (null: unlimited). */
  metered: Record<string, Limit>;
  /** Limit features (allocations: seats, profiles). */
  limits?: Record<string, Limit>;
  /** Rate features: requests per minute. */
  rates?: Record<string, number>;
  booleans?: Record<string, boolean>;
}

interface Customer {
  name: string;
  file: string;
  plans: PlanRow[];
}

const catalogPath = (name: string) => fileURLToPath(new URL(`../catalogs/${name}.yaml`, import.meta.url));

/** Every boolean of a catalog, on for the listed ones. */
const switches =
  (all: string[]) =>
  (...on: string[]): Record<string, boolean> => {
    for (const key of on) if (!all.includes(key)) throw new Error(`unknown boolean ${key}`);
    return Object.fromEntries(all.map((key) => [key, on.includes(key)]));
  };

const kolektBooleans = switches([
  "premium_templates",
  "remove_ads",
  "analytics",
  "api_access",
  "white_label",
  "zapier_integration",
  "slack_integration",
  "discord_integration",
  "custom_webhook",
  "custom_integrations",
  "priority_support",
  "sla",
]);
const kolektPro = ["premium_templates", "remove_ads", "analytics", "zapier_integration"];
const kolektPaid = [...kolektPro, "slack_integration", "discord_integration"];
const kolektBusiness = [...kolektPaid, "api_access", "white_label", "custom_webhook"];

const contentBooleans = switches([
  "basic_analytics",
  "advanced_analytics",
  "custom_ai_prompts",
  "priority_support",
  "api_access",
  "white_label",
]);
const contentPro = ["basic_analytics", "advanced_analytics", "custom_ai_prompts", "priority_support"];

const hlpflBooleans = switches([
  "custom_colors_and_fonts",
  "remove_branding",
  "custom_domains",
  "api_access",
  "white_label",
  "custom_branding",
  "sla",
]);
const hlpflArtist = ["custom_colors_and_fonts", "remove_branding"];
const hlpflBusiness = [...hlpflArtist, "custom_domains", "api_access", "white_label"];

const customers: Customer[] = [
  {
    name: "Kolekt",
    file: catalogPath("kolekt"),
    plans: [
      {
        plan: "free",
        price: { month: "0" },
        metered: { kolekts: 10 },
        limits: { team_members: 1 },
        rates: { api_requests: 10 },
        booleans: kolektBooleans("zapier_integration"),
      },
      {
        plan: "pro",
        price: { month: "9.99" },
        metered: { kolekts: 100 },
        limits: { team_members: 1 },
        rates: { api_requests: 100 },
        booleans: kolektBooleans(...kolektPaid),
      },
      {
        plan: "business",
        price: { month: "29.99" },
        metered: { kolekts: 1000 },
        limits: { team_members: null },
        rates: { api_requests: 500 },
        booleans: kolektBooleans(...kolektBusiness),
      },
      {
        plan: "enterprise",
        price: { month: "99.99" },
        metered: { kolekts: 10_000 },
        limits: { team_members: null },
        rates: { api_requests: 2000 },
        booleans: kolektBooleans(...kolektBusiness, "custom_integrations", "priority_support", "sla"),
      },
      {
        plan: "pay_as_you_go",
        price: { month: "0" },
        metered: { kolekts: null },
        limits: { team_members: 1 },
        rates: { api_requests: 100 },
        booleans: kolektBooleans(...kolektPaid, "api_access"),
      },
    ],
  },
  {
    name: "Content Creation",
    file: catalogPath("content-creation"),
    plans: [
      {
        plan: "free",
        price: { month: "0" },
        metered: { uploads: 10 },
        limits: { platforms: 1 },
        booleans: contentBooleans("basic_analytics"),
      },
      {
        plan: "pro",
        price: { month: "29", year: "290" },
        metered: { uploads: 100 },
        limits: { platforms: 3 },
        booleans: contentBooleans(...contentPro),
      },
      {
        plan: "pro",
        interval: "year",
        price: { month: "29", year: "290" },
        metered: { uploads: 100 },
        limits: { platforms: 3 },
        booleans: contentBooleans(...contentPro),
      },
      {
        plan: "enterprise",
        price: { month: "99", year: "990" },
        metered: { uploads: null },
        limits: { platforms: null },
        booleans: contentBooleans(...contentPro, "api_access", "white_label"),
      },
    ],
  },
  {
    name: "HLPFL",
    file: catalogPath("hlpfl"),
    plans: [
      {
        plan: "free",
        price: { month: "0" },
        metered: { click_analytics: 100 },
        limits: { profiles: 1, links_per_profile: 5 },
        booleans: hlpflBooleans(),
      },
      {
        plan: "artist",
        price: { month: "9" },
        metered: { click_analytics: null },
        limits: { profiles: 3, links_per_profile: null },
        booleans: hlpflBooleans(...hlpflArtist),
      },
      {
        plan: "business",
        price: { month: "29" },
        metered: { click_analytics: null },
        limits: { profiles: 10, links_per_profile: null },
        booleans: hlpflBooleans(...hlpflBusiness),
      },
      {
        plan: "enterprise",
        price: { month: "99" },
        metered: { click_analytics: null },
        limits: { profiles: null, links_per_profile: null },
        booleans: hlpflBooleans(...hlpflBusiness, "custom_branding", "sla"),
      },
    ],
  },
  {
    name: "Trendit",
    file: catalogPath("trendit"),
    plans: [
      {
        plan: "free",
        price: { month: "0" },
        metered: { api_calls: 100, exports: 5, sentiment_analyses: 50 },
      },
      {
        plan: "pro",
        price: { month: "29" },
        metered: { api_calls: 10_000, exports: 100, sentiment_analyses: 2000 },
      },
      {
        plan: "enterprise",
        price: { month: "299" },
        metered: { api_calls: 100_000, exports: 1000, sentiment_analyses: 20_000 },
      },
    ],
  },
];

/** The richest and the leanest storage: both counter-store twins, both databases when configured. */
const modes = appModes.filter(
  (m) => (m.database === "pglite" && !m.redis) || (m.database === "postgres" && m.redis),
);

const monthly = (row: PlanRow) => Number(row.price.month ?? Number(row.price.year ?? "0") / 12);
const iso = (ms: number) => new Date(ms).toISOString();
let sequence = 0;
const eventId = () => `evt_${Date.now().toString(36)}_${sequence++}`;

/** One year after `ms`, same day and time (UTC). */
function oneYearAfter(ms: number): number {
  const d = new Date(ms);
  return Date.UTC(
    d.getUTCFullYear() + 1,
    d.getUTCMonth(),
    d.getUTCDate(),
    d.getUTCHours(),
    d.getUTCMinutes(),
    d.getUTCSeconds(),
    d.getUTCMilliseconds(),
  );
}

describe.each(customers)("$name catalog", (customer) => {
  it("loads, with the spec's plans, prices and features", () => {
    const catalog: Catalog = loadCatalog(customer.file);
    const rows = new Map(customer.plans.map((row) => [row.plan, row]));
    expect(catalog.plans.map((p) => p.key).sort()).toEqual([...rows.keys()].sort());
    expect(catalog.currency).toBe("USD");
    expect(catalog.default_plan).toBe("free");
    for (const plan of catalog.plans) {
      const row = rows.get(plan.key) as PlanRow;
      expect(plan.price, plan.key).toEqual(row.price);
    }
    // The table names every feature of the catalog, each with the catalog's type.
    const types = new Map(catalog.features.map((f) => [f.key, f.type]));
    for (const row of customer.plans) {
      const named: [string, string][] = [
        ...Object.keys(row.metered).map((k): [string, string] => [k, "metered"]),
        ...Object.keys(row.limits ?? {}).map((k): [string, string] => [k, "limit"]),
        ...Object.keys(row.rates ?? {}).map((k): [string, string] => [k, "rate"]),
        ...Object.keys(row.booleans ?? {}).map((k): [string, string] => [k, "boolean"]),
      ];
      expect(named.map(([k]) => k).sort(), row.plan).toEqual([...types.keys()].sort());
      for (const [key, type] of named) expect(types.get(key), `${row.plan} ${key}`).toBe(type);
    }
  });

  describe.each(modes)("enforced ($name)", (mode) => {
    let t: TestApp;
    let catalog: Catalog;
    beforeAll(async () => {
      t = await createTestApp({
        ...mode,
        env: { TOLLGATE_TEST_CLOCK: "1", TOLLGATE_CATALOG: customer.file },
      });
      catalog = t.deps.catalog;
    });
    afterAll(() => t.close());

    const newOrg = async () => {
      const res = await t.call("POST", "/v1/orgs", { auth: "operator", body: { name: customer.name } });
      expect(res.status, res.text).toBe(201);
      return res.body.id as string;
    };
    const check = (org: string, feature: string, amount: number | string = 1) =>
      t.call("POST", "/v1/check", { auth: "operator", body: { org_id: org, feature, amount } });
    const allowed = async (org: string, feature: string, amount: number | string, used: number) => {
      const res = await check(org, feature, amount);
      expect(res.status, res.text).toBe(200);
      expect(res.body, `${feature} ${amount}`).toMatchObject({ allowed: true, feature, used });
      return res;
    };
    const advance = async (ms: number) => {
      const to = iso(t.deps.clock.nowMs() + ms);
      const res = await t.call("POST", "/v1/test-clock/advance", { auth: "operator", body: { to } });
      expect(res.status, res.text).toBe(200);
    };
    /** A denial names the cheapest plan granting more (if any) and links to the org's billing page. */
    const expectUpgrade = (
      body: { upgrade_url?: string; upgrade_plan?: string },
      org: string,
      feature: string,
      better: PlanRow[],
    ) => {
      expect(body.upgrade_url, feature).toBeDefined();
      const url = new URL(body.upgrade_url as string);
      expect(url.pathname).toBe(`/dashboard/orgs/${org}/billing`);
      expect(url.searchParams.get("feature")).toBe(feature);
      if (better.length === 0) {
        expect(body.upgrade_plan, feature).toBeUndefined();
        return;
      }
      const cheapest = Math.min(...better.map(monthly));
      expect(
        better.filter((r) => monthly(r) === cheapest).map((r) => r.plan),
        `${feature}: upgrade to ${body.upgrade_plan}`,
      ).toContain(body.upgrade_plan);
      expect(url.searchParams.get("plan")).toBe(body.upgrade_plan);
    };

    for (const row of customer.plans) {
      const others = customer.plans.filter((r) => r.plan !== row.plan);
      it(`${row.plan}${row.interval ? ` (${row.interval}ly)` : ""}: every limit holds`, async () => {
        const org = await newOrg();
        let sub: {
          current_period_start: string;
          current_period_end: string;
          usage_period_end: string;
          plan: string;
          interval: string;
        };
        if (row.plan !== catalog.default_plan || row.interval) {
          const res = await t.call("POST", `/v1/orgs/${org}/subscription`, {
            auth: "operator",
            body: { plan: row.plan, skip_payment: true, ...(row.interval ? { interval: row.interval } : {}) },
          });
          expect(res.status, res.text).toBe(200);
          sub = res.body;
        } else {
          sub = (await t.call("GET", `/v1/orgs/${org}/subscription`, { auth: "operator" })).body;
        }
        expect(sub.plan).toBe(row.plan);
        expect(sub.interval).toBe(row.interval ?? "month");
        const start = Date.parse(sub.current_period_start);
        if (row.interval === "year") {
          expect(Date.parse(sub.current_period_end)).toBe(oneYearAfter(start));
          // Quotas are "per month" on annual plans too: the usage period is the first month.
          expect(Date.parse(sub.usage_period_end)).toBeLessThan(Date.parse(sub.current_period_end));
          expect(Date.parse(sub.usage_period_end) - start).toBeLessThanOrEqual(31 * 86_400_000);
          expect(Date.parse(sub.usage_period_end) - start).toBeGreaterThanOrEqual(28 * 86_400_000);
        } else {
          expect(sub.usage_period_end).toBe(sub.current_period_end);
          const s = new Date(start);
          expect(Date.parse(sub.current_period_end)).toBe(
            Date.UTC(
              s.getUTCFullYear(),
              s.getUTCMonth() + 1,
              Math.min(
                s.getUTCDate(),
                new Date(Date.UTC(s.getUTCFullYear(), s.getUTCMonth() + 2, 0)).getUTCDate(),
              ),
              s.getUTCHours(),
              s.getUTCMinutes(),
              s.getUTCSeconds(),
              s.getUTCMilliseconds(),
            ),
          );
        }

        // The entitlements as the dashboard shows them.
        const ent = await t.call("GET", `/v1/orgs/${org}/entitlements`, { auth: "operator" });
        expect(ent.status, ent.text).toBe(200);
        expect(ent.body).toMatchObject({ plan: row.plan, status: "active" });
        const shown = new Map<string, Record<string, unknown>>(
          ent.body.features.map((f: { feature: string }) => [f.feature, f]),
        );
        for (const [feature, limit] of Object.entries({ ...row.metered, ...row.limits })) {
          expect(shown.get(feature), feature).toMatchObject({ enabled: true, limit, used: 0 });
        }
        for (const [feature, limit] of Object.entries(row.rates ?? {})) {
          expect(shown.get(feature), feature).toMatchObject({ enabled: true, limit, window: "1m" });
        }
        for (const [feature, enabled] of Object.entries(row.booleans ?? {})) {
          expect(shown.get(feature), feature).toMatchObject({ type: "boolean", enabled });
        }

        // Booleans, all in one call.
        const booleans = Object.entries(row.booleans ?? {});
        if (booleans.length > 0) {
          const res = await t.call("POST", "/v1/check", {
            auth: "operator",
            body: { org_id: org, features: booleans.map(([feature]) => ({ feature })) },
          });
          expect(res.status, res.text).toBe(200);
          expect(res.body.allowed).toBe(booleans.every(([, on]) => on));
          booleans.forEach(([feature, on], i) => {
            const result = res.body.results[i];
            expect(result, feature).toMatchObject({ feature, type: "boolean", allowed: on });
            if (!on) {
              expect(result.reason, feature).toBe("feature_not_in_plan");
              expectUpgrade(
                result,
                org,
                feature,
                others.filter((r) => r.booleans?.[feature] === true),
              );
            }
          });
        }

        // Metered quotas, used partly by events and the rest by checks.
        for (const [feature, limit] of Object.entries(row.metered)) {
          const definition = catalog.features.find((f) => f.key === feature);
          if (definition?.type !== "metered") throw new Error(`${feature} is not metered`);
          const meter = catalog.meters.find((m) => m.key === definition.meter);
          const fromEvents = limit === null ? 30 : Math.min(30, Math.floor(limit / 2));
          const events =
            meter?.aggregation === "sum"
              ? [{ id: eventId(), org_id: org, meter: definition.meter, value: String(fromEvents) }]
              : Array.from({ length: fromEvents }, () => ({
                  id: eventId(),
                  org_id: org,
                  meter: definition.meter,
                }));
          const posted = await t.call("POST", "/v1/events", { auth: "operator", body: { events } });
          expect(posted.status, posted.text).toBe(202);
          expect(posted.body.accepted, feature).toBe(events.length);
          if (limit === null) {
            const res = await allowed(org, feature, 1_000_000, 1_000_000 + fromEvents);
            expect(res.body).toMatchObject({ limit: null, remaining: null });
            continue;
          }
          await allowed(org, feature, limit - fromEvents - 1, limit - 1);
          const last = await allowed(org, feature, 1, limit);
          expect(last.body.remaining).toBe(0);
          const denied = await check(org, feature);
          expect(denied.status, denied.text).toBe(200);
          expect(denied.body, feature).toMatchObject({
            allowed: false,
            feature,
            type: "metered",
            reason: "quota_exceeded",
            used: limit,
            limit,
            remaining: 0,
            resets_at: sub.usage_period_end,
          });
          expectUpgrade(
            denied.body,
            org,
            feature,
            others.filter((r) => {
              const more = r.metered[feature];
              return more === null || (more !== undefined && more > limit);
            }),
          );
        }

        // Allocations: consume up to the limit, release with a negative amount.
        for (const [feature, limit] of Object.entries(row.limits ?? {})) {
          if (limit === null) {
            const res = await allowed(org, feature, 1000, 1000);
            expect(res.body).toMatchObject({ limit: null, remaining: null });
            await allowed(org, feature, -1000, 0);
            continue;
          }
          await allowed(org, feature, limit, limit);
          const denied = await check(org, feature);
          expect(denied.body, feature).toMatchObject({
            allowed: false,
            reason: "limit_exceeded",
            used: limit,
            limit,
            remaining: 0,
          });
          expectUpgrade(
            denied.body,
            org,
            feature,
            others.filter((r) => {
              const more = r.limits?.[feature];
              return more === null || (more !== undefined && more > limit);
            }),
          );
          await allowed(org, feature, -1, limit - 1);
          await allowed(org, feature, 1, limit);
          expect((await check(org, feature)).body.allowed).toBe(false);
        }

        // Rates per minute: a burst of the whole limit, then denied until the window has passed.
        for (const [feature, limit] of Object.entries(row.rates ?? {})) {
          const burst = await check(org, feature, limit);
          expect(burst.body, feature).toMatchObject({ allowed: true, limit, remaining: 0 });
          expect(burst.headers.get("ratelimit-policy")).toBe(`"${feature}";q=${limit};w=60`);
          const denied = await check(org, feature);
          expect(denied.body, feature).toMatchObject({ allowed: false, reason: "rate_limited", limit });
          expect(denied.body.retry_after_ms).toBeGreaterThan(0);
          expect(denied.body.retry_after_ms).toBeLessThanOrEqual(60_000 / limit);
          expect(Number(denied.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
          expectUpgrade(
            denied.body,
            org,
            feature,
            others.filter((r) => (r.rates?.[feature] ?? 0) > limit),
          );
          await advance(60_000);
          expect((await check(org, feature, limit)).body.allowed, feature).toBe(true);
        }

        // What is used shows on the entitlements.
        const after = await t.call("GET", `/v1/orgs/${org}/entitlements`, { auth: "operator" });
        const usedNow = new Map(
          after.body.features.map((f: { feature: string; used: number | null }) => [f.feature, f.used]),
        );
        for (const [feature, limit] of Object.entries(row.metered)) {
          expect(usedNow.get(feature), feature).toBe(limit ?? 1_000_030);
        }
        for (const [feature, limit] of Object.entries(row.limits ?? {})) {
          expect(usedNow.get(feature), feature).toBe(limit ?? 0);
        }
      });
    }

    if (customer.name === "Kolekt") {
      it("limits the free plan's API keys to 10 requests a minute on Tollgate's own API", async () => {
        const org = await newOrg();
        const created = await t.call("POST", `/v1/orgs/${org}/api-keys`, {
          auth: "operator",
          body: { name: "Backend", scopes: ["usage:read"] },
        });
        expect(created.status, created.text).toBe(201);
        const read = () => t.call("GET", `/v1/orgs/${org}/entitlements`, { auth: created.body.key });
        for (let i = 0; i < 10; i++) expect((await read()).status, `request ${i + 1}`).toBe(200);
        const limited = await read();
        expect(limited.status).toBe(429);
        expect(limited.body.code).toBe("rate_limited");
        expect(limited.headers.get("ratelimit-policy")).toBe(`"api_requests";q=10;w=60`);
        expect(Number(limited.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
        await advance(60_000);
        expect((await read()).status).toBe(200);
      });
    }

    if (customer.name === "Trendit") {
      it("counts a batch of sentiment texts as one unit per text, and says why the month is over", async () => {
        const org = await newOrg();
        // A batch of 30 texts through the check, then one event for a batch of 20.
        const batch = await allowed(org, "sentiment_analyses", 30, 30);
        expect(batch.body).toMatchObject({ limit: 50, remaining: 20 });
        const event = await t.call("POST", "/v1/events", {
          auth: "operator",
          body: { events: [{ id: eventId(), org_id: org, meter: "sentiment_analyses", value: 20 }] },
        });
        expect(event.body.accepted).toBe(1);
        const denied = await check(org, "sentiment_analyses", 1);
        expect(denied.body).toMatchObject({
          allowed: false,
          reason: "quota_exceeded",
          used: 50,
          limit: 50,
          upgrade_plan: "pro",
        });
        expect(denied.body.upgrade_url).toContain(`/dashboard/orgs/${org}/billing`);
        // The other quotas are untouched.
        expect((await check(org, "exports", 5)).body).toMatchObject({ allowed: true, used: 5 });
      });
    }

    if (customer.name === "Content Creation") {
      it("counts AI metadata requests against the uploads quota", async () => {
        const org = await newOrg();
        const events = Array.from({ length: 10 }, (_, i) => ({
          id: eventId(),
          org_id: org,
          meter: "uploads",
          properties: { kind: i % 2 === 0 ? "upload" : "ai_metadata" },
        }));
        expect(
          (await t.call("POST", "/v1/events", { auth: "operator", body: { events } })).body.accepted,
        ).toBe(10);
        expect((await check(org, "uploads")).body).toMatchObject({
          allowed: false,
          reason: "quota_exceeded",
          used: 10,
          limit: 10,
          upgrade_plan: "pro",
        });
      });
    }
  });
});
