import { createHash, randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import Stripe from "stripe";

/**
 * A stand-in for Stripe's API on loopback, for the official SDK to talk to (STRIPE_API_BASE): the
 * handful of endpoints Tollgate calls, with Stripe's shapes, its form encoding, its idempotency keys
 * (a key sent again with the same parameters replays the first answer; with other parameters it is
 * an error) and its test cards. What a customer does in a browser on Stripe's pages (finish a
 * Checkout, change the card in the portal) are methods here; each records the events Stripe would
 * send, and `deliver` posts one to a webhook URL signed by the SDK's own helper.
 *
 * Test cards, as on Stripe: 4242 4242 4242 4242 pays; 4000 0000 0000 0002 is declined when attached
 * (Checkout shows the error and stays open); 4000 0000 0000 0341 attaches but every charge is declined.
 */

type Obj = Record<string, unknown> & { id: string };
export interface StandInEvent {
  id: string;
  object: "event";
  type: string;
  created: number;
  api_version: string;
  livemode: false;
  pending_webhooks: number;
  request: { id: null; idempotency_key: null };
  data: { object: Obj; previous_attributes?: Record<string, unknown> };
}

const CARDS: Record<string, { brand: string; attach: boolean; charge: boolean }> = {
  "4242424242424242": { brand: "visa", attach: true, charge: true },
  "4000000000000002": { brand: "visa", attach: false, charge: false },
  "4000000000000341": { brand: "visa", attach: true, charge: false },
};

const id = (prefix: string) => `${prefix}_${randomBytes(12).toString("hex")}`;
const clone = <T>(value: T): T => JSON.parse(JSON.stringify(value)) as T;

/** Stripe's form encoding (`a[b][0]=c`) back into objects and arrays. */
export function parseStripeForm(body: string): Record<string, unknown> {
  const root: Record<string, unknown> = {};
  for (const [key, value] of new URLSearchParams(body)) {
    const path = key.replace(/\]/g, "").split("[");
    let node: Record<string, unknown> | unknown[] = root;
    path.forEach((part, index) => {
      const last = index === path.length - 1;
      const slot = part === "" && Array.isArray(node) ? String(node.length) : part;
      const container = node as Record<string, unknown>;
      if (last) container[slot] = value;
      else {
        if (container[slot] === undefined) container[slot] = /^\d+$/.test(path[index + 1] ?? "") ? [] : {};
        node = container[slot] as Record<string, unknown>;
      }
    });
  }
  return root;
}

class StripeError extends Error {
  constructor(
    readonly status: number,
    readonly body: Record<string, unknown>,
  ) {
    super(String(body.message));
  }
}

export class StripeStandIn {
  readonly secretKey = `sk_test_${randomBytes(12).toString("hex")}`;
  readonly webhookSecret = `whsec_${randomBytes(16).toString("hex")}`;
  url = "";
  customers = new Map<string, Obj>();
  paymentMethods = new Map<string, Obj & { number: string }>();
  setupIntents = new Map<string, Obj>();
  checkoutSessions = new Map<string, Obj>();
  paymentIntents = new Map<string, Obj>();
  portalSessions = new Map<string, Obj>();
  refunds = new Map<string, Obj>();
  events: StandInEvent[] = [];
  /** Every API request, for assertions: method, path, idempotency key. */
  requests: { method: string; path: string; idempotencyKey: string | undefined }[] = [];
  /** Answer the next n requests with a 500 (Stripe having a bad moment). */
  failNext = 0;
  /** Carry out the next n POSTs but drop the connection before answering (a lost response). */
  loseNext = 0;
  private idempotency = new Map<string, { fingerprint: string; status: number; body: unknown }>();
  private server: Server | undefined;
  private readonly signer = new Stripe("sk_test_signer_only");

  async start(): Promise<this> {
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((error: Error) => {
        res.writeHead(500, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: { type: "api_error", message: error.message } }));
      });
    });
    await new Promise<void>((resolve) => this.server?.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }

  /** Charges that moved money: succeeded PaymentIntents. */
  succeededCharges(): Obj[] {
    return [...this.paymentIntents.values()].filter((pi) => pi.status === "succeeded");
  }

  private emit(type: string, object: Obj, previous?: Record<string, unknown>) {
    this.events.push({
      id: id("evt"),
      object: "event",
      type,
      created: Math.floor(Date.now() / 1000),
      api_version: "2025-01-01",
      livemode: false,
      pending_webhooks: 1,
      request: { id: null, idempotency_key: null },
      data: { object: clone(object), ...(previous ? { previous_attributes: previous } : {}) },
    });
  }

  /** An event as Stripe posts it: the JSON body and its signature, made now (or at `timestamp`, in seconds). */
  signed(event: StandInEvent, options: { timestamp?: number; secret?: string } = {}) {
    const body = JSON.stringify(event);
    const signature = this.signer.webhooks.generateTestHeaderString({
      payload: body,
      secret: options.secret ?? this.webhookSecret,
      ...(options.timestamp !== undefined ? { timestamp: options.timestamp } : {}),
    });
    return { body, headers: { "content-type": "application/json", "stripe-signature": signature } };
  }

  // --- What the customer does in the browser -------------------------------------------------------

  private newCard(customer: string, cardNumber: string) {
    const digits = cardNumber.replace(/[\s-]/g, "");
    const card = CARDS[digits];
    if (!card?.attach) return undefined;
    const pm = {
      id: id("pm"),
      object: "payment_method",
      type: "card",
      customer,
      card: { brand: card.brand, last4: digits.slice(-4), exp_month: 12, exp_year: 2034 },
      number: digits,
    };
    this.paymentMethods.set(pm.id, pm);
    this.emit("payment_method.attached", this.publicPm(pm));
    return pm;
  }

  private publicPm(pm: Obj & { number: string }): Obj {
    const { number: _number, ...rest } = pm;
    return rest;
  }

  /** Pays a hosted Checkout page (its id or URL). A declined card leaves it open. */
  completeCheckout(sessionIdOrUrl: string, cardNumber: string): { completed: boolean } {
    const sessionId = sessionIdOrUrl.split("/").pop() as string;
    const session = this.checkoutSessions.get(sessionId);
    if (session?.status !== "open") throw new Error(`checkout ${sessionId} is not open`);
    const pm = this.newCard(session.customer as string, cardNumber);
    if (!pm) return { completed: false };
    const setupIntent = {
      id: id("seti"),
      object: "setup_intent",
      status: "succeeded",
      customer: session.customer,
      payment_method: pm.id,
      usage: "off_session",
    };
    this.setupIntents.set(setupIntent.id, setupIntent);
    this.emit("setup_intent.succeeded", setupIntent);
    Object.assign(session, { status: "complete", setup_intent: setupIntent.id });
    this.emit("checkout.session.completed", session);
    return { completed: true };
  }

  /** Replaces the customer's default card in the portal (its session id or URL). */
  portalChangeCard(portalIdOrUrl: string, cardNumber: string): { saved: boolean } {
    const portal = this.portalSessions.get(portalIdOrUrl.split("/").pop() as string);
    if (!portal) throw new Error("no such portal session");
    const customer = this.customers.get(portal.customer as string) as Obj;
    const pm = this.newCard(customer.id, cardNumber);
    if (!pm) return { saved: false };
    const settings = customer.invoice_settings as Record<string, unknown>;
    const previous = { invoice_settings: { ...settings } };
    settings.default_payment_method = pm.id;
    this.emit("customer.updated", customer, previous);
    return { saved: true };
  }

  /** The bank returns a refund Stripe had accepted (a closed card account, say). */
  failRefund(refundId: string) {
    const refund = this.refunds.get(refundId);
    if (!refund) throw new Error(`no refund ${refundId}`);
    Object.assign(refund, { status: "failed", failure_reason: "expired_or_canceled_card" });
    this.emit("refund.updated", refund, { status: "succeeded" });
  }

  // --- The API -------------------------------------------------------------------------------------

  private async handle(req: IncomingMessage, res: ServerResponse) {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString("utf8");
    const url = new URL(req.url ?? "/", "http://stand-in");
    const method = req.method ?? "GET";
    const key = req.headers["idempotency-key"] as string | undefined;
    this.requests.push({ method, path: url.pathname, idempotencyKey: key });
    const send = (status: number, payload: unknown, headers: Record<string, string> = {}) => {
      if (this.loseNext > 0 && method === "POST") {
        this.loseNext--;
        req.socket.destroy();
        return;
      }
      res.writeHead(status, { "content-type": "application/json", "request-id": id("req"), ...headers });
      res.end(JSON.stringify(payload));
    };
    if (req.headers.authorization !== `Bearer ${this.secretKey}`)
      return send(401, { error: { type: "invalid_request_error", message: "Invalid API Key provided" } });
    if (this.failNext > 0) {
      this.failNext--;
      return send(500, { error: { type: "api_error", message: "Something went wrong on Stripe's end." } });
    }
    const params = method === "GET" ? parseStripeForm(url.search.slice(1)) : parseStripeForm(body);
    const fingerprint = createHash("sha256").update(`${method} ${url.pathname} ${body}`).digest("hex");
    if (method === "POST" && key) {
      const seen = this.idempotency.get(key);
      if (seen) {
        if (seen.fingerprint !== fingerprint)
          return send(400, {
            error: {
              type: "idempotency_error",
              message: `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${key}' if you meant to execute a different request.`,
            },
          });
        return send(seen.status, seen.body, { "idempotent-replayed": "true" });
      }
    }
    let status = 200;
    let payload: unknown;
    try {
      payload = this.route(method, url.pathname, params);
    } catch (error) {
      if (!(error instanceof StripeError)) throw error;
      status = error.status;
      payload = { error: error.body };
    }
    if (method === "POST" && key) this.idempotency.set(key, { fingerprint, status, body: payload });
    send(status, payload);
  }

  private expand(object: Obj, expand: unknown): Obj {
    const out = clone(object);
    for (const path of (expand as string[] | undefined) ?? []) {
      if (path === "setup_intent" && typeof out.setup_intent === "string")
        out.setup_intent = clone(this.setupIntents.get(out.setup_intent));
      if (path === "invoice_settings.default_payment_method") {
        const settings = out.invoice_settings as Record<string, unknown>;
        const pm = this.paymentMethods.get(settings.default_payment_method as string);
        if (pm) settings.default_payment_method = this.publicPm(pm);
      }
    }
    return out;
  }

  private find(map: Map<string, Obj>, key: string, what: string): Obj {
    const found = map.get(key);
    if (!found)
      throw new StripeError(404, {
        type: "invalid_request_error",
        code: "resource_missing",
        message: `No such ${what}: '${key}'`,
      });
    return found;
  }

  private route(method: string, path: string, p: Record<string, unknown>): unknown {
    const parts = path.split("/").filter(Boolean);
    const [, resource, objectId] = parts;
    const nowS = Math.floor(Date.now() / 1000);
    if (resource === "customers") {
      if (method === "POST" && !objectId) {
        const customer = {
          id: id("cus"),
          object: "customer",
          name: p.name ?? null,
          email: p.email ?? null,
          metadata: p.metadata ?? {},
          invoice_settings: { default_payment_method: null },
          created: nowS,
        };
        this.customers.set(customer.id, customer);
        this.emit("customer.created", customer);
        return customer;
      }
      const customer = this.find(this.customers, objectId as string, "customer");
      if (method === "POST") {
        const settings = customer.invoice_settings as Record<string, unknown>;
        const previous = { invoice_settings: { ...settings } };
        const wanted = (p.invoice_settings as Record<string, unknown> | undefined)?.default_payment_method;
        if (wanted !== undefined) {
          this.find(this.paymentMethods, wanted as string, "payment_method");
          settings.default_payment_method = wanted;
        }
        this.emit("customer.updated", customer, previous);
      }
      return this.expand(customer, p.expand);
    }
    if (resource === "checkout" && parts[2] === "sessions") {
      const sessionId = parts[3];
      if (method === "POST" && !sessionId) {
        if (p.mode !== "setup")
          throw new StripeError(400, { type: "invalid_request_error", message: "stand-in: setup mode only" });
        this.find(this.customers, p.customer as string, "customer");
        const session = {
          id: id("cs_test"),
          object: "checkout.session",
          mode: "setup",
          status: "open",
          customer: p.customer,
          currency: p.currency ?? null,
          client_reference_id: p.client_reference_id ?? null,
          metadata: p.metadata ?? {},
          success_url: p.success_url,
          cancel_url: p.cancel_url ?? null,
          expires_at: Number(p.expires_at ?? nowS + 86_400),
          setup_intent: null,
          url: "",
        };
        session.url = `${this.url}/c/pay/${session.id}`;
        this.checkoutSessions.set(session.id, session);
        return session;
      }
      return this.expand(this.find(this.checkoutSessions, sessionId as string, "checkout.session"), p.expand);
    }
    if (resource === "setup_intents") return this.find(this.setupIntents, objectId as string, "setup_intent");
    if (resource === "payment_methods") {
      const pm = this.find(this.paymentMethods, objectId as string, "payment_method") as Obj & {
        number: string;
      };
      return this.publicPm(pm);
    }
    if (resource === "payment_intents") {
      if (method === "GET") return this.find(this.paymentIntents, objectId as string, "payment_intent");
      if (parts[3] === "cancel") {
        const intent = this.find(this.paymentIntents, objectId as string, "payment_intent");
        if (intent.status === "succeeded")
          throw new StripeError(400, {
            type: "invalid_request_error",
            code: "payment_intent_unexpected_state",
            message: "This PaymentIntent has already succeeded.",
          });
        Object.assign(intent, { status: "canceled", cancellation_reason: "requested_by_customer" });
        this.emit("payment_intent.canceled", intent);
        return intent;
      }
      return this.createPaymentIntent(p, nowS);
    }
    if (resource === "refunds" && method === "GET")
      return this.find(this.refunds, objectId as string, "refund");
    if (resource === "refunds" && method === "POST") {
      const intent = this.find(this.paymentIntents, p.payment_intent as string, "payment_intent");
      const already = [...this.refunds.values()]
        .filter((r) => r.payment_intent === intent.id)
        .reduce((sum, r) => sum + Number(r.amount), 0);
      const amount = p.amount === undefined ? Number(intent.amount) - already : Number(p.amount);
      if (intent.status !== "succeeded" || amount < 1 || already + amount > Number(intent.amount))
        throw new StripeError(400, {
          type: "invalid_request_error",
          code: "charge_already_refunded",
          message: `Refund amount (${amount}) is greater than the unrefunded amount on the charge.`,
        });
      const refund = {
        id: id("re"),
        object: "refund",
        amount,
        currency: intent.currency,
        payment_intent: intent.id,
        status: "succeeded",
        metadata: p.metadata ?? {},
        created: nowS,
      };
      this.refunds.set(refund.id, refund);
      this.emit("refund.created", refund);
      return refund;
    }
    if (resource === "billing_portal" && parts[2] === "sessions" && method === "POST") {
      this.find(this.customers, p.customer as string, "customer");
      const session = {
        id: id("bps"),
        object: "billing_portal.session",
        customer: p.customer,
        return_url: p.return_url ?? null,
        url: "",
        created: nowS,
      };
      session.url = `${this.url}/p/session/${session.id}`;
      this.portalSessions.set(session.id, session);
      return session;
    }
    throw new StripeError(404, {
      type: "invalid_request_error",
      message: `Unrecognized request URL (${method}: ${path})`,
    });
  }

  private createPaymentIntent(p: Record<string, unknown>, nowS: number): unknown {
    const amount = Number(p.amount);
    if (!Number.isInteger(amount) || amount < 1)
      throw new StripeError(400, {
        type: "invalid_request_error",
        param: "amount",
        message: "This value must be greater than or equal to 1.",
      });
    this.find(this.customers, p.customer as string, "customer");
    const pm = this.find(this.paymentMethods, p.payment_method as string, "payment_method") as Obj & {
      number: string;
    };
    const card = CARDS[pm.number];
    const intent: Obj = {
      id: id("pi"),
      object: "payment_intent",
      amount,
      currency: p.currency,
      customer: p.customer,
      payment_method: pm.id,
      description: p.description ?? null,
      metadata: p.metadata ?? {},
      created: nowS,
      status: "requires_confirmation",
      last_payment_error: null,
      cancellation_reason: null,
    };
    this.paymentIntents.set(intent.id, intent);
    this.emit("payment_intent.created", intent);
    if (p.confirm !== "true") return intent;
    if (card?.charge) {
      intent.status = "succeeded";
      this.emit("payment_intent.succeeded", intent);
      return intent;
    }
    const error = {
      type: "card_error",
      code: "card_declined",
      decline_code: "generic_decline",
      message: "Your card was declined.",
    };
    Object.assign(intent, { status: "requires_payment_method", last_payment_error: error });
    this.emit("payment_intent.payment_failed", intent);
    throw new StripeError(402, { ...error, payment_intent: clone(intent) });
  }
}
