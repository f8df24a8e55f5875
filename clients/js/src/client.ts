/**
 * `migratingClient()`: the flag-gated parallel path in one place. Each `stream()` asks
 * the route's flag which transport this subject gets, and streams over HTTP or over the
 * app's own Socket.IO connection; the app sees the same neutral events either way.
 */
import type { NeutralEvent } from "./events.js";
import { chatLegacyRoute, legacyStream, type LegacyRoute, type LegacySocket } from "./legacy.js";
import { evaluateFlag, type FlagEvaluation, type Subject, type Transport } from "./flags.js";
import { stream, type EventStream, type StreamOptions } from "./stream.js";
import { headerRecord, type HeadersLike } from "./util.js";

export interface MigratingRoute {
  /** HTTP path, when the route is not one of the shipped ones. */
  path?: string;
  /** The route's Socket.IO vocabulary; without it the route is HTTP only. */
  legacy?: LegacyRoute;
}

export interface MigratingClientOptions {
  baseUrl?: string;
  /** The app's socket.io-client `Socket` (its legacy connection), if it still has one. */
  socket?: LegacySocket;
  /** Who the flags are evaluated for. */
  subject: Subject;
  /** Per route; default `{ chat: { legacy: chatLegacyRoute } }`. */
  routes?: Record<string, MigratingRoute>;
  /** How long a flag answer is reused (default 30 000 ms). */
  flagsCacheMs?: number;
  /** Sent with every HTTP request (e.g. `Authorization`). */
  headers?: HeadersLike;
  /** Options for the HTTP path (format, retry, ...). */
  http?: Omit<StreamOptions, "baseUrl" | "signal" | "onEvent" | "headers">;
  /**
   * Development only (a bridge without `auth.jwt_secret`): send `subject` as the
   * `x-user-id` / `x-tenant-id` headers, so the bridge evaluates HTTP requests for the
   * same subject (a `strict` rollout refuses requests on the other transport). With auth
   * on, the bearer token in `headers` names the subject instead.
   */
  subjectHeaders?: boolean;
  /** Transport when the flags cannot be read (default: `socketio` when there is a socket). */
  fallback?: Transport;
  fetch?: typeof fetch;
}

export interface MigratingStreamOptions {
  signal?: AbortSignal;
  onEvent?: (event: NeutralEvent) => void;
}

export interface MigratingClient {
  /** Streams `body` on `route` over the transport its flag gives the subject. */
  stream(route: string, body: Record<string, unknown>, options?: MigratingStreamOptions): EventStream;
  /** The transport `route`'s flag gives the subject (cached). */
  transportFor(route: string): Promise<Transport>;
  /** The whole evaluation (`{transport, mode, reason, bucket}`). */
  evaluate(route: string): Promise<FlagEvaluation>;
}

export function migratingClient(options: MigratingClientOptions): MigratingClient {
  const routes: Record<string, MigratingRoute> = options.routes ?? { chat: { legacy: chatLegacyRoute } };
  const flagOpts = {
    ...(options.baseUrl !== undefined ? { baseUrl: options.baseUrl } : {}),
    ...(options.flagsCacheMs !== undefined ? { cacheMs: options.flagsCacheMs } : {}),
    ...(options.fetch !== undefined ? { fetch: options.fetch } : {}),
  };
  const evaluate = (route: string) => evaluateFlag(route, options.subject, flagOpts);
  const transportFor = async (route: string): Promise<Transport> => {
    try {
      return (await evaluate(route)).transport;
    } catch (err) {
      if (options.fallback) return options.fallback;
      if (options.socket && routes[route]?.legacy) return "socketio";
      throw err;
    }
  };

  const open = async (
    route: string,
    body: Record<string, unknown>,
    opts: MigratingStreamOptions,
  ): Promise<EventStream> => {
    const r = routes[route] ?? {};
    const transport = await transportFor(route);
    if (transport === "socketio" && options.socket && r.legacy) {
      return legacyStream(options.socket, route, r.legacy, body, opts);
    }
    const headers = headerRecord(options.headers);
    if (options.subjectHeaders) {
      if (options.subject.user !== undefined) headers["x-user-id"] = options.subject.user;
      if (options.subject.tenant !== undefined) headers["x-tenant-id"] = options.subject.tenant;
    }
    return stream(r.path ?? route, body, {
      ...(options.http ?? {}),
      ...(options.baseUrl !== undefined ? { baseUrl: options.baseUrl } : {}),
      headers,
      ...(options.fetch !== undefined ? { fetch: options.fetch } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(opts.onEvent ? { onEvent: opts.onEvent } : {}),
    });
  };

  return {
    stream: (route, body, opts = {}) => new DeferredStream(() => open(route, body, opts)),
    transportFor,
    evaluate,
  };
}

/** An `EventStream` whose transport is chosen (asynchronously) when it is first read. */
class DeferredStream implements EventStream {
  private inner: EventStream | undefined;
  private opening: Promise<EventStream> | undefined;
  private cancelled: { reason: unknown } | undefined;
  private returned = false;

  constructor(private readonly openFn: () => Promise<EventStream>) {}

  get requestId(): string | undefined {
    return this.inner?.requestId;
  }
  get transport(): "http" | "socketio" | undefined {
    return this.inner?.transport;
  }
  [Symbol.asyncIterator](): AsyncIterableIterator<NeutralEvent> {
    return this;
  }
  private async get(): Promise<EventStream> {
    if (!this.opening) {
      this.opening = this.openFn().then((s) => {
        this.inner = s;
        if (this.cancelled) void s.cancel(this.cancelled.reason);
        else if (this.returned) void s.return?.();
        return s;
      });
    }
    return this.opening;
  }
  async next(): Promise<IteratorResult<NeutralEvent>> {
    return (await this.get()).next();
  }
  async return(): Promise<IteratorResult<NeutralEvent>> {
    this.returned = true;
    if (this.inner?.return) return this.inner.return();
    return { value: undefined, done: true };
  }
  async cancel(reason?: unknown): Promise<void> {
    this.cancelled = { reason };
    if (this.inner) await this.inner.cancel(reason);
  }
  async collect(): Promise<NeutralEvent[]> {
    const all: NeutralEvent[] = [];
    for await (const e of this) all.push(e);
    return all;
  }
}
