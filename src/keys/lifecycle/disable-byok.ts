/** `disableByok`: moves a tenant back under the platform key. */
import { scopeStorage } from '../../scope.ts';
import type { KeyringContext } from '../context.ts';
import type { LifecycleOptions, TenantStatus } from './common.ts';
import { replaceKeks } from './replace-keks.ts';

export function disableByok(
  keyring: KeyringContext,
  tenantId: string,
  options: LifecycleOptions = {},
): Promise<TenantStatus> {
  return scopeStorage.exit(() =>
    replaceKeks(keyring, tenantId, { operation: 'disable-byok', keks: [] }, options),
  );
}
