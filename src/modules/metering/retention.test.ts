import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { inArray, sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { appModes, createTestApp, type TestApp } from "../../../test/support/app.js";
import { createTestDatabase, type TestDatabase } from "../../../test/support/storage.js";
import { writeCatalog } from "../../../test/support/tollgate-process.js";
import { invoices, orgs, usageEvents } from "../../db/schema.js";
import { usagePeriodAt } from "../plans/periods.js";
import { INGESTION_SLACK_MS, purgeExpiredUsage, retentionCutoffMs } from "./retention.js";

/**
 * Data retention of raw usage events on the Trendit catalog (free 30 days, pro 365, enterprise
 * unlimited), on the test clock: the purge deletes exactly the events past their org's retention and
 * not one row more — never one ingestion could still accept again (a replay would count twice), one
 * in the period billing has not invoiced yet, or one in the period of an invoice that is not final —
 * follows the plan version each org bought, leaves every aggregate as it was, deletes nothing on a
 * second run, and splits the work when two processes run it at once.
 */

const day = 86_400_000;
const hour = 3_600_000;
const iso = (ms: number) => new Date(ms).toISOString();

const TRENDIT = fileURLToPath(new URL("../../../catalogs/trendit.yaml", import.meta.url));
const trenditYaml = readFileSync(TRENDIT, "utf8");
/** The next Trendit catalog: pro keeps 90 days instead of 365 (a new version of pro). */
const TRENDIT_V2 = writeCatalog(trenditYaml.replace("data_retention_days: 365", "data_retention_days: 90"));

/** Ages (days before "now") of the events written straight into usage_events, as old data would be. */
const AGES = [10, 29, 31, 33, 45, 55, 89, 91, 100, 105, 160, 260, 364, 366, 400];
const aged = (age: number) => `aged-${age}`;
const older = (days: number) => AGES.filter((a) => a > days).map(aged);
const younger = (days: number) => AGES.filter((a) => a <= days).map(aged);

describe("the retention cutoff", () => {
  const jan1 = Date.UTC(2031, 0, 1);
  const subject = {
    retentionDays: 30,
    anchorMs: jan1,
    interval: "month" as const,
    status: "active" as const,
    billedThroughMs: jan1,
    changedAtMs: jan1 - 100 * day,
  };

  it("is the retention when the open periods started later", () => {
    const now = Date.UTC(2031, 0, 20, 12);
    expect(retentionCutoffMs(subject, now)).toBe(now - 30 * day);
    expect(retentionCutoffMs({ ...subject, retentionDays: null }, now)).toBeNull();
  });

  it("never passes the start of the usage period ingestion still accepts (31-day months)", () => {
    // Jan 31 noon: 30 days back is Jan 1 noon, but events from Jan 1 00:00 can still be sent.
    expect(retentionCutoffMs(subject, Date.UTC(2031, 0, 31, 12))).toBe(jan1);
    // Within a day after the boundary the previous period still counts as open (batches in flight).
    const feb1 = Date.UTC(2031, 1, 1);
    const afterBoundary = { ...subject, billedThroughMs: feb1 };
    expect(retentionCutoffMs(afterBoundary, feb1 + 6 * hour)).toBe(jan1);
    expect(retentionCutoffMs(afterBoundary, feb1 + INGESTION_SLACK_MS + hour)).toBe(
      feb1 + INGESTION_SLACK_MS + hour - 30 * day,
    );
  });

  it("keeps the longest usage period after a recent subscription change (caches may hold the old anchor)", () => {
    const now = Date.UTC(2031, 2, 10, 12);
    const changed = { ...subject, billedThroughMs: Date.UTC(2031, 2, 1), changedAtMs: now - hour };
    expect(retentionCutoffMs(changed, now)).toBe(now - INGESTION_SLACK_MS - 31 * day);
  });

  it("keeps the period billing has not closed, unless the subscription is canceled", () => {
    const now = Date.UTC(2031, 5, 10);
    const behind = { ...subject, retentionDays: 1, billedThroughMs: Date.UTC(2031, 3, 1) };
    expect(retentionCutoffMs(behind, now)).toBe(Date.UTC(2031, 3, 1));
    // Annual: the whole year so far is not invoiced yet.
    expect(retentionCutoffMs({ ...behind, interval: "year", billedThroughMs: jan1 }, now)).toBe(jan1);
    // Canceled: nothing more is invoiced; the open usage period still counts for ingestion.
    expect(retentionCutoffMs({ ...behind, status: "canceled" }, now)).toBe(Date.UTC(2031, 5, 1));
    // No subscription row: billing would start at the current period.
    expect(retentionCutoffMs({ ...behind, status: null, billedThroughMs: null }, now)).toBe(
      Date.UTC(2031, 5, 1),
    );
  });
});

describe.each(appModes)("purging expired usage events ($name)", (mode) => {
  let db: TestDatabase;
  let t: TestApp;
  let next: TestApp | undefined;
  const env = (catalog: string) => ({ TOLLGATE_TEST_CLOCK: "1", TOLLGATE_CATALOG: catalog });

  beforeAll(async () => {
    db = await createTestDatabase(mode.database);
    t = await createTestApp({ ...mode, sharedDatabase: db.handle, env: env(TRENDIT) });
  });
  afterAll(async () => {
    await next?.close();
    await t?.close();
    await db?.drop();
  });

  const op = async (app: TestApp, method: string, path: string, body?: unknown) => {
    const res = await app.call(method, path, { auth: "operator", body });
    expect(res.status, `${method} ${path}: ${res.text}`).toBeLessThan(300);
    return res.body;
  };
  const advanceTo = (ms: number) => op(t, "POST", "/v1/test-clock/advance", { to: iso(ms) });
  const newOrg = async (app: TestApp, name: string, plan?: string) => {
    const org = (await op(app, "POST", "/v1/orgs", { name })).id as string;
    if (plan) await op(app, "POST", `/v1/orgs/${org}/subscription`, { plan, skip_payment: true });
    return org;
  };
  const send = (org: string, id: string, extra: Record<string, unknown> = {}) =>
    t.call("POST", "/v1/events", {
      auth: "operator",
      body: { events: [{ id, org_id: org, meter: "api_calls", ...extra }] },
    });
  /** Old events, written as ingestion writes them (ingestion refuses them now: their period is closed). */
  const insertAged = async (org: string, anchorMs: number, nowMs: number, ages: number[]) => {
    await t.database.db.insert(usageEvents).values(
      ages.map((age) => {
        const at = nowMs - age * day;
        return {
          orgId: org,
          eventId: aged(age),
          meter: "api_calls",
          timestamp: new Date(at),
          value: "1",
          properties: {},
          periodStart: new Date(usagePeriodAt(anchorMs, at).startMs),
          receivedAt: new Date(at),
          batchPosition: 0,
        };
      }),
    );
  };
  const remaining = async (ids: string[]) =>
    (
      await t.database.db
        .select({ org: usageEvents.orgId, id: usageEvents.eventId })
        .from(usageEvents)
        .where(inArray(usageEvents.orgId, ids))
    )
      .map((r) => `${r.org} ${r.id}`)
      .sort();
  const expected = (byOrg: Record<string, string[]>) =>
    Object.entries(byOrg)
      .flatMap(([org, ids]) => ids.map((id) => `${org} ${id}`))
      .sort();
  /** Every aggregate the purge must leave alone, in a stable order. */
  const aggregates = async () => ({
    rollups: await t.database.query(sql`select * from usage_rollups order by 1, 2, 3, 4`),
    periods: await t.database.query(
      sql`select org_id, meter, period_start, quantity from usage_periods order by 1, 2, 3`,
    ),
    uniques: await t.database.query(sql`select * from usage_uniques order by 1, 2, 3, 4`),
  });

  it("deletes exactly the expired events, per plan version, keeping what ingestion and billing may still need", async () => {
    const year = new Date(t.deps.clock.nowMs()).getUTCFullYear() + 1;
    const jan1 = Date.UTC(year, 0, 1);
    const feb1 = Date.UTC(year, 1, 1, 1);
    const now = Date.UTC(year, 2, 10, 12);
    await advanceTo(jan1);

    // Every org is anchored on Jan 1: usage and billing periods are calendar months.
    const free = await newOrg(t, "Free");
    const pro = await newOrg(t, "Pro", "pro");
    const enterprise = await newOrg(t, "Enterprise", "enterprise");
    const withInvoices = await newOrg(t, "Unpaid");
    const recent = await newOrg(t, "Recently changed");
    for (const org of [pro, enterprise])
      await op(t, "PUT", `/v1/orgs/${org}/payment-method`, { card_number: "4242424242424242" });
    // An org from before subscriptions existed: no subscription row, so the default plan (free).
    const bare = "org_retention_bare_0000000000";
    await t.database.db.insert(orgs).values({ id: bare, name: "Bare", createdAt: new Date(jan1) });
    const live = [free, pro, enterprise, withInvoices, recent];
    const all = [...live, bare];

    // Live events through the API as the months go by; each month's close runs the billing run.
    for (const org of live) expect((await send(org, "live-jan1")).status).toBe(202);
    await advanceTo(feb1);
    for (const org of live) expect((await send(org, "live-feb1")).status).toBe(202);
    await advanceTo(Date.UTC(year, 2, 1, 1));
    await advanceTo(now);

    // An hour ago the operator moved `recent` to enterprise and back: another process may still hold
    // its subscription as it was (a changed anchor), so the whole longest usage period stays.
    await op(t, "POST", `/v1/orgs/${recent}/subscription`, { plan: "enterprise", skip_payment: true });
    await op(t, "POST", `/v1/orgs/${recent}/subscription`, { plan: "free", skip_payment: true });
    for (const org of live) expect((await send(org, "live-now")).status).toBe(202);
    for (const org of all) await insertAged(org, jan1, now, AGES);

    // Invoices of `withInvoices` over old months (invoices close whole usage periods): an open
    // (finalized, unpaid) one and a draft keep their months' events; paid and void ones are final.
    const monthOf = (age: number) => usagePeriodAt(jan1, now - age * day);
    const months = { finalized: monthOf(100), draft: monthOf(160), paid: monthOf(260), void: monthOf(400) };
    await t.database.db.insert(invoices).values(
      Object.entries(months).map(([status, period]) => ({
        id: `inv_retention_${status}`,
        orgId: withInvoices,
        status: status as keyof typeof months,
        reason: "manual" as const,
        currency: "USD",
        number: status === "draft" ? null : `RET-${status}`,
        periodStart: new Date(period.startMs),
        periodEnd: new Date(period.endMs),
        subtotal: "29.00",
        total: "29.00",
        amountDue: "29.00",
        dedupKey: `retention:${status}`,
      })),
    );
    const inOpenInvoice = (ms: number) =>
      [months.finalized, months.draft].some((p) => ms >= p.startMs && ms < p.endMs);
    const keptByInvoices = AGES.filter((a) => a > 30 && inOpenInvoice(now - a * day)).map(aged);
    expect(keptByInvoices).toEqual(expect.arrayContaining([aged(100), aged(160)]));
    expect(keptByInvoices).not.toContain(aged(260));
    // Billing selects a period's events by their recorded usage period: one counted in the open
    // invoice's month stays too, even with a timestamp outside it (as under another anchor).
    const countedAt = months.finalized.endMs + 2 * day;
    expect(inOpenInvoice(countedAt)).toBe(false);
    await t.database.db.insert(usageEvents).values({
      orgId: withInvoices,
      eventId: "counted-in-open-invoice",
      meter: "api_calls",
      timestamp: new Date(countedAt),
      value: "1",
      properties: {},
      periodStart: new Date(months.finalized.startMs),
      receivedAt: new Date(countedAt),
    });

    // The same for the open billing period: an old timestamp counted in March is March's usage.
    await t.database.db.insert(usageEvents).values({
      orgId: free,
      eventId: "counted-in-open-period",
      meter: "api_calls",
      timestamp: new Date(now - 40 * day),
      value: "1",
      properties: {},
      periodStart: new Date(Date.UTC(year, 2, 1)),
      receivedAt: new Date(now - 40 * day),
    });

    const beforeAggregates = await aggregates();
    const usage = (org: string) =>
      op(
        t,
        "GET",
        `/v1/orgs/${org}/usage?meter=api_calls&from=${iso(jan1)}&to=${iso(now + hour)}&granularity=month`,
      );
    const beforeUsage = await Promise.all(live.map(usage));
    expect(beforeUsage[0].series.map((p: { value: string }) => p.value)).toEqual(["1", "1", "1"]);
    const countBefore = (await remaining(all)).length;
    const liveExpired = (await remaining([free, withInvoices, recent])).filter((r) =>
      / live-(jan1|feb1)$/.test(r),
    ).length;

    const expectedAfter = expected({
      // 30 days: the live events of Jan 1 (68.5 days old) and Feb 1 (37.5) go too.
      [free]: [...younger(30), "counted-in-open-period", "live-now"],
      // 365 days (the version bought; its paid invoices are final).
      [pro]: [...younger(365), "live-jan1", "live-feb1", "live-now"],
      [enterprise]: [...AGES.map(aged), "live-jan1", "live-feb1", "live-now"],
      // 30 days, plus what the open invoice and the draft cover.
      [withInvoices]: [...younger(30), ...keptByInvoices, "counted-in-open-invoice", "live-now"],
      // 30 days, but nothing from the last 31 days + 1 after a change: the 31-day-old event stays.
      [recent]: [...younger(31), "live-now"],
      // The default plan: 30 days.
      [bare]: younger(30),
    });

    const first = await purgeExpiredUsage(t.deps, new Date(now), { batchSize: 4 });
    expect(await remaining(all)).toEqual(expectedAfter);
    expect(first).toEqual({ orgs: 5, deleted: countBefore - expectedAfter.length });
    // By hand: the old events written above (the live ones of Jan 1 and Feb 1 past 30 days may have
    // gone already, if a scheduled purge ran when the clock advanced).
    expect(first.deleted).toBe(
      older(30).length + // free
        older(365).length + // pro
        (older(30).length - keptByInvoices.length) + // withInvoices
        older(31).length + // recent
        older(30).length + // bare
        liveExpired,
    );
    expect(t.logs.text).toContain("usage retention: expired raw events deleted");

    // Idempotent.
    expect(await purgeExpiredUsage(t.deps, new Date(now))).toEqual({ orgs: 0, deleted: 0 });
    expect(await remaining(all)).toEqual(expectedAfter);

    // Aggregates and usage reads are untouched: charts and quotas still see January and February.
    expect(await aggregates()).toEqual(beforeAggregates);
    expect(await Promise.all(live.map(usage))).toEqual(beforeUsage);
    const entitlements = await op(t, "GET", `/v1/orgs/${free}/entitlements`);
    expect(entitlements.features.find((f: { feature: string }) => f.feature === "api_calls").used).toBe(1);
    // A deleted event sent again is refused (its period is closed): it can never count twice.
    const replay = await send(free, "live-feb1", { timestamp: iso(feb1) });
    expect(replay.body).toMatchObject({ accepted: 0, rejected: [{ code: "timestamp_too_old" }] });

    // The next catalog shortens pro to 90 days: a new version. Subscribers of the old one keep 365;
    // a new subscriber gets 90. A second process (on it) and the first purge at the same time.
    next = await createTestApp({ ...mode, sharedDatabase: db.handle, env: env(TRENDIT_V2) });
    expect(next.deps.plans.current("pro")?.version).toBe(2);
    const pro2 = await newOrg(next, "Pro v2", "pro");
    await insertAged(pro2, now, now, AGES);
    // Enough rows for many batches in both processes.
    await t.database.query(sql`
      insert into usage_events (org_id, event_id, meter, "timestamp", value, properties, period_start, received_at)
      select ${pro2}, 'bulk-' || i, 'api_calls', ${iso(now - 120 * day)}::timestamptz, 1, '{}'::jsonb,
        ${iso(usagePeriodAt(now, now - 120 * day).startMs)}::timestamptz, ${iso(now - 120 * day)}::timestamptz
      from generate_series(1, 300) as i`);
    const twice = await Promise.all([
      purgeExpiredUsage(t.deps, new Date(now), { batchSize: 7 }),
      purgeExpiredUsage(next.deps, new Date(now), { batchSize: 11 }),
    ]);
    expect(twice[0].deleted + twice[1].deleted).toBe(older(90).length + 300);
    expect(await remaining([...all, pro2])).toEqual(
      expected({ [pro2]: younger(90) })
        .concat(expectedAfter)
        .sort(),
    );
    expect(await purgeExpiredUsage(next.deps, new Date(now))).toEqual({ orgs: 0, deleted: 0 });
    expect(await aggregates()).toEqual(beforeAggregates);
  });
});
