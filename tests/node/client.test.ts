// A cachegw client generated from the gateway's own OpenAPI schema (openapi-typescript types,
// openapi-fetch client), used as a service in another language would use it.
//   BASE_URL  the gateway, e.g. http://127.0.0.1:8000      TOKEN  an API key (read,write scopes)
// Type-checked with `tsc --noEmit` against the generated types, then run with tsx. Exits 1 with
// a message naming the failed step on any failure.
import createClient from "openapi-fetch";
import type { components, paths } from "cachegw-schema";

type Problem = components["schemas"]["Problem"];
type WriteResult = components["schemas"]["WriteResult"];
type BatchResult = components["schemas"]["OpResult"];
type KeyPath = paths["/v1/keys/{key}"];
// The names of the response headers the schema documents (without the `[name: string]` index
// signature openapi-typescript adds): if one is renamed or dropped, this file stops compiling.
type Documented<T> = keyof {
  [K in keyof T as string extends K ? never : number extends K ? never : K]: T[K];
};
type ReadHeader = Documented<KeyPath["get"]["responses"][200]["headers"]>;
type PreconditionHeader = Documented<KeyPath["put"]["responses"][412]["headers"]>;

class Failure extends Error {}

function expect(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Failure(message);
}

function header(response: Response, name: ReadHeader | PreconditionHeader): string {
  const value = response.headers.get(name);
  expect(value !== null, `${response.url}: no ${name} header (status ${response.status})`);
  return value;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

function isProblem(body: unknown): body is Problem {
  if (typeof body !== "object" || body === null) return false;
  const p = body as Record<string, unknown>;
  return (
    typeof p.type === "string" &&
    typeof p.title === "string" &&
    typeof p.status === "number" &&
    typeof p.detail === "string"
  );
}

const BASE_URL = process.env.BASE_URL;
const TOKEN = process.env.TOKEN;

async function main(): Promise<void> {
  expect(BASE_URL, "BASE_URL is not set");
  const client = createClient<paths>({
    baseUrl: BASE_URL,
    headers: TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {},
  });
  const key = `node:client-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
  const path = { key };
  const every = Uint8Array.from({ length: 256 }, (_, i) => i);
  const reversed = every.slice().reverse();
  const octets = (bytes: Uint8Array): Blob =>
    new Blob([bytes], { type: "application/octet-stream" });
  // openapi-fetch JSON-encodes bodies by default: send the Blob's bytes as they are.
  const raw = { bodySerializer: (body: unknown) => body };
  const binary = { "Content-Type": "application/octet-stream" };

  // 1. Create: all 256 byte values as application/octet-stream.
  const created = await client.PUT("/v1/keys/{key}", {
    params: { path },
    body: octets(every),
    headers: binary,
    ...raw,
  });
  expect(created.response.status === 201, `PUT (create): status ${created.response.status}`);
  const written: WriteResult | undefined = created.data;
  expect(written, "PUT (create): no WriteResult body");
  const firstTag = header(created.response, "ETag");
  expect(written.etag === firstTag, `PUT: body etag ${written.etag} != ETag ${firstTag}`);
  expect(firstTag === `"${written.version}"`, `PUT: ETag ${firstTag} is not the quoted version`);

  // 2. Read it back, byte for byte, with the headers that say where it came from.
  const read = await client.GET("/v1/keys/{key}", { params: { path }, parseAs: "arrayBuffer" });
  expect(read.response.status === 200, `GET: status ${read.response.status}`);
  expect(read.data, "GET: no body");
  const got = new Uint8Array(read.data);
  expect(sameBytes(got, every), `GET: ${got.length} bytes back, not the 256 byte values sent`);
  expect(header(read.response, "ETag") === firstTag, "GET: ETag differs from the PUT's");
  const age = header(read.response, "Age");
  expect(/^\d+$/.test(age), `GET: Age ${JSON.stringify(age)} is not a number of seconds`);
  const cacheStatus = header(read.response, "Cache-Status");
  expect(cacheStatus.startsWith("cachegw;"), `GET: Cache-Status ${cacheStatus}`);
  const type = read.response.headers.get("Content-Type");
  expect(type === "application/octet-stream", `GET: Content-Type ${type}`);
  console.log(`GET ${key}: 256 bytes, ETag ${firstTag}, Age ${age}, Cache-Status ${cacheStatus}`);

  // 3. HEAD: the same headers, no body.
  const head = await client.HEAD("/v1/keys/{key}", { params: { path } });
  expect(head.response.status === 200, `HEAD: status ${head.response.status}`);
  expect(header(head.response, "ETag") === firstTag, "HEAD: ETag differs");

  // 4. Compare-and-set that wins: If-Match of the current ETag.
  const won = await client.PUT("/v1/keys/{key}", {
    params: { path, header: { "if-match": firstTag } },
    body: octets(reversed),
    headers: binary,
    ...raw,
  });
  expect(won.response.status === 200, `PUT If-Match (current): status ${won.response.status}`);
  const secondTag = header(won.response, "ETag");
  expect(secondTag !== firstTag, "PUT If-Match: the ETag did not change");

  // 5. Compare-and-set that loses: If-Match of the old ETag is a 412 problem, nothing written.
  const lost = await client.PUT("/v1/keys/{key}", {
    params: { path, header: { "if-match": firstTag } },
    body: octets(every),
    headers: binary,
    ...raw,
  });
  expect(lost.response.status === 412, `PUT If-Match (stale): status ${lost.response.status}`);
  expect(isProblem(lost.error), `412: not a problem body: ${JSON.stringify(lost.error)}`);
  expect(lost.error.status === 412, `412: problem status ${lost.error.status}`);
  expect(header(lost.response, "ETag") === secondTag, "412: ETag is not the current version");

  // 6. If-None-Match with the current ETag: 304, no body.
  const unchanged = await client.GET("/v1/keys/{key}", {
    params: { path, header: { "if-none-match": secondTag } },
  });
  expect(unchanged.response.status === 304, `GET If-None-Match: ${unchanged.response.status}`);

  const after = await client.GET("/v1/keys/{key}", { params: { path }, parseAs: "arrayBuffer" });
  expect(after.data, `GET after CAS: status ${after.response.status}`);
  expect(sameBytes(new Uint8Array(after.data), reversed), "GET after CAS: not the winner's bytes");

  // 7. Delete (conditionally), then the key is a 404 problem.
  const deleted = await client.DELETE("/v1/keys/{key}", {
    params: { path, header: { "if-match": secondTag } },
  });
  expect(deleted.response.status === 204, `DELETE: status ${deleted.response.status}`);

  const missing = await client.GET("/v1/keys/{key}", { params: { path } });
  expect(missing.response.status === 404, `GET after DELETE: status ${missing.response.status}`);
  const problemType = missing.response.headers.get("Content-Type");
  expect(
    problemType?.startsWith("application/problem+json"),
    `404: Content-Type ${problemType}, not application/problem+json`,
  );
  const problem: unknown = missing.error;
  expect(isProblem(problem), `404: not a problem body: ${JSON.stringify(problem)}`);
  expect(problem.status === 404, `404: problem status ${problem.status}`);
  expect(problem.type.endsWith("/key-not-found"), `404: problem type ${problem.type}`);
  console.log(`GET ${key} after DELETE: 404 ${problem.type} (${problem.title}: ${problem.detail})`);

  const again = await client.DELETE("/v1/keys/{key}", { params: { path } });
  expect(again.response.status === 404, `DELETE (absent): status ${again.response.status}`);

  // 8. A batch: a put, a get of it (ops on one key run in order), a get of the deleted key.
  const value = Buffer.from("batched").toString("base64");
  const batched = await client.POST("/v1/batch", {
    body: {
      ops: [
        { op: "put", key, value, content_type: "text/plain", ttl: 60 },
        { op: "get", key },
        { op: "get", key: `${key}:absent` },
      ],
    },
  });
  expect(batched.response.status === 200, `POST /v1/batch: status ${batched.response.status}`);
  const results: BatchResult[] = batched.data?.results ?? [];
  const [bPut, bGot, bNone] = results;
  expect(bPut && bGot && bNone && results.length === 3, `batch: ${JSON.stringify(batched.data)}`);
  expect(bPut.status === 201, `batch put: ${JSON.stringify(bPut)}`);
  expect(
    bGot.status === 200 && bGot.value === value && bGot.etag === bPut.etag,
    `batch get: ${JSON.stringify(bGot)}`,
  );
  expect(bGot.content_type === "text/plain", `batch get: content_type ${bGot.content_type}`);
  expect(bNone.status === 404 && isProblem(bNone.problem), `batch get (absent): ${JSON.stringify(bNone)}`);
  console.log(`POST /v1/batch: ${results.map((r) => r.status).join(", ")}`);
}

try {
  await main();
  console.log("client.test.ts: ok");
} catch (error) {
  const message = error instanceof Failure ? error.message : String(error);
  console.error(`client.test.ts FAILED: ${message}`);
  if (!(error instanceof Failure) && error instanceof Error) {
    if (error.stack) console.error(error.stack);
    if (error.cause) console.error("caused by:", error.cause);
  }
  process.exit(1);
}
