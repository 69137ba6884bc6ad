// Types for pushgate.js, the browser SDK for pushgate.

/** The connection's life: an attempt in flight, welcomed, waiting to retry, closed by the app, or given up. */
export type State = "connecting" | "open" | "reconnecting" | "closed" | "failed";

export type Transport = "websocket" | "sse";

export interface PushMeta {
  /** The push's sequence number (increasing for this user within an epoch). */
  seq: number;
  /** The server's epoch (changes when it restarts). */
  epoch: number;
  /** Sent again after a reconnect (it was missed while away). */
  replayed: boolean;
}

export interface ResetInfo {
  /** The new position: the app's state must be refetched up to here. */
  epoch: number;
  seq: number;
  /** The position the SDK asked to resume from, `"<epoch>:<seq>"`. */
  since: string;
}

export interface StateInfo {
  transport: Transport | null;
  /** On "reconnecting": the close code (1006 when the connection failed). */
  code?: number;
  reason?: string;
  /** On "reconnecting" after an HTTP refusal (SSE shows it; WebSocket cannot). */
  status?: number;
  /** On "reconnecting": how long until the next attempt. */
  delayMs?: number;
  /** Failed attempts since the last welcome. */
  attempt?: number;
  /** On "open": the welcome — its user, whether the resume recovered everything missed, the position, the heartbeat interval (0: none). */
  user?: string;
  recovered?: boolean;
  epoch?: number;
  seq?: number;
  heartbeatMs?: number;
  /** With `share`: whether this tab holds the connection. */
  leader?: boolean;
}

export interface PushgateOptions {
  /** The gateway: `https://push.example.com` (or `wss://…`, or a path on this origin). */
  url: string;
  /** Returns a JWT for the user (called when none is cached, near its `exp`, and after a refusal). */
  token: () => string | Promise<string>;
  onPush?: (data: unknown, meta: PushMeta) => void;
  /** Pushes may have been lost (server restarted, or they left its mailbox): refetch the app's state. */
  onReset?: (info: ResetInfo) => void;
  onState?: (state: State, info: StateInfo) => void;
  /** "auto" (default): WebSocket, SSE after repeated WebSocket failures, back when WebSocket works. */
  transport?: "auto" | Transport;
  /** Resume from a position saved earlier (`connection.position`), e.g. across page loads. */
  since?: string | null;
  /** Share one connection among this origin's tabs that pass the same key (needs Web Locks and BroadcastChannel). */
  share?: string | null;
  /** Full-jitter backoff: the n-th retry waits a uniform draw below min(backoffCapMs, backoffBaseMs·2^n). Defaults 500 / 20000. */
  backoffBaseMs?: number;
  backoffCapMs?: number;
  /** A floor under every reconnect delay (default 0). */
  backoffMinMs?: number;
  /** After a WebSocket close 1012 (server draining): wait a uniform draw below this (default 1000). */
  restartSpreadMs?: number;
  /** WebSocket attempts in a row without a welcome before switching to SSE (default 3). */
  sseAfterFailures?: number;
  /** While on SSE, try WebSocket again this often (default 120000). */
  websocketRetryMs?: number;
  /** Tolerance beyond the server's heartbeat interval before a silent connection counts as dead (default 10000). */
  heartbeatMarginMs?: number;
  /** An attempt without a welcome this long is abandoned (default 15000). */
  connectTimeoutMs?: number;
  /** Visible again after at least this long hidden: check the connection at once (default 60000). */
  longHideMs?: number;
  /** Fetch a new token this long before the cached one's `exp` (default 60000). */
  tokenRefreshMarginMs?: number;
  /** Replaces what the SDK takes from `globalThis` (tests, Node). */
  env?: Partial<Environment>;
}

export interface Environment {
  WebSocket: typeof WebSocket;
  fetch: typeof fetch;
  AbortController: typeof AbortController;
  BroadcastChannel: typeof BroadcastChannel;
  locks: LockManager;
  window: EventTarget | null;
  document: (EventTarget & { visibilityState: string }) | null;
  baseUrl: string | undefined;
  setTimeout: (fn: () => void, ms: number) => unknown;
  clearTimeout: (id: unknown) => void;
  /** Monotonic milliseconds. */
  now: () => number;
  /** Wall-clock milliseconds (token expiry). */
  wallNow: () => number;
  random: () => number;
}

export interface PushgateConnection {
  /** Closes for good: no reconnect after this. */
  close(): void;
  readonly state: State;
  /** The transport of the welcomed connection, or null. */
  readonly transport: Transport | null;
  /** `"<epoch>:<seq>"` of the last push delivered (or of the welcome), to pass as `since` later. */
  readonly position: string | null;
  /** With `share`: whether this tab holds the connection. */
  readonly leader?: boolean;
}

export function connect(options: PushgateOptions): PushgateConnection;

export const VERSION: string;
export const CLOSE_HEARTBEAT_TIMEOUT: 4000;
export const CLOSE_CONNECT_TIMEOUT: 4001;

/** The delay before retry number `attempt` (0-based). */
export function backoffDelay(
  attempt: number,
  options: { backoffBaseMs: number; backoffCapMs: number; backoffMinMs?: number },
  random?: () => number,
): number;

export function endpoints(url: string, base?: string): { ws: string; sse: string };

export function tokenExpiry(token: string): number | null;

export interface SseItem {
  data?: string;
  id?: string;
  retry?: number;
  comment?: true;
}

export class SseParser {
  feed(text: string): SseItem[];
}
