import http from "node:http";

/**
 * For bench/middleware.ts: stands between the app's SDK and Tollgate so that Tollgate's ingest of
 * the tracked events happens after a measured run instead of during it, on the same cores as the
 * app (in production Tollgate runs on its own hosts).
 *
 * - `POST /v1/events`: the body is kept as sent and answered at once, as Tollgate answers a batch of
 *   new events (202, every event accepted), so the app does all of its own delivery work;
 * - `POST /replay` (the benchmark's): sends every kept body to Tollgate, one after another and in
 *   order, and answers with what Tollgate said in total — every tracked event reaches Tollgate,
 *   which counts each once;
 * - everything else (key verifications, entitlements) goes to Tollgate and back unchanged.
 *
 * Env: PORT, TOLLGATE_URL.
 */
const target = new URL(process.env.TOLLGATE_URL as string);
let kept: { body: Buffer; authorization: string }[] = [];

function readBody(req: http.IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

function forward(req: http.IncomingMessage, res: http.ServerResponse): void {
  const upstream = http.request(
    {
      host: target.hostname,
      port: target.port,
      method: req.method,
      path: req.url,
      headers: req.headers,
    },
    (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    },
  );
  upstream.on("error", () => {
    if (!res.headersSent) res.writeHead(502).end();
    else res.destroy();
  });
  req.pipe(upstream);
}

async function replay(): Promise<{
  batches: number;
  accepted: number;
  duplicates: number;
  rejected: number;
}> {
  const batches = kept;
  kept = [];
  const total = { batches: batches.length, accepted: 0, duplicates: 0, rejected: 0 };
  for (const { body, authorization } of batches) {
    const res = await fetch(new URL("/v1/events", target), {
      method: "POST",
      headers: { authorization, "content-type": "application/json" },
      body,
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`Tollgate answered a replayed batch ${res.status}: ${text}`);
    const answer = JSON.parse(text) as { accepted: number; duplicates: number; rejected: unknown[] };
    total.accepted += answer.accepted;
    total.duplicates += answer.duplicates;
    total.rejected += answer.rejected.length;
  }
  return total;
}

http
  .createServer((req, res) => {
    if (req.method === "POST" && req.url === "/v1/events") {
      readBody(req).then(
        (body) => {
          const { events } = JSON.parse(body.toString("utf8")) as { events: unknown[] };
          kept.push({ body, authorization: req.headers.authorization ?? "" });
          const answer = JSON.stringify({ accepted: events.length, duplicates: 0, rejected: [] });
          res.writeHead(202, { "content-type": "application/json" }).end(answer);
        },
        () => res.destroy(),
      );
      return;
    }
    if (req.method === "POST" && req.url === "/replay") {
      req.resume();
      replay().then(
        (total) => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(total)),
        (error: Error) => res.writeHead(500).end(error.message),
      );
      return;
    }
    forward(req, res);
  })
  .listen(Number(process.env.PORT), "127.0.0.1");
