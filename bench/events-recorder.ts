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
 * - everything else (key verifications, entitlements) goes to Tollgate and back, unchanged but for
 *   the headers about the connection itself (hop-by-hop).
 *
 * Env: PORT, TOLLGATE_URL.
 */
const target = new URL(process.env.TOLLGATE_URL as string);
/** The batches kept since the last replay, oldest first, with how many events each holds. */
const kept: { body: Buffer; authorization: string; events: number }[] = [];

/** Headers about one connection, not the message: each hop sets its own (RFC 9110, 7.6.1). */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "host",
]);

function endToEnd(headers: http.IncomingHttpHeaders): http.OutgoingHttpHeaders {
  const out: http.OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (!HOP_BY_HOP.has(name) && value !== undefined) out[name] = value;
  }
  return out;
}

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
      headers: endToEnd(req.headers),
    },
    (answer) => {
      res.writeHead(answer.statusCode ?? 502, endToEnd(answer.headers));
      answer.on("error", () => res.destroy());
      answer.pipe(res);
    },
  );
  upstream.on("error", () => {
    if (!res.headersSent) res.writeHead(502).end();
    else res.destroy();
  });
  req.on("error", () => upstream.destroy());
  // The app gave up (its own timeout): so does the request to Tollgate.
  res.on("close", () => {
    if (!res.writableFinished) upstream.destroy();
  });
  req.pipe(upstream);
}

/** What a replay handed to Tollgate, and what Tollgate said of it. */
interface Replayed {
  batches: number;
  events: number;
  accepted: number;
  duplicates: number;
  rejected: number;
}

/**
 * Sends the kept batches to Tollgate, oldest first; each leaves the list once Tollgate took it, so a
 * replay that fails keeps the rest for the next.
 */
async function replay(): Promise<Replayed> {
  const total: Replayed = { batches: 0, events: 0, accepted: 0, duplicates: 0, rejected: 0 };
  for (let batch = kept[0]; batch !== undefined; batch = kept[0]) {
    const res = await fetch(new URL("/v1/events", target), {
      method: "POST",
      headers: { authorization: batch.authorization, "content-type": "application/json" },
      body: batch.body,
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`Tollgate answered a replayed batch ${res.status}: ${text}`);
    const answer = JSON.parse(text) as { accepted: number; duplicates: number; rejected: unknown[] };
    kept.shift();
    total.batches++;
    total.events += batch.events;
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
          let events: unknown;
          try {
            events = (JSON.parse(body.toString("utf8")) as { events?: unknown }).events;
          } catch {
            events = undefined;
          }
          if (!Array.isArray(events)) {
            res.writeHead(400, { "content-type": "text/plain" }).end("not a batch of events");
            return;
          }
          kept.push({ body, authorization: req.headers.authorization ?? "", events: events.length });
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
