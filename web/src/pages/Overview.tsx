import { useEffect, useState } from "react";
import { Redirect } from "wouter";
import { Loading } from "../App";
import { api, problemMessage, type Schemas } from "../api/client";
import { UsageChart } from "../components/UsageChart";

type Entitlement = Schemas["Entitlement"];

/** Usage against limits, per feature, with warnings at 80% and 100%. */
export function Overview({ orgId }: { orgId?: string }) {
  const [state, setState] = useState<
    | { status: "loading" }
    | { status: "error"; message: string }
    | { status: "ready"; entitlements: Schemas["Entitlements"] }
    | { status: "no-org" }
    | { status: "first-org"; id: string }
  >({ status: "loading" });

  useEffect(() => {
    let cancelled = false;
    const load = async () => {
      if (!orgId) {
        const { data } = await api.GET("/v1/auth/me");
        const first = data?.orgs[0]?.id;
        if (!cancelled) setState(first ? { status: "first-org", id: first } : { status: "no-org" });
        return;
      }
      const { data, error } = await api.GET("/v1/orgs/{org}/entitlements", {
        params: { path: { org: orgId } },
      });
      if (cancelled) return;
      setState(
        data ? { status: "ready", entitlements: data } : { status: "error", message: problemMessage(error) },
      );
    };
    setState({ status: "loading" });
    load().catch(
      () => !cancelled && setState({ status: "error", message: "The server could not be reached." }),
    );
    return () => {
      cancelled = true;
    };
  }, [orgId]);

  switch (state.status) {
    case "loading":
      return <Loading label="Loading usage…" />;
    case "first-org":
      return <Redirect to={`/orgs/${state.id}`} replace />;
    case "no-org":
      return <p>You are not a member of any organization yet.</p>;
    case "error":
      return (
        <p className="error" role="alert">
          {state.message}
        </p>
      );
    case "ready":
      return <Usage entitlements={state.entitlements} />;
  }
}

function Usage({ entitlements }: { entitlements: Schemas["Entitlements"] }) {
  const metered = entitlements.features.filter((f) => f.type === "metered" || f.type === "limit");
  const other = entitlements.features.filter((f) => f.type === "boolean" || f.type === "rate");
  return (
    <>
      <h1>Overview</h1>
      <p className="muted">
        Plan <strong>{entitlements.plan}</strong> · period {day(entitlements.current_period_start)} to{" "}
        {day(entitlements.current_period_end)}
      </p>
      {metered.length === 0 ? (
        <p>This plan has no usage limits.</p>
      ) : (
        <ul className="cards" aria-label="Usage">
          {metered.map((feature) => (
            <UsageCard
              key={feature.feature}
              feature={feature}
              orgId={entitlements.org_id}
              from={entitlements.current_period_start}
              to={entitlements.current_period_end}
            />
          ))}
        </ul>
      )}
      {other.length > 0 && (
        <>
          <h2>Included</h2>
          <ul className="included">
            {other.map((feature) => (
              <li key={feature.feature}>
                <span aria-hidden="true">{feature.enabled ? "✓" : "—"}</span> {feature.name}
                {feature.type === "rate" && feature.limit !== null && feature.window
                  ? ` (${feature.limit} per ${feature.window})`
                  : ""}
                {!feature.enabled && <span className="visually-hidden"> (not included)</span>}
              </li>
            ))}
          </ul>
        </>
      )}
    </>
  );
}

const day = (iso: string) => new Date(iso).toISOString().slice(0, 10);

function UsageCard({
  feature,
  orgId,
  from,
  to,
}: {
  feature: Entitlement;
  orgId: string;
  from: string;
  to: string;
}) {
  const used = feature.used ?? 0;
  const limit = feature.limit;
  const share = limit ? Math.min(1, used / limit) : 0;
  const level = limit === null ? "ok" : used >= limit ? "full" : used >= limit * 0.8 ? "warn" : "ok";
  return (
    <li className={`card ${level}`}>
      <h2>{feature.name}</h2>
      <p className="figure">
        {used.toLocaleString("en")}{" "}
        <span className="muted">/ {limit === null ? "unlimited" : limit.toLocaleString("en")}</span>
      </p>
      {limit !== null && (
        // Green below 80%, yellow from 80%, red at the limit (the browser colours a meter by its
        // low/high bands; the bands end just below each threshold so the threshold itself is in).
        <meter
          min={0}
          max={limit}
          low={limit * 0.8 - 1e-9}
          high={limit - 1e-9}
          optimum={0}
          value={Math.min(used, limit)}
          aria-label={`${feature.name} used`}
        >
          {Math.round(share * 100)}%
        </meter>
      )}
      {level === "warn" && (
        <p className="warning" role="status">
          You have used {Math.round(share * 100)}% of this limit.
        </p>
      )}
      {level === "full" && (
        <p className="warning full" role="status">
          Limit reached{feature.overage === "allow" ? ": further use is billed as overage." : "."}
        </p>
      )}
      {feature.resets_at && <p className="muted">Resets {day(feature.resets_at)}</p>}
      {feature.type === "metered" && feature.meter && (
        <UsageChart orgId={orgId} meter={feature.meter} name={feature.name} from={from} to={to} />
      )}
    </li>
  );
}
