import type { AddressInfo } from "node:net";
import { SMTPServer, type SMTPServerError } from "smtp-server";

/**
 * A real SMTP server on an ephemeral loopback port, for tests of outgoing mail: it keeps every
 * message it accepts, decoded enough to assert on (subject, text and HTML bodies), and can be told to
 * refuse mail or to require a login.
 */

export interface ReceivedMail {
  /** Envelope addresses, as the server saw them. */
  mailFrom: string;
  rcptTo: string[];
  /** Header values by lower-cased name (the last one wins). */
  headers: Record<string, string>;
  subject: string;
  text: string;
  html: string;
  raw: string;
  /** The user that logged in, when the server asked for a login. */
  user: string | undefined;
}

export interface TestSmtpServer {
  /** `smtp://127.0.0.1:<port>`, for SMTP_URL. */
  url: string;
  port: number;
  messages: ReceivedMail[];
  /** Resolves once `count` messages have arrived (default 1). */
  waitForMessages(count?: number, timeoutMs?: number): Promise<ReceivedMail[]>;
  close(): Promise<void>;
}

export interface TestSmtpServerOptions {
  /** Refuse every recipient with this 5xx reply. */
  rejectRecipients?: string;
  /** Listen on this port (default: any free one). */
  port?: number;
  /** Require AUTH with exactly these credentials. */
  auth?: { user: string; pass: string };
}

export async function startSmtpServer(options: TestSmtpServerOptions = {}): Promise<TestSmtpServer> {
  const messages: ReceivedMail[] = [];
  const server = new SMTPServer({
    logger: false,
    // Plain text on loopback: the built-in certificate would only add warnings.
    disabledCommands: options.auth ? ["STARTTLS"] : ["STARTTLS", "AUTH"],
    authOptional: !options.auth,
    allowInsecureAuth: true,
    closeTimeout: 500,
    onAuth(auth, _session, callback) {
      if (options.auth && auth.username === options.auth.user && auth.password === options.auth.pass) {
        return callback(null, { user: auth.username });
      }
      return callback(new Error("Invalid username or password"));
    },
    onRcptTo(_address, _session, callback) {
      if (!options.rejectRecipients) return callback();
      const error: SMTPServerError = new Error(options.rejectRecipients);
      error.responseCode = 550;
      return callback(error);
    },
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("end", () => {
        const raw = Buffer.concat(chunks).toString("utf8");
        messages.push({
          mailFrom: session.envelope.mailFrom ? session.envelope.mailFrom.address : "",
          rcptTo: session.envelope.rcptTo.map((r) => r.address),
          user: typeof session.user === "string" ? session.user : undefined,
          raw,
          ...parseMessage(raw),
        });
        callback();
      });
    },
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, "127.0.0.1", () => resolve());
  });
  const port = (server.server.address() as AddressInfo).port;
  return {
    url: `smtp://127.0.0.1:${port}`,
    port,
    messages,
    waitForMessages: async (count = 1, timeoutMs = 5000) => {
      const deadline = Date.now() + timeoutMs;
      while (messages.length < count) {
        if (Date.now() > deadline) throw new Error(`expected ${count} message(s), got ${messages.length}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      return messages;
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

type Parsed = Pick<ReceivedMail, "headers" | "subject" | "text" | "html">;

/** Just enough MIME for nodemailer's output: one level of multipart, quoted-printable or base64 parts. */
function parseMessage(raw: string): Parsed {
  const { headers, body } = splitEntity(raw);
  const result: Parsed = { headers, subject: headers.subject ?? "", text: "", html: "" };
  const collect = (entityHeaders: Record<string, string>, entityBody: string) => {
    const type = entityHeaders["content-type"] ?? "text/plain";
    const boundary = /boundary="?([^";]+)"?/i.exec(type)?.[1];
    if (type.startsWith("multipart/") && boundary) {
      for (const part of entityBody.split(`--${boundary}`).slice(1)) {
        if (part.startsWith("--")) break;
        const inner = splitEntity(part.replace(/^\r?\n/, ""));
        collect(inner.headers, inner.body);
      }
      return;
    }
    const decoded = decodeBody(entityBody, entityHeaders["content-transfer-encoding"] ?? "7bit");
    if (type.startsWith("text/html")) result.html = decoded;
    else if (type.startsWith("text/plain")) result.text = decoded;
  };
  collect(headers, body);
  return result;
}

function splitEntity(entity: string): { headers: Record<string, string>; body: string } {
  const end = entity.indexOf("\r\n\r\n");
  const head = end === -1 ? entity : entity.slice(0, end);
  const body = end === -1 ? "" : entity.slice(end + 4);
  const headers: Record<string, string> = {};
  for (const line of head.replace(/\r\n[ \t]+/g, " ").split("\r\n")) {
    const colon = line.indexOf(":");
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return { headers, body };
}

function decodeBody(body: string, encoding: string): string {
  switch (encoding.toLowerCase()) {
    case "base64":
      return Buffer.from(body.replace(/\s+/g, ""), "base64").toString("utf8");
    case "quoted-printable": {
      const bytes = body
        .replace(/=\r?\n/g, "")
        .replace(/=([0-9A-F]{2})/gi, (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)));
      return Buffer.from(bytes, "latin1").toString("utf8").replace(/\r\n/g, "\n");
    }
    default:
      return body.replace(/\r\n/g, "\n");
  }
}
