/**
 * One line per finished request for the plain (non-TTY) view, e.g.
 * `14:03:07.218  GET  /invoices/42  200  12.4 ms  1.2 kB`.
 */
import chalk from 'chalk';

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} kB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GB`;
}

export function formatDuration(ms: number): string {
  return ms < 1000 ? `${ms.toFixed(1)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function time(at: number): string {
  const d = new Date(at);
  const pad = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function colourStatus(status: number): string {
  const text = String(status);
  if (status >= 500) return chalk.red(text);
  if (status >= 400) return chalk.yellow(text);
  if (status >= 300) return chalk.cyan(text);
  return chalk.green(text);
}

/** What a request line shows; both the client's own events and the server's records have it. */
export interface RequestLine {
  startedAt: number;
  method: string;
  path: string;
  status: number;
  durationMs: number;
  bytesOut: number;
  error?: string;
}

export function formatRequestLine(e: RequestLine): string {
  const parts = [
    chalk.dim(time(e.startedAt)),
    e.method.padEnd(6),
    e.path,
    colourStatus(e.status),
    formatDuration(e.durationMs),
    formatBytes(e.bytesOut),
  ];
  if (e.error) parts.push(chalk.red(`(${e.error})`));
  return parts.join('  ');
}
