# syntax=docker/dockerfile:1
# The server agent image (`kelsingra server`; docs/deploy.md):
#
#   docker build -t registry.example.com/kelsingra:0.1.0 .
#   docker run --rm -p 7700:7700 -p 7701:7701 \
#     -v "$PWD/kelsingra.yaml:/etc/kelsingra/config/kelsingra.yaml:ro" \
#     -e KELSINGRA_TOKEN=a-long-random-secret registry.example.com/kelsingra:0.1.0
#
# Three stages: `build` compiles the TypeScript with every dependency, `deps` installs the
# production dependencies alone, and the runtime image gets only dist/, bin/, those
# node_modules and package.json, on Node 24 slim, as the unprivileged `node` user (uid 1000).
ARG NODE_BUILD_IMAGE=node:24-bookworm
ARG NODE_RUNTIME_IMAGE=node:24-bookworm-slim

FROM ${NODE_BUILD_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: the one install script in the tree is the `node` devDependency's, which
# fetches a second Node 24 for npm scripts on machines without one; this image has Node 24.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json ./
COPY bin ./bin
COPY commands ./commands
COPY server ./server
COPY src ./src
RUN npm run build

FROM ${NODE_BUILD_IMAGE} AS deps
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM ${NODE_RUNTIME_IMAGE} AS runtime
# The agent needs neither npm nor yarn nor corepack at run time: fewer files, fewer CVEs.
RUN rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack \
      /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack \
      /opt/yarn-* /usr/local/bin/yarn /usr/local/bin/yarnpkg
# Inside a container the agent listens on every interface (this overrides a config file's
# `host`; a --host flag overrides both).
ENV NODE_ENV=production KELSINGRA_HOST=0.0.0.0
WORKDIR /app
# Owned by root and not writable by the agent; it writes nothing (readOnlyRootFilesystem).
COPY --from=deps /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/bin ./bin
COPY --from=build /src/package.json ./package.json
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
EXPOSE 7700 7701
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.KELSINGRA_PORT || 7700) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# Node is PID 1: the agent handles SIGTERM itself (closes its ports and its tunnels, leaves
# the replica table) and exits.
ENTRYPOINT ["node", "/app/bin/run.js"]
CMD ["server", "--config", "/etc/kelsingra/config/kelsingra.yaml"]
