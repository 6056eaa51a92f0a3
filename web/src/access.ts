import { createContext, useContext } from "react";
import type { Schemas } from "./api/client";

/**
 * What the signed-in user may do in an org, mirroring the server's role matrix
 * (src/modules/orgs/permissions.ts) so pages hide what the API would refuse. The API still decides:
 * this only spares a click that would end in 403.
 */
export type Role = Schemas["Me"]["orgs"][number]["role"];

const MATRIX: Record<string, Role[]> = {
  "billing:read": ["owner", "admin", "billing"],
  "billing:manage": ["owner", "billing"],
  "keys:read": ["owner", "admin", "member"],
  "keys:manage": ["owner", "admin"],
  "members:manage": ["owner", "admin"],
  "org:update": ["owner", "admin"],
  "webhooks:read": ["owner", "admin", "member"],
  "webhooks:manage": ["owner", "admin"],
};

export function can(role: Role | undefined, permission: keyof typeof MATRIX): boolean {
  return role !== undefined && (MATRIX[permission]?.includes(role) ?? false);
}

export const MeContext = createContext<Schemas["Me"] | null>(null);

/** The signed-in user's role in an org (undefined while loading or when not a member). */
export function useRole(orgId: string): Role | undefined {
  return useContext(MeContext)?.orgs.find((org) => org.id === orgId)?.role;
}

/** Lets a page that changes the org's branding show it in the frame at once. */
export const BrandingContext = createContext<(branding: Schemas["Branding"]) => void>(() => {});
