import { fileURLToPath } from "node:url";
import type { NodePgDatabase } from "drizzle-orm/node-postgres";
import { migrate as migratePg } from "drizzle-orm/node-postgres/migrator";
import type { PgliteDatabase } from "drizzle-orm/pglite";
import { migrate as migratePglite } from "drizzle-orm/pglite/migrator";
import type { DatabaseHandle } from "./client.js";

/** migrations/ sits at the package root; this file is two levels below it in src/ and in dist/. */
export const MIGRATIONS_FOLDER = fileURLToPath(new URL("../../migrations", import.meta.url));

/** Arbitrary, fixed: the advisory lock every Tollgate process takes while migrating. */
const MIGRATION_LOCK = 7_461_001;

/**
 * Applies every pending migration. Safe to run twice and from several processes at once: the
 * advisory lock serialises them, and Drizzle's journal skips what is already applied.
 */
export async function runMigrations(handle: DatabaseHandle): Promise<void> {
  await handle.withExclusiveLock(MIGRATION_LOCK, async (db) => {
    if (handle.kind === "postgres") {
      await migratePg(db as unknown as NodePgDatabase, { migrationsFolder: MIGRATIONS_FOLDER });
    } else {
      await migratePglite(db as unknown as PgliteDatabase, { migrationsFolder: MIGRATIONS_FOLDER });
    }
  });
}
