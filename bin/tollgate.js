#!/usr/bin/env node
// The `tollgate` command. The compiled CLI lives in dist/ (built by `npm run build`, which `npm start` runs).
import("../dist/cli.js").catch((error) => {
  if (error && error.code === "ERR_MODULE_NOT_FOUND" && String(error.message).includes("dist/cli.js")) {
    console.error("tollgate: not built yet — run `npm run build` (or `npm start`, which builds first).");
    process.exit(1);
  }
  throw error;
});
