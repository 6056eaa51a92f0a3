import { jwtVerify, SignJWT } from "jose";
import type { Deps } from "../../deps.js";
import { deriveKey } from "../../lib/crypto.js";

/** Access tokens live 15 minutes; refresh tokens renew them. */
export const ACCESS_TOKEN_SECONDS = 15 * 60;

const ISSUER = "tollgate";
const keys = new WeakMap<Deps, Uint8Array>();

function signingKey(deps: Deps): Uint8Array {
  let key = keys.get(deps);
  if (!key) {
    key = new Uint8Array(deriveKey(deps.secrets.secret, "access-token"));
    keys.set(deps, key);
  }
  return key;
}

export interface AccessClaims {
  userId: string;
  sessionId: string;
  platformAdmin: boolean;
  /** The user had two-factor authentication on when the session began. */
  twoFactor: boolean;
}

/** Signs a short-lived access token (HS256 with a key derived from TOLLGATE_SECRET). */
export async function issueAccessToken(deps: Deps, claims: AccessClaims): Promise<string> {
  const now = Math.floor(deps.clock.nowMs() / 1000);
  return new SignJWT({ sid: claims.sessionId, padm: claims.platformAdmin, tfa: claims.twoFactor })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setIssuer(ISSUER)
    .setSubject(claims.userId)
    .setIssuedAt(now)
    .setExpirationTime(now + ACCESS_TOKEN_SECONDS)
    .sign(signingKey(deps));
}

/** The claims of a valid, unexpired access token (by the app's clock), or undefined. */
export async function verifyAccessToken(deps: Deps, token: string): Promise<AccessClaims | undefined> {
  try {
    const { payload } = await jwtVerify(token, signingKey(deps), {
      issuer: ISSUER,
      algorithms: ["HS256"],
      currentDate: deps.clock.now(),
    });
    if (typeof payload.sub !== "string" || typeof payload.sid !== "string") return undefined;
    return {
      userId: payload.sub,
      sessionId: payload.sid,
      platformAdmin: payload.padm === true,
      twoFactor: payload.tfa === true,
    };
  } catch {
    return undefined;
  }
}
