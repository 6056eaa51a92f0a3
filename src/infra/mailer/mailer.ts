import { and, eq, sql } from "drizzle-orm";
import nodemailer from "nodemailer";
import type { DatabaseHandle } from "../../db/client.js";
import { emails } from "../../db/schema.js";
import { type Clock, systemClock } from "../../lib/clock.js";
import { newId } from "../../lib/ids.js";
import type { Logger } from "../../lib/logger.js";
import {
  type EmailMessage,
  type EmailStatus,
  type Mailer,
  RECIPIENT_ERASED,
  type SentEmail,
} from "./types.js";

export type { EmailMessage, EmailStatus, Mailer, SentEmail } from "./types.js";
export { RECIPIENT_ERASED } from "./types.js";

export interface MailerOptions {
  database: DatabaseHandle;
  /** SMTP_URL (`smtp://user:pass@host:587`, `smtps://…:465`); unset keeps every message in the outbox. */
  smtpUrl?: string | undefined;
  logger: Logger;
  /** The From header, e.g. `Tollgate <no-reply@example.com>` (see {@link defaultSender}). */
  from: string;
  /** Stamps created_at and sent_at, so the outbox follows the test clock like everything else. */
  clock?: Clock;
  /**
   * Hands a recorded message to a background job that calls {@link Mailer.deliver} (with retries).
   * Unset, `send` delivers at once, in the caller's time (tests of the mailer alone).
   */
  queueDelivery?: (emailId: string) => Promise<unknown>;
}

/** `Tollgate <no-reply@host>`, the host taken from TOLLGATE_PUBLIC_URL. */
export function defaultSender(publicUrl: string): string {
  return `Tollgate <no-reply@${new URL(publicUrl).hostname}>`;
}

/** A dead server must not hold a delivery job for minutes; the job retries later. */
const SMTP_TIMEOUTS = { connectionTimeout: 10_000, greetingTimeout: 10_000, socketTimeout: 30_000 };

/** Long enough for any SMTP reply worth reading, short enough for a table column shown in a list. */
const MAX_ERROR_LENGTH = 1000;

const newEmailId = () => newId("email");

const erased = (row: { status: string; error: string | null }) =>
  row.status === "failed" && row.error === RECIPIENT_ERASED;

/** What a delivered message's body is replaced with. */
export const SENT_BODY = "[delivered; the body is not kept]";

/**
 * The mailer chosen by configuration: without SMTP_URL the outbox twin (messages are kept in the
 * `emails` table and shown to admins, nothing leaves the machine); with it the SMTP twin (nodemailer,
 * pooled connections).
 *
 * `send` records the message (status `outbox`) and, with SMTP, queues its delivery: the `email.deliver`
 * job calls `deliver`, which tries the server and retries with backoff; the last failed attempt marks
 * the message `failed`. Callers must not rely on a message having left when `send` resolves.
 *
 * Never logged: addresses and bodies (bodies carry one-time links). Log lines name the row id.
 */
export function createMailer(options: MailerOptions): Mailer {
  const { database, logger, clock = systemClock } = options;
  const log = logger.child({ component: "mailer" });

  const record = async (message: EmailMessage): Promise<string> => {
    const id = newEmailId();
    await database.db.insert(emails).values({
      id,
      to: message.to,
      subject: message.subject,
      text: message.text,
      html: message.html,
      template: message.template,
      fromName: message.fromName ?? null,
      orgId: message.orgId ?? null,
      status: "outbox",
      createdAt: clock.now(),
    });
    return id;
  };

  if (!options.smtpUrl) {
    return {
      kind: "outbox",
      send: async (message) => {
        const id = await record(message);
        log.info(
          { email_id: id, template: message.template },
          "e-mail kept in the outbox (SMTP_URL is not set)",
        );
        return { id, status: "outbox" };
      },
      deliver: async () => "skipped",
      close: async () => {},
    };
  }

  const transport = nodemailer.createTransport(
    { url: options.smtpUrl, pool: true, maxConnections: 5, ...SMTP_TIMEOUTS },
    { from: options.from },
  );
  // A branded message keeps the configured address and shows the brand's name (nodemailer encodes
  // and quotes it).
  const senderAddress = /<([^>]+)>/.exec(options.from)?.[1] ?? options.from;

  const setOutcome = async (id: string, outcome: Partial<typeof emails.$inferInsert>) => {
    try {
      // An erasure that happened meanwhile keeps its mark (and the message stays emptied).
      await database.db
        .update(emails)
        .set(outcome)
        .where(and(eq(emails.id, id), sql`${emails.error} is distinct from ${RECIPIENT_ERASED}`));
    } catch (error) {
      // The delivery itself is settled; only its bookkeeping is lost.
      log.error(
        { email_id: id, err: (error as Error).message },
        "could not record the e-mail's delivery status",
      );
    }
  };

  const deliver = async (
    id: string,
    options: { final?: boolean; throwOnFinal?: boolean } = {},
  ): Promise<EmailStatus | "skipped"> => {
    const [row] = await database.db.select().from(emails).where(eq(emails.id, id));
    // Delivered already (a job run twice), or its recipient erased: nothing to do. Another `failed`
    // message is sent again: only an admin's retry of its dead job asks for that.
    if (!row || row.status === "sent" || erased(row)) return "skipped";
    try {
      await transport.sendMail({
        ...(row.fromName ? { from: { name: row.fromName, address: senderAddress } } : {}),
        to: row.to,
        subject: row.subject,
        text: row.text,
        html: row.html,
      });
    } catch (error) {
      const reason = ((error as Error).message || String(error)).slice(0, MAX_ERROR_LENGTH);
      if (options.final) {
        await setOutcome(id, { status: "failed", error: reason });
        log.warn({ email_id: id, template: row.template, err: reason }, "e-mail delivery failed for good");
        if (options.throwOnFinal)
          throw new Error(`e-mail ${id} not delivered, attempts exhausted: ${reason}`);
        return "failed";
      }
      await setOutcome(id, { error: reason });
      throw new Error(`e-mail ${id} not delivered: ${reason}`);
    }
    // Sent: the bodies (which carry live sign-in, reset and invitation links) are not kept.
    await setOutcome(id, {
      status: "sent",
      sentAt: clock.now(),
      error: null,
      text: SENT_BODY,
      html: SENT_BODY,
    });
    log.info({ email_id: id, template: row.template }, "e-mail sent");
    return "sent";
  };

  return {
    kind: "smtp",
    send: async (message): Promise<SentEmail> => {
      // Recorded before any attempt: a crash or a refusal never loses the message.
      const id = await record(message);
      if (options.queueDelivery) {
        await options.queueDelivery(id);
        return { id, status: "outbox" };
      }
      const status = await deliver(id, { final: true });
      return { id, status: status === "skipped" ? "outbox" : status };
    },
    deliver,
    close: async () => {
      transport.close();
    },
  };
}
