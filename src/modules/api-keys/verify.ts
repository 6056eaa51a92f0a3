import { eq, inArray, sql } from "drizzle-orm";
import { apiKeys, orgs } from "../../db/schema.js";
import type { Deps } from "../../deps.js";
import { sha256Hex } from "../../lib/crypto.js";
import { AppError } from "../../lib/errors.js";
import { parseKey } from "./format.js";

/**
 * Verifying an API key: the hot path behind every `Bearer tg_…` request and `/v1/keys/verify`.
 *
 * - The format is checked first (prefix, length, alphabet, checksum): a mistyped or made-up key is
 *   "malformed" without touching cache or storage.
 * - Keys are looked up by SHA-256 and cached in process for 30 s. Expiry and revocation times are
 *   kept in the entry and compared with `deps.clock` on every call, so a key expires (or its rotation
 *   grace ends) on time whatever the cache holds.
 * - Revocations reach every process two ways. The revoking process evicts its own entry at once and
 *   publishes the key id on "api-keys.revoked"; every process evicts on the message (milliseconds with
 *   Redis). Pub/sub is at most once (and per process without Redis), so each process also re-reads
 *   `revoked_at` for all its cached keys in one query every second, and never answers from an entry
 *   confirmed more than 1.5 s ago: a lost message still takes effect within 1.5 s.
 * - Unknown hashes are remembered for 5 s, so a client retrying a bad key does not cost a query each
 *   time. Safe: a key's hash cannot be presented before the key exists.
 * - last_used_at is kept in memory and written every 5 s, one UPDATE for all keys used since.
 */

export type InvalidReason = "malformed" | "unknown" | "revoked" | "expired";
export type KeyVerification =
  | { valid: true; keyId: string; orgId: string; scopes: string[] }
  | { valid: false; reason: InvalidReason };

/** Carries a revoked key's id to every process. */
export const REVOCATION_CHANNEL = "api-keys.revoked";

const POSITIVE_TTL_MS = 30_000;
const NEGATIVE_TTL_MS = 5_000;
/** An entry whose revocation state was last confirmed longer ago than this is read again. */
const MAX_STALE_MS = 1_500;
const REVALIDATE_EVERY_MS = 1_000;
const FLUSH_EVERY_MS = 5_000;
/** Bounds memory against floods of distinct well-formed keys. */
const MAX_ENTRIES = 10_000;
const REVALIDATE_CHUNK = 1_000;

interface CachedKey {
  /** Returned as is on every valid call: no allocation on a cache hit. */
  result: { valid: true; keyId: string; orgId: string; scopes: string[] };
  expiresAtMs: number | null;
  /** When the key stops working by revocation, rotation grace or org deletion (app clock). */
  revokedAtMs: number | null;
  /** Real (monotonic) times, not the app clock: the test clock stands still. */
  fetchedAt: number;
  validatedAt: number;
}

interface KeyState {
  keys: Map<string, CachedKey>;
  unknown: Map<string, number>;
  inflight: Map<string, Promise<CachedKey | undefined>>;
  /** Bumped by every revocation message: a lookup that raced one does not cache what it read. */
  generation: number;
  subscription: Promise<(() => Promise<void>) | undefined> | undefined;
  revalidateTimer: NodeJS.Timeout | undefined;
  /** Last use per key id (app clock ms), waiting for the next flush. */
  usage: Map<string, number>;
  flushTimer: NodeJS.Timeout | undefined;
  flushing: Promise<void>;
  closed: boolean;
}

const states = new WeakMap<Deps, KeyState>();

const MALFORMED: KeyVerification = { valid: false, reason: "malformed" };
const UNKNOWN: KeyVerification = { valid: false, reason: "unknown" };
const REVOKED: KeyVerification = { valid: false, reason: "revoked" };
const EXPIRED: KeyVerification = { valid: false, reason: "expired" };

/**
 * Whether a presented key may be used now. Invalid keys are values, not exceptions; only an
 * unreachable database throws (503 unavailable). A rotated key whose grace period has ended is
 * "revoked": rotation revokes the old key, the grace period only postpones when.
 */
export async function verifyApiKey(deps: Deps, presented: string): Promise<KeyVerification> {
  if (!parseKey(presented).ok) return MALFORMED;
  const state = stateOf(deps);
  const hash = sha256Hex(presented);
  const now = performance.now();
  let entry = state.keys.get(hash);
  if (!entry || now - entry.fetchedAt >= POSITIVE_TTL_MS || now - entry.validatedAt >= MAX_STALE_MS) {
    const missedAt = state.unknown.get(hash);
    if (missedAt !== undefined && now - missedAt < NEGATIVE_TTL_MS) return UNKNOWN;
    let pending = state.inflight.get(hash);
    if (!pending) {
      // Concurrent requests with the same uncached key share one query.
      pending = lookup(deps, state, hash).finally(() => state.inflight.delete(hash));
      state.inflight.set(hash, pending);
    }
    entry = await pending;
    if (!entry) return UNKNOWN;
  }
  const nowMs = deps.clock.nowMs();
  if (entry.revokedAtMs !== null && nowMs >= entry.revokedAtMs) return REVOKED;
  if (entry.expiresAtMs !== null && nowMs >= entry.expiresAtMs) return EXPIRED;
  recordUse(state, deps, entry.result.keyId, nowMs);
  return entry.result;
}

/**
 * Evicts a key from this process's cache at once. The service calls it after revoking or rotating,
 * then publishes on {@link REVOCATION_CHANNEL} for the other processes.
 */
export function forgetKey(deps: Deps, keyId: string): void {
  const state = states.get(deps);
  if (state) evict(state, keyId);
}

/** Writes pending last-used times now: one UPDATE for every key used since the last flush. */
export function flushKeyUsage(deps: Deps): Promise<void> {
  const state = states.get(deps);
  if (!state) return Promise.resolve();
  if (state.flushTimer) clearTimeout(state.flushTimer);
  state.flushTimer = undefined;
  // Chained, so two flushes never write out of order.
  state.flushing = state.flushing.then(() => writeUsage(deps, state));
  return state.flushing;
}

/**
 * For closeDeps, before pub/sub and the database close: flushes last-used times, stops the timers
 * and ends the subscription. Verification still answers afterwards, from storage, caching nothing.
 */
export async function closeApiKeys(deps: Deps): Promise<void> {
  const state = states.get(deps);
  if (!state) return;
  state.closed = true;
  if (state.revalidateTimer) clearTimeout(state.revalidateTimer);
  state.revalidateTimer = undefined;
  state.keys.clear();
  state.unknown.clear();
  await flushKeyUsage(deps);
  const unsubscribe = await state.subscription;
  await unsubscribe?.().catch(() => {});
}

function stateOf(deps: Deps): KeyState {
  let state = states.get(deps);
  if (!state) {
    state = {
      keys: new Map(),
      unknown: new Map(),
      inflight: new Map(),
      generation: 0,
      subscription: undefined,
      revalidateTimer: undefined,
      usage: new Map(),
      flushTimer: undefined,
      flushing: Promise.resolve(),
      closed: false,
    };
    states.set(deps, state);
  }
  return state;
}

async function lookup(deps: Deps, state: KeyState, hash: string): Promise<CachedKey | undefined> {
  subscribe(deps, state);
  const generation = state.generation;
  const started = performance.now();
  let row:
    | {
        id: string;
        orgId: string;
        scopes: string[];
        expiresAt: Date | null;
        revokedAt: Date | null;
        orgDeletedAt: Date | null;
      }
    | undefined;
  try {
    [row] = await deps.database.db
      .select({
        id: apiKeys.id,
        orgId: apiKeys.orgId,
        scopes: apiKeys.scopes,
        expiresAt: apiKeys.expiresAt,
        revokedAt: apiKeys.revokedAt,
        orgDeletedAt: orgs.deletedAt,
      })
      .from(apiKeys)
      .innerJoin(orgs, eq(orgs.id, apiKeys.orgId))
      .where(eq(apiKeys.keyHash, hash))
      .limit(1);
  } catch (error) {
    deps.logger.warn({ err: (error as Error).message }, "API key lookup failed");
    throw new AppError("unavailable", "API keys cannot be verified right now; try again shortly.");
  }
  if (!row) {
    if (!state.closed) remember(state.unknown, hash, started);
    return undefined;
  }
  const entry: CachedKey = {
    result: {
      valid: true,
      keyId: row.id,
      orgId: row.orgId,
      scopes: Object.freeze([...row.scopes]) as string[],
    },
    expiresAtMs: row.expiresAt?.getTime() ?? null,
    revokedAtMs: earliest(row.revokedAt, row.orgDeletedAt),
    fetchedAt: started,
    validatedAt: started,
  };
  // A revocation message that arrived while we read may describe a newer state than the row.
  if (!state.closed && generation === state.generation) {
    remember(state.keys, hash, entry);
    scheduleRevalidation(deps, state);
  }
  return entry;
}

/** Subscribes once per deps, lazily; a failed attempt is retried by the next lookup. */
function subscribe(deps: Deps, state: KeyState): void {
  if (state.subscription || state.closed) return;
  state.subscription = deps.pubsub
    .subscribe(REVOCATION_CHANNEL, (keyId) => evict(state, keyId))
    .then(
      async (unsubscribe) => {
        // Closed while subscribing: end it at once.
        if (state.closed) await unsubscribe().catch(() => {});
        return unsubscribe;
      },
      (error: Error) => {
        deps.logger.warn({ err: error.message }, "API key revocation subscription failed; polling covers it");
        state.subscription = undefined;
        return undefined;
      },
    );
}

function evict(state: KeyState, keyId: string): void {
  state.generation++;
  for (const [hash, entry] of state.keys) {
    if (entry.result.keyId === keyId) state.keys.delete(hash);
  }
}

function scheduleRevalidation(deps: Deps, state: KeyState): void {
  if (state.revalidateTimer || state.closed) return;
  state.revalidateTimer = setTimeout(() => {
    revalidate(deps, state).finally(() => {
      state.revalidateTimer = undefined;
      // Stops by itself once nothing is cached (30 s after the last lookup).
      if (state.keys.size > 0) scheduleRevalidation(deps, state);
    });
  }, REVALIDATE_EVERY_MS);
  state.revalidateTimer.unref();
}

/**
 * Re-reads when each cached key stops working, in one query per 1000 keys. Revocation times only
 * ever move earlier (set once, or brought forward by a revoke during a rotation's grace period),
 * so keeping the earlier of the cached and the read value can never undo a newer revocation.
 */
async function revalidate(deps: Deps, state: KeyState): Promise<void> {
  const started = performance.now();
  for (const [hash, entry] of state.keys)
    if (started - entry.fetchedAt >= POSITIVE_TTL_MS) state.keys.delete(hash);
  for (const [hash, at] of state.unknown) if (started - at >= NEGATIVE_TTL_MS) state.unknown.delete(hash);
  if (state.keys.size === 0) return;
  const ids = [...new Set(Array.from(state.keys.values(), (entry) => entry.result.keyId))];
  const stopsAt = new Map<string, number | null>();
  try {
    for (let i = 0; i < ids.length; i += REVALIDATE_CHUNK) {
      const rows = await deps.database.db
        .select({ id: apiKeys.id, revokedAt: apiKeys.revokedAt, orgDeletedAt: orgs.deletedAt })
        .from(apiKeys)
        .innerJoin(orgs, eq(orgs.id, apiKeys.orgId))
        .where(inArray(apiKeys.id, ids.slice(i, i + REVALIDATE_CHUNK)));
      for (const row of rows) stopsAt.set(row.id, earliest(row.revokedAt, row.orgDeletedAt));
    }
  } catch (error) {
    // Entries go stale after MAX_STALE_MS and requests read storage themselves.
    deps.logger.debug({ err: (error as Error).message }, "API key revalidation failed");
    return;
  }
  const checked = new Set(ids);
  for (const [hash, entry] of state.keys) {
    const id = entry.result.keyId;
    if (!checked.has(id)) continue;
    const read = stopsAt.get(id);
    if (read === undefined) {
      state.keys.delete(hash);
      continue;
    }
    if (read !== null && (entry.revokedAtMs === null || read < entry.revokedAtMs)) entry.revokedAtMs = read;
    if (entry.validatedAt < started) entry.validatedAt = started;
  }
}

function recordUse(state: KeyState, deps: Deps, keyId: string, nowMs: number): void {
  if (state.closed) return;
  const previous = state.usage.get(keyId);
  if (previous === undefined || nowMs > previous) state.usage.set(keyId, nowMs);
  if (!state.flushTimer) {
    state.flushTimer = setTimeout(() => void flushKeyUsage(deps), FLUSH_EVERY_MS);
    state.flushTimer.unref();
  }
}

async function writeUsage(deps: Deps, state: KeyState): Promise<void> {
  if (state.usage.size === 0) return;
  const batch = state.usage;
  state.usage = new Map();
  const rows = Array.from(batch, ([id, ms]) => ({ id, at: new Date(ms).toISOString() }));
  try {
    // One statement for the whole batch; the guard keeps the latest time when processes race.
    await deps.database.query(sql`
      update api_keys set last_used_at = v.at
      from jsonb_to_recordset(${JSON.stringify(rows)}::jsonb) as v(id text, at timestamptz)
      where api_keys.id = v.id and (api_keys.last_used_at is null or api_keys.last_used_at < v.at)`);
  } catch (error) {
    deps.logger.warn(
      { err: (error as Error).message, keys: rows.length },
      "recording API key use failed; retrying",
    );
    for (const [id, ms] of batch) {
      const newer = state.usage.get(id);
      if (newer === undefined || newer < ms) state.usage.set(id, ms);
    }
    if (!state.closed && !state.flushTimer) {
      state.flushTimer = setTimeout(() => void flushKeyUsage(deps), FLUSH_EVERY_MS);
      state.flushTimer.unref();
    }
  }
}

function remember<V>(map: Map<string, V>, hash: string, value: V): void {
  map.delete(hash);
  if (map.size >= MAX_ENTRIES) {
    const oldest = map.keys().next();
    if (!oldest.done) map.delete(oldest.value);
  }
  map.set(hash, value);
}

function earliest(a: Date | null, b: Date | null): number | null {
  if (!a) return b?.getTime() ?? null;
  if (!b) return a.getTime();
  return Math.min(a.getTime(), b.getTime());
}
