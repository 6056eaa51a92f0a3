import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { Redis } from "ioredis";
import { requireRedisUrl } from "./storage.js";

/**
 * Real `tollgate start` processes for tests that need what an in-process app cannot show: a crash
 * (SIGKILL) in the middle of work, and a second process on the same data afterwards. Also the small
 * helpers the metering fault tests share: a catalog written to a temp file, and Redis key scans.
 */

const root = path.resolve(import.meta.dirname, "../..");
const running = new Set<ChildProcess>();

export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Writes a catalog to a temp file and returns its path (for TOLLGATE_CATALOG). */
export function writeCatalog(yaml: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollgate-catalog-"));
  const file = path.join(dir, "catalog.yaml");
  fs.writeFileSync(file, yaml);
  return file;
}

export interface HttpAnswer {
  status: number;
  headers: Headers;
  body: any;
  text: string;
}

export interface TollgateProcess extends CliProcess {
  url: string;
  port: number;
  /** A JSON request over real HTTP; `auth` is a bearer token. */
  call(
    method: string,
    path: string,
    options?: { body?: unknown; auth?: string; signal?: AbortSignal },
  ): Promise<HttpAnswer>;
  /** kill -9: no shutdown hooks, no flushing. */
  kill9(): Promise<void>;
}

/** A `tollgate <args>` child process and what it printed so far. */
export interface CliProcess {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  exited: Promise<number | null>;
}

/**
 * Runs `node --import tsx src/cli.ts <args>` with `env`, inheriting nothing from the test's
 * environment but PATH; killAllTollgates() ends whatever is still running.
 */
export function runCli(args: string[], env: Record<string, string>): CliProcess {
  const child = spawn(process.execPath, ["--import", "tsx", "src/cli.ts", ...args], {
    cwd: root,
    env: { PATH: process.env.PATH ?? "", HOME: os.tmpdir(), TOLLGATE_LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  let out = "";
  let err = "";
  child.stdout?.on("data", (d) => {
    out += d;
  });
  child.stderr?.on("data", (d) => {
    err += d;
  });
  const exited = new Promise<number | null>((resolve) =>
    child.on("exit", (code) => {
      running.delete(child);
      resolve(code);
    }),
  );
  return { child, stdout: () => out, stderr: () => err, exited };
}

/**
 * Starts `tollgate start` with `env` (PORT is chosen unless given) and resolves once /healthz
 * answers.
 */
export async function startTollgate(
  env: Record<string, string>,
  timeoutMs = 60_000,
): Promise<TollgateProcess> {
  const port = env.PORT ? Number(env.PORT) : await freePort();
  const { child, stdout, stderr, exited } = runCli(["start"], { ...env, PORT: String(port) });
  const url = `http://127.0.0.1:${port}`;
  const proc: TollgateProcess = {
    child,
    url,
    port,
    stdout,
    stderr,
    exited,
    call: async (method, p, { body, auth, signal } = {}) => {
      const headers: Record<string, string> = {};
      if (auth) headers.authorization = `Bearer ${auth}`;
      if (body !== undefined) headers["content-type"] = "application/json";
      const res = await fetch(`${url}${p}`, {
        method,
        headers,
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        ...(signal ? { signal } : {}),
      });
      const text = await res.text();
      let parsed: unknown;
      try {
        parsed = text ? JSON.parse(text) : undefined;
      } catch {
        parsed = undefined;
      }
      return { status: res.status, headers: res.headers, body: parsed, text };
    },
    kill9: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    },
  };

  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`tollgate exited early (${child.exitCode}): ${stderr()}`);
    try {
      const res = await fetch(`${url}/healthz`);
      if (res.ok) return proc;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await proc.kill9();
      throw new Error(`tollgate not healthy in time: ${stderr()}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** SIGKILLs every process started here that is still running (for afterAll). */
export async function killAllTollgates(): Promise<void> {
  await Promise.all(
    [...running].map(
      (child) =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          child.once("exit", () => resolve());
          child.kill("SIGKILL");
        }),
    ),
  );
}

/** Every key matching a glob (SCAN, never KEYS). */
export async function scanRedisKeys(pattern: string): Promise<string[]> {
  const redis = new Redis(requireRedisUrl());
  try {
    const found: string[] = [];
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 1000);
      found.push(...keys);
      cursor = next;
    } while (cursor !== "0");
    return found;
  } finally {
    redis.disconnect();
  }
}

/** One key's value, read directly from Redis. */
export async function readRedis(key: string): Promise<string | null> {
  const redis = new Redis(requireRedisUrl());
  try {
    return await redis.get(key);
  } finally {
    redis.disconnect();
  }
}

/** Deletes every key matching a glob; returns how many there were. */
export async function deleteRedisKeys(pattern: string): Promise<number> {
  const keys = await scanRedisKeys(pattern);
  if (keys.length === 0) return 0;
  const redis = new Redis(requireRedisUrl());
  try {
    for (let i = 0; i < keys.length; i += 500) await redis.del(...keys.slice(i, i + 500));
    return keys.length;
  } finally {
    redis.disconnect();
  }
}

/**
 * A loopback TCP proxy with the faults a network has, for one client: `stall()` holds what the
 * client sends (a command is neither answered nor failed until `restore()` delivers it, it times out,
 * or its process dies), `dropReplies()` forwards requests but discards the answers (the server acts;
 * the client never hears of it), `cut()` drops every connection and refuses new ones, `restore()`
 * heals everything.
 */
export class FaultProxy {
  private server: net.Server;
  private mode: "ok" | "stall" | "drop-replies" | "cut" = "ok";
  private sockets = new Set<net.Socket>();
  private held: { upstream: net.Socket; data: Buffer }[] = [];
  port = 0;

  constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {
    this.server = net.createServer((client) => {
      if (this.mode === "cut") {
        client.destroy();
        return;
      }
      const upstream = net.connect(this.targetPort, this.targetHost);
      for (const socket of [client, upstream]) {
        this.sockets.add(socket);
        socket.on("close", () => {
          this.sockets.delete(socket);
          client.destroy();
          upstream.destroy();
        });
        socket.on("error", () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.on("data", (data: Buffer) => {
        if (this.mode === "stall" || this.held.length > 0) this.held.push({ upstream, data });
        else upstream.write(data);
      });
      upstream.on("data", (data: Buffer) => {
        if (this.mode !== "drop-replies") client.write(data);
      });
    });
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }

  /** The URL with its host and port replaced by the proxy's. */
  url(target: string): string {
    const u = new URL(target);
    u.hostname = "127.0.0.1";
    u.port = String(this.port);
    return u.toString();
  }

  stall(): void {
    this.mode = "stall";
  }

  dropReplies(): void {
    this.mode = "drop-replies";
  }

  cut(): void {
    this.mode = "cut";
    this.held = [];
    for (const socket of this.sockets) socket.destroy();
  }

  /** Bytes the client sent while stalled, not delivered yet. */
  get heldBytes(): number {
    return this.held.reduce((n, h) => n + h.data.length, 0);
  }

  /** Heals every fault; what was held while stalled is delivered now, in order. */
  restore(): void {
    this.mode = "ok";
    const held = this.held;
    this.held = [];
    for (const { upstream, data } of held) if (!upstream.destroyed) upstream.write(data);
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** Resolves once `check` holds, polling; throws after `timeoutMs`. */
export async function eventually(check: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("condition not met in time");
}
