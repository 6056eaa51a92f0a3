import { createRoute, z } from "@hono/zod-openapi";
import { and, asc, desc, eq, gte, inArray, lt, lte, sql } from "drizzle-orm";
import { webhookAttempts, webhookDeliveries, webhookEndpoints, webhookEvents } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { errorResponses, jsonBody, jsonResponse } from "../../lib/http.js";
import { newId } from "../../lib/ids.js";
import { recordAudit } from "../audit/service.js";
import { createApiRouter } from "../auth/caller.js";
import { accessOf, OrgParam, orgAccess } from "../orgs/access.js";
import { requeueDeliveries, webhookDispatchJob } from "./dispatch.js";
import { EVENT_TYPES, filtersMatching, isEventFilter } from "./events.js";
import { newEndpointSecret, sealSecret } from "./secrets.js";
import { checkTarget } from "./transport.js";

/**
 * `/v1/orgs/:org/webhook-endpoints`: an org's endpoints, their delivery logs, manual retry and replay.
 * Members read (webhooks:read), owners and admins manage (webhooks:manage); another org's endpoint is
 * a 404 like any other resource.
 */

const security: Record<string, string[]>[] = [{ bearer: [] }, { operator: [] }];
const MAX_ENDPOINTS_PER_ORG = 20;
const MAX_REPLAY = 10_000;

const EventFilter = z
  .string()
  .refine(isEventFilter, {
    error: (issue) =>
      `"${String(issue.input)}" is not an event type, a "<group>.*" wildcard or "*" (types: ${EVENT_TYPES.join(", ")})`,
  })
  .openapi({ example: "invoice.*" });

const Url = z.string().trim().max(2048).openapi({ example: "https://example.com/webhooks/tollgate" });

const EndpointIn = z
  .strictObject({
    url: Url,
    events: z.array(EventFilter).min(1).max(50),
    description: z.string().trim().max(500).optional(),
  })
  .openapi("WebhookEndpointCreate");

const EndpointPatch = z
  .strictObject({
    url: Url.optional(),
    events: z.array(EventFilter).min(1).max(50).optional(),
    description: z.string().trim().max(500).optional(),
    enabled: z
      .boolean()
      .optional()
      .openapi({ description: "true turns a disabled endpoint back on; its queue is sent again at once." }),
  })
  .openapi("WebhookEndpointUpdate");

const Endpoint = z
  .object({
    id: z.string(),
    url: z.string(),
    description: z.string(),
    events: z.array(z.string()),
    status: z.enum(["enabled", "disabled"]),
    disabled_reason: z.string().nullable(),
    failing_since: z.iso.datetime().nullable(),
    next_attempt_at: z.iso.datetime().nullable(),
    created_at: z.iso.datetime(),
  })
  .openapi("WebhookEndpoint");

const CreatedEndpoint = Endpoint.extend({
  secret: z.string().openapi({
    description: "The signing secret (Standard Webhooks, `whsec_…`). Shown this once; store it now.",
  }),
}).openapi("CreatedWebhookEndpoint");

const Attempt = z.object({
  attempt: z.number().int(),
  at: z.iso.datetime(),
  status: z.number().int().nullable(),
  error: z.string().nullable(),
  response_body: z.string(),
  duration_ms: z.number().int(),
});

const Delivery = z
  .object({
    id: z.string(),
    event_id: z.string().openapi({ description: "The `webhook-id` header: stable across retries." }),
    event_type: z.string(),
    status: z.enum(["pending", "succeeded", "failed"]),
    origin: z.enum(["event", "replay"]),
    attempts: z.number().int(),
    last_attempt_at: z.iso.datetime().nullable(),
    last_status: z.number().int().nullable(),
    last_error: z.string().nullable(),
    delivered_at: z.iso.datetime().nullable(),
    created_at: z.iso.datetime(),
  })
  .openapi("WebhookDelivery");

const DeliveryDetail = Delivery.extend({
  payload: z.unknown(),
  attempt_log: z.array(Attempt),
}).openapi("WebhookDeliveryDetail");

const ReplayIn = z
  .strictObject({
    since: z.iso.datetime({ offset: true }),
    until: z.iso.datetime({ offset: true }).optional(),
  })
  .openapi("WebhookReplay");

const EndpointParams = OrgParam.extend({ id: z.string().max(64) });
const DeliveryParams = EndpointParams.extend({ delivery: z.string().max(64) });

const iso = (date: Date | null) => date?.toISOString() ?? null;
type EndpointRow = typeof webhookEndpoints.$inferSelect;
type DeliveryRow = typeof webhookDeliveries.$inferSelect;

function endpointView(row: EndpointRow): z.infer<typeof Endpoint> {
  return {
    id: row.id,
    url: row.url,
    description: row.description,
    events: row.eventTypes,
    status: row.status,
    disabled_reason: row.disabledReason,
    failing_since: iso(row.failingSince),
    next_attempt_at: iso(row.nextAttemptAt),
    created_at: row.createdAt.toISOString(),
  };
}

function deliveryView(row: DeliveryRow, type: string): z.infer<typeof Delivery> {
  return {
    id: row.id,
    event_id: row.eventId,
    event_type: type,
    status: row.status,
    origin: row.origin,
    attempts: row.attempts,
    last_attempt_at: iso(row.lastAttemptAt),
    last_status: row.lastStatus,
    last_error: row.lastError,
    delivered_at: iso(row.deliveredAt),
    created_at: row.createdAt.toISOString(),
  };
}

async function validTarget(deps: Deps, url: string): Promise<string> {
  const problem = await checkTarget(url, { allowedTargets: deps.env.webhookAllowedTargets });
  if (problem) {
    throw new AppError("validation_failed", problem.detail, {
      errors: [{ field: "url", message: problem.detail, code: problem.code, location: "body" }],
    });
  }
  return url;
}

async function endpointOf(deps: Deps, orgId: string, id: string): Promise<EndpointRow> {
  const [row] = await deps.database.db
    .select()
    .from(webhookEndpoints)
    .where(and(eq(webhookEndpoints.id, id), eq(webhookEndpoints.orgId, orgId)));
  if (!row) throw new AppError("not_found", `No webhook endpoint ${id}.`);
  return row;
}

export function webhookRoutes() {
  const router = createApiRouter();

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/webhook-endpoints",
      tags: ["Webhooks"],
      summary: "The org's webhook endpoints",
      security,
      middleware: orgAccess("webhooks:read"),
      request: { params: OrgParam },
      responses: {
        200: jsonResponse(z.object({ data: z.array(Endpoint) }), "The endpoints, oldest first"),
        ...errorResponses(401, 403, 404),
      },
    }),
    async (c) => {
      const rows = await c
        .get("deps")
        .database.db.select()
        .from(webhookEndpoints)
        .where(eq(webhookEndpoints.orgId, accessOf(c).orgId))
        .orderBy(asc(webhookEndpoints.createdAt), asc(webhookEndpoints.id));
      return c.json({ data: rows.map(endpointView) }, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/orgs/{org}/webhook-endpoints",
      tags: ["Webhooks"],
      summary: "Add a webhook endpoint (the signing secret is shown once)",
      description:
        "Events of the subscribed types are POSTed to the URL, signed per the Standard Webhooks spec. URLs that resolve to private, loopback or link-local addresses are refused unless TOLLGATE_WEBHOOK_ALLOWED_TARGETS names them.",
      security,
      middleware: orgAccess("webhooks:manage"),
      request: { params: OrgParam, body: jsonBody(EndpointIn) },
      responses: {
        201: jsonResponse(CreatedEndpoint, "The endpoint, with its secret"),
        ...errorResponses(400, 401, 403, 404, 409),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const access = accessOf(c);
      const input = c.req.valid("json");
      const url = await validTarget(deps, input.url);
      const secret = newEndpointSecret();
      const now = deps.clock.now();
      const row = await deps.database.db.transaction(async (tx) => {
        // Serialises creations per org, so the cap holds under concurrency.
        await tx.execute(sql`select pg_advisory_xact_lock(hashtext(${`webhook-endpoints:${access.orgId}`}))`);
        const [count] = await tx
          .select({ n: sql<number>`count(*)::int` })
          .from(webhookEndpoints)
          .where(eq(webhookEndpoints.orgId, access.orgId));
        if ((count?.n ?? 0) >= MAX_ENDPOINTS_PER_ORG) {
          throw new AppError(
            "conflict",
            `An org may have at most ${MAX_ENDPOINTS_PER_ORG} webhook endpoints.`,
          );
        }
        const [created] = await tx
          .insert(webhookEndpoints)
          .values({
            id: newId("webhook"),
            orgId: access.orgId,
            url,
            description: input.description ?? "",
            eventTypes: [...new Set(input.events)],
            secretEncrypted: sealSecret(deps, secret),
            createdAt: now,
            updatedAt: now,
          })
          .returning();
        if (!created) throw new Error("webhook endpoint not created");
        await recordAudit(tx, {
          orgId: access.orgId,
          actor: access.caller,
          action: "webhook_endpoint.created",
          target: { type: "webhook_endpoint", id: created.id },
          metadata: { url, events: created.eventTypes },
        });
        return created;
      });
      return c.json({ ...endpointView(row), secret }, 201);
    },
  );

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/webhook-endpoints/{id}",
      tags: ["Webhooks"],
      summary: "One webhook endpoint",
      security,
      middleware: orgAccess("webhooks:read"),
      request: { params: EndpointParams },
      responses: { 200: jsonResponse(Endpoint, "The endpoint"), ...errorResponses(401, 403, 404) },
    }),
    async (c) => {
      const { id } = c.req.valid("param");
      return c.json(endpointView(await endpointOf(c.get("deps"), accessOf(c).orgId, id)), 200);
    },
  );

  router.openapi(
    createRoute({
      method: "patch",
      path: "/v1/orgs/{org}/webhook-endpoints/{id}",
      tags: ["Webhooks"],
      summary: "Change an endpoint's URL, events or description, or turn it back on",
      security,
      middleware: orgAccess("webhooks:manage"),
      request: { params: EndpointParams, body: jsonBody(EndpointPatch) },
      responses: { 200: jsonResponse(Endpoint, "The endpoint"), ...errorResponses(400, 401, 403, 404) },
    }),
    async (c) => {
      const deps = c.get("deps");
      const access = accessOf(c);
      const { id } = c.req.valid("param");
      const input = c.req.valid("json");
      const existing = await endpointOf(deps, access.orgId, id);
      const now = deps.clock.now();
      const set: Partial<typeof webhookEndpoints.$inferInsert> = { updatedAt: now };
      if (input.url !== undefined) set.url = await validTarget(deps, input.url);
      if (input.events !== undefined) set.eventTypes = [...new Set(input.events)];
      if (input.description !== undefined) set.description = input.description;
      if (input.enabled === true && existing.status === "disabled") {
        Object.assign(set, {
          status: "enabled",
          disabledReason: null,
          consecutiveFailures: 0,
          failingSince: null,
          nextAttemptAt: null,
        });
      }
      if (input.enabled === false && existing.status === "enabled") {
        Object.assign(set, { status: "disabled", disabledReason: "Turned off by a member." });
      }
      const row = await deps.database.db.transaction(async (tx) => {
        const [updated] = await tx
          .update(webhookEndpoints)
          .set(set)
          .where(and(eq(webhookEndpoints.id, id), eq(webhookEndpoints.orgId, access.orgId)))
          .returning();
        if (!updated) throw new AppError("not_found", `No webhook endpoint ${id}.`);
        await recordAudit(tx, {
          orgId: access.orgId,
          actor: access.caller,
          action: "webhook_endpoint.updated",
          target: { type: "webhook_endpoint", id },
          metadata: { fields: Object.keys(input) },
        });
        if (updated.status === "enabled") {
          await deps.jobs.enqueueInTx(tx, webhookDispatchJob, { endpoint_id: id });
        }
        return updated;
      });
      return c.json(endpointView(row), 200);
    },
  );

  router.openapi(
    createRoute({
      method: "delete",
      path: "/v1/orgs/{org}/webhook-endpoints/{id}",
      tags: ["Webhooks"],
      summary: "Remove an endpoint and its delivery log",
      security,
      middleware: orgAccess("webhooks:manage"),
      request: { params: EndpointParams },
      responses: { 204: { description: "Removed" }, ...errorResponses(401, 403, 404) },
    }),
    async (c) => {
      const deps = c.get("deps");
      const access = accessOf(c);
      const { id } = c.req.valid("param");
      await deps.database.db.transaction(async (tx) => {
        const deleted = await tx
          .delete(webhookEndpoints)
          .where(and(eq(webhookEndpoints.id, id), eq(webhookEndpoints.orgId, access.orgId)))
          .returning({ id: webhookEndpoints.id });
        if (deleted.length === 0) throw new AppError("not_found", `No webhook endpoint ${id}.`);
        await recordAudit(tx, {
          orgId: access.orgId,
          actor: access.caller,
          action: "webhook_endpoint.deleted",
          target: { type: "webhook_endpoint", id },
        });
      });
      return c.body(null, 204);
    },
  );

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/webhook-endpoints/{id}/deliveries",
      tags: ["Webhooks"],
      summary: "The endpoint's delivery log, newest first",
      security,
      middleware: orgAccess("webhooks:read"),
      request: {
        params: EndpointParams,
        query: z.object({
          status: z.enum(["pending", "succeeded", "failed"]).optional(),
          limit: z.coerce.number().int().min(1).max(500).default(100),
          before: z.coerce
            .number()
            .int()
            .optional()
            .openapi({ description: "A page's `next_before`: the deliveries older than it." }),
        }),
      },
      responses: {
        200: jsonResponse(
          z.object({ data: z.array(Delivery), next_before: z.number().int().nullable() }),
          "Deliveries",
        ),
        ...errorResponses(400, 401, 403, 404),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const { id } = c.req.valid("param");
      const query = c.req.valid("query");
      await endpointOf(deps, accessOf(c).orgId, id);
      const rows = await deps.database.db
        .select({ delivery: webhookDeliveries, type: webhookEvents.type })
        .from(webhookDeliveries)
        .innerJoin(webhookEvents, eq(webhookEvents.id, webhookDeliveries.eventId))
        .where(
          and(
            eq(webhookDeliveries.endpointId, id),
            query.status ? eq(webhookDeliveries.status, query.status) : undefined,
            query.before !== undefined ? lt(webhookDeliveries.seq, query.before) : undefined,
          ),
        )
        .orderBy(desc(webhookDeliveries.seq))
        .limit(query.limit + 1);
      const page = rows.slice(0, query.limit);
      const last = page.at(-1)?.delivery.seq;
      return c.json(
        {
          data: page.map((row) => deliveryView(row.delivery, row.type)),
          next_before: rows.length > query.limit && last !== undefined ? last : null,
        },
        200,
      );
    },
  );

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/webhook-endpoints/{id}/deliveries/{delivery}",
      tags: ["Webhooks"],
      summary: "One delivery: its payload and every attempt",
      security,
      middleware: orgAccess("webhooks:read"),
      request: { params: DeliveryParams },
      responses: { 200: jsonResponse(DeliveryDetail, "The delivery"), ...errorResponses(401, 403, 404) },
    }),
    async (c) => {
      const deps = c.get("deps");
      const { id, delivery } = c.req.valid("param");
      const found = await deliveryOf(deps, accessOf(c).orgId, id, delivery);
      const attempts = await deps.database.db
        .select()
        .from(webhookAttempts)
        .where(eq(webhookAttempts.deliveryId, delivery))
        .orderBy(asc(webhookAttempts.attempt));
      return c.json(
        {
          ...deliveryView(found.delivery, found.type),
          payload: found.payload,
          attempt_log: attempts.map((a) => ({
            attempt: a.attempt,
            at: a.at.toISOString(),
            status: a.status,
            error: a.error,
            response_body: a.responseBody,
            duration_ms: a.durationMs,
          })),
        },
        200,
      );
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/orgs/{org}/webhook-endpoints/{id}/deliveries/{delivery}/retry",
      tags: ["Webhooks"],
      summary: "Send a delivery again now",
      description:
        "A failed (given up) delivery goes back into the endpoint's queue at its place and is sent at once, with its original `webhook-id`; a pending one is sent at once instead of waiting for the backoff; a succeeded one is sent again as a new delivery.",
      security,
      middleware: orgAccess("webhooks:manage"),
      request: { params: DeliveryParams },
      responses: {
        202: jsonResponse(Delivery, "Queued; the delivery log shows the outcome"),
        ...errorResponses(401, 403, 404, 409),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const access = accessOf(c);
      const { id, delivery } = c.req.valid("param");
      const endpoint = await endpointOf(deps, access.orgId, id);
      if (endpoint.status !== "enabled") {
        throw new AppError(
          "conflict",
          "The endpoint is disabled: turn it back on first (PATCH enabled: true).",
        );
      }
      const found = await deliveryOf(deps, access.orgId, id, delivery);
      let target = found.delivery;
      if (found.delivery.status === "succeeded") {
        const [copy] = await deps.database.db
          .insert(webhookDeliveries)
          .values({
            id: newId("delivery"),
            endpointId: id,
            eventId: found.delivery.eventId,
            orgId: access.orgId,
            origin: "replay",
            createdAt: deps.clock.now(),
          })
          .returning();
        if (!copy) throw new Error("delivery not created");
        target = copy;
      }
      await requeueDeliveries(deps, id, [target.id]);
      return c.json(deliveryView({ ...target, status: "pending" }, found.type), 202);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/orgs/{org}/webhook-endpoints/{id}/replay",
      tags: ["Webhooks"],
      summary: "Send the endpoint every event of its types from a time range again",
      description: `Each event becomes a new delivery (same \`webhook-id\`), queued after what is pending, oldest first; at most ${MAX_REPLAY} events per call (\`truncated\` says when there were more).`,
      security,
      middleware: orgAccess("webhooks:manage"),
      request: { params: EndpointParams, body: jsonBody(ReplayIn) },
      responses: {
        202: jsonResponse(
          z.object({
            queued: z.number().int(),
            truncated: z.boolean().openapi({
              description: `True when the range held more than ${MAX_REPLAY} events: the oldest ${MAX_REPLAY} were queued; replay again from the last one's time for the rest.`,
            }),
          }),
          "Queued",
        ),
        ...errorResponses(400, 401, 403, 404, 409),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const access = accessOf(c);
      const { id } = c.req.valid("param");
      const input = c.req.valid("json");
      const endpoint = await endpointOf(deps, access.orgId, id);
      if (endpoint.status !== "enabled") {
        throw new AppError(
          "conflict",
          "The endpoint is disabled: turn it back on first (PATCH enabled: true).",
        );
      }
      const since = new Date(input.since);
      const until = input.until ? new Date(input.until) : deps.clock.now();
      const types = EVENT_TYPES.filter((type) =>
        filtersMatching(type).some((filter) => endpoint.eventTypes.includes(filter)),
      );
      const now = deps.clock.now();
      const queued = await deps.database.db.transaction(async (tx) => {
        const events = await tx
          .select({ id: webhookEvents.id })
          .from(webhookEvents)
          .where(
            and(
              eq(webhookEvents.orgId, access.orgId),
              gte(webhookEvents.createdAt, since),
              lte(webhookEvents.createdAt, until),
              types.length > 0 ? inArray(webhookEvents.type, types) : sql`false`,
            ),
          )
          .orderBy(asc(webhookEvents.createdAt), asc(webhookEvents.id))
          .limit(MAX_REPLAY + 1);
        const truncated = events.length > MAX_REPLAY;
        events.length = Math.min(events.length, MAX_REPLAY);
        if (events.length === 0) return { queued: 0, truncated };
        await tx.insert(webhookDeliveries).values(
          events.map((event) => ({
            id: newId("delivery"),
            endpointId: id,
            eventId: event.id,
            orgId: access.orgId,
            origin: "replay" as const,
            createdAt: now,
          })),
        );
        await recordAudit(tx, {
          orgId: access.orgId,
          actor: access.caller,
          action: "webhook_endpoint.replayed",
          target: { type: "webhook_endpoint", id },
          metadata: { since: input.since, until: until.toISOString(), events: events.length },
        });
        await deps.jobs.enqueueInTx(tx, webhookDispatchJob, { endpoint_id: id });
        return { queued: events.length, truncated };
      });
      return c.json(queued, 202);
    },
  );

  return router;
}

async function deliveryOf(deps: Deps, orgId: string, endpointId: string, deliveryId: string) {
  const [found] = await deps.database.db
    .select({ delivery: webhookDeliveries, type: webhookEvents.type, payload: webhookEvents.payload })
    .from(webhookDeliveries)
    .innerJoin(webhookEvents, eq(webhookEvents.id, webhookDeliveries.eventId))
    .where(
      and(
        eq(webhookDeliveries.id, deliveryId),
        eq(webhookDeliveries.endpointId, endpointId),
        eq(webhookDeliveries.orgId, orgId),
      ),
    );
  if (!found) throw new AppError("not_found", `No delivery ${deliveryId}.`);
  return found;
}
