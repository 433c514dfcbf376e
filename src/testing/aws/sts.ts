/**
 * The STS endpoint of the local AWS server (the Query protocol: form-encoded `Action=...` bodies,
 * XML answers): AssumeRole, AssumeRoleWithWebIdentity and GetCallerIdentity.
 */
import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AwsServerState } from './context.ts';
import { decodeJwt, type IamDirectory, type RoleRecord } from './identity.ts';
import { isAllowed, type Principal } from './policies.ts';
import { send, WireError } from './protocol.ts';
import { verifySigV4 } from './sigv4.ts';

/** STS spelling of the errors shared by both services. */
const STS_ERROR_NAMES: Readonly<Record<string, string>> = {
  MissingAuthenticationTokenException: 'MissingAuthenticationToken',
  IncompleteSignatureException: 'IncompleteSignature',
  UnrecognizedClientException: 'InvalidClientTokenId',
  InvalidSignatureException: 'SignatureDoesNotMatch',
  ExpiredTokenException: 'ExpiredToken',
  ThrottlingException: 'Throttling',
  KMSInternalException: 'InternalFailure',
  ServiceUnavailableException: 'ServiceUnavailable',
};

const STS_ERROR_STATUS: Readonly<Record<string, number>> = {
  MissingAuthenticationToken: 403,
  InvalidClientTokenId: 403,
  SignatureDoesNotMatch: 403,
  ExpiredToken: 403,
  AccessDenied: 403,
  IDPRejectedClaim: 403,
};

function xmlEscape(s: string): string {
  return s.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

function isoSeconds(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export async function handleSts(
  state: AwsServerState,
  req: IncomingMessage,
  res: ServerResponse,
  body: Buffer,
): Promise<void> {
  const { iam, faults, calls } = state;
  const params = new URLSearchParams(body.toString('utf8'));
  const operation = params.get('Action') ?? '';
  const rec = calls.start('sts', operation);
  let counted = false;
  try {
    let principal: Principal | undefined;
    if (operation !== 'AssumeRoleWithWebIdentity') {
      const auth = verifySigV4(req, body, 'sts', iam.credentials, state.maxSkewMs);
      principal = auth.principal;
      rec.region = auth.region;
      rec.principal = principal.arn;
      rec.roleArn = principal.roleArn;
    }
    calls.count(rec);
    counted = true;
    await faults.apply(operation, undefined);
    if (faults.closed) return;
    let result: string;
    switch (operation) {
      case 'AssumeRole':
        result = assumeRole(iam, params, principal!);
        break;
      case 'AssumeRoleWithWebIdentity':
        result = assumeRoleWithWebIdentity(iam, params);
        break;
      case 'GetCallerIdentity':
        result = `<Arn>${xmlEscape(principal!.arn)}</Arn><UserId>${xmlEscape(principal!.arn)}</UserId><Account>${principal!.accountId}</Account>`;
        break;
      default:
        throw new WireError('InvalidAction', `Could not find operation ${operation} for version 2011-06-15`);
    }
    calls.finish(rec, 200);
    const requestId = randomUUID();
    send(
      res,
      200,
      'text/xml',
      `<${operation}Response xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><${operation}Result>${result}</${operation}Result><ResponseMetadata><RequestId>${requestId}</RequestId></ResponseMetadata></${operation}Response>`,
    );
  } catch (e) {
    const wire =
      e instanceof WireError
        ? e
        : new WireError('InternalFailure', `Internal error: ${(e as Error).message}`, 500);
    const code = wire.common ? (STS_ERROR_NAMES[wire.code] ?? wire.code) : wire.code;
    const status = STS_ERROR_STATUS[code] ?? wire.status;
    if (!counted) calls.count(rec);
    calls.finish(rec, status, code);
    if (faults.closed) return;
    send(
      res,
      status,
      'text/xml',
      `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>${status >= 500 ? 'Receiver' : 'Sender'}</Type><Code>${xmlEscape(code)}</Code><Message>${xmlEscape(wire.message)}</Message></Error><RequestId>${randomUUID()}</RequestId></ErrorResponse>`,
    );
  }
}

function sessionParams(
  params: URLSearchParams,
  role: RoleRecord | undefined,
): { sessionName: string; duration: number } {
  const sessionName = params.get('RoleSessionName') ?? '';
  if (!/^[\w+=,.@-]{2,64}$/.test(sessionName)) {
    throw new WireError(
      'ValidationError',
      `1 validation error detected: Value '${sessionName}' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*`,
    );
  }
  const durationText = params.get('DurationSeconds');
  const duration = durationText === null ? 3600 : Number(durationText);
  if (!Number.isInteger(duration) || duration < 900) {
    throw new WireError(
      'ValidationError',
      "1 validation error detected: Value at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to 900",
    );
  }
  if (role !== undefined && duration > role.maxSessionDurationSeconds) {
    throw new WireError(
      'ValidationError',
      'The requested DurationSeconds exceeds the MaxSessionDuration set for this role.',
    );
  }
  return { sessionName, duration };
}

function roleFromParams(
  iam: IamDirectory,
  params: URLSearchParams,
): { roleArn: string; role: RoleRecord | undefined } {
  const roleArn = params.get('RoleArn') ?? '';
  if (!/^arn:aws:iam::\d{12}:role\/[\w+=,.@/-]+$/.test(roleArn)) {
    throw new WireError('ValidationError', `${roleArn || 'RoleArn'} is invalid`);
  }
  return { roleArn, role: iam.roles.get(roleArn) };
}

/** A new session of `role`, as the `AssumedRoleUser` and `Credentials` elements of an answer. */
function sessionXml(iam: IamDirectory, role: RoleRecord, sessionName: string, duration: number): string {
  const { arn, accessKeyId, secretAccessKey, sessionToken, expiresAt } = iam.issueSession(
    role,
    sessionName,
    duration,
  );
  return (
    `<AssumedRoleUser><Arn>${xmlEscape(arn)}</Arn><AssumedRoleId>${role.roleId}:${xmlEscape(sessionName)}</AssumedRoleId></AssumedRoleUser>` +
    `<Credentials><AccessKeyId>${accessKeyId}</AccessKeyId><SecretAccessKey>${xmlEscape(secretAccessKey)}</SecretAccessKey>` +
    `<SessionToken>${xmlEscape(sessionToken)}</SessionToken><Expiration>${isoSeconds(new Date(expiresAt))}</Expiration></Credentials>`
  );
}

function assumeRole(iam: IamDirectory, params: URLSearchParams, caller: Principal): string {
  const { roleArn, role } = roleFromParams(iam, params);
  const { sessionName, duration } = sessionParams(params, role);
  const externalId = params.get('ExternalId');
  if (externalId !== null && !/^[\w+=,.@:/-]{2,1224}$/.test(externalId)) {
    throw new WireError('ValidationError', "Value at 'externalId' failed to satisfy constraint");
  }
  const context = new Map<string, string>([
    ['aws:principalarn', caller.roleArn ?? caller.arn],
    ['aws:principalaccount', caller.accountId],
    ['sts:rolesessionname', sessionName],
  ]);
  if (externalId !== null) context.set('sts:externalid', externalId);
  if (role === undefined || !isAllowed(role.trust, { principal: caller }, 'sts:AssumeRole', context)) {
    throw new WireError(
      'AccessDenied',
      `User: ${caller.arn} is not authorized to perform: sts:AssumeRole on resource: ${roleArn}`,
      403,
    );
  }
  return sessionXml(iam, role, sessionName, duration);
}

function assumeRoleWithWebIdentity(iam: IamDirectory, params: URLSearchParams): string {
  const { role } = roleFromParams(iam, params);
  const { sessionName, duration } = sessionParams(params, role);
  const token = params.get('WebIdentityToken') ?? '';
  const jwt = decodeJwt(token);
  if (jwt === undefined) {
    throw new WireError(
      'InvalidIdentityToken',
      'The ID Token provided is not a valid JWT. (You may see this error if you sent an Access Token)',
    );
  }
  const notAuthorized = new WireError(
    'AccessDenied',
    'Not authorized to perform sts:AssumeRoleWithWebIdentity',
    403,
  );
  if (role === undefined) throw notAuthorized;
  const iss = jwt.payload.iss;
  const provider = [...iam.providers.values()].find(
    (p) => p.issuer === iss && p.accountId === role.accountId,
  );
  if (provider === undefined) {
    throw new WireError(
      'InvalidIdentityToken',
      `No OpenIDConnect provider found in your account for ${String(iss)}`,
    );
  }
  const expected = createHmac('sha256', provider.secret).update(jwt.signingInput).digest();
  if (
    jwt.header.alg !== 'HS256' ||
    jwt.signature.length !== expected.length ||
    !timingSafeEqual(jwt.signature, expected)
  ) {
    throw new WireError('InvalidIdentityToken', 'Incorrect token signature');
  }
  const now = Math.floor(Date.now() / 1000);
  const exp = jwt.payload.exp;
  if (typeof exp !== 'number' || exp <= now) {
    throw new WireError(
      'ExpiredTokenException',
      `Token expired: current date/time ${now} must be before the expiration date/time ${String(exp)}`,
    );
  }
  const rawAud = jwt.payload.aud;
  const audiences = (Array.isArray(rawAud) ? rawAud : [rawAud]).filter(
    (a): a is string => typeof a === 'string',
  );
  const aud = audiences.find((a) => provider.audiences.includes(a));
  if (aud === undefined) throw new WireError('InvalidIdentityToken', 'Incorrect token audience');
  const sub = typeof jwt.payload.sub === 'string' ? jwt.payload.sub : '';
  const context = new Map<string, string>([
    [`${provider.conditionPrefix}:aud`, aud],
    [`${provider.conditionPrefix}:sub`, sub],
    [`${provider.conditionPrefix}:iss`, provider.issuer],
  ]);
  if (!isAllowed(role.trust, { federated: provider.arn }, 'sts:AssumeRoleWithWebIdentity', context)) {
    throw notAuthorized;
  }
  return (
    `<SubjectFromWebIdentityToken>${xmlEscape(sub)}</SubjectFromWebIdentityToken><Audience>${xmlEscape(aud)}</Audience>` +
    `<Provider>${xmlEscape(provider.conditionPrefix)}</Provider>${sessionXml(iam, role, sessionName, duration)}`
  );
}
