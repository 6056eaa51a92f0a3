import { and, desc, eq } from "drizzle-orm";
import { apiKeys } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { sha256Hex } from "../../lib/crypto.js";
import { AppError } from "../../lib/errors.js";
import { newId } from "../../lib/ids.js";
import { recordAudit } from "../audit/service.js";
import type { OrgAccess } from "../orgs/access.js";
import { emitEvent } from "../webhooks/events.js";
import { generateKey } from "./format.js";
import { forgetKey, REVOCATION_CHANNEL } from "./verify.js";

/**
 * Issuing, listing, rotating and revoking an org's API keys. Every query is scoped by the orgId that
 * requireOrgAccess returned; a key id from another org is "not found", as if it did not exist.
 *
 * `revoked_at` is when a key stops working. Revoking sets it to now; rotating with a grace period
 * sets it to the end of the grace period. It only ever moves earlier, never back to null, which
 * verify.ts relies on when it merges what it cached with what it re-reads.
 */

export type ApiKeyRow = typeof apiKeys.$inferSelect;

/** A new key, shown once: only its hash is stored. */
export interface IssuedKey {
  row: ApiKeyRow;
  key: string;
}

export interface NewKeyInput {
  name: string;
  scopes: string[];
  expiresAt: Date | null;
}

/** The longest a rotated key may keep working: a week, as for payment providers' rolled keys. */
export const MAX_GRACE_SECONDS = 7 * 86_400;

export async function createApiKey(deps: Deps, access: OrgAccess, input: NewKeyInput): Promise<IssuedKey> {
  const now = deps.clock.now();
  if (input.expiresAt && input.expiresAt.getTime() <= now.getTime()) {
    throw new AppError("validation_failed", `expires_at must be later than now (${now.toISOString()}).`, {
      errors: [
        { field: "expires_at", message: "must be in the future", code: "too_small", location: "body" },
      ],
    });
  }
  const scopes = [...new Set(input.scopes)];
  return deps.database.db.transaction(async (tx) => {
    const issued = await insertKey(tx, access, { name: input.name, scopes, expiresAt: input.expiresAt });
    await recordAudit(tx, {
      orgId: access.orgId,
      actor: access.caller,
      action: "api_key.created",
      target: { type: "api_key", id: issued.row.id },
      metadata: { name: issued.row.name, scopes, prefix: issued.row.prefix },
    });
    await emitEvent(deps, tx, { orgId: access.orgId, type: "api_key.created", data: keyData(issued.row) });
    return issued;
  });
}

/** Every key of the org, newest first, revoked ones included (their revoked_at says so). */
export async function listApiKeys(deps: Deps, orgId: string): Promise<ApiKeyRow[]> {
  return deps.database.db.select().from(apiKeys).where(eq(apiKeys.orgId, orgId)).orderBy(desc(apiKeys.id));
}

/**
 * Issues a replacement with the same name, scopes and expiry, and revokes the old key at once or
 * when the grace period ends. A key already revoked, expired or rotated cannot be rotated (409):
 * rotating twice would leave two keys in their grace period.
 */
export async function rotateApiKey(
  deps: Deps,
  access: OrgAccess,
  keyId: string,
  graceSeconds: number,
): Promise<{ issued: IssuedKey; old: ApiKeyRow }> {
  const now = deps.clock.now();
  const result = await deps.database.db.transaction(async (tx) => {
    const current = await lockKey(tx, access.orgId, keyId);
    if (current.revokedAt && current.revokedAt <= now) throw conflict(keyId, "has been revoked");
    if (current.replacedBy) throw conflict(keyId, `was already rotated (replaced by ${current.replacedBy})`);
    if (current.expiresAt && current.expiresAt <= now) throw conflict(keyId, "has expired; create a new key");
    const issued = await insertKey(tx, access, {
      name: current.name,
      scopes: current.scopes,
      expiresAt: current.expiresAt,
    });
    const [old] = await tx
      .update(apiKeys)
      .set({ revokedAt: new Date(now.getTime() + graceSeconds * 1000), replacedBy: issued.row.id })
      .where(and(eq(apiKeys.id, keyId), eq(apiKeys.orgId, access.orgId)))
      .returning();
    if (!old) throw notFound(keyId);
    await recordAudit(tx, {
      orgId: access.orgId,
      actor: access.caller,
      action: "api_key.rotated",
      target: { type: "api_key", id: keyId },
      metadata: {
        name: current.name,
        scopes: current.scopes,
        replaced_by: issued.row.id,
        grace_period_seconds: graceSeconds,
      },
    });
    await emitEvent(deps, tx, {
      orgId: access.orgId,
      type: "api_key.rotated",
      data: { ...keyData(old), replaced_by: keyData(issued.row) },
    });
    return { issued, old };
  });
  await announceRevocation(deps, keyId);
  return result;
}

/** Revokes a key now. Revoking a revoked key changes nothing (and writes no audit entry). */
export async function revokeApiKey(deps: Deps, access: OrgAccess, keyId: string): Promise<ApiKeyRow> {
  const now = deps.clock.now();
  const { row, changed } = await deps.database.db.transaction(async (tx) => {
    const current = await lockKey(tx, access.orgId, keyId);
    if (current.revokedAt && current.revokedAt <= now) return { row: current, changed: false };
    const [revoked] = await tx
      .update(apiKeys)
      .set({ revokedAt: now })
      .where(and(eq(apiKeys.id, keyId), eq(apiKeys.orgId, access.orgId)))
      .returning();
    if (!revoked) throw notFound(keyId);
    await recordAudit(tx, {
      orgId: access.orgId,
      actor: access.caller,
      action: "api_key.revoked",
      target: { type: "api_key", id: keyId },
      metadata: { name: current.name, scopes: current.scopes },
    });
    await emitEvent(deps, tx, { orgId: access.orgId, type: "api_key.revoked", data: keyData(revoked) });
    return { row: revoked, changed: true };
  });
  if (changed) await announceRevocation(deps, keyId);
  return row;
}

/** A key as webhooks describe it: never the key itself, nor its hash. */
function keyData(row: ApiKeyRow) {
  return {
    id: row.id,
    org_id: row.orgId,
    name: row.name,
    prefix: row.prefix,
    scopes: row.scopes,
    created_at: row.createdAt.toISOString(),
    expires_at: row.expiresAt?.toISOString() ?? null,
    revoked_at: row.revokedAt?.toISOString() ?? null,
  };
}

type Tx = Parameters<Parameters<Deps["database"]["db"]["transaction"]>[0]>[0];

async function insertKey(
  tx: Tx,
  access: OrgAccess,
  input: { name: string; scopes: string[]; expiresAt: Date | null },
): Promise<IssuedKey> {
  const { key, prefix } = generateKey();
  const [row] = await tx
    .insert(apiKeys)
    .values({
      id: newId("key"),
      orgId: access.orgId,
      name: input.name,
      prefix,
      keyHash: sha256Hex(key),
      scopes: input.scopes,
      createdBy: access.caller.kind === "user" ? access.caller.userId : null,
      expiresAt: input.expiresAt,
    })
    .returning();
  if (!row) throw new Error("API key insert returned nothing");
  return { row, key };
}

async function lockKey(tx: Tx, orgId: string, keyId: string): Promise<ApiKeyRow> {
  const [row] = await tx
    .select()
    .from(apiKeys)
    .where(and(eq(apiKeys.id, keyId), eq(apiKeys.orgId, orgId)))
    .for("update");
  if (!row) throw notFound(keyId);
  return row;
}

/**
 * After commit: this process forgets the key at once, the others on the message. A lost message is
 * healed by their periodic re-read (verify.ts), so a failed publish does not fail the request.
 */
async function announceRevocation(deps: Deps, keyId: string): Promise<void> {
  forgetKey(deps, keyId);
  await deps.pubsub.publish(REVOCATION_CHANNEL, keyId).catch((error: Error) => {
    deps.logger.warn(
      { err: error.message, key_id: keyId },
      "API key revocation broadcast failed; other processes notice within 1.5 s",
    );
  });
}

const notFound = (keyId: string) => new AppError("not_found", `No API key ${keyId}.`);
const conflict = (keyId: string, what: string) => new AppError("conflict", `API key ${keyId} ${what}.`);
