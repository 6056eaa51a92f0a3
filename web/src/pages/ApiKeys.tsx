import { useCallback, useEffect, useId, useState } from "react";
import { Loading } from "../App";
import { can, useRole } from "../access";
import { api, problemMessage, type Schemas } from "../api/client";
import { DataTable } from "../components/DataTable";
import { ErrorLine } from "../components/ErrorLine";

type ApiKey = Schemas["ApiKey"];
type Scope = Schemas["ApiKeyCreate"]["scopes"][number];

/** Revoked now (a rotated key's old secret is revoked at the end of its grace period). */
const isRevoked = (key: ApiKey) => key.revoked_at !== null && Date.parse(key.revoked_at) <= Date.now();

const SCOPES: { scope: Scope; label: string }[] = [
  { scope: "usage:read", label: "Read usage" },
  { scope: "org:read", label: "Read the organization" },
  { scope: "members:read", label: "Read members" },
  { scope: "billing:read", label: "Read billing" },
  { scope: "keys:read", label: "Read API keys" },
  { scope: "webhooks:read", label: "Read webhooks" },
  { scope: "audit:read", label: "Read the audit log" },
];

/** The org's API keys: create (the key is shown once, with a copy button), rotate, revoke. */
export function ApiKeys({ orgId }: { orgId: string }) {
  const canManage = can(useRole(orgId), "keys:manage");
  const [keys, setKeys] = useState<ApiKey[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [issued, setIssued] = useState<{ name: string; key: string } | null>(null);

  const load = useCallback(async () => {
    const { data, error } = await api.GET("/v1/orgs/{org}/api-keys", { params: { path: { org: orgId } } });
    if (data) setKeys(data.data);
    else setError(problemMessage(error));
  }, [orgId]);
  useEffect(() => {
    void load();
  }, [load]);

  const rotate = async (key: ApiKey) => {
    const { data, error } = await api.POST("/v1/orgs/{org}/api-keys/{id}/rotate", {
      params: { path: { org: orgId, id: key.id } },
      body: {},
    });
    if (!data) return setError(problemMessage(error));
    setIssued({ name: data.name, key: data.key });
    await load();
  };
  const revoke = async (key: ApiKey) => {
    if (!window.confirm(`Revoke "${key.name}"? Requests using it stop working at once.`)) return;
    const { error } = await api.DELETE("/v1/orgs/{org}/api-keys/{id}", {
      params: { path: { org: orgId, id: key.id } },
    });
    if (error) return setError(problemMessage(error));
    await load();
  };

  return (
    <>
      <h1>API keys</h1>
      <p className="muted">
        Keys let your own systems read this organization's data. Each key is shown once.
      </p>
      {issued && <IssuedKey name={issued.name} secret={issued.key} onDone={() => setIssued(null)} />}
      {canManage && (
        <CreateKey
          orgId={orgId}
          onCreated={async (created) => {
            setIssued(created);
            await load();
          }}
        />
      )}
      <ErrorLine error={error} />
      {keys === null ? (
        <Loading label="Loading keys…" />
      ) : keys.length === 0 ? (
        <p>No keys yet.</p>
      ) : (
        <DataTable
          label="API keys"
          rows={keys}
          rowKey={(key) => key.id}
          columns={[
            { header: "Name", cell: (key) => key.name },
            { header: "Key", cell: (key) => <code>{key.prefix}…</code> },
            { header: "Scopes", cell: (key) => key.scopes.join(", ") },
            {
              header: "Last used",
              cell: (key) => (key.last_used_at ? new Date(key.last_used_at).toLocaleString("en") : "never"),
            },
            {
              header: "Status",
              cell: (key) => (isRevoked(key) ? "revoked" : key.replaced_by ? "rotated" : "active"),
            },
            {
              header: "Actions",
              hideHeader: true,
              className: "actions",
              cell: (key) =>
                canManage &&
                !isRevoked(key) &&
                !key.replaced_by && (
                  <>
                    <button type="button" className="secondary" onClick={() => rotate(key)}>
                      Rotate<span className="visually-hidden"> {key.name}</span>
                    </button>
                    <button type="button" className="danger" onClick={() => revoke(key)}>
                      Revoke<span className="visually-hidden"> {key.name}</span>
                    </button>
                  </>
                ),
            },
          ]}
        />
      )}
    </>
  );
}

function CreateKey({
  orgId,
  onCreated,
}: {
  orgId: string;
  onCreated: (issued: { name: string; key: string }) => Promise<void>;
}) {
  const nameId = useId();
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event: React.FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    const scopes = form.getAll("scope").map(String) as Scope[];
    if (scopes.length === 0) return setError("Choose at least one scope.");
    setBusy(true);
    setError(null);
    const target = event.currentTarget;
    const { data, error } = await api.POST("/v1/orgs/{org}/api-keys", {
      params: { path: { org: orgId } },
      body: { name: String(form.get("name") ?? ""), scopes },
    });
    setBusy(false);
    if (!data) return setError(problemMessage(error));
    target.reset();
    await onCreated({ name: data.name, key: data.key });
  };
  return (
    <form className="panel" onSubmit={submit} aria-labelledby={`${nameId}-title`}>
      <h2 id={`${nameId}-title`}>Create a key</h2>
      <div className="field">
        <label htmlFor={nameId}>Name</label>
        <input id={nameId} name="name" required maxLength={200} placeholder="Production backend" />
      </div>
      <fieldset>
        <legend>Scopes</legend>
        {SCOPES.map(({ scope, label }) => (
          <label key={scope} className="check">
            <input type="checkbox" name="scope" value={scope} defaultChecked={scope === "usage:read"} />{" "}
            {label}
          </label>
        ))}
      </fieldset>
      <ErrorLine error={error} />
      <button type="submit" disabled={busy}>
        {busy ? "Creating…" : "Create key"}
      </button>
    </form>
  );
}

/** The new key, this once: copy it now; it cannot be shown again. */
function IssuedKey({ name, secret, onDone }: { name: string; secret: string; onDone: () => void }) {
  const [copied, setCopied] = useState(false);
  const copy = async () => {
    await navigator.clipboard.writeText(secret);
    setCopied(true);
  };
  return (
    <section className="panel issued" role="status" aria-live="polite">
      <h2>Your new key “{name}”</h2>
      <p>Copy it now: it is not stored and will not be shown again.</p>
      <p>
        <code className="secret">{secret}</code>
      </p>
      <button type="button" onClick={copy}>
        {copied ? "Copied" : "Copy key"}
      </button>{" "}
      <button type="button" className="secondary" onClick={onDone}>
        Done
      </button>
    </section>
  );
}
