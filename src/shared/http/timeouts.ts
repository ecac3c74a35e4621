/** Longest silence allowed inside a response body, relayed or tunnelled (server-sent events send comments to stay alive). */
export const BODY_IDLE_MS = 5 * 60_000;
