import http from "node:http";
import pg from "pg";

/**
 * The event-ingest baseline: a minimal node:http server taking the same `{events: [...]}` batches as
 * `POST /v1/events` and doing nothing but the raw batched insert — one `insert … select * from
 * unnest(…) on conflict (org_id, event_id) do nothing` per batch through `pg`, into BASELINE_TABLE
 * (the columns of usage_events, deduplicated on the same primary key) — answering 202 with the same
 * JSON shape. No validation, no rollups, no period totals, no counters.
 */
const table = process.env.BASELINE_TABLE ?? "bench_raw_events";
if (!/^[a-z_][a-z0-9_]*$/.test(table)) throw new Error(`bad BASELINE_TABLE ${table}`);
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 20 });
const insert = `
  insert into ${table} (org_id, event_id, meter, "timestamp", value, properties, period_start)
  select * from unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::numeric[], $6::jsonb[], $7::timestamptz[])
  on conflict (org_id, event_id) do nothing`;

interface Event {
  id: string;
  org_id: string;
  meter: string;
  value?: number | string;
  timestamp?: string;
  properties?: Record<string, unknown>;
}

async function ingest(events: Event[]): Promise<number> {
  const now = new Date().toISOString();
  const n = events.length;
  const orgIds = new Array<string>(n);
  const ids = new Array<string>(n);
  const meters = new Array<string>(n);
  const timestamps = new Array<string>(n);
  const values = new Array<string>(n);
  const properties = new Array<string>(n);
  for (let i = 0; i < n; i++) {
    const e = events[i] as Event;
    orgIds[i] = e.org_id;
    ids[i] = e.id;
    meters[i] = e.meter;
    timestamps[i] = e.timestamp ?? now;
    values[i] = String(e.value ?? 1);
    properties[i] = JSON.stringify(e.properties ?? {});
  }
  const result = await pool.query(insert, [orgIds, ids, meters, timestamps, values, properties, timestamps]);
  return result.rowCount ?? 0;
}

http
  .createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      if (req.url === "/healthz") {
        res.writeHead(200, { "content-type": "application/json" });
        res.end('{"status":"ok"}');
        return;
      }
      let events: Event[];
      try {
        events = (JSON.parse(Buffer.concat(chunks).toString("utf8")) as { events: Event[] }).events;
      } catch {
        res.writeHead(400).end();
        return;
      }
      ingest(events).then(
        (accepted) => {
          const body = JSON.stringify({ accepted, duplicates: events.length - accepted, rejected: [] });
          res.writeHead(202, {
            "content-type": "application/json",
            "content-length": Buffer.byteLength(body),
          });
          res.end(body);
        },
        (error: Error) => {
          console.error(error.message);
          res.writeHead(503).end();
        },
      );
    });
  })
  .listen(Number(process.env.PORT), "127.0.0.1");
