import type {
  Catalog,
  Feature,
  LimitEntitlement,
  Meter,
  MeteredEntitlement,
  Plan,
  RateEntitlement,
} from "../catalog/schema.js";
import { SUM_SCALE } from "./quantities.js";

/**
 * A feature as one plan version grants it, resolved once per plan and cached: the hot path never
 * re-reads the catalog. Limits are in counter-store units (see quantities.ts).
 */
export type Grant =
  | { type: "boolean"; feature: Feature; enabled: boolean }
  | {
      type: "limit";
      feature: Feature;
      /** null = unlimited. */
      limit: number | null;
      onUnavailable: "open" | "closed";
    }
  | {
      type: "metered";
      feature: Feature;
      meter: Meter;
      /** Counter-store units per unit of quantity: 1 for count meters, 10⁶ for sum meters. */
      scale: number;
      /** As written in the catalog (null = unlimited); enforced only when overage is block. */
      limit: number | null;
      limitUnits: number | null;
      overage: "block" | "allow";
      thresholds: number[];
      onUnavailable: "open" | "closed";
    }
  | {
      type: "rate";
      feature: Feature;
      /** Undefined when the plan does not grant the feature: every call is denied. */
      rate: RateEntitlement | undefined;
      onUnavailable: "open" | "closed";
    };

export type MeteredGrant = Extract<Grant, { type: "metered" }>;

export interface CatalogIndex {
  features: Map<string, Feature>;
  meters: Map<string, Meter>;
  /** Metered features by the meter they consume. */
  meteredByMeter: Map<string, Feature[]>;
}

const indexes = new WeakMap<Catalog, CatalogIndex>();

export function catalogIndex(catalog: Catalog): CatalogIndex {
  let index = indexes.get(catalog);
  if (!index) {
    const meteredByMeter = new Map<string, Feature[]>();
    for (const feature of catalog.features) {
      if (feature.type !== "metered") continue;
      meteredByMeter.set(feature.meter, [...(meteredByMeter.get(feature.meter) ?? []), feature]);
    }
    index = {
      features: new Map(catalog.features.map((f) => [f.key, f])),
      meters: new Map(catalog.meters.map((m) => [m.key, m])),
      meteredByMeter,
    };
    indexes.set(catalog, index);
  }
  return index;
}

const grants = new WeakMap<Plan, Map<string, Grant>>();

/** How `plan` grants `feature`. A feature the plan does not list is off (boolean) or 0 (limit, metered). */
export function grantOf(catalog: Catalog, plan: Plan, feature: Feature): Grant {
  let cache = grants.get(plan);
  if (!cache) {
    cache = new Map();
    grants.set(plan, cache);
  }
  let grant = cache.get(feature.key);
  if (grant) return grant;
  const value = plan.entitlements[feature.key];
  switch (feature.type) {
    case "boolean":
      grant = { type: "boolean", feature, enabled: value === true };
      break;
    case "limit":
      grant = {
        type: "limit",
        feature,
        limit: value === undefined ? 0 : (value as LimitEntitlement),
        onUnavailable: feature.on_unavailable,
      };
      break;
    case "metered": {
      const meter = catalogIndex(catalog).meters.get(feature.meter) as Meter;
      const entitlement = (value as MeteredEntitlement | undefined) ?? {
        limit: 0,
        overage: "block" as const,
      };
      const scale = meter.aggregation === "sum" ? SUM_SCALE : 1;
      grant = {
        type: "metered",
        feature,
        meter,
        scale,
        limit: entitlement.limit,
        // Clamped to the counter store's exact range (a sum-meter limit past ~9 billion units).
        limitUnits:
          entitlement.limit === null
            ? null
            : Math.min(Math.round(entitlement.limit * scale), Number.MAX_SAFE_INTEGER),
        overage: entitlement.overage,
        thresholds: feature.thresholds,
        onUnavailable: feature.on_unavailable,
      };
      break;
    }
    case "rate":
      grant = {
        type: "rate",
        feature,
        rate: value as RateEntitlement | undefined,
        onUnavailable: feature.on_unavailable,
      };
      break;
  }
  cache.set(feature.key, grant);
  return grant;
}
