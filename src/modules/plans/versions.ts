import { and, eq, sql } from "drizzle-orm";
import type { DatabaseHandle } from "../../db/client.js";
import { planVersions } from "../../db/schema.js";
import { sha256Hex } from "../../lib/crypto.js";
import type { Logger } from "../../lib/logger.js";
import type { Catalog, Plan } from "../catalog/schema.js";

/**
 * Plan versions and grandfathering. Every definition a plan has had is kept in `plan_versions`;
 * at boot each plan of the catalog is matched by content hash, and a changed plan gets the next
 * version number. New subscriptions take the version in the catalog now; existing subscribers keep
 * theirs until the operator migrates them (POST /v1/admin/plans/:plan/migrate).
 *
 * Entitlements are always read through the subscriber's version, so raising the price of `pro`
 * or lowering its quota changes nothing for those who bought the old `pro`.
 */

export interface PlanRef {
  key: string;
  version: number;
}

export interface PlanRegistry {
  /** The version of each catalog plan as the catalog defines it now. */
  current(planKey: string): { version: number; plan: Plan } | undefined;
  /** A version known to this process (every version that existed at boot, and those loaded since). */
  get(planKey: string, version: number): Plan | undefined;
  /** Loads a version another process created after this one booted. */
  load(planKey: string, version: number): Promise<Plan | undefined>;
  /** Every known version of a plan, oldest first. */
  versions(planKey: string): { version: number; plan: Plan }[];
}

/** A stable JSON form: object keys sorted, so the hash only changes when the plan does. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

/** Fixed and arbitrary, like the migration lock: serialises version numbering across processes. */
const PLAN_SYNC_LOCK = 7_461_002;

/**
 * Records the catalog's plans as versions (adding a version for each changed plan) and returns the
 * registry. Several processes booting at once agree: the numbering runs under an advisory lock.
 */
export async function syncPlanVersions(
  database: DatabaseHandle,
  catalog: Catalog,
  logger: Logger,
): Promise<PlanRegistry> {
  const known = new Map<string, Map<number, Plan>>();
  const current = new Map<string, { version: number; plan: Plan }>();
  const remember = (key: string, version: number, plan: Plan) => {
    let versions = known.get(key);
    if (!versions) {
      versions = new Map();
      known.set(key, versions);
    }
    versions.set(version, plan);
  };

  await database.withExclusiveLock(PLAN_SYNC_LOCK, async (db) => {
    const rows = await db.select().from(planVersions);
    for (const row of rows) remember(row.planKey, row.version, row.definition as Plan);
    for (const plan of catalog.plans) {
      const hash = sha256Hex(canonical(plan));
      const match = rows.find((row) => row.planKey === plan.key && row.hash === hash);
      if (match) {
        current.set(plan.key, { version: match.version, plan });
        continue;
      }
      const version = Math.max(0, ...rows.filter((r) => r.planKey === plan.key).map((r) => r.version)) + 1;
      await db.insert(planVersions).values({ planKey: plan.key, version, hash, definition: plan });
      remember(plan.key, version, plan);
      current.set(plan.key, { version, plan });
      if (version > 1) {
        logger.info(
          { plan: plan.key, version },
          "plan changed: new version recorded; existing subscribers keep theirs until migrated",
        );
      }
    }
  });

  return {
    current: (key) => current.get(key),
    get: (key, version) => known.get(key)?.get(version),
    load: async (key, version) => {
      const cached = known.get(key)?.get(version);
      if (cached) return cached;
      const [row] = await database.db
        .select()
        .from(planVersions)
        .where(and(eq(planVersions.planKey, key), eq(planVersions.version, version)));
      if (!row) return undefined;
      remember(key, version, row.definition as Plan);
      return row.definition as Plan;
    },
    versions: (key) =>
      [...(known.get(key) ?? new Map<number, Plan>())]
        .sort(([a], [b]) => a - b)
        .map(([version, plan]) => ({ version, plan })),
  };
}

/**
 * Gives every org without a subscription one on the default plan (orgs created before subscriptions
 * existed). Idempotent; periods are anchored at the org's creation.
 */
export async function backfillSubscriptions(
  database: DatabaseHandle,
  registry: PlanRegistry,
  catalog: Catalog,
) {
  const plan = registry.current(catalog.default_plan);
  if (!plan) return;
  const interval = plan.plan.price.month !== undefined ? "month" : "year";
  await database.query(sql`
    insert into subscriptions (id, org_id, plan_key, plan_version, interval, status, anchor_at, created_at, updated_at)
    select 'sub_' || substr(o.id, 5), o.id, ${catalog.default_plan}, ${plan.version}, ${interval}, 'active', o.created_at, now(), now()
    from orgs o
    where not exists (select 1 from subscriptions s where s.org_id = o.id)
    on conflict (org_id) do nothing`);
}
