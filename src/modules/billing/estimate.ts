import { z } from "@hono/zod-openapi";
import type { Deps } from "../../deps.js";
import { AppError, type FieldError } from "../../lib/errors.js";
import { type Charge, chargeSchema } from "../catalog/charges.js";
import { catalogKey, decimal } from "../catalog/fields.js";
import type { Interval, Meter, Plan } from "../catalog/schema.js";
import { type Period, periodStart } from "../plans/periods.js";
import { aggregateEvents, inTimestampOrder, type UsageEvent } from "./aggregate.js";
import { type ChargeLine, chargeLines, linesTotal } from "./lines.js";
import { formatMoney, Money } from "./money.js";

/**
 * `POST /v1/pricing/estimate`: what a set of charges (or a plan's) costs for given usage — quantities
 * per meter, or events aggregated by each meter's own aggregation. The lines are built exactly as an
 * invoice builds its usage lines, so an estimate equals what the invoice would post.
 */

const MAX_CHARGES = 50;
const MAX_TIERS = 100;
const MAX_EVENTS = 1000;
/** Longest estimate period: an annual plan's year plus a leap day and slack. */
const MAX_PERIOD_MS = 400 * 86_400_000;

/** A decimal of bounded length, as a JSON number or a string. */
const boundedDecimal = (what: string) =>
  z
    .union([z.string().max(40, "must have at most 40 characters"), z.number()])
    .pipe(decimal(what))
    .openapi({ type: "string", example: "1250" });

const EstimateEvent = z.strictObject({
  meter: catalogKey(),
  value: boundedDecimal("value").optional(),
  timestamp: z.iso
    .datetime({ offset: true, message: "must be an ISO 8601 date-time" })
    .optional()
    .openapi({ description: "Default: now." }),
  properties: z.record(z.string(), z.unknown()).optional(),
});

export const EstimateRequest = z
  .strictObject({
    charges: z
      .array(chargeSchema)
      .min(1, "needs at least one charge")
      .max(MAX_CHARGES, `at most ${MAX_CHARGES} charges`)
      .optional()
      .openapi({ description: "Charges in the catalog's format. Give these or `plan`." }),
    plan: catalogKey()
      .optional()
      .openapi({ description: "Price with this plan's charges (its current version unless `version`)." }),
    version: z.number().int().positive().max(2_147_483_647).optional(),
    interval: z
      .enum(["month", "year"])
      .optional()
      .openapi({ description: "With `plan`: which base fee to show. Default: monthly if sold so." }),
    usage: z
      .record(catalogKey(), boundedDecimal("quantity"))
      .optional()
      .openapi({ description: "The period's aggregated quantity per meter. Give this or `events`." }),
    events: z
      .array(EstimateEvent)
      .max(MAX_EVENTS, `at most ${MAX_EVENTS} events`)
      .optional()
      .openapi({ description: "Events, aggregated per meter as the catalog defines it." }),
    period: z
      .strictObject({
        start: z.iso.datetime({ offset: true, message: "must be an ISO 8601 date-time" }),
        end: z.iso.datetime({ offset: true, message: "must be an ISO 8601 date-time" }),
      })
      .optional()
      .openapi({
        description:
          "With `events`: the period they are aggregated over (weighted_sum averages over it). Default: one month from the earliest event.",
      }),
  })
  .superRefine((body, ctx) => {
    if ((body.charges === undefined) === (body.plan === undefined))
      ctx.addIssue({ code: "custom", path: ["plan"], message: "give either charges or plan" });
    if (body.usage !== undefined && body.events !== undefined)
      ctx.addIssue({ code: "custom", path: ["events"], message: "give either usage or events, not both" });
    if (body.plan === undefined) {
      for (const key of ["version", "interval"] as const)
        if (body[key] !== undefined) ctx.addIssue({ code: "custom", path: [key], message: "needs plan" });
    }
    if (body.period !== undefined && body.events === undefined)
      ctx.addIssue({ code: "custom", path: ["period"], message: "only applies to events" });
    body.charges?.forEach((charge, i) => {
      if ("tiers" in charge && charge.tiers.length > MAX_TIERS)
        ctx.addIssue({
          code: "custom",
          path: ["charges", i, "tiers"],
          message: `at most ${MAX_TIERS} tiers`,
        });
    });
  })
  .openapi("PricingEstimateRequest");

export type EstimateInput = z.output<typeof EstimateRequest>;

export interface Estimate {
  currency: string;
  plan: { key: string; version: number } | null;
  period: { start: string; end: string } | null;
  lines: (ChargeLine & { meter_name: string })[];
  total: string;
  base_fee: { interval: Interval; amount: string } | null;
}

function invalid(detail: string, errors: FieldError[]): AppError {
  return new AppError("validation_failed", detail, { errors });
}

const fieldError = (field: string, message: string, code: string): FieldError => ({
  field,
  message,
  code,
  location: "body",
});

/** The plan the estimate prices, or a 400 naming what is wrong. */
async function resolvePlan(deps: Deps, key: string, version: number | undefined) {
  const current = deps.plans.current(key);
  if (!current)
    throw invalid(`There is no plan ${key} in the catalog.`, [
      fieldError("plan", `no plan has the key ${key}`, "unknown_plan"),
    ]);
  if (version === undefined || version === current.version) return current;
  const plan = await deps.plans.load(key, version);
  if (!plan)
    throw invalid(`Plan ${key} has no version ${version}.`, [
      fieldError("version", `plan ${key} has no version ${version}`, "unknown_version"),
    ]);
  return { version, plan };
}

/** The period events are aggregated over, and each event checked to fall in it. */
function eventPeriod(input: EstimateInput, nowMs: number, times: number[]): Period {
  if (input.period) {
    const period = { startMs: Date.parse(input.period.start), endMs: Date.parse(input.period.end) };
    if (period.endMs <= period.startMs)
      throw invalid("The period must end after it starts.", [
        fieldError("period.end", "must be after period.start", "invalid_period"),
      ]);
    if (period.endMs - period.startMs > MAX_PERIOD_MS)
      throw invalid("The period is too long.", [
        fieldError("period.end", "a period spans at most 400 days", "invalid_period"),
      ]);
    return period;
  }
  const startMs = times.length > 0 ? Math.min(...times) : nowMs;
  return { startMs, endMs: periodStart(startMs, "month", 1) };
}

/** Events grouped per meter, each validated against its meter and the period. */
function eventsByMeter(deps: Deps, input: EstimateInput, nowMs: number) {
  const events = input.events ?? [];
  const times = events.map((e) => (e.timestamp === undefined ? nowMs : Date.parse(e.timestamp)));
  const period = eventPeriod(input, nowMs, times);
  const meters = new Map(deps.catalog.meters.map((m) => [m.key, m]));
  const errors: FieldError[] = [];
  const byMeter = new Map<string, UsageEvent[]>();
  events.forEach((e, i) => {
    const meter = meters.get(e.meter);
    if (!meter) {
      errors.push(fieldError(`events.${i}.meter`, `no meter has the key ${e.meter}`, "unknown_meter"));
      return;
    }
    const timestampMs = times[i] as number;
    if (timestampMs < period.startMs || timestampMs >= period.endMs) {
      errors.push(fieldError(`events.${i}.timestamp`, "is outside the estimate's period", "outside_period"));
      return;
    }
    if (meter.aggregation === "unique_count" && meter.property) {
      const v = e.properties?.[meter.property];
      if (typeof v !== "string" && typeof v !== "number") {
        errors.push(
          fieldError(
            `events.${i}.properties.${meter.property}`,
            `a string or number is required by meter ${meter.key}`,
            "missing_property",
          ),
        );
        return;
      }
    }
    const list = byMeter.get(meter.key) ?? [];
    list.push({ value: e.value ?? "1", timestampMs, ...(e.properties ? { properties: e.properties } : {}) });
    byMeter.set(meter.key, list);
  });
  if (errors.length > 0) throw invalid("Some events cannot be priced.", errors);
  return { period, byMeter, meters };
}

/** Every charge's meter must be known when events are aggregated by it. */
function chargeMeters(charges: readonly Charge[], meters: Map<string, Meter>) {
  const errors = charges.flatMap((charge, i) =>
    meters.has(charge.meter)
      ? []
      : [fieldError(`charges.${i}.meter`, `no meter has the key ${charge.meter}`, "unknown_meter")],
  );
  if (errors.length > 0) throw invalid("Events are aggregated by the catalog's meters.", errors);
}

export async function estimate(deps: Deps, input: EstimateInput): Promise<Estimate> {
  const { currency } = deps.catalog;
  const nowMs = deps.clock.nowMs();
  let plan: { version: number; plan: Plan } | undefined;
  if (input.plan !== undefined) plan = await resolvePlan(deps, input.plan, input.version);
  const charges = plan?.plan.charges ?? input.charges ?? [];
  const meterNames = new Map(deps.catalog.meters.map((m) => [m.key, m.name]));

  let quantities: (charge: Charge) => { quantity: string; transactions?: { value: string }[] };
  let period: Period | null = null;
  if (input.events !== undefined) {
    const grouped = eventsByMeter(deps, input, nowMs);
    chargeMeters(charges, grouped.meters);
    period = grouped.period;
    const aggregates = new Map<string, string>();
    quantities = (charge) => {
      const events = grouped.byMeter.get(charge.meter) ?? [];
      const meter = grouped.meters.get(charge.meter) as Meter;
      let quantity = aggregates.get(meter.key);
      if (quantity === undefined) {
        quantity = aggregateEvents(meter, events, grouped.period);
        aggregates.set(meter.key, quantity);
      }
      if (charge.model !== "percentage") return { quantity };
      return { quantity, transactions: inTimestampOrder(events).map((e) => ({ value: e.value })) };
    };
  } else {
    const usage = input.usage ?? {};
    const known = new Set([...meterNames.keys(), ...charges.map((c) => c.meter)]);
    const unknown = Object.keys(usage).filter((key) => !known.has(key));
    if (unknown.length > 0)
      throw invalid(
        `No meter has the key ${unknown.join(", ")}.`,
        unknown.map((key) => fieldError(`usage.${key}`, `no meter has the key ${key}`, "unknown_meter")),
      );
    quantities = (charge) => ({ quantity: usage[charge.meter] ?? "0" });
  }

  const lines = charges.flatMap((charge) =>
    chargeLines(charge, quantities(charge), currency).map((line) => ({
      ...line,
      meter_name: meterNames.get(line.meter) ?? line.meter,
    })),
  );
  let baseFee: Estimate["base_fee"] = null;
  if (plan) {
    const interval = input.interval ?? (plan.plan.price.month !== undefined ? "month" : "year");
    const price = plan.plan.price[interval];
    if (price === undefined)
      throw invalid(`Plan ${plan.plan.key} has no ${interval}ly price.`, [
        fieldError("interval", `plan ${plan.plan.key} is not sold by the ${interval}`, "unknown_interval"),
      ]);
    baseFee = { interval, amount: formatMoney(new Money(price), currency) };
  }
  return {
    currency,
    plan: plan ? { key: plan.plan.key, version: plan.version } : null,
    period: period
      ? { start: new Date(period.startMs).toISOString(), end: new Date(period.endMs).toISOString() }
      : null,
    lines,
    total: linesTotal(lines, currency),
    base_fee: baseFee,
  };
}
