import { useContext, useEffect, useState, useSyncExternalStore } from "react";
import { Redirect, Route, Switch, useLocation, useSearch } from "wouter";
import { MeContext } from "./access";
import { resume, session } from "./api/client";
import { Layout } from "./Layout";
import { Account } from "./pages/Account";
import { Admin } from "./pages/Admin";
import { AdminBroadcast, AdminJobs, AdminOrgs, AdminOutbox, AdminUsers } from "./pages/AdminPages";
import { ApiKeys } from "./pages/ApiKeys";
import { Billing } from "./pages/Billing";
import { Login } from "./pages/Login";
import { NotFound } from "./pages/NotFound";
import { Overview } from "./pages/Overview";
import { Pricing } from "./pages/Pricing";
import { Settings } from "./pages/Settings";
import { Signup } from "./pages/Signup";
import { Team } from "./pages/Team";
import { AcceptInvitation, ForgotPassword, ResetPassword, VerifyEmail } from "./pages/TokenPages";
import { Webhooks } from "./pages/Webhooks";

/** Signed in or not, as the rest of the app sees it. */
export function useSignedIn(): boolean {
  return useSyncExternalStore(session.subscribe, () => session.signedIn);
}

export function App() {
  // A reload keeps the session: the refresh token stored by the last sign-in is traded for new tokens.
  const [resuming, setResuming] = useState(true);
  useEffect(() => {
    void resume().finally(() => setResuming(false));
  }, []);
  if (resuming) return <Loading label="Loading…" />;
  return (
    <Switch>
      <Route path="/login" component={Login} />
      <Route path="/signup" component={Signup} />
      <Route path="/verify-email" component={VerifyEmail} />
      <Route path="/pricing" component={Pricing} />
      <Route path="/reset-password" component={ResetPassword} />
      <Route path="/forgot-password" component={ForgotPassword} />
      {/* Links in e-mails that name no org: the first org's page. */}
      <Route path="/billing">
        <Redirect to="/dashboard/orgs/first/billing" />
      </Route>
      <Route path="/webhooks">
        <Redirect to="/dashboard/orgs/first/webhooks" />
      </Route>
      <Route path="/invitations/:token" component={AcceptInvitation} />
      <Route path="/dashboard" nest>
        <Private>
          <Layout>
            <Switch>
              <Route path="/account" component={Account} />
              <Route path="/admin" component={Admin} />
              <Route path="/admin/orgs" component={AdminOrgs} />
              <Route path="/admin/users" component={AdminUsers} />
              <Route path="/admin/outbox" component={AdminOutbox} />
              <Route path="/admin/jobs" component={AdminJobs} />
              <Route path="/admin/broadcast" component={AdminBroadcast} />
              <Route path="/orgs/first/:page">{(params) => <FirstOrg page={params.page} />}</Route>
              <Route path="/orgs/:org/billing">{(params) => <Billing orgId={params.org} />}</Route>
              <Route path="/orgs/:org/keys">{(params) => <ApiKeys orgId={params.org} />}</Route>
              <Route path="/orgs/:org/team">{(params) => <Team orgId={params.org} />}</Route>
              <Route path="/orgs/:org/webhooks">{(params) => <Webhooks orgId={params.org} />}</Route>
              <Route path="/orgs/:org/settings">{(params) => <Settings orgId={params.org} />}</Route>
              <Route path="/orgs/:org">{(params) => <Overview orgId={params.org} />}</Route>
              <Route path="/">
                <Overview />
              </Route>
              <Route component={NotFound} />
            </Switch>
          </Layout>
        </Private>
      </Route>
      <Route path="/">
        <Redirect to="/dashboard" />
      </Route>
      <Route component={NotFound} />
    </Switch>
  );
}

/** Pages behind a sign-in: the visitor is sent to /login, and back here afterwards. */
function Private({ children }: { children: React.ReactNode }) {
  const signedIn = useSignedIn();
  const [location] = useLocation();
  const search = useSearch();
  const here = `/dashboard${location}${search ? `?${search}` : ""}`;
  if (!signedIn) return <Redirect to={`~/login?next=${encodeURIComponent(here)}`} />;
  return <>{children}</>;
}

/** `/orgs/first/<page>`: the page of the user's first org (for links that cannot name one). */
function FirstOrg({ page }: { page: string }) {
  const me = useContext(MeContext);
  const search = useSearch();
  if (!me) return <Loading label="Loading…" />;
  const org = me.orgs[0];
  return org ? (
    <Redirect to={`/orgs/${org.id}/${page}${search ? `?${search}` : ""}`} replace />
  ) : (
    <p>You are not a member of any organization yet.</p>
  );
}

export function Loading({ label }: { label: string }) {
  return (
    <p className="loading" role="status" aria-live="polite">
      {label}
    </p>
  );
}
