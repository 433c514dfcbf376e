/** `rotateKek`: replaces a tenant's KEK(s) after verifying the new ones. */
import type { Kek } from '../../kms/kek.ts';
import { scopeStorage } from '../../scope.ts';
import type { KeyringContext } from '../context.ts';
import type { LifecycleOptions, TenantStatus } from './common.ts';
import { asKeks, replaceKeks } from './replace-keks.ts';

export function rotateKek(
  keyring: KeyringContext,
  tenantId: string,
  keks: Kek | readonly Kek[],
  options: LifecycleOptions = {},
): Promise<TenantStatus> {
  return scopeStorage.exit(() =>
    replaceKeks(keyring, tenantId, { operation: 'rotate-kek', keks: asKeks(keks, 'rotateKek') }, options),
  );
}
