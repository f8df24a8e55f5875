/**
 * Incremental parsers for the two HTTP wire formats. Bytes arrive in arbitrary network
 * chunks: a line, an SSE field or a multi-byte UTF-8 character may be split anywhere,
 * and nothing is produced until it is whole.
 */

/** One frame off the wire, before it is turned into a neutral event. */
export interface RawFrame {
  /** The frame's text: an NDJSON line, or an SSE event's `data` (lines joined by "\n"). */
  text: string;
  /** SSE `event:` field, when present. */
  event?: string;
  /** SSE `id:` field, when present. */
  id?: string;
}

export interface FrameParser {
  /** Feeds bytes; returns the frames they complete, in order. */
  push(bytes: Uint8Array): RawFrame[];
  /** True when bytes of an incomplete frame are buffered. */
  readonly pending: boolean;
}

/** Splits text into lines at "\n", "\r\n" or a lone "\r", across pushes. */
class LineSplitter {
  private buf = "";
  private sawCR = false;

  push(text: string, out: string[]): void {
    let s = text;
    if (this.sawCR && s.startsWith("\n")) s = s.slice(1);
    this.sawCR = false;
    let start = 0;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c === 10 || c === 13) {
        out.push(this.buf + s.slice(start, i));
        this.buf = "";
        if (c === 13) {
          if (i + 1 < s.length) {
            if (s.charCodeAt(i + 1) === 10) i++;
          } else {
            this.sawCR = true;
          }
        }
        start = i + 1;
      }
    }
    this.buf += s.slice(start);
  }

  get pending(): boolean {
    return this.buf.length > 0;
  }
}

export class NdjsonParser implements FrameParser {
  private readonly decoder = new TextDecoder("utf-8");
  private readonly lines = new LineSplitter();

  push(bytes: Uint8Array): RawFrame[] {
    const lines: string[] = [];
    this.lines.push(this.decoder.decode(bytes, { stream: true }), lines);
    const out: RawFrame[] = [];
    for (const line of lines) if (line.trim() !== "") out.push({ text: line });
    return out;
  }

  get pending(): boolean {
    return this.lines.pending;
  }
}

/** Server-sent events, as the HTML standard parses them (without `retry:`). */
export class SseParser implements FrameParser {
  private readonly decoder = new TextDecoder("utf-8");
  private readonly lines = new LineSplitter();
  private data: string[] = [];
  private event: string | undefined;
  private id: string | undefined;
  private inFrame = false;
  private first = true;

  push(bytes: Uint8Array): RawFrame[] {
    let text = this.decoder.decode(bytes, { stream: true });
    if (this.first && text.length > 0) {
      this.first = false;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    const lines: string[] = [];
    this.lines.push(text, lines);
    const out: RawFrame[] = [];
    for (const line of lines) {
      if (line === "") {
        if (this.data.length > 0) {
          const f: RawFrame = { text: this.data.join("\n") };
          if (this.event !== undefined) f.event = this.event;
          if (this.id !== undefined) f.id = this.id;
          out.push(f);
        }
        this.data = [];
        this.event = undefined;
        this.id = undefined;
        this.inFrame = false;
        continue;
      }
      if (line.startsWith(":")) continue; // a comment (`: heartbeat` in data-only framing)
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      this.inFrame = true;
      if (field === "data") this.data.push(value);
      else if (field === "event") this.event = value;
      else if (field === "id" && !value.includes("\0")) this.id = value;
    }
    return out;
  }

  get pending(): boolean {
    return this.lines.pending || this.inFrame;
  }
}
