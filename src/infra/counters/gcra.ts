import type { IdempotencyClaim, JournalAppend, Op, Outcome } from "./types.js";

/**
 * Pure arithmetic shared by both counter-store twins. The Redis twin mirrors every function here in
 * Lua, operation for operation, so both give identical answers (IEEE doubles on both sides).
 *
 * GCRA (the redis-cell / "throttled" formulation), for `limit` requests per `periodMs`:
 *   T = periodMs / limit (emission interval), capacity = periodMs (burst tolerance + T).
 *   new_tat = max(tat, now) + T × cost; allowed iff new_tat − now <= periodMs.
 * T is usually fractional (60000 / 7), and summing fractional doubles drifts: seven requests of
 * 60000 / 7 ms can add up to 60000.0000001 and wrongly deny the seventh. So time is kept exact in
 * integers of 1/limit ms: the *backlog* b = (tat − now) × limit, an integer. Then T × cost becomes
 * periodMs × cost and the capacity periodMs × limit, with no rounding anywhere.
 */

/** The theoretical arrival time, exactly: `tatMs + frac / limit` ms (0 <= frac < limit). */
export interface GcraState {
  tatMs: number;
  frac: number;
  /** The limit `frac` is expressed in; a later call with another limit (plan change) converts. */
  limit: number;
}

/** How far the TAT is ahead of `nowMs`, in 1/limit ms (an integer); 0 for an idle limiter. */
export function gcraBacklog(state: GcraState | undefined, nowMs: number, limit: number): number {
  if (!state) return 0;
  // Rounded up so a limit change never grants more than the old state allowed (< 1 ms either way).
  const frac = state.limit === limit ? state.frac : Math.ceil((state.frac * limit) / state.limit);
  const backlog = (state.tatMs - nowMs) * limit + frac;
  return Math.max(backlog, 0);
}

export interface GcraDecision {
  allowed: boolean;
  /** The backlog if this request is applied (unchanged when denied). */
  next: number;
  /** 0 when allowed; otherwise ceil(allow_at − now) = ceil(new_tat − now − periodMs). */
  retryAfterMs: number;
}

/**
 * Decides one request. A cost above the limit can never fit; it is denied with the same formula,
 * which is then always > 0 (callers should treat cost > limit as a configuration error).
 */
export function gcraDecide(backlog: number, limit: number, periodMs: number, cost: number): GcraDecision {
  const capacity = periodMs * limit;
  const wanted = backlog + periodMs * cost;
  if (wanted <= capacity) return { allowed: true, next: wanted, retryAfterMs: 0 };
  return { allowed: false, next: backlog, retryAfterMs: Math.ceil((wanted - capacity) / limit) };
}

/** The state to store for a backlog at `nowMs`; undefined when idle (same as a fresh limiter). */
export function gcraState(backlog: number, nowMs: number, limit: number): GcraState | undefined {
  if (backlog <= 0) return undefined;
  const whole = Math.floor(backlog / limit);
  return { tatMs: nowMs + whole, frac: backlog - whole * limit, limit };
}

/**
 * What a caller sees for a backlog: `remaining` = floor((periodMs − (tat − now)) / T) clamped at 0,
 * `resetMs` = ceil(tat − now), the ms until fully replenished (and the rate state's TTL).
 */
export function gcraReport(
  backlog: number,
  limit: number,
  periodMs: number,
): { remaining: number; resetMs: number } {
  const remaining = Math.floor((periodMs * limit - backlog) / periodMs);
  return { remaining: Math.max(remaining, 0), resetMs: Math.ceil(backlog / limit) };
}

/**
 * One op as evaluated, before the all-or-nothing decision: `stored` is what the store held when the
 * call began (a counter value or a rate backlog), `next` what this op would leave (unchanged when
 * the op itself is denied).
 */
export interface Evaluation {
  allowed: boolean;
  stored: number;
  next: number;
  retryAfterMs: number;
}

/**
 * The outcome a caller sees. `overall` is whether every op was allowed: then values are reported
 * after the call, otherwise as stored (nothing was applied). A dry run reports exactly what the same
 * call would report for real, so it uses the same rule.
 */
export function toOutcome(op: Op, evaluation: Evaluation, overall: boolean): Outcome {
  const after = overall ? evaluation.next : evaluation.stored;
  if (op.kind === "counter")
    return {
      kind: "counter",
      allowed: evaluation.allowed,
      previous: evaluation.stored,
      value: after,
      limit: op.limit,
    };
  const { remaining, resetMs } = gcraReport(after, op.limit, op.periodMs);
  return {
    kind: "rate",
    allowed: evaluation.allowed,
    limit: op.limit,
    remaining,
    resetMs,
    resetBeforeMs: Math.ceil(evaluation.stored / op.limit),
    retryAfterMs: evaluation.retryAfterMs,
  };
}

/** A claim is told by its value (an empty one would be no claim to the Redis script). */
/** A journal entry's seq: a positive integer above the journal's last (as Redis's XADD requires). */
export function validateAppend(append: JournalAppend, lastSeq: number): void {
  if (!Number.isSafeInteger(append.seq) || append.seq <= 0)
    throw new RangeError(`a journal seq must be a positive integer, got ${append.seq}`);
  if (append.seq <= lastSeq)
    throw new RangeError(`journal seq ${append.seq} is not above the journal's last (${lastSeq})`);
}

export function validateClaim(claim: IdempotencyClaim | undefined): void {
  if (claim && claim.claim === "") throw new RangeError("an idempotency claim must not be empty");
}

/**
 * Input rules shared by both twins, checked before anything is evaluated: integers everywhere, and
 * rate parameters small enough that periodMs × (limit + cost) stays an exact double.
 */
export function validateOps(ops: Op[], nowMs: number): void {
  if (!Number.isSafeInteger(nowMs)) throw new RangeError(`nowMs must be an integer, got ${nowMs}`);
  ops.forEach((op, index) => {
    const where = `op ${index} (${op.kind} ${JSON.stringify(op.key)})`;
    if (typeof op.key !== "string" || op.key === "") throw new RangeError(`${where}: key must be non-empty`);
    if (op.kind === "counter") {
      if (!Number.isSafeInteger(op.amount)) throw new RangeError(`${where}: amount must be an integer`);
      if (op.limit !== null && !(Number.isSafeInteger(op.limit) && op.limit >= 0)) {
        throw new RangeError(`${where}: limit must be null or an integer >= 0`);
      }
      if (!(Number.isSafeInteger(op.ttlSeconds) && op.ttlSeconds >= 1)) {
        throw new RangeError(`${where}: ttlSeconds must be an integer >= 1`);
      }
    } else {
      if (!(Number.isSafeInteger(op.limit) && op.limit >= 1))
        throw new RangeError(`${where}: limit must be >= 1`);
      if (!(Number.isSafeInteger(op.periodMs) && op.periodMs >= 1)) {
        throw new RangeError(`${where}: periodMs must be an integer >= 1`);
      }
      if (!(Number.isSafeInteger(op.cost) && op.cost >= 0))
        throw new RangeError(`${where}: cost must be >= 0`);
      if (op.periodMs * (op.limit + op.cost) > Number.MAX_SAFE_INTEGER) {
        throw new RangeError(`${where}: periodMs × (limit + cost) exceeds the exact integer range`);
      }
    }
  });
}
