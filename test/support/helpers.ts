/**
 * The test harness in one import: each job has its own module (agents as processes, HTTP
 * servers and requests, bodies, waiting); tests import them from here.
 */
export * from './agents.js';
export * from './bodies.js';
export * from './http-servers.js';
export * from './waiting.js';
