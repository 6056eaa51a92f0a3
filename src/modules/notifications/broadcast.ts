import { createRoute, z } from "@hono/zod-openapi";
import { and, asc, eq, inArray, isNull, ne } from "drizzle-orm";
import { memberships, orgs, planVersions, subscriptions, users } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { brandFor, renderActionEmail } from "../../lib/email-templates.js";
import { AppError } from "../../lib/errors.js";
import { errorResponses, jsonBody, jsonResponse } from "../../lib/http.js";
import { newId } from "../../lib/ids.js";
import { recordAudit } from "../audit/service.js";
import { createApiRouter, platformAdminOnly, requireCaller } from "../auth/caller.js";
import { greeting } from "./emails.js";

/**
 * Admin broadcasts: the operator e-mails a plain-text message to every user, to every org owner, or
 * to the owners and admins of orgs subscribed to one plan. One message per recipient (each address
 * once), in the instance's branding (the seller's), template `broadcast`. Sending only records and
 * queues each message (the mailer delivers in the background), so even a large audience is recorded
 * in the request, one after the other; the answer is 202 with the broadcast's id and recipient count.
 */

const noNul = (value: string) => !value.includes("\u0000");

export const BroadcastAudience = z
  .union([
    z.enum(["all", "owners"]),
    z.strictObject({ plan: z.string().min(1).max(200).openapi({ example: "pro" }) }),
  ])
  .openapi("BroadcastAudience", {
    description:
      '"all": every user; "owners": every owner of an org; {plan}: the owners and admins of orgs whose subscription is on that plan (not canceled).',
  });

export type BroadcastAudience = z.infer<typeof BroadcastAudience>;

export const BroadcastInput = z
  .strictObject({
    subject: z
      .string()
      .trim()
      .min(1)
      .max(200)
      .refine(noNul, "must not contain NUL characters")
      .refine((value) => !/[\r\n]/.test(value), "must be one line"),
    body: z
      .string()
      .min(1)
      .max(20_000)
      .refine(noNul, "must not contain NUL characters")
      .refine((value) => value.trim().length > 0, "must not be blank")
      .openapi({ description: "Plain text; paragraphs are separated by blank lines." }),
    audience: BroadcastAudience,
  })
  .openapi("BroadcastRequest");

export const Broadcast = z
  .object({
    id: z.string().openapi({ example: "bct_01jd4x5v8r2m3n4p5q6r7s8t9v" }),
    recipients: z.number().int().openapi({ description: "Messages recorded: one per address." }),
  })
  .openapi("Broadcast");

const security: Record<string, string[]>[] = [{ operator: [] }, { bearer: [] }];

interface Recipient {
  email: string;
  name: string;
}

/** Whether a plan key names a plan: in the catalog now, or retired but still versioned. */
async function isKnownPlan(deps: Deps, planKey: string): Promise<boolean> {
  if (deps.plans.current(planKey)) return true;
  const [row] = await deps.database.db
    .select({ key: planVersions.planKey })
    .from(planVersions)
    .where(eq(planVersions.planKey, planKey))
    .limit(1);
  return Boolean(row);
}

/** The audience's users, each address once, in address order. 400 for an unknown plan. */
export async function broadcastRecipients(deps: Deps, audience: BroadcastAudience): Promise<Recipient[]> {
  const { db } = deps.database;
  const columns = { id: users.id, email: users.email, name: users.name };
  let rows: (Recipient & { id: string })[];
  if (audience === "all") {
    rows = await db.selectDistinct(columns).from(users).orderBy(asc(users.email));
  } else if (audience === "owners") {
    rows = await db
      .selectDistinct(columns)
      .from(users)
      .innerJoin(memberships, eq(memberships.userId, users.id))
      .innerJoin(orgs, eq(orgs.id, memberships.orgId))
      .where(and(eq(memberships.role, "owner"), isNull(orgs.deletedAt)))
      .orderBy(asc(users.email));
  } else {
    if (!(await isKnownPlan(deps, audience.plan))) {
      throw new AppError("validation_failed", `There is no plan ${audience.plan}.`, {
        errors: [
          {
            field: "audience.plan",
            message: `no plan has the key ${audience.plan}`,
            code: "unknown_plan",
            location: "body",
          },
        ],
      });
    }
    rows = await db
      .selectDistinct(columns)
      .from(users)
      .innerJoin(memberships, eq(memberships.userId, users.id))
      .innerJoin(orgs, eq(orgs.id, memberships.orgId))
      .innerJoin(subscriptions, eq(subscriptions.orgId, orgs.id))
      .where(
        and(
          inArray(memberships.role, ["owner", "admin"]),
          isNull(orgs.deletedAt),
          eq(subscriptions.planKey, audience.plan),
          ne(subscriptions.status, "canceled"),
        ),
      )
      .orderBy(asc(users.email));
  }
  // Addresses are unique per user; kept once anyway, whatever the joins return.
  return [...new Map(rows.map((row) => [row.email, { email: row.email, name: row.name }])).values()];
}

/** Splits plain text into paragraphs at blank lines; lines inside a paragraph are kept. */
export const paragraphsOf = (body: string) =>
  body
    .split(/\r?\n[ \t]*\r?\n/)
    .map((paragraph) => paragraph.trim())
    .filter((paragraph) => paragraph.length > 0);

/** Records one message per recipient; returns how many. */
export async function sendBroadcast(
  deps: Deps,
  input: { subject: string; body: string; recipients: Recipient[] },
): Promise<number> {
  const brand = await brandFor(deps, null);
  const intro = paragraphsOf(input.body);
  const footnote = [`You receive this because you have an account at ${brand.display_name}.`];
  let sent = 0;
  for (const recipient of input.recipients) {
    await deps.mailer.send({
      to: recipient.email,
      ...renderActionEmail({
        subject: input.subject,
        brand,
        greeting: greeting(recipient.name),
        intro,
        outro: [],
        footnote,
      }),
      template: "broadcast",
    });
    sent += 1;
  }
  return sent;
}

export function broadcastRoutes() {
  const router = createApiRouter();
  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/admin/broadcast",
      tags: ["Admin"],
      summary: "E-mail a message to all users, all org owners, or the owners and admins on one plan",
      security,
      middleware: platformAdminOnly,
      request: { body: jsonBody(BroadcastInput) },
      responses: {
        202: jsonResponse(Broadcast, "Recorded for every recipient; delivered in the background"),
        ...errorResponses(400, 401, 403),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const caller = await requireCaller(c);
      const input = c.req.valid("json");
      const id = newId("broadcast");
      const recipients = await broadcastRecipients(deps, input.audience);
      const sent = await sendBroadcast(deps, { ...input, recipients });
      await recordAudit(deps.database.db, {
        orgId: null,
        actor: caller,
        action: "admin.broadcast_sent",
        target: { type: "broadcast", id },
        metadata: { id, audience: input.audience, recipients: sent, subject: input.subject },
      });
      deps.logger.info({ broadcast: id, recipients: sent }, "broadcast recorded");
      return c.json({ id, recipients: sent }, 202);
    },
  );
  return router;
}
