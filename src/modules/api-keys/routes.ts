import { createRoute, z } from "@hono/zod-openapi";
import { errorResponses, jsonBody, jsonResponse, storableString } from "../../lib/http.js";
import { createApiRouter, operatorOnly } from "../auth/caller.js";
import type { FeatureResult } from "../metering/check.js";
import { FeatureItem, itemConsumeOf, manyField, runRouteCheck, singleField } from "../metering/check-http.js";
import { setRateHeaders } from "../metering/rate-headers.js";
import { Amount, CheckResult } from "../metering/schemas.js";
import { accessOf, orgAccess } from "../orgs/access.js";
import { API_KEY_SCOPES } from "../orgs/permissions.js";
import { orgPlan } from "../plans/subscriptions.js";
import { KEY_LENGTH } from "./format.js";
import {
  type ApiKeyRow,
  createApiKey,
  listApiKeys,
  MAX_GRACE_SECONDS,
  revokeApiKey,
  rotateApiKey,
} from "./service.js";
import { verifyApiKey } from "./verify.js";

const SCOPES: ReadonlySet<string> = new Set(API_KEY_SCOPES);

const Scope = z
  .string()
  .refine((scope) => SCOPES.has(scope), {
    error: (issue) =>
      `"${String(issue.input)}" is not an API key scope (allowed: ${API_KEY_SCOPES.join(", ")})`,
  })
  .openapi({ enum: [...API_KEY_SCOPES], example: "keys:read" });

const ApiKey = z
  .object({
    id: z.string().openapi({ example: "key_01jdz8m6v8x4h6q3b9k2n7c5rt" }),
    name: z.string(),
    prefix: z.string().openapi({ description: "The key's first 12 characters.", example: "tg_4fQx9LmZ2" }),
    scopes: z.array(z.string()),
    created_at: z.iso.datetime(),
    expires_at: z.iso.datetime().nullable(),
    last_used_at: z.iso
      .datetime()
      .nullable()
      .openapi({ description: "Recorded in batches: it may lag a few seconds behind the last use." }),
    revoked_at: z.iso.datetime().nullable().openapi({
      description: "When the key stops (or stopped) working; in the future during a rotation's grace period.",
    }),
    replaced_by: z
      .string()
      .nullable()
      .openapi({ description: "The key that replaced this one by rotation." }),
  })
  .openapi("ApiKey");

const IssuedApiKey = ApiKey.extend({
  key: z.string().openapi({ description: "The key itself. Shown this once; store it now." }),
}).openapi("IssuedApiKey");

const CreateRequest = z
  .strictObject({
    name: z.string().trim().min(1).max(200).openapi({ example: "Production backend" }),
    scopes: z.array(Scope).min(1).max(API_KEY_SCOPES.length),
    expires_at: z.iso
      .datetime({ offset: true })
      .nullable()
      .optional()
      .openapi({ description: "When the key stops working; must be in the future. Omit for no expiry." }),
  })
  .openapi("ApiKeyCreate");

const RotateRequest = z
  .strictObject({
    grace_period_seconds: z
      .number()
      .int()
      .min(0)
      .max(MAX_GRACE_SECONDS)
      .optional()
      .openapi({ description: "How long the old key keeps working. Default 0: it stops at once." }),
  })
  .openapi("ApiKeyRotate");

const Rotated = IssuedApiKey.extend({ replaced: ApiKey }).openapi("RotatedApiKey");

const VerifyRequest = z
  .strictObject({
    key: z
      .string()
      .max(KEY_LENGTH * 4)
      .openapi({ example: "tg_…" }),
    feature: z
      .string()
      .min(1)
      .max(128)
      .optional()
      .openapi({ description: "Also run a check of this feature for the key's org, in the same call." }),
    amount: Amount.optional(),
    features: z.array(FeatureItem).min(1).max(20).optional().openapi({
      description:
        "Also check several features for the key's org, all consumed or none (as `POST /v1/check` with `features`; an item with `consume: false` is only checked, and nothing is consumed unless it is allowed). Not with `feature`.",
    }),
    consume: z.boolean().optional().openapi({ description: "For the check; default true." }),
    idempotency_key: storableString(255).optional(),
  })
  .superRefine((body, ctx) => {
    if (body.features === undefined) return;
    if (body.feature !== undefined) {
      ctx.addIssue({
        code: "custom",
        path: ["features"],
        message: "cannot be combined with feature: give one feature, or several in features",
      });
    }
    if (body.amount !== undefined) {
      ctx.addIssue({
        code: "custom",
        path: ["amount"],
        message: "goes with feature; with features, give each its own amount",
      });
    }
  })
  .openapi("KeyVerifyRequest");

const VerifyResult = z
  .discriminatedUnion("valid", [
    z.object({
      valid: z.literal(true),
      org_id: z.string(),
      key_id: z.string(),
      scopes: z.array(z.string()),
      plan: z.string().openapi({ description: "The org's plan key." }),
      check: CheckResult.optional().openapi({ description: "When `feature` was given." }),
      checks: z
        .object({ allowed: z.boolean(), results: z.array(CheckResult) })
        .optional()
        .openapi({
          description:
            "When `features` was given: all allowed (and consumed) or none, each result in request order.",
        }),
    }),
    z.object({ valid: z.literal(false), reason: z.enum(["malformed", "unknown", "revoked", "expired"]) }),
  ])
  .openapi("KeyVerification");

const OrgParam = z
  .string()
  .openapi({ param: { name: "org", in: "path" }, example: "org_01jdz8m6v8x4h6q3b9k2n7c5rt" });
const KeyParam = z
  .string()
  .openapi({ param: { name: "id", in: "path" }, example: "key_01jdz8m6v8x4h6q3b9k2n7c5rt" });

const orgSecurity: Record<string, string[]>[] = [{ operator: [] }, { bearer: [] }];
const operatorSecurity: Record<string, string[]>[] = [{ operator: [] }];

/** Credentials before validation, as for every secured route. */
const iso = (date: Date | null) => date?.toISOString() ?? null;

function view(row: ApiKeyRow): z.infer<typeof ApiKey> {
  return {
    id: row.id,
    name: row.name,
    prefix: row.prefix,
    scopes: row.scopes,
    created_at: row.createdAt.toISOString(),
    expires_at: iso(row.expiresAt),
    last_used_at: iso(row.lastUsedAt),
    revoked_at: iso(row.revokedAt),
    replaced_by: row.replacedBy,
  };
}

/** An org's API keys, and `/v1/keys/verify` for the operator. */
export function apiKeyRoutes() {
  const router = createApiRouter();
  const tags = ["API keys"];

  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/orgs/{org}/api-keys",
      tags,
      summary: "List the org's API keys (never the keys themselves)",
      security: orgSecurity,
      middleware: orgAccess("keys:read"),
      request: { params: z.object({ org: OrgParam }) },
      responses: {
        200: jsonResponse(z.object({ data: z.array(ApiKey) }).openapi("ApiKeyList"), "The org's keys"),
        ...errorResponses(401, 403, 404),
      },
    }),
    async (c) => {
      const rows = await listApiKeys(c.get("deps"), accessOf(c).orgId);
      return c.json({ data: rows.map(view) }, 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/orgs/{org}/api-keys",
      tags,
      summary: "Issue an API key (shown once)",
      security: orgSecurity,
      middleware: orgAccess("keys:manage"),
      request: { params: z.object({ org: OrgParam }), body: jsonBody(CreateRequest) },
      responses: {
        201: jsonResponse(IssuedApiKey, "The new key; `key` is never shown again"),
        ...errorResponses(400, 401, 403, 404),
      },
    }),
    async (c) => {
      const body = c.req.valid("json");
      const issued = await createApiKey(c.get("deps"), accessOf(c), {
        name: body.name,
        scopes: body.scopes,
        expiresAt: body.expires_at ? new Date(body.expires_at) : null,
      });
      return c.json({ ...view(issued.row), key: issued.key }, 201);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/orgs/{org}/api-keys/{id}/rotate",
      tags,
      summary: "Replace a key; the old one works on for an optional grace period",
      security: orgSecurity,
      middleware: orgAccess("keys:manage"),
      request: {
        params: z.object({ org: OrgParam, id: KeyParam }),
        body: { required: false, content: { "application/json": { schema: RotateRequest } } },
      },
      responses: {
        201: jsonResponse(Rotated, "The new key (shown once) and the old key's state"),
        ...errorResponses(400, 401, 403, 404, 409),
      },
    }),
    async (c) => {
      const { id } = c.req.valid("param");
      const grace = c.req.valid("json").grace_period_seconds ?? 0;
      const { issued, old } = await rotateApiKey(c.get("deps"), accessOf(c), id, grace);
      return c.json({ ...view(issued.row), key: issued.key, replaced: view(old) }, 201);
    },
  );

  router.openapi(
    createRoute({
      method: "delete",
      path: "/v1/orgs/{org}/api-keys/{id}",
      tags,
      summary: "Revoke a key now (every server honours it within 2 seconds)",
      security: orgSecurity,
      middleware: orgAccess("keys:manage"),
      request: { params: z.object({ org: OrgParam, id: KeyParam }) },
      responses: { 200: jsonResponse(ApiKey, "The revoked key"), ...errorResponses(401, 403, 404) },
    }),
    async (c) => {
      const { id } = c.req.valid("param");
      return c.json(view(await revokeApiKey(c.get("deps"), accessOf(c), id)), 200);
    },
  );

  router.openapi(
    createRoute({
      method: "post",
      path: "/v1/keys/verify",
      tags,
      summary: "Verify an org's API key (operator)",
      description:
        "Answers 200 whether or not the key is valid: an invalid key comes back as `valid: false` with the reason. With `feature` (or `features`), also runs that check for the key's org in the same round trip, exactly as `POST /v1/check` does, with the same `RateLimit` headers.",
      security: operatorSecurity,
      middleware: operatorOnly,
      request: { body: jsonBody(VerifyRequest) },
      responses: {
        200: jsonResponse(VerifyResult, "The verdict"),
        ...errorResponses(400, 401, 403, 409, 503),
      },
    }),
    async (c) => {
      const deps = c.get("deps");
      const body = c.req.valid("json");
      const result = await verifyApiKey(deps, body.key);
      if (!result.valid) return c.json({ valid: false as const, reason: result.reason }, 200);
      const org = await orgPlan(deps, result.orgId, deps.clock.nowMs());
      if (!org) return c.json({ valid: false as const, reason: "revoked" as const }, 200);
      let check: (FeatureResult & { allowed: boolean }) | undefined;
      let checks: { allowed: boolean; results: FeatureResult[] } | undefined;
      const items =
        body.features?.map((f) => ({ feature: f.feature, amount: f.amount ?? 1 })) ??
        (body.feature !== undefined ? [{ feature: body.feature, amount: body.amount ?? 1 }] : undefined);
      if (items) {
        const single = body.features === undefined;
        const consume = body.consume ?? true;
        const answer = await runRouteCheck(deps, {
          orgId: result.orgId,
          items,
          consume,
          idempotencyKey: body.idempotency_key,
          fieldOf: single ? singleField : manyField,
          itemConsume: body.features ? itemConsumeOf(body.features, consume) : undefined,
        });
        setRateHeaders(c, answer.rate);
        if (answer.replayed) c.header("idempotent-replayed", "true");
        if (single) check = { ...(answer.results[0] as FeatureResult), allowed: answer.allowed };
        else checks = { allowed: answer.allowed, results: answer.results };
      }
      return c.json(
        {
          valid: true as const,
          org_id: result.orgId,
          key_id: result.keyId,
          scopes: result.scopes,
          plan: org.planKey,
          ...(check ? { check } : {}),
          ...(checks ? { checks } : {}),
        },
        200,
      );
    },
  );
  return router;
}
