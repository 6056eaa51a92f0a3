import { useCallback, useEffect, useId, useRef, useState } from "react";
import { Link, useLocation } from "wouter";
import { Loading } from "../App";
import { api, problemMessage, type Schemas } from "../api/client";
import { DataTable } from "../components/DataTable";
import { ErrorLine } from "../components/ErrorLine";

/** The operator's pages next to Revenue: orgs, users, the mail outbox, dead jobs, broadcasts. */
export function AdminNav() {
  const [location] = useLocation();
  const pages = [
    { href: "/admin", label: "Revenue" },
    { href: "/admin/orgs", label: "Orgs" },
    { href: "/admin/users", label: "Users" },
    { href: "/admin/outbox", label: "Outbox" },
    { href: "/admin/jobs", label: "Dead jobs" },
    { href: "/admin/broadcast", label: "Broadcast" },
  ];
  return (
    <nav className="tabs" aria-label="Administration">
      {pages.map((page) => (
        <Link key={page.href} href={page.href} aria-current={location === page.href ? "page" : undefined}>
          {page.label}
        </Link>
      ))}
    </nav>
  );
}

type Page<T> = { data?: { data: T[]; next_before: string | null }; error?: unknown };

/**
 * A list read page by page (`before` = the last page's `next_before`): the first page when `key`
 * changes (a new search), the next one appended on "Load more". A search typed while a page is
 * loading wins: the older answer is dropped.
 */
function usePages<T>(fetchPage: (before: string | undefined) => Promise<Page<T>>, key: string) {
  const [rows, setRows] = useState<T[] | null>(null);
  const [next, setNext] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const generation = useRef(0);
  const fetcher = useRef(fetchPage);
  fetcher.current = fetchPage;
  const load = useCallback(async (before: string | undefined, mine: number) => {
    setBusy(true);
    const { data, error } = await fetcher.current(before);
    if (mine !== generation.current) return;
    setBusy(false);
    if (!data) return setError(problemMessage(error));
    setError(null);
    setRows((shown) => (before && shown ? [...shown, ...data.data] : data.data));
    setNext(data.next_before);
  }, []);
  // biome-ignore lint/correctness/useExhaustiveDependencies: key is what starts a new list
  useEffect(() => {
    generation.current += 1;
    setRows(null);
    setNext(null);
    void load(undefined, generation.current);
  }, [key, load]);
  const more = () => {
    if (next && !busy) void load(next, generation.current);
  };
  return { rows, error, more, hasMore: next !== null, busy };
}

/** Appends the next page; the new rows are announced by the count. */
function LoadMore({
  shown,
  hasMore,
  busy,
  onMore,
}: {
  shown: number;
  hasMore: boolean;
  busy: boolean;
  onMore: () => void;
}) {
  return (
    <p className="more">
      <span role="status">
        {shown} shown{hasMore ? "" : ", all of them"}.
      </span>{" "}
      {hasMore && (
        <button type="button" className="secondary" onClick={onMore} disabled={busy}>
          {busy ? "Loading…" : "Load more"}
        </button>
      )}
    </p>
  );
}

function Search({ label, onSearch }: { label: string; onSearch: (q: string) => void }) {
  const id = useId();
  return (
    <form
      aria-label={`Search by ${label.toLowerCase()}`}
      className="inline"
      onSubmit={(event) => {
        event.preventDefault();
        onSearch(String(new FormData(event.currentTarget).get("q") ?? ""));
      }}
    >
      <div className="field">
        <label htmlFor={id}>{label}</label>
        <input id={id} name="q" type="search" />
      </div>
      <button type="submit">Search</button>
    </form>
  );
}

export function AdminOrgs() {
  const [q, setQ] = useState("");
  const { rows, error, more, hasMore, busy } = usePages(
    (before) => api.GET("/v1/admin/orgs", { params: { query: { q: q || undefined, before, limit: 100 } } }),
    q,
  );
  return (
    <>
      <h1>Organizations</h1>
      <Search label="Name or id" onSearch={setQ} />
      <ErrorLine error={error} />
      {rows === null ? (
        <Loading label="Loading organizations…" />
      ) : rows.length === 0 ? (
        <p>No organization matches.</p>
      ) : (
        <DataTable
          label="Organizations"
          rows={rows}
          rowKey={(org) => org.id}
          columns={[
            {
              header: "Name",
              cell: (org) => (
                <>
                  {org.name}
                  <br />
                  <code className="muted">{org.id}</code>
                </>
              ),
            },
            { header: "Plan", cell: (org) => org.plan ?? "—" },
            { header: "Status", cell: (org) => org.status ?? "—" },
            { header: "Members", cell: (org) => org.members },
            { header: "Created", cell: (org) => org.created_at.slice(0, 10) },
          ]}
        />
      )}
      {rows && rows.length > 0 && (
        <LoadMore shown={rows.length} hasMore={hasMore} busy={busy} onMore={more} />
      )}
    </>
  );
}

export function AdminUsers() {
  const [q, setQ] = useState("");
  const { rows, error, more, hasMore, busy } = usePages(
    (before) => api.GET("/v1/admin/users", { params: { query: { q: q || undefined, before, limit: 100 } } }),
    q,
  );
  return (
    <>
      <h1>Users</h1>
      <Search label="Name, e-mail or id" onSearch={setQ} />
      <ErrorLine error={error} />
      {rows === null ? (
        <Loading label="Loading users…" />
      ) : rows.length === 0 ? (
        <p>No user matches.</p>
      ) : (
        <DataTable
          label="Users"
          rows={rows}
          rowKey={(user) => user.id}
          columns={[
            { header: "Name", cell: (user) => user.name },
            { header: "E-mail", cell: (user) => user.email },
            { header: "Verified", cell: (user) => (user.email_verified ? "yes" : "no") },
            { header: "Two-factor", cell: (user) => (user.two_factor ? "on" : "off") },
            { header: "Orgs", cell: (user) => user.orgs },
            { header: "Created", cell: (user) => user.created_at.slice(0, 10) },
          ]}
        />
      )}
      {rows && rows.length > 0 && (
        <LoadMore shown={rows.length} hasMore={hasMore} busy={busy} onMore={more} />
      )}
    </>
  );
}

export function AdminOutbox() {
  const { rows, error, more, hasMore, busy } = usePages(
    (before) => api.GET("/v1/admin/emails", { params: { query: { before, limit: 100 } } }),
    "",
  );
  return (
    <>
      <h1>Mail outbox</h1>
      <p className="muted">
        Every message recorded, newest first. Without SMTP_URL, this is where they stay.
      </p>
      <ErrorLine error={error} />
      {rows === null ? (
        <Loading label="Loading messages…" />
      ) : rows.length === 0 ? (
        <p>No messages yet.</p>
      ) : (
        <ul className="mail-list">
          {rows.map((mail) => (
            <li key={mail.id} className="panel">
              <details>
                <summary>
                  <strong>{mail.subject}</strong> — to {mail.to} · {mail.template} · {mail.status}
                  {mail.error ? ` (${mail.error})` : ""} · {new Date(mail.created_at).toLocaleString("en")}
                </summary>
                <pre className="mail-body">{mail.text}</pre>
              </details>
            </li>
          ))}
        </ul>
      )}
      {rows && rows.length > 0 && (
        <LoadMore shown={rows.length} hasMore={hasMore} busy={busy} onMore={more} />
      )}
    </>
  );
}

export function AdminJobs() {
  const [rows, setRows] = useState<Schemas["DeadJob"][] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const load = useCallback(async () => {
    const { data, error } = await api.GET("/v1/admin/jobs/dead", { params: { query: { limit: 100 } } });
    if (data) setRows(data.data);
    else setError(problemMessage(error));
  }, []);
  useEffect(() => {
    void load();
  }, [load]);
  const retry = async (job: Schemas["DeadJob"]) => {
    const { error } = await api.POST("/v1/admin/jobs/dead/{id}/retry", { params: { path: { id: job.id } } });
    setNotice(error ? problemMessage(error) : `${job.name} queued again.`);
    await load();
  };
  return (
    <>
      <h1>Dead jobs</h1>
      <p className="muted">
        Jobs that failed every attempt. A retry runs one again with a fresh set of attempts.
      </p>
      {notice && <p role="status">{notice}</p>}
      <ErrorLine error={error} />
      {rows === null ? (
        <Loading label="Loading jobs…" />
      ) : rows.length === 0 ? (
        <p>No dead jobs.</p>
      ) : (
        <DataTable
          label="Dead jobs"
          rows={rows}
          rowKey={(job) => job.id}
          columns={[
            {
              header: "Job",
              cell: (job) => (
                <>
                  {job.name}
                  <br />
                  <code className="muted">{JSON.stringify(job.payload)}</code>
                </>
              ),
            },
            { header: "Attempts", cell: (job) => job.attempts },
            { header: "Last error", cell: (job) => job.error },
            {
              header: "Failed",
              cell: (job) => (job.failed_at ? new Date(job.failed_at).toLocaleString("en") : "—"),
            },
            {
              header: "Actions",
              hideHeader: true,
              cell: (job) => (
                <button type="button" className="secondary" onClick={() => retry(job)}>
                  Retry<span className="visually-hidden"> {job.name}</span>
                </button>
              ),
            },
          ]}
        />
      )}
    </>
  );
}

export function AdminBroadcast() {
  const ids = { subject: useId(), body: useId(), audience: useId(), plan: useId() };
  const [audience, setAudience] = useState("all");
  const [result, setResult] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const send = async (event: React.FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    if (busy) return;
    const form = new FormData(event.currentTarget);
    const who =
      audience === "all" ? "every user" : audience === "owners" ? "every org owner" : "that plan's orgs";
    if (!window.confirm(`Send this message to ${who}? It cannot be taken back.`)) return;
    setBusy(true);
    setError(null);
    setResult(null);
    const { data, error } = await api.POST("/v1/admin/broadcast", {
      body: {
        subject: String(form.get("subject") ?? ""),
        body: String(form.get("body") ?? ""),
        audience:
          audience === "plan" ? { plan: String(form.get("plan") ?? "") } : (audience as "all" | "owners"),
      },
    });
    setBusy(false);
    if (!data) return setError(problemMessage(error));
    setResult(`Sent to ${data.recipients} ${data.recipients === 1 ? "address" : "addresses"}.`);
  };
  return (
    <>
      <h1>Broadcast</h1>
      <form className="panel" onSubmit={send}>
        <div className="field">
          <label htmlFor={ids.audience}>Audience</label>
          <select id={ids.audience} value={audience} onChange={(event) => setAudience(event.target.value)}>
            <option value="all">Every user</option>
            <option value="owners">Every org owner</option>
            <option value="plan">Owners and admins of orgs on a plan</option>
          </select>
        </div>
        {audience === "plan" && (
          <div className="field">
            <label htmlFor={ids.plan}>Plan key</label>
            <input id={ids.plan} name="plan" required placeholder="pro" />
          </div>
        )}
        <div className="field">
          <label htmlFor={ids.subject}>Subject</label>
          <input id={ids.subject} name="subject" required maxLength={200} />
        </div>
        <div className="field">
          <label htmlFor={ids.body}>Message</label>
          <textarea id={ids.body} name="body" required maxLength={20000} rows={8} />
        </div>
        <button type="submit" disabled={busy}>
          {busy ? "Sending…" : "Send"}
        </button>
        {result && (
          <p className="notice" role="status">
            {result}
          </p>
        )}
        <ErrorLine error={error} />
      </form>
    </>
  );
}
