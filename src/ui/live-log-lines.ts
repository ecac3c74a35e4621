/**
 * The lines the live log prints once, above its redrawn part: the banner, one line per
 * completed request or closed WebSocket (the same format as the plain view), notices, the
 * local command's output.
 * Plain strings coloured with chalk (which honours NO_COLOR / FORCE_COLOR): a batch of them
 * is one write, with no React element, layout or ANSI re-parsing per line.
 */
import chalk from 'chalk';
import { formatOutboundLine, formatRequestLine, formatUpgradeLine } from '../client/intercept/request-log.js';
import { clockTime } from './format.js';
import type { Printable } from './live-log-model.js';

export function formatPrintable(item: Printable): string {
  switch (item.kind) {
    case 'banner': {
      const i = item.info;
      let text = `Intercepting ${chalk.bold(i.service)} for tenant ${chalk.bold(i.tenant)} → localhost:${i.localPort} ${chalk.dim(`(intercept ${i.interceptId}, server ${i.server}) · q leaves · ? keys`)}`;
      if (i.gateway)
        text += `\ngateway: ${i.gateway} ${chalk.dim('(your service calls dev through it: $KELSINGRA_GATEWAY, HTTP_PROXY)')}`;
      if (i.previewUrl) text += `\npreview: ${i.previewUrl}`;
      return text;
    }
    case 'request':
      return item.request.kind === 'websocket'
        ? formatUpgradeLine(item.request)
        : formatRequestLine(item.request);
    case 'outbound':
      return formatOutboundLine(item.call);
    case 'notice': {
      const text = `${clockTime(item.at)}  ${item.text}`;
      return item.tone === 'error'
        ? chalk.red(text)
        : item.tone === 'warn'
          ? chalk.yellow(text)
          : chalk.dim(text);
    }
    case 'output':
      return item.stream === 'stderr' ? chalk.yellow(item.text) : item.text;
  }
}

/** One string for a whole batch, newline-terminated; empty when there is nothing. */
export function formatBatch(items: Printable[]): string {
  if (items.length === 0) return '';
  let out = '';
  for (const item of items) out += `${formatPrintable(item)}\n`;
  return out;
}
