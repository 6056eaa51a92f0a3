/**
 * Time comes from a clock, never from `new Date()` in business code, so that the test clock can move
 * "now" for billing periods, renewals and expiries exactly as Stripe's test clocks do.
 */
export interface Clock {
  now(): Date;
  /** Milliseconds since the epoch; the cheap form for hot paths. */
  nowMs(): number;
}

export const systemClock: Clock = {
  now: () => new Date(),
  nowMs: () => Date.now(),
};

/**
 * A frozen clock that only moves when told to, and only forward. Frozen (rather than offset from real
 * time) so that amounts computed from elapsed time — proration above all — are exact and repeatable.
 */
export class ManualClock implements Clock {
  constructor(private current: number) {}

  now(): Date {
    return new Date(this.current);
  }

  nowMs(): number {
    return this.current;
  }

  /** Moves to `ms` if it is later than now; returns whether the clock moved. */
  moveTo(ms: number): boolean {
    if (ms <= this.current) return false;
    this.current = ms;
    return true;
  }
}
