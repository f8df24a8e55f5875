/** Which transport a subject should use for a route: the bridge's flag evaluation API. */
import { SwitchyardError, errorFromResponse, StreamRefusedError } from "./errors.js";
import { defaultBaseUrl, headerRecord, type HeadersLike } from "./util.js";

export type Transport = "http" | "socketio";

/** Who is asking: the keys a route's `sticky` setting and its allow/deny lists use. */
export interface Subject {
  user?: string;
  session?: string;
  tenant?: string;
}

/** `GET /api/flags/{route}`: `{transport, mode, reason, bucket}`. */
export interface FlagEvaluation {
  transport: Transport;
  mode: "legacy" | "dual" | "rollout" | "new" | string;
  reason: "deny" | "allow" | "mode" | "percent" | "no_sticky_key" | string;
  bucket: number | null;
}

export interface FlagOptions {
  baseUrl?: string;
  /** How long an answer is reused (default 30 000 ms; 0: ask every time). */
  cacheMs?: number;
  headers?: HeadersLike;
  fetch?: typeof fetch;
  signal?: AbortSignal;
}

const cache = new Map<string, { at: number; value: Promise<FlagEvaluation> }>();

/** Forgets every cached evaluation (e.g. after the user signs in as someone else). */
export function clearFlagCache(): void {
  cache.clear();
}

/** The bridge's evaluation of `route`'s flag for `subject`, cached for `cacheMs`. */
export function evaluateFlag(
  route: string,
  subject: Subject,
  options: FlagOptions = {},
): Promise<FlagEvaluation> {
  const base = (options.baseUrl ?? defaultBaseUrl())?.replace(/\/+$/, "");
  if (!base) return Promise.reject(new TypeError("switchyard: `baseUrl` is required outside a browser page"));
  const q = new URLSearchParams();
  if (subject.user !== undefined) q.set("user", subject.user);
  if (subject.session !== undefined) q.set("session", subject.session);
  if (subject.tenant !== undefined) q.set("tenant", subject.tenant);
  const url = `${base}/api/flags/${encodeURIComponent(route)}?${q.toString()}`;
  const ttl = options.cacheMs ?? 30_000;
  const hit = cache.get(url);
  const now = Date.now();
  if (hit && ttl > 0 && now - hit.at < ttl) return hit.value;

  const f = options.fetch ?? globalThis.fetch;
  const value = (async () => {
    let res: Response;
    try {
      res = await f.call(globalThis, url, {
        headers: { ...headerRecord(options.headers), accept: "application/json" },
        ...(options.signal ? { signal: options.signal } : {}),
      });
    } catch (err) {
      throw new SwitchyardError("flags_unavailable", `cannot read the flags: ${String(err)}`, { cause: err });
    }
    if (!res.ok) throw await errorFromResponse(res, StreamRefusedError);
    const body = (await res.json()) as FlagEvaluation;
    if (body.transport !== "http" && body.transport !== "socketio") {
      throw new SwitchyardError("flags_unavailable", `unexpected flag answer: ${JSON.stringify(body)}`);
    }
    return body;
  })();
  if (ttl > 0) {
    cache.set(url, { at: now, value });
    value.catch(() => {
      if (cache.get(url)?.value === value) cache.delete(url);
    });
  }
  return value;
}

/** `http` or `socketio`: the transport the route's flag gives `subject`. */
export async function transportFor(
  route: string,
  subject: Subject,
  options: FlagOptions = {},
): Promise<Transport> {
  return (await evaluateFlag(route, subject, options)).transport;
}
