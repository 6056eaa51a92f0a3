import { Redis, type RedisOptions } from "ioredis";
import type { Logger } from "../lib/logger.js";

/**
 * A Redis connection for the hot path: commands fail fast while Redis is unreachable (so each
 * feature's fail-open / fail-closed policy decides, instead of requests hanging), and the client
 * keeps reconnecting in the background so everything recovers without a restart.
 */
export function createRedis(
  url: string,
  options: { logger?: Logger; name?: string } & RedisOptions = {},
): Redis {
  const { logger, name = "tollgate", ...rest } = options;
  const redis = new Redis(url, {
    connectionName: name,
    lazyConnect: false,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: 1000,
    connectTimeout: 2000,
    retryStrategy: (attempt) => Math.min(attempt * 100, 2000),
    ...rest,
  });
  let down = false;
  redis.on("error", (error) => {
    if (!down) logger?.warn({ err: error.message, connection: name }, "redis unreachable; retrying");
    down = true;
  });
  redis.on("ready", () => {
    if (down) logger?.info({ connection: name }, "redis reachable again");
    down = false;
  });
  return redis;
}

/** Resolves once the connection is ready, or rejects after `timeoutMs`. */
export async function waitForRedis(redis: Redis, timeoutMs = 5000): Promise<void> {
  if (redis.status === "ready") return;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`Redis did not become ready within ${timeoutMs} ms`));
    }, timeoutMs);
    const onReady = () => {
      cleanup();
      resolve();
    };
    const cleanup = () => {
      clearTimeout(timer);
      redis.off("ready", onReady);
    };
    redis.on("ready", onReady);
  });
}
