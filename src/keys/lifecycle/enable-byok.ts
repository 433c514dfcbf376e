/** `enableByok`: puts a tenant's data keys under its own KEK(s). */
import type { Kek } from '../../kms/kek.ts';
import { scopeStorage } from '../../scope.ts';
import type { KeyringContext } from '../context.ts';
import type { LifecycleOptions, TenantStatus } from './common.ts';
import { asKeks, replaceKeks } from './replace-keks.ts';

export function enableByok(
  keyring: KeyringContext,
  tenantId: string,
  keks: Kek | readonly Kek[],
  options: LifecycleOptions = {},
): Promise<TenantStatus> {
  return scopeStorage.exit(() =>
    replaceKeks(keyring, tenantId, { operation: 'enable-byok', keks: asKeks(keks, 'enableByok') }, options),
  );
}
