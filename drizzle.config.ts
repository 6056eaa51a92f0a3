import { defineConfig } from "drizzle-kit";

// Migrations are generated from src/db/schema.ts with `npm run db:generate` and applied at start.
export default defineConfig({
  dialect: "postgresql",
  schema: "./src/db/schema.ts",
  out: "./migrations",
});
