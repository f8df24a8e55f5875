// Compiled with `tsc --noEmit` against the built declarations, imported by the package
// name through its own `exports` map: the public types as an app uses them.
import {
  stream,
  migratingClient,
  transportFor,
  chatLegacyRoute,
  isChunk,
  isCompletion,
  isError,
  isEnd,
  isToolEvent,
  isHeartbeat,
  StreamRefusedError,
  ResumeError,
  type NeutralEvent,
  type Transport,
  type LegacySocket,
  type DialectMapping,
} from "@switchyard/client";

declare const socket: LegacySocket;

async function app(): Promise<void> {
  const ac = new AbortController();
  for await (const ev of stream("chat", { messages: [{ role: "user", content: "hi" }] }, {
    baseUrl: "http://localhost:8080",
    signal: ac.signal,
    format: "sse",
    retry: { overloaded: 3, maxAttempts: 5 },
  })) {
    if (isChunk(ev)) {
      const t: string = ev.data.text;
      void t;
    } else if (isCompletion(ev)) {
      const out: string | undefined = ev.data.output;
      void out;
    } else if (isError(ev)) {
      const kind: string = ev.data.error_type;
      void kind;
    } else if (isToolEvent(ev)) {
      const name: string = ev.data.tool_name;
      void name;
    } else if (isHeartbeat(ev)) {
      // @ts-expect-error heartbeats carry no seq
      const s: number = ev.seq;
      void s;
    } else if (isEnd(ev)) {
      const seq: number = ev.seq;
      void seq;
    }
  }
  const t: Transport = await transportFor("chat", { user: "alice" }, { baseUrl: "http://localhost:8080", cacheMs: 5000 });
  void t;
  const client = migratingClient({ baseUrl: "http://localhost:8080", socket, subject: { user: "alice" }, routes: { chat: { legacy: chatLegacyRoute } } });
  const events: NeutralEvent[] = await client.stream("chat", { messages: [] }).collect();
  void events;
  const map: DialectMapping = ({ data }) => ({ event: "chunk", data: { text: String((data as { content?: string }).content) } });
  void map;
  try {
    await stream("chat", {}).next();
  } catch (e) {
    if (e instanceof StreamRefusedError && e.retryable) console.log(e.error_type, e.status, e.retryAfterMs);
    if (e instanceof ResumeError) console.log(e.error_type);
  }
}
void app;
