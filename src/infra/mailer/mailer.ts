import { eq } from "drizzle-orm";
import nodemailer from "nodemailer";
import type { DatabaseHandle } from "../../db/client.js";
import { emails } from "../../db/schema.js";
import { type Clock, systemClock } from "../../lib/clock.js";
import { newId } from "../../lib/ids.js";
import type { Logger } from "../../lib/logger.js";
import type { EmailMessage, Mailer, SentEmail } from "./types.js";

export type { EmailMessage, EmailStatus, Mailer, SentEmail } from "./types.js";

export interface MailerOptions {
  database: DatabaseHandle;
  /** SMTP_URL (`smtp://user:pass@host:587`, `smtps://…:465`); unset keeps every message in the outbox. */
  smtpUrl?: string | undefined;
  logger: Logger;
  /** The From header, e.g. `Tollgate <no-reply@example.com>` (see {@link defaultSender}). */
  from: string;
  /** Stamps created_at and sent_at, so the outbox follows the test clock like everything else. */
  clock?: Clock;
}

/** `Tollgate <no-reply@host>`, the host taken from TOLLGATE_PUBLIC_URL. */
export function defaultSender(publicUrl: string): string {
  return `Tollgate <no-reply@${new URL(publicUrl).hostname}>`;
}

/** Kept short: delivery happens inside the request for now, and a dead server must not hang it for minutes. */
const SMTP_TIMEOUTS = { connectionTimeout: 10_000, greetingTimeout: 10_000, socketTimeout: 30_000 };

/** Long enough for any SMTP reply worth reading, short enough for a table column shown in a list. */
const MAX_ERROR_LENGTH = 1000;

const newEmailId = () => newId("email");

/** What a delivered message's body is replaced with. */
export const SENT_BODY = "[delivered; the body is not kept]";

/**
 * The mailer chosen by configuration: without SMTP_URL the outbox twin (messages are kept in the
 * `emails` table and shown to admins, nothing leaves the machine); with it the SMTP twin (nodemailer,
 * pooled connections).
 *
 * Delivery is synchronous for now: `send` records the message, tries the server once and writes the
 * outcome. Issue 6 moves delivery to a background job with retries (the row recorded here, status
 * `outbox`, is already the job's input), so callers must not rely on a message having left when
 * `send` resolves.
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
      close: async () => {},
    };
  }

  const transport = nodemailer.createTransport(
    { url: options.smtpUrl, pool: true, maxConnections: 5, ...SMTP_TIMEOUTS },
    { from: options.from },
  );

  const setOutcome = async (id: string, outcome: Partial<typeof emails.$inferInsert>) => {
    try {
      await database.db.update(emails).set(outcome).where(eq(emails.id, id));
    } catch (error) {
      // The delivery itself is settled; only its bookkeeping is lost.
      log.error(
        { email_id: id, err: (error as Error).message },
        "could not record the e-mail's delivery status",
      );
    }
  };

  return {
    kind: "smtp",
    send: async (message): Promise<SentEmail> => {
      // Recorded before the attempt: a crash or a refusal never loses the message.
      const id = await record(message);
      try {
        await transport.sendMail({
          to: message.to,
          subject: message.subject,
          text: message.text,
          html: message.html,
        });
      } catch (error) {
        const reason = ((error as Error).message || String(error)).slice(0, MAX_ERROR_LENGTH);
        await setOutcome(id, { status: "failed", error: reason });
        log.warn({ email_id: id, template: message.template, err: reason }, "e-mail delivery failed");
        return { id, status: "failed" };
      }
      // Sent: the bodies (which carry live sign-in, reset and invitation links) are not kept.
      await setOutcome(id, {
        status: "sent",
        sentAt: clock.now(),
        error: null,
        text: SENT_BODY,
        html: SENT_BODY,
      });
      log.info({ email_id: id, template: message.template }, "e-mail sent");
      return { id, status: "sent" };
    },
    close: async () => {
      transport.close();
    },
  };
}
