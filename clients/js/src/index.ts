/**
 * @switchyard/client: Switchyard streams from browsers and Node 18+.
 *
 * - `stream()`: NDJSON or SSE over `fetch`, resumed by itself after a dropped
 *   connection, cancelled on the server when aborted.
 * - `transportFor()` / `migratingClient()`: the route's flag decides between HTTP and
 *   the route's legacy Socket.IO vocabulary; the app sees the same neutral events.
 */
export * from "./events.js";
export {
  SwitchyardError,
  StreamRefusedError,
  ResumeError,
  isSwitchyardError,
  type SwitchyardErrorInit,
} from "./errors.js";
export {
  stream,
  DEFAULT_PATHS,
  type EventStream,
  type StreamOptions,
  type RetryOptions,
  type ReconnectInfo,
  type Format,
  type DialectFrame,
  type DialectMapping,
} from "./stream.js";
export {
  transportFor,
  evaluateFlag,
  clearFlagCache,
  type Transport,
  type Subject,
  type FlagEvaluation,
  type FlagOptions,
} from "./flags.js";
export {
  legacyStream,
  chatLegacyRoute,
  neutralLegacyRoute,
  type LegacyRoute,
  type LegacySocket,
  type LegacyContext,
  type LegacyStreamOptions,
} from "./legacy.js";
export {
  migratingClient,
  type MigratingClient,
  type MigratingClientOptions,
  type MigratingRoute,
  type MigratingStreamOptions,
} from "./client.js";
export { NdjsonParser, SseParser, type RawFrame, type FrameParser } from "./parse.js";
export type { HeadersLike } from "./util.js";
