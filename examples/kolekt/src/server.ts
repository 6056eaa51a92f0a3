import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { serve } from "@hono/node-server";
import { Tollgate } from "@tollgate/sdk";
import { createApp } from "./app.js";

/**
 * Runs Kolekt against a running Tollgate: `npm run example:kolekt` from the repository.
 *
 * - TOLLGATE_URL: where Tollgate listens (default http://127.0.0.1:3000).
 * - TOLLGATE_ADMIN_KEY: its operator key; by default the one `npm start` saved in .tollgate/admin-key.
 * - PORT: Kolekt's own port (default 4000).
 */

function operatorKey(): string {
  if (process.env.TOLLGATE_ADMIN_KEY) return process.env.TOLLGATE_ADMIN_KEY;
  const saved = path.resolve(process.env.TOLLGATE_DATA_DIR ?? ".tollgate", "admin-key");
  if (existsSync(saved)) return readFileSync(saved, "utf8").trim();
  console.error("Set TOLLGATE_ADMIN_KEY to Tollgate's operator key (npm start prints it once).");
  process.exit(1);
}

const client = new Tollgate({
  baseUrl: process.env.TOLLGATE_URL ?? "http://127.0.0.1:3000",
  apiKey: operatorKey(),
  // A formatter can afford to wait a little, but not to hang.
  timeoutMs: 1500,
  // Tollgate unreachable: keep serving paying customers; the usage is tracked and sent later.
  failMode: "open",
});

const port = Number(process.env.PORT ?? 4000);
const server = serve({ fetch: createApp(client).fetch, port, hostname: "127.0.0.1" }, (info) => {
  console.log(`Kolekt is listening on http://127.0.0.1:${info.port}`);
});

// Stopping: finish requests, then deliver the usage still queued.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    server.close(async () => {
      const { pending } = await client.shutdown();
      if (pending > 0) console.error(`${pending} usage events could not be delivered.`);
      process.exit(0);
    });
  });
}
