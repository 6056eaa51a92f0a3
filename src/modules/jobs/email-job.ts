import { and, eq, lt } from "drizzle-orm";
import { z } from "zod";
import { emails } from "../../db/schema.js";
import { defineJob } from "./define.js";

/**
 * Delivers one recorded e-mail over SMTP; retried with backoff for about an hour, then the message is
 * `failed` and the job waits in the dead-letter list.
 */
export const emailDeliverJob = defineJob({
  name: "email.deliver",
  schema: z.object({ email_id: z.string() }),
  attempts: 8,
  backoffMs: 30_000,
  run: async (deps, { email_id }, context) => {
    // The last attempt marks the message failed and dead-letters the job, where an admin can retry it.
    await deps.mailer.deliver(email_id, { final: context.attempt >= 8, throwOnFinal: true });
  },
});

/** Messages recorded but never queued (Redis was down when they were sent) are queued again. */
export const emailSweepJob = defineJob({
  name: "email.sweep",
  schema: z.object({}).strict(),
  attempts: 1,
  run: async (deps) => {
    if (deps.mailer.kind !== "smtp") return; // without SMTP the outbox is where messages stay
    const stale = await deps.database.db
      .select({ id: emails.id })
      .from(emails)
      .where(and(eq(emails.status, "outbox"), lt(emails.createdAt, new Date(deps.clock.nowMs() - 120_000))))
      .limit(500);
    for (const { id } of stale) {
      await deps.jobs.enqueue(emailDeliverJob, { email_id: id }, { dedupKey: `email:${id}` });
    }
  },
});
