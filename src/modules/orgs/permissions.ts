import type { Role } from "../../db/schema.js";

/**
 * Who may do what in an org. The matrix is documented for users in docs/identity.md; change both
 * together. Org API keys carry scopes, which are the read permissions below.
 */
export const PERMISSIONS = [
  "org:read",
  "org:update",
  "org:delete",
  "members:read",
  "members:manage",
  "keys:read",
  "keys:manage",
  "billing:read",
  "billing:manage",
  "webhooks:read",
  "webhooks:manage",
  "usage:read",
  "audit:read",
] as const;
export type Permission = (typeof PERMISSIONS)[number];

const READ_ALL: Permission[] = PERMISSIONS.filter((p) => p.endsWith(":read"));

export const ROLE_PERMISSIONS: Record<Role, ReadonlySet<Permission>> = {
  owner: new Set(PERMISSIONS),
  admin: new Set(PERMISSIONS.filter((p) => p !== "org:delete" && p !== "billing:manage")),
  member: new Set<Permission>(["org:read", "members:read", "keys:read", "webhooks:read", "usage:read"]),
  billing: new Set<Permission>(["org:read", "members:read", "billing:read", "billing:manage", "usage:read"]),
};

/** What an org API key may be granted: read access only, per resource. */
export const API_KEY_SCOPES = READ_ALL;
export type ApiKeyScope = Permission;

export function roleAllows(role: Role, permission: Permission): boolean {
  return ROLE_PERMISSIONS[role].has(permission);
}
