import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  freePort,
  killAllTollgates,
  startTollgate,
  type TollgateProcess,
} from "../../../test/support/tollgate-process.js";

/**
 * The README's walk-through, word for word: every ```sh block after "## The walk-through" runs, in
 * order, in one bash session, against a real Tollgate (embedded defaults, the demo catalog) and the
 * example server; what each prints must be the ```text block that follows it. Only the two
 * addresses change (this test picks free ports instead of 3000 and 4000).
 */

const root = path.resolve(import.meta.dirname, "../../..");
const readme = readFileSync(path.join(root, "examples/kolekt/README.md"), "utf8");
const ADMIN_KEY = "walkthrough-operator-key-0123456789";

/** The (command, expected output) pairs of the walk-through. */
function walkthroughSteps(markdown: string): { command: string; output: string }[] {
  const section = markdown.split("## The walk-through")[1]?.split(/\n## /)[0] ?? "";
  const blocks = [...section.matchAll(/```(sh|text)\n([\s\S]*?)```/g)].map((m) => ({
    kind: m[1],
    body: m[2] ?? "",
  }));
  const steps: { command: string; output: string }[] = [];
  for (let i = 0; i < blocks.length; i++) {
    const block = blocks[i];
    if (block?.kind !== "sh") continue;
    const next = blocks[i + 1];
    steps.push({ command: block.body, output: next?.kind === "text" ? next.body : "" });
  }
  return steps;
}

const hasJq = (() => {
  try {
    execFileSync("jq", ["--version"]);
    return true;
  } catch {
    return false;
  }
})();
if (process.env.CI && !hasJq) throw new Error("jq is missing: apt-get install jq");

describe.runIf(hasJq)("the Kolekt example's walk-through", () => {
  let tollgate: TollgateProcess;
  let example: ChildProcess;
  let examplePort: number;
  let cwd: string;

  beforeAll(async () => {
    cwd = mkdtempSync(path.join(os.tmpdir(), "kolekt-walkthrough-"));
    // As after `npm start`: the operator key saved in .tollgate/admin-key.
    mkdirSync(path.join(cwd, ".tollgate"));
    writeFileSync(path.join(cwd, ".tollgate/admin-key"), `${ADMIN_KEY}\n`);
    tollgate = await startTollgate({
      TOLLGATE_ADMIN_KEY: ADMIN_KEY,
      TOLLGATE_DATA_DIR: path.join(cwd, "data"),
    });
    examplePort = await freePort();
    example = spawn(
      process.execPath,
      // As `npm run example:kolekt` runs it (tsx by path: the walk-through's directory has no node_modules).
      [
        "--conditions=tollgate-source",
        "--import",
        pathToFileURL(path.join(root, "node_modules/tsx/dist/loader.mjs")).href,
        path.join(root, "examples/kolekt/src/server.ts"),
      ],
      {
        cwd,
        env: {
          PATH: process.env.PATH ?? "",
          TOLLGATE_URL: tollgate.url,
          PORT: String(examplePort),
        },
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    await new Promise<void>((resolve, reject) => {
      example.stdout?.on("data", (chunk: Buffer) => {
        if (chunk.toString().includes("listening")) resolve();
      });
      example.once("exit", (code) => reject(new Error(`the example exited (${code})`)));
    });
  }, 120_000);

  afterAll(async () => {
    example?.kill("SIGTERM");
    await killAllTollgates();
    if (cwd && existsSync(cwd)) rmSync(cwd, { recursive: true, force: true });
  });

  it("prints what the README says, step by step", () => {
    const steps = walkthroughSteps(readme);
    expect(steps.length).toBeGreaterThanOrEqual(6);
    const marker = "=====walkthrough-step=====";
    const script = steps
      .map(({ command }) =>
        command
          .replaceAll("http://127.0.0.1:3000", tollgate.url)
          .replaceAll("localhost:4000", `127.0.0.1:${examplePort}`),
      )
      .join(`\necho ${marker}\n`);
    const out = execFileSync("bash", ["-euo", "pipefail", "-c", script], {
      cwd,
      encoding: "utf8",
      env: { PATH: process.env.PATH ?? "", HOME: cwd },
      timeout: 60_000,
    });
    const printed = out.split(`${marker}\n`);
    expect(printed).toHaveLength(steps.length);
    steps.forEach((step, i) => {
      expect(printed[i], `after:\n${step.command}`).toBe(step.output);
    });
  }, 90_000);
});
