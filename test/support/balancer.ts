/**
 * A round-robin TCP load balancer for tests that run several server replicas behind one
 * address, as a platform's load balancer would: a backend that refuses the connection is
 * skipped, and a connection dies with the backend it was sent to.
 */
import net from 'node:net';
import type { Cleanup } from './helpers.js';

export async function tcpBalancer(backends: () => number[], cleanups: Cleanup[]) {
  const sockets = new Set<net.Socket>();
  let next = 0;
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => client.destroy());
    client.pause();
    const ports = backends();
    const start = next++;
    const attempt = (tries: number) => {
      if (tries >= ports.length) {
        client.destroy();
        return;
      }
      const port = ports[(start + tries) % ports.length] as number;
      const upstream = net.connect(port, '127.0.0.1');
      sockets.add(upstream);
      let connected = false;
      upstream.once('connect', () => {
        connected = true;
        upstream.on('error', () => client.destroy());
        client.on('close', () => upstream.destroy());
        upstream.on('close', () => {
          sockets.delete(upstream);
          client.destroy();
        });
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
      upstream.once('error', () => {
        sockets.delete(upstream);
        if (!connected) attempt(tries + 1);
      });
    };
    attempt(0);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  );
  return { port, url: `http://127.0.0.1:${port}` };
}
