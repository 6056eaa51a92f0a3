import { EventEmitter } from "node:events";
import type { Logger } from "../../lib/logger.js";
import type { PubSub } from "./types.js";

/**
 * The embedded pub/sub: one process, one EventEmitter. Delivery is asynchronous, as with Redis, so
 * code never comes to rely on a handler having run by the time `publish` returns.
 */
export function createMemoryPubSub(options: { logger?: Logger } = {}): PubSub {
  const emitter = new EventEmitter();
  emitter.setMaxListeners(0);

  return {
    kind: "memory",

    async publish(channel: string, message: string): Promise<void> {
      // Subscribers at publish time receive it (as in Redis); the emit happens on a later turn.
      const listeners = emitter.listeners(channel) as Array<(message: string) => void>;
      if (listeners.length === 0) return;
      setImmediate(() => {
        for (const listener of listeners) {
          // Skip handlers that unsubscribed in between.
          if (emitter.listeners(channel).includes(listener)) listener(message);
        }
      });
    },

    async subscribe(channel: string, handler: (message: string) => void): Promise<() => Promise<void>> {
      // A throwing handler must not take down the process or starve the other handlers.
      const listener = (message: string) => {
        try {
          handler(message);
        } catch (error) {
          options.logger?.error({ err: error, channel }, "pubsub handler failed");
        }
      };
      emitter.on(channel, listener);
      return async () => {
        emitter.off(channel, listener);
      };
    },

    async close(): Promise<void> {
      emitter.removeAllListeners();
    },
  };
}
