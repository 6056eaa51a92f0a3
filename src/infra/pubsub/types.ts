/** Fan-out between Tollgate processes (key revocations, test clock moves, catalog reloads). */
export interface PubSub {
  readonly kind: "memory" | "redis";
  publish(channel: string, message: string): Promise<void>;
  /** Resolves once the subscription is active; returns a function that ends it. */
  subscribe(channel: string, handler: (message: string) => void): Promise<() => Promise<void>>;
  close(): Promise<void>;
}
