import { useCallback, useEffect, useRef, useState } from "react";
import { useSearchParams } from "wouter";
import { Loading } from "../App";
import { accessToken, api, problemMessage, type Schemas } from "../api/client";

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
    setPlans(catalog.data.data);
    setInvoices(list.data.data);
  }, [orgId]);
  useEffect(() => {
    void load();
  }, [load]);

  const choose = async (plan: Plan) => {
    setError(null);
    setBusy(true);
    const { data, error } = await api.POST("/v1/orgs/{org}/subscription/preview", {
      params: { path: { org: orgId } },
      body: { plan: plan.key },
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
      body: { plan: preview.plan.key },
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
      </section>

      {suggested && limited && suggested !== subscription.plan && (
        <p className="panel suggestion" role="status">
          You have reached the limit of <strong>{limited}</strong> on your plan.{" "}
          {plans.find((plan) => plan.key === suggested)?.name ?? suggested} gives you more.
        </p>
      )}

      <h2>Plans</h2>
      <ul className="cards" aria-label="Plans">
        {plans.map((plan) => (
          <li
            key={plan.key}
            className={`card ${plan.key === subscription.plan ? "current" : ""} ${plan.key === suggested ? "suggested" : ""}`}
            aria-describedby={plan.key === suggested ? "suggested-note" : undefined}
          >
            {plan.key === suggested && plan.key !== subscription.plan && (
              <p id="suggested-note" className="badge">
                Recommended for you
              </p>
            )}
            <h3>{plan.name}</h3>
            <p className="figure">
              {plan.price.month !== undefined ? `${plan.currency} ${plan.price.month}` : "—"}
              <span className="muted"> / month</span>
            </p>
            {plan.description && <p className="muted">{plan.description}</p>}
            {plan.key === subscription.plan ? (
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
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}

      <h2>Invoices</h2>
      {invoices.length === 0 ? (
        <p>No invoices yet.</p>
      ) : (
        <div className="table-wrap">
          <table className="table">
            <caption className="visually-hidden">Invoices</caption>
            <thead>
              <tr>
                <th scope="col">Number</th>
                <th scope="col">Period</th>
                <th scope="col">Total</th>
                <th scope="col">Status</th>
                <th scope="col">
                  <span className="visually-hidden">PDF</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {invoices.map((invoice) => (
                <tr key={invoice.id}>
                  <td>{invoice.number ?? "draft"}</td>
                  <td>
                    {day(invoice.period_start)} – {day(invoice.period_end)}
                  </td>
                  <td className="num">
                    {invoice.currency} {invoice.total}
                  </td>
                  <td>{invoice.status === "finalized" ? "open" : invoice.status}</td>
                  <td>
                    <PdfButton orgId={orgId} invoice={invoice} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </>
  );
}

const day = (iso: string) => new Date(iso).toISOString().slice(0, 10);

/** The PDF needs the session's credentials, so it is fetched and handed to the browser as a file. */
function PdfButton({ orgId, invoice }: { orgId: string; invoice: Invoice }) {
  const [failed, setFailed] = useState(false);
  const download = async () => {
    setFailed(false);
    const res = await fetch(`/v1/orgs/${orgId}/invoices/${invoice.id}.pdf`, {
      headers: { authorization: `Bearer ${accessToken() ?? ""}` },
    });
    if (!res.ok) return setFailed(true);
    const url = URL.createObjectURL(await res.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = `${invoice.number ?? invoice.id}.pdf`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  };
  return (
    <>
      <button type="button" className="secondary" onClick={download}>
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
