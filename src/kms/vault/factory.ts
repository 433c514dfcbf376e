/** Rebuilds a Vault Transit KEK from its stored configuration (`toConfig()`, secret included). */
import type { KekConfig, KekFactory } from '../kek.ts';
import type { VaultAuth } from './options.ts';
import { vaultConfigError } from './options.ts';
import { VaultTransitKek } from './transit-kek.ts';

export const vaultKekFactory: KekFactory = (config: KekConfig): VaultTransitKek => {
  if (config?.kind !== 'vault-transit') {
    throw vaultConfigError(
      `vaultKekFactory: expected a config of kind vault-transit, got ${String(config?.kind)}`,
    );
  }
  const p = (config.params ?? {}) as Record<string, unknown>;
  const a = (p.auth ?? {}) as Record<string, unknown>;
  const s = (config.secret ?? {}) as Record<string, unknown>;
  const needSecret = (field: string): unknown => {
    if (s[field] === undefined) {
      throw vaultConfigError(
        `vaultKekFactory: the KEK ${String(p.keyName)} uses ${String(a.type)} auth, but the config has no ${field} in its secret part`,
      );
    }
    return s[field];
  };
  let auth: VaultAuth;
  switch (a.type) {
    case 'token':
      auth = { type: 'token', token: needSecret('token') as string };
      break;
    case 'approle':
      auth = {
        type: 'approle',
        roleId: a.roleId as string,
        secretId: needSecret('secretId') as string,
        ...(a.mount === undefined ? {} : { mount: a.mount as string }),
      };
      break;
    case 'kubernetes':
      auth = {
        type: 'kubernetes',
        role: a.role as string,
        ...(a.jwtFile === undefined ? {} : { jwtFile: a.jwtFile as string }),
        ...(a.mount === undefined ? {} : { mount: a.mount as string }),
      };
      break;
    case 'jwt':
      auth = {
        type: 'jwt',
        role: a.role as string,
        ...(a.jwtFile === undefined
          ? { jwt: needSecret('jwt') as string }
          : { jwtFile: a.jwtFile as string }),
        ...(a.mount === undefined ? {} : { mount: a.mount as string }),
      };
      break;
    default:
      throw vaultConfigError(`vaultKekFactory: unknown auth type ${String(a.type)}`);
  }
  const opt = <T>(k: string) => (p[k] === undefined ? {} : { [k]: p[k] as T });
  return new VaultTransitKek({
    address: p.address as string,
    keyName: p.keyName as string,
    auth,
    ...opt<string>('mount'),
    ...opt<string>('namespace'),
    ...opt<string>('authNamespace'),
    ...opt<boolean>('derived'),
    ...opt<string>('caCertificate'),
    ...opt<string>('tlsServerName'),
    ...opt<number>('timeoutMs'),
    ...opt<number>('retries'),
    ...opt<number>('retryDelayMs'),
  });
};
