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
    stop: () =>
      new Promise((resolve) => {
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  };
}

export interface LoadResult {
  requestsPerSecond: number;
  p50: number;
  p99: number;
  errors: number;
  non2xx: number;
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
}

export async function load(options: LoadOptions): Promise<LoadResult> {
  const result = await autocannon({
    url: options.url,
    method: options.method ?? "GET",
    body: options.body,
    headers: options.headers,
    connections: options.connections ?? 50,
    duration: options.durationSeconds ?? 10,
    ...(options.overallRate ? { overallRate: options.overallRate } : {}),
  });
  return {
    requestsPerSecond: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    errors: result.errors + result.timeouts,
    non2xx: result.non2xx,
  };
}

export function row(name: string, r: LoadResult, baseline?: LoadResult): string {
  const ratio = baseline ? (r.requestsPerSecond / baseline.requestsPerSecond).toFixed(2) : "1.00";
  return `| ${name} | ${Math.round(r.requestsPerSecond)} | ${ratio}× | ${r.p50} | ${r.p99} | ${r.errors + r.non2xx} |`;
}

export const TABLE_HEADER =
  "| server | req/s | vs baseline | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|---:|";
