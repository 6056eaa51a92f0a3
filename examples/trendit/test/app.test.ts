import path from "node:path";
import { Tollgate } from "@tollgate/sdk";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  killAllTollgates,
  startTollgate,
  type TollgateProcess,
} from "../../../test/support/tollgate-process.js";
import { createApp } from "../src/app.js";
import { sentiment } from "../src/sentiment.js";

/**
 * Trendit's batch endpoint against a real Tollgate running the Trendit catalog: one unit of the
 * sentiment quota per text, checked for the whole batch before the work, counted after it.
 */

const ADMIN_KEY = "trendit-example-operator-key-0123";
const root = path.resolve(import.meta.dirname, "../../..");

describe("sentiment", () => {
  it("scores words, and turns them around after a negation", () => {
    expect(sentiment("I love this, great tool")).toEqual({ score: 1, label: "positive" });
    expect(sentiment("Terrible and slow")).toEqual({ score: -1, label: "negative" });
    expect(sentiment("not bad at all")).toEqual({ score: 1, label: "positive" });
    expect(sentiment("It is a tool")).toEqual({ score: 0, label: "neutral" });
  });
});

describe("Trendit's batch sentiment endpoint", () => {
  let tollgate: TollgateProcess;
  let client: Tollgate;
  let app: ReturnType<typeof createApp>;
  let key: string;
  let org: string;

  beforeAll(async () => {
    tollgate = await startTollgate({
      TOLLGATE_ADMIN_KEY: ADMIN_KEY,
      TOLLGATE_CATALOG: path.join(root, "catalogs/trendit.yaml"),
    });
    client = new Tollgate({ baseUrl: tollgate.url, apiKey: ADMIN_KEY, track: { flushIntervalMs: 50 } });
    app = createApp(client);
    org = (await tollgate.call("POST", "/v1/orgs", { auth: ADMIN_KEY, body: { name: "Reddit Watch" } })).body
      .id;
    const issued = await tollgate.call("POST", `/v1/orgs/${org}/api-keys`, {
      auth: ADMIN_KEY,
      body: { name: "backend", scopes: ["usage:read"] },
    });
    key = issued.body.key;
  }, 120_000);
  afterAll(async () => {
    await client?.shutdown();
    await killAllTollgates();
  });

  const analyse = (texts: unknown, auth = key) =>
    app.request("/v1/sentiment", {
      method: "POST",
      headers: { authorization: `Bearer ${auth}`, "content-type": "application/json" },
      body: JSON.stringify({ texts }),
    });
  const used = async () => {
    await client.flush();
    const res = await tollgate.call("GET", `/v1/orgs/${org}/entitlements`, { auth: ADMIN_KEY });
    const of = (feature: string) =>
      (res.body.features as { feature: string; used: number }[]).find((e) => e.feature === feature)?.used;
    return { calls: of("api_calls"), texts: of("sentiment_analyses") };
  };

  it("charges one unit per text, and one API call per request", async () => {
    const res = await analyse(["I love it", "This is awful", "Meh"]);
    expect(res.status).toBe(200);
    const body = (await res.json()) as { data: { label: string }[] };
    expect(body.data.map((d) => d.label)).toEqual(["positive", "negative", "neutral"]);
    expect(await used()).toEqual({ calls: 1, texts: 3 });
  });

  it("refuses a batch bigger than what is left, whole, and charges nothing", async () => {
    // 47 of the free plan's 50 are left.
    const res = await analyse(Array.from({ length: 48 }, (_, i) => `text ${i}`));
    expect(res.status).toBe(429);
    const problem = (await res.json()) as { code: string; upgrade_url?: string };
    expect(problem.code).toBe("quota_exceeded");
    expect(problem.upgrade_url).toContain("plan=pro");
    expect(await used()).toEqual({ calls: 1, texts: 3 });
    // The rest fits exactly.
    expect((await analyse(Array.from({ length: 47 }, (_, i) => `text ${i}`))).status).toBe(200);
    expect(await used()).toEqual({ calls: 2, texts: 50 });
  });

  it("charges nothing for a bad batch or a bad key", async () => {
    expect((await analyse([])).status).toBe(400);
    expect((await analyse("not a list")).status).toBe(400);
    expect((await analyse(["fine"], "tg_not_a_real_key")).status).toBe(401);
    expect(await used()).toEqual({ calls: 2, texts: 50 });
  });
});
