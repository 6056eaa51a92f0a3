import type { Logger } from "../../lib/logger.js";
import { createRedis } from "../redis.js";
import type { PubSub } from "./types.js";

/**
 * The production pub/sub: Redis PUBLISH/SUBSCRIBE with channels under `prefix`. Publishing uses a
 * connection with a bounded wait; subscribing needs its own connection (a subscribed connection can do
 * nothing else), which queues commands while offline and resubscribes after a reconnect.
 * Delivery is at most once: a message published while the subscriber is disconnected is lost.
 */
export function createRedisPubSub(redisUrl: string, options: { prefix: string; logger?: Logger }): PubSub {
  const { prefix, logger } = options;
  // Queues while (re)connecting so a publish right after boot is not lost; the 1 s command timeout
  // still bounds how long a publish waits during an outage.
  const publisher = createRedis(redisUrl, { logger, name: "tollgate-publish", enableOfflineQueue: true });
  const subscriber = createRedis(redisUrl, {
    logger,
    name: "tollgate-subscribe",
    enableOfflineQueue: true,
    autoResubscribe: true,
  });
  /** Handlers by prefixed channel; a Redis subscription exists while a channel has any. */
  const handlers = new Map<string, Set<(message: string) => void>>();

  subscriber.on("message", (channel: string, message: string) => {
    const set = handlers.get(channel);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(message);
      } catch (error) {
        logger?.error({ err: error, channel: channel.slice(prefix.length) }, "pubsub handler failed");
      }
    }
  });

  return {
    kind: "redis",

    async publish(channel: string, message: string): Promise<void> {
      await publisher.publish(prefix + channel, message);
    },

    async subscribe(channel: string, handler: (message: string) => void): Promise<() => Promise<void>> {
      const full = prefix + channel;
      // Each handler gets its own identity, so subscribing one function twice needs two unsubscribes.
      const entry = (message: string) => handler(message);
      let set = handlers.get(full);
      if (!set) {
        set = new Set();
        handlers.set(full, set);
      }
      set.add(entry);
      // Sent in the same turn as the map change, so SUBSCRIBE/UNSUBSCRIBE reach Redis in map order.
      try {
        await subscriber.subscribe(full);
      } catch (error) {
        if (removeHandler(full, entry)) subscriber.unsubscribe(full).catch(() => {});
        throw error;
      }
      let active = true;
      return async () => {
        if (!active) return;
        active = false;
        if (removeHandler(full, entry)) await subscriber.unsubscribe(full);
      };
    },

    async close(): Promise<void> {
      handlers.clear();
      await Promise.all([publisher, subscriber].map((redis) => redis.quit().catch(() => redis.disconnect())));
    },
  };

  /** Removes a handler; true when it was the channel's last (so the Redis subscription can end). */
  function removeHandler(channel: string, entry: (message: string) => void): boolean {
    const set = handlers.get(channel);
    if (!set?.delete(entry) || set.size > 0) return false;
    handlers.delete(channel);
    return true;
  }
}
