import createClient, { type Middleware } from "openapi-fetch";
import type { components, paths } from "./schema";

/**
 * The dashboard's only way to the server: a client typed by the OpenAPI document the server serves
 * (schema.d.ts is generated from it; a test fails when it is stale), so a renamed field is a type
 * error here, not a blank page.
 */

export type Schemas = components["schemas"];

/** A problem+json answer, as the API sends every error (RFC 9457). */
export interface Problem {
  status: number;
  title: string;
  detail?: string;
  code: string;
  errors?: { field: string; message: string }[];
}

const REFRESH_KEY = "tollgate.refresh";

let accessToken_: string | null = null;
const listeners = new Set<() => void>();

export const session = {
  get signedIn() {
    return accessToken_ !== null;
  },
  /** Keeps the access token in memory and the refresh token in this browser (until sign-out). */
  set(tokens: { access_token: string; refresh_token: string }) {
    accessToken_ = tokens.access_token;
    localStorage.setItem(REFRESH_KEY, tokens.refresh_token);
    for (const listener of listeners) listener();
  },
  clear() {
    accessToken_ = null;
    localStorage.removeItem(REFRESH_KEY);
    for (const listener of listeners) listener();
  },
  subscribe(listener: () => void) {
    listeners.add(listener);
    return () => listeners.delete(listener);
  },
};

/** The current access token, for the few requests made outside the client (file downloads). */
export const accessToken = () => accessToken_;

export const api = createClient<paths>({ baseUrl: window.location.origin });

const bearer: Middleware = {
  onRequest({ request }) {
    if (accessToken_) request.headers.set("authorization", `Bearer ${accessToken_}`);
    return request;
  },
};
api.use(bearer);

let refreshing: Promise<boolean> | null = null;

/** Trades the stored refresh token for a new pair (rotating it); false when there is none or it is spent. */
export function resume(): Promise<boolean> {
  refreshing ??= (async () => {
    const refresh = localStorage.getItem(REFRESH_KEY);
    if (!refresh) return false;
    const { data } = await api.POST("/v1/auth/refresh", { body: { refresh_token: refresh } });
    if (!data) {
      session.clear();
      return false;
    }
    session.set(data);
    return true;
  })().finally(() => {
    refreshing = null;
  });
  return refreshing;
}

/** The message to show for a failed call: the problem's detail, or the first field error. */
export function problemMessage(error: unknown): string {
  const problem = error as Partial<Problem> | undefined;
  const field = problem?.errors?.[0];
  if (field) return `${field.field}: ${field.message}`;
  return problem?.detail ?? problem?.title ?? "Something went wrong. Try again.";
}
