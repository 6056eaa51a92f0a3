import type { Deps } from "../../deps.js";
import type { Catalog, MeteredEntitlement, Plan, RateEntitlement } from "../catalog/schema.js";
import type { OrgPlan } from "../plans/subscriptions.js";
import type { Grant } from "./features.js";

/**
 * Where a denied customer can get more: the cheapest plan on the pricing page that grants more of
 * the feature than the org's plan does, and the dashboard's billing page for the org.
 */

/** Monthly-equivalent base price, for ordering plans from cheapest (exact enough to sort). */
function monthlyPrice(plan: Plan): number {
  if (plan.price.month !== undefined) return Number(plan.price.month);
  return Number(plan.price.year ?? "0") / 12;
}

const sortedPlans = new WeakMap<Catalog, Plan[]>();

function listedPlans(catalog: Catalog): Plan[] {
  let plans = sortedPlans.get(catalog);
  if (!plans) {
    plans = catalog.plans.filter((p) => !p.hidden).sort((a, b) => monthlyPrice(a) - monthlyPrice(b));
    sortedPlans.set(catalog, plans);
  }
  return plans;
}

/** Whether `plan` grants more of the feature than `grant` (the org's current grant). */
function grantsMore(plan: Plan, grant: Grant): boolean {
  const value = plan.entitlements[grant.feature.key];
  switch (grant.type) {
    case "boolean":
      return value === true && !grant.enabled;
    case "limit":
      if (value === undefined || grant.limit === null) return false;
      return value === null || (value as number) > grant.limit;
    case "metered": {
      const metered = value as MeteredEntitlement | undefined;
      if (!metered || grant.limit === null) return false;
      return metered.limit === null || metered.limit > grant.limit || metered.overage === "allow";
    }
    case "rate": {
      const rate = value as RateEntitlement | undefined;
      if (!rate) return false;
      if (!grant.rate) return true;
      return rate.limit / rate.window_ms > grant.rate.limit / grant.rate.window_ms;
    }
  }
}

export function upgradeFor(
  deps: Deps,
  org: OrgPlan,
  grant: Grant,
): { url: string; plan: string | undefined } {
  const plan = listedPlans(deps.catalog).find((p) => p.key !== org.planKey && grantsMore(p, grant));
  const base = deps.env.publicUrl.replace(/\/$/, "");
  const query = new URLSearchParams({ feature: grant.feature.key, ...(plan ? { plan: plan.key } : {}) });
  return { url: `${base}/dashboard/orgs/${org.orgId}/billing?${query}`, plan: plan?.key };
}
