import { useEffect, useId, useState } from "react";
import { Link } from "wouter";
import { Loading } from "../App";
import { api, problemMessage, type Schemas } from "../api/client";
import { ErrorLine } from "../components/ErrorLine";
import { TableWrap } from "../components/TableWrap";

type Plan = Schemas["Plan"];
type Catalog = {
  data: Plan[];
  features: { key: string; name: string; type: string; meter: string | null }[];
  meters: { key: string; name: string }[];
};
type Interval = "month" | "year";

/** The public pricing page, generated from the catalog: plans, a comparison, and an estimator. */
export function Pricing() {
  const [catalog, setCatalog] = useState<Catalog | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [interval, setInterval] = useState<Interval>("month");
  useEffect(() => {
    void api
      .GET("/v1/plans")
      .then(({ data, error }) => (data ? setCatalog(data) : setError(problemMessage(error))));
  }, []);
  if (error)
    return (
      <main>
        <p className="error" role="alert">
          {error}
        </p>
      </main>
    );
  if (!catalog) return <Loading label="Loading plans…" />;
  const annual = catalog.data.some((plan) => plan.price.year !== undefined);
  const usageBased = catalog.data.filter((plan) => plan.charges.length > 0);
  return (
    <main>
      <h1>Pricing</h1>
      {annual && (
        <fieldset className="toggle">
          <legend>Billing period</legend>
          {(["month", "year"] as const).map((value) => (
            <label key={value} className="check">
              <input
                type="radio"
                name="interval"
                value={value}
                checked={interval === value}
                onChange={() => setInterval(value)}
              />{" "}
              {value === "month" ? "Monthly" : "Annual"}
            </label>
          ))}
        </fieldset>
      )}
      <ul className="cards" aria-label="Plans">
        {catalog.data.map((plan) => (
          <li key={plan.key} className="card">
            <h2>{plan.name}</h2>
            <p className="figure">{priceOf(plan, interval)}</p>
            {plan.description && <p className="muted">{plan.description}</p>}
            {plan.trial_days > 0 && <p>{plan.trial_days}-day free trial</p>}
            <Link href={`/signup?plan=${plan.key}&interval=${interval}`} className="button">
              Get started<span className="visually-hidden"> with {plan.name}</span>
            </Link>
          </li>
        ))}
      </ul>

      <h2>Compare plans</h2>
      <TableWrap label="What each plan includes">
        <table className="table">
          <caption className="visually-hidden">What each plan includes</caption>
          <thead>
            <tr>
              <th scope="col">Feature</th>
              {catalog.data.map((plan) => (
                <th key={plan.key} scope="col">
                  {plan.name}
                </th>
              ))}
            </tr>
          </thead>
          <tbody>
            {catalog.features.map((feature) => (
              <tr key={feature.key}>
                <th scope="row">{feature.name}</th>
                {catalog.data.map((plan) => (
                  <td key={plan.key}>{grant(plan.entitlements[feature.key], feature.type)}</td>
                ))}
              </tr>
            ))}
          </tbody>
        </table>
      </TableWrap>

      {usageBased.length > 0 && <Estimator plans={usageBased} meters={catalog.meters} />}
    </main>
  );
}

function priceOf(plan: Plan, interval: Interval): string {
  const amount = interval === "year" ? plan.price.year : plan.price.month;
  if (amount === undefined) {
    return plan.price.month !== undefined
      ? `${plan.currency} ${plan.price.month} / month`
      : `${plan.currency} ${plan.price.year} / year`;
  }
  if (Number(amount) === 0) return plan.charges.length > 0 ? "Pay as you go" : "Free";
  return `${plan.currency} ${amount} / ${interval}`;
}

/** One plan's entitlement to one feature, in words. */
function grant(value: unknown, type: string): string {
  if (value === undefined || value === false) return "—";
  if (value === true) return "✓";
  if (value === null) return "Unlimited";
  if (typeof value === "number") return value.toLocaleString("en");
  const object = value as { limit?: number | null; window?: string; overage?: string };
  if (type === "rate")
    return object.limit != null ? `${object.limit.toLocaleString("en")} per ${object.window}` : "—";
  if (object.limit === null || object.limit === undefined) return "Unlimited";
  return `${object.limit.toLocaleString("en")} / month${object.overage === "allow" ? ", then billed" : ""}`;
}

/** What a month of usage would cost on a usage-based plan, computed by the server's pricing engine. */
function Estimator({ plans, meters }: { plans: Plan[]; meters: { key: string; name: string }[] }) {
  const planId = useId();
  const [planKey, setPlanKey] = useState(plans[0]?.key ?? "");
  const [result, setResult] = useState<Schemas["PricingEstimate"] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const plan = plans.find((p) => p.key === planKey);
  const charged = meters.filter((meter) =>
    plan?.charges.some((charge) => (charge as { meter?: string }).meter === meter.key),
  );
  const submit = async (event: React.FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    // Quantities go as decimal strings: the engine is exact, and a float would not be.
    const usage = Object.fromEntries(charged.map((meter) => [meter.key, String(form.get(meter.key) || "0")]));
    setError(null);
    const { data, error } = await api.POST("/v1/pricing/estimate", { body: { plan: planKey, usage } });
    if (!data) {
      setResult(null);
      return setError(problemMessage(error));
    }
    setResult(data);
  };
  return (
    <section className="panel" aria-labelledby={`${planId}-title`}>
      <h2 id={`${planId}-title`}>Estimate your bill</h2>
      <form onSubmit={submit}>
        <div className="field">
          <label htmlFor={planId}>Plan</label>
          <select id={planId} value={planKey} onChange={(event) => setPlanKey(event.target.value)}>
            {plans.map((p) => (
              <option key={p.key} value={p.key}>
                {p.name}
              </option>
            ))}
          </select>
        </div>
        {charged.map((meter) => (
          <MeterInput key={meter.key} meter={meter} />
        ))}
        <button type="submit">Estimate</button>
      </form>
      <ErrorLine error={error} />
      {result && (
        <div role="status" aria-live="polite">
          <table className="table">
            <caption className="visually-hidden">The estimate</caption>
            <tbody>
              {result.lines.map((line) => (
                <tr key={`${line.meter}-${line.kind}`}>
                  <td>{line.meter_name}</td>
                  <td className="num">{line.amount}</td>
                </tr>
              ))}
              <tr>
                <th scope="row">Usage total</th>
                <td className="num">
                  <strong>
                    {result.currency} {result.total}
                  </strong>
                </td>
              </tr>
            </tbody>
          </table>
          {result.base_fee && Number(result.base_fee.amount) > 0 && (
            <p className="muted">
              Plus the base fee of {result.currency} {result.base_fee.amount} per {result.base_fee.interval}.
            </p>
          )}
        </div>
      )}
    </section>
  );
}

function MeterInput({ meter }: { meter: { key: string; name: string } }) {
  const id = useId();
  return (
    <div className="field">
      <label htmlFor={id}>{meter.name} per month</label>
      <input id={id} name={meter.key} type="number" min={0} step="any" defaultValue={0} inputMode="decimal" />
    </div>
  );
}
