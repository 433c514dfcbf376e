/**
 * OpenTelemetry spans through `@opentelemetry/api`, when the app has it installed (an optional
 * peer). Span attributes: tenant, key reference, operation, outcome, error code; never key
 * material, wrapped keys, plaintext or query parameters.
 */
interface SpanLike {
  setAttribute(key: string, value: string | number | boolean): unknown;
  setStatus(status: { code: number; message?: string }): unknown;
  end(): void;
}
interface TracerLike {
  startActiveSpan<T>(
    name: string,
    options: { attributes?: Record<string, string | number | boolean> },
    fn: (span: SpanLike) => T,
  ): T;
}

let tracer: TracerLike | undefined;
let loading: Promise<void> | undefined;

/** Loads the OpenTelemetry API once, if installed. Resolves either way. */
export function loadTelemetry(): Promise<void> {
  loading ??= import('@opentelemetry/api')
    .then((api) => {
      tracer = api.trace.getTracer('drizzle-byok') as unknown as TracerLike;
    })
    .catch(() => undefined);
  return loading;
}

const OK = 1;
const ERROR = 2;

/** Runs `fn` in a span named `name` when OpenTelemetry is present; plain call otherwise. */
export function withSpan<T>(
  name: string,
  attributes: Record<string, string | number | boolean>,
  fn: () => Promise<T>,
): Promise<T> {
  const t = tracer;
  if (t === undefined) return fn();
  return t.startActiveSpan(name, { attributes }, async (span) => {
    try {
      const r = await fn();
      span.setAttribute('byok.outcome', 'ok');
      span.setStatus({ code: OK });
      return r;
    } catch (e) {
      const code =
        typeof (e as { code?: unknown })?.code === 'string' ? (e as { code: string }).code : 'ERR_UNKNOWN';
      span.setAttribute('byok.outcome', 'error');
      span.setAttribute('byok.error_code', code);
      span.setStatus({ code: ERROR, message: code });
      throw e;
    } finally {
      span.end();
    }
  });
}
