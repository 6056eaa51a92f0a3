import { TollgateError, TollgateUnavailableError } from "./errors.js";
import { JsonText, messageOf, type Transport, unref } from "./http.js";
import type { Schemas, TrackEvent, TrackOptions, TrackProblem, UsageEvent } from "./types.js";

/**
 * `track()`: events are queued and sent in the background to `POST /v1/events` in batches — as soon
 * as a batch is full, and every `flushIntervalMs` otherwise. Every event has an id from the moment it
 * is tracked, and a retry sends the same ids: Tollgate counts each id once per org, so a batch whose
 * answer was lost can be sent again without counting twice.
 *
 * A delivery is tried `maxAttempts` times with exponential backoff and jitter on timeouts, network
 * errors, 408, 429 and 5xx; if all fail, its events go back to the front of the queue for the next
 * flush. Nothing is dropped while Tollgate is away unless the queue fills up (then the oldest go,
 * reported to `onError`).
 *
 * The queue holds each event as its JSON text, made once when it is tracked, in chunks of at most a
 * batch; a chunk that is full is joined at once into the body it will be sent as. So a queue that
 * grew while Tollgate was slow (hundreds of thousands of events) is one string per batch for the
 * app's garbage collector, not one per event that each young-generation collection copies until it
 * is promoted, and taking a batch off its front costs the same as with ten events queued.
 */

/** The API's batch limit. */
export const MAX_BATCH = 1000;

/**
 * Events with consecutive sequence numbers (`first`, `first + 1`, …): while the chunk fills, each
 * as its JSON text in `events`; once full, `joined` (see {@link seal}) and `events` empty. The rare
 * paths that need single events (part of a chunk, a 413 split, a report) go through {@link textsOf}.
 */
interface Chunk {
  first: number;
  events: string[];
  joined?: Joined;
}

/** A full chunk's texts joined with commas, and where each ends in `text`. */
interface Joined {
  text: string;
  ends: Uint32Array;
}

/** Joins a full chunk's texts: from then on the chunk is one string (and its ends). */
function seal(chunk: Chunk): void {
  const { events } = chunk;
  const ends = new Uint32Array(events.length);
  let at = -1;
  for (let i = 0; i < events.length; i++) {
    at += (events[i] as string).length + 1;
    ends[i] = at;
  }
  chunk.joined = { text: chunk.events.join(","), ends };
  chunk.events = [];
}

/** Events in a chunk. */
function sizeOf(chunk: Chunk): number {
  return chunk.joined ? chunk.joined.ends.length : chunk.events.length;
}

/** A chunk's texts one by one, the chunk unsealed for good (the rare paths that change a chunk). */
function textsOf(chunk: Chunk): string[] {
  const joined = chunk.joined;
  if (joined !== undefined) {
    let start = 0;
    chunk.events = Array.from(joined.ends, (end) => {
      const text = joined.text.slice(start, end);
      start = end + 1;
      return text;
    });
    chunk.joined = undefined;
  }
  return chunk.events;
}

/** The events of a chunk as `POST /v1/events` takes them: the same body as `{ events: [...] }` serialized. */
function bodyOf(chunk: Chunk): JsonText {
  return new JsonText(`{"events":[${chunk.joined ? chunk.joined.text : chunk.events.join(",")}]}`);
}

/** What a flush achieved. */
export interface FlushResult {
  /** Events tracked before the flush that are still queued (their delivery failed; retried later). */
  pending: number;
}

/** Counters since the client was created. */
export interface TrackStats {
  /** Events given to `track()`. */
  tracked: number;
  /** Events Tollgate recorded. */
  accepted: number;
  /** Events Tollgate already had (a retry of a batch whose answer was lost, or an id sent twice). */
  duplicates: number;
  /** Events Tollgate refused (reported as `rejected`). */
  rejected: number;
  /** Events the SDK dropped (queue full, or a batch refused as a whole). */
  dropped: number;
  /** Requests made to `POST /v1/events`, retries included. */
  requests: number;
  /** Events waiting in the queue now. */
  queued: number;
}

type Outcome = "done" | "failed";

export class Tracker {
  private readonly batchSize: number;
  private readonly intervalMs: number;
  private readonly maxQueue: number;
  private readonly maxAttempts: number;
  private readonly initialBackoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly timeoutMs: number;
  private readonly onError: (problem: TrackProblem) => void;

  /** Oldest first; sequence numbers increase from one chunk to the next. */
  private chunks: Chunk[] = [];
  /** Events in the chunks. */
  private queued = 0;
  private seq = 0;
  /**
   * Event ids: 128 random bits once per client, then a counter (a UUID per event costs 0.3 µs). Drawn
   * at the first `track()`, not in the constructor: Cloudflare Workers refuse random values at module
   * scope, where a client is usually made.
   */
  private idPrefix: string | undefined;
  private ids = 0;
  private timer: ReturnType<typeof setInterval> | undefined;
  /** The delivery round under way, if any (one at a time: batches go out in order). */
  private round: Promise<Outcome> | undefined;
  /** Wakes a round sleeping in backoff (a flush wants it now). */
  private wake: (() => void) | undefined;
  private sleepTimer: ReturnType<typeof setTimeout> | undefined;
  /** While a flush() waits, backoff timers keep the process alive. */
  private flushing = 0;
  private closed = false;
  private readonly counters = {
    tracked: 0,
    accepted: 0,
    duplicates: 0,
    rejected: 0,
    dropped: 0,
    requests: 0,
  };

  constructor(
    private readonly transport: Transport,
    options: TrackOptions = {},
  ) {
    this.batchSize = clamp(options.batchSize ?? 100, 1, MAX_BATCH);
    this.intervalMs = Math.max(1, options.flushIntervalMs ?? 1000);
    this.maxQueue = Math.max(1, options.maxQueue ?? 10_000);
    this.maxAttempts = Math.max(1, options.maxAttempts ?? 5);
    this.initialBackoffMs = Math.max(0, options.initialBackoffMs ?? 200);
    this.maxBackoffMs = Math.max(this.initialBackoffMs, options.maxBackoffMs ?? 5000);
    this.timeoutMs = Math.max(1, options.timeoutMs ?? 10_000);
    this.onError = options.onError ?? warn;
  }

  get stats(): TrackStats {
    return { ...this.counters, queued: this.queued };
  }

  track(input: TrackEvent): string {
    if (this.closed) throw new Error("This Tollgate client was shut down: track() no longer sends anything.");
    if (typeof input.orgId !== "string" || input.orgId === "")
      throw new TypeError("track(): orgId is required");
    if (typeof input.meter !== "string" || input.meter === "")
      throw new TypeError("track(): meter is required");
    if (input.value !== undefined && typeof input.value !== "number" && typeof input.value !== "string") {
      throw new TypeError("track(): value must be a number or a decimal string");
    }
    if (input.id !== undefined && typeof input.id !== "string")
      throw new TypeError("track(): id must be a string");
    const id = input.id ?? this.nextId();
    const timestamp =
      input.timestamp === undefined
        ? now()
        : input.timestamp instanceof Date
          ? input.timestamp.toISOString()
          : input.timestamp;
    // No spread: this runs once per tracked event, and an object spread is its slowest part.
    const event: UsageEvent = {
      id,
      org_id: input.orgId,
      meter: input.meter,
      value: input.value ?? 1,
      timestamp,
    };
    if (input.properties !== undefined) event.properties = input.properties;
    // Its JSON text, once: a flat string (one object for the garbage collector to keep while the
    // event waits; pieces put together with `+` would be a tree of them, and slower to join).
    let text: string;
    try {
      text = JSON.stringify(event);
    } catch (error) {
      // A body that cannot be serialized would block the queue behind it: refused here instead.
      throw new TypeError(`track(): properties must be JSON-serializable (${messageOf(error)})`);
    }
    this.counters.tracked++;
    this.append(++this.seq, text);
    this.trim();
    this.startTimer();
    if (this.queued >= this.batchSize && this.round === undefined) this.startRound();
    return id;
  }

  private nextId(): string {
    if (this.idPrefix === undefined) this.idPrefix = randomPrefix();
    return this.idPrefix + (++this.ids).toString(36);
  }

  /** Queues one event: onto the last chunk when it follows it and has room, else as a new chunk. */
  private append(seq: number, text: string): void {
    const last = this.chunks[this.chunks.length - 1];
    if (
      last !== undefined &&
      last.joined === undefined &&
      last.events.length < this.batchSize &&
      last.first + last.events.length === seq
    ) {
      last.events.push(text);
      if (last.events.length === this.batchSize) seal(last);
    } else {
      const chunk = { first: seq, events: [text] };
      if (this.batchSize === 1) seal(chunk);
      this.chunks.push(chunk);
    }
    this.queued++;
  }

  /** Sequence number of the oldest queued event, if any. */
  private headSeq(): number | undefined {
    return this.chunks[0]?.first;
  }

  /**
   * Takes the next batch off the front: at most `batchSize` events, none past `target`, from the
   * first chunk (a batch is never stitched from two).
   */
  private take(target: number): Chunk | undefined {
    const head = this.chunks[0];
    if (head === undefined || head.first > target) return undefined;
    const n = Math.min(sizeOf(head), this.batchSize, target - head.first + 1);
    this.queued -= n;
    if (n === sizeOf(head)) {
      this.chunks.shift();
      return head;
    }
    const texts = textsOf(head);
    const batch = { first: head.first, events: texts.slice(0, n) };
    head.events = texts.slice(n);
    head.first += n;
    return batch;
  }

  /**
   * Sends everything queued so far. Resolves once each of those events was delivered, refused, or
   * its delivery failed `maxAttempts` times (it then stays queued: see `pending`).
   */
  async flush(): Promise<FlushResult> {
    const target = this.seq;
    this.flushing++;
    this.keepAlive();
    try {
      for (;;) {
        if (this.round) {
          this.wake?.();
          await this.round;
          continue;
        }
        const head = this.headSeq();
        if (head === undefined || head > target) break;
        if ((await this.startRound(target)) === "failed") break;
      }
    } finally {
      this.flushing--;
    }
    let pending = 0;
    for (const chunk of this.chunks) {
      if (chunk.first > target) break;
      pending += Math.min(sizeOf(chunk), target - chunk.first + 1);
    }
    return { pending };
  }

  /** Stops the timer and flushes; `track()` throws afterwards. */
  async shutdown(): Promise<FlushResult> {
    this.closed = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    return this.flush();
  }

  private startTimer(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(() => {
      if (this.round === undefined && this.queued > 0) this.startRound(this.seq);
    }, this.intervalMs);
    // The background timer never keeps a Node process alive (shutdown() sends what is left).
    unref(this.timer);
  }

  /**
   * Sends batches one after another: every event up to `target` (a flush, a tick of the interval),
   * or, without a target, as long as there are full batches. "failed" when a delivery gave up (its
   * events went back to the queue).
   */
  private startRound(target?: number): Promise<Outcome> {
    const round = (async (): Promise<Outcome> => {
      for (;;) {
        if (target === undefined && this.queued < this.batchSize) return "done";
        const batch = this.take(target ?? this.seq);
        if (batch === undefined) return "done";
        const undelivered = await this.deliver(batch);
        if (undelivered !== undefined) {
          this.requeue(undelivered);
          return "failed";
        }
      }
    })();
    const tracked = round
      .catch((error: unknown): Outcome => {
        // Not expected (deliver() handles every failure); never an unhandled rejection.
        this.report({
          kind: "retrying",
          events: [],
          error: error instanceof Error ? error : new Error(String(error)),
        });
        return "failed";
      })
      .finally(() => {
        this.round = undefined;
      });
    this.round = tracked;
    return tracked;
  }

  /**
   * One batch, with retries; a batch too large for the server is split. Resolves with the events
   * still to deliver (to go back to the queue, in order) when a delivery gave up, else undefined.
   */
  private async deliver(batch: Chunk): Promise<Chunk | undefined> {
    for (let attempt = 1; ; attempt++) {
      try {
        this.counters.requests++;
        const answer = await this.transport.send<Schemas["EventsAccepted"]>(
          "POST",
          "/v1/events",
          bodyOf(batch),
          this.timeoutMs,
        );
        this.accepted(batch, answer.body);
        return undefined;
      } catch (error) {
        if (error instanceof TollgateError) {
          if (error.status === 413 && sizeOf(batch) > 1) {
            const texts = textsOf(batch);
            const half = Math.ceil(texts.length / 2);
            const second = { first: batch.first + half, events: texts.slice(half) };
            const left = await this.deliver({ first: batch.first, events: texts.slice(0, half) });
            if (left !== undefined) return { first: left.first, events: textsOf(left).concat(second.events) };
            return this.deliver(second);
          }
          if (error.status === 401 || error.status === 403) {
            // The operator key is wrong: keep the events (a fixed deployment may still send them).
            this.report({ kind: "retrying", events: parsed(textsOf(batch)), error });
            return batch;
          }
          this.counters.dropped += sizeOf(batch);
          this.report({ kind: "dropped", reason: "refused", events: parsed(textsOf(batch)), error });
          return undefined;
        }
        if (!(error instanceof TollgateUnavailableError) || attempt >= this.maxAttempts) {
          const reason = error instanceof Error ? error : new Error(messageOf(error));
          this.report({ kind: "retrying", events: parsed(textsOf(batch)), error: reason });
          return batch;
        }
        await this.sleep(this.backoff(attempt, error.retryAfterMs));
      }
    }
  }

  private accepted(batch: Chunk, body: Schemas["EventsAccepted"]): void {
    this.counters.accepted += body?.accepted ?? 0;
    this.counters.duplicates += body?.duplicates ?? 0;
    const rejected = body?.rejected ?? [];
    if (rejected.length === 0) return;
    this.counters.rejected += rejected.length;
    const texts = textsOf(batch);
    const events = rejected.flatMap((r) => {
      const text = texts[r.index];
      return text === undefined
        ? []
        : [{ ...(JSON.parse(text) as UsageEvent), code: r.code, detail: r.detail }];
    });
    this.report({ kind: "rejected", events });
  }

  /** Back to the front of the queue, in order, with the same ids. */
  private requeue(batch: Chunk): void {
    if (sizeOf(batch) === 0) return;
    this.chunks.unshift(batch);
    this.queued += sizeOf(batch);
    this.trim();
  }

  /** Drops the oldest events past maxQueue. */
  private trim(): void {
    let excess = this.queued - this.maxQueue;
    if (excess <= 0) return;
    const dropped: string[] = [];
    while (excess > 0) {
      const head = this.chunks[0] as Chunk;
      const texts = textsOf(head);
      const n = Math.min(excess, texts.length);
      if (n === texts.length) {
        this.chunks.shift();
        for (const text of texts) dropped.push(text);
      } else {
        for (const text of texts.splice(0, n)) dropped.push(text);
        head.first += n;
      }
      excess -= n;
      this.queued -= n;
    }
    this.counters.dropped += dropped.length;
    this.report({ kind: "dropped", reason: "queue_full", events: parsed(dropped) });
  }

  /** Exponential with jitter (half fixed, half random), at least a server's Retry-After. */
  private backoff(attempt: number, retryAfterMs: number | undefined): number {
    const ceiling = Math.min(this.maxBackoffMs, this.initialBackoffMs * 2 ** (attempt - 1));
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    return Math.min(this.maxBackoffMs, Math.max(delay, retryAfterMs ?? 0));
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(this.sleepTimer);
        this.sleepTimer = undefined;
        this.wake = undefined;
        resolve();
      };
      this.wake = done;
      this.sleepTimer = setTimeout(done, ms);
      if (this.flushing === 0) unref(this.sleepTimer);
    });
  }

  /** A flush is waiting: a backoff under way must keep the process alive until it is done. */
  private keepAlive(): void {
    (this.sleepTimer as { ref?: () => void } | undefined)?.ref?.();
  }

  private report(problem: TrackProblem): void {
    try {
      this.onError(problem);
    } catch {
      // A throwing callback must not break delivery.
    }
  }
}

let lastMs = -1;
let lastIso = "";

/** Now as an ISO timestamp; events tracked within one millisecond share the string. */
function now(): string {
  const ms = Date.now();
  if (ms !== lastMs) {
    lastMs = ms;
    lastIso = new Date(ms).toISOString();
  }
  return lastIso;
}

/** 16 random bytes, base64url, and a dot: `Vq3…Jw.` (23 characters). */
function randomPrefix(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return `${btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "")}.`;
}

/** Queued events as objects again, for `onError` (a failure's path only). */
function parsed(texts: readonly string[]): UsageEvent[] {
  return texts.map((text) => JSON.parse(text) as UsageEvent);
}

function clamp(value: number, min: number, max: number): number {
  return Math.min(max, Math.max(min, Math.floor(value)));
}

function warn(problem: TrackProblem): void {
  const count = problem.events.length;
  const detail =
    problem.kind === "rejected"
      ? `rejected by Tollgate (${[...new Set(problem.events.map((e) => e.code))].join(", ")})`
      : problem.kind === "dropped"
        ? `dropped (${problem.reason})`
        : `not delivered yet, will retry: ${problem.error.message}`;
  console.warn(`@tollgate/sdk: ${count} usage event(s) ${detail}`);
}
