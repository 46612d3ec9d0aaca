// Atoll's chat page: plain ES modules, no build step. The token lives in sessionStorage
// (never in a URL); the WebSocket authenticates with its first frame.
const API = "/api/v1";
const TERMINAL = new Set(["agent_completed", "agent_error", "agent_cancelled"]);
const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, problem) {
    const reasons = (problem.errors || []).map((error) => error.msg).join("; ");
    super((problem.detail || `HTTP ${status}`) + (reasons ? ` (${reasons})` : ""));
    this.status = status;
    this.code = problem.code || "http_error";
  }
}

const session = {
  get access() { return sessionStorage.getItem("atoll.access"); },
  get refresh() { return sessionStorage.getItem("atoll.refresh"); },
  save(answer) {
    sessionStorage.setItem("atoll.access", answer.access_token);
    sessionStorage.setItem("atoll.refresh", answer.refresh_token);
  },
  clear() { sessionStorage.removeItem("atoll.access"); sessionStorage.removeItem("atoll.refresh"); },
};

const state = {
  user: null,
  threads: [],
  threadId: null,
  runs: new Map(), // run_id -> run view
  unacked: new Map(), // client_id -> message frame sent but not yet acknowledged
  ws: null,
  connected: false,
  backoff: 1000,
  reconnectTimer: null,
  signingUp: false,
};

// ---------------------------------------------------------------- HTTP

async function api(method, path, body, retry = true) {
  const headers = { "content-type": "application/json" };
  if (session.access) headers.authorization = `Bearer ${session.access}`;
  const response = await fetch(API + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && retry && session.refresh && !path.startsWith("/auth/")) {
    if (await refreshTokens()) return api(method, path, body, false);
    signedOut();
  }
  if (!response.ok) {
    const problem = await response.json().catch(() => ({ detail: response.statusText }));
    throw new ApiError(response.status, problem);
  }
  return response.status === 204 ? null : response.json();
}

async function refreshTokens() {
  try {
    session.save(await api("POST", "/auth/refresh", { refresh_token: session.refresh }, false));
    return true;
  } catch {
    return false;
  }
}

function showError(element, error) {
  element.textContent = error ? (error.message || String(error)) : "";
  element.hidden = !error;
}

// ---------------------------------------------------------------- auth view

function showAuth() {
  $("app-view").hidden = true;
  $("auth-view").hidden = false;
  $("auth-email").focus();
}

function toggleSignUp() {
  state.signingUp = !state.signingUp;
  $("auth-submit").textContent = state.signingUp ? "Sign up" : "Log in";
  $("auth-toggle").textContent = state.signingUp ? "Have an account? Log in" : "No account? Sign up";
  $("auth-name-row").hidden = !state.signingUp;
  $("auth-password").autocomplete = state.signingUp ? "new-password" : "current-password";
  showError($("auth-error"), null);
}

async function submitAuth(event) {
  event.preventDefault();
  const body = { email: $("auth-email").value.trim(), password: $("auth-password").value };
  if (state.signingUp && $("auth-name").value.trim()) body.name = $("auth-name").value.trim();
  try {
    const answer = await api("POST", state.signingUp ? "/auth/register" : "/auth/login", body, false);
    session.save(answer);
    $("auth-password").value = "";
    await start();
  } catch (error) {
    showError($("auth-error"), error);
  }
}

function signedOut() {
  session.clear();
  closeSocket();
  state.user = null;
  state.runs.clear();
  showAuth();
}

async function logout() {
  try { await api("POST", "/auth/logout", undefined, false); } catch { /* already gone */ }
  signedOut();
}

// ---------------------------------------------------------------- threads

async function loadThreads() {
  const page = await api("GET", "/threads?limit=100");
  state.threads = page.items;
  renderThreads();
}

function renderThreads() {
  const list = $("threads");
  list.replaceChildren(...state.threads.map((thread) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = thread.title || "Untitled";
    button.dataset.threadId = thread.id;
    button.setAttribute("aria-current", String(thread.id === state.threadId));
    button.addEventListener("click", () => openThread(thread.id));
    item.append(button);
    return item;
  }));
  const current = state.threads.find((t) => t.id === state.threadId);
  $("thread-title").textContent = current ? (current.title || "Untitled") : "New thread";
  $("rename-thread").hidden = $("delete-thread").hidden = !current;
}

function newThread() {
  state.threadId = null;
  state.runs.clear();
  $("timeline").replaceChildren();
  renderThreads();
  updateCancel();
  $("message").focus();
  document.querySelector(".app").classList.remove("show-sidebar");
}

async function openThread(threadId) {
  state.threadId = threadId;
  state.runs.clear();
  renderThreads();
  document.querySelector(".app").classList.remove("show-sidebar");
  const timeline = $("timeline");
  timeline.replaceChildren();
  try {
    const page = await api("GET", `/threads/${threadId}/messages?limit=100`);
    for (const message of page.items) {
      if (state.threadId !== threadId) return;
      if (message.role === "user") {
        addUserMessage(message.content);
        if (message.run_id) await loadRun(message.run_id);
      } else if (!message.run_id || !state.runs.has(message.run_id)) {
        const run = runView(message.run_id || `answer-${message.id}`);
        run.answer.textContent = message.content;
      }
    }
  } catch (error) {
    showError($("chat-error"), error);
  }
  updateCancel();
  scrollDown();
}

async function loadRun(runId) {
  const run = runView(runId);
  const page = await api("GET", `/runs/${runId}/events`);
  for (const event of page.items) applyEvent(event);
  if (!run.done) resume(run);
}

async function renameThread() {
  const current = state.threads.find((t) => t.id === state.threadId);
  if (!current) return;
  const title = prompt("Rename thread", current.title || "");
  if (title === null) return;
  try {
    await api("PATCH", `/threads/${current.id}`, { title: title.trim() || null });
    await loadThreads();
  } catch (error) { showError($("chat-error"), error); }
}

async function deleteThread() {
  if (!state.threadId || !confirm("Delete this thread and its messages?")) return;
  try {
    await api("DELETE", `/threads/${state.threadId}`);
    state.threadId = null;
    await loadThreads();
    newThread();
  } catch (error) { showError($("chat-error"), error); }
}

// ---------------------------------------------------------------- timeline

function scrollDown() {
  const timeline = $("timeline");
  timeline.scrollTop = timeline.scrollHeight;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function addUserMessage(text) {
  $("timeline").append(element("div", "msg user", text));
  scrollDown();
}

function runView(runId) {
  let run = state.runs.get(runId);
  if (!run) {
    const root = element("div", "run");
    root.dataset.runId = runId;
    const answer = element("div", "answer");
    const badge = element("div", "state");
    root.append(answer, badge);
    $("timeline").append(root);
    run = { id: runId, root, answer, badge, lastSeq: 0, done: false, tools: new Map() };
    state.runs.set(runId, run);
  }
  return run;
}

function insertStep(run, node, event) {
  if (event.parent_agent) node.classList.add("sub");
  run.root.insertBefore(node, run.answer);
}

function who(event) {
  return event.parent_agent ? `${event.agent} (for ${event.parent_agent})` : event.agent;
}

function pretty(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

function applyEvent(event) {
  const run = runView(event.run_id);
  if (event.seq <= run.lastSeq) return; // already shown: never twice
  run.lastSeq = event.seq;
  const data = event.data || {};
  switch (event.type) {
    case "agent_started":
      insertStep(run, element("div", "step", `${who(event)} started`), event);
      break;
    case "agent_thinking":
      insertStep(run, element("div", "thinking", `${who(event)} is thinking: ${data.text}`), event);
      break;
    case "tool_executing": {
      const card = element("div", "tool");
      card.dataset.tool = data.tool;
      card.append(element("div", "name", `tool · ${data.tool}`), element("pre", "args", pretty(data.args)),
        element("pre", "result", "running…"));
      run.tools.set(data.call_id, card);
      insertStep(run, card, event);
      break;
    }
    case "tool_completed": {
      const card = run.tools.get(data.call_id);
      if (card) {
        const result = card.querySelector(".result");
        result.textContent = data.ok
          ? `→ ${pretty(data.result)}  (${Math.round(data.duration_ms)} ms)`
          : `✗ ${data.error?.message || data.error?.code}  (${Math.round(data.duration_ms)} ms)`;
        card.classList.toggle("failed", !data.ok);
      }
      break;
    }
    case "message_delta":
      if (!event.parent_agent) run.answer.textContent += data.delta;
      break;
    case "agent_completed":
      if (event.parent_agent) {
        insertStep(run, element("div", "step", `${who(event)} finished`), event);
      } else {
        run.answer.textContent = data.message?.content ?? run.answer.textContent;
        finish(run, "completed", "completed");
      }
      break;
    case "agent_error":
      if (event.parent_agent) insertStep(run, element("div", "step", `${who(event)} failed: ${data.message}`), event);
      else finish(run, data.state || "failed", `${data.state || "failed"}: ${data.message}`);
      break;
    case "agent_cancelled":
      if (!event.parent_agent) finish(run, "cancelled", `cancelled (${data.reason})`);
      break;
  }
  scrollDown();
}

function finish(run, stateName, text) {
  run.done = true;
  run.badge.className = `state ${stateName}`;
  run.badge.textContent = text;
  updateCancel();
}

function aliveRun() {
  return [...state.runs.values()].find((run) => !run.done && !run.id.startsWith("answer-"));
}

function updateCancel() {
  $("cancel").hidden = !aliveRun();
}

// ---------------------------------------------------------------- WebSocket

function setConnection(kind) {
  const badge = $("connection");
  badge.className = `connection ${kind}`;
  badge.textContent = kind;
}

function closeSocket() {
  clearTimeout(state.reconnectTimer);
  if (state.ws) {
    state.ws.onclose = null;
    state.ws.close(1000);
  }
  state.ws = null;
  state.connected = false;
  setConnection("offline");
}

function connect() {
  closeSocket();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}${API}/ws`);
  state.ws = ws;
  ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token: session.access }));
  ws.onmessage = (message) => onFrame(JSON.parse(message.data));
  ws.onclose = async (close) => {
    state.connected = false;
    state.ws = null;
    if (close.code === 4401) {
      if (await refreshTokens()) { connect(); return; }
      signedOut();
      return;
    }
    setConnection("reconnecting");
    state.reconnectTimer = setTimeout(connect, state.backoff);
    state.backoff = Math.min(state.backoff * 2, 15000);
  };
}

function send(frame) {
  if (!state.connected) return false;
  state.ws.send(JSON.stringify(frame));
  return true;
}

function resume(run) {
  send({ type: "resume", run_id: run.id, after: run.lastSeq });
}

function onFrame(frame) {
  switch (frame.type) {
    case "connection_established":
      state.connected = true;
      state.backoff = 1000;
      setConnection("online");
      for (const run of state.runs.values()) if (!run.done && !run.id.startsWith("answer-")) resume(run);
      // A message whose ack was lost with the old socket: the resend (same client_id)
      // is acknowledged with the run it started, never a second run.
      for (const pending of state.unacked.values()) send(pending);
      break;
    case "ack":
      onAck(frame);
      break;
    case "error":
      if (frame.ref) state.unacked.delete(frame.ref);
      showError($("chat-error"), new Error(frame.detail));
      break;
    case "pong":
      break;
    default:
      if (frame.run_id && (frame.thread_id === state.threadId || state.runs.has(frame.run_id))) {
        applyEvent(frame);
        updateCancel();
      } else if (frame.seq === 1 && !state.threads.some((t) => t.id === frame.thread_id)) {
        loadThreads(); // a thread started elsewhere (another tab)
      }
  }
}

function onAck(frame, own = false) {
  if (!frame.message_id) return; // a cancel's ack
  // The server acknowledges every run before its first event on this socket, also
  // runs started elsewhere (another tab): only our own messages switch the thread.
  own = own || state.unacked.delete(frame.client_id);
  if (!own) {
    if (frame.thread_id === state.threadId) runView(frame.run_id);
    else if (!state.threads.some((t) => t.id === frame.thread_id)) loadThreads();
    return;
  }
  if (state.threadId !== frame.thread_id) {
    state.threadId = frame.thread_id;
    loadThreads();
  }
  runView(frame.run_id);
  updateCancel();
}

// ---------------------------------------------------------------- composer

async function submitMessage(event) {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text) return;
  showError($("chat-error"), null);
  const frame = {
    type: "message", content: text, agent: $("agent").value,
    client_id: crypto.randomUUID(),
  };
  if (state.threadId) frame.thread_id = state.threadId;
  addUserMessage(text);
  $("message").value = "";
  state.unacked.set(frame.client_id, frame);
  if (send(frame)) return;
  state.unacked.delete(frame.client_id);
  try { // offline: send over HTTP, the socket resumes the run when it is back
    const body = { message: text, agent: frame.agent };
    if (state.threadId) body.thread_id = state.threadId;
    const accepted = await api("POST", "/chat", body);
    onAck({ thread_id: accepted.thread_id, run_id: accepted.run.id, message_id: accepted.message.id }, true);
  } catch (error) {
    showError($("chat-error"), error);
  }
}

function cancelRun() {
  const run = aliveRun();
  if (!run) return;
  if (!send({ type: "cancel", run_id: run.id })) {
    api("POST", `/runs/${run.id}/cancel`).catch((error) => showError($("chat-error"), error));
  }
}

function onKey(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
}

// ---------------------------------------------------------------- start

async function loadAgents() {
  const agents = await api("GET", "/agents");
  $("agent").replaceChildren(...agents.map((agent) => {
    const option = element("option", "", agent.name);
    option.value = agent.name;
    option.title = agent.description;
    option.selected = agent.name === "supervisor";
    return option;
  }));
}

async function start() {
  try {
    state.user = await api("GET", "/me");
  } catch {
    signedOut();
    return;
  }
  $("auth-view").hidden = true;
  $("app-view").hidden = false;
  $("me").textContent = state.user.email;
  await Promise.all([loadAgents(), loadThreads()]);
  connect();
  if (state.threads.length) await openThread(state.threads[0].id);
  else newThread();
  $("message").focus();
}

function wire() {
  $("auth-form").addEventListener("submit", submitAuth);
  $("auth-toggle").addEventListener("click", toggleSignUp);
  $("logout").addEventListener("click", logout);
  $("new-thread").addEventListener("click", newThread);
  $("rename-thread").addEventListener("click", renameThread);
  $("delete-thread").addEventListener("click", deleteThread);
  $("composer").addEventListener("submit", submitMessage);
  $("message").addEventListener("keydown", onKey);
  $("cancel").addEventListener("click", cancelRun);
  $("toggle-sidebar").addEventListener("click",
    () => document.querySelector(".app").classList.toggle("show-sidebar"));
}

wire();
if (session.access) start(); else showAuth();
