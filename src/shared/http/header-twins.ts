/**
 * Header names that read as one to a CGI-style server. CGI, WSGI, PHP, Rack and several
 * frameworks turn a header into the variable `HTTP_` + its name upper-cased with `-` as `_`,
 * so `x-tenant-id`, `X_Tenant_Id` and `x_tenant-id` all become `HTTP_X_TENANT_ID`. Kelsingra
 * reads headers by their exact name: a twin it does not see would let the service behind it
 * act for another tenant than the one Kelsingra routed and authorised. Every path that passes
 * a request (or a Kafka message) on asks this module before it does.
 */

/** The name as a CGI-style server folds it, minus `HTTP_`: lower case, `_` read as `-`. */
export function cgiName(name: string): string {
  return name.toLowerCase().replaceAll('_', '-');
}

/** Headers Kelsingra reads or sets on every HTTP request it passes on, besides the tenant header. */
export const HTTP_GUARDED = [
  'baggage',
  'traceparent',
  'tracestate',
  'x-request-id',
  'forwarded',
  'via',
  'authorization',
  'content-length',
  'transfer-encoding',
];
/** Kelsingra's own headers: all of them, whatever comes next. */
const OWN_PREFIX = 'x-kelsingra-';

/** The headers a path reads or sets, each by the one spelling it reads (lower case). */
export class HeaderGuard {
  /** CGI name → the spelling Kelsingra reads. */
  private readonly spelling = new Map<string, string>();

  /** Whether a name Kelsingra reads has an `_` itself: then a twin needs no `_` in the request. */
  private readonly readsUnderscore: boolean;

  constructor(names: Iterable<string>) {
    for (const name of names) this.spelling.set(cgiName(name), name.toLowerCase());
    this.readsUnderscore = [...this.spelling.values()].some((n) => n.includes('_'));
  }

  /** The spelling Kelsingra reads for this name's CGI variable, when it reads that variable at all. */
  private readsAs(name: string): string | undefined {
    const cgi = cgiName(name);
    return this.spelling.get(cgi) ?? (cgi.startsWith(OWN_PREFIX) ? cgi : undefined);
  }

  /** Whether a CGI-style server reads this name as a header Kelsingra reads or sets, in any spelling. */
  covers(name: string): boolean {
    return this.readsAs(name) !== undefined;
  }

  /** Whether Kelsingra reads or sets this header (in the very spelling given, lower case). */
  guards(name: string): boolean {
    return this.readsAs(name) === name.toLowerCase();
  }

  /**
   * The first header of a flat `[name, value, …]` list that a CGI-style server would read as
   * another: a twin of a header Kelsingra reads (`x_tenant_id` for `x-tenant-id`), or one of two
   * spellings of any one name. The very same name twice is a duplicate, not a twin: routing
   * refuses a doubled tenant header as a key holding a comma.
   */
  ambiguity(raw: readonly string[]): Ambiguity | undefined {
    // Every request passes here: without an `_` in any name there is nothing to fold, and the
    // common case costs one scan instead of a map and a case-fold per header.
    if (!this.readsUnderscore && !hasUnderscoreName(raw)) return undefined;
    const seen = new Map<string, string>();
    for (let i = 0; i < raw.length; i += 2) {
      const name = (raw[i] as string).toLowerCase();
      const readsAs = this.readsAs(name);
      if (readsAs !== undefined && readsAs !== name)
        return { header: raw[i] as string, twinOf: readsAs, guarded: true };
      const cgi = cgiName(name);
      const other = seen.get(cgi);
      if (other !== undefined && other !== name)
        return { header: raw[i] as string, twinOf: other, guarded: false };
      seen.set(cgi, name);
    }
    return undefined;
  }
}

function hasUnderscoreName(raw: readonly string[]): boolean {
  for (let i = 0; i < raw.length; i += 2) if ((raw[i] as string).includes('_')) return true;
  return false;
}

export interface Ambiguity {
  /** As the request spelled it. */
  header: string;
  /** The name a CGI-style server would take it for. */
  twinOf: string;
  /** Whether that is a header Kelsingra reads or sets; otherwise the request carries both spellings. */
  guarded: boolean;
}

/** Stable code of the refusal, for callers and metrics. */
export const AMBIGUOUS_HEADER = 'ambiguous-header';

/** The 400 answer's message and fields, the same on every path. */
export function ambiguityRefusal(a: Ambiguity): { message: string; extra: Record<string, unknown> } {
  return {
    message: `header "${a.header}" is refused: a CGI-style server (WSGI, PHP, Rack…) reads it as "${a.twinOf}", ${a.guarded ? 'which Kelsingra reads or sets itself, so the service could act for another tenant than the one Kelsingra routed' : 'which the request also carries, so the service would see one value made of both'}`,
    extra: {
      header: a.header,
      twinOf: a.twinOf,
      hint: `send "${a.twinOf}" once, spelled with dashes, and no other spelling of it`,
    },
  };
}
