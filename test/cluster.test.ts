import { execFileSync } from "node:child_process";
import http from "node:http";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/storage.js";
import {
  deleteRedisKeys,
  killAllTollgates,
  runCli,
  startTollgate,
  type TollgateProcess,
  writeCatalog,
} from "./support/tollgate-process.js";

/**
 * `TOLLGATE_WORKERS`: one `tollgate start` as a cluster primary and worker processes sharing the
 * port, Postgres and Redis. Real processes, real signals.
 */

const postgresUrl = process.env.DATABASE_URL;
const redisUrl = process.env.REDIS_URL;
const ADMIN_KEY = "cluster-test-operator-key-0123456789";

const catalog = writeCatalog(`
currency: USD
default_plan: metered
meters:
  - { key: calls, name: Calls, aggregation: count }
features:
  - { key: calls, type: metered, meter: calls }
plans:
  - key: metered
    name: Metered
    price: { month: "0" }
    entitlements:
      calls: { limit: 100 }
`);

/** Process ids of the Tollgate children of `pid` (the workers of a primary; not tsx's esbuild). */
function childrenOf(pid: number): number[] {
  try {
    return execFileSync("ps", ["-o", "pid=,args=", "--ppid", String(pid)])
      .toString()
      .split("\n")
      .filter((line) => line.includes("src/cli.ts"))
      .map((line) => Number.parseInt(line.trim(), 10))
      .filter((n) => n > 0);
  } catch {
    return []; // ps exits 1 when there are none
  }
}

/** GET over a connection of its own (no keep-alive pool). */
function freshGetStatus(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false, timeout: 5000 }, (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode ?? 0));
      })
      .on("timeout", () => reject(new Error(`no answer from ${url}`)))
      .on("error", reject);
  });
}

async function waitFor(what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The sum of a counter's samples in Prometheus text, for the lines matching `filter`. */
function sampleSum(metrics: string, name: string, filter: string): number {
  return metrics
    .split("\n")
    .filter((line) => line.startsWith(`${name}{`) && line.includes(filter))
    .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0);
}

describe.runIf(postgresUrl && redisUrl)("TOLLGATE_WORKERS=2 (postgres + redis)", () => {
  let db: TestDatabase;
  let server: TollgateProcess;
  const orgs: string[] = [];

  beforeAll(async () => {
    db = await createTestDatabase("postgres");
    server = await startTollgate({
      DATABASE_URL: db.url as string,
      REDIS_URL: redisUrl as string,
      TOLLGATE_ADMIN_KEY: ADMIN_KEY,
      TOLLGATE_SECRET: "cluster-test-secret-0123456789abcdef0123",
      TOLLGATE_CATALOG: catalog,
      TOLLGATE_WORKERS: "2",
    });
    await waitFor("both workers listen", () => server.stdout().includes("Tollgate is running"));
  }, 90_000);
  afterAll(async () => {
    await killAllTollgates();
    for (const pid of server ? childrenOf(server.child.pid as number) : []) process.kill(pid, "SIGKILL");
    await db?.drop();
    for (const org of orgs) await deleteRedisKeys(`tg:*${org}*`);
  });

  it("runs two workers behind one port and prints one banner", () => {
    expect(childrenOf(server.child.pid as number)).toHaveLength(2);
    const out = server.stdout();
    expect(out.match(/Tollgate is running at/g)).toHaveLength(1);
    expect(out).toContain("Workers           2 processes (TOLLGATE_WORKERS)");
  });

  it("keeps quotas exact across the workers: 300 concurrent consumes against 100 allow exactly 100", async () => {
    const created = await server.call("POST", "/v1/orgs", { auth: ADMIN_KEY, body: { name: "Acme" } });
    expect(created.status, created.text).toBe(201);
    const org = created.body.id as string;
    orgs.push(org);
    // Separate connections, so the primary spreads them over both workers.
    const answers = await Promise.all(
      Array.from({ length: 300 }, () =>
        server.call("POST", "/v1/check", { auth: ADMIN_KEY, body: { org_id: org, feature: "calls" } }),
      ),
    );
    expect(answers.every((a) => a.status === 200)).toBe(true);
    expect(answers.filter((a) => a.body.allowed)).toHaveLength(100);
    const entitlements = await server.call("GET", `/v1/orgs/${org}/entitlements`, { auth: ADMIN_KEY });
    const calls = entitlements.body.features.find((f: { feature: string }) => f.feature === "calls");
    expect(calls.used).toBe(100);
  });

  it("serves /metrics as every worker's metrics summed", async () => {
    const before = await server.call("GET", "/metrics");
    const counted = (text: string) => sampleSum(text, "tollgate_http_requests_total", 'route="/healthz"');
    const start = counted(before.text);
    await Promise.all(Array.from({ length: 40 }, () => server.call("GET", "/healthz")));
    const after = await server.call("GET", "/metrics");
    expect(after.status).toBe(200);
    expect(after.headers.get("content-type")).toContain("text/plain");
    expect(counted(after.text) - start).toBe(40);
    // One series per label set, not one per worker.
    const lines = after.text.split("\n").filter((l) => l.startsWith("tollgate_http_requests_total{"));
    expect(new Set(lines.map((l) => l.slice(0, l.lastIndexOf(" ")))).size).toBe(lines.length);
  });

  it("replaces a worker that dies, and keeps answering meanwhile", async () => {
    const primary = server.child.pid as number;
    const [victim, survivor] = childrenOf(primary);
    process.kill(victim as number, "SIGKILL");
    // Logged (as JSON lines on stdout) with the dead worker's pid, once the primary has noticed.
    const noticed = new RegExp(`"worker":${victim},.*"a worker stopped unexpectedly"`);
    await waitFor("the primary notices", () => noticed.test(server.stdout()));
    // On a new connection (a pooled one may belong to the dead worker, and resets): the survivor answers.
    expect(await freshGetStatus(`${server.url}/healthz`)).toBe(200);
    // While the replacement starts (forked after a second, listening a few later), a scrape does not
    // wait for it: the workers that are ready answer.
    await new Promise((r) => setTimeout(r, 1300));
    const started = Date.now();
    expect(await freshGetStatus(`${server.url}/metrics`)).toBe(200);
    expect(Date.now() - started).toBeLessThan(3000);
    await waitFor("a replacement worker runs", () => {
      const now = childrenOf(primary);
      return now.length === 2 && !now.includes(victim as number) && now.includes(survivor as number);
    });
    const replacement = childrenOf(primary).find((pid) => pid !== survivor);
    await waitFor("the replacement listens", () =>
      new RegExp(`"worker":${replacement},.*"a replacement worker is ready"`).test(server.stdout()),
    );
  }, 40_000);

  it("drains every worker once when the signal reaches them all (a terminal's Ctrl-C), and exits 0", async () => {
    const primary = server.child.pid as number;
    const workers = childrenOf(primary);
    expect(workers).toHaveLength(2);
    // Ctrl-C signals the whole process group: the workers, then the primary, which forwards it again.
    for (const pid of workers) process.kill(pid, "SIGINT");
    server.child.kill("SIGTERM");
    // Exit 0 only if every worker drained and exited 0 (none was killed by the second signal).
    expect(await server.exited).toBe(0);
    for (const pid of workers) expect(() => process.kill(pid, 0)).toThrow();
  }, 40_000);
});

describe.runIf(postgresUrl && redisUrl)("TOLLGATE_WORKERS that cannot start", () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase("postgres");
  });
  afterAll(async () => {
    await killAllTollgates();
    await db?.drop();
  });

  it("exits 1, and leaves no worker behind, when the workers cannot listen", async () => {
    const taken = net.createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    const port = (taken.address() as net.AddressInfo).port;
    try {
      const cli = runCli(["start"], {
        DATABASE_URL: db.url as string,
        REDIS_URL: redisUrl as string,
        TOLLGATE_ADMIN_KEY: ADMIN_KEY,
        TOLLGATE_CATALOG: catalog,
        TOLLGATE_WORKERS: "2",
        PORT: String(port),
      });
      expect(await cli.exited).toBe(1);
      expect(cli.stderr()).toContain(`Port ${port} on 127.0.0.1 is already in use`);
      expect(childrenOf(cli.child.pid as number)).toEqual([]);
    } finally {
      taken.close();
    }
  }, 60_000);
});
