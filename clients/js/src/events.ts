/**
 * The neutral events of a Switchyard stream (SPEC section 1), the same on every
 * transport, with a type guard per event type.
 */

export type EndReason =
  | "completed"
  | "error"
  | "cancelled"
  | "shutdown"
  | "timeout"
  | "slow_consumer";

export interface ChunkData {
  text: string;
}
export interface StatusUpdateData {
  status: string;
  system_message?: string;
  user_message?: string;
  metadata?: { request_id?: string; route?: string; [k: string]: unknown };
}
export interface ToolEventData {
  event: string;
  call_id: string;
  tool_name: string;
  message?: string;
  data?: unknown;
}
export interface CompletionData {
  status: string;
  output?: string;
  total_usage?: unknown;
  timing_stats?: unknown;
}
export interface ErrorData {
  error_type: string;
  message: string;
  user_message?: string;
  code?: unknown;
}
export interface BrokerData {
  broker_id: string;
  value: unknown;
  source?: string;
}
export interface HeartbeatData {
  /** Milliseconds since the Unix epoch. */
  timestamp: number;
}
export interface EndData {
  reason: EndReason | string;
}

interface Numbered<E extends string, D> {
  event: E;
  /** Starts at 0 and grows by exactly 1 per event. */
  seq: number;
  data: D;
}

export type ChunkEvent = Numbered<"chunk", ChunkData>;
export type StatusUpdateEvent = Numbered<"status_update", StatusUpdateData>;
export type ToolEvent = Numbered<"tool_event", ToolEventData>;
export type CompletionEvent = Numbered<"completion", CompletionData>;
export type DataEvent = Numbered<"data", Record<string, unknown>>;
export type ErrorEvent = Numbered<"error", ErrorData>;
export type BrokerEvent = Numbered<"broker", BrokerData>;
export type EndEvent = Numbered<"end", EndData>;
/** A heartbeat carries no `seq` and is never replayed. */
export interface HeartbeatEvent {
  event: "heartbeat";
  seq?: undefined;
  data: HeartbeatData;
}

export type NeutralEvent =
  | ChunkEvent
  | StatusUpdateEvent
  | ToolEvent
  | CompletionEvent
  | DataEvent
  | ErrorEvent
  | BrokerEvent
  | HeartbeatEvent
  | EndEvent;

export type EventType = NeutralEvent["event"];

export const EVENT_TYPES: readonly EventType[] = [
  "chunk",
  "status_update",
  "tool_event",
  "completion",
  "data",
  "error",
  "broker",
  "heartbeat",
  "end",
];

/**
 * What a dialect or legacy mapping produces: a neutral event whose `seq` may be left
 * out (the client then numbers the events itself).
 */
export type NeutralEventInit = NeutralEvent extends infer E
  ? E extends { event: infer T; data: infer D }
    ? { event: T; data: D; seq?: number }
    : never
  : never;

export const isChunk = (e: NeutralEvent): e is ChunkEvent => e.event === "chunk";
export const isStatusUpdate = (e: NeutralEvent): e is StatusUpdateEvent =>
  e.event === "status_update";
export const isToolEvent = (e: NeutralEvent): e is ToolEvent => e.event === "tool_event";
export const isCompletion = (e: NeutralEvent): e is CompletionEvent =>
  e.event === "completion";
export const isData = (e: NeutralEvent): e is DataEvent => e.event === "data";
export const isError = (e: NeutralEvent): e is ErrorEvent => e.event === "error";
export const isBroker = (e: NeutralEvent): e is BrokerEvent => e.event === "broker";
export const isHeartbeat = (e: NeutralEvent): e is HeartbeatEvent => e.event === "heartbeat";
export const isEnd = (e: NeutralEvent): e is EndEvent => e.event === "end";

/** True for any of the nine event types (a value read off the wire). */
export function isNeutralEvent(v: unknown): v is NeutralEvent {
  if (typeof v !== "object" || v === null) return false;
  const o = v as { event?: unknown; data?: unknown };
  return (
    typeof o.event === "string" &&
    (EVENT_TYPES as readonly string[]).includes(o.event) &&
    typeof o.data === "object" &&
    o.data !== null
  );
}
