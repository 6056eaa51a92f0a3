import type { Deps } from "../../deps.js";
import { sha256Hex } from "../../lib/crypto.js";
import { AppError } from "../../lib/errors.js";

/**
 * Attempt budgets: generous for people (an office behind one address included), tight for scripts.
 * GCRA, so they refill steadily.
 */
export const ATTEMPT_LIMITS = {
  login: { perAccount: 10, perIp: 100, periodMs: 15 * 60_000 },
  reset: { perAccount: 5, perIp: 20, periodMs: 60 * 60_000 },
  verify: { perAccount: 10, perIp: 50, periodMs: 60 * 60_000 },
  register: { perAccount: 5, perIp: 100, periodMs: 60 * 60_000 },
} as const;

export type AttemptKind = keyof typeof ATTEMPT_LIMITS;

/**
 * Counts one attempt against both the account and the client's address, all or nothing, and
 * answers 429 with Retry-After when either budget is spent. The account is hashed into the key, so
 * the counter store never holds e-mail addresses; the same answer whether or not the account exists.
 */
export async function guardAttempt(
  deps: Deps,
  kind: AttemptKind,
  account: string,
  ip: string,
): Promise<void> {
  const limits = ATTEMPT_LIMITS[kind];
  const result = await deps.counters.apply(
    [
      {
        kind: "rate",
        key: `abuse:${kind}:a:${sha256Hex(account.toLowerCase())}`,
        limit: limits.perAccount,
        periodMs: limits.periodMs,
        cost: 1,
      },
      {
        kind: "rate",
        key: `abuse:${kind}:ip:${ip}`,
        limit: limits.perIp,
        periodMs: limits.periodMs,
        cost: 1,
      },
    ],
    deps.clock.nowMs(),
  );
  if (result.status !== "done" || result.allowed) return;
  const retryAfterMs = Math.max(...result.outcomes.map((o) => (o.kind === "rate" ? o.retryAfterMs : 0)));
  const seconds = Math.max(1, Math.ceil(retryAfterMs / 1000));
  throw new AppError("rate_limited", `Too many attempts. Try again in ${seconds} seconds.`, {
    headers: { "retry-after": String(seconds) },
  });
}
