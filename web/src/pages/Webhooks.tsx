import { useCallback, useEffect, useId, useState } from "react";
import { Loading } from "../App";
import { can, useRole } from "../access";
import { api, problemMessage, type Schemas } from "../api/client";
import { DataTable } from "../components/DataTable";
import { ErrorLine } from "../components/ErrorLine";

type Endpoint = Schemas["WebhookEndpoint"];
type Delivery = Schemas["WebhookDelivery"];

/** The org's webhook endpoints, each with its delivery log and a retry per delivery. */
export function Webhooks({ orgId }: { orgId: string }) {
  const canManage = can(useRole(orgId), "webhooks:manage");
  const [endpoints, setEndpoints] = useState<Endpoint[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [secret, setSecret] = useState<{ url: string; secret: string } | null>(null);
  const load = useCallback(async () => {
    const { data, error } = await api.GET("/v1/orgs/{org}/webhook-endpoints", {
      params: { path: { org: orgId } },
    });
    if (data) setEndpoints(data.data);
    else setError(problemMessage(error));
  }, [orgId]);
  useEffect(() => {
    void load();
  }, [load]);

  const add = async (event: React.FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const form = event.currentTarget;
    const fields = new FormData(form);
    setError(null);
    const events = String(fields.get("events") ?? "")
      .split(",")
      .map((value) => value.trim())
      .filter(Boolean);
    const { data, error } = await api.POST("/v1/orgs/{org}/webhook-endpoints", {
      params: { path: { org: orgId } },
      body: { url: String(fields.get("url") ?? ""), events },
    });
    if (!data) return setError(problemMessage(error));
    form.reset();
    setSecret({ url: data.url, secret: data.secret });
    await load();
  };
  const remove = async (endpoint: Endpoint) => {
    if (!window.confirm(`Remove the endpoint ${endpoint.url} and its delivery log?`)) return;
    const { error } = await api.DELETE("/v1/orgs/{org}/webhook-endpoints/{id}", {
      params: { path: { org: orgId, id: endpoint.id } },
    });
    if (error) setError(problemMessage(error));
    await load();
  };
  const enable = async (endpoint: Endpoint) => {
    const { error } = await api.PATCH("/v1/orgs/{org}/webhook-endpoints/{id}", {
      params: { path: { org: orgId, id: endpoint.id } },
      body: { enabled: true },
    });
    if (error) setError(problemMessage(error));
    await load();
  };

  const urlId = useId();
  const eventsId = useId();
  return (
    <>
      <h1>Webhooks</h1>
      <p className="muted">
        Events are POSTed to your endpoints, signed per the Standard Webhooks spec, in order, and retried for
        three days.
      </p>
      {secret && (
        <section className="panel issued" role="status" aria-live="polite">
          <h2>Signing secret for {secret.url}</h2>
          <p>Store it now: it is shown once. Verify each delivery with any Standard Webhooks library.</p>
          <p>
            <code className="secret">{secret.secret}</code>
          </p>
          <button type="button" className="secondary" onClick={() => setSecret(null)}>
            Done
          </button>
        </section>
      )}
      {canManage && (
        <form className="panel" onSubmit={add} aria-label="Add an endpoint">
          <div className="field">
            <label htmlFor={urlId}>Endpoint URL</label>
            <input id={urlId} name="url" type="url" required placeholder="https://example.com/webhooks" />
          </div>
          <div className="field">
            <label htmlFor={eventsId}>Events (comma-separated; * for all)</label>
            <input id={eventsId} name="events" required defaultValue="*" />
          </div>
          <button type="submit">Add endpoint</button>
        </form>
      )}
      <ErrorLine error={error} />
      {endpoints === null ? (
        <Loading label="Loading endpoints…" />
      ) : endpoints.length === 0 ? (
        <p>No endpoints yet.</p>
      ) : (
        endpoints.map((endpoint) => (
          <section key={endpoint.id} className="panel" aria-label={`Endpoint ${endpoint.url}`}>
            <h2>{endpoint.url}</h2>
            <p>
              {endpoint.events.join(", ")} · <strong>{endpoint.status}</strong>
              {endpoint.failing_since &&
                ` · failing since ${new Date(endpoint.failing_since).toLocaleString("en")}`}
            </p>
            {endpoint.disabled_reason && <p className="error">{endpoint.disabled_reason}</p>}
            {canManage && (
              <p className="actions">
                {endpoint.status === "disabled" && (
                  <button type="button" onClick={() => enable(endpoint)}>
                    Turn back on
                  </button>
                )}
                <button type="button" className="danger" onClick={() => remove(endpoint)}>
                  Remove
                </button>
              </p>
            )}
            <Deliveries orgId={orgId} endpoint={endpoint} canManage={canManage} />
          </section>
        ))
      )}
    </>
  );
}

function Deliveries({
  orgId,
  endpoint,
  canManage,
}: {
  orgId: string;
  endpoint: Endpoint;
  canManage: boolean;
}) {
  const [deliveries, setDeliveries] = useState<Delivery[] | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const load = useCallback(async () => {
    const { data } = await api.GET("/v1/orgs/{org}/webhook-endpoints/{id}/deliveries", {
      params: { path: { org: orgId, id: endpoint.id }, query: { limit: 20 } },
    });
    setDeliveries(data?.data ?? []);
  }, [orgId, endpoint.id]);
  useEffect(() => {
    void load();
  }, [load]);
  const retry = async (delivery: Delivery) => {
    const { error } = await api.POST("/v1/orgs/{org}/webhook-endpoints/{id}/deliveries/{delivery}/retry", {
      params: { path: { org: orgId, id: endpoint.id, delivery: delivery.id } },
    });
    setNotice(error ? problemMessage(error) : `Delivery of ${delivery.event_type} queued again.`);
    await load();
  };
  if (deliveries === null) return <Loading label="Loading deliveries…" />;
  if (deliveries.length === 0) return <p className="muted">No deliveries yet.</p>;
  return (
    <>
      {notice && <p role="status">{notice}</p>}
      <DataTable
        label={`Recent deliveries to ${endpoint.url}`}
        rows={deliveries}
        rowKey={(delivery) => delivery.id}
        columns={[
          {
            header: "Event",
            cell: (delivery) => (
              <>
                {delivery.event_type}
                <br />
                <code className="muted">{delivery.event_id}</code>
              </>
            ),
          },
          { header: "Status", cell: (delivery) => delivery.status },
          { header: "Attempts", cell: (delivery) => delivery.attempts },
          {
            header: "Last answer",
            cell: (delivery) =>
              delivery.last_error ?? (delivery.last_status ? `HTTP ${delivery.last_status}` : "—"),
          },
          {
            header: "Actions",
            hideHeader: true,
            cell: (delivery) =>
              canManage &&
              endpoint.status === "enabled" &&
              delivery.status !== "pending" && (
                <button type="button" className="secondary" onClick={() => retry(delivery)}>
                  {delivery.status === "failed" ? "Retry" : "Send again"}
                  <span className="visually-hidden"> {delivery.event_type}</span>
                </button>
              ),
          },
        ]}
      />
    </>
  );
}
