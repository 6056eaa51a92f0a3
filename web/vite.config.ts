import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

/**
 * The dashboard: a single-page app built into dist/web, which Tollgate serves at `/` (see
 * src/modules/web/routes.ts). `npx vite web` serves it with hot reload, proxying the API to a
 * Tollgate on port 3000.
 */
export default defineConfig({
  root: import.meta.dirname,
  plugins: [react()],
  build: { outDir: "../dist/web", emptyOutDir: true, assetsDir: "assets" },
  server: { proxy: { "/v1": "http://127.0.0.1:3000" } },
});
