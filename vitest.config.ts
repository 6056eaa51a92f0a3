import path from "node:path";
import { defineConfig } from "vitest/config";

export default defineConfig({
  // The examples import @tollgate/sdk as users do; in this repository that means its sources (the
  // package's "tollgate-source" export condition, which node --conditions and tsc use too).
  resolve: {
    alias: [
      {
        find: /^@tollgate\/sdk$/,
        replacement: path.resolve(import.meta.dirname, "packages/sdk/src/index.ts"),
      },
      {
        find: /^@tollgate\/sdk\/(hono|express|fastify)$/,
        replacement: path.resolve(import.meta.dirname, "packages/sdk/src/$1.ts"),
      },
    ],
  },
  test: {
    include: [
      "src/**/*.test.ts",
      "test/**/*.test.ts",
      "packages/*/test/**/*.test.ts",
      "examples/*/test/**/*.test.ts",
    ],
    environment: "node",
    // The dashboard is built once for the browser tests (test/support/global-setup.ts).
    globalSetup: ["test/support/global-setup.ts"],
    pool: "forks",
    testTimeout: 30_000,
    hookTimeout: 60_000,
    reporters: process.env.CI ? ["default", ["json", { outputFile: ".vitest-report.json" }]] : ["default"],
  },
});
