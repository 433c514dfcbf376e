/**
 * The `KeyManagementService` definition of the local Cloud KMS server, loaded from the `.proto`
 * files shipped in `@google-cloud/kms` (and the google-gax copy that package loads).
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

interface LoadedProtos {
  readonly service: grpc.ServiceDefinition;
}

let protoCache: LoadedProtos | undefined;

function kmsPackageRequire(): NodeJS.Require {
  return createRequire(createRequire(import.meta.url).resolve('@google-cloud/kms/package.json'));
}

export function loadProtos(): LoadedProtos {
  if (protoCache) return protoCache;
  const require = createRequire(import.meta.url);
  const kmsRoot = path.dirname(require.resolve('@google-cloud/kms/package.json'));
  // google/api/*.proto and google/longrunning/*.proto ship with google-gax, a dependency of the
  // KMS package: resolve it from there. `google-gax/package.json` is not exported; its main is.
  const gaxMain = kmsPackageRequire().resolve('google-gax');
  const gaxRoot = path.resolve(path.dirname(gaxMain), '..', '..');
  const definition = protoLoader.loadSync('google/cloud/kms/v1/service.proto', {
    includeDirs: [path.join(kmsRoot, 'build', 'protos'), path.join(gaxRoot, 'build', 'protos')],
    keepCase: false,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    google: { cloud: { kms: { v1: { KeyManagementService: grpc.ServiceClientConstructor } } } };
  };
  protoCache = { service: loaded.google.cloud.kms.v1.KeyManagementService.service };
  return protoCache;
}

/** The google-gax copy that @google-cloud/kms loads (its grpc-js checks `instanceof` on sslCreds). */
export function loadGax(): typeof import('google-gax') {
  return kmsPackageRequire()('google-gax');
}
