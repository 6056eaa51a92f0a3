import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  freePort,
  killAllTollgates,
  startTollgate,
  type TollgateProcess,
} from "../../../test/support/tollgate-process.js";
import { Tollgate } from "../src/index.js";
import { ADMIN_KEY, SECRET, type Storage, sleep, storageModes } from "./support.js";

/**
 * As a new user: `npm pack` the SDK (its prepack builds dist/), install the tarball into a fresh
 * project in a temporary directory outside the repository, write the README's quick starts there
 * exactly as the README has them (extracted from it, so the two cannot differ), run each with
 * `node` against a real Tollgate child process, and see the route metered and limited: on the free
 * plan the 11th request within a minute is a 429, and the 10 that passed arrive as usage once the
 * process is stopped (its SIGTERM handler calls `shutdown()`).
 *
 * Installing needs the package registry (`--prefer-offline` uses the local cache first). Without it
 * the test is skipped with a message, except under CI=true, where it must run.
 */

const SDK_DIR = path.resolve(import.meta.dirname, "..");
const README = fs.readFileSync(path.join(SDK_DIR, "README.md"), "utf8");
const FRAMEWORKS = ["Hono", "Express", "Fastify"] as const;
const NETWORK_ERROR = /ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|network|offline/i;

/** The first ```js block of the README's `### <framework>` section. */
function quickStart(framework: string): string {
  const section = README.split(/^### /m).find((s) => s.startsWith(`${framework}\n`));
  const code = section && /```js\n([\s\S]*?)```/.exec(section)?.[1];
  if (!code) throw new Error(`README.md has no js quick start under "### ${framework}"`);
  return code;
}

/** Runs a command to completion; the environment is this one without npm's own variables. */
function run(cmd: string, args: string[], cwd: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const env: NodeJS.ProcessEnv = {};
    // A parent `npm run`/`npm test` passes npm_config_* (the repository's prefix among them): a child
    // npm must see the fresh project only.
    for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k)) env[k] = v;
    const child = spawn(cmd, args, { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (d) => {
      output += d;
    });
    child.stderr.on("data", (d) => {
      output += d;
    });
    child.on("error", reject);
    child.on("exit", (code) => resolve({ code, output }));
  });
}

let projectDir = "";
let packDir = "";
/** Why the quick starts cannot run here (no registry), when they cannot. */
let unavailable: string | undefined;

beforeAll(async () => {
  packDir = fs.mkdtempSync(path.join(os.tmpdir(), "tollgate-sdk-pack-"));
  projectDir = fs.mkdtempSync(path.join(os.tmpdir(), "tollgate-new-user-"));
  expect(path.relative(path.resolve(SDK_DIR, "../.."), projectDir).startsWith("..")).toBe(true);

  const packed = await run("npm", ["pack", "--json", "--pack-destination", packDir], SDK_DIR);
  expect(packed.code, packed.output).toBe(0);
  const [info] = JSON.parse(packed.output.slice(packed.output.indexOf("["))) as {
    filename: string;
    files: { path: string }[];
  }[];
  const files = (info?.files ?? []).map((f) => f.path);
  for (const entry of ["index", "gate", "hono", "express", "fastify"]) {
    expect(files).toContain(`dist/${entry}.js`);
    expect(files).toContain(`dist/${entry}.d.ts`);
  }
  const tarball = path.join(packDir, path.basename(info?.filename as string));

  const init = await run("npm", ["init", "-y"], projectDir);
  expect(init.code, init.output).toBe(0);
  const manifest = JSON.parse(fs.readFileSync(path.join(projectDir, "package.json"), "utf8"));
  fs.writeFileSync(
    path.join(projectDir, "package.json"),
    JSON.stringify({ ...manifest, type: "module" }, null, 2),
  );
  const install = await run(
    "npm",
    [
      "install",
      tarball,
      "hono",
      "@hono/node-server",
      "express",
      "fastify",
      "--no-audit",
      "--no-fund",
      "--prefer-offline",
    ],
    projectDir,
  );
  if (install.code !== 0) {
    if (NETWORK_ERROR.test(install.output) && process.env.CI !== "true") {
      unavailable = `npm install could not reach the registry:\n${install.output.slice(-2000)}`;
      console.warn(`packed.test.ts skipped: ${unavailable}`);
      return;
    }
    throw new Error(`npm install failed:\n${install.output}`);
  }
  for (const framework of FRAMEWORKS) {
    fs.writeFileSync(path.join(projectDir, `${framework.toLowerCase()}.js`), quickStart(framework));
  }
}, 300_000);

afterAll(() => {
  for (const dir of [projectDir, packDir]) if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe.each(storageModes)("the packed SDK, installed as a new user would ($name)", (mode) => {
  let server: TollgateProcess;
  let storage: Storage;
  let admin: Tollgate;
  const orgs: string[] = [];
  const apps: ChildProcess[] = [];

  beforeAll(async () => {
    if (unavailable) return;
    storage = await mode.setup();
    server = await startTollgate({
      ...storage.env,
      TOLLGATE_ADMIN_KEY: ADMIN_KEY,
      TOLLGATE_SECRET: SECRET,
      TOLLGATE_LOG_LEVEL: "warn",
    });
    admin = new Tollgate({ baseUrl: server.url, apiKey: ADMIN_KEY });
  }, 120_000);

  afterAll(async () => {
    for (const app of apps) if (app.exitCode === null && app.signalCode === null) app.kill("SIGKILL");
    await killAllTollgates();
    await admin?.shutdown();
    await storage?.cleanup(orgs);
  });

  const newOrgWithKey = async (): Promise<{ org: string; key: string }> => {
    const { data: org } = await admin.api.POST("/v1/orgs", { body: { name: "New user" } });
    orgs.push(org?.id as string);
    const { data: key } = await admin.api.POST("/v1/orgs/{org}/api-keys", {
      params: { path: { org: org?.id as string } },
      body: { name: "Backend", scopes: ["usage:read"] },
    });
    return { org: org?.id as string, key: key?.key as string };
  };

  const usageOf = async (org: string, meter: string): Promise<number> => {
    const { data } = await admin.api.GET("/v1/orgs/{org}/usage", {
      params: { path: { org }, query: { meter, granularity: "month" } },
    });
    return (data?.series ?? []).reduce((sum, point) => sum + Number(point.value), 0);
  };

  it.for(FRAMEWORKS)(
    "runs the README's %s quick start: the route is metered and limited",
    { timeout: 60_000 },
    async (framework, ctx) => {
      if (unavailable) ctx.skip(`no package registry: ${unavailable.split("\n")[0]}`);
      const port = await freePort();
      let output = "";
      const app = spawn(process.execPath, [`${framework.toLowerCase()}.js`], {
        cwd: projectDir,
        env: {
          PATH: process.env.PATH ?? "",
          TOLLGATE_URL: server.url,
          TOLLGATE_ADMIN_KEY: ADMIN_KEY,
          PORT: String(port),
        },
        stdio: ["ignore", "pipe", "pipe"],
      });
      apps.push(app);
      app.stdout?.on("data", (d) => {
        output += d;
      });
      app.stderr?.on("data", (d) => {
        output += d;
      });
      const exited = new Promise<number | null>((resolve) => app.on("exit", resolve));
      const url = `http://127.0.0.1:${port}/v1/kolekts`;
      const deadline = Date.now() + 30_000;
      for (;;) {
        if (app.exitCode !== null) throw new Error(`the quick start exited: ${output}`);
        try {
          await fetch(url, { method: "POST" });
          break;
        } catch {
          if (Date.now() > deadline) throw new Error(`the quick start did not listen: ${output}`);
          await sleep(100);
        }
      }

      const { org, key } = await newOrgWithKey();
      const post = () => fetch(url, { method: "POST", headers: { authorization: `Bearer ${key}` } });
      const noKey = await fetch(url, { method: "POST" });
      expect(noKey.status).toBe(401);
      expect(noKey.headers.get("content-type")).toMatch(/^application\/problem\+json/);
      for (let i = 1; i <= 10; i++) {
        const res = await post();
        expect(res.status, await res.clone().text()).toBe(201);
        expect(await res.json()).toEqual({ org, plan: "free", kolekt: "formatted" });
        expect(res.headers.get("ratelimit")).toMatch(new RegExp(`^"api_requests";r=${10 - i};t=\\d+$`));
      }
      const limited = await post();
      expect(limited.status).toBe(429);
      expect(limited.headers.get("content-type")).toMatch(/^application\/problem\+json/);
      expect(Number(limited.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      expect(await limited.json()).toMatchObject({
        status: 429,
        code: "rate_limited",
        feature: "api_requests",
        upgrade_url: expect.stringContaining(`/orgs/${org}/billing`),
      });

      // A used-up quota is refused before the handler, with its own answer.
      const other = await newOrgWithKey();
      await admin.check(other.org, "kolekts", { amount: 10 });
      const over = await fetch(url, { method: "POST", headers: { "x-api-key": other.key } });
      expect(over.status).toBe(429);
      expect(await over.json()).toMatchObject({ code: "quota_exceeded", used: 10, limit: 10 });

      // SIGTERM: the quick start's handler calls shutdown(), which delivers what is queued.
      app.kill("SIGTERM");
      expect(await exited, output).toBe(0);
      expect(await usageOf(org, "kolekts")).toBe(10);
      expect(await usageOf(other.org, "kolekts")).toBe(10);
    },
  );
});
