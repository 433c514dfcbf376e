/** The retry delay shared by the KEKs that retry by themselves (Cloud KMS, Azure Key Vault, Vault). */

/** The longest delay before one retry, in ms. */
export const MAX_RETRY_DELAY_MS = 2000;

export const sleep = (ms: number): Promise<void> => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * The delay before retry number `retry` (1 for the first): `firstDelayMs` doubled at each retry,
 * capped at {@link MAX_RETRY_DELAY_MS}, with jitter (a random point of its upper half).
 */
export function backoffDelayMs(retry: number, firstDelayMs: number): number {
  const base = Math.min(MAX_RETRY_DELAY_MS, firstDelayMs * 2 ** (retry - 1));
  return base / 2 + Math.random() * (base / 2);
}
