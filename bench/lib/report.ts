import fs from "node:fs";
import os from "node:os";
import type { LoadResult } from "../harness.js";

/** Reading a benchmark's settings from the environment, with defaults. */
export function numberEnv(name: string, fallback: number, options: { zero?: boolean } = {}): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw.replace(/_/g, ""));
  if (!Number.isFinite(value) || value < 0 || (value === 0 && !options.zero)) {
    throw new Error(`${name} must be a positive number, not ${raw}`);
  }
  return value;
}

export function machine(): string {
  const cpus = os.cpus();
  return `${cpus.length} cores (${cpus[0]?.model.trim() ?? "?"}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.versions.node}`;
}

export const ms = (v: number) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
export const int = (v: number) => Math.round(v).toLocaleString("en-US");

export const LOAD_HEADER = loadHeader();

export function loadHeader(first = "server", ratio = "vs baseline"): string {
  return (
    `| ${first} | req/s | ${ratio} | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |\n` +
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  );
}

/** One row with exact latencies (every 2xx response timed by the load generator). */
export function loadRow(name: string, r: LoadResult, baseline?: LoadResult): string {
  const ratio = baseline ? `${(r.requestsPerSecond / baseline.requestsPerSecond).toFixed(2)}×` : "1.00×";
  const l = r.latency;
  return `| ${name} | ${int(r.requestsPerSecond)} | ${ratio} | ${ms(l.p50)} | ${ms(l.p90)} | ${ms(l.p99)} | ${ms(l.p999)} | ${ms(l.max)} | ${r.errors + r.non2xx} |`;
}

export function log(message: string) {
  console.error(`[${new Date().toISOString().slice(11, 19)}] ${message}`);
}

function cpuTimes(): { idle: number; total: number } {
  const line = fs.readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
  const values = line.trim().split(/\s+/).slice(1).map(Number);
  const idle = (values[3] ?? 0) + (values[4] ?? 0);
  return { idle, total: values.reduce((a, b) => a + b, 0) };
}

/** The share of the machine's CPU in use over `ms` (Linux; 0 elsewhere). */
export async function cpuBusy(ms = 2000): Promise<number> {
  if (!fs.existsSync("/proc/stat")) return 0;
  const a = cpuTimes();
  await new Promise((r) => setTimeout(r, ms));
  const b = cpuTimes();
  const total = b.total - a.total;
  return total > 0 ? 1 - (b.idle - a.idle) / total : 0;
}

/**
 * Benchmarks compare ratios, but other work on the machine (a test run) still skews them: waits up
 * to BENCH_QUIET_WAIT seconds (default 120) for the CPU to be mostly idle, and says how busy it was.
 */
export async function waitForQuiet(): Promise<string> {
  const maxWait = numberEnv("BENCH_QUIET_WAIT", 120, { zero: true }) * 1000;
  const started = Date.now();
  let busy = await cpuBusy();
  while (busy > 0.15 && Date.now() - started < maxWait) {
    log(`the machine is ${Math.round(busy * 100)}% busy with other work; waiting for it to settle`);
    busy = await cpuBusy(5000);
  }
  const note = `machine ${Math.round(busy * 100)}% busy before the run`;
  if (busy > 0.15) log(`WARNING: ${note}: numbers will be lower and noisier than on an idle machine`);
  return note;
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}
