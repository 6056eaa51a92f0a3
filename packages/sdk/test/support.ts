import fs from "node:fs";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { expect } from "vitest";
import { createTestDatabase, hasRedis, requireRedisUrl } from "../../../test/support/storage.js";
import { deleteRedisKeys } from "../../../test/support/tollgate-process.js";
import type { FetchLike, Tollgate } from "../src/index.js";

/**
 * What the SDK's tests share: the storage modes a real Tollgate runs in, a fetch that records every
 * request the SDK makes, and a local webhook receiver.
 */

export const ADMIN_KEY = "sdk-test-operator-key-0123456789abcdef";
export const SECRET = "test-secret-0123456789abcdef0123456789";

export interface Storage {
  /** Environment for `tollgate start`: where its data lives. */
  env: Record<string, string>;
  /** Removes the data (and the Redis keys of these orgs). */
  cleanup(orgs: string[]): Promise<void>;
}

export interface StorageMode {
  name: string;
  redis: boolean;
  setup(): Promise<Storage>;
}

/** Embedded always; Postgres + Redis when DATABASE_URL and REDIS_URL are set (as CI does). */
export const storageModes: StorageMode[] = [
  {
    name: "embedded: PGlite, in-process counters",
    redis: false,
    setup: async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollgate-sdk-"));
      return {
        env: { TOLLGATE_DATA_DIR: dir },
        cleanup: async () => fs.rmSync(dir, { recursive: true, force: true }),
      };
    },
  },
  ...(process.env.DATABASE_URL && hasRedis
    ? [
        {
          name: "postgres + redis",
          redis: true,
          setup: async (): Promise<Storage> => {
            const db = await createTestDatabase("postgres");
            await db.handle.close();
            return {
              env: { DATABASE_URL: db.url as string, REDIS_URL: requireRedisUrl() },
              cleanup: async (orgs) => {
                // Real servers use the default prefix; only these orgs' keys are ours.
                for (const org of orgs) await deleteRedisKeys(`tg:*${org}*`);
                await db.drop();
              },
            };
          },
        },
      ]
    : []),
];

export interface RecordedCall {
  method: string;
  path: string;
  body: any;
}

/** A fetch that records each request (method, path, JSON body) before sending it. */
export function recordingFetch(): { fetch: FetchLike; calls: RecordedCall[] } {
  const calls: RecordedCall[] = [];
  const recording: FetchLike = async (input, init) => {
    const request = input instanceof Request ? input : undefined;
    const url = new URL(request ? request.url : String(input));
    const body = typeof init?.body === "string" ? JSON.parse(init.body) : undefined;
    calls.push({ method: init?.method ?? request?.method ?? "GET", path: url.pathname, body });
    return fetch(input, init);
  };
  return { fetch: recording, calls };
}

export interface Delivery {
  headers: IncomingHttpHeaders;
  body: string;
}

/** An HTTP server that records what it receives and answers 200 (a webhook endpoint). */
export async function startReceiver(): Promise<{
  url: string;
  port: number;
  deliveries: Delivery[];
  close(): Promise<void>;
}> {
  const deliveries: Delivery[] = [];
  const server: Server = createServer((req, res) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (chunk: string) => {
      body += chunk;
    });
    req.on("end", () => {
      deliveries.push({ headers: req.headers, body });
      res.writeHead(200).end("ok");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/hooks/tollgate`,
    port,
    deliveries,
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Tollgate's answer to a check of the boolean feature `reports`, allowed. */
export const REPORTS_ALLOWED = {
  allowed: true,
  feature: "reports",
  type: "boolean",
  limit: null,
  used: null,
  remaining: null,
  resets_at: null,
};

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls until `check` holds; throws after `timeoutMs`. */
export async function until(check: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await sleep(20);
  }
}

/**
 * The operator's side of a test against a real Tollgate: a new org (kept in `orgs`, for the storage's
 * clean-up), an org put on a plan without payment, and what Tollgate says was used of a meter.
 * `admin` is read on each call: suites create their operator client in `beforeAll`.
 */
export function operatorHelpers(admin: () => Tollgate, orgs: string[]) {
  const setPlan = async (org: string, plan: string) => {
    const { response, error } = await admin().api.POST("/v1/orgs/{org}/subscription", {
      params: { path: { org } },
      body: { plan, interval: "month", skip_payment: true },
    });
    expect(response.status, JSON.stringify(error)).toBe(200);
  };
  const newOrg = async (plan?: string): Promise<string> => {
    const { data, error } = await admin().api.POST("/v1/orgs", { body: { name: "Acme" } });
    expect(error).toBeUndefined();
    const org = data?.id as string;
    orgs.push(org);
    if (plan) await setPlan(org, plan);
    return org;
  };
  /** What Tollgate itself says was used of a meter this period (its usage series, summed). */
  const usageOf = async (org: string, meter: string): Promise<number> => {
    const { data, error } = await admin().api.GET("/v1/orgs/{org}/usage", {
      params: { path: { org }, query: { meter, granularity: "month" } },
    });
    expect(error).toBeUndefined();
    return (data?.series ?? []).reduce((sum, point) => sum + Number(point.value), 0);
  };
  return { newOrg, setPlan, usageOf };
}
