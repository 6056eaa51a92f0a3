import { useEffect, useId, useRef, useState } from "react";
import { Link, useLocation, useParams, useSearchParams } from "wouter";
import { useSignedIn } from "../App";
import { api, problemMessage } from "../api/client";
import { ErrorLine } from "../components/ErrorLine";

/** The e-mail verification link: the token is posted once, and the answer shown. */
export function VerifyEmail() {
  const [params] = useSearchParams();
  const token = params.get("token") ?? "";
  const [state, setState] = useState<"working" | "done" | string>("working");
  // Once per token: a second post of a single-use token would report the link as used.
  const posted = useRef<string | null>(null);
  useEffect(() => {
    if (posted.current === token) return;
    posted.current = token;
    void api
      .POST("/v1/auth/verify-email", { body: { token } })
      .then(({ error }) => setState(error ? problemMessage(error) : "done"));
  }, [token]);
  return (
    <main className="narrow">
      <h1>E-mail verification</h1>
      {state === "working" ? (
        <p role="status">Checking the link…</p>
      ) : state === "done" ? (
        <p role="status">
          Your e-mail address is verified. <Link href="/dashboard">Continue to the dashboard</Link>.
        </p>
      ) : (
        <p className="error" role="alert">
          {state}
        </p>
      )}
    </main>
  );
}

/** An invitation link: signed-in users accept it; others sign in (or up) first and come back here. */
export function AcceptInvitation() {
  const { token } = useParams<{ token: string }>();
  const signedIn = useSignedIn();
  const [, navigate] = useLocation();
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const here = `/invitations/${token}`;
  const accept = async () => {
    setBusy(true);
    const { data, error } = await api.POST("/v1/invitations/{token}/accept", { params: { path: { token } } });
    setBusy(false);
    if (!data) return setError(problemMessage(error));
    navigate(`/dashboard/orgs/${data.org_id}`);
  };
  return (
    <main className="narrow">
      <h1>Join an organization</h1>
      {signedIn ? (
        <>
          <p>You have been invited to an organization.</p>
          <button type="button" disabled={busy} onClick={accept}>
            Accept the invitation
          </button>
        </>
      ) : (
        <p>
          <Link href={`/login?next=${encodeURIComponent(here)}`}>Sign in</Link> or{" "}
          <Link href={`/signup?next=${encodeURIComponent(here)}`}>create an account</Link> with the invited
          e-mail address to accept it.
        </p>
      )}
      <ErrorLine error={error} />
    </main>
  );
}

/** The password reset link: a new password, then sign in with it (every session was ended). */
export function ResetPassword() {
  const [params] = useSearchParams();
  const token = params.get("token") ?? "";
  const passwordId = useId();
  const [state, setState] = useState<"form" | "busy" | "done">("form");
  const [error, setError] = useState<string | null>(null);
  const submit = async (event: React.FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const password = String(new FormData(event.currentTarget).get("password") ?? "");
    setState("busy");
    setError(null);
    const { error } = await api.POST("/v1/auth/reset-password", { body: { token, password } });
    if (error) {
      setState("form");
      return setError(problemMessage(error));
    }
    setState("done");
  };
  return (
    <main className="narrow">
      <h1>Choose a new password</h1>
      {state === "done" ? (
        <p role="status">
          Your password is changed. <Link href="/login">Sign in</Link> with it.
        </p>
      ) : (
        <form onSubmit={submit}>
          <div className="field">
            <label htmlFor={passwordId}>New password</label>
            <input
              id={passwordId}
              name="password"
              type="password"
              autoComplete="new-password"
              minLength={10}
              required
            />
          </div>
          <ErrorLine error={error} />
          <button type="submit" disabled={state === "busy"}>
            Set the password
          </button>
        </form>
      )}
    </main>
  );
}

/** Asks for a reset link; the answer is the same whether or not the address has an account. */
export function ForgotPassword() {
  const emailId = useId();
  const [sent, setSent] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const submit = async (event: React.FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const email = String(new FormData(event.currentTarget).get("email") ?? "");
    const { error } = await api.POST("/v1/auth/forgot-password", { body: { email } });
    if (error) return setError(problemMessage(error));
    setSent(true);
  };
  return (
    <main className="narrow">
      <h1>Reset your password</h1>
      {sent ? (
        <p role="status">If an account uses that address, a link to reset its password is on its way.</p>
      ) : (
        <form onSubmit={submit}>
          <div className="field">
            <label htmlFor={emailId}>E-mail</label>
            <input id={emailId} name="email" type="email" autoComplete="email" required />
          </div>
          <ErrorLine error={error} />
          <button type="submit">Send the link</button>
        </form>
      )}
    </main>
  );
}
