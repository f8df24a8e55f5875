/** Typed errors: every failure the client reports carries the bridge's `error_type`. */

export interface SwitchyardErrorInit {
  /** HTTP status of the answer that carried the error, when there was one. */
  status?: number;
  requestId?: string;
  /** The `Retry-After` the bridge sent, in milliseconds. */
  retryAfterMs?: number;
  cause?: unknown;
}

/**
 * Base class. `error_type` is the bridge's (`invalid_request`, `unauthorized`,
 * `route_not_migrated`, `payload_too_large`, `over_capacity`, `draining`, `resume_gap`,
 * `unknown_stream`, ...) or one of the client's own (`connection_lost`,
 * `protocol_error`, `flags_unavailable`).
 */
export class SwitchyardError extends Error {
  readonly error_type: string;
  readonly status?: number;
  readonly requestId?: string;
  readonly retryAfterMs?: number;
  readonly cause?: unknown;

  constructor(errorType: string, message: string, init: SwitchyardErrorInit = {}) {
    super(message);
    this.name = "SwitchyardError";
    this.error_type = errorType;
    this.status = init.status;
    this.requestId = init.requestId;
    this.retryAfterMs = init.retryAfterMs;
    this.cause = init.cause;
  }
}

/** The bridge refused to start the stream (a 4xx/5xx before any event). */
export class StreamRefusedError extends SwitchyardError {
  constructor(errorType: string, message: string, init: SwitchyardErrorInit = {}) {
    super(errorType, message, init);
    this.name = "StreamRefusedError";
  }
  /** 429 `over_capacity` and 503 `draining`: worth trying again later. */
  get retryable(): boolean {
    return this.status === 429 || this.status === 503;
  }
}

/**
 * The connection dropped and the stream cannot be resumed: 410 `resume_gap` (the
 * events were evicted), 404 `unknown_stream` (expired or never started), or
 * `connection_lost` once the reconnect attempts are used up.
 */
export class ResumeError extends SwitchyardError {
  constructor(errorType: string, message: string, init: SwitchyardErrorInit = {}) {
    super(errorType, message, init);
    this.name = "ResumeError";
  }
}

export const isSwitchyardError = (e: unknown): e is SwitchyardError =>
  e instanceof SwitchyardError;

/** Reads `{"error": {"error_type", "message"}}` (or anything else) off an error answer. */
export async function errorFromResponse(
  res: Response,
  Kind: typeof StreamRefusedError | typeof ResumeError,
  requestId?: string,
): Promise<SwitchyardError> {
  let errorType = `http_${res.status}`;
  let message = `HTTP ${res.status}`;
  try {
    const text = await res.text();
    try {
      const body = JSON.parse(text) as { error?: { error_type?: unknown; message?: unknown } };
      if (body && body.error && typeof body.error.error_type === "string") {
        errorType = body.error.error_type;
        if (typeof body.error.message === "string") message = body.error.message;
      }
    } catch {
      if (text) message = `HTTP ${res.status}: ${text.slice(0, 200)}`;
    }
  } catch {
    /* the body could not be read: the status says enough */
  }
  return new Kind(errorType, message, {
    status: res.status,
    requestId: requestId ?? res.headers.get("x-request-id") ?? undefined,
    retryAfterMs: parseRetryAfter(res.headers.get("retry-after")),
  });
}

/** `Retry-After` as seconds or an HTTP date, in milliseconds. */
export function parseRetryAfter(v: string | null): number | undefined {
  if (v == null || v.trim() === "") return undefined;
  const secs = Number(v);
  if (Number.isFinite(secs) && secs >= 0) return Math.round(secs * 1000);
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}
