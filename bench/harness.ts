import { type ChildProcess, spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";
import autocannon from "autocannon";

/**
 * Benchmark harness: servers run in their own processes (so the load generator does not share their
 * event loop), are loaded one after another with identical autocannon settings, and are compared
 * as ratios measured in the same run. Loopback only; every run stops by itself.
 */
export const root = path.resolve(import.meta.dirname, "..");

export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export interface Server {
  url: string;
  stop(): Promise<void>;
  /** The server's process id (for CPU accounting). */
  pid?: number | undefined;
}

/** Spawns `node <args>` and waits until `healthPath` answers 200. */
export async function spawnServer(
  args: string[],
  env: Record<string, string>,
  port: number,
  healthPath = "/healthz",
): Promise<Server> {
  const child: ChildProcess = spawn(process.execPath, args, {
    cwd: root,
    env: { PATH: process.env.PATH ?? "", ...env, PORT: String(port) },
    stdio: ["ignore", "ignore", "inherit"],
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${args.join(" ")} exited with ${child.exitCode}`);
    try {
      if ((await fetch(url + healthPath)).ok) break;
    } catch {
      // not yet listening
    }
    if (Date.now() > deadline) throw new Error(`${args.join(" ")} did not become healthy`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return {
    url,
    pid: child.pid,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        // SIGTERM lets the server finish in-flight work (and write a --cpu-prof profile); a server
        // that does not exit within 20 s is killed, so a benchmark always ends.
        const kill = setTimeout(() => child.kill("SIGKILL"), 20_000);
        child.once("exit", () => {
          clearTimeout(kill);
          resolve();
        });
        child.kill("SIGTERM");
      }),
  };
}

/** The node:http baseline (bench/baseline-server.ts) answering `body` to every request. */
export async function spawnBaseline(body: string): Promise<Server> {
  return spawnServer(
    ["--import", "tsx", "bench/baseline-server.ts"],
    { BASELINE_BODY: body },
    await freePort(),
  );
}

export interface LoadResult {
  requestsPerSecond: number;
  /** autocannon's histogram: whole milliseconds (and corrected for coordinated omission under a rate). */
  p50: number;
  p99: number;
  errors: number;
  non2xx: number;
  /** Responses with a 2xx status over the whole run. */
  ok: number;
  /** Requests sent (including those still in flight when the run stopped). */
  sent: number;
  /** Every completed response's own latency (sub-millisecond precision, no correction). */
  latency: LatencyStats;
  /** The latencies themselves (ms), with `keepSamples`: to pool several runs. */
  samples?: number[];
}

export interface LatencyStats {
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

export interface LoadOptions {
  url: string;
  method?: "GET" | "POST";
  body?: string;
  headers?: Record<string, string>;
  connections?: number;
  durationSeconds?: number;
  /** Fixed request rate (for latency at a given load); unset = as fast as possible. */
  overallRate?: number;
  /**
   * With `overallRate`: split the load into this many autocannon instances started evenly across one
   * second. autocannon paces by sending each connection's share of a second back to back and then
   * pausing until the next second; one instance thus sends in full-speed bursts. Staggered slices
   * spread the same rate over the second. Default 1 (plain autocannon).
   */
  rateSlices?: number;
  /**
   * Requests to spread over the connections (bodies differ, e.g. one org each): each connection
   * cycles through its own share, so concurrent requests name different orgs.
   */
  requests?: { method?: "GET" | "POST"; path?: string; body?: string; headers?: Record<string, string> }[];
  /** Replaces `[<id>]` in the body with a unique id per request (e.g. event ids). */
  idReplacement?: boolean;
  timeoutSeconds?: number;
  /** Return every 2xx latency in `samples`. */
  keepSamples?: boolean;
}

/** Exact percentiles of a list of latencies (ms). */
export function latencyStats(values: number[]): LatencyStats {
  if (values.length === 0) return { mean: 0, p50: 0, p90: 0, p99: 0, p999: 0, max: 0 };
  const sorted = Float64Array.from(values).sort();
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] as number;
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    mean: sum / sorted.length,
    p50: at(0.5),
    p90: at(0.9),
    p99: at(0.99),
    p999: at(0.999),
    max: sorted[sorted.length - 1] as number,
  };
}

export async function load(options: LoadOptions): Promise<LoadResult> {
  const slices = options.overallRate ? Math.max(1, options.rateSlices ?? 1) : 1;
  const connections = options.connections ?? 50;
  const latencies: number[] = [];
  const runs: Promise<autocannon.Result>[] = [];
  for (let i = 0; i < slices; i++) {
    const share = (n: number) => Math.floor(n / slices) + (i < n % slices ? 1 : 0);
    const rate = options.overallRate ? share(options.overallRate) : undefined;
    const sliceConnections = Math.max(1, share(connections));
    if (i > 0) await new Promise((r) => setTimeout(r, 1000 / slices));
    runs.push(runOne(options, sliceConnections, rate, latencies));
  }
  const results = await Promise.all(runs);
  const sum = (f: (r: autocannon.Result) => number) => results.reduce((acc, r) => acc + f(r), 0);
  const max = (f: (r: autocannon.Result) => number) => Math.max(...results.map(f));
  return {
    requestsPerSecond: sum((r) => r.requests.average),
    p50: max((r) => r.latency.p50),
    p99: max((r) => r.latency.p99),
    errors: sum((r) => r.errors + r.timeouts),
    non2xx: sum((r) => r.non2xx),
    ok: sum((r) => r["2xx"]),
    sent: sum((r) => r.requests.sent),
    latency: latencyStats(latencies),
    ...(options.keepSamples ? { samples: latencies } : {}),
  };
}

function runOne(
  options: LoadOptions,
  connections: number,
  rate: number | undefined,
  latencies: number[],
): Promise<autocannon.Result> {
  const requests = options.requests;
  return new Promise((resolve, reject) => {
    let client = 0;
    const instance = autocannon(
      {
        url: options.url,
        method: options.method ?? "GET",
        body: options.body,
        headers: options.headers,
        connections,
        duration: options.durationSeconds ?? 10,
        ...(rate ? { overallRate: rate } : {}),
        ...(options.idReplacement ? { idReplacement: true } : {}),
        ...(options.timeoutSeconds ? { timeout: options.timeoutSeconds } : {}),
        ...(requests && requests.length > 0
          ? {
              // Each connection cycles through its own share of the requests. (autocannon builds every
              // request of a list for each connection, in the constructor, after the connection's first
              // request went out: a long list given to all would stall the start of the run.)
              requests: requests.slice(0, 1),
              setupClient: (c: autocannon.Client) => {
                const k = client++;
                const mine = requests.filter((_, i) => i % connections === k % connections);
                c.setRequests(
                  mine.length > 0 ? mine : [requests[k % requests.length] as (typeof requests)[0]],
                );
              },
            }
          : {}),
      },
      (error, result) => (error ? reject(error) : resolve(result)),
    );
    instance.on("response", (_client, status, _bytes, responseTime) => {
      if (status >= 200 && status < 300) latencies.push(responseTime);
    });
  });
}

export function row(name: string, r: LoadResult, baseline?: LoadResult): string {
  const ratio = baseline ? (r.requestsPerSecond / baseline.requestsPerSecond).toFixed(2) : "1.00";
  return `| ${name} | ${Math.round(r.requestsPerSecond)} | ${ratio}× | ${r.p50} | ${r.p99} | ${r.errors + r.non2xx} |`;
}

export const TABLE_HEADER =
  "| server | req/s | vs baseline | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|---:|";
