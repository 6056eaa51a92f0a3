import { createRoute, z } from "@hono/zod-openapi";
import { and, desc, eq, lt, type SQL } from "drizzle-orm";
import { emails } from "../../db/schema.js";
import { AppError } from "../../lib/errors.js";
import { errorResponses, jsonResponse } from "../../lib/http.js";
import { recordAudit } from "../audit/service.js";
import { createApiRouter, platformAdminOnly, requireCaller } from "../auth/caller.js";

/**
 * The operator's view of background work: the dead-letter list (jobs that failed every attempt), with
 * a retry, and the mail outbox (every message recorded, whether kept, sent or failed).
 */

const security: Record<string, string[]>[] = [{ operator: [] }, { bearer: [] }];

const DeadJob = z
  .object({
    id: z.string(),
    name: z.string(),
    payload: z.unknown(),
    attempts: z.number().int(),
    error: z.string().nullable(),
    failed_at: z.iso.datetime().nullable(),
  })
  .openapi("DeadJob");

const Email = z
  .object({
    id: z.string(),
    to: z.string(),
    subject: z.string(),
    template: z.string(),
    org_id: z.string().nullable(),
    status: z.enum(["outbox", "sent", "failed"]),
    error: z.string().nullable(),
    created_at: z.iso.datetime(),
    sent_at: z.iso.datetime().nullable(),
    text: z
      .string()
      .openapi({ description: "Replaced by a placeholder once delivered (bodies carry live links)." }),
    html: z.string(),
  })
  .openapi("OutboxEmail");

export function jobAdminRoutes() {
  const router = createApiRouter();

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/admin/jobs/dead",
      tags: ["Admin"],
      summary: "Jobs that failed every attempt (the dead-letter list), newest first",
      security,
      middleware: platformAdminOnly,
      request: { query: z.object({ limit: z.coerce.number().int().min(1).max(500).default(50) }) },
      responses: {
        200: jsonResponse(z.object({ data: z.array(DeadJob) }), "Dead jobs"),
        ...errorResponses(400, 401, 403),
      },
    }),
    async (c) => {
      const { limit } = c.req.valid("query");
      const dead = await c.get("deps").jobs.deadJobs(limit);
      return c.json(
        {
          data: dead.map((job) => ({
            id: job.id,
            name: job.name,
            payload: job.payload,
            attempts: job.attempts,
            error: job.error,
            failed_at: job.failedAt?.toISOString() ?? null,
          })),
        },
        200,
      );
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/admin/jobs/dead/{id}/retry",
      tags: ["Admin"],
      summary: "Run a dead job again, with a fresh set of attempts",
      security,
      middleware: platformAdminOnly,
      request: { params: z.object({ id: z.string().max(300) }) },
      responses: {
        202: jsonResponse(z.object({ id: z.string(), queued: z.literal(true) }), "Queued again"),
        ...errorResponses(401, 403, 404),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const { id } = c.req.valid("param");
      if (!(await deps.jobs.retryDead(id))) throw new AppError("not_found", `No dead job ${id}.`);
      await recordAudit(deps.database.db, {
        orgId: null,
        actor: await requireCaller(c),
        action: "admin.job_retried",
        target: { type: "job", id },
      });
      return c.json({ id, queued: true as const }, 202);
    },
  );

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/admin/emails",
      tags: ["Admin"],
      summary: "The mail outbox: every message recorded, newest first",
      description:
        "Without SMTP_URL every message stays here (status `outbox`) and this is where to read it; with it, the status says whether it was sent.",
      security,
      middleware: platformAdminOnly,
      request: {
        query: z.object({
          to: z.string().max(320).optional(),
          org_id: z.string().max(64).optional(),
          status: z.enum(["outbox", "sent", "failed"]).optional(),
          before: z.string().max(64).optional().openapi({ description: "A page's `next_before`." }),
          limit: z.coerce.number().int().min(1).max(200).default(50),
        }),
      },
      responses: {
        200: jsonResponse(z.object({ data: z.array(Email), next_before: z.string().nullable() }), "Messages"),
        ...errorResponses(400, 401, 403),
      },
    }),
    async (c) => {
      const query = c.req.valid("query");
      const filters: (SQL | undefined)[] = [
        query.to ? eq(emails.to, query.to) : undefined,
        query.org_id ? eq(emails.orgId, query.org_id) : undefined,
        query.status ? eq(emails.status, query.status) : undefined,
        query.before ? lt(emails.id, query.before) : undefined,
      ];
      const rows = await c
        .get("deps")
        .database.db.select()
        .from(emails)
        .where(and(...filters))
        .orderBy(desc(emails.id))
        .limit(query.limit + 1);
      const page = rows.slice(0, query.limit);
      return c.json(
        {
          data: page.map((row) => ({
            id: row.id,
            to: row.to,
            subject: row.subject,
            template: row.template,
            org_id: row.orgId,
            status: row.status,
            error: row.error,
            created_at: row.createdAt.toISOString(),
            sent_at: row.sentAt?.toISOString() ?? null,
            text: row.text,
            html: row.html,
          })),
          next_before: rows.length > query.limit ? (page.at(-1)?.id ?? null) : null,
        },
        200,
      );
    },
  );

  return router;
}
