import http from "node:http";
import { Redis } from "ioredis";
import pg from "pg";

/**
 * A check server with nothing of Tollgate in it, for bench/ceilings.ts: it reads the JSON, does the
 * least a consuming check must do in one design, and answers. What it reaches against the node:http
 * baseline bounds what any implementation of that design can reach on this machine.
 *
 * CEILING_MODE:
 * - `redis`: one Lua call per request (add to the org's counter, append the usage to a stream), then
 *   answer — acknowledging once the usage is in Redis;
 * - `redis-batched`: the same, one Lua call per event-loop turn for every request waiting;
 * - `postgres`: `redis-batched`, then a group commit of one row per request to Postgres (one
 *   statement in flight, the next gathering meanwhile) before answering — acknowledging once the
 *   usage is in Postgres.
 */
const mode = process.env.CEILING_MODE ?? "redis";
const prefix = process.env.CEILING_PREFIX ?? "ceiling:";
const redis = new Redis(process.env.REDIS_URL ?? "redis://127.0.0.1:6379/9", { enableAutoPipelining: true });
const pool =
  mode === "postgres" ? new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 4 }) : undefined;
await pool?.query(
  "create table if not exists ceiling_usage (org_id text not null, quantity bigint not null)",
);

const SCRIPT = `
local out = {}
for i = 1, #KEYS - 1 do
  local v = redis.call("INCRBY", KEYS[i], ARGV[i])
  redis.call("XADD", KEYS[#KEYS], "*", "o", KEYS[i], "q", ARGV[i])
  out[i] = v
end
return out`;
const sha = (await redis.script("LOAD", SCRIPT)) as string;
const stream = `${prefix}journal`;
// The stream is trimmed now and then, as a flusher would.
setInterval(() => void redis.xtrim(stream, "MAXLEN", "~", 10_000), 1000).unref();

interface Waiting {
  org: string;
  amount: number;
  res: http.ServerResponse;
}

const answer = (res: http.ServerResponse, used: number) => {
  const body = JSON.stringify({ allowed: true, feature: "kolekts", type: "metered", limit: null, used });
  res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
};

let waiting: Waiting[] = [];
const counted = async (batch: Waiting[]): Promise<number[]> =>
  (await redis.evalsha(
    sha,
    batch.length + 1,
    ...batch.map((w) => `${prefix}c:${w.org}`),
    stream,
    ...batch.map((w) => String(w.amount)),
  )) as number[];

let commitQueue: { rows: Waiting[]; done: () => void }[] = [];
let committing = false;
const commit = (rows: Waiting[]) =>
  new Promise<void>((done) => {
    commitQueue.push({ rows, done });
    pump();
  });
function pump() {
  if (committing || commitQueue.length === 0 || !pool) return;
  const queued = commitQueue;
  commitQueue = [];
  committing = true;
  const rows = queued.flatMap((q) => q.rows);
  pool
    .query("insert into ceiling_usage select * from unnest($1::text[], $2::bigint[])", [
      rows.map((r) => r.org),
      rows.map((r) => r.amount),
    ])
    .then(() => {
      committing = false;
      for (const q of queued) q.done();
      pump();
    });
}

async function flush() {
  const batch = waiting;
  waiting = [];
  const used = await counted(batch);
  if (pool) await commit(batch);
  batch.forEach((w, i) => {
    answer(w.res, used[i] as number);
  });
}

http
  .createServer((req, res) => {
    if (req.url === "/healthz") {
      res.end("ok");
      return;
    }
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const body = JSON.parse(Buffer.concat(chunks).toString()) as { org_id: string; amount?: number };
      const entry = { org: body.org_id, amount: body.amount ?? 1, res };
      if (mode === "redis") {
        void counted([entry]).then((used) => answer(res, used[0] as number));
        return;
      }
      if (waiting.length === 0) setImmediate(() => void flush());
      waiting.push(entry);
    });
  })
  .listen(Number(process.env.PORT), "127.0.0.1");
