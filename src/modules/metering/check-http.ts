import { z } from "@hono/zod-openapi";
import { storableString } from "../../lib/http.js";
import type { CheckAnswer, CheckInput, FeatureResult } from "./check.js";
import { rateHeaders } from "./rate-headers.js";
import { Amount } from "./schemas.js";

/**
 * `POST /v1/check` as HTTP: its request schema, the engine's input, and the response — shared by the
 * OpenAPI route (routes.ts) and the node:http fast path (src/listener.ts), so the two cannot drift.
 */

const IdempotencyKey = storableString(255).openapi({
  description:
    "Makes retries safe: a repeated key returns the first answer (for 24 hours) and consumes nothing more. A key reused with different parameters is a 409.",
});
export const OrgId = storableString(64).openapi({ example: "org_01jdz8m6v8x4h6q3b9k2n7c5rt" });

const ORG_ID_MAX = 64;
const FEATURE_MAX = 128;
const IDEMPOTENCY_KEY_MAX = 255;

export const SingleCheck = z
  .strictObject({
    org_id: OrgId,
    feature: z.string().min(1).max(FEATURE_MAX).openapi({ example: "kolekts" }),
    amount: Amount.optional(),
    consume: z.boolean().optional().openapi({ description: "Default true. False only asks." }),
    idempotency_key: IdempotencyKey.optional(),
  })
  .openapi("CheckRequest");
export const MultiCheck = z
  .strictObject({
    org_id: OrgId,
    features: z
      .array(z.strictObject({ feature: z.string().min(1).max(FEATURE_MAX), amount: Amount.optional() }))
      .min(1)
      .max(20),
    consume: z.boolean().optional(),
    idempotency_key: IdempotencyKey.optional(),
  })
  .openapi("CheckManyRequest");
export const CheckRequest = z.union([SingleCheck, MultiCheck]);
export type CheckBody = z.infer<typeof CheckRequest>;

const SINGLE_KEYS = new Set(["org_id", "feature", "amount", "consume", "idempotency_key"]);

const storable = (value: unknown, max: number): value is string =>
  typeof value === "string" && value.length >= 1 && value.length <= max && !value.includes("\u0000");

/**
 * The common request — one feature — recognised without zod: exactly the bodies SingleCheck accepts
 * (never more), at a fraction of the cost. Anything else (several features, or an error to report
 * field by field) goes through the schema.
 */
export function quickSingleCheck(body: unknown): z.infer<typeof SingleCheck> | undefined {
  if (typeof body !== "object" || body === null || Array.isArray(body)) return undefined;
  const fields = body as Record<string, unknown>;
  for (const key of Object.keys(fields)) if (!SINGLE_KEYS.has(key)) return undefined;
  const { org_id, feature, amount, consume, idempotency_key } = fields;
  if (!storable(org_id, ORG_ID_MAX)) return undefined;
  if (typeof feature !== "string" || feature.length < 1 || feature.length > FEATURE_MAX) return undefined;
  if (
    amount !== undefined &&
    typeof amount !== "string" &&
    !(typeof amount === "number" && Number.isFinite(amount))
  )
    return undefined;
  if (consume !== undefined && typeof consume !== "boolean") return undefined;
  if (idempotency_key !== undefined && !storable(idempotency_key, IDEMPOTENCY_KEY_MAX)) return undefined;
  return fields as z.infer<typeof SingleCheck>;
}

/** The engine's input for a valid body. */
export function checkInputOf(body: CheckBody): { input: CheckInput; single: boolean } {
  const single = "feature" in body;
  const items = single
    ? [{ feature: body.feature, amount: body.amount ?? 1 }]
    : body.features.map((f) => ({ feature: f.feature, amount: f.amount ?? 1 }));
  return {
    single,
    input: {
      orgId: body.org_id,
      items,
      consume: body.consume ?? true,
      idempotencyKey: body.idempotency_key,
      fieldOf: single ? singleField : manyField,
    },
  };
}

const singleField = (_index: number, field: "feature" | "amount") => field;
const manyField = (index: number, field: "feature" | "amount") => `features.${index}.${field}`;

/** The answer as the response's JSON and headers. */
export function checkResponseOf(
  answer: CheckAnswer,
  single: boolean,
): { json: unknown; headers: Record<string, string> } {
  const headers = answer.rate ? rateHeaders(answer.rate) : {};
  if (answer.replayed) headers["idempotent-replayed"] = "true";
  if (single) {
    const result = answer.results[0] as FeatureResult;
    return { json: { ...result, allowed: answer.allowed }, headers };
  }
  return { json: { allowed: answer.allowed, results: answer.results }, headers };
}
