import { useEffect, useId, useState } from "react";
import { useLocation } from "wouter";
import { Loading } from "../App";
import { api, download, problemMessage, type Schemas, session } from "../api/client";
import { ErrorLine } from "../components/ErrorLine";

type User = Schemas["User"];

/**
 * The signed-in person's own account, whatever org they are looking at: profile, password,
 * two-factor authentication, a copy of their data, and deleting the account.
 */
export function Account() {
  const [user, setUser] = useState<User | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    void api
      .GET("/v1/auth/me")
      .then(({ data, error }) => (data ? setUser(data.user) : setError(problemMessage(error))));
  }, []);
  if (!user) return error ? <ErrorLine error={error} /> : <Loading label="Loading your account…" />;
  return (
    <>
      <h1>Your account</h1>
      <Profile user={user} onChange={setUser} />
      <PasswordForm user={user} onChange={setUser} />
      <TwoFactor user={user} onChange={setUser} />
      <YourData user={user} />
    </>
  );
}

interface SectionProps {
  user: User;
  onChange: (user: User) => void;
}

/** A titled panel whose heading names it for assistive technology. */
function Section({ title, children, id }: { title: string; children: React.ReactNode; id?: string }) {
  const headingId = useId();
  return (
    <section className="panel" aria-labelledby={headingId} id={id}>
      <h2 id={headingId}>{title}</h2>
      {children}
    </section>
  );
}

/** Runs a form's action with busy and error state; the action returns an error message or null. */
function useAction() {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const run = async (action: () => Promise<string | null>) => {
    setBusy(true);
    setError(null);
    try {
      setError(await action());
    } catch {
      setError("The server could not be reached. Try again.");
    } finally {
      setBusy(false);
    }
  };
  return { error, busy, run, setError };
}

const fieldOf = (form: HTMLFormElement, name: string) => String(new FormData(form).get(name) ?? "").trim();

function Profile({ user, onChange }: SectionProps) {
  const ids = { name: useId(), email: useId() };
  const { error, busy, run } = useAction();
  const [saved, setSaved] = useState(false);
  const [resent, setResent] = useState(false);
  const save = (event: React.FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const name = fieldOf(event.currentTarget, "name");
    setSaved(false);
    void run(async () => {
      const { data, error } = await api.PATCH("/v1/auth/me", { body: { name } });
      if (!data) return problemMessage(error);
      onChange(data);
      setSaved(true);
      return null;
    });
  };
  const resend = () =>
    run(async () => {
      const { error, response } = await api.POST("/v1/auth/verify-email/resend", {});
      if (!response.ok) return problemMessage(error);
      setResent(true);
      return null;
    });
  return (
    <Section title="Profile">
      <form onSubmit={save}>
        <div className="field">
          <label htmlFor={ids.name}>Name</label>
          <input
            id={ids.name}
            name="name"
            defaultValue={user.name}
            required
            maxLength={200}
            autoComplete="name"
          />
        </div>
        <div className="field">
          <label htmlFor={ids.email}>E-mail</label>
          <input id={ids.email} value={user.email} readOnly aria-describedby={`${ids.email}-status`} />
          <p id={`${ids.email}-status`} className="muted">
            {user.email_verified ? "Verified." : "Not verified yet."}{" "}
            {!user.email_verified && !resent && (
              <button type="button" className="link" onClick={resend} disabled={busy}>
                Send the verification e-mail again
              </button>
            )}
            {resent && "Sent: check your inbox."}
          </p>
        </div>
        <button type="submit" disabled={busy}>
          Save profile
        </button>
        {saved && (
          <p className="notice" role="status">
            Saved.
          </p>
        )}
        <ErrorLine error={error} />
      </form>
    </Section>
  );
}

function PasswordForm({ user, onChange }: SectionProps) {
  const ids = { current: useId(), next: useId() };
  const { error, busy, run } = useAction();
  const [done, setDone] = useState(false);
  const submit = (event: React.FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const form = event.currentTarget;
    const current = String(new FormData(form).get("current_password") ?? "");
    const next = String(new FormData(form).get("new_password") ?? "");
    setDone(false);
    void run(async () => {
      const { error, response } = await api.POST("/v1/auth/password", {
        body: { ...(user.has_password ? { current_password: current } : {}), new_password: next },
      });
      if (!response.ok) return problemMessage(error);
      form.reset();
      onChange({ ...user, has_password: true });
      setDone(true);
      return null;
    });
  };
  return (
    <Section title="Password">
      <form onSubmit={submit}>
        {user.has_password ? (
          <div className="field">
            <label htmlFor={ids.current}>Current password</label>
            <input
              id={ids.current}
              name="current_password"
              type="password"
              autoComplete="current-password"
              required
            />
          </div>
        ) : (
          <p className="muted">
            You sign in with single sign-on. A password lets you sign in with your e-mail address too.
          </p>
        )}
        <div className="field">
          <label htmlFor={ids.next}>New password (at least 10 characters)</label>
          <input
            id={ids.next}
            name="new_password"
            type="password"
            autoComplete="new-password"
            minLength={10}
            required
          />
        </div>
        <button type="submit" disabled={busy}>
          {user.has_password ? "Change password" : "Set password"}
        </button>
        {done && (
          <p className="notice" role="status">
            Password saved. Your other sessions have been signed out.
          </p>
        )}
        <ErrorLine error={error} />
      </form>
    </Section>
  );
}

type Enrolment = { secret: string; otpauth_url: string; qr: string | null };

function TwoFactor({ user, onChange }: SectionProps) {
  const ids = { password: useId(), code: useId(), disable: useId() };
  const { error, busy, run } = useAction();
  const [enrolment, setEnrolment] = useState<Enrolment | null>(null);
  const [codes, setCodes] = useState<string[] | null>(null);

  const start = (event: React.FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const password = String(new FormData(event.currentTarget).get("password") ?? "");
    void run(async () => {
      const { data, error } = await api.POST("/v1/auth/2fa/setup", {
        body: user.has_password ? { password } : {},
      });
      if (!data) return problemMessage(error);
      // The QR code library is loaded only by the people who set up two-factor authentication.
      const qr = await import("qrcode")
        .then((m) => m.toDataURL(data.otpauth_url, { margin: 1, width: 192 }))
        .catch(() => null);
      setEnrolment({ ...data, qr });
      return null;
    });
  };

  const confirm = (event: React.FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const code = fieldOf(event.currentTarget, "code");
    void run(async () => {
      const { data, error } = await api.POST("/v1/auth/2fa/enable", { body: { code } });
      if (!data) return problemMessage(error);
      setEnrolment(null);
      setCodes(data.recovery_codes);
      onChange({ ...user, two_factor_enabled: true });
      return null;
    });
  };

  const disable = (event: React.FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const code = fieldOf(event.currentTarget, "code");
    // Recovery codes are longer and carry a dash; authenticator codes are six digits.
    const body = /^\d{6,8}$/.test(code) ? { code } : { recovery_code: code };
    void run(async () => {
      const { error, response } = await api.POST("/v1/auth/2fa/disable", { body });
      if (!response.ok) return problemMessage(error);
      setCodes(null);
      onChange({ ...user, two_factor_enabled: false });
      return null;
    });
  };

  const saveCodes = () => {
    if (!codes) return;
    const url = URL.createObjectURL(new Blob([`${codes.join("\n")}\n`], { type: "text/plain" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = "recovery-codes.txt";
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  };

  if (codes) {
    return (
      <Section title="Two-factor authentication">
        <div className="issued" role="status">
          <p>
            <strong>Two-factor authentication is on.</strong> Keep these recovery codes somewhere safe: each
            signs you in once if you lose your authenticator. They are shown only now.
          </p>
          <ul className="codes" aria-label="Recovery codes">
            {codes.map((code) => (
              <li key={code}>
                <code>{code}</code>
              </li>
            ))}
          </ul>
          <div className="actions">
            <button type="button" className="secondary" onClick={saveCodes}>
              Download codes
            </button>
            <button type="button" onClick={() => setCodes(null)}>
              I have saved them
            </button>
          </div>
        </div>
      </Section>
    );
  }

  if (user.two_factor_enabled) {
    return (
      <Section title="Two-factor authentication">
        <p>
          <strong>On.</strong> Signing in asks for a code from your authenticator app.
        </p>
        <form onSubmit={disable} className="inline">
          <div className="field">
            <label htmlFor={ids.disable}>Code or recovery code</label>
            <input id={ids.disable} name="code" autoComplete="one-time-code" required maxLength={40} />
          </div>
          <button type="submit" className="danger" disabled={busy}>
            Turn off
          </button>
        </form>
        <ErrorLine error={error} />
      </Section>
    );
  }

  if (enrolment) {
    return (
      <Section title="Two-factor authentication">
        <p>
          Scan this code with an authenticator app, or type the key into it, then enter the code it shows.
        </p>
        {enrolment.qr && (
          <img
            src={enrolment.qr}
            alt="QR code for your authenticator app"
            className="qr"
            width={192}
            height={192}
          />
        )}
        <p>
          Key: <code className="secret">{enrolment.secret}</code>
        </p>
        <form onSubmit={confirm} className="inline">
          <div className="field">
            <label htmlFor={ids.code}>Code from the app</label>
            <input
              id={ids.code}
              name="code"
              inputMode="numeric"
              autoComplete="one-time-code"
              pattern="[0-9 ]{6,8}"
              required
            />
          </div>
          <button type="submit" disabled={busy}>
            Turn on
          </button>
          <button type="button" className="secondary" onClick={() => setEnrolment(null)}>
            Cancel
          </button>
        </form>
        <ErrorLine error={error} />
      </Section>
    );
  }

  return (
    <Section title="Two-factor authentication">
      <p>Off. With it on, signing in also asks for a code from an authenticator app on your phone.</p>
      <form onSubmit={start} className="inline">
        {user.has_password && (
          <div className="field">
            <label htmlFor={ids.password}>Confirm your password</label>
            <input
              id={ids.password}
              name="password"
              type="password"
              autoComplete="current-password"
              required
            />
          </div>
        )}
        <button type="submit" disabled={busy}>
          Set up two-factor authentication
        </button>
      </form>
      <ErrorLine error={error} />
    </Section>
  );
}

interface BlockingOrg {
  id: string;
  name: string;
}

function YourData({ user }: { user: User }) {
  const [, navigate] = useLocation();
  const ids = { confirm: useId(), password: useId(), code: useId() };
  const exporting = useAction();
  const deleting = useAction();
  const [blocking, setBlocking] = useState<BlockingOrg[]>([]);

  const exportData = () =>
    exporting.run(async () => {
      const day = new Date().toISOString().slice(0, 10);
      const ok = await download("/v1/me/export", `tollgate-export-${day}.json`);
      return ok ? null : "The export could not be made. Try again.";
    });

  const erase = (event: React.FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const form = event.currentTarget;
    const body = {
      confirm_email: fieldOf(form, "confirm_email"),
      ...(user.has_password ? { password: String(new FormData(form).get("password") ?? "") } : {}),
      ...(user.two_factor_enabled ? { code: fieldOf(form, "code") } : {}),
    };
    if (!window.confirm("Delete your account for good? This cannot be undone.")) return;
    setBlocking([]);
    void deleting.run(async () => {
      const { error, response } = await api.DELETE("/v1/me", { body });
      if (!response.ok) {
        setBlocking(((error as { orgs?: BlockingOrg[] } | undefined)?.orgs ?? []).slice(0, 20));
        return problemMessage(error);
      }
      session.clear();
      navigate("~/login?account=deleted", { replace: true });
      return null;
    });
  };

  return (
    <>
      <Section title="Your data">
        <p>A copy of everything this service holds about you, as a JSON file.</p>
        <button type="button" className="secondary" onClick={exportData} disabled={exporting.busy}>
          {exporting.busy ? "Preparing…" : "Download my data"}
        </button>
        <ErrorLine error={exporting.error} />
      </Section>
      <Section title="Delete your account">
        <p>
          Your personal data is erased and you leave every organization. Organizations where you are the only
          member are deleted with it; invoices are kept as the law requires, without your personal data.
        </p>
        <form onSubmit={erase}>
          <div className="field">
            <label htmlFor={ids.confirm}>Type your e-mail address to confirm</label>
            <input id={ids.confirm} name="confirm_email" type="email" autoComplete="off" required />
          </div>
          {user.has_password && (
            <div className="field">
              <label htmlFor={ids.password}>Password</label>
              <input
                id={ids.password}
                name="password"
                type="password"
                autoComplete="current-password"
                required
              />
            </div>
          )}
          {user.two_factor_enabled && (
            <div className="field">
              <label htmlFor={ids.code}>Two-factor code</label>
              <input id={ids.code} name="code" autoComplete="one-time-code" required maxLength={40} />
            </div>
          )}
          <button type="submit" className="danger" disabled={deleting.busy}>
            Delete my account
          </button>
        </form>
        <ErrorLine error={deleting.error} />
        {blocking.length > 0 && (
          <ul aria-label="Organizations to hand over first">
            {blocking.map((org) => (
              <li key={org.id}>
                <a href={`/dashboard/orgs/${org.id}/team`}>{org.name}</a>
              </li>
            ))}
          </ul>
        )}
      </Section>
    </>
  );
}
