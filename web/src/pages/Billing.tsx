import { useCallback, useEffect, useId, useRef, useState } from "react";
import { useSearchParams } from "wouter";
import { Loading } from "../App";
import { api, download, problemMessage, type Schemas } from "../api/client";
import { DataTable } from "../components/DataTable";
import { ErrorLine } from "../components/ErrorLine";

type Plan = Schemas["Plan"];
type Preview = Schemas["SubscriptionChangePreview"];
type Invoice = Schemas["Invoice"];

/** The plan, the other plans with the exact preview of a change, and the invoices with their PDFs. */
export function Billing({ orgId }: { orgId: string }) {
  const [subscription, setSubscription] = useState<Schemas["Subscription"] | null>(null);
  const [plans, setPlans] = useState<Plan[] | null>(null);
  const [invoices, setInvoices] = useState<Invoice[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [preview, setPreview] = useState<{ plan: Plan; quote: Preview } | null>(null);
  const [interval, setInterval] = useState<"month" | "year">("month");
  const [extras, setExtras] = useState<{
    coupons: Schemas["AppliedCoupon"][];
    credits: Schemas["Credits"];
  } | null>(null);
  const [busy, setBusy] = useState(false);
  // A new preview takes the focus once (not on every re-render), so keyboard users land on it.
  const previewHeading = useRef<HTMLHeadingElement>(null);
  useEffect(() => {
    if (preview) previewHeading.current?.focus();
  }, [preview]);
  // A denied check's upgrade URL lands here with ?feature=…&plan=…: the plan that gives more.
  const [params] = useSearchParams();
  const suggested = params.get("plan");
  const limited = params.get("feature");
  const wantedInterval = params.get("interval");

  const load = useCallback(async () => {
    const path = { org: orgId };
    const [sub, catalog, list] = await Promise.all([
      api.GET("/v1/orgs/{org}/subscription", { params: { path } }),
      api.GET("/v1/plans"),
      api.GET("/v1/orgs/{org}/invoices", { params: { path } }),
    ]);
    if (!sub.data || !catalog.data || !list.data) {
      setError(problemMessage(sub.error ?? catalog.error ?? list.error));
      return;
    }
    setSubscription(sub.data);
    // The interval picked on the pricing page, until the visitor changes it here.
    setInterval(wantedInterval === "month" || wantedInterval === "year" ? wantedInterval : sub.data.interval);
    setPlans(catalog.data.data);
    setInvoices(list.data.data);
    const [coupons, credits] = await Promise.all([
      api.GET("/v1/orgs/{org}/coupons", { params: { path } }),
      api.GET("/v1/orgs/{org}/credits", { params: { path } }),
    ]);
    if (coupons.data && credits.data) setExtras({ coupons: coupons.data.data, credits: credits.data });
  }, [orgId, wantedInterval]);
  useEffect(() => {
    void load();
  }, [load]);

  const choose = async (plan: Plan) => {
    setError(null);
    setBusy(true);
    const { data, error } = await api.POST("/v1/orgs/{org}/subscription/preview", {
      params: { path: { org: orgId } },
      body: { plan: plan.key, ...(sells(plan, interval) ? { interval } : {}) },
    });
    setBusy(false);
    if (!data) return setError(problemMessage(error));
    setPreview({ plan, quote: data });
  };

  const confirm = async () => {
    if (!preview) return;
    setBusy(true);
    const { data, error } = await api.POST("/v1/orgs/{org}/subscription", {
      params: { path: { org: orgId } },
      body: { plan: preview.plan.key, ...(sells(preview.plan, interval) ? { interval } : {}) },
    });
    setBusy(false);
    if (!data) return setError(problemMessage(error));
    if ("checkout_url" in data) {
      window.location.assign(data.checkout_url);
      return;
    }
    setPreview(null);
    await load();
  };

  if (error && !subscription) {
    return (
      <p className="error" role="alert">
        {error}
      </p>
    );
  }
  if (!subscription || !plans || !invoices) return <Loading label="Loading billing…" />;
  return (
    <>
      <h1>Billing</h1>
      <section className="panel" aria-labelledby="current-plan">
        <h2 id="current-plan">Current plan: {subscription.plan_name}</h2>
        <p>
          {subscription.price ? `${subscription.price} per ${subscription.interval}` : "Free"} ·{" "}
          {subscription.status}
          {subscription.cancel_at_period_end ? " · ends at the period end" : ""}
        </p>
        <p className="muted">
          Current period {day(subscription.current_period_start)} to {day(subscription.current_period_end)}
        </p>
        {subscription.pending_change && (
          <p>
            Changes to {subscription.pending_change.plan} on {day(subscription.pending_change.effective_at)}.
          </p>
        )}
        <SubscriptionActions orgId={orgId} subscription={subscription} onChanged={load} onError={setError} />
      </section>
      {extras && <CouponsAndCredits orgId={orgId} extras={extras} onChanged={load} />}

      {suggested && limited && suggested !== subscription.plan && (
        <p className="panel suggestion" role="status">
          You have reached the limit of <strong>{limited}</strong> on your plan.{" "}
          {plans.find((plan) => plan.key === suggested)?.name ?? suggested} gives you more.
        </p>
      )}

      <h2>Plans</h2>
      {plans.some((plan) => plan.price.year !== undefined) && (
        <fieldset className="toggle">
          <legend>Billing period</legend>
          {(["month", "year"] as const).map((value) => (
            <label key={value} className="check">
              <input
                type="radio"
                name="interval"
                checked={interval === value}
                onChange={() => setInterval(value)}
              />{" "}
              {value === "month" ? "Monthly" : "Annual"}
            </label>
          ))}
        </fieldset>
      )}
      <ul className="cards" aria-label="Plans">
        {plans.map((plan) => (
          <li
            key={plan.key}
            className={`card ${plan.key === subscription.plan ? "current" : ""} ${plan.key === suggested ? "suggested" : ""}`}
            aria-describedby={plan.key === suggested ? "suggested-note" : undefined}
          >
            {plan.key === suggested && plan.key !== subscription.plan && (
              <p id="suggested-note" className="badge">
                {limited ? "Recommended for you" : "The plan you picked"}
              </p>
            )}
            <h3>{plan.name}</h3>
            <p className="figure">{priceLabel(plan, interval)}</p>
            {plan.description && <p className="muted">{plan.description}</p>}
            {plan.key === subscription.plan &&
            (subscription.interval === interval || !sells(plan, interval)) ? (
              <p>
                <strong>Your plan</strong>
              </p>
            ) : (
              <button type="button" disabled={busy} onClick={() => choose(plan)}>
                Switch to {plan.name}
              </button>
            )}
          </li>
        ))}
      </ul>

      {preview && (
        <section className="panel issued" aria-labelledby="preview-title">
          <h2 id="preview-title" tabIndex={-1} ref={previewHeading}>
            Switch to {preview.plan.name}:{" "}
            {preview.quote.timing === "now" ? "now" : `on ${day(preview.quote.effective_at)}`}
          </h2>
          {preview.quote.lines.length > 0 ? (
            <table className="table">
              <caption className="visually-hidden">What the change posts</caption>
              <tbody>
                {preview.quote.lines.map((line) => (
                  <tr key={`${line.description}-${line.amount}`}>
                    <td>{line.description}</td>
                    <td className="num">{line.amount}</td>
                  </tr>
                ))}
                <tr>
                  <th scope="row">Due now</th>
                  <td className="num">
                    <strong>
                      {preview.quote.currency} {preview.quote.amount_due}
                    </strong>
                  </td>
                </tr>
              </tbody>
            </table>
          ) : (
            <p>Nothing to pay now.</p>
          )}
          <button type="button" disabled={busy} onClick={confirm}>
            Confirm the switch
          </button>{" "}
          <button type="button" className="secondary" onClick={() => setPreview(null)}>
            Cancel
          </button>
        </section>
      )}
      <ErrorLine error={error} />

      <h2>Invoices</h2>
      {invoices.length === 0 ? (
        <p>No invoices yet.</p>
      ) : (
        <DataTable
          label="Invoices"
          rows={invoices}
          rowKey={(invoice) => invoice.id}
          columns={[
            { header: "Number", cell: (invoice) => invoice.number ?? "draft" },
            {
              header: "Period",
              cell: (invoice) => (
                <>
                  {day(invoice.period_start)} – {day(invoice.period_end)}
                </>
              ),
            },
            {
              header: "Total",
              className: "num",
              cell: (invoice) => (
                <>
                  {invoice.currency} {invoice.total}
                </>
              ),
            },
            {
              header: "Status",
              cell: (invoice) => (invoice.status === "finalized" ? "open" : invoice.status),
            },
            {
              header: "PDF",
              hideHeader: true,
              cell: (invoice) => <PdfButton orgId={orgId} invoice={invoice} />,
            },
          ]}
        />
      )}
    </>
  );
}

const day = (iso: string) => new Date(iso).toISOString().slice(0, 10);

/** Whether the plan is sold by this interval. */
const sells = (plan: Plan, interval: "month" | "year") => plan.price[interval] !== undefined;

function priceLabel(plan: Plan, interval: "month" | "year"): string {
  const price = plan.price[interval] ?? plan.price.month ?? plan.price.year;
  const per =
    plan.price[interval] !== undefined ? interval : plan.price.month !== undefined ? "month" : "year";
  return `${plan.currency} ${price} / ${per}`;
}

/** Cancel (at the period end, or now) or undo a scheduled cancellation or downgrade. */
function SubscriptionActions({
  orgId,
  subscription,
  onChanged,
  onError,
}: {
  orgId: string;
  subscription: Schemas["Subscription"];
  onChanged: () => Promise<void>;
  onError: (message: string) => void;
}) {
  const paid =
    subscription.price !== null && Number(subscription.price) > 0 && subscription.status !== "canceled";
  if (subscription.cancel_at_period_end || subscription.pending_change) {
    const resume = async () => {
      const { error } = await api.POST("/v1/orgs/{org}/subscription/resume", {
        params: { path: { org: orgId } },
      });
      if (error) return onError(problemMessage(error));
      await onChanged();
    };
    return (
      <button type="button" className="secondary" onClick={resume}>
        {subscription.cancel_at_period_end ? "Keep my subscription" : "Undo the scheduled change"}
      </button>
    );
  }
  if (!paid) return null;
  const cancel = async () => {
    if (!window.confirm(`Cancel at the end of the period (${day(subscription.current_period_end)})?`)) return;
    const { error } = await api.POST("/v1/orgs/{org}/subscription/cancel", {
      params: { path: { org: orgId } },
      body: { at_period_end: true },
    });
    if (error) return onError(problemMessage(error));
    await onChanged();
  };
  return (
    <button type="button" className="danger" onClick={cancel}>
      Cancel the subscription
    </button>
  );
}

/** Coupons on the account (and redeeming one), and the credit balance. */
function CouponsAndCredits({
  orgId,
  extras,
  onChanged,
}: {
  orgId: string;
  extras: { coupons: Schemas["AppliedCoupon"][]; credits: Schemas["Credits"] };
  onChanged: () => Promise<void>;
}) {
  const codeId = useId();
  const [error, setError] = useState<string | null>(null);
  const redeem = async (event: React.FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const form = event.currentTarget;
    const code = String(new FormData(form).get("code") ?? "").trim();
    setError(null);
    const { error } = await api.POST("/v1/orgs/{org}/coupons", {
      params: { path: { org: orgId } },
      body: { code },
    });
    if (error) return setError(problemMessage(error));
    form.reset();
    await onChanged();
  };
  return (
    <section className="panel" aria-labelledby={`${codeId}-title`}>
      <h2 id={`${codeId}-title`}>Coupons and credit</h2>
      <p>
        Credit balance:{" "}
        <strong>
          {extras.credits.currency} {extras.credits.balance}
        </strong>
      </p>
      {extras.coupons.length > 0 && (
        <ul>
          {extras.coupons.map((applied) => (
            <li key={applied.id}>
              <code>{applied.coupon.code}</code>
              {applied.coupon.percent_off ? ` — ${applied.coupon.percent_off}% off` : ""}
              {applied.coupon.amount_off
                ? ` — ${applied.coupon.currency} ${applied.coupon.amount_off} off`
                : ""}{" "}
              ({applied.coupon.duration})
            </li>
          ))}
        </ul>
      )}
      <form className="inline" onSubmit={redeem}>
        <div className="field">
          <label htmlFor={codeId}>Coupon code</label>
          <input id={codeId} name="code" required maxLength={100} />
        </div>
        <button type="submit" className="secondary">
          Redeem
        </button>
      </form>
      <ErrorLine error={error} />
    </section>
  );
}

/** The PDF needs the session's credentials, so it is fetched and handed to the browser as a file. */
function PdfButton({ orgId, invoice }: { orgId: string; invoice: Invoice }) {
  const [failed, setFailed] = useState(false);
  const fetchPdf = async () => {
    setFailed(false);
    const ok = await download(
      `/v1/orgs/${orgId}/invoices/${invoice.id}.pdf`,
      `${invoice.number ?? invoice.id}.pdf`,
    );
    setFailed(!ok);
  };
  return (
    <>
      <button type="button" className="secondary" onClick={fetchPdf}>
        PDF<span className="visually-hidden"> of invoice {invoice.number ?? invoice.id}</span>
      </button>
      {failed && (
        <span className="error" role="alert">
          {" "}
          Could not download.
        </span>
      )}
    </>
  );
}
