import type { z } from "zod";
import { chargeIssues } from "./charges.js";
import { entitlementSchemaFor, type FeatureType } from "./entitlements.js";
import { compareDecimal } from "./fields.js";
import { type CatalogIssue, describe, formatPath, fromZod } from "./issues.js";
import {
  type Catalog,
  catalogShellSchema,
  type Entitlement,
  FEATURE_TYPES,
  type Feature,
  featureSchema,
  type Meter,
  meterIssues,
  meterSchema,
  type Price,
  planSchema,
} from "./schema.js";

/**
 * Checks a catalog already read into plain data: each element against its schema, then every rule
 * that spans fields or elements. Those rules read the raw data, so an element broken in one place still
 * has its other problems reported, and a broken element does not cause a cascade of "unknown key" errors
 * in the elements that name it.
 */

type Section = "meters" | "features" | "plans";

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function parseEach<T>(raw: unknown[], schema: z.ZodType<T>, section: Section, issues: CatalogIssue[]) {
  return raw.map((element, i) => {
    const result = schema.safeParse(element, { reportInput: true });
    if (result.success) return result.data;
    issues.push(...fromZod(result.error.issues, [section, i]));
    return undefined;
  });
}

/** Keys as written (even in elements that failed to parse), reporting every repeat of a key. */
function collectKeys(raw: unknown[], section: Section, noun: string, issues: CatalogIssue[]): Set<string> {
  const first = new Map<string, number>();
  raw.forEach((element, i) => {
    const key = isRecord(element) ? element.key : undefined;
    if (typeof key !== "string") return;
    const seen = first.get(key);
    if (seen === undefined) first.set(key, i);
    else
      issues.push({
        path: [section, i, "key"],
        message: `duplicate ${noun} key "${key}" (first used by ${section}[${seen}])`,
      });
  });
  return new Set(first.keys());
}

function known(keys: Set<string>): string {
  return keys.size ? ` (known: ${[...keys].join(", ")})` : " (none defined)";
}

function isFree(price: Price): boolean {
  return Object.values(price).every((fee) => fee === undefined || compareDecimal(fee, "0") === 0);
}

/** The raw type of each feature key (first wins), when it is a valid type: entitlements are checked against it. */
function featureTypes(raw: unknown[]): Map<string, FeatureType> {
  const types = new Map<string, FeatureType>();
  for (const feature of raw) {
    if (!isRecord(feature) || typeof feature.key !== "string" || types.has(feature.key)) continue;
    const type = FEATURE_TYPES.find((t) => t === feature.type);
    if (type) types.set(feature.key, type);
  }
  return types;
}

/** Checks one plan's entitlements and charge references; returns its normalised entitlements. */
function checkPlanRefs(
  plan: Record<string, unknown>,
  i: number,
  refs: { meterKeys: Set<string>; featureKeys: Set<string>; types: Map<string, FeatureType> },
  issues: CatalogIssue[],
): Record<string, Entitlement> {
  const normalised: Record<string, Entitlement> = {};
  if (isRecord(plan.entitlements)) {
    for (const [key, value] of Object.entries(plan.entitlements)) {
      const path = ["plans", i, "entitlements", key];
      if (!refs.featureKeys.has(key)) {
        issues.push({ path, message: `unknown feature "${key}"${known(refs.featureKeys)}` });
        continue;
      }
      const type = refs.types.get(key);
      if (!type) continue; // the feature's type is broken, and reported with the feature
      const result = entitlementSchemaFor(type, value).safeParse(value, { reportInput: true });
      if (result.success) normalised[key] = result.data;
      else issues.push(...fromZod(result.error.issues, path));
    }
  }
  if (Array.isArray(plan.charges)) {
    plan.charges.forEach((charge: unknown, j) => {
      if (!isRecord(charge)) return;
      const path = ["plans", i, "charges", j];
      if (typeof charge.meter === "string" && !refs.meterKeys.has(charge.meter)) {
        issues.push({
          path: [...path, "meter"],
          message: `unknown meter "${charge.meter}"${known(refs.meterKeys)}`,
        });
      }
      for (const issue of chargeIssues(charge))
        issues.push({ path: [...path, ...issue.path], message: issue.message });
    });
  }
  return normalised;
}

const SECTION_ORDER = [
  "currency",
  "default_plan",
  "api_rate_feature",
  "proration_unit",
  "meters",
  "features",
  "plans",
];

/**
 * Document order (section, then element), and each problem once: the cross-field rules run both inside
 * the schemas and on the raw data, so a valid-otherwise element reports the same problem twice.
 */
function tidy(issues: CatalogIssue[]): CatalogIssue[] {
  const seen = new Set<string>();
  const unique = issues.filter((issue) => {
    const id = `${formatPath(issue.path)}\u0000${issue.message}`;
    if (seen.has(id)) return false;
    seen.add(id);
    return true;
  });
  const rank = (issue: CatalogIssue) => {
    const section = SECTION_ORDER.indexOf(String(issue.path[0]));
    return [
      section === -1 ? SECTION_ORDER.length : section,
      typeof issue.path[1] === "number" ? issue.path[1] : -1,
    ];
  };
  return unique
    .map((issue, order) => ({ issue, order, rank: rank(issue) }))
    .sort(
      (a, b) =>
        (a.rank[0] ?? 0) - (b.rank[0] ?? 0) || (a.rank[1] ?? 0) - (b.rank[1] ?? 0) || a.order - b.order,
    )
    .map(({ issue }) => issue);
}

/** Parses and cross-checks catalog data; `catalog` is set only when there are no issues. */
export function checkCatalogData(data: unknown): { catalog?: Catalog; issues: CatalogIssue[] } {
  if (!isRecord(data)) {
    return {
      issues: [
        {
          path: [],
          message: `must be a mapping with currency, default_plan, meters, features and plans (got ${describe(data)})`,
        },
      ],
    };
  }
  const issues: CatalogIssue[] = [];
  const shell = catalogShellSchema.safeParse(data, { reportInput: true });
  if (!shell.success) issues.push(...fromZod(shell.error.issues));

  const list = (section: Section) => (Array.isArray(data[section]) ? (data[section] as unknown[]) : []);
  const [rawMeters, rawFeatures, rawPlans] = [list("meters"), list("features"), list("plans")];
  const meters = parseEach<Meter>(rawMeters, meterSchema, "meters", issues);
  const features = parseEach<Feature>(rawFeatures, featureSchema, "features", issues);
  const plans = parseEach(rawPlans, planSchema, "plans", issues);

  const meterKeys = collectKeys(rawMeters, "meters", "meter", issues);
  const featureKeys = collectKeys(rawFeatures, "features", "feature", issues);
  const planKeys = collectKeys(rawPlans, "plans", "plan", issues);

  rawMeters.forEach((meter, i) => {
    if (!isRecord(meter)) return;
    for (const issue of meterIssues(meter))
      issues.push({ path: ["meters", i, ...issue.path], message: issue.message });
  });
  rawFeatures.forEach((feature, i) => {
    if (
      isRecord(feature) &&
      feature.type === "metered" &&
      typeof feature.meter === "string" &&
      !meterKeys.has(feature.meter)
    ) {
      issues.push({
        path: ["features", i, "meter"],
        message: `unknown meter "${feature.meter}"${known(meterKeys)}`,
      });
    }
    // A quota is consumed: only a meter whose quantity grows with use (count, sum) can carry one.
    if (isRecord(feature) && feature.type === "metered" && typeof feature.meter === "string") {
      const meter = rawMeters.find((m) => isRecord(m) && m.key === feature.meter);
      const aggregation = isRecord(meter) ? meter.aggregation : undefined;
      if (typeof aggregation === "string" && aggregation !== "count" && aggregation !== "sum") {
        issues.push({
          path: ["features", i, "meter"],
          message: `meter "${feature.meter}" aggregates by ${aggregation}; a metered quota needs a count or sum meter (bill other aggregations with charges)`,
        });
      }
    }
  });
  const refs = { meterKeys, featureKeys, types: featureTypes(rawFeatures) };
  const entitlements = rawPlans.map((plan, i) =>
    isRecord(plan) ? checkPlanRefs(plan, i, refs, issues) : {},
  );

  const apiRate = data.api_rate_feature;
  if (typeof apiRate === "string") {
    const type = refs.types.get(apiRate);
    if (type === undefined) {
      issues.push({
        path: ["api_rate_feature"],
        message: `unknown feature "${apiRate}"${known(featureKeys)}`,
      });
    } else if (type !== "rate") {
      issues.push({
        path: ["api_rate_feature"],
        message: `"${apiRate}" is a ${type} feature; it must be a rate feature`,
      });
    }
  }

  const defaultPlan = data.default_plan;
  if (typeof defaultPlan === "string" && !planKeys.has(defaultPlan)) {
    issues.push({ path: ["default_plan"], message: `unknown plan "${defaultPlan}"${known(planKeys)}` });
  }
  // Every new org lands on the default plan without a payment method, so it cannot charge up front.
  const start = plans.find((plan) => plan?.key === defaultPlan);
  if (start && !isFree(start.price) && start.trial_days === 0) {
    issues.push({
      path: ["default_plan"],
      message: `"${start.key}" has a base fee and no trial: every new org starts on the default plan without a payment method, so make it free or give it trial_days`,
    });
  }

  if (issues.length > 0 || !shell.success) return { issues: tidy(issues) };
  const catalog: Catalog = {
    ...shell.data,
    meters: meters as Meter[],
    features: features as Feature[],
    plans: plans.map((plan, i) => ({
      ...(plan as NonNullable<typeof plan>),
      entitlements: entitlements[i] ?? {},
    })),
  };
  return { catalog, issues: [] };
}
