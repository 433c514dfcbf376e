/**
 * `drizzle-byok/testing/azure`: a local Azure Key Vault and the Microsoft Entra endpoints its
 * credentials call, over HTTPS with a self-signed certificate (made with the `openssl` command),
 * so `@azure/keyvault-keys`, `@azure/identity` and `drizzle-byok/azure` run unchanged in your
 * tests. Node built-ins only. Loopback only.
 */
export * from './server.ts';
export { selfSignedCertificate, type SelfSignedCertificate } from '../tls.ts';
