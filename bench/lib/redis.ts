import { Redis } from "ioredis";

/**
 * Redis for the benchmarks: REDIS_URL, or logical database 9 of the local server. Not database 0:
 * every Tollgate process drops the counters under its key prefix when it starts (src/deps.ts), so a
 * Tollgate started by someone's test on the same database and prefix would reset the benchmark's
 * counters mid-run (and the benchmark theirs). Only the benchmark's own keys are ever deleted.
 */
export const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379/9";

/** Tollgate's production key prefix (src/deps.ts). */
const PREFIX = "tg:";

/**
 * Deletes every Tollgate key that belongs to one of these orgs (counters, rate state, idempotency
 * claims): their keys are `tg:<kind>:<org id>:…`. Returns how many were deleted.
 */
export async function deleteOrgKeys(orgIds: Iterable<string>): Promise<number> {
  const ids = new Set(orgIds);
  if (ids.size === 0) return 0;
  const redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await redis.connect();
  let deleted = 0;
  try {
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${PREFIX}*`, "COUNT", 5000);
      cursor = next;
      const ours = keys.filter((key) => key.split(":").some((part) => ids.has(part)));
      if (ours.length > 0) deleted += await redis.del(...ours);
    } while (cursor !== "0");
  } finally {
    redis.disconnect();
  }
  return deleted;
}

/** Deletes every key under a prefix (a benchmark's own namespace). */
export async function deletePrefix(prefix: string): Promise<void> {
  const redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await redis.connect();
  try {
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
      if (keys.length > 0) await redis.del(...keys);
      cursor = next;
    } while (cursor !== "0");
  } finally {
    redis.disconnect();
  }
}

export async function redisVersion(): Promise<string> {
  const redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await redis.connect();
  try {
    const info = await redis.info("server");
    return /redis_version:(\S+)/.exec(info)?.[1] ?? "?";
  } finally {
    redis.disconnect();
  }
}
