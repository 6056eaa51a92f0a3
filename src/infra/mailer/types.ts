/** One e-mail to send. Bodies are rendered by the caller (see src/lib/email-templates.ts). */
export interface EmailMessage {
  to: string;
  subject: string;
  text: string;
  html: string;
  /** Which template rendered it (`verify_email`, `reset_password`…): for the outbox view and metrics. */
  template: string;
  /** The sender's display name in the From header (the brand's); default: the configured sender's. */
  fromName?: string | undefined;
  /** The org the message is about, when there is one (the outbox is filtered by it). */
  orgId?: string | undefined;
}

/**
 * The `error` of a message whose recipient erased their account before it was sent: it is `failed`,
 * emptied, and never sent (not even by an admin's retry of its job).
 */
export const RECIPIENT_ERASED = "recipient erased";

/** `outbox`: kept, not (yet) sent; `sent`: accepted by the SMTP server; `failed`: it refused or was unreachable. */
export type EmailStatus = "outbox" | "sent" | "failed";

export interface SentEmail {
  /** The row in the `emails` table (the outbox), `eml_…`. */
  id: string;
  status: EmailStatus;
}

/**
 * Outgoing mail. Every message is recorded in the `emails` table first, so nothing is lost and admins
 * can read it later; the `outbox` twin stops there (no SMTP_URL), the `smtp` twin then delivers it.
 */
export interface Mailer {
  readonly kind: "outbox" | "smtp";
  /**
   * Records the message and, with SMTP, delivers it. Resolves once it is recorded and delivery was
   * tried: a delivery failure is a `failed` status (and a log line), never a rejection. It rejects
   * only when the message could not be recorded.
   */
  send(message: EmailMessage): Promise<SentEmail>;
  /**
   * Delivers a recorded message not sent yet (the `email.deliver` job's work). A failure throws so
   * the job retries; the `final` attempt marks the message `failed` (and throws too with
   * `throwOnFinal`, so the job is dead-lettered). "skipped": nothing to send (already sent, its
   * recipient erased, or no SMTP server configured).
   */
  deliver(
    id: string,
    options?: { final?: boolean; throwOnFinal?: boolean },
  ): Promise<EmailStatus | "skipped">;
  close(): Promise<void>;
}
