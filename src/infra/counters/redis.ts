import { createHash } from "node:crypto";
import type { Redis } from "ioredis";
import { type Evaluation, toOutcome, validateClaim, validateOps } from "./gcra.js";
import type { ApplyOptions, ApplyResult, CounterStore, Increment, Op } from "./types.js";

/** Rate state outlives its TAT by this much (see the script). */
const EXPIRY_SLACK_MS = 1000;

/**
 * `apply` as one script, so a call is atomic; every call made in one turn of the event loop goes to
 * Redis in one invocation (see `createRedisCounterStore`), each still evaluated on its own. It
 * mirrors memory.ts and gcra.ts step for step; keep them in lockstep.
 *
 * ARGV[1] = the number of calls; then, per call, a header of five values — nowMs, "1" for a dry run,
 * the idempotency claim ("" for none), its TTL in seconds, the number of ops n — and four per op:
 *   counter: "c", amount, limit ("" = unlimited), ttlSeconds
 *   rate:    "r", limit, periodMs, cost
 * KEYS holds each call's keys in turn: op i's key, then the idempotency key when there is a claim.
 * The reply has one entry per call: {0, missing op indexes...}, {2, held value} for a claimed
 * idempotency key, {3, message} when the call raised an error (what it wrote before the error stays:
 * Redis does not roll scripts back), or {1, all allowed, then per op: allowed, stored, next, retry}.
 *
 * Lua numbers are doubles, like JS numbers: every value here is an integer below 2^53, so +, −, ×
 * and floor/ceil of a quotient agree bit for bit. Numbers are never handed to Redis as Lua numbers
 * (that conversion uses "%.14g" and turns 1.7e12-scale values into exponent notation): they are
 * formatted with "%.0f" first.
 */
const APPLY_SCRIPT = `
local function apply_one(K, A)
  local now = tonumber(A[1])
  local dry = A[2] == "1"
  local claim = A[3]
  local n = (#A - 4) / 4

  local function arg(i, k) return A[4 + (i - 1) * 4 + k] end

  if claim ~= "" then
    local previous = redis.call("GET", K[n + 1])
    -- A held value may carry an expiry on the caller's clock ("x:<expiresMs>:..."): past it, it is absent.
    if previous then
      local expires = tonumber(string.match(previous, "^%a:(%d+):"))
      if not expires or expires > now then return { 2, previous } end
    end
  end

  -- Rate state is "tatMs:frac:limit": the TAT is tatMs + frac / limit ms, exactly.
  local function read_state(key)
    local raw = redis.call("GET", key)
    if not raw then return false end
    local t, f, l = string.match(raw, "^(%-?%d+):(%d+):(%d+)$")
    if not t then return false end
    return { tonumber(t), tonumber(f), tonumber(l) }
  end

  local function backlog(state, limit)
    if not state then return 0 end
    local frac = state[2]
    if state[3] ~= limit then frac = math.ceil(frac * limit / state[3]) end
    local b = (state[1] - now) * limit + frac
    if b > 0 then return b end
    return 0
  end

  local function to_state(b, limit)
    if b <= 0 then return false end
    local whole = math.floor(b / limit)
    return { now + whole, b - whole * limit, limit }
  end

  -- Load everything first; a missing counter stops the call before anything is evaluated.
  local stored = {}
  local missing = { 0 }
  for i = 1, n do
    local key = K[i]
    if stored[key] == nil then
      if arg(i, 1) == "c" then
        local raw = redis.call("GET", key)
        if raw then stored[key] = tonumber(raw) end
      else
        stored[key] = read_state(key)
      end
    end
    if arg(i, 1) == "c" and stored[key] == nil then missing[#missing + 1] = i - 1 end
  end
  if #missing > 1 then return missing end

  -- Evaluate in order against working copies (two ops on one key see each other); write nothing yet.
  local working = {}
  local reply = { 1, 1 }
  for i = 1, n do
    local key = K[i]
    local current = working[key]
    if current == nil then current = stored[key] end
    local ok, before, nextv, retry
    if arg(i, 1) == "c" then
      local amount, limit = tonumber(arg(i, 2)), arg(i, 3)
      before = stored[key]
      nextv = current + amount
      if nextv < 0 then nextv = 0 end
      ok = limit == "" or amount <= 0 or nextv <= tonumber(limit)
      retry = 0
      if ok then working[key] = nextv end
    else
      local limit, period, cost = tonumber(arg(i, 2)), tonumber(arg(i, 3)), tonumber(arg(i, 4))
      local capacity = period * limit
      local b = backlog(current, limit)
      local wanted = b + period * cost
      before = backlog(stored[key], limit)
      if wanted <= capacity then
        ok, nextv, retry = true, wanted, 0
        working[key] = to_state(wanted, limit)
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

  if claim ~= "" and not dry then
    redis.call("SET", K[n + 1], claim, "EX", A[4])
  end
  if reply[2] == 1 and not dry then
    for i = 1, n do
      local key = K[i]
      if arg(i, 1) == "c" then
        redis.call("SET", key, string.format("%.0f", working[key]), "EX", arg(i, 4))
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

local replies = {}
local k, a = 1, 2
for c = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a + 4])
  local A = { ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3] }
  for j = 1, 4 * n do A[4 + j] = ARGV[a + 4 + j] end
  local nkeys = n
  if A[3] ~= "" then nkeys = n + 1 end
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
  a = a + 5 + 4 * n
end
return replies
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

  return {
    kind: "redis",

    async apply(ops: Op[], nowMs: number, applyOptions: ApplyOptions = {}): Promise<ApplyResult> {
      validateOps(ops, nowMs);
      const claim = applyOptions.idempotency;
      validateClaim(claim);
      if (ops.length === 0 && !claim) return { status: "done", allowed: true, outcomes: [] };
      const keys = ops.map((op) => (op.kind === "counter" ? counterKey(op.key) : rateKey(op.key)));
      if (claim) keys.push(heldKey(claim.key));
      const args: string[] = [
        String(nowMs),
        applyOptions.dryRun ? "1" : "0",
        claim?.claim ?? "",
        String(claim?.ttlSeconds ?? 0),
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

    async ping(): Promise<void> {
      await redis.ping();
    },

    async close(): Promise<void> {},
  };
}

/** Calls per script invocation at most: bounds how long one invocation holds Redis. */
const MAX_BATCH = 256;

/**
 * Gathers the `apply` calls made in one turn of the event loop into one invocation of the script:
 * under load, one command (and one Lua call) for dozens of checks instead of one each — less work for
 * ioredis, the socket and Redis. Every call is still evaluated atomically on its own, in the order
 * made; a failed invocation fails each of its calls.
 */
function applyBatcher(run: (keys: string[], args: string[]) => Promise<unknown>) {
  let queue: {
    keys: string[];
    args: string[];
    resolve: (reply: unknown) => void;
    reject: (e: Error) => void;
  }[] = [];
  const flush = () => {
    while (queue.length > 0) {
      const batch = queue.slice(0, MAX_BATCH);
      queue = queue.slice(MAX_BATCH);
      const keys: string[] = [];
      const args: string[] = [String(batch.length)];
      for (const call of batch) {
        for (const key of call.keys) keys.push(key);
        for (const arg of call.args) args.push(arg);
      }
      run(keys, args).then(
        (replies) => {
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
        },
      );
    }
  };
  return {
    run(keys: string[], args: string[]): Promise<unknown> {
      return new Promise((resolve, reject) => {
        if (queue.length === 0) setImmediate(flush);
        queue.push({ keys, args, resolve, reject });
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
