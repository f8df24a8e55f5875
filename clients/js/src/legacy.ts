/**
 * The legacy path: a route's Socket.IO vocabulary, spoken through the app's own
 * socket.io-client instance, read back as the same neutral events the HTTP path gives.
 */
import type { NeutralEvent, NeutralEventInit } from "./events.js";
import { EVENT_TYPES } from "./events.js";
import { StreamRefusedError, SwitchyardError } from "./errors.js";
import type { EventStream } from "./stream.js";
import { PushQueue, abortReason, newRequestId } from "./util.js";

/** The part of a socket.io-client `Socket` this library uses (3.x and 4.x). */
export interface LegacySocket {
  emit(event: string, ...args: any[]): unknown;
  on(event: string, listener: (...args: any[]) => void): unknown;
  off(event: string, listener?: (...args: any[]) => void): unknown;
}

export interface LegacyContext {
  requestId: string;
  sessionId: string | undefined;
  route: string;
}

/** How one route speaks Socket.IO: its request event and its legacy events. */
export interface LegacyRoute {
  /** The event the route listens to, e.g. `chat_message`. */
  requestEvent: string;
  /** The neutral request body (with its `request_id`) → the legacy request payload. */
  request(body: Record<string, unknown>): unknown;
  /** Legacy event name → the neutral events it stands for (none, one or several). */
  events: Record<
    string,
    (payload: any, ctx: LegacyContext) => NeutralEventInit | NeutralEventInit[] | null | undefined
  >;
  /**
   * Whether the vocabulary carries the `status_update` "started" itself (the neutral
   * vocabulary does); otherwise the client makes it from the request's ack.
   */
  emitsStarted?: boolean;
  /**
   * Whether a legacy event belongs to this stream. Default: by `request_id` when the
   * payload has one, else by `session_id`.
   */
  matches?(payload: any, ctx: LegacyContext): boolean;
}

function lastUserMessage(body: Record<string, unknown>): unknown {
  if (typeof body.message === "string") return body.message;
  const msgs = body.messages;
  if (!Array.isArray(msgs)) return undefined;
  for (let i = msgs.length - 1; i >= 0; i--) {
    const m = msgs[i] as { role?: unknown; content?: unknown } | null;
    if (m && m.role === "user") return m.content;
  }
  return undefined;
}

function defined(o: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(o)) if (o[k] !== undefined) out[k] = o[k];
  return out;
}

/**
 * The shipped `chat` route's vocabulary (`routes.toml`): request `chat_message
 * {message, session_id}`, events `chat_chunk {chunk}`, `chat_complete
 * {full_response}`, `error {error_type, message}`. An example to copy for your own routes.
 */
export const chatLegacyRoute: LegacyRoute = {
  requestEvent: "chat_message",
  request: (body) =>
    defined({
      message: lastUserMessage(body),
      session_id: body.session_id,
      workspace_id: body.workspace_id,
      options: body.options,
      request_id: body.request_id,
    }),
  events: {
    chat_chunk: (p: { chunk: string }) => ({ event: "chunk", data: { text: p.chunk } }),
    chat_complete: (p: { full_response?: string }) => [
      { event: "completion", data: { status: "complete", output: p.full_response ?? "" } },
      { event: "end", data: { reason: "completed" } },
    ],
    error: (p: { error_type?: string; message?: string }) => [
      { event: "error", data: { error_type: p.error_type ?? "error", message: p.message ?? "" } },
      { event: "end", data: { reason: "error" } },
    ],
  },
};

/**
 * A route on the neutral Socket.IO vocabulary (no `emit` table in `routes.toml`):
 * event name = neutral type, payload `{request_id, seq, data}`.
 */
export function neutralLegacyRoute(
  requestEvent: string,
  request: (body: Record<string, unknown>) => unknown = (b) => b,
): LegacyRoute {
  const events: LegacyRoute["events"] = {};
  for (const t of EVENT_TYPES) {
    if (t === "heartbeat") continue;
    events[t] = (p: { seq?: number; data?: unknown }) =>
      ({ event: t, data: p.data ?? {}, ...(typeof p.seq === "number" ? { seq: p.seq } : {}) }) as NeutralEventInit;
  }
  return { requestEvent, request, events, emitsStarted: true };
}

function defaultMatches(p: any, ctx: LegacyContext): boolean {
  if (p && typeof p === "object") {
    if (typeof p.request_id === "string") return p.request_id === ctx.requestId;
    if ("session_id" in p) return (p.session_id ?? undefined) === ctx.sessionId;
  }
  return true;
}

export interface LegacyStreamOptions {
  signal?: AbortSignal;
  onEvent?: (event: NeutralEvent) => void;
  /** How long to wait for the request's ack (default 10 000 ms). */
  ackTimeoutMs?: number;
}

/**
 * Starts a stream over Socket.IO with `route`'s vocabulary. Each stream on one socket
 * needs its own `session_id` when the vocabulary's events carry no `request_id` (as
 * `chat`'s do not).
 */
export function legacyStream(
  socket: LegacySocket,
  routeName: string,
  route: LegacyRoute,
  body: Record<string, unknown>,
  options: LegacyStreamOptions = {},
): EventStream {
  return new SocketEventStream(socket, routeName, route, body, options);
}

class SocketEventStream implements EventStream {
  readonly transport = "socketio" as const;
  private readonly queue = new PushQueue<NeutralEvent>();
  private readonly ctx: LegacyContext;
  private readonly handlers: [string, (p: unknown) => void][] = [];
  private started = false;
  private acked = false;
  private buffered: unknown[][] = [];
  private lastSeq = -1;
  private done = false;
  private cancelled: Promise<void> | undefined;

  constructor(
    private readonly socket: LegacySocket,
    routeName: string,
    private readonly route: LegacyRoute,
    private readonly body: Record<string, unknown>,
    private readonly opts: LegacyStreamOptions,
  ) {
    const id = typeof body.request_id === "string" ? body.request_id : newRequestId();
    this.ctx = {
      requestId: id,
      sessionId: typeof body.session_id === "string" ? body.session_id : undefined,
      route: routeName,
    };
    const signal = opts.signal;
    if (signal) {
      if (signal.aborted) void this.cancel(signal.reason);
      else signal.addEventListener("abort", () => void this.cancel(signal.reason), { once: true });
    }
  }

  get requestId(): string | undefined {
    return this.ctx.requestId;
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<NeutralEvent> {
    return this;
  }

  next(): Promise<IteratorResult<NeutralEvent>> {
    if (!this.started) this.start();
    return this.queue.next();
  }

  async return(): Promise<IteratorResult<NeutralEvent>> {
    this.finish();
    return { value: undefined, done: true };
  }

  async collect(): Promise<NeutralEvent[]> {
    const all: NeutralEvent[] = [];
    for await (const e of this) all.push(e);
    return all;
  }

  cancel(reason?: unknown): Promise<void> {
    if (!this.cancelled) {
      if (this.started && !this.done) this.socket.emit("cancel", { request_id: this.ctx.requestId });
      this.finish(reason ?? abortReason(undefined), true);
      this.cancelled = Promise.resolve();
    }
    return this.cancelled;
  }

  private start(): void {
    this.started = true;
    for (const name of Object.keys(this.route.events)) {
      const h = (p: unknown) => this.onLegacy(name, p);
      this.handlers.push([name, h]);
      this.socket.on(name, h);
    }
    const onDisconnect = (reason: unknown) =>
      this.finish(
        new SwitchyardError("connection_lost", `socket disconnected: ${String(reason)}`, {
          requestId: this.ctx.requestId,
        }),
      );
    this.handlers.push(["disconnect", onDisconnect]);
    this.socket.on("disconnect", onDisconnect);
    const timer = setTimeout(
      () =>
        this.finish(
          new SwitchyardError("connection_lost", "no answer to the request over Socket.IO", {
            requestId: this.ctx.requestId,
          }),
        ),
      this.opts.ackTimeoutMs ?? 10_000,
    );
    const payload = this.route.request({ ...this.body, request_id: this.ctx.requestId });
    this.socket.emit(this.route.requestEvent, payload, (ack: any) => {
      clearTimeout(timer);
      if (this.done) return;
      if (ack && typeof ack === "object" && ack.error) {
        const e = ack.error as { error_type?: string; message?: string };
        this.finish(
          new StreamRefusedError(e.error_type ?? "refused", e.message ?? "refused", {
            requestId: this.ctx.requestId,
          }),
        );
        return;
      }
      if (ack && typeof ack.request_id === "string") this.ctx.requestId = ack.request_id;
      this.acked = true;
      if (!this.route.emitsStarted) {
        this.push({
          event: "status_update",
          data: { status: "started", metadata: { request_id: this.ctx.requestId, route: this.ctx.route } },
        });
      }
      const early = this.buffered;
      this.buffered = [];
      for (const [name, p] of early) this.onLegacy(name as string, p);
    });
  }

  private onLegacy(name: string, payload: unknown): void {
    if (this.done) return;
    if (!this.acked) {
      this.buffered.push([name, payload]);
      return;
    }
    const matches = this.route.matches ?? defaultMatches;
    if (!matches(payload, this.ctx)) return;
    const mapped = this.route.events[name]!(payload, this.ctx);
    const list = mapped == null ? [] : Array.isArray(mapped) ? mapped : [mapped];
    for (const ev of list) {
      this.push(ev);
      if (this.done) return;
    }
  }

  private push(init: NeutralEventInit): void {
    const seq = typeof init.seq === "number" ? init.seq : this.lastSeq + 1;
    if (seq <= this.lastSeq) return;
    this.lastSeq = seq;
    const ev = { event: init.event, seq, data: init.data } as NeutralEvent;
    this.opts.onEvent?.(ev);
    this.queue.push(ev);
    if (ev.event === "end") this.finish();
  }

  private finish(error?: unknown, drop = false): void {
    if (this.done) return;
    this.done = true;
    for (const [name, h] of this.handlers) this.socket.off(name, h);
    this.handlers.length = 0;
    if (error !== undefined) this.queue.fail(error, drop);
    else this.queue.close();
  }
}
