// The login, shared by every tab of this browser, and the API calls made with it.
//
// Tokens live in localStorage (one session for all tabs; never in a URL). Refreshing
// is single-flight: within a tab one promise, across tabs a Web Lock — the server
// revokes the whole session when a refresh token is spent twice, so two tabs (or two
// concurrent 401s) must never both spend it. A tab that waited for the lock finds the
// tokens another tab stored and uses them instead of refreshing again. Under the lock
// the tokens are read from IndexedDB, not localStorage: a browser may show one tab
// another tab's localStorage write only some time later, while IndexedDB transactions
// are consistent across tabs.
export const API = "/api/v1";
const ACCESS = "atoll.access";
const REFRESH = "atoll.refresh";
const LOCK = "atoll.refresh";

export class ApiError extends Error {
  constructor(status, problem) {
    const reasons = (problem.errors || []).map((error) => error.msg).join("; ");
    super((problem.detail || `HTTP ${status}`) + (reasons ? ` (${reasons})` : ""));
    this.status = status;
    this.code = problem.code || "http_error";
    this.problem = problem;
  }
}

/** A request that never reached the server (it is down, or the network is). */
export class NetworkError extends Error {
  constructor() {
    super("Can't reach the server. Check your connection; nothing was lost.");
    this.code = "network";
    this.status = 0;
  }
}

const listeners = new Set();
let flight = null;

function shared(tokens) {
  // tokens: undefined reads the pair, null deletes it, an object writes it.
  return new Promise((resolve, reject) => {
    const open = indexedDB.open("atoll", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("session");
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const db = open.result;
      const transaction = db.transaction("session", tokens === undefined ? "readonly" : "readwrite");
      const store = transaction.objectStore("session");
      const read = tokens === undefined ? store.get("tokens")
        : tokens === null ? store.delete("tokens") : store.put(tokens, "tokens");
      transaction.oncomplete = () => { db.close(); resolve(read.result); };
      transaction.onerror = () => { db.close(); reject(transaction.error); };
    };
  });
}

export const session = {
  get access() { return localStorage.getItem(ACCESS); },
  get refresh() { return localStorage.getItem(REFRESH); },
  save(answer) {
    localStorage.setItem(ACCESS, answer.access_token);
    localStorage.setItem(REFRESH, answer.refresh_token);
    const tokens = { access_token: answer.access_token, refresh_token: answer.refresh_token };
    return shared(tokens).catch(() => {}); // no IndexedDB: single-flight within a tab only
  },
  clear() {
    localStorage.removeItem(ACCESS);
    localStorage.removeItem(REFRESH);
    shared(null).catch(() => {});
  },
  /** ``callback(signedIn)`` when another tab logs in or out. */
  onChange(callback) { listeners.add(callback); },
};

window.addEventListener("storage", (event) => {
  if (event.key !== ACCESS && event.key !== null) return;
  const signedIn = Boolean(session.access);
  for (const callback of listeners) callback(signedIn);
});

async function withLock(work) {
  if (navigator.locks?.request) return navigator.locks.request(LOCK, work);
  return work(); // no Web Locks (plain http on a non-local host): single-flight per tab only
}

/** Get a new token pair once, whoever asks; true when the session is still good. */
export function refreshTokens(failedToken = session.access) {
  if (!flight) {
    flight = withLock(async () => {
      const latest = await shared().catch(() => undefined);
      if (latest && latest.access_token !== failedToken) { // another tab refreshed already
        localStorage.setItem(ACCESS, latest.access_token);
        localStorage.setItem(REFRESH, latest.refresh_token);
        return true;
      }
      if (latest === undefined && session.access && session.access !== failedToken) return true;
      const refreshToken = latest?.refresh_token || session.refresh;
      if (!refreshToken) return false;
      try {
        const response = await call("POST", "/auth/refresh", { refresh_token: refreshToken });
        await session.save(await response.json()); // stored before the lock is released
        return true;
      } catch (error) {
        if (error instanceof NetworkError) throw error;
        // Refused: the session is over, unless another tab refreshed meanwhile.
        return Boolean(session.access && session.access !== failedToken);
      }
    }).finally(() => { flight = null; });
  }
  return flight;
}

async function call(method, path, body, token) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (token) headers.authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(API + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new NetworkError();
  }
  if (!response.ok) {
    const problem = await response.json().catch(() => ({ detail: response.statusText }));
    throw new ApiError(response.status, problem);
  }
  return response;
}

/** Call the API as the signed-in user (a refused token is refreshed once). */
export async function request(method, path, body, { raw = false } = {}) {
  const token = session.access;
  let response;
  try {
    response = await call(method, path, body, token);
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401 || path.startsWith("/auth/")) throw error;
    if (!(await refreshTokens(token))) {
      signOut("Your session ended. Please log in again.");
      throw error;
    }
    response = await call(method, path, body, session.access);
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

/** Trade the one-time code a provider sign-in left in the URL fragment for tokens. */
export async function exchangeSignInCode(code) {
  const response = await call("POST", "/auth/oidc/exchange", { code });
  await session.save(await response.json());
}

/** The OpenID Providers offered ("Sign in with …"); none when the call fails. */
export async function signInProviders() {
  try {
    return await (await call("GET", "/auth/providers")).json();
  } catch {
    return [];
  }
}

/** Log in or sign up (no token needed). */
export async function authenticate(path, body) {
  const response = await call("POST", path, body);
  session.save(await response.json());
}

let onSignedOut = () => {};
export function whenSignedOut(callback) { onSignedOut = callback; }

export function signOut(reason) {
  session.clear();
  onSignedOut(reason);
}
