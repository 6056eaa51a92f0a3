import { Tollgate } from "../packages/sdk/src/index.js";

/**
 * `@tollgate/sdk`'s cached entitlement reads, in process: `checkCached()` (a Map lookup, the goal is
 * well under a microsecond) and `check()` answered from the cache (the same lookup behind a promise).
 *
 * No server: a stand-in fetch answers the two requests that fill the cache (the org's entitlements
 * and the dry-run check), shaped as Tollgate answers them. Each case runs a warm-up, then
 * BENCH_ITERATIONS calls (default 20 million; a tenth of that for the async path) timed with
 * process.hrtime, BENCH_ROUNDS times; the median is printed. Never a timed assertion in the tests.
 *
 * Run: npx tsx bench/sdk-cache.ts   (BENCH_ITERATIONS, BENCH_ROUNDS)
 */

const iterations = Number(process.env.BENCH_ITERATIONS ?? 20_000_000);
const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
const ORGS = 1000;

const booleans = ["premium_templates", "remove_ads", "analytics", "api_access", "white_label"];
const result = (feature: string, type: "boolean" | "limit", allowed: boolean) => ({
  allowed,
  feature,
  type,
  limit: type === "limit" ? 5 : null,
  used: type === "limit" ? 2 : null,
  remaining: type === "limit" ? 3 : null,
  resets_at: null,
  ...(allowed
    ? {}
    : { reason: "feature_not_in_plan", upgrade_url: "https://example.com/billing", upgrade_plan: "pro" }),
});

const standIn = async (input: Request | string | URL, init?: RequestInit): Promise<Response> => {
  const url = new URL(input instanceof Request ? input.url : String(input));
  const body = typeof init?.body === "string" ? JSON.parse(init.body) : undefined;
  const json = (value: unknown) =>
    new Response(JSON.stringify(value), { status: 200, headers: { "content-type": "application/json" } });
  if (url.pathname.endsWith("/entitlements")) {
    return json({
      org_id: url.pathname.split("/")[3],
      plan: "free",
      features: [
        ...booleans.map((feature) => ({ feature, type: "boolean", limit: null })),
        { feature: "team_members", type: "limit", limit: 5 },
        { feature: "kolekts", type: "metered", limit: 10 },
      ],
    });
  }
  if (url.pathname === "/v1/check") {
    const features = (body.features as { feature: string }[]).map((f) => f.feature);
    return json({
      allowed: false,
      results: features.map((f) =>
        f === "team_members" ? result(f, "limit", true) : result(f, "boolean", f !== "premium_templates"),
      ),
    });
  }
  return new Response("{}", { status: 404 });
};

const tollgate = new Tollgate({ baseUrl: "http://tollgate.invalid", apiKey: "bench", fetch: standIn });
const orgs = Array.from({ length: ORGS }, (_, i) => `org_${String(i).padStart(26, "0")}`);
for (const org of orgs) await tollgate.preload(org);

/** Median nanoseconds per call of `fn` over `n` calls (after a warm-up of the same size / 10). */
function measure(n: number, fn: (i: number) => unknown): number {
  let sink = 0;
  for (let i = 0; i < Math.min(n / 10, 2_000_000); i++) if (fn(i)) sink++;
  const samples: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < n; i++) if (fn(i)) sink++;
    samples.push(Number(process.hrtime.bigint() - start) / n);
  }
  if (sink < 0) console.log(sink);
  return samples.sort((a, b) => a - b)[Math.floor(samples.length / 2)] as number;
}

async function measureAsync(n: number, fn: (i: number) => Promise<unknown>): Promise<number> {
  for (let i = 0; i < n / 10; i++) await fn(i);
  const samples: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < n; i++) await fn(i);
    samples.push(Number(process.hrtime.bigint() - start) / n);
  }
  return samples.sort((a, b) => a - b)[Math.floor(samples.length / 2)] as number;
}

const rows: [string, number][] = [
  [
    "checkCached, one org, boolean",
    measure(
      iterations,
      () => tollgate.checkCached(orgs[0] as string, "premium_templates")?.allowed === false,
    ),
  ],
  [
    "checkCached, 1000 orgs, 5 booleans",
    measure(
      iterations,
      (i) => tollgate.checkCached(orgs[i % ORGS] as string, booleans[i % 5] as string)?.allowed,
    ),
  ],
  [
    "checkCached, limit (seats)",
    measure(
      iterations,
      (i) => (tollgate.checkCached(orgs[i % ORGS] as string, "team_members")?.remaining ?? 0) > 0,
    ),
  ],
  [
    "checkCached, miss (metered: never cached)",
    measure(iterations, (i) => tollgate.checkCached(orgs[i % ORGS] as string, "kolekts") === undefined),
  ],
  [
    "await check(), boolean from the cache",
    await measureAsync(iterations / 10, (i) =>
      tollgate.check(orgs[i % ORGS] as string, booleans[i % 5] as string),
    ),
  ],
];

console.log(
  `@tollgate/sdk cache — Node ${process.version}, ${iterations.toLocaleString("en")} iterations × ${rounds} rounds (median)`,
);
for (const [name, ns] of rows) console.log(`  ${name.padEnd(44)} ${ns.toFixed(1).padStart(8)} ns/call`);
