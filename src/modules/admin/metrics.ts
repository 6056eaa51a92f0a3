import { createRoute, z } from "@hono/zod-openapi";
import { sql } from "drizzle-orm";
import type { Deps } from "../../deps.js";
import { AppError } from "../../lib/errors.js";
import { errorResponses, jsonResponse } from "../../lib/http.js";
import { createApiRouter, platformAdminOnly } from "../auth/caller.js";
import { formatMoney, Money } from "../billing/money.js";

/**
 * Revenue metrics for the operator, computed from `subscription_history` (every state each
 * subscription has been in, written with each change), so any past date can be asked about. The
 * definitions, also in docs/dashboard.md:
 *
 * - an org is **paying** at an instant when its subscription is `active` or `past_due` on a plan
 *   whose base price is above zero (trials and free plans are not);
 * - **MRR** is the sum of paying subscriptions' base price per month (annual prices ÷ 12), list
 *   prices before coupons and credits; **ARR** is 12 × MRR;
 * - **active subscriptions**: paying orgs at `to`;
 * - **churn rate**: of the orgs paying at `from`, the share not paying at `to`;
 * - **conversion rate**: of the orgs not paying at `from` (or created since), the share paying at `to`;
 * - **ARPU**: MRR ÷ active subscriptions at `to`;
 * - **LTV**: ARPU ÷ monthly churn (the churn rate scaled to 30 days); null while nobody churned.
 */

interface State {
  orgId: string;
  planKey: string;
  status: string;
  mrr: Money;
}

const PAYING = new Set(["active", "past_due"]);
const DAY = 86_400_000;
const MAX_WINDOW_MS = 5 * 366 * DAY;

/** Each org's latest state at `at` (orgs created later have none). */
async function statesAt(deps: Deps, at: Date): Promise<Map<string, State>> {
  const rows = await deps.database.query<{ org_id: string; plan_key: string; status: string; mrr: string }>(
    sql`select distinct on (org_id) org_id, plan_key, status, mrr::text as mrr
        from subscription_history where at <= ${at.toISOString()}::timestamptz
        order by org_id, at desc, seq desc`,
  );
  return new Map(
    rows.map((row) => [
      row.org_id,
      { orgId: row.org_id, planKey: row.plan_key, status: row.status, mrr: new Money(row.mrr) },
    ]),
  );
}

const paying = (state: State | undefined) =>
  state !== undefined && PAYING.has(state.status) && state.mrr.gt(0);

function mrrOf(states: Map<string, State>): { mrr: Money; count: number } {
  let mrr = new Money(0);
  let count = 0;
  for (const state of states.values()) {
    if (!paying(state)) continue;
    mrr = mrr.plus(state.mrr);
    count++;
  }
  return { mrr, count };
}

/**
 * Where the MRR series is sampled: `from`, then each UTC midnight (windows up to 92 days) or each
 * first of the month (longer ones) before `to`, then `to`.
 */
function seriesPoints(from: Date, to: Date): Date[] {
  const daily = to.getTime() - from.getTime() <= 92 * DAY;
  const points = [from];
  const cursor = daily
    ? new Date(Date.UTC(from.getUTCFullYear(), from.getUTCMonth(), from.getUTCDate() + 1))
    : new Date(Date.UTC(from.getUTCFullYear(), from.getUTCMonth() + 1, 1));
  while (cursor < to) {
    points.push(new Date(cursor));
    if (daily) cursor.setUTCDate(cursor.getUTCDate() + 1);
    else cursor.setUTCMonth(cursor.getUTCMonth() + 1);
  }
  points.push(to);
  return points;
}

/**
 * MRR at each point in one pass over the history up to the last point: every org's state is
 * replayed in time order and the totals read off as each point is passed.
 */
async function mrrSeries(deps: Deps, points: Date[], money: (value: Money) => string) {
  const last = points.at(-1) ?? new Date();
  const rows = await deps.database.query<{ org_id: string; at_ms: string; status: string; mrr: string }>(
    sql`select org_id, (extract(epoch from at) * 1000)::bigint::text as at_ms, status, mrr::text as mrr
        from subscription_history where at <= ${last.toISOString()}::timestamptz order by at, seq`,
  );
  const states = new Map<string, State>();
  const series: { at: string; mrr: string; active_subscriptions: number }[] = [];
  let next = 0;
  const flush = (until: number) => {
    for (; next < points.length && (points[next] as Date).getTime() < until; next++) {
      const { mrr, count } = mrrOf(states);
      series.push({ at: (points[next] as Date).toISOString(), mrr: money(mrr), active_subscriptions: count });
    }
  };
  for (const row of rows) {
    // Points strictly before this change see the state before it (a change at a point counts at it).
    flush(Number(row.at_ms));
    states.set(row.org_id, { orgId: row.org_id, planKey: "", status: row.status, mrr: new Money(row.mrr) });
  }
  flush(Number.POSITIVE_INFINITY);
  return series;
}

export async function revenueMetrics(deps: Deps, from: Date, to: Date) {
  const currency = deps.catalog.currency;
  const money = (value: Money) => formatMoney(value, currency);
  const ratio = (value: Money | null) => (value === null ? null : value.toDecimalPlaces(4).toNumber());
  const [before, after] = await Promise.all([statesAt(deps, from), statesAt(deps, to)]);
  const now = mrrOf(after);

  const payingBefore = [...before.values()].filter(paying);
  const churned = payingBefore.filter((state) => !paying(after.get(state.orgId))).length;
  const churn = payingBefore.length > 0 ? new Money(churned).dividedBy(payingBefore.length) : null;
  // Orgs deleted by `to` are no longer candidates (their subscription was canceled with them).
  const deleted = new Set(
    (
      await deps.database.query<{ id: string }>(
        sql`select id from orgs where deleted_at is not null and deleted_at <= ${to.toISOString()}::timestamptz`,
      )
    ).map((row) => row.id),
  );
  const candidates = [...after.keys()].filter((org) => !deleted.has(org) && !paying(before.get(org)));
  const converted = candidates.filter((org) => paying(after.get(org))).length;
  const conversion = candidates.length > 0 ? new Money(converted).dividedBy(candidates.length) : null;
  const arpu = now.count > 0 ? now.mrr.dividedBy(now.count) : null;
  const windowDays = (to.getTime() - from.getTime()) / DAY;
  const monthlyChurn = churn === null ? null : Money.min(1, churn.times(30).dividedBy(windowDays));
  const ltv = arpu && monthlyChurn?.gt(0) ? arpu.dividedBy(monthlyChurn) : null;

  const byPlan: Record<string, { subscriptions: number; mrr: string }> = {};
  const sums = new Map<string, { count: number; mrr: Money }>();
  for (const state of after.values()) {
    if (!paying(state)) continue;
    const sum = sums.get(state.planKey) ?? { count: 0, mrr: new Money(0) };
    sums.set(state.planKey, { count: sum.count + 1, mrr: sum.mrr.plus(state.mrr) });
  }
  for (const [plan, sum] of [...sums].sort(([a], [b]) => a.localeCompare(b))) {
    byPlan[plan] = { subscriptions: sum.count, mrr: money(sum.mrr) };
  }

  const series = await mrrSeries(deps, seriesPoints(from, to), money);

  return {
    from: from.toISOString(),
    to: to.toISOString(),
    currency,
    mrr: money(now.mrr),
    arr: money(now.mrr.times(12)),
    active_subscriptions: now.count,
    churn_rate: ratio(churn),
    conversion_rate: ratio(conversion),
    arpu: arpu === null ? null : money(arpu),
    ltv: ltv === null ? null : money(ltv),
    by_plan: byPlan,
    series,
  };
}

const Metrics = z
  .object({
    from: z.string(),
    to: z.string(),
    currency: z.string(),
    mrr: z.string().openapi({
      description: "Monthly recurring revenue at `to`: paying subscriptions' base price per month.",
    }),
    arr: z.string().openapi({ description: "12 × MRR." }),
    active_subscriptions: z.number().int().openapi({ description: "Paying subscriptions at `to`." }),
    churn_rate: z.number().nullable().openapi({
      description: "Of the orgs paying at `from`, the share not paying at `to` (null: none were).",
    }),
    conversion_rate: z.number().nullable().openapi({
      description: "Of the orgs not paying at `from` (or created since), the share paying at `to`.",
    }),
    arpu: z.string().nullable().openapi({ description: "MRR ÷ active subscriptions." }),
    ltv: z.string().nullable().openapi({ description: "ARPU ÷ monthly churn; null while nobody churned." }),
    by_plan: z.record(z.string(), z.object({ subscriptions: z.number().int(), mrr: z.string() })),
    series: z.array(z.object({ at: z.string(), mrr: z.string(), active_subscriptions: z.number().int() })),
  })
  .openapi("RevenueMetrics");

const security: Record<string, string[]>[] = [{ operator: [] }, { bearer: [] }];

export function metricsRoutes() {
  const router = createApiRouter();
  router.openapi(
    createRoute({
      method: "get",
      path: "/v1/admin/metrics",
      tags: ["Admin"],
      summary: "Revenue metrics: MRR, ARR, subscriptions, churn, conversion, ARPU, LTV, and MRR over time",
      description:
        "Definitions in docs/dashboard.md. The window ends at `to` (default: now, by the server's clock) and starts at `from`, or `days` before `to` (default 30 days).",
      security,
      middleware: platformAdminOnly,
      request: {
        query: z.object({
          from: z.iso.datetime({ offset: true }).optional(),
          to: z.iso.datetime({ offset: true }).optional(),
          days: z.coerce
            .number()
            .int()
            .min(1)
            .max(1826)
            .optional()
            .openapi({ description: "The window's length in days, ending at `to`; instead of `from`." }),
        }),
      },
      responses: { 200: jsonResponse(Metrics, "The metrics"), ...errorResponses(400, 401, 403) },
    }),
    async (c) => {
      const deps = c.get("deps");
      const query = c.req.valid("query");
      const to = query.to ? new Date(query.to) : deps.clock.now();
      if (query.from !== undefined && query.days !== undefined) {
        throw new AppError("validation_failed", "Give `from` or `days`, not both.", {
          errors: [
            { field: "days", message: "cannot be combined with from", code: "conflict", location: "query" },
          ],
        });
      }
      const from = query.from ? new Date(query.from) : new Date(to.getTime() - (query.days ?? 30) * DAY);
      if (from >= to || to.getTime() - from.getTime() > MAX_WINDOW_MS) {
        throw new AppError("validation_failed", "`from` must be before `to`, at most five years apart.", {
          errors: [
            {
              field: "from",
              message: "must be before to, within five years",
              code: "invalid_range",
              location: "query",
            },
          ],
        });
      }
      return c.json(await revenueMetrics(deps, from, to), 200);
    },
  );
  return router;
}
