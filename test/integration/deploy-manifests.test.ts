/**
 * The deployment files hold together: deploy/k8s parses, the Deployment probes /healthz on
 * the control port, runs non-root with two or more replicas, the PDB and the Services select
 * its pods, the ConfigMap's kelsingra.yaml loads with the real config loader (with the
 * Secret's values stubbed), the ports agree everywhere, the Dockerfile is multi-stage and
 * non-root, and the reverse-proxy recipes address the Services that exist. No cluster here:
 * these are the checks that can run without one (docs/deploy.md says what was not tried).
 */
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { ROOT, tempDir } from '../support/helpers.js';
import { serverConfigFrom } from '../support/server-env.js';

const K8S = join(ROOT, 'deploy', 'k8s');
const PROXY = join(ROOT, 'deploy', 'reverse-proxy');

// biome-ignore lint/suspicious/noExplicitAny: Kubernetes objects are checked field by field below.
type Obj = Record<string, any>;

function yamlDocs(path: string): Obj[] {
  const docs = parseAllDocuments(readFileSync(path, 'utf8'));
  const out: Obj[] = [];
  for (const doc of docs) {
    if (doc.errors.length) throw new Error(`${path}: ${doc.errors.map((e) => e.message).join('; ')}`);
    const value = doc.toJS() as Obj | null;
    if (value) out.push(value);
  }
  return out;
}

const files = readdirSync(K8S).filter((f) => /\.ya?ml$/.test(f));
const objects = files.flatMap((file) => yamlDocs(join(K8S, file)).map((obj) => ({ file, obj })));

function one(kind: string, name?: string): Obj {
  const found = objects.filter(({ obj }) => obj.kind === kind && (!name || obj.metadata?.name === name));
  if (found.length !== 1)
    throw new Error(`expected one ${kind}${name ? ` ${name}` : ''} in deploy/k8s, found ${found.length}`);
  return (found[0] as { obj: Obj }).obj;
}

const deployment = one('Deployment');
const podSpec: Obj = deployment.spec.template.spec;
const podLabels: Record<string, string> = deployment.spec.template.metadata.labels;
const container: Obj = podSpec.containers[0];
const configMap = one('ConfigMap');
const secret = one('Secret');

/** True if every label of `selector` is on the Deployment's pods. */
const selectsPods = (selector: Record<string, string>) =>
  Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => podLabels[k] === v);

/** A container port by name or number. */
function containerPort(port: string | number): number {
  if (typeof port === 'number') return port;
  const found = (container.ports as Obj[]).find((p) => p.name === port);
  if (!found) throw new Error(`the container has no port named ${port}`);
  return found.containerPort as number;
}

/** The volume mounted at the directory holding `path`, and the file name in it. */
function volumeFor(path: string): { volume: Obj; file: string } {
  const mount = (container.volumeMounts as Obj[]).find((m) => path.startsWith(`${m.mountPath}/`));
  if (!mount) throw new Error(`nothing is mounted where ${path} is`);
  const volume = (podSpec.volumes as Obj[]).find((v) => v.name === mount.name);
  if (!volume) throw new Error(`the mount ${mount.name} has no volume`);
  return { volume, file: path.slice(mount.mountPath.length + 1) };
}

const envVar = (name: string): Obj | undefined => (container.env as Obj[]).find((e) => e.name === name);

const tempDirs: string[] = [];
afterAll(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

/**
 * The server agent's configuration as a pod would load it, by the real loader: the ConfigMap's
 * file at the --config path, the container's environment (the pod IP and the Secret's values
 * stubbed), and the Secret's tokens file where the config says it is mounted.
 */
async function podConfig() {
  const configPath = container.args[container.args.indexOf('--config') + 1] as string;
  const dir = tempDir('kelsingra-manifests-');
  tempDirs.push(dir);
  const { volume: configVolume, file: configKey } = volumeFor(configPath);
  expect(configVolume.configMap?.name, `${configPath} comes from the ConfigMap`).toBe(
    configMap.metadata.name,
  );
  const configText = configMap.data[configKey];
  expect(configText, `the ConfigMap has ${configKey}`).toEqual(expect.any(String));
  const configFile = join(dir, 'kelsingra.yaml');
  writeFileSync(configFile, configText);

  const env: Record<string, string> = {};
  for (const e of container.env as Obj[]) {
    if (e.valueFrom?.fieldRef)
      env[e.name] = e.valueFrom.fieldRef.fieldPath === 'status.podIP' ? '10.1.2.3' : 'stub';
    else if (e.valueFrom?.secretKeyRef) {
      const ref = e.valueFrom.secretKeyRef;
      expect(ref.name, `${e.name} comes from the Secret`).toBe(secret.metadata.name);
      expect(Object.keys(secret.stringData), `the Secret has ${ref.key}`).toContain(ref.key);
      env[e.name] = ref.key === 'database-url' ? 'postgres://kelsingra:stub@db.test:5432/kelsingra' : 'stub';
    } else {
      env[e.name] = String(e.value).replace(/\$\(([A-Z0-9_]+)\)/g, (_, name: string) => env[name] ?? '');
    }
  }

  const fileLayer = yamlDocs(configFile)[0] as Obj;
  const tokens = volumeFor(fileLayer.tokensFile);
  expect(tokens.volume.secret?.secretName, 'the tokens file comes from the Secret').toBe(
    secret.metadata.name,
  );
  expect(tokens.volume.secret.items.map((i: Obj) => i.path)).toContain(tokens.file);
  const tokensFile = join(dir, 'tokens.yaml');
  writeFileSync(tokensFile, secret.stringData[tokens.file]);

  const config = await serverConfigFrom({ ...env, KELSINGRA_TOKENS_FILE: tokensFile }, {}, configFile);
  return { config, env };
}

describe('deploy/k8s', () => {
  it('every file parses, and everything lives in the kelsingra namespace', () => {
    expect(files.length).toBeGreaterThan(3);
    for (const { file, obj } of objects) {
      if (obj.kind === 'Kustomization') continue;
      expect(obj.apiVersion, file).toEqual(expect.any(String));
      expect(
        obj.kind === 'Namespace' ? obj.metadata.name : obj.metadata.namespace,
        `${file} ${obj.kind}`,
      ).toBe('kelsingra');
    }
  });

  it('kustomization.yaml lists every manifest except the example Secret', () => {
    const kustomization = one('Kustomization');
    const manifests = files.filter((f) => f !== 'kustomization.yaml' && !f.includes('.example.'));
    expect([...kustomization.resources].sort()).toEqual(manifests.sort());
    expect(kustomization.resources).not.toContain('secret.example.yaml');
    expect(kustomization.images.map((i: Obj) => i.name)).toContain(container.image.split(':')[0]);
  });

  it('the Deployment runs two or more replicas and rolls without going below them', () => {
    expect(deployment.spec.replicas).toBeGreaterThanOrEqual(2);
    expect(selectsPods(deployment.spec.selector.matchLabels)).toBe(true);
    expect(deployment.spec.strategy.rollingUpdate.maxUnavailable).toBe(0);
  });

  it('probes hit /healthz on the control port', async () => {
    const { config } = await podConfig();
    for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
      const p = container[probe];
      expect(p, probe).toBeDefined();
      expect(p.httpGet.path, probe).toBe('/healthz');
      expect(containerPort(p.httpGet.port), `${probe} port`).toBe(config.port);
    }
  });

  it('the grace period outlasts the preStop sleep and the drain, so the kubelet does not kill the agent mid-drain', async () => {
    const { config } = await podConfig();
    const sleep = container.lifecycle?.preStop?.sleep?.seconds ?? 0;
    expect(config.drainTimeout).toBeGreaterThan(0);
    expect(podSpec.terminationGracePeriodSeconds).toBeGreaterThan(sleep + config.drainTimeout);
  });

  it('the Prometheus annotations point at /metrics on the control port', async () => {
    const { config } = await podConfig();
    const annotations: Record<string, string> = deployment.spec.template.metadata.annotations;
    expect(annotations['prometheus.io/scrape']).toBe('true');
    expect(annotations['prometheus.io/path']).toBe('/metrics');
    expect(Number(annotations['prometheus.io/port'])).toBe(config.port);
  });

  it("the ConfigMap's kelsingra.yaml loads with the real config loader, with the Secret's values stubbed", async () => {
    const { config } = await podConfig();
    expect(config.host).toBe('0.0.0.0');
    expect(config.databaseUrl).toBe('postgres://kelsingra:stub@db.test:5432/kelsingra');
    // Each pod advertises its own IP and data port to the other replicas.
    expect(envVar('POD_IP')?.valueFrom?.fieldRef?.fieldPath).toBe('status.podIP');
    expect(config.advertiseUrl).toBe(`http://10.1.2.3:${config.proxyPort}`);
    expect(config.tokens.length).toBeGreaterThan(0);
    expect(Object.keys(config.services).length).toBeGreaterThan(0);
    // The container's ports are the config's.
    expect(containerPort('control')).toBe(config.port);
    expect(containerPort('data')).toBe(config.proxyPort);
  });

  it('runs as a non-root user with a read-only root file system and no privileges', () => {
    const pod = podSpec.securityContext;
    expect(pod.runAsNonRoot).toBe(true);
    expect(pod.runAsUser).toBeGreaterThan(0);
    const c = container.securityContext;
    expect(c.readOnlyRootFilesystem).toBe(true);
    expect(c.allowPrivilegeEscalation).toBe(false);
    expect(c.capabilities.drop).toContain('ALL');
    expect(c.runAsUser ?? pod.runAsUser).not.toBe(0);
    // Service links would put KELSINGRA_PORT=tcp://… into the agent's environment for a
    // Service named kelsingra.
    expect(podSpec.enableServiceLinks).toBe(false);
    expect(podSpec.automountServiceAccountToken).toBe(false);
    expect(container.resources.requests).toBeDefined();
    expect(container.resources.limits.memory).toBeDefined();
  });

  it('the Services select the pods, on the ports of the config; the data port stays inside the cluster', async () => {
    const { config } = await podConfig();
    const control = one('Service', 'kelsingra-control');
    const data = one('Service', 'kelsingra-data');
    for (const svc of [control, data]) expect(selectsPods(svc.spec.selector), svc.metadata.name).toBe(true);
    expect(control.spec.ports).toHaveLength(1);
    expect(containerPort(control.spec.ports[0].targetPort)).toBe(config.port);
    expect(data.spec.ports).toHaveLength(1);
    expect(containerPort(data.spec.ports[0].targetPort)).toBe(config.proxyPort);
    expect(data.spec.type ?? 'ClusterIP').toBe('ClusterIP');
  });

  it('a PodDisruptionBudget keeps at least one replica and selects the Deployment', () => {
    const pdb = one('PodDisruptionBudget');
    expect(selectsPods(pdb.spec.selector.matchLabels)).toBe(true);
    expect(pdb.spec.minAvailable).toBeGreaterThanOrEqual(1);
    // Below the replica count, or no drain could ever evict one.
    expect(pdb.spec.minAvailable).toBeLessThan(deployment.spec.replicas);
  });
});

/** Dockerfile instructions: continuation lines joined, comments dropped. */
function dockerfile(): { op: string; args: string }[] {
  const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
  const lines = text.split('\n').filter((l) => !/^\s*#/.test(l));
  const joined = lines.join('\n').replace(/\\\n/g, ' ');
  return joined
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .map((l) => {
      const [op = '', ...rest] = l.split(/\s+/);
      return { op: op.toUpperCase(), args: rest.join(' ') };
    });
}

describe('Dockerfile', () => {
  const instructions = dockerfile();
  const stages: { name: string; from: string; body: { op: string; args: string }[] }[] = [];
  for (const i of instructions) {
    if (i.op === 'FROM') {
      const m = i.args.match(/^(\S+)(?:\s+AS\s+(\S+))?$/i);
      stages.push({ from: m?.[1] ?? '', name: m?.[2] ?? String(stages.length), body: [] });
    } else stages.at(-1)?.body.push(i);
  }
  const runtime = stages.at(-1);

  it('is multi-stage: build with npm ci and npm run build, run from a slim Node 24 image', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    const runs = stages.flatMap((s) => s.body.filter((i) => i.op === 'RUN').map((i) => i.args)).join('\n');
    expect(runs).toMatch(/npm ci/);
    expect(runs).toMatch(/npm run build/);
    expect(runs).toMatch(/npm ci[^\n]*--omit=dev/);
    const args = Object.fromEntries(
      instructions.filter((i) => i.op === 'ARG').map((i) => i.args.split('=') as [string, string]),
    );
    const image = (from: string) => from.replace(/^\$\{(\w+)\}$/, (_, n: string) => args[n] ?? '');
    for (const s of stages) expect(image(s.from), s.name).toMatch(/^node:24\b/);
    expect(image(runtime?.from ?? '')).toMatch(/slim|distroless/);
  });

  it('the runtime stage runs as a non-root user that matches the pod spec', () => {
    const users = runtime?.body.filter((i) => i.op === 'USER') ?? [];
    expect(users.length, 'the last stage sets USER').toBeGreaterThan(0);
    const user = users.at(-1)?.args.split(':')[0] ?? '';
    expect(user).not.toMatch(/^(root|0)$/);
    expect(user).toMatch(/^\d+$/); // numeric, so runAsNonRoot can verify it
    expect(Number(user)).toBe(podSpec.securityContext.runAsUser);
  });

  it('the runtime stage gets only dist/, bin/, production node_modules and package.json', () => {
    const copies = runtime?.body.filter((i) => i.op === 'COPY') ?? [];
    const earlier = stages.slice(0, -1).map((s) => s.name);
    const targets = copies.map((c) => {
      const from = c.args.match(/--from=(\S+)/)?.[1];
      if (from) expect(earlier, `COPY --from=${from}`).toContain(from);
      return (c.args.split(/\s+/).at(-1) ?? '').replace(/^\.\//, '').replace(/\/$/, '');
    });
    expect(targets.sort()).toEqual(['bin', 'dist', 'node_modules', 'package.json']);
    const expose = runtime?.body.find((i) => i.op === 'EXPOSE')?.args.split(/\s+/) ?? [];
    expect(expose).toEqual(expect.arrayContaining(['7700', '7701']));
    expect(runtime?.body.find((i) => i.op === 'ENTRYPOINT')?.args).toMatch(/bin\/run\.js/);
  });

  it('.dockerignore lets in only what the Dockerfile copies from the context', () => {
    const patterns = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    expect(patterns[0]).toBe('*');
    const allowed = patterns.filter((p) => p.startsWith('!')).map((p) => p.slice(1).replace(/\/$/, ''));
    const sources = stages
      .flatMap((s) => s.body)
      .filter((i) => i.op === 'COPY' && !i.args.includes('--from='))
      .flatMap((i) => i.args.split(/\s+/).slice(0, -1))
      .map((src) => src.replace(/^\.\//, '').replace(/\/$/, ''));
    expect(sources.length).toBeGreaterThan(0);
    for (const src of sources) expect(allowed, `COPY ${src}`).toContain(src);
    for (const kept of allowed) expect(kept).not.toMatch(/node_modules|dist|\.git|\.kafka/);
  });
});

describe('deploy/reverse-proxy recipes address the Services that exist', () => {
  const addr = (name: string) => {
    const svc = one('Service', name);
    return `${name}.${svc.metadata.namespace}.svc.cluster.local:${svc.spec.ports[0].port}`;
  };

  it('nginx.conf: upstreams, the tenant map and the hop map', () => {
    const conf = readFileSync(join(PROXY, 'nginx.conf'), 'utf8');
    expect(conf).toContain(`server ${addr('kelsingra-data')};`);
    expect(conf).toContain(`server ${addr('kelsingra-control')};`);
    expect(conf).toMatch(/map \$http_x_tenant_id /);
    expect(conf).toMatch(/map "\$kelsingra_wanted:\$http_x_kelsingra_hop"/);
  });

  it('traefik.yaml: the tenant routes skip X-Kelsingra-Hop, outrank the base route, and go to the data Service', () => {
    const routes = yamlDocs(join(PROXY, 'traefik.yaml')).flatMap((r) =>
      (r.spec.routes as Obj[]).map((route): Obj => ({ ns: r.metadata.namespace as string, ...route })),
    );
    const toData = routes.filter((r) => r.services.some((s: Obj) => s.name === 'kelsingra-data'));
    const base = routes.filter((r) => r.services.some((s: Obj) => s.name === 'billing'));
    expect(toData.length).toBeGreaterThan(0);
    expect(base.length).toBeGreaterThan(0);
    const data = one('Service', 'kelsingra-data');
    for (const r of toData) {
      expect(r.ns).toBe(data.metadata.namespace);
      expect(r.services[0].port).toBe(data.spec.ports[0].port);
      expect(r.match).toContain('!HeaderRegexp(`X-Kelsingra-Hop`, `.+`)');
      for (const b of base) expect(r.priority).toBeGreaterThan(b.priority);
    }
    expect(toData.some((r) => r.match.includes('HeaderRegexp(`X-Tenant-ID`'))).toBe(true);
    const control = routes.find((r) => r.services.some((s: Obj) => s.name === 'kelsingra-control'));
    expect(control?.services[0].port).toBe(one('Service', 'kelsingra-control').spec.ports[0].port);
  });

  it('kong.yaml: the tenant routes skip X-Kelsingra-Hop, outrank the base route, and go to the data Service', () => {
    const [deck] = yamlDocs(join(PROXY, 'kong.yaml'));
    const services = deck?.services as Obj[];
    const byName = (name: string) => services.find((s) => s.name === name) as Obj;
    expect(byName('kelsingra-data').url).toBe(`http://${addr('kelsingra-data')}`);
    expect(byName('kelsingra-control').url).toBe(`http://${addr('kelsingra-control')}`);
    const baseRoute = (byName('billing').routes as Obj[]).find((r) => r.name === 'billing') as Obj;
    for (const route of byName('kelsingra-data').routes as Obj[]) {
      expect(route.expression).toContain('!(http.headers.x_kelsingra_hop ~ r#"."#)');
      expect(route.priority).toBeGreaterThan(baseRoute.priority);
      expect(route.preserve_host).toBe(true);
    }
    expect(
      (byName('kelsingra-data').routes as Obj[]).some((r) =>
        r.expression.includes('http.headers.x_tenant_id'),
      ),
    ).toBe(true);
  });
});
