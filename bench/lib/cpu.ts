import fs from "node:fs";
import os from "node:os";

/**
 * CPU time by process group over an interval (Linux /proc): where a benchmark's cores went — the
 * server, Postgres backends, Redis, the load generator, everything else. Empty elsewhere.
 */
export type Classifier = (pid: number, cmdline: string) => string | undefined;

const ticksPerSecond = 100; // USER_HZ on Linux

/** CPU ticks and group of every process now. */
function snapshot(classify: Classifier): Map<number, { group: string; ticks: number }> {
  const processes = new Map<number, { group: string; ticks: number }>();
  let pids: string[];
  try {
    pids = fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p));
  } catch {
    return processes;
  }
  for (const pid of pids) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const ticks = Number(fields[11]) + Number(fields[12]); // utime + stime
      const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ");
      processes.set(Number(pid), { group: classify(Number(pid), cmdline) ?? "other processes", ticks });
    } catch {
      // the process ended
    }
  }
  return processes;
}

export interface CpuSample {
  stop(): Map<string, number>;
}

/**
 * Starts measuring; `stop()` returns cores used per group (1.0 = one core busy) over the interval.
 * Processes that exit during the interval are not counted.
 */
export function sampleCpu(classify: Classifier): CpuSample {
  const before = snapshot(classify);
  const started = performance.now();
  return {
    stop() {
      const after = snapshot(classify);
      const seconds = (performance.now() - started) / 1000;
      const ticks = new Map<string, number>();
      for (const [pid, now] of after) {
        const used = now.ticks - (before.get(pid)?.ticks ?? 0);
        if (used > 0) ticks.set(now.group, (ticks.get(now.group) ?? 0) + used);
      }
      const cores = new Map<string, number>();
      for (const [group, used] of ticks) {
        const share = used / ticksPerSecond / seconds;
        if (share > 0.005) cores.set(group, share);
      }
      return cores;
    },
  };
}

export function formatCpu(cores: Map<string, number>): string {
  const total = os.cpus().length;
  return [...cores]
    .sort((a, b) => b[1] - a[1])
    .map(([group, used]) => `${group} ${used.toFixed(2)}`)
    .join(", ")
    .concat(` (cores of ${total})`);
}

/** The usual groups: named server processes, this process (the load generator), Postgres, Redis. */
export function benchClassifier(servers: Record<string, number | undefined>, database: string): Classifier {
  const byPid = new Map<number, string>();
  for (const [name, pid] of Object.entries(servers)) if (pid !== undefined) byPid.set(pid, name);
  return (pid, cmdline) => {
    if (pid === process.pid) return "autocannon";
    const named = byPid.get(pid);
    if (named) return named;
    // TOLLGATE_WORKERS: the workers run the primary's command line.
    if (servers.tollgate !== undefined && cmdline.includes("bin/tollgate.js start")) return "tollgate";
    if (cmdline.startsWith("postgres:")) {
      if (cmdline.includes(database)) return "postgres";
      return /^postgres: \S+: [a-z ]+$/.test(cmdline.trim())
        ? "postgres (background)"
        : "postgres (other dbs)";
    }
    if (cmdline.startsWith("redis-server")) return "redis";
    return undefined;
  };
}
