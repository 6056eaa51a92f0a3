import createClient from "openapi-fetch";
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

/**
 * Every request carries the access token; one answered 401 (the token expired: they last minutes)
 * is sent once more after a refresh. Sign-in and refresh calls themselves are never retried.
 */
async function authorizedFetch(request: Request): Promise<Response> {
  const retry = request.clone();
  if (accessToken_) request.headers.set("authorization", `Bearer ${accessToken_}`);
  const response = await fetch(request);
  if (response.status !== 401 || new URL(request.url).pathname.startsWith("/v1/auth/") || !(await resume())) {
    return response;
  }
  retry.headers.set("authorization", `Bearer ${accessToken_}`);
  return fetch(retry);
}

export const api = createClient<paths>({ baseUrl: window.location.origin, fetch: authorizedFetch });

/**
 * Fetches a file that needs the session's credentials (a PDF, a data export) and hands it to the
 * browser as a download. False when the server refused or could not be reached.
 */
export async function download(path: string, filename: string): Promise<boolean> {
  const response = await authorizedFetch(new Request(new URL(path, window.location.origin))).catch(
    () => undefined,
  );
  if (!response?.ok) return false;
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  link.click();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return true;
}

let refreshing: Promise<boolean> | null = null;

/**
 * Trades the stored refresh token for a new pair (the server rotates it). Tabs take turns (a Web
 * Lock), each reading the token inside its turn: two tabs sending the same token would look like a
 * stolen one, and the server would end the session. Only a refusal (401) forgets the token; a server
 * error or an unreachable server leaves it for the next try.
 */
export function resume(): Promise<boolean> {
  refreshing ??= withLock(async () => {
    const refresh = localStorage.getItem(REFRESH_KEY);
    if (!refresh) return false;
    const response = await fetch("/v1/auth/refresh", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ refresh_token: refresh }),
    }).catch(() => undefined);
    if (response?.ok) {
      session.set((await response.json()) as { access_token: string; refresh_token: string });
      return true;
    }
    if (response?.status === 401) session.clear();
    return false;
  }).finally(() => {
    refreshing = null;
  });
  return refreshing;
}

function withLock<T>(work: () => Promise<T>): Promise<T> {
  const locks = (navigator as Navigator & { locks?: LockManager }).locks;
  return locks ? (locks.request("tollgate-session", work) as Promise<T>) : work();
}

/** The message to show for a failed call: the problem's detail, or the first field error. */
export function problemMessage(error: unknown): string {
  const problem = error as Partial<Problem> | undefined;
  const field = problem?.errors?.[0];
  if (field) return `${field.field}: ${field.message}`;
  return problem?.detail ?? problem?.title ?? "Something went wrong. Try again.";
}
