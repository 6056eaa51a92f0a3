# syntax=docker/dockerfile:1
#
# Tollgate's container image.
#
#   docker build -t tollgate:local .
#   docker run --rm -p 3000:3000 -v tollgate-data:/data tollgate:local        # embedded mode
#
# See docs/operations.md ("Docker") for production settings (DATABASE_URL, REDIS_URL, secrets).

ARG NODE_IMAGE=node:20-bookworm-slim

# --- build: every dependency, then TypeScript → dist/ -------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY web ./web
RUN npm run build

# --- deps: production dependencies only ---------------------------------------------------------
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

# --- runtime ------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="Tollgate" \
      org.opencontainers.image.description="The open-source control plane for SaaS products." \
      org.opencontainers.image.licenses="Apache-2.0"

# HOST: the server listens on 127.0.0.1 by default, which is unreachable from outside a container.
# TOLLGATE_DATA_DIR: embedded mode (no DATABASE_URL) keeps its data here; mount a volume on it.
ENV HOST=0.0.0.0 NODE_ENV=production TOLLGATE_DATA_DIR=/data NODE_OPTIONS=--enable-source-maps

WORKDIR /app
# The application files stay owned by root: the `node` user can read them but not change them.
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json package-lock.json ./
COPY bin ./bin
COPY migrations ./migrations
COPY catalogs ./catalogs

# No VOLUME instruction: in Postgres mode /data is unused, and an anonymous volume per container
# would only pile up. Embedded mode needs `-v <volume>:/data` (see docs/operations.md).
RUN mkdir -p /data && chown node:node /data

# uid/gid 1000 in the official Node images (Kubernetes' runAsNonRoot needs the number: runAsUser: 1000).
USER node

EXPOSE 3000

# Liveness only (the process answers); readiness (/readyz) is for load balancers. Node's own fetch,
# since the slim image has no curl. Assumes HOST includes loopback (0.0.0.0 or ::).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 3000) + '/healthz', { signal: AbortSignal.timeout(4000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# The server handles SIGTERM itself (stops accepting, finishes in-flight requests for up to 10 s,
# closes its pools), so node can be PID 1. Give `docker stop` more than 10 s: `docker stop -t 30`.
CMD ["node", "bin/tollgate.js", "start"]
