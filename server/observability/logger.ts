import pino, { type Logger } from 'pino';

/** JSON logs on stdout. Anything that could hold a credential is redacted before it is written. */
export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { name: 'kelsingra-server' },
    redact: {
      paths: [
        'token',
        '*.token',
        'authorization',
        '*.authorization',
        'headers.authorization',
        'req.headers.authorization',
        'config.tokens',
      ],
      censor: '[redacted]',
    },
  });
}
