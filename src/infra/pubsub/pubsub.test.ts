import { afterAll, describe, expect, it } from "vitest";
import { hasRedis, requireRedisUrl, uniquePrefix } from "../../../test/support/storage.js";
import { createMemoryPubSub } from "./memory.js";
import { createRedisPubSub } from "./redis.js";
import type { PubSub } from "./types.js";

/**
 * Opens a pub/sub with its own prefix. Two memory instances are separate buses, two Redis instances
 * with different prefixes must behave the same way.
 */
const twins: Array<{ name: "memory" | "redis"; open: () => PubSub }> = [
  { name: "memory", open: () => createMemoryPubSub() },
  ...(hasRedis
    ? [
        {
          name: "redis" as const,
          open: () => createRedisPubSub(requireRedisUrl(), { prefix: uniquePrefix() }),
        },
      ]
    : []),
];

/** Collects messages; `until(n)` waits for the n-th one (or fails after a second). */
function inbox() {
  const messages: string[] = [];
  const waiters: Array<() => void> = [];
  return {
    messages,
    handler: (message: string) => {
      messages.push(message);
      for (const wake of waiters.splice(0)) wake();
    },
    async until(count: number): Promise<string[]> {
      const deadline = Date.now() + 1000;
      while (messages.length < count) {
        if (Date.now() > deadline) throw new Error(`expected ${count} messages, got ${messages.join(", ")}`);
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 50);
        });
      }
      return messages;
    },
  };
}

describe.each(twins)("$name pubsub", (twin) => {
  const opened: PubSub[] = [];
  const open = () => {
    const pubsub = twin.open();
    opened.push(pubsub);
    return pubsub;
  };
  afterAll(async () => {
    await Promise.all(opened.map((pubsub) => pubsub.close()));
  });

  it("delivers a message to every subscriber of its channel, and only to them", async () => {
    const pubsub = open();
    expect(pubsub.kind).toBe(twin.name);
    const [first, second, other] = [inbox(), inbox(), inbox()];
    await pubsub.subscribe("keys.revoked", first.handler);
    await pubsub.subscribe("keys.revoked", second.handler);
    await pubsub.subscribe("catalog.reloaded", other.handler);
    await pubsub.publish("keys.revoked", "key_1");
    await pubsub.publish("catalog.reloaded", "v2");
    // Messages arrive in publish order, so once "v2" is in, "key_1" was never coming to `other`.
    expect(await other.until(1)).toEqual(["v2"]);
    expect(await first.until(1)).toEqual(["key_1"]);
    expect(await second.until(1)).toEqual(["key_1"]);
  });

  it("stops delivering after unsubscribe, without affecting other subscribers", async () => {
    const pubsub = open();
    const [leaving, staying, marker] = [inbox(), inbox(), inbox()];
    const unsubscribe = await pubsub.subscribe("clock.moved", leaving.handler);
    await pubsub.subscribe("clock.moved", staying.handler);
    await pubsub.subscribe("marker", marker.handler);
    await pubsub.publish("clock.moved", "1");
    await leaving.until(1);
    await unsubscribe();
    await unsubscribe();
    await pubsub.publish("clock.moved", "2");
    await pubsub.publish("marker", "done");
    await marker.until(1);
    expect(await staying.until(2)).toEqual(["1", "2"]);
    expect(leaving.messages).toEqual(["1"]);
  });

  it("ends the channel subscription when its last subscriber leaves", async () => {
    const pubsub = open();
    const [gone, marker] = [inbox(), inbox()];
    await (await pubsub.subscribe("lonely", gone.handler))();
    await pubsub.subscribe("marker", marker.handler);
    await pubsub.publish("lonely", "lost");
    await pubsub.publish("marker", "done");
    await marker.until(1);
    expect(gone.messages).toEqual([]);
    // And the channel can be subscribed to again.
    await pubsub.subscribe("lonely", gone.handler);
    await pubsub.publish("lonely", "found");
    expect(await gone.until(1)).toEqual(["found"]);
  });

  it("keeps instances with different prefixes apart", async () => {
    const [a, b] = [open(), open()];
    const [toA, toB] = [inbox(), inbox()];
    await a.subscribe("shared", toA.handler);
    await b.subscribe("shared", toB.handler);
    await a.publish("shared", "for a");
    await b.publish("shared", "for b");
    // "for a" was published first: had it reached b, it would be there before "for b".
    expect(await toB.until(1)).toEqual(["for b"]);
    expect(await toA.until(1)).toEqual(["for a"]);
  });

  it("keeps delivering to other handlers when one throws", async () => {
    const pubsub = open();
    const survivor = inbox();
    await pubsub.subscribe("fragile", () => {
      throw new Error("handler bug");
    });
    await pubsub.subscribe("fragile", survivor.handler);
    await pubsub.publish("fragile", "still here");
    expect(await survivor.until(1)).toEqual(["still here"]);
  });
});
