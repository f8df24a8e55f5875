/** Small helpers shared by the HTTP and Socket.IO paths. */

export type HeadersLike = Record<string, string> | [string, string][] | Headers;

export function headerRecord(h: HeadersLike | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!h) return out;
  if (typeof Headers !== "undefined" && h instanceof Headers) {
    h.forEach((v, k) => {
      out[k] = v;
    });
  } else if (Array.isArray(h)) {
    for (const [k, v] of h) out[k.toLowerCase()] = v;
  } else {
    for (const k of Object.keys(h)) out[k.toLowerCase()] = (h as Record<string, string>)[k]!;
  }
  return out;
}

export function abortReason(signal: AbortSignal | undefined): unknown {
  const r = signal?.reason;
  if (r !== undefined) return r;
  return new DOMException("The operation was aborted.", "AbortError");
}

/** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortReason(signal));
    const onAbort = () => {
      clearTimeout(t);
      reject(abortReason(signal));
    };
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Exponential backoff with jitter: between half and all of min(max, base * 2^n). */
export function backoff(attempt: number, baseMs: number, maxMs: number): number {
  const d = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(d / 2 + (Math.random() * d) / 2);
}

/** A request id the bridge accepts: printable ASCII, no '/', '?', '#', '%' or spaces. */
export function newRequestId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  let s = "";
  for (let i = 0; i < 32; i++) s += Math.floor(Math.random() * 16).toString(16);
  return `${s.slice(0, 8)}-${s.slice(8, 12)}-4${s.slice(13, 16)}-a${s.slice(17, 20)}-${s.slice(20)}`;
}

export function defaultBaseUrl(): string | undefined {
  const loc = (globalThis as { location?: { origin?: string } }).location;
  return loc && typeof loc.origin === "string" && loc.origin !== "null" ? loc.origin : undefined;
}

/** A one-consumer queue for events pushed by callbacks (the Socket.IO path). */
export class PushQueue<T> {
  private items: T[] = [];
  private waiter: (() => void) | undefined;
  private closed = false;
  private failure: { error: unknown } | undefined;

  push(v: T): void {
    if (this.closed) return;
    this.items.push(v);
    this.wake();
  }
  close(): void {
    this.closed = true;
    this.wake();
  }
  /** Ends the queue with `error`; `drop` discards what was not read yet. */
  fail(error: unknown, drop = false): void {
    if (this.closed) return;
    if (drop) this.items = [];
    this.failure = { error };
    this.closed = true;
    this.wake();
  }
  get isClosed(): boolean {
    return this.closed;
  }
  async next(): Promise<IteratorResult<T>> {
    for (;;) {
      if (this.items.length > 0) return { value: this.items.shift() as T, done: false };
      if (this.failure) {
        const e = this.failure.error;
        this.failure = undefined;
        throw e;
      }
      if (this.closed) return { value: undefined, done: true };
      await new Promise<void>((r) => (this.waiter = r));
    }
  }
  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }
}
