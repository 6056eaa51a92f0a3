import { useCallback, useEffect, useId, useState } from "react";
import { Loading } from "../App";
import { can, useRole } from "../access";
import { api, problemMessage, type Schemas } from "../api/client";
import { DataTable } from "../components/DataTable";
import { ErrorLine } from "../components/ErrorLine";

type Role = Schemas["Member"]["role"];
const ROLES: { role: Role; label: string }[] = [
  { role: "owner", label: "Owner" },
  { role: "admin", label: "Admin" },
  { role: "member", label: "Member" },
  { role: "billing", label: "Billing" },
];

/** Members and their roles, and invitations; managing is for owners and admins (the API decides). */
export function Team({ orgId }: { orgId: string }) {
  const canManage = can(useRole(orgId), "members:manage");
  const [members, setMembers] = useState<Schemas["Member"][] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const load = useCallback(async () => {
    const { data, error } = await api.GET("/v1/orgs/{org}/members", { params: { path: { org: orgId } } });
    if (data) setMembers(data.data);
    else setError(problemMessage(error));
  }, [orgId]);
  useEffect(() => {
    void load();
  }, [load]);

  const changeRole = async (user: string, role: Role) => {
    setError(null);
    const { error } = await api.PATCH("/v1/orgs/{org}/members/{user}", {
      params: { path: { org: orgId, user } },
      body: { role },
    });
    if (error) setError(problemMessage(error));
    await load();
  };
  const remove = async (member: Schemas["Member"]) => {
    if (!window.confirm(`Remove ${member.name || member.email} from this organization?`)) return;
    const { error } = await api.DELETE("/v1/orgs/{org}/members/{user}", {
      params: { path: { org: orgId, user: member.user_id } },
    });
    if (error) setError(problemMessage(error));
    await load();
  };

  return (
    <>
      <h1>Team</h1>
      {canManage && (
        <InviteForm orgId={orgId} onInvited={(email) => setNotice(`Invitation sent to ${email}.`)} />
      )}
      {notice && (
        <p role="status" className="notice">
          {notice}
        </p>
      )}
      <ErrorLine error={error} />
      {members === null ? (
        <Loading label="Loading members…" />
      ) : (
        <DataTable
          label="Members"
          rows={members}
          rowKey={(member) => member.user_id}
          columns={[
            { header: "Name", cell: (member) => member.name },
            { header: "E-mail", cell: (member) => member.email },
            {
              header: "Role",
              cell: (member) =>
                canManage ? (
                  <RoleEditor member={member} onSave={(role) => changeRole(member.user_id, role)} />
                ) : (
                  member.role
                ),
            },
            {
              header: "Actions",
              hideHeader: true,
              cell: (member) =>
                canManage && (
                  <button type="button" className="secondary" onClick={() => remove(member)}>
                    Remove<span className="visually-hidden"> {member.email}</span>
                  </button>
                ),
            },
          ]}
        />
      )}
    </>
  );
}

function InviteForm({ orgId, onInvited }: { orgId: string; onInvited: (email: string) => void }) {
  const emailId = useId();
  const roleId = useId();
  const [error, setError] = useState<string | null>(null);
  const submit = async (event: React.FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const form = event.currentTarget;
    const fields = new FormData(form);
    const email = String(fields.get("email") ?? "");
    setError(null);
    const { error } = await api.POST("/v1/orgs/{org}/invitations", {
      params: { path: { org: orgId } },
      body: { email, role: String(fields.get("role")) as Role },
    });
    if (error) return setError(problemMessage(error));
    form.reset();
    onInvited(email);
  };
  return (
    <form className="panel inline" onSubmit={submit} aria-label="Invite someone">
      <div className="field">
        <label htmlFor={emailId}>E-mail to invite</label>
        <input id={emailId} name="email" type="email" required />
      </div>
      <div className="field">
        <label htmlFor={roleId}>Role</label>
        <select id={roleId} name="role" defaultValue="member">
          {ROLES.map(({ role, label }) => (
            <option key={role} value={role}>
              {label}
            </option>
          ))}
        </select>
      </div>
      <button type="submit">Send invitation</button>
      <ErrorLine error={error} />
    </form>
  );
}

/** A role picker that changes nothing until saved: arrowing through it with a keyboard is safe. */
function RoleEditor({
  member,
  onSave,
}: {
  member: Schemas["Member"];
  onSave: (role: Role) => Promise<void>;
}) {
  const [role, setRole] = useState<Role>(member.role);
  return (
    <span className="actions">
      <select
        aria-label={`Role of ${member.email}`}
        value={role}
        onChange={(event) => setRole(event.target.value as Role)}
      >
        {ROLES.map(({ role: value, label }) => (
          <option key={value} value={value}>
            {label}
          </option>
        ))}
      </select>
      {role !== member.role && (
        <button type="button" className="secondary" onClick={() => onSave(role)}>
          Save<span className="visually-hidden"> the role of {member.email}</span>
        </button>
      )}
    </span>
  );
}
