import { type Span, type SpanOptions, type Tracer, type TracerProvider, trace } from '@opentelemetry/api';
import { eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withTenant } from '../src/index.ts';
import { loadTelemetry } from '../src/keys/telemetry.ts';
import { MAIN_DRIVER, uniqueTenant } from './helpers/db.ts';
import { type EncryptedDb, setupEncryptedDb } from './helpers/setup.ts';

interface Recorded {
  name: string;
  attributes: Record<string, unknown>;
  status?: { code: number; message?: string };
  ended: boolean;
}

/** A minimal tracer provider recording spans, registered as the global OpenTelemetry provider. */
function recordingProvider(spans: Recorded[]): TracerProvider {
  const tracer = {
    startActiveSpan(name: string, options: SpanOptions, fn: (span: Span) => unknown) {
      const rec: Recorded = { name, attributes: { ...(options.attributes ?? {}) }, ended: false };
      spans.push(rec);
      const span = {
        setAttribute(k: string, v: unknown) {
          rec.attributes[k] = v;
          return span;
        },
        setStatus(s: { code: number; message?: string }) {
          rec.status = s;
          return span;
        },
        end() {
          rec.ended = true;
        },
      } as unknown as Span;
      return fn(span);
    },
  } as unknown as Tracer;
  return { getTracer: () => tracer };
}

describe('OpenTelemetry spans (when @opentelemetry/api is installed)', () => {
  const spans: Recorded[] = [];
  let e: EncryptedDb;
  beforeAll(async () => {
    trace.setGlobalTracerProvider(recordingProvider(spans));
    await loadTelemetry();
    e = await setupEncryptedDb(MAIN_DRIVER);
  });
  afterAll(async () => {
    trace.disable();
    await e?.close();
  });

  it('every KMS call is a span with tenant, key reference, operation and outcome, and no key material', async () => {
    const T = uniqueTenant('otel');
    await withTenant(T, () => e.db.insert(e.s.patients).values({ tenantId: T, name: 'traced' }));
    e.keyring.clearCache();
    await withTenant(T, () => e.db.select().from(e.s.patients).where(eq(e.s.patients.tenantId, T)));
    const wrap = spans.find((s) => s.name === 'byok.kms.wrap' && s.attributes['byok.tenant'] === T);
    const unwrap = spans.find((s) => s.name === 'byok.kms.unwrap' && s.attributes['byok.tenant'] === T);
    for (const s of [wrap, unwrap]) {
      expect(s).toMatchObject({
        ended: true,
        status: { code: 1 },
        attributes: { 'byok.key_ref': e.kek.keyRef, 'byok.kek_kind': 'local', 'byok.outcome': 'ok' },
      });
    }
    for (const s of spans)
      for (const v of Object.values(s.attributes))
        expect(typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean').toBe(true);
  });

  it('a failing KMS call ends its span with an error status carrying only the error code', async () => {
    const T = uniqueTenant('otelerr');
    await withTenant(T, () => e.db.insert(e.s.patients).values({ tenantId: T, name: 'x' }));
    e.keyring.clearCache();
    const inner = e.kek.unwrap;
    (e.kek as { unwrap: typeof inner }).unwrap = () =>
      Promise.reject(Object.assign(new Error('denied'), { code: 'ERR_BYOK_KEY_ACCESS_DENIED' }));
    try {
      await expect(
        withTenant(T, () => e.db.select().from(e.s.patients).where(eq(e.s.patients.tenantId, T))),
      ).rejects.toThrow('denied');
    } finally {
      (e.kek as { unwrap: typeof inner }).unwrap = inner;
    }
    const failed = spans.filter((s) => s.name === 'byok.kms.unwrap' && s.attributes['byok.tenant'] === T);
    expect(failed.at(-1)).toMatchObject({
      ended: true,
      status: { code: 2, message: 'ERR_BYOK_KEY_ACCESS_DENIED' },
      attributes: { 'byok.error_code': 'ERR_BYOK_KEY_ACCESS_DENIED' },
    });
  });
});
