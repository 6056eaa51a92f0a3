import { hash, randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { eq } from "drizzle-orm";
import type { DatabaseHandle } from "../../db/client.js";
import { instanceSettings } from "../../db/schema.js";
import type { Env } from "../../lib/env.js";
import type { Logger } from "../../lib/logger.js";

export interface InstanceSecrets {
  /** SHA-256 of the operator's key (the key itself is kept only once presented: see isOperatorKey). */
  adminKeyHash: Buffer;
  /** Key material for signing and encryption at rest. */
  secret: string;
  /** Set only on the boot that generated the admin key: shown once, then gone. */
  generatedAdminKey: string | undefined;
  /** Where the generated admin key was also written (embedded mode), for a newcomer who missed it. */
  adminKeyFile: string | undefined;
}

/** SHA-256 of a string's UTF-8 bytes; one-shot `crypto.hash` (each operator request hashes its key). */
export const sha256 = (value: string): Buffer => hash("sha256", value, "buffer");

const SECRET_SETTING = "tollgate_secret";
const ADMIN_KEY_SETTING = "admin_key_sha256";

/**
 * Resolves the instance's secrets. Configured values win. Otherwise they are generated once and kept
 * in the database, so every process sharing it agrees: the secret as-is (a production deployment
 * should set TOLLGATE_SECRET so it does not sit beside the data it protects), the admin key as a hash
 * only. The first process to insert wins; the others read the winner's value.
 */
export async function loadInstanceSecrets(options: {
  database: DatabaseHandle;
  env: Env;
  logger: Logger;
}): Promise<InstanceSecrets> {
  const { database, env, logger } = options;

  let secret = env.secret;
  if (!secret) {
    const { value } = await getOrCreate(database, SECRET_SETTING, () =>
      randomBytes(32).toString("base64url"),
    );
    secret = value;
    if (database.kind === "postgres") {
      logger.warn(
        "TOLLGATE_SECRET is not set: using a secret generated and stored in the database; set it in production",
      );
    }
  }

  if (env.adminKey) {
    return {
      adminKeyHash: sha256(env.adminKey),
      secret,
      generatedAdminKey: undefined,
      adminKeyFile: undefined,
    };
  }
  const candidate = `tg_admin_${randomBytes(32).toString("base64url")}`;
  const { value, created } = await getOrCreate(database, ADMIN_KEY_SETTING, () =>
    sha256(candidate).toString("hex"),
  );
  let adminKeyFile: string | undefined;
  if (created && database.kind === "pglite") {
    adminKeyFile = path.join(env.dataDir, "admin-key");
    fs.writeFileSync(adminKeyFile, `${candidate}\n`, { mode: 0o600 });
  }
  return {
    adminKeyHash: Buffer.from(value, "hex"),
    secret,
    generatedAdminKey: created ? candidate : undefined,
    adminKeyFile,
  };
}

/** Replaces the stored admin key with a new one and returns it (the `tollgate admin-key rotate` command). */
export async function rotateStoredAdminKey(database: DatabaseHandle): Promise<string> {
  const key = `tg_admin_${randomBytes(32).toString("base64url")}`;
  await database.db
    .insert(instanceSettings)
    .values({ key: ADMIN_KEY_SETTING, value: sha256(key).toString("hex") })
    .onConflictDoUpdate({
      target: instanceSettings.key,
      set: { value: sha256(key).toString("hex"), updatedAt: new Date() },
    });
  return key;
}

async function getOrCreate(
  database: DatabaseHandle,
  key: string,
  make: () => string,
): Promise<{ value: string; created: boolean }> {
  const inserted = await database.db
    .insert(instanceSettings)
    .values({ key, value: make() })
    .onConflictDoNothing()
    .returning({ value: instanceSettings.value });
  if (inserted[0]) return { value: inserted[0].value, created: true };
  const [row] = await database.db.select().from(instanceSettings).where(eq(instanceSettings.key, key));
  if (!row) throw new Error(`instance setting ${key} vanished while being read`);
  return { value: row.value, created: false };
}
