/**
 * `stream()`: one Switchyard stream over `fetch`, NDJSON or SSE, as an async iterator of
 * neutral events. A dropped connection is resumed with `GET /api/streams/{id}?after=`
 * (each event reaches the app once, in order); aborting cancels on the server.
 */
import {
  EVENT_TYPES,
  type NeutralEvent,
  type NeutralEventInit,
} from "./events.js";
import {
  ResumeError,
  StreamRefusedError,
  SwitchyardError,
  errorFromResponse,
} from "./errors.js";
import { NdjsonParser, SseParser, type FrameParser, type RawFrame } from "./parse.js";
import {
  abortReason,
  backoff,
  defaultBaseUrl,
  headerRecord,
  newRequestId,
  sleep,
  type HeadersLike,
} from "./util.js";

export type Format = "ndjson" | "sse";

/** The HTTP paths of the routes Switchyard ships (`routes.toml`). */
export const DEFAULT_PATHS: Readonly<Record<string, string>> = {
  chat: "/api/ai/chat/unified",
  agent: "/api/ai/agent/execute",
  tools: "/api/tools/test/execute",
};

/** A frame of a `[route.http]` dialect, with its JSON already parsed. */
export interface DialectFrame {
  data: unknown;
  /** SSE `event:` name, when the framing has one. */
  event?: string;
  /** SSE `id:`, when the framing has one (the neutral `seq`). */
  id?: string;
}

/**
 * Turns one frame of a `[route.http]` dialect into neutral events (none, one or
 * several). Events without `seq` are numbered by the client; a stream whose events
 * carry no server `seq` cannot be resumed.
 */
export type DialectMapping = (
  frame: DialectFrame,
) => NeutralEventInit | NeutralEventInit[] | null | undefined;

export interface RetryOptions {
  /** Resume a dropped connection by itself (default `true`). */
  resume?: boolean;
  /** Reconnect attempts in a row that bring no event, before giving up (default 8). */
  maxAttempts?: number;
  /** First backoff delay (default 250 ms); doubles per attempt, with jitter. */
  baseDelayMs?: number;
  /** Longest backoff delay (default 10 000 ms). */
  maxDelayMs?: number;
  /**
   * How many times a 429 `over_capacity` or 503 `draining` refusal is retried before
   * it is thrown (default 0). Waits the bridge's `Retry-After` when it sends one.
   */
  overloaded?: number;
  /** Longest `Retry-After` honoured (default 60 000 ms). */
  maxRetryAfterMs?: number;
}

export interface ReconnectInfo {
  /** 1 for the first attempt after a drop. */
  attempt: number;
  delayMs: number;
  /** The last `seq` received; the resume asks for what follows. */
  after: number;
  error: unknown;
}

export interface StreamOptions {
  /** The bridge, e.g. `https://api.example.com`; in a browser, the page's origin by default. */
  baseUrl?: string;
  /** Aborting stops the stream and cancels it on the server. */
  signal?: AbortSignal;
  /** Sent with every request of the stream (the POST, resumes, the cancel). */
  headers?: HeadersLike;
  /** Called with each event, in order, before the iterator yields it. */
  onEvent?: (event: NeutralEvent) => void;
  /** `ndjson` (default) or `sse`. */
  format?: Format;
  retry?: RetryOptions;
  /** Yield `heartbeat` events too (default `false`). */
  heartbeats?: boolean;
  /** No byte for this long means a dead connection: resume (default 45 000; 0: never). */
  idleTimeoutMs?: number;
  /** Route name → HTTP path, for routes beyond {@link DEFAULT_PATHS}. */
  paths?: Record<string, string>;
  /** A `[route.http]` dialect: how to read its frames. */
  map?: DialectMapping;
  /**
   * The stream's request id. Default: the body's `request_id`, else one made here (for
   * neutral routes, so that even a connection lost before the answer can be resumed);
   * `false`: leave the body alone and learn the id from `x-request-id`.
   */
  requestId?: string | false;
  /** Called before each reconnect. */
  onReconnect?: (info: ReconnectInfo) => void;
  /** Called before a 429/503 refusal is retried. */
  onRetry?: (info: { attempt: number; delayMs: number; error: StreamRefusedError }) => void;
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
}

/** What `stream()` and `migratingClient().stream()` return. */
export interface EventStream extends AsyncIterableIterator<NeutralEvent> {
  /** The stream's request id, once known. */
  readonly requestId: string | undefined;
  /** `http` or `socketio`; for a migrating client, known once the first event was asked for. */
  readonly transport: "http" | "socketio" | undefined;
  /** Stops the stream and cancels it on the server. */
  cancel(reason?: unknown): Promise<void>;
  /** Reads the stream to its end and returns every event. */
  collect(): Promise<NeutralEvent[]>;
}

function resolveTarget(
  routeOrUrl: string,
  opts: StreamOptions,
): { url: string; base: string } {
  if (/^https?:\/\//i.test(routeOrUrl)) {
    return { url: routeOrUrl, base: (opts.baseUrl ?? new URL(routeOrUrl).origin).replace(/\/+$/, "") };
  }
  const base = (opts.baseUrl ?? defaultBaseUrl())?.replace(/\/+$/, "");
  if (!base) throw new TypeError("switchyard: `baseUrl` is required outside a browser page");
  if (routeOrUrl.startsWith("/")) return { url: base + routeOrUrl, base };
  const path = opts.paths?.[routeOrUrl] ?? DEFAULT_PATHS[routeOrUrl];
  if (!path) {
    throw new TypeError(
      `switchyard: unknown route ${JSON.stringify(routeOrUrl)} (give its path in options.paths, or a URL)`,
    );
  }
  return { url: base + path, base };
}

/**
 * Starts a stream: `POST` `body` (JSON) to the route (a name such as `"chat"`, a path,
 * or a URL) and iterate its neutral events.
 *
 * ```ts
 * for await (const ev of stream("chat", { messages: [{ role: "user", content: "hi" }] }, { baseUrl })) {
 *   if (isChunk(ev)) render(ev.data.text);
 * }
 * ```
 */
export function stream(routeOrUrl: string, body: unknown, options: StreamOptions = {}): EventStream {
  return new HttpEventStream(routeOrUrl, body, options);
}

const DEFAULT_RETRY: Required<RetryOptions> = {
  resume: true,
  maxAttempts: 8,
  baseDelayMs: 250,
  maxDelayMs: 10_000,
  overloaded: 0,
  maxRetryAfterMs: 60_000,
};

class HttpEventStream implements EventStream {
  readonly transport = "http" as const;
  private _requestId: string | undefined;
  private readonly url: string;
  private readonly base: string;
  private readonly bodyText: string;
  private readonly headers: Record<string, string>;
  private readonly retry: Required<RetryOptions>;
  private readonly format: Format;
  private readonly fetchFn: typeof fetch;
  private readonly internal = new AbortController();

  private queue: NeutralEvent[] = [];
  private lastSeq = -1;
  private seqFromServer = true;
  private ended = false;
  private finished = false;
  private failure: { error: unknown } | undefined;
  private posted = false;
  private postAttempts = 0;
  /** The request id was made here: nobody else can have started a stream with it. */
  private ownId = false;
  /** The POST's answer never arrived: the stream may or may not exist. */
  private maybeStarted = false;
  private attempt = 0;
  private reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  private conn: AbortController | undefined;
  private parser: FrameParser | undefined;
  private idleFired = false;
  private cancelling: Promise<void> | undefined;
  private chain: Promise<unknown> = Promise.resolve();

  constructor(routeOrUrl: string, body: unknown, private readonly opts: StreamOptions) {
    const t = resolveTarget(routeOrUrl, opts);
    this.url = t.url;
    this.base = t.base;
    this.retry = { ...DEFAULT_RETRY, ...(opts.retry ?? {}) };
    this.format = opts.format ?? "ndjson";
    this.headers = headerRecord(opts.headers);
    const f = opts.fetch ?? globalThis.fetch;
    if (typeof f !== "function") throw new TypeError("switchyard: no fetch available");
    this.fetchFn = f.bind(globalThis);

    let payload = body;
    if (typeof body === "object" && body !== null && !Array.isArray(body)) {
      const given = (body as { request_id?: unknown }).request_id;
      if (typeof given === "string") {
        this._requestId = given;
      } else if (opts.requestId !== false && given === undefined && (opts.requestId || !opts.map)) {
        this.ownId = !opts.requestId;
        this._requestId = opts.requestId || newRequestId();
        payload = { ...(body as object), request_id: this._requestId };
      }
    }
    this.bodyText = JSON.stringify(payload);

    const signal = opts.signal;
    if (signal) {
      if (signal.aborted) void this.cancel(signal.reason);
      else signal.addEventListener("abort", () => void this.cancel(signal.reason), { once: true });
    }
  }

  get requestId(): string | undefined {
    return this._requestId;
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<NeutralEvent> {
    return this;
  }

  next(): Promise<IteratorResult<NeutralEvent>> {
    const p = this.chain.then(() => this.pull());
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** Leaving a `for await` early closes the connection; the server stream is not cancelled. */
  async return(): Promise<IteratorResult<NeutralEvent>> {
    this.finished = true;
    this.queue = [];
    this.closeConnection();
    return { value: undefined, done: true };
  }

  async collect(): Promise<NeutralEvent[]> {
    const all: NeutralEvent[] = [];
    for await (const e of this) all.push(e);
    return all;
  }

  cancel(reason?: unknown): Promise<void> {
    if (!this.cancelling) {
      this.internal.abort(reason ?? abortReason(undefined));
      this.closeConnection();
      const id = this._requestId;
      this.cancelling =
        id && this.postAttempts > 0 && !this.ended
          ? this.fetchFn(`${this.base}/api/ai/cancel/${encodeURIComponent(id)}`, {
              method: "POST",
              headers: this.headers,
            }).then(
              (r) => void r.body?.cancel().catch(() => undefined),
              () => undefined,
            )
          : Promise.resolve();
    }
    return this.cancelling;
  }

  private get signal(): AbortSignal {
    return this.internal.signal;
  }

  private async pull(): Promise<IteratorResult<NeutralEvent>> {
    for (;;) {
      if (this.signal.aborted && !this.finished) {
        await this.cancelling;
        this.finished = true;
        this.queue = [];
        throw abortReason(this.signal);
      }
      if (this.queue.length > 0) return { value: this.queue.shift() as NeutralEvent, done: false };
      if (this.failure) {
        const e = this.failure.error;
        this.failure = undefined;
        this.finished = true;
        throw e;
      }
      if (this.finished) return { value: undefined, done: true };
      if (!this.reader) {
        try {
          await this.connect();
        } catch (e) {
          this.fail(e);
        }
        continue;
      }
      let r: ReadableStreamReadResult<Uint8Array>;
      const idle = this.opts.idleTimeoutMs ?? 45_000;
      const timer =
        idle > 0
          ? setTimeout(() => {
              this.idleFired = true;
              this.conn?.abort();
            }, idle)
          : undefined;
      try {
        r = await this.reader.read();
      } catch (err) {
        if (this.signal.aborted) continue;
        const cause = this.idleFired ? new Error(`no data for ${idle} ms`) : err;
        this.closeConnection();
        await this.reconnectAfter(cause).catch((e) => this.fail(e));
        continue;
      } finally {
        if (timer !== undefined) clearTimeout(timer);
      }
      if (r.done) {
        const partial = this.parser?.pending;
        this.closeConnection();
        if (!this.ended) {
          await this.reconnectAfter(
            new Error(partial ? "connection closed mid-event" : "connection closed before `end`"),
          ).catch((e) => this.fail(e));
        }
        continue;
      }
      try {
        for (const frame of (this.parser as FrameParser).push(r.value)) this.accept(frame);
      } catch (e) {
        this.closeConnection();
        this.fail(e);
      }
      if (this.ended) {
        this.finished = true;
        this.closeConnection();
      }
    }
  }

  private fail(e: unknown): void {
    if (!this.failure && !this.finished) this.failure = { error: e };
  }

  private closeConnection(): void {
    const reader = this.reader;
    this.reader = undefined;
    this.parser = undefined;
    reader?.cancel().catch(() => undefined);
    this.conn?.abort();
    this.conn = undefined;
  }

  private newConnection(): AbortController {
    const c = new AbortController();
    this.conn = c;
    this.idleFired = false;
    return c;
  }

  private accept(frame: RawFrame): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(frame.text);
    } catch {
      throw new SwitchyardError("protocol_error", `not JSON: ${frame.text.slice(0, 120)}`, {
        requestId: this._requestId,
      });
    }
    let events: NeutralEventInit[];
    if (this.opts.map) {
      const m = this.opts.map({ data: parsed, ...(frame.event !== undefined ? { event: frame.event } : {}), ...(frame.id !== undefined ? { id: frame.id } : {}) });
      events = m == null ? [] : Array.isArray(m) ? m : [m];
      const idSeq = frame.id !== undefined && /^\d+$/.test(frame.id) ? Number(frame.id) : undefined;
      if (idSeq !== undefined && events.length === 1 && events[0]!.seq === undefined) {
        events = [{ ...events[0]!, seq: idSeq } as NeutralEventInit];
      }
    } else if (this.format === "sse" && frame.event !== undefined) {
      const ev = { event: frame.event, data: parsed } as NeutralEventInit;
      if (frame.id !== undefined && /^\d+$/.test(frame.id)) ev.seq = Number(frame.id);
      events = [ev];
    } else {
      events = [parsed as NeutralEventInit];
    }
    for (const ev of events) this.deliver(ev);
  }

  private deliver(init: NeutralEventInit): void {
    const o = init as { event?: unknown; data?: unknown; seq?: unknown };
    if (typeof o.event !== "string" || !(EVENT_TYPES as readonly string[]).includes(o.event)) {
      throw new SwitchyardError("protocol_error", `not a neutral event: ${JSON.stringify(init).slice(0, 120)}`, {
        requestId: this._requestId,
      });
    }
    if (o.event === "heartbeat") {
      if (this.opts.heartbeats) this.emit({ event: "heartbeat", data: o.data } as NeutralEvent);
      return;
    }
    let seq: number;
    if (typeof o.seq === "number") {
      seq = o.seq;
      if (seq <= this.lastSeq) return; // already delivered before a reconnect
      if (seq !== this.lastSeq + 1) {
        throw new SwitchyardError("protocol_error", `expected seq ${this.lastSeq + 1}, got ${seq}`, {
          requestId: this._requestId,
        });
      }
    } else {
      this.seqFromServer = false;
      seq = this.lastSeq + 1;
    }
    this.lastSeq = seq;
    this.attempt = 0;
    const ev = { event: o.event, seq, data: o.data } as NeutralEvent;
    if (ev.event === "status_update" && this._requestId === undefined) {
      const id = ev.data?.metadata?.request_id;
      if (typeof id === "string") this._requestId = id;
    }
    if (ev.event === "end") this.ended = true;
    this.emit(ev);
  }

  private emit(ev: NeutralEvent): void {
    this.opts.onEvent?.(ev);
    this.queue.push(ev);
  }

  private get accept_(): string {
    return this.format === "sse" ? "text/event-stream" : "application/x-ndjson";
  }

  private attach(res: Response, conn: AbortController): void {
    if (!res.body) throw new SwitchyardError("protocol_error", "the answer has no body");
    this.reader = res.body.getReader();
    this.parser = this.format === "sse" ? new SseParser() : new NdjsonParser();
    if (this.conn !== conn) this.conn = conn;
  }

  private async connect(): Promise<void> {
    if (!this.posted) await this.post();
    else await this.resume();
  }

  private async post(): Promise<void> {
    for (let overloaded = 0; ; ) {
      const conn = this.newConnection();
      const onAbort = () => conn.abort();
      this.signal.addEventListener("abort", onAbort, { once: true });
      let res: Response;
      this.postAttempts++;
      try {
        res = await this.fetchFn(this.url, {
          method: "POST",
          headers: { ...this.headers, "content-type": "application/json", accept: this.accept_ },
          body: this.bodyText,
          signal: conn.signal,
        });
      } catch (err) {
        if (this.signal.aborted) return;
        if (this._requestId && this.retry.resume && this.seqFromServer) {
          // The answer was lost, not necessarily the request: find out by resuming.
          this.posted = true;
          this.maybeStarted = true;
          await this.reconnectAfter(err);
          return;
        }
        throw new SwitchyardError("connection_lost", `request failed: ${String(err)}`, { cause: err });
      } finally {
        this.signal.removeEventListener("abort", onAbort);
      }
      if (res.ok) {
        this.posted = true;
        this.maybeStarted = false;
        this._requestId = res.headers.get("x-request-id") ?? this._requestId;
        this.attach(res, conn);
        return;
      }
      const err = (await errorFromResponse(res, StreamRefusedError, this._requestId)) as StreamRefusedError;
      if (err.error_type === "duplicate_request" && this._requestId && (this.postAttempts > 1 || this.ownId)) {
        // An earlier attempt of ours did start it (ours, or one the browser or a proxy
        // sent again by itself after a connection closed before any answer).
        this.posted = true;
        this.maybeStarted = false;
        return;
      }
      if (err.retryable && overloaded < this.retry.overloaded) {
        const delayMs =
          err.retryAfterMs !== undefined
            ? Math.min(err.retryAfterMs, this.retry.maxRetryAfterMs)
            : backoff(overloaded, this.retry.baseDelayMs, this.retry.maxDelayMs);
        overloaded++;
        this.opts.onRetry?.({ attempt: overloaded, delayMs, error: err });
        await sleep(delayMs, this.signal);
        continue;
      }
      throw err;
    }
  }

  private async resume(): Promise<void> {
    const id = this._requestId as string;
    const conn = this.newConnection();
    const onAbort = () => conn.abort();
    this.signal.addEventListener("abort", onAbort, { once: true });
    let res: Response;
    try {
      res = await this.fetchFn(
        `${this.base}/api/streams/${encodeURIComponent(id)}?after=${this.lastSeq}`,
        { headers: { ...this.headers, accept: this.accept_ }, signal: conn.signal },
      );
    } catch (err) {
      if (this.signal.aborted) return;
      await this.reconnectAfter(err);
      return;
    } finally {
      this.signal.removeEventListener("abort", onAbort);
    }
    if (res.ok && res.status !== 204) {
      this.maybeStarted = false;
      this.attach(res, conn);
      return;
    }
    if (res.status === 204) {
      res.body?.cancel().catch(() => undefined);
      throw new ResumeError("connection_lost", "the stream ended, but its `end` was not received", {
        status: 204,
        requestId: id,
      });
    }
    const err = await errorFromResponse(res, ResumeError, id);
    if (res.status === 404 && this.maybeStarted && this.lastSeq < 0) {
      // Our POST never reached the bridge: send it again.
      this.posted = false;
      return;
    }
    if (res.status === 429 || res.status === 503 || res.status >= 500) {
      await this.reconnectAfter(err);
      return;
    }
    throw err;
  }

  /** Waits before the next reconnect, or fails the stream when it cannot be resumed. */
  private async reconnectAfter(error: unknown): Promise<void> {
    if (!this.retry.resume || !this._requestId || !this.seqFromServer) {
      throw new ResumeError("connection_lost", `connection lost: ${String(error)}`, {
        requestId: this._requestId,
        cause: error,
      });
    }
    this.attempt++;
    if (this.attempt > this.retry.maxAttempts) {
      throw new ResumeError(
        "connection_lost",
        `connection lost; ${this.retry.maxAttempts} reconnect attempts brought nothing: ${String(error)}`,
        { requestId: this._requestId, cause: error },
      );
    }
    const delayMs = backoff(this.attempt - 1, this.retry.baseDelayMs, this.retry.maxDelayMs);
    this.opts.onReconnect?.({ attempt: this.attempt, delayMs, after: this.lastSeq, error });
    try {
      await sleep(delayMs, this.signal);
    } catch {
      /* aborted: pull() reports it */
    }
  }
}
