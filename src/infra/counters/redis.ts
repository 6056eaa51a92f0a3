import { createHash } from "node:crypto";
import type { Redis } from "ioredis";
import { type Evaluation, toOutcome, validateAppend, validateClaim, validateOps } from "./gcra.js";
import {
  type ApplyOptions,
  type ApplyResult,
  type CounterStore,
  type Increment,
  type Op,
  sealedJournal,
} from "./types.js";

/** Rate state outlives its TAT by this much (see the script). */
const EXPIRY_SLACK_MS = 1000;

/**
 * `apply` as one script, so a call is atomic; every call made in one turn of the event loop goes to
 * Redis in one invocation (see `createRedisCounterStore`), each still evaluated on its own. It
 * mirrors memory.ts and gcra.ts step for step; keep them in lockstep.
 *
 * ARGV[1] is a JSON array with one array of strings per call: a header of seven values — nowMs, "1"
 * for a dry run, the idempotency claim ("" for none), its TTL in seconds, the journal entry's stream
 * id ("" for none) and data, the number of ops n — and four per op:
 *   counter: "c", amount, limit ("" = unlimited), ttlSeconds
 *   rate:    "r", limit, periodMs, cost
 * (One JSON argument rather than a dozen per call: the client's cost is per argument, and this is
 * the hot path; cjson is part of Redis's Lua.) KEYS holds each call's keys in turn: op i's key, then
 * the idempotency key when there is a claim, then the journal's stream when there is an entry.
 * The reply is a JSON array with one entry per call: [0, missing op indexes...], [2, held value] for
 * a claimed idempotency key, [3, message] when the call raised an error (what it wrote before the
 * error stays: Redis does not roll scripts back), [4] when it would have been applied but its
 * journal's stream does not exist (nothing written), or [1, all allowed, then per op: allowed,
 * stored, next, retry] — the per-op values as decimal strings.
 *
 * Lua numbers are doubles, like JS numbers: every value here is an integer below 2^53, so +, −, ×
 * and floor/ceil of a quotient agree bit for bit. Numbers are never handed to Redis as Lua numbers
 * (that conversion uses "%.14g" and turns 1.7e12-scale values into exponent notation): they are
 * formatted with "%.0f" first.
 */
const APPLY_SCRIPT = `
-- Rate state is "tatMs:frac:limit": the TAT is tatMs + frac / limit ms, exactly.
local function read_state(key)
  local raw = redis.call("GET", key)
  if not raw then return false end
  local t, f, l = string.match(raw, "^(%-?%d+):(%d+):(%d+)$")
  if not t then return false end
  return { tonumber(t), tonumber(f), tonumber(l) }
end

local function backlog(state, limit, now)
  if not state then return 0 end
  local frac = state[2]
  if state[3] ~= limit then frac = math.ceil(frac * limit / state[3]) end
  local b = (state[1] - now) * limit + frac
  if b > 0 then return b end
  return 0
end

local function to_state(b, limit, now)
  if b <= 0 then return false end
  local whole = math.floor(b / limit)
  return { now + whole, b - whole * limit, limit }
end

-- Whether each journal stream exists, per invocation.
local streams = {}

-- A is one call as sent: A[1..7] the header, then four values per op (op i's k-th at A[7 + 4(i-1) + k]).
local function apply_one(K, A)
  local now = tonumber(A[1])
  local dry = A[2] == "1"
  local claim = A[3]
  local entry = A[5]
  local n = tonumber(A[7])

  if claim ~= "" then
    local previous = redis.call("GET", K[n + 1])
    -- A held value may carry an expiry on the caller's clock ("x:<expiresMs>:..."): past it, it is absent.
    if previous then
      local expires = tonumber(string.match(previous, "^%a:(%d+):"))
      if not expires or expires > now then return { 2, previous } end
    end
  end

  -- Load everything first; a missing counter stops the call before anything is evaluated.
  local stored = {}
  local missing = { 0 }
  for i = 1, n do
    local key = K[i]
    local kind = A[4 + 4 * i]
    if stored[key] == nil then
      if kind == "c" then
        local raw = redis.call("GET", key)
        if raw then stored[key] = tonumber(raw) end
      else
        stored[key] = read_state(key)
      end
    end
    if kind == "c" and stored[key] == nil then missing[#missing + 1] = i - 1 end
  end
  if #missing > 1 then return missing end

  -- Evaluate in order against working copies (two ops on one key see each other); write nothing yet.
  local working = {}
  local reply = { 1, 1 }
  for i = 1, n do
    local key = K[i]
    local at = 4 + 4 * i
    local current = working[key]
    if current == nil then current = stored[key] end
    local ok, before, nextv, retry
    if A[at] == "c" then
      local amount, limit = tonumber(A[at + 1]), A[at + 2]
      before = stored[key]
      nextv = current + amount
      if nextv < 0 then nextv = 0 end
      ok = limit == "" or amount <= 0 or nextv <= tonumber(limit)
      retry = 0
      if ok then working[key] = nextv end
    else
      local limit, period, cost = tonumber(A[at + 1]), tonumber(A[at + 2]), tonumber(A[at + 3])
      local capacity = period * limit
      local b = backlog(current, limit, now)
      local wanted = b + period * cost
      before = backlog(stored[key], limit, now)
      if wanted <= capacity then
        ok, nextv, retry = true, wanted, 0
        working[key] = to_state(wanted, limit, now)
      else
        ok, nextv, retry = false, b, math.ceil((wanted - capacity) / limit)
      end
    end
    if not ok then reply[2] = 0 end
    reply[#reply + 1] = ok and 1 or 0
    reply[#reply + 1] = string.format("%.0f", before)
    reply[#reply + 1] = string.format("%.0f", nextv)
    reply[#reply + 1] = string.format("%.0f", retry)
  end

  if entry ~= "" and reply[2] == 1 and not dry then
    -- The stream of an open journal always exists (openJournal): absent, it was lost or sealed, and
    -- the call must not be applied without its entry. An id not above the last one fails here too,
    -- before anything is written.
    local stream = K[#K]
    -- Asked once per invocation: nothing in this script removes a stream.
    local exists = streams[stream]
    if exists == nil then
      exists = redis.call("EXISTS", stream) == 1
      streams[stream] = exists
    end
    if not exists then return { 4 } end
    redis.call("XADD", stream, entry, "u", A[6])
  end
  if claim ~= "" and not dry then
    redis.call("SET", K[n + 1], claim, "EX", A[4])
  end
  if reply[2] == 1 and not dry then
    for i = 1, n do
      local key = K[i]
      local at = 4 + 4 * i
      if A[at] == "c" then
        redis.call("SET", key, string.format("%.0f", working[key]), "EX", A[at + 3])
      else
        local s = working[key]
        if s then
          -- Kept until the TAT passes (then it equals a fresh limiter), plus slack: Redis expires on
          -- its own clock, which may run ahead of the nowMs of every process.
          local ttl = s[1] - now + ${EXPIRY_SLACK_MS}
          if s[2] > 0 then ttl = ttl + 1 end
          redis.call("SET", key, string.format("%.0f:%.0f:%.0f", s[1], s[2], s[3]), "PX", string.format("%.0f", ttl))
        else
          redis.call("DEL", key)
        end
      end
    end
  end
  return reply
end

local calls = cjson.decode(ARGV[1])
local replies = {}
local k = 1
for c = 1, #calls do
  local A = calls[c]
  local n = tonumber(A[7])
  local nkeys = n
  if A[3] ~= "" then nkeys = nkeys + 1 end
  if A[5] ~= "" then nkeys = nkeys + 1 end
  local K = {}
  for j = 1, nkeys do K[j] = KEYS[k + j - 1] end
  -- One call's error (a key of the wrong type, say) is that call's answer, not the batch's.
  local ok, reply = pcall(apply_one, K, A)
  if ok then
    replies[c] = reply
  elseif type(reply) == "table" then
    replies[c] = { 3, tostring(reply.err) }
  else
    replies[c] = { 3, tostring(reply) }
  end
  k = k + nkeys
end
return cjson.encode(replies)
`;

/** Adds to counters that exist, each on its own; absent ones stay absent. */
const INCREMENT_SCRIPT = `
for i = 1, #KEYS do
  local raw = redis.call("GET", KEYS[i])
  if raw then
    local nextv = tonumber(raw) + tonumber(ARGV[2 * i - 1])
    if nextv < 0 then nextv = 0 end
    redis.call("SET", KEYS[i], string.format("%.0f", nextv), "EX", ARGV[2 * i])
  end
end
return 1
`;

/** The sentinel's value, set to ARGV[1] first when absent. */
const EPOCH_SCRIPT = `
redis.call("SET", KEYS[1], ARGV[1], "NX")
return redis.call("GET", KEYS[1])
`;

/** Set-if-absent, then read back what is held, atomically. */
const SEED_SCRIPT = `
redis.call("SET", KEYS[1], ARGV[1], "EX", ARGV[2], "NX")
return redis.call("GET", KEYS[1])
`;

/**
 * Journals are streams whose entry ids are "1-<seq>". An open journal's stream always exists, empty or
 * not: it is created with a placeholder entry "0-1" that is deleted at once (Redis keeps an emptied
 * stream), so an append can tell an open journal from a lost or sealed one.
 */
const OPEN_JOURNAL_SCRIPT = `
if redis.call("EXISTS", KEYS[1]) == 0 then
  redis.call("XADD", KEYS[1], "0-1", "open", "1")
  redis.call("XDEL", KEYS[1], "0-1")
  redis.call("SET", KEYS[2], ARGV[1])
end
return 1
`;

/** Renames the stream to the sealed one, or appends its entries to the sealed one if that exists. */
const SEAL_JOURNAL_SCRIPT = `
redis.call("DEL", KEYS[3])
if redis.call("EXISTS", KEYS[1]) == 0 then return 0 end
if redis.call("EXISTS", KEYS[2]) == 0 then
  redis.call("RENAME", KEYS[1], KEYS[2])
  return 1
end
local last = redis.call("XINFO", "STREAM", KEYS[2])
local lastId
for i = 1, #last, 2 do if last[i] == "last-generated-id" then lastId = last[i + 1] end end
for _, e in ipairs(redis.call("XRANGE", KEYS[1], "(" .. lastId, "+")) do
  redis.call("XADD", KEYS[2], e[1], unpack(e[2]))
end
redis.call("DEL", KEYS[1])
return 2
`;

/** The first and last entry of each stream, or {} for an empty or absent one. */
const JOURNAL_BOUNDS_SCRIPT = `
local out = {}
for i = 1, #KEYS do
  local first = redis.call("XRANGE", KEYS[i], "-", "+", "COUNT", 1)
  local last = redis.call("XREVRANGE", KEYS[i], "+", "-", "COUNT", 1)
  if first[1] and last[1] then out[i] = { first[1][1], last[1][1] } else out[i] = {} end
end
return out
`;

const seqOfId = (id: string) => Number(id.slice(id.indexOf("-") + 1));

/**
 * The production counter store: Redis, one Lua script per `apply`. TTLs run on Redis's clock:
 * counters expire `ttlSeconds` after their last write, rate state a second after its TAT passes.
 *
 * Counters live under `${prefix}c:` and rate state under `${prefix}r:`, so a counter and a limiter
 * may share a name (as they can in the memory twin). All of a call's keys must sit on one Redis
 * node: a single instance or Sentinel, not Cluster.
 *
 * The connection belongs to the caller: `close` leaves it open.
 */
export function createRedisCounterStore(redis: Redis, options: { prefix: string }): CounterStore {
  const counterKey = (key: string) => `${options.prefix}c:${key}`;
  const rateKey = (key: string) => `${options.prefix}r:${key}`;
  const heldKey = (key: string) => `${options.prefix}i:${key}`;
  const batcher = applyBatcher(scriptRunner(redis, APPLY_SCRIPT));
  const increment = scriptRunner(redis, INCREMENT_SCRIPT);
  const epoch = scriptRunner(redis, EPOCH_SCRIPT);
  const epochKey = `${options.prefix}counters-epoch`;
  const seed = scriptRunner(redis, SEED_SCRIPT);
  const openJournal = scriptRunner(redis, OPEN_JOURNAL_SCRIPT);
  const sealJournal = scriptRunner(redis, SEAL_JOURNAL_SCRIPT);
  const journalBounds = scriptRunner(redis, JOURNAL_BOUNDS_SCRIPT);
  const journalKey = (journal: string) => `${options.prefix}j:${journal}`;

  return {
    kind: "redis",

    async apply(ops: Op[], nowMs: number, applyOptions: ApplyOptions = {}): Promise<ApplyResult> {
      validateOps(ops, nowMs);
      const claim = applyOptions.idempotency;
      validateClaim(claim);
      const append = applyOptions.journal;
      if (append) validateAppend(append, 0);
      if (ops.length === 0 && !claim) return { status: "done", allowed: true, outcomes: [] };
      const keys = ops.map((op) => (op.kind === "counter" ? counterKey(op.key) : rateKey(op.key)));
      if (claim) keys.push(heldKey(claim.key));
      if (append) keys.push(journalKey(append.journal));
      const args: string[] = [
        String(nowMs),
        applyOptions.dryRun ? "1" : "0",
        claim?.claim ?? "",
        String(claim?.ttlSeconds ?? 0),
        append ? `1-${append.seq}` : "",
        append ? append.data : "",
        String(ops.length),
      ];
      for (const op of ops) {
        if (op.kind === "counter") {
          args.push("c", String(op.amount), op.limit === null ? "" : String(op.limit), String(op.ttlSeconds));
        } else {
          args.push("r", String(op.limit), String(op.periodMs), String(op.cost));
        }
      }
      const raw = (await batcher.run(keys, args)) as Array<number | string>;
      if (raw[0] === 3) throw new Error(`the counter store's script failed: ${raw[1]}`);
      if (raw[0] === 2) return { status: "replay", held: String(raw[1]) };
      if (raw[0] === 4) return { status: "unjournaled" };
      const reply = raw.map(Number);
      if (reply[0] === 0) return { status: "missing", missing: reply.slice(1) };
      const allowed = reply[1] === 1;
      const outcomes = ops.map((op, index) => {
        const at = 2 + index * 4;
        const evaluation: Evaluation = {
          allowed: reply[at] === 1,
          stored: reply[at + 1] ?? 0,
          next: reply[at + 2] ?? 0,
          retryAfterMs: reply[at + 3] ?? 0,
        };
        return toOutcome(op, evaluation, allowed);
      });
      return { status: "done", allowed, outcomes };
    },

    async increment(increments: Increment[]): Promise<void> {
      if (increments.length === 0) return;
      const args: string[] = [];
      for (const { key, amount, ttlSeconds } of increments) {
        validateOps([{ kind: "counter", key, amount, limit: null, ttlSeconds }], 0);
        args.push(String(amount), String(ttlSeconds));
      }
      await increment(
        increments.map((entry) => counterKey(entry.key)),
        args,
      );
    },

    async clearCounters(): Promise<number> {
      let dropped = 0;
      let cursor = "0";
      do {
        const [next, keys] = await redis.scan(cursor, "MATCH", `${counterKey("")}*`, "COUNT", 1000);
        if (keys.length > 0) dropped += await redis.unlink(...keys);
        cursor = next;
      } while (cursor !== "0");
      // Calls decided on the dropped counters may still be committing; with none dropped, none can be.
      if (dropped > 0) await redis.set(epochKey, String(Date.now()));
      else await redis.set(epochKey, "0", "NX");
      return dropped;
    },

    async counterEpoch(nowRealMs: number): Promise<number> {
      return Number(await epoch([epochKey], [String(nowRealMs)]));
    },

    async resetCounterEpoch(nowRealMs: number): Promise<void> {
      await redis.set(epochKey, String(nowRealMs));
    },

    async remember(key: string, value: string, ttlSeconds: number): Promise<void> {
      await redis.set(heldKey(key), value, "EX", ttlSeconds);
    },

    async recall(key: string): Promise<string | null> {
      return redis.get(heldKey(key));
    },

    async forget(key: string): Promise<void> {
      await redis.del(heldKey(key));
    },

    async get(keys: string[]): Promise<(number | null)[]> {
      if (keys.length === 0) return [];
      const values = await redis.mget(keys.map(counterKey));
      return values.map((value) => (value === null ? null : Number(value)));
    },

    async seed(key: string, value: number, ttlSeconds: number): Promise<number> {
      validateOps([{ kind: "counter", key, amount: value, limit: null, ttlSeconds }], 0);
      if (value < 0) throw new RangeError(`seed value must be >= 0, got ${value}`);
      return Number(await seed([counterKey(key)], [String(value), String(ttlSeconds)]));
    },

    async delete(keys: string[]): Promise<void> {
      if (keys.length === 0) return;
      await redis.del(...keys.map(counterKey), ...keys.map(rateKey));
    },

    async openJournal(journal: string, nowRealMs: number): Promise<void> {
      await openJournal([journalKey(journal), `${journalKey(journal)}:opened`], [String(nowRealMs)]);
    },

    async journalOpenedAt(journals: string[]) {
      if (journals.length === 0) return [];
      const values = await redis.mget(journals.map((journal) => `${journalKey(journal)}:opened`));
      return values.map((value) => (value === null ? null : Number(value)));
    },

    async sealJournal(journal: string): Promise<void> {
      const key = journalKey(journal);
      await sealJournal([key, journalKey(sealedJournal(journal)), `${key}:opened`], []);
    },

    async readJournal(journal: string, afterSeq: number, count: number) {
      const entries = (await redis.xrange(journalKey(journal), `(1-${afterSeq}`, "+", "COUNT", count)) as [
        string,
        string[],
      ][];
      return entries
        .filter(([id]) => id.startsWith("1-"))
        .map(([id, fields]) => ({ seq: seqOfId(id), data: fields[1] ?? "" }));
    },

    async trimJournal(journal: string, throughSeq: number): Promise<void> {
      await redis.xtrim(journalKey(journal), "MINID", `1-${throughSeq + 1}`);
    },

    async deleteJournalEntries(journal: string, seqs: number[]): Promise<void> {
      if (seqs.length > 0) await redis.xdel(journalKey(journal), ...seqs.map((seq) => `1-${seq}`));
    },

    async journalBounds(journals: string[]) {
      if (journals.length === 0) return [];
      const replies = (await journalBounds(journals.map(journalKey), [])) as string[][];
      return replies.map((r) =>
        r[0] !== undefined && r[1] !== undefined ? { first: seqOfId(r[0]), last: seqOfId(r[1]) } : null,
      );
    },

    async dropJournal(journal: string): Promise<void> {
      await redis.del(journalKey(journal), `${journalKey(journal)}:opened`);
    },

    async ping(): Promise<void> {
      await redis.ping();
    },

    async close(): Promise<void> {},
  };
}

/** Calls per script invocation at most: bounds how long one invocation holds Redis. */
const MAX_BATCH = 256;

/**
 * Invocations in flight at once. While they run, the calls made meanwhile gather for the next (a
 * group commit): under load, one command (and one Lua call) for a dozen checks or more instead of a
 * few — less work for ioredis, the socket and Redis, which runs scripts one at a time anyway. Two
 * rather than one, so the process prepares the next invocation while Redis runs the current one
 * (one in flight left the process idle meanwhile). Each command settles: the connection has a
 * command timeout.
 */
const MAX_IN_FLIGHT = 2;

/**
 * Gathers `apply` calls into invocations of the script: those made in one turn of the event loop,
 * and while MAX_IN_FLIGHT invocations run, everything made meanwhile. Every call is still evaluated
 * atomically on its own, in the order made; a failed invocation fails each of its calls.
 */
function applyBatcher(run: (keys: string[], args: string[]) => Promise<unknown>) {
  let queue: {
    keys: string[];
    args: string[];
    resolve: (reply: unknown) => void;
    reject: (e: Error) => void;
  }[] = [];
  let inFlight = 0;
  let scheduled = false;
  const schedule = () => {
    if (scheduled || queue.length === 0 || inFlight >= MAX_IN_FLIGHT) return;
    scheduled = true;
    setImmediate(flush);
  };
  const flush = () => {
    scheduled = false;
    while (queue.length > 0 && inFlight < MAX_IN_FLIGHT) {
      const batch = queue.length <= MAX_BATCH ? queue : queue.slice(0, MAX_BATCH);
      queue = queue.length <= MAX_BATCH ? [] : queue.slice(MAX_BATCH);
      const keys: string[] = [];
      for (const call of batch) for (const key of call.keys) keys.push(key);
      const calls = JSON.stringify(batch.map((call) => call.args));
      inFlight++;
      run(keys, [calls])
        .then(
          (reply) => {
            let replies: unknown;
            try {
              replies = JSON.parse(String(reply));
            } catch {
              replies = undefined;
            }
            if (!Array.isArray(replies) || replies.length !== batch.length) {
              const error = new Error("the counter store answered a batch with the wrong number of replies");
              for (const call of batch) call.reject(error);
              return;
            }
            batch.forEach((call, i) => {
              call.resolve(replies[i]);
            });
          },
          (error: Error) => {
            for (const call of batch) call.reject(error);
            // Calls queued meanwhile would wait their turn only to meet the same failure (a stalled
            // or lost connection, each invocation timing out in turn): they fail now, so each
            // feature's policy decides them within one command timeout, and the queue stays short.
            const waiting = queue;
            queue = [];
            for (const call of waiting) call.reject(error);
          },
        )
        .finally(() => {
          inFlight--;
          schedule();
        });
    }
  };
  return {
    run(keys: string[], args: string[]): Promise<unknown> {
      return new Promise((resolve, reject) => {
        queue.push({ keys, args, resolve, reject });
        schedule();
      });
    },
  };
}

/** EVALSHA, loading the script with EVAL when Redis does not have it (first use, or after a restart). */
function scriptRunner(redis: Redis, script: string) {
  const sha = createHash("sha1").update(script).digest("hex");
  return async (keys: string[], args: string[]): Promise<unknown> => {
    try {
      return await redis.evalsha(sha, keys.length, ...keys, ...args);
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith("NOSCRIPT")) throw error;
      return redis.eval(script, keys.length, ...keys, ...args);
    }
  };
}
