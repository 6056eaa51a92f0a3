import { createRoute, z } from "@hono/zod-openapi";
import { desc, eq } from "drizzle-orm";
import { thresholdEvents } from "../../db/schema.js";
import { AppError } from "../../lib/errors.js";
import { errorResponses, jsonBody, jsonResponse } from "../../lib/http.js";
import { createApiRouter, operatorOnly } from "../auth/caller.js";
import { accessOf, OrgParam, orgAccess } from "../orgs/access.js";
import { usageJournal } from "./check.js";
import { CheckRequest, checkInputOf, checkResponseOf, OrgId, runRouteCheck } from "./check-http.js";
import { eventsOf, ingestEvents, MAX_BATCH } from "./events.js";
import { Amount, CheckResult as Result } from "./schemas.js";
import { entitlementsOf, GRANULARITIES, resolveSeriesQuery, seriesCsv, usageSeries } from "./usage.js";

const tags = ["Entitlements and metering"];
const operatorSecurity: Record<string, string[]>[] = [{ operator: [] }];
const orgSecurity: Record<string, string[]>[] = [{ bearer: [] }, { operator: [] }];

const CheckResponse = z
  .union([Result, z.object({ allowed: z.boolean(), results: z.array(Result) })])
  .openapi("CheckResponse");

const EventsResponse = z
  .object({
    accepted: z.number().int(),
    duplicates: z
      .number()
      .int()
      .openapi({ description: "Events already recorded (replays count as success)." }),
    rejected: z.array(z.object({ index: z.number().int(), code: z.string(), detail: z.string() })),
  })
  .openapi("EventsAccepted");

const Event = z
  .object({
    id: z
      .string()
      .min(1)
      .max(256)
      .openapi({ description: "Your id for the event; deduplicated per org forever." }),
    org_id: OrgId,
    meter: z.string(),
    value: Amount.optional().openapi({ description: "Default 1." }),
    timestamp: z.iso.datetime({ offset: true }).optional().openapi({
      description: "Default now. At most 5 minutes ahead; never before the open billing period.",
    }),
    properties: z.record(z.string(), z.unknown()).optional(),
  })
  .openapi("UsageEvent");

const Entitlement = z
  .object({
    feature: z.string(),
    name: z.string(),
    type: z.enum(["boolean", "limit", "metered", "rate"]),
    enabled: z.boolean(),
    limit: z.number().nullable(),
    used: z.number().nullable(),
    remaining: z.number().nullable(),
    resets_at: z.string().nullable(),
    overage: z.enum(["block", "allow"]).optional(),
    meter: z.string().optional(),
    window: z.string().nullable().optional(),
  })
  .openapi("Entitlement");
const Entitlements = z
  .object({
    org_id: z.string(),
    plan: z.string(),
    plan_version: z.number().int(),
    status: z.string(),
    current_period_start: z.string().openapi({ description: "The billing period." }),
    current_period_end: z.string(),
    usage_period_start: z
      .string()
      .openapi({ description: "The usage period: metered quotas reset monthly." }),
    usage_period_end: z.string(),
    features: z.array(Entitlement),
  })
  .openapi("Entitlements");

const UsageQuery = z.object({
  meter: z
    .string()
    .min(1)
    .max(128)
    .openapi({ param: { name: "meter", in: "query" } }),
  from: z.iso
    .datetime({ offset: true })
    .optional()
    .openapi({ param: { name: "from", in: "query" }, description: "Default: the open period's start." }),
  to: z.iso
    .datetime({ offset: true })
    .optional()
    .openapi({ param: { name: "to", in: "query" }, description: "Default: now." }),
  granularity: z
    .enum(GRANULARITIES)
    .optional()
    .openapi({ param: { name: "granularity", in: "query" }, description: "Default day (UTC buckets)." }),
});
const CsvQuery = UsageQuery.extend({
  meter: z
    .string()
    .min(1)
    .max(128)
    .optional()
    .openapi({ param: { name: "meter", in: "query" }, description: "Default: every meter." }),
});
const Series = z
  .object({
    meter: z.string(),
    aggregation: z.string(),
    granularity: z.enum(GRANULARITIES),
    series: z.array(
      z.object({ start: z.string(), value: z.string().openapi({ description: "An exact decimal." }) }),
    ),
  })
  .openapi("UsageSeries");

const Threshold = z
  .object({
    id: z.string(),
    feature: z.string(),
    threshold: z.number().int(),
    limit: z.string(),
    quantity: z.string(),
    period_start: z.string(),
    created_at: z.string(),
  })
  .openapi("ThresholdEvent");

/** Checks, events and usage reads. */
export function meteringRoutes() {
  const router = createApiRouter();

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/check",
      tags,
      summary: "May this org use a feature now? (consumes by default)",
      description:
        "One feature (`feature`, `amount`) or several at once (`features: [...]`, all consumed or none; an item with `consume: false` is only checked, and nothing is consumed unless it is allowed). Denials are answers (200, `allowed: false`) carrying the reason, usage, limit, reset time and an upgrade URL. Rate features set `RateLimit`/`RateLimit-Policy` headers, and `Retry-After` when denied.",
      security: operatorSecurity,
      middleware: operatorOnly,
      request: { body: jsonBody(CheckRequest) },
      responses: {
        200: jsonResponse(CheckResponse, "The decision"),
        ...errorResponses(400, 401, 403, 404, 409, 503),
      },
    }),
    async (c) => {
      const { input, single } = checkInputOf(c.req.valid("json"));
      const { json, headers } = checkResponseOf(await runRouteCheck(c.get("deps"), input), single);
      for (const name in headers) c.header(name, headers[name]);
      return c.json(json as z.infer<typeof CheckResponse>, 200);
    },
  );

  // Events are validated one by one (rejections listed, the rest accepted), so the route is
  // documented with its schema but validates the batch itself.
  router.openAPIRegistry.registerPath({
    method: "post",
    path: "/v1/events",
    tags,
    summary: "Record usage events (batches of up to 1000)",
    description: `Each event is validated on its own: the invalid ones come back in \`rejected\` with a reason, the rest are recorded. Events are deduplicated per org by \`id\`, forever. A 202 means every accepted event is durable. At most ${MAX_BATCH} events per batch.`,
    security: operatorSecurity,
    request: {
      body: jsonBody(z.object({ events: z.array(Event).min(1).max(MAX_BATCH) }).openapi("UsageEvents")),
    },
    responses: { 202: jsonResponse(EventsResponse, "Recorded"), ...errorResponses(400, 401, 403, 413, 503) },
  });
  router.post("/v1/events", operatorOnly, async (c) => {
    const body = await c.req.json().catch(() => {
      throw new AppError("validation_failed", "The request body is not valid JSON.", {
        errors: [{ field: "body", message: "is not valid JSON", code: "invalid_json", location: "body" }],
      });
    });
    const events = eventsOf(body);
    const result = await ingestEvents(c.get("deps"), events);
    return c.json(result, 202);
  });

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/entitlements",
      tags,
      summary: "Every feature as the org's plan grants it, with what is used",
      security: orgSecurity,
      middleware: orgAccess("usage:read"),
      request: { params: OrgParam },
      responses: {
        200: jsonResponse(Entitlements, "The org's entitlements"),
        ...errorResponses(401, 403, 404),
      },
    }),
    async (c) => c.json(await entitlementsOf(c.get("deps"), accessOf(c).orgId), 200),
  );

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/usage",
      tags,
      summary: "A meter's usage per hour, day or month",
      security: orgSecurity,
      middleware: orgAccess("usage:read"),
      request: { params: OrgParam, query: UsageQuery },
      responses: { 200: jsonResponse(Series, "The series"), ...errorResponses(400, 401, 403, 404) },
    }),
    async (c) => {
      const deps = c.get("deps");
      const orgId = accessOf(c).orgId;
      const query = await resolveSeriesQuery(deps, orgId, c.req.valid("query"));
      const series = await usageSeries(deps, orgId, query);
      return c.json(
        {
          meter: query.meter.key,
          aggregation: query.meter.aggregation,
          granularity: query.granularity,
          series,
        },
        200,
      );
    },
  );

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/usage.csv",
      tags,
      summary: "Usage as CSV (one meter, or all)",
      security: orgSecurity,
      middleware: orgAccess("usage:read"),
      request: { params: OrgParam, query: CsvQuery },
      responses: {
        200: { description: "meter,start,value rows", content: { "text/csv": { schema: z.string() } } },
        ...errorResponses(400, 401, 403, 404),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const orgId = accessOf(c).orgId;
      const input = c.req.valid("query");
      const meters = input.meter ? [input.meter] : deps.catalog.meters.map((m) => m.key);
      const rows: { meter: string; start: string; value: string }[] = [];
      for (const meter of meters) {
        const query = await resolveSeriesQuery(deps, orgId, { ...input, meter });
        for (const point of await usageSeries(deps, orgId, query)) rows.push({ meter, ...point });
      }
      c.header("content-disposition", `attachment; filename="usage-${orgId}.csv"`);
      return c.body(seriesCsv(rows), 200, { "content-type": "text/csv; charset=utf-8" });
    },
  );

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/threshold-events",
      tags,
      summary: "Quota thresholds the org crossed (newest first)",
      description: "Each threshold of a metered limit is recorded once per billing period.",
      security: orgSecurity,
      middleware: orgAccess("usage:read"),
      request: { params: OrgParam },
      responses: {
        200: jsonResponse(z.object({ data: z.array(Threshold) }), "Crossings"),
        ...errorResponses(401, 403, 404),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      // Crossings are recorded as journaled usage is committed: wait for what was acknowledged.
      await usageJournal(deps)?.awaitCommitted();
      const rows = await deps.database.db
        .select()
        .from(thresholdEvents)
        .where(eq(thresholdEvents.orgId, accessOf(c).orgId))
        .orderBy(desc(thresholdEvents.createdAt), desc(thresholdEvents.id))
        .limit(500);
      return c.json(
        {
          data: rows.map((r) => ({
            id: r.id,
            feature: r.feature,
            threshold: r.threshold,
            limit: r.limit,
            quantity: r.quantity,
            period_start: r.periodStart.toISOString(),
            created_at: r.createdAt.toISOString(),
          })),
        },
        200,
      );
    },
  );

  return router;
}
