import { Webhook, WebhookVerificationError } from "standardwebhooks";
import { TollgateWebhookError } from "./errors.js";

/**
 * Tollgate's outbound webhooks: signed per the Standard Webhooks spec (`webhook-id`,
 * `webhook-timestamp`, `webhook-signature` headers; HMAC-SHA256 with the endpoint's `whsec_…`
 * secret; timestamps older or newer than 5 minutes refused).
 */

/** Every event type Tollgate sends (a test keeps this list equal to the server's). */
export const WEBHOOK_EVENT_TYPES = [
  "subscription.created",
  "subscription.updated",
  "subscription.canceled",
  "subscription.resumed",
  "invoice.finalized",
  "invoice.paid",
  "invoice.payment_failed",
  "invoice.voided",
  "credit_note.created",
  "usage.threshold_reached",
  "member.invited",
  "member.joined",
  "member.role_changed",
  "member.removed",
  "api_key.created",
  "api_key.rotated",
  "api_key.revoked",
] as const;

/** A webhook event type (`subscription.updated`, `invoice.paid`, …). */
export type WebhookEventType = (typeof WEBHOOK_EVENT_TYPES)[number];

/** A verified webhook: the body Tollgate signed, and its `webhook-id` (deduplicate on it). */
export interface WebhookEvent {
  /** The event's `msg_…` id: the same on every retry and replay. */
  id: string;
  type: WebhookEventType;
  /** When the event happened (ISO 8601). */
  timestamp: string;
  /** The event's object: for `subscription.*`, the subscription (`org_id`, `plan`, `status`, …). */
  data: Record<string, unknown>;
}

/** Request headers as frameworks hand them over: a `Headers` object or a plain record (Node's). */
export type WebhookHeaders = Headers | Record<string, string | string[] | undefined>;

const NAMES = ["webhook-id", "webhook-timestamp", "webhook-signature"] as const;

/**
 * Verifies a webhook's signature and timestamp and returns the parsed event. Throws
 * TollgateWebhookError when it does not verify (answer 400; Tollgate retries).
 *
 * @param rawBody the body exactly as received (not re-serialized JSON)
 */
export function verifyWebhook(
  rawBody: string | Uint8Array,
  headers: WebhookHeaders,
  secret: string,
): WebhookEvent {
  const payload = typeof rawBody === "string" ? rawBody : new TextDecoder().decode(rawBody);
  const picked: Record<string, string> = {};
  for (const name of NAMES) {
    const value = headerOf(headers, name);
    if (value !== undefined) picked[name] = value;
  }
  let parsed: unknown;
  try {
    parsed = new Webhook(secret).verify(payload, picked);
  } catch (error) {
    if (error instanceof WebhookVerificationError || error instanceof SyntaxError) {
      throw new TollgateWebhookError(`The webhook did not verify: ${error.message}`);
    }
    throw error;
  }
  const body = parsed as Partial<WebhookEvent> | undefined;
  if (!body || typeof body.type !== "string" || typeof body.data !== "object" || body.data === null) {
    throw new TollgateWebhookError("The webhook's body is not a Tollgate event");
  }
  return {
    id: picked["webhook-id"] as string,
    type: body.type,
    timestamp: String(body.timestamp ?? ""),
    data: body.data as Record<string, unknown>,
  };
}

function headerOf(headers: WebhookHeaders, name: string): string | undefined {
  if (typeof (headers as Headers).get === "function") return (headers as Headers).get(name) ?? undefined;
  const record = headers as Record<string, string | string[] | undefined>;
  let value = record[name];
  if (value === undefined) {
    for (const key of Object.keys(record)) {
      if (key.toLowerCase() === name) {
        value = record[key];
        break;
      }
    }
  }
  return Array.isArray(value) ? value[0] : value;
}
