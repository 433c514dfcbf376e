/** `rotateDek`: a new data key version for new writes. */
import { assertTenantId, scopeStorage } from '../../scope.ts';
import { keysOf } from '../access.ts';
import type { KeyringContext } from '../context.ts';

/** A new data key version for new writes; older versions stay readable until re-encrypted. */
export async function rotateDek(
  keyring: KeyringContext,
  tenantId: string,
): Promise<{ tenantId: string; version: number }> {
  assertTenantId(tenantId);
  const started = performance.now();
  return scopeStorage.exit(async () => {
    const entry = await keysOf(keyring).createDek(tenantId, { rotate: true });
    await keyring.notify(keyring.db, tenantId, 'rotate-dek');
    keyring.emit({
      type: 'lifecycle',
      operation: 'rotate-dek',
      tenantId,
      outcome: 'ok',
      latencyMs: performance.now() - started,
      detail: { version: entry.version },
    });
    await keyring.audit({
      tenantId,
      operation: 'rotate-dek',
      outcome: 'ok',
      latencyMs: performance.now() - started,
      detail: { version: entry.version },
    });
    return { tenantId, version: entry.version };
  });
}
