import { execFileSync } from "node:child_process";
import path from "node:path";

/**
 * Builds the dashboard (web/ → dist/web) once, before any test file runs: the browser tests serve
 * it, and test files may run side by side, so none of them may rebuild (and so briefly delete) it
 * while another's server is serving it.
 */
export default function setup() {
  const root = path.resolve(import.meta.dirname, "../..");
  execFileSync(
    process.execPath,
    [path.join(root, "node_modules/vite/bin/vite.js"), "build", "web", "--logLevel", "warn"],
    // As `npm run build` makes it: vitest sets NODE_ENV=test, which would give React's development build.
    { cwd: root, stdio: "inherit", env: { ...process.env, NODE_ENV: "production" } },
  );
}
