import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { compareDecimal } from "./fields.js";
import type { Catalog, Entitlement } from "./schema.js";
import { DEFAULT_CATALOG_PATH, loadCatalog, parseCatalog, validateCatalogFile } from "./validate.js";

const root = fileURLToPath(new URL("../../../", import.meta.url));
const catalogFile = (name: string) => join(root, "catalogs", name);

function plan(catalog: Catalog, key: string) {
  const found = catalog.plans.find((p) => p.key === key);
  if (!found) throw new Error(`no plan ${key}`);
  return found;
}
/** The entitlement of `feature` on each of `plans`, in order. */
const across = (catalog: Catalog, plans: string[], feature: string): (Entitlement | undefined)[] =>
  plans.map((key) => plan(catalog, key).entitlements[feature]);
const limits = (catalog: Catalog, plans: string[], feature: string) =>
  across(catalog, plans, feature).map((value) =>
    value !== null && typeof value === "object" ? value.limit : value,
  );

function errorsOf(text: string, format: "yaml" | "json" = "yaml") {
  const result = parseCatalog(text, format);
  if (result.ok) throw new Error("expected the catalog to be rejected");
  return result.errors;
}

/** A minimal valid catalog to vary in tests; `planLines` are added to its one plan. */
const base = (planLines = "") => `currency: USD
default_plan: free
meters: [{ key: calls, name: Calls, aggregation: count }]
features: [{ key: calls, type: metered, meter: calls }]
plans:
  - key: free
    name: Free
    price: { month: "0" }
${planLines}`;

describe("bundled catalogs", () => {
  it("Kolekt: the demo catalog, exactly its price list", () => {
    expect(DEFAULT_CATALOG_PATH).toBe(catalogFile("kolekt.yaml"));
    expect(existsSync(DEFAULT_CATALOG_PATH)).toBe(true);
    const kolekt = loadCatalog();
    const plans = ["free", "pro", "business", "enterprise", "pay_as_you_go"];
    expect(kolekt.plans.map((p) => p.key)).toEqual(plans);
    expect(kolekt.default_plan).toBe("free");
    expect(plans.map((key) => plan(kolekt, key).price)).toEqual([
      { month: "0" },
      { month: "9.99" },
      { month: "29.99" },
      { month: "99.99" },
      { month: "0" },
    ]);
    expect(limits(kolekt, plans, "kolekts")).toEqual([10, 100, 1000, 10000, null]);
    expect(plan(kolekt, "pro").entitlements.kolekts).toEqual({ limit: 100, overage: "block" });
    expect(plan(kolekt, "pro").entitlements.api_requests).toEqual({
      limit: 100,
      window: "1m",
      window_ms: 60_000,
    });
    expect(limits(kolekt, plans, "api_requests")).toEqual([10, 100, 500, 2000, 100]);
    expect(across(kolekt, plans, "premium_templates")).toEqual([false, true, true, true, true]);
    expect(across(kolekt, plans, "remove_ads")).toEqual([false, true, true, true, true]);
    expect(across(kolekt, plans, "zapier_integration")).toEqual([true, true, true, true, true]);
    expect(across(kolekt, plans, "slack_integration")).toEqual([false, true, true, true, true]);
    expect(across(kolekt, plans, "custom_webhook")).toEqual([false, false, true, true, false]);
    expect(across(kolekt, plans, "white_label")).toEqual([false, false, true, true, false]);
    expect(across(kolekt, plans, "sla")).toEqual([false, false, false, true, false]);
    const kolekts = kolekt.features.find((f) => f.key === "kolekts");
    expect(kolekts).toMatchObject({
      type: "metered",
      meter: "kolekts",
      thresholds: [80, 100],
      on_unavailable: "closed",
    });
    expect(plan(kolekt, "pay_as_you_go").charges).toEqual([
      {
        meter: "kolekts",
        model: "volume",
        min_amount: null,
        max_amount: null,
        tiers: [
          { up_to: "1000", unit_amount: "0.10", flat_amount: "0" },
          { up_to: null, unit_amount: "0.09", flat_amount: "0" },
        ],
      },
      { meter: "api_calls", model: "standard", unit_amount: "0.05", min_amount: null, max_amount: null },
    ]);
  });

  it("Content Creation: uploads, platforms and annual prices", () => {
    const cc = loadCatalog(catalogFile("content-creation.yaml"));
    const plans = ["free", "pro", "enterprise"];
    expect(plans.map((key) => plan(cc, key).price)).toEqual([
      { month: "0" },
      { month: "29", year: "290" },
      { month: "99", year: "990" },
    ]);
    expect(limits(cc, plans, "uploads")).toEqual([10, 100, null]);
    expect(limits(cc, plans, "platforms")).toEqual([1, 3, null]);
    expect(cc.features.find((f) => f.key === "uploads")).toMatchObject({
      meter: "uploads",
      thresholds: [80, 100],
    });
    expect(across(cc, plans, "api_access")).toEqual([false, false, true]);
    expect(across(cc, plans, "custom_ai_prompts")).toEqual([false, true, true]);
  });

  it("HLPFL: profiles, links per profile and click analytics", () => {
    const hlpfl = loadCatalog(catalogFile("hlpfl.yaml"));
    const plans = ["free", "artist", "business", "enterprise"];
    expect(plans.map((key) => plan(hlpfl, key).price.month)).toEqual(["0", "9", "29", "99"]);
    expect(limits(hlpfl, plans, "profiles")).toEqual([1, 3, 10, null]);
    expect(limits(hlpfl, plans, "links_per_profile")).toEqual([5, null, null, null]);
    expect(limits(hlpfl, plans, "click_analytics")).toEqual([100, null, null, null]);
    expect(across(hlpfl, plans, "remove_branding")).toEqual([false, true, true, true]);
    expect(across(hlpfl, plans, "custom_domains")).toEqual([false, false, true, true]);
    expect(across(hlpfl, plans, "sla")).toEqual([false, false, false, true]);
  });

  it("Trendit: monthly limits and data retention", () => {
    const trendit = loadCatalog(catalogFile("trendit.yaml"));
    const plans = ["free", "pro", "enterprise"];
    expect(plans.map((key) => plan(trendit, key).price.month)).toEqual(["0", "29", "299"]);
    expect(limits(trendit, plans, "api_calls")).toEqual([100, 10_000, 100_000]);
    expect(limits(trendit, plans, "exports")).toEqual([5, 100, 1000]);
    expect(limits(trendit, plans, "sentiment_analyses")).toEqual([50, 2000, 20_000]);
    expect(plans.map((key) => plan(trendit, key).data_retention_days)).toEqual([30, 365, null]);
    expect(trendit.meters.find((m) => m.key === "sentiment_analyses")?.aggregation).toBe("sum");
  });
});

describe("broken catalogs", () => {
  const broken = `currency: USD
default_plan: free
meters: [{ key: calls, name: Calls, aggregation: count }]
features:
  - { key: calls, type: metered }
  - { key: seats, type: limit }
plans:
  - key: free
    name: Free
    pirce: { month: "0" }
    entitlements: { seatz: 1, seats: -1 }
  - key: pro
    name: Pro
    price: { month: "9" }
    charges:
      - meter: calls
        model: graduated
        tiers: [{ up_to: 100, unit_amount: "0.1" }, { up_to: 50, unit_amount: "0.2" }, { up_to: null }]
      - { meter: ghost, model: standard, unit_amount: "1", min_amount: "5", max_amount: "2" }
`;

  it("lists every problem at once, each with its path", () => {
    const errors = errorsOf(broken);
    expect(errors).toEqual(
      expect.arrayContaining([
        { path: "features[0].meter", message: "is required" },
        { path: "plans[0].price", message: "is required" },
        { path: "plans[0].pirce", message: 'unknown field (did you mean "price"?)' },
        { path: "plans[0].entitlements.seatz", message: 'unknown feature "seatz" (known: calls, seats)' },
        { path: "plans[0].entitlements.seats", message: "must not be negative" },
        {
          path: "plans[1].charges[0].tiers[1].up_to",
          message: "tiers must be in strictly increasing order of up_to (50 follows 100)",
        },
        { path: "plans[1].charges[1].meter", message: 'unknown meter "ghost" (known: calls)' },
        { path: "plans[1].charges[1].min_amount", message: "must not exceed max_amount (5 > 2)" },
      ]),
    );
    expect(errors).toHaveLength(8);
  });

  it("loadCatalog throws one error naming every problem", () => {
    const dir = mkdtempSync(join(tmpdir(), "catalog-"));
    const file = join(dir, "broken.yml");
    writeFileSync(file, broken);
    expect(() => loadCatalog(file)).toThrow(/8 problems:\n {2}features\[0\]\.meter: is required\n/);
    expect(() => loadCatalog(join(dir, "missing.yaml"))).toThrow(/no such file/);
  });

  it("names the line of a YAML syntax error", () => {
    const errors = errorsOf("currency: USD\nplans:\n  - key: free\n    name: [Free\n");
    expect(errors).toHaveLength(1);
    expect(errors[0]?.path).toBe("(syntax)");
    expect(errors[0]?.message).toMatch(/^YAML syntax error at line \d+, column \d+: /);
    expect(errorsOf('{\n  "currency": "USD",\n  "plans": [,]\n}', "json")[0]?.message).toMatch(
      /^JSON syntax error at line 3, column 13: /,
    );
  });

  it("rejects duplicate keys, both in the catalog and in YAML mappings", () => {
    const text = `currency: USD
default_plan: free
meters:
  - { key: calls, name: Calls, aggregation: count }
  - { key: calls, name: Again, aggregation: sum }
plans:
  - { key: free, name: Free, price: { month: "0" } }
  - { key: free, name: Again, price: { month: "1" } }
`;
    expect(errorsOf(text)).toEqual([
      { path: "meters[1].key", message: 'duplicate meter key "calls" (first used by meters[0])' },
      { path: "plans[1].key", message: 'duplicate plan key "free" (first used by plans[0])' },
    ]);
    expect(errorsOf(`${text}currency: EUR\n`)[0]?.message).toMatch(
      /line 9, column 1: Map keys must be unique/,
    );
  });

  it("requires a free or trialled default plan", () => {
    const paid = base().replace('price: { month: "0" }', 'price: { month: "5" }');
    expect(errorsOf(paid).map((e) => e.path)).toEqual(["default_plan"]);
    expect(parseCatalog(paid.replace('month: "5" }', 'month: "5" }\n    trial_days: 14'), "yaml").ok).toBe(
      true,
    );
  });
});

describe("decimals and normalisation", () => {
  it("turns YAML numbers into exact decimal strings and keeps quoted strings as written", () => {
    const text = base(`    trial_days: 7
    entitlements: { calls: 5 }
    charges: [{ meter: calls, model: package, package_size: 1000, package_amount: 0.1 }]
`).replace('price: { month: "0" }', 'price: { month: 9.99, year: "99.90" }');
    const result = parseCatalog(text, "yaml");
    if (!result.ok) throw new Error(JSON.stringify(result.errors));
    const free = plan(result.catalog, "free");
    expect(free.price).toEqual({ month: "9.99", year: "99.90" });
    expect(free.charges[0]).toMatchObject({ package_size: "1000", package_amount: "0.1", free_units: "0" });
    expect(free.entitlements.calls).toEqual({ limit: 5, overage: "block" });
    expect(result.summary).toBe("1 meter, 1 feature, 1 plan");
  });

  it("rejects malformed, negative, non-finite and over-precise amounts", () => {
    for (const [month, message] of [
      ['"1e3"', 'must be a plain decimal like "9.99" (got 1e3)'],
      ["-1", "must be at least 0 (got -1)"],
      [".inf", 'must be a decimal string like "9.99"'],
      [
        "0.12345678901234567",
        "0.12345678901234566 has too many digits to be exact as a number; write it as a quoted string",
      ],
    ]) {
      expect(errorsOf(base().replace('month: "0"', `month: ${month}`))).toEqual([
        { path: "plans[0].price.month", message },
      ]);
    }
  });

  it("compares decimals exactly", () => {
    expect(compareDecimal("0.10", "0.1")).toBe(0);
    expect(compareDecimal("-2", "1.5")).toBe(-1);
    expect(compareDecimal("100000000000000000001", "100000000000000000000.99")).toBe(1);
  });

  it("reads JSON catalogs by extension", () => {
    const dir = mkdtempSync(join(tmpdir(), "catalog-"));
    const file = join(dir, "c.json");
    writeFileSync(
      file,
      JSON.stringify({
        currency: "EUR",
        default_plan: "a",
        plans: [{ key: "a", name: "A", price: { year: 0 } }],
      }),
    );
    const result = validateCatalogFile(file);
    expect(result.ok && result.catalog.plans[0]?.price).toEqual({ year: "0" });
  });
});

describe("tollgate catalog validate", () => {
  const cli = (file: string) =>
    spawnSync("npx", ["tsx", "src/cli.ts", "catalog", "validate", file], { cwd: root, encoding: "utf8" });

  it("accepts a valid catalog", () => {
    const run = cli("catalogs/kolekt.yaml");
    expect(run.status).toBe(0);
    expect(run.stdout).toContain("catalogs/kolekt.yaml: valid (2 meters, 15 features, 5 plans)");
  });

  it("exits 1 and prints every problem with its path", () => {
    const file = join(mkdtempSync(join(tmpdir(), "catalog-")), "broken.yaml");
    writeFileSync(file, broken());
    const run = cli(file);
    expect(run.status).toBe(1);
    expect(run.stderr).toContain("3 problem(s)");
    for (const path of ["currency:", "plans[0].pirce:", "plans[0].entitlements.nope:"]) {
      expect(run.stderr).toContain(`  ${path}`);
    }
  });

  function broken() {
    return base("    entitlements: { nope: true }\n")
      .replace("currency: USD", "currency: usd")
      .replace("price:", 'pirce: { month: "0" }\n    price:');
  }
});
