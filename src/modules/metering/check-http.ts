import { z } from "@hono/zod-openapi";
import type { Deps } from "../../deps.js";
import { storableString } from "../../lib/http.js";
import {
  type CheckAnswer,
  type CheckInput,
  earlierAnswer,
  type FeatureResult,
  fingerprintOf,
  runCheck,
} from "./check.js";
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
/** One feature of a multi-feature check (`/v1/check` and `/v1/keys/verify`). */
export const FeatureItem = z.strictObject({
  feature: z.string().min(1).max(FEATURE_MAX),
  amount: Amount.optional(),
  consume: z.boolean().optional().openapi({
    description:
      "This item only: consume it (true) or only check it (false). Default: the request's `consume`. Items checked without consuming are decided first; if any is denied, nothing is consumed.",
  }),
});
export const MultiCheck = z
  .strictObject({
    org_id: OrgId,
    features: z.array(FeatureItem).min(1).max(20),
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

/**
 * A check as a route receives it: the engine's input, plus which items are consumed when the request
 * mixes consumed and only-checked items (`features[].consume`). Undefined when every item follows
 * the request's `consume`.
 */
export interface RouteCheckInput extends CheckInput {
  itemConsume?: boolean[] | undefined;
}

/** The engine's input for a valid body. */
export function checkInputOf(body: CheckBody): { input: RouteCheckInput; single: boolean } {
  const single = "feature" in body;
  const consume = body.consume ?? true;
  const items = single
    ? [{ feature: body.feature, amount: body.amount ?? 1 }]
    : body.features.map((f) => ({ feature: f.feature, amount: f.amount ?? 1 }));
  return {
    single,
    input: {
      orgId: body.org_id,
      items,
      consume,
      idempotencyKey: body.idempotency_key,
      fieldOf: single ? singleField : manyField,
      itemConsume: single ? undefined : itemConsumeOf(body.features, consume),
    },
  };
}

/** Each item's own `consume` (default: the request's), or undefined when none differs from it. */
export function itemConsumeOf(
  features: readonly { consume?: boolean | undefined }[],
  consume: boolean,
): boolean[] | undefined {
  if (features.every((f) => f.consume === undefined || f.consume === consume)) return undefined;
  return features.map((f) => f.consume ?? consume);
}

export const singleField = (_index: number, field: "feature" | "amount") => field;
export const manyField = (index: number, field: "feature" | "amount") => `features.${index}.${field}`;

/**
 * Runs a route's check. When items differ in `consume` (a rate to take now, a quota only to check),
 * it is two calls of the engine, neither changed by this:
 *
 * 1. a dry run of every item (validating them all at once, with their own field paths): if an item
 *    that is only checked is denied, that is the answer — nothing is consumed;
 * 2. otherwise the consumed items are run, atomically among themselves as any call is, and their
 *    results replace the dry run's.
 *
 * Results stay in request order; the answer is allowed only if both parts are. The checked items'
 * results are as before the call (a dry run never consumes).
 *
 * The idempotency key covers the whole request — every item, its amount and its own `consume` — as
 * it does any request: a repeat replays the whole first answer before anything is asked again, and
 * the key reused for a different request is a 409. One difference: a denial by a checked item
 * consumed nothing and is not stored, so a repeat asks again (and may then be allowed).
 */
export async function runRouteCheck(deps: Deps, input: RouteCheckInput): Promise<CheckAnswer> {
  const flags = input.itemConsume;
  if (flags === undefined) return runCheck(deps, input);
  const { itemConsume: _flags, ...base } = input;
  const key = input.idempotencyKey;
  const fingerprint = key === undefined ? "" : routeFingerprint(input, flags);
  if (key !== undefined) {
    const earlier = await earlierAnswer(deps, input.orgId, key, fingerprint);
    if (earlier) return earlier;
  }
  const dry = await runCheck(deps, { ...base, consume: false, idempotencyKey: undefined });
  const checkedAllowed = dry.results.every((r, i) => flags[i] || r.allowed);
  const consumed: number[] = [];
  flags.forEach((flag, i) => {
    if (flag) consumed.push(i);
  });
  if (!checkedAllowed || consumed.length === 0) {
    return { ...dry, allowed: checkedAllowed && dry.allowed };
  }
  const whole = (taken: CheckAnswer): CheckAnswer => {
    const results = [...dry.results];
    consumed.forEach((i, j) => {
      results[i] = taken.results[j] as FeatureResult;
    });
    return {
      allowed: taken.allowed,
      results,
      rate: taken.rate ?? dry.rate,
      replayed: taken.replayed,
      degraded: dry.degraded || taken.degraded,
    };
  };
  const taken = await runCheck(deps, {
    orgId: input.orgId,
    items: consumed.map((i) => input.items[i] as CheckInput["items"][number]),
    consume: true,
    idempotencyKey: key,
    idempotency: key === undefined ? undefined : { fingerprint, whole },
    fieldOf: (j, field) => input.fieldOf(consumed[j] as number, field),
  });
  // A replay (a repeat that raced this one to the key) is the whole answer already.
  return taken.replayed ? taken : whole(taken);
}

/** A mixed request's fingerprint: every item with its own `consume` (never equal to a plain request's). */
function routeFingerprint(input: CheckInput, flags: readonly boolean[]): string {
  return fingerprintOf({
    ...input,
    items: input.items.map((item, i) => ({
      feature: `${flags[i] ? "+" : "?"}${item.feature}`,
      amount: item.amount,
    })),
  });
}

/** The answer as the response's JSON and headers. */
export function checkResponseOf(
  answer: CheckAnswer,
  single: boolean,
): { json: unknown; headers: Record<string, string> } {
  const headers = answer.rate ? rateHeaders(answer.rate) : {};
  if (answer.replayed) headers["idempotent-replayed"] = "true";
  if (single) {
    const result = answer.results[0] as FeatureResult;
    return {
      json: result.allowed === answer.allowed ? result : { ...result, allowed: answer.allowed },
      headers,
    };
  }
  return { json: { allowed: answer.allowed, results: answer.results }, headers };
}
