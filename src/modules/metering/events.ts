import { sql } from "drizzle-orm";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import type { Meter } from "../catalog/schema.js";
import { usagePeriodAt } from "../plans/periods.js";
import { type OrgPlan, orgPlan } from "../plans/subscriptions.js";
import { markStale, meterCounterTtl } from "./check.js";
import { catalogIndex, grantOf } from "./features.js";
import { meterCounterKey } from "./keys.js";
import {
  isoCache,
  PerOrg,
  periodTotalsAndThresholds,
  ROLLUP_MERGE,
  type ThresholdMark,
  textArray,
} from "./ledger.js";
import { decimalPlaces, toDecimalText, toMicros } from "./quantities.js";

/**
 * `POST /v1/events`: usage that already happened, in batches of up to 1000. Each event is validated
 * on its own (rejected ones are listed, the rest accepted); events are deduplicated per org by id
 * forever (a replay is a success, never a second count); everything accepted is committed — events,
 * hourly rollups, period totals, threshold crossings — in one transaction before the 202.
 */

export const MAX_BATCH = 1000;
/** Events may run ahead of the server's clock by this much (clock skew); later is refused. */
export const MAX_FUTURE_MS = 5 * 60_000;
const MAX_ID_LENGTH = 256;
const MAX_PROPERTIES_BYTES = 8 * 1024;

export interface Rejection {
  index: number;
  code: string;
  detail: string;
}

export interface IngestResult {
  accepted: number;
  duplicates: number;
  rejected: Rejection[];
}

interface ValidEvent {
  index: number;
  orgId: string;
  id: string;
  meter: Meter;
  atMs: number;
  value: string;
  properties: string;
  periodStartMs: number;
  periodEndMs: number;
  unique: string | null;
  org: OrgPlan;
}

const ISO_TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/i;
const EVENT_FIELDS = new Set(["id", "org_id", "meter", "value", "timestamp", "properties"]);

/** Validates the envelope: `{events: [...]}` with 1 to 1000 entries; each entry is checked later. */
export function eventsOf(body: unknown): unknown[] {
  const problem = (field: string, message: string, code: string) =>
    new AppError("validation_failed", `Invalid request body: ${field} ${message}`, {
      errors: [{ field, message, code, location: "body" }],
    });
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw problem("body", "must be an object with an events array", "invalid_type");
  }
  const unknown = Object.keys(body).filter((k) => k !== "events");
  if (unknown.length > 0) {
    throw new AppError(
      "validation_failed",
      `Invalid request body: ${unknown.join(", ")} is not a known field`,
      {
        errors: unknown.map((field) => ({
          field,
          message: "is not a known field",
          code: "unknown_field",
          location: "body",
        })),
      },
    );
  }
  const events = (body as { events?: unknown }).events;
  if (events === undefined) throw problem("events", "is required", "required");
  if (!Array.isArray(events)) throw problem("events", "must be an array", "invalid_type");
  if (events.length === 0) throw problem("events", "must contain at least one event", "too_small");
  if (events.length > MAX_BATCH) {
    throw problem(
      "events",
      `must contain at most ${MAX_BATCH} events (got ${events.length}); split the batch`,
      "too_big",
    );
  }
  return events;
}

export async function ingestEvents(deps: Deps, raw: unknown[]): Promise<IngestResult> {
  const nowMs = deps.clock.nowMs();
  const index = catalogIndex(deps.catalog);
  const rejected: Rejection[] = [];
  const reject = (i: number, code: string, detail: string) => rejected.push({ index: i, code, detail });

  // Orgs are looked up once per batch (through the hot path's cache).
  const orgIds = new Set<string>();
  for (const event of raw) {
    const orgId = (event as { org_id?: unknown } | null)?.org_id;
    if (typeof orgId === "string" && orgId.length <= MAX_ID_LENGTH && !orgId.includes("\u0000"))
      orgIds.add(orgId);
  }
  const orgs = new Map<string, OrgPlan | undefined>();
  await Promise.all([...orgIds].map(async (id) => orgs.set(id, await orgPlan(deps, id, nowMs))));

  const valid: ValidEvent[] = [];
  /** Event ids of the batch so far, per org. */
  const seen = new Map<string, Set<string>>();
  let duplicates = 0;
  for (let i = 0; i < raw.length; i++) {
    const event = raw[i];
    if (typeof event !== "object" || event === null || Array.isArray(event)) {
      reject(i, "invalid_event", "must be an object");
      continue;
    }
    const e = event as Record<string, unknown>;
    const extra = unknownField(e);
    if (extra !== undefined) {
      reject(i, "unknown_field", `${extra} is not a known field`);
      continue;
    }
    // Postgres cannot store the NUL character: refused here, per event, not by the database.
    if (
      typeof e.id !== "string" ||
      e.id.length === 0 ||
      e.id.length > MAX_ID_LENGTH ||
      e.id.includes("\u0000")
    ) {
      reject(i, "invalid_id", `id must be a string of 1 to ${MAX_ID_LENGTH} characters, without NUL`);
      continue;
    }
    if (typeof e.org_id !== "string" || e.org_id.includes("\u0000")) {
      reject(i, "invalid_org", "org_id must be a string, without NUL");
      continue;
    }
    const org = orgs.get(e.org_id);
    if (!org) {
      reject(i, "unknown_org", `no organization ${e.org_id}`);
      continue;
    }
    if (typeof e.meter !== "string") {
      reject(i, "invalid_meter", "meter must be a string");
      continue;
    }
    const meter = index.meters.get(e.meter);
    if (!meter) {
      reject(i, "unknown_meter", `no meter has the key "${e.meter}"`);
      continue;
    }

    const value = e.value === undefined ? "1" : toDecimalText(e.value);
    if (value === undefined) {
      reject(i, "invalid_value", "value must be a number or a decimal string");
      continue;
    }
    if (meter.aggregation === "sum") {
      if (value.startsWith("-")) {
        reject(i, "invalid_value", `value must not be negative: meter ${meter.key} sums usage`);
        continue;
      }
      if (decimalPlaces(value) > 6) {
        reject(i, "invalid_value", "value must have at most 6 decimal places");
        continue;
      }
      if (toMicros(value) > BigInt(Number.MAX_SAFE_INTEGER)) {
        reject(i, "invalid_value", "value is too large");
        continue;
      }
    }

    let atMs = nowMs;
    if (e.timestamp !== undefined) {
      if (
        typeof e.timestamp !== "string" ||
        !ISO_TIMESTAMP.test(e.timestamp) ||
        Number.isNaN(Date.parse(e.timestamp))
      ) {
        reject(
          i,
          "invalid_timestamp",
          "timestamp must be an ISO 8601 date-time with a time zone, like 2026-11-23T10:00:00Z",
        );
        continue;
      }
      atMs = Date.parse(e.timestamp);
    }
    if (atMs > nowMs + MAX_FUTURE_MS) {
      reject(i, "timestamp_in_future", "timestamp is more than 5 minutes in the future");
      continue;
    }
    if (atMs < org.period.startMs) {
      reject(
        i,
        "timestamp_too_old",
        `timestamp is before the open usage period (which started ${new Date(org.period.startMs).toISOString()}); closed periods cannot change`,
      );
      continue;
    }
    // An event a little in the future may fall in the next period.
    const inPeriod = atMs < org.period.endMs;
    const periodStartMs = inPeriod ? org.period.startMs : org.period.endMs;
    const periodEndMs = inPeriod ? org.period.endMs : nextPeriodEnd(org, atMs);

    let properties = "{}";
    if (e.properties !== undefined) {
      if (typeof e.properties !== "object" || e.properties === null || Array.isArray(e.properties)) {
        reject(i, "invalid_properties", "properties must be an object");
        continue;
      }
      properties = JSON.stringify(e.properties);
      if (Buffer.byteLength(properties) > MAX_PROPERTIES_BYTES) {
        reject(i, "invalid_properties", `properties must be at most ${MAX_PROPERTIES_BYTES} bytes of JSON`);
        continue;
      }
      // jsonb refuses the NUL character, in keys and values alike. JSON.stringify writes it as
      // \u0000, so only text holding that sequence needs the walk (it may also be an escaped backslash).
      if (properties.includes("\\u0000") && hasNul(e.properties)) {
        reject(i, "invalid_properties", "properties must not contain NUL characters");
        continue;
      }
    }
    let unique: string | null = null;
    if (meter.aggregation === "unique_count" && meter.property) {
      const v = (e.properties as Record<string, unknown> | undefined)?.[meter.property];
      if (typeof v !== "string" && typeof v !== "number") {
        reject(
          i,
          "missing_property",
          `properties.${meter.property} (a string or number) is required by meter ${meter.key}`,
        );
        continue;
      }
      unique = String(v);
    }

    let ids = seen.get(e.org_id);
    if (ids === undefined) {
      ids = new Set();
      seen.set(e.org_id, ids);
    } else if (ids.has(e.id)) {
      duplicates++;
      continue;
    }
    ids.add(e.id);
    valid.push({
      index: i,
      orgId: e.org_id,
      id: e.id,
      meter,
      atMs,
      value,
      properties,
      periodStartMs,
      periodEndMs,
      unique,
      org,
    });
  }

  if (valid.length === 0) return { accepted: 0, duplicates, rejected };
  // One lock order for every batch: two batches sharing event ids cannot deadlock on them.
  valid.sort((a, b) =>
    a.orgId < b.orgId ? -1 : a.orgId > b.orgId ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0,
  );
  // Grouped once: the thresholds the batch may cross, and (when every event was new, as usual) the
  // counter increments.
  const groups = meterGroups(valid);
  let accepted: ValidEvent[];
  try {
    accepted = await commitEvents(deps, valid, groups);
  } catch (error) {
    // Every value was validated above, so a failure here is the database's, and nothing was written.
    deps.logger.error({ err: error, events: valid.length }, "recording events failed");
    throw new AppError(
      "unavailable",
      "The events could not be recorded, and none of this batch was. Send it again: replays are safe.",
    );
  }
  await addToCounters(deps, accepted === valid ? groups : meterGroups(accepted), nowMs);
  return { accepted: accepted.length, duplicates: duplicates + valid.length - accepted.length, rejected };
}

/** For an event up to 5 minutes ahead, across a period boundary (rare: computed on demand). */
function nextPeriodEnd(org: OrgPlan, atMs: number): number {
  return usagePeriodAt(org.anchorMs, atMs).endMs;
}

/** Inserts the events and everything derived from them in one transaction; returns the new ones. */
async function commitEvents(deps: Deps, events: ValidEvent[], groups: MeterGroup[]): Promise<ValidEvent[]> {
  const iso = (ms: number) => new Date(ms).toISOString();
  // Period starts repeat across a batch: converted once each.
  const periodOf = isoCache();
  const marks = thresholdMarks(deps, groups);
  // One statement: events, rollups, unique values, period totals and the thresholds they cross are
  // committed together, and the rows locked here are released as soon as it ends.
  const rows = await deps.database.query<{ fresh: number; positions: number[] | null }>(
    sql`
    with input as (
      select * from unnest(
        ${textArray(events.map((e) => e.orgId))}::text[],
        ${textArray(events.map((e) => e.id))}::text[],
        ${textArray(events.map((e) => e.meter.key))}::text[],
        ${textArray(events.map((e) => iso(e.atMs)))}::timestamptz[],
        ${textArray(events.map((e) => e.value))}::numeric[],
        ${textArray(events.map((e) => e.properties))}::jsonb[],
        ${textArray(events.map((e) => periodOf(e.periodStartMs)))}::timestamptz[],
        ${textArray(events.map((e) => e.unique))}::text[],
        ${textArray(events.map(quantityOf))}::numeric[],
        ${textArray(events.map((e) => String(e.index)))}::int[]
      ) as t(org_id, event_id, meter, ts, value, properties, period_start, uniq, qty, pos)
    ), inserted as (
      insert into usage_events (org_id, event_id, meter, "timestamp", value, properties, period_start, batch_position)
      select org_id, event_id, meter, ts, value, properties, period_start, pos from input
      on conflict (org_id, event_id) do nothing
      returning org_id, event_id
    ), accepted as (
      select input.* from input join inserted using (org_id, event_id)
    ), rollups as (
      insert into usage_rollups (org_id, meter, period_start, bucket, count, sum, min, max, latest_at, latest_value, sum_value_time)
      select org_id, meter, period_start, date_trunc('hour', ts, 'UTC'), count(*), sum(value), min(value), max(value),
        max(ts), (array_agg(value order by ts desc, pos desc))[1], sum(value * extract(epoch from ts))
      from accepted
      group by 1, 2, 3, 4
      order by 1, 2, 3, 4
      ${ROLLUP_MERGE}
    ), uniques as (
      insert into usage_uniques (org_id, meter, period_start, value, first_seen_at)
      select org_id, meter, period_start, uniq, min(ts) from accepted where uniq is not null
      group by 1, 2, 3, 4
      order by 1, 2, 3, 4
      on conflict (org_id, meter, period_start, value) do update
        set first_seen_at = least(usage_uniques.first_seen_at, excluded.first_seen_at)
    ), period_in as (
      select org_id, meter, period_start, sum(qty) as delta from accepted where qty is not null
      group by 1, 2, 3
    ), ${periodTotalsAndThresholds(marks, periodOf)}
    select count(*)::int as fresh,
      case when count(*) < ${events.length} then array_agg(pos) end as positions
    from accepted`,
    // Prepared once per connection: parsing and planning it took about 1 ms of every batch.
    { name: "tollgate_ingest_events" },
  );
  // Which events were new (not replays), by their place in the batch: only when some were not.
  const { fresh, positions } = rows[0] ?? { fresh: 0, positions: null };
  if (fresh === events.length) return events;
  const stored = new Set((positions ?? []).map(Number));
  return events.filter((e) => stored.has(e.index));
}

/** The first field of an event that is not one of EVENT_FIELDS. */
function unknownField(event: Record<string, unknown>): string | undefined {
  for (const key of Object.keys(event)) if (!EVENT_FIELDS.has(key)) return key;
  return undefined;
}

function hasNul(value: unknown): boolean {
  if (typeof value === "string") return value.includes("\u0000");
  if (Array.isArray(value)) return value.some(hasNul);
  if (value && typeof value === "object") {
    return Object.entries(value).some(([key, inner]) => key.includes("\u0000") || hasNul(inner));
  }
  return false;
}

/** What an event adds to its period total: 1 on a count meter, its value on a sum meter, else nothing. */
function quantityOf(e: ValidEvent): string | null {
  if (e.meter.aggregation === "count") return "1";
  if (e.meter.aggregation === "sum") return e.value;
  return null;
}

/**
 * The thresholds each (org, meter, period) of the batch could cross: those of the metered features
 * on the meter, as the org's plan sets them.
 */
function thresholdMarks(deps: Deps, groups: MeterGroup[]) {
  const index = catalogIndex(deps.catalog);
  const marks: ThresholdMark[] = [];
  for (const group of groups) {
    const { orgId, org, meter, periodStartMs } = group;
    for (const feature of index.meteredByMeter.get(meter.key) ?? []) {
      const grant = grantOf(deps.catalog, org.plan, feature);
      if (grant.type !== "metered" || grant.limit === null || grant.limit <= 0) continue;
      for (const threshold of grant.thresholds) {
        marks.push({
          orgId,
          meter: meter.key,
          periodStartMs,
          feature: feature.key,
          limit: grant.limit,
          threshold,
        });
      }
    }
  }
  return marks;
}

/** The events of count and sum meters of one org, meter and period, and the units they add. */
interface MeterGroup {
  orgId: string;
  org: OrgPlan;
  meter: Meter;
  periodStartMs: number;
  periodEndMs: number;
  /** Whole units (count meters) or micro-units (sum meters). */
  units: number;
}

/** Events of count and sum meters grouped by org, meter and period, in order of first appearance. */
function meterGroups(events: ValidEvent[]): MeterGroup[] {
  const groups = new PerOrg<MeterGroup>();
  for (const e of events) {
    const aggregation = e.meter.aggregation;
    if (aggregation !== "count" && aggregation !== "sum") continue;
    const group = groups.get(
      e.orgId,
      (g) => g.meter === e.meter && g.periodStartMs === e.periodStartMs,
      () => ({
        orgId: e.orgId,
        org: e.org,
        meter: e.meter,
        periodStartMs: e.periodStartMs,
        periodEndMs: e.periodEndMs,
        units: 0,
      }),
    );
    group.units += aggregation === "count" ? 1 : Number(toMicros(e.value));
  }
  return groups.all;
}

/** Adds committed usage to the counters the store holds (absent ones are seeded from Postgres later). */
async function addToCounters(deps: Deps, groups: MeterGroup[], nowMs: number): Promise<void> {
  const increments = groups.map((g) => ({
    key: meterCounterKey(g.orgId, g.meter.key, g.periodStartMs),
    amount: g.units,
    ttlSeconds: meterCounterTtl(g.periodEndMs, nowMs),
  }));
  if (increments.length === 0) return;
  try {
    await deps.counters.increment(increments);
  } catch (error) {
    // The events are committed; the counters that missed them are rebuilt once the store is back.
    markStale(
      deps,
      increments.map((i) => i.key),
    );
    deps.metrics.degraded.inc({ component: "events", decision: "counters_stale" });
    deps.logger.warn(
      { err: (error as Error).message },
      "counter store unreachable: counters rebuilt from Postgres once it is back",
    );
  }
}
