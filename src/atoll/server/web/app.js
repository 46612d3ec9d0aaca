// Atoll's chat page: plain ES modules, no build step. See docs/page.md.
import {
  ApiError, NetworkError, authenticate, exchangeSignInCode, refreshTokens, request, session,
  signInProviders, signOut, whenSignedOut,
} from "./session.js";
import { copyButton, renderMarkdown } from "./markdown.js";
import { closeAccount, openAccount, wireAccount } from "./account.js";
import { button, element, explain, showError } from "./ui.js";

const API_WS = "/api/v1/ws";
const TERMINAL = new Set(["agent_completed", "agent_error", "agent_cancelled"]);
const MAX_CHARS = 32000;
const PAGE = 30; // messages per page of history
const NEAR_BOTTOM = 48; // px: closer than this to the end counts as "at the bottom"
const ACK_PATIENCE = 10000; // ms before a message that is not acknowledged says so
const $ = (id) => document.getElementById(id);

const state = {
  user: null,
  threads: [], // the loaded list, most recently active first
  threadsCursor: null,
  search: "",
  threadId: null,
  runs: new Map(), // run_id -> run view
  messages: new Set(), // ids of messages shown in the timeline
  pending: new Map(), // client_id -> pending message {frame, bubble, timer}
  olderCursor: null, // next page of older messages, null when the start is shown
  loadingOlder: false,
  opening: 0, // generation of the thread being opened
  ws: null,
  connected: false,
  backoff: 1000,
  reconnectTimer: null,
  reconnectAt: 0,
  signingUp: false,
  stickToBottom: true,
  agents: [],
};

// ---------------------------------------------------------------- small helpers

function threadPath(threadId) {
  return threadId ? `/t/${encodeURIComponent(threadId)}` : "/";
}

function threadFromLocation() {
  const match = location.pathname.match(/^\/t\/([A-Za-z0-9_-]{1,64})$/);
  return match ? match[1] : null;
}

// ---------------------------------------------------------------- auth view

const SIGN_IN_ERRORS = {
  state_invalid: "That sign-in expired or was started in another browser. Try again.",
  email_unverified: "Your identity provider did not confirm your email address, so no account was made.",
  account_exists: "An account with your email already exists. Log in with its password; you can then link your identity provider.",
  invalid_id_token: "The identity provider's answer could not be verified. Try again, or ask your administrator.",
  code_rejected: "The identity provider refused the sign-in. Try again.",
  provider_refused: "The sign-in was cancelled at the identity provider.",
  provider_unavailable: "The identity provider cannot be reached right now. Try again later.",
  code_invalid: "That sign-in link was already used or expired. Sign in again.",
  identity_taken: "That identity is already linked to another account.",
  unknown_provider: "That sign-in provider is not configured.",
  removed_from_org: "Your organisation removed you from Atoll. Ask its admin to restore you.",
  provider_not_allowed: "Your organisation signs in through another identity provider. Use that one.",
};

function showAuth(reason) {
  closeSocket();
  $("app-view").hidden = true;
  $("auth-view").hidden = false;
  showError($("auth-error"), reason ? new Error(reason) : null);
  showProviders();
  $("auth-email").focus();
}

async function showProviders() {
  const providers = await signInProviders();
  const box = $("providers");
  box.querySelectorAll("a").forEach((node) => node.remove());
  for (const provider of providers) {
    const link = element("a", "provider-button", `Sign in with ${provider.display_name}`);
    const next = threadFromLocation() ? location.pathname : "/";
    link.href = `${provider.start_url}?next=${encodeURIComponent(next)}`;
    box.append(link);
  }
  box.hidden = !providers.length;
}

/** A provider sign-in returns with a one-time code (or its failure) in the fragment. */
async function finishProviderSignIn() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const code = fragment.get("signin");
  const failed = fragment.get("signin_error");
  if (!code && !failed) return null;
  history.replaceState(history.state, "", location.pathname + location.search); // never kept
  if (failed) return SIGN_IN_ERRORS[failed] || "The sign-in did not complete. Try again.";
  try {
    await exchangeSignInCode(code);
  } catch (error) {
    return error.code === "sign_in_failed"
      ? (SIGN_IN_ERRORS[error.problem?.reason] || explain(error)) : explain(error);
  }
  return null;
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
  $("auth-submit").disabled = true;
  try {
    await authenticate(state.signingUp ? "/auth/register" : "/auth/login", body);
    $("auth-password").value = "";
    await start();
  } catch (error) {
    showError($("auth-error"), error);
    $("auth-password").select();
  } finally {
    $("auth-submit").disabled = false;
  }
}

function signedOut(reason) {
  closeAccount();
  state.user = null;
  state.runs.clear();
  state.pending.clear();
  showAuth(reason);
}

async function logout() {
  try { await request("POST", "/auth/logout"); } catch { /* already gone */ }
  signOut();
}

// ---------------------------------------------------------------- threads

async function loadThreads({ more = false } = {}) {
  const params = new URLSearchParams({ limit: "50" });
  if (more && state.threadsCursor) params.set("cursor", state.threadsCursor);
  if (state.search) params.set("q", state.search);
  const search = state.search;
  try {
    const page = await request("GET", `/threads?${params}`);
    if (search !== state.search) return; // a newer search is on its way
    state.threads = more ? [...state.threads, ...page.items.filter((t) => !knownThread(t.id))] : page.items;
    state.threadsCursor = page.next_cursor;
    $("threads-status").textContent = state.search && !state.threads.length ? "No thread matches." : "";
  } catch (error) {
    $("threads-status").textContent = explain(error);
  }
  renderThreads();
}

function knownThread(threadId) {
  return state.threads.find((t) => t.id === threadId);
}

/** Put ``thread`` (new or changed) in its place: the list is by last activity. */
function upsertThread(thread) {
  if (state.search) return; // a search result list is left alone; clearing it reloads
  state.threads = [thread, ...state.threads.filter((t) => t.id !== thread.id)];
  state.threads.sort((a, b) => (a.updated_at < b.updated_at ? 1 : a.updated_at > b.updated_at ? -1 : 0));
  renderThreads();
}

function renderThreads() {
  const list = $("threads");
  list.replaceChildren(...state.threads.map((thread) => {
    const item = document.createElement("li");
    const link = element("a", "thread-link", thread.title || "Untitled");
    link.href = threadPath(thread.id);
    link.dataset.threadId = thread.id;
    if (thread.id === state.threadId) link.setAttribute("aria-current", "page");
    link.addEventListener("click", (event) => {
      if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
      event.preventDefault();
      openThread(thread.id, { push: true });
    });
    item.append(link);
    return item;
  }));
  $("more-threads").hidden = !state.threadsCursor;
  const current = knownThread(state.threadId);
  const title = state.threadId ? (current?.title || "Untitled") : "New thread";
  $("thread-title").textContent = title;
  document.title = state.threadId ? `${title} · Atoll` : "Atoll";
  $("thread-actions").hidden = !state.threadId;
}

function newThread({ push = true } = {}) {
  closeAccount();
  state.opening += 1;
  state.threadId = null;
  resetTimeline();
  showWelcome();
  if (push && location.pathname !== "/") history.pushState({}, "", "/");
  renderThreads();
  updateComposer();
  closeDrawer();
  $("message").focus();
}

function resetTimeline() {
  state.runs.clear();
  state.messages.clear();
  state.olderCursor = null;
  state.stickToBottom = true;
  $("timeline").replaceChildren();
  $("jump").hidden = true;
  $("notice").hidden = true;
  $("confirm-delete").hidden = true;
  cancelRename();
  for (const pending of state.pending.values()) {
    if (pending.frame.thread_id) pending.bubble = null; // it belongs to another thread's view
  }
}

function showWelcome() {
  const welcome = element("section", "welcome");
  const name = state.user?.name || state.user?.email?.split("@")[0] || "";
  welcome.append(element("h2", "", name ? `Hello, ${name}. What can I help with?` : "What can I help with?"));
  welcome.append(element("p", "muted", "Pick an agent below and ask. You can watch it think and use its tools."));
  const examples = element("div", "examples");
  for (const text of ["What is 17*23?", "What is sqrt(2) * pi + 10**20?", "Explain what a thread is here."]) {
    examples.append(button(text, () => { $("message").value = text; updateComposer(); $("message").focus(); }, "example"));
  }
  welcome.append(examples);
  $("timeline").append(welcome);
}

async function openThread(threadId, { push = false } = {}) {
  closeAccount();
  const generation = ++state.opening;
  state.threadId = threadId;
  resetTimeline();
  if (push && location.pathname !== threadPath(threadId)) history.pushState({}, "", threadPath(threadId));
  renderThreads();
  closeDrawer();
  updateComposer();
  if (!knownThread(threadId)) {
    try {
      const thread = await request("GET", `/threads/${threadId}`);
      if (generation !== state.opening) return;
      upsertThread(thread);
    } catch (error) {
      if (generation !== state.opening) return;
      threadGone(error);
      return;
    }
  }
  await loadOlder(generation);
  if (generation !== state.opening) return;
  scrollToBottom();
  updateComposer();
}

function threadGone(error) {
  state.threadId = null;
  if (location.pathname !== "/") history.replaceState({}, "", "/");
  renderThreads();
  showWelcome();
  showNotice(error instanceof ApiError && error.status === 404
    ? "That thread does not exist or was deleted." : explain(error));
}

function showNotice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

/** Load the page of messages before those shown (the newest page first). */
async function loadOlder(generation = state.opening) {
  if (state.loadingOlder || !state.threadId) return;
  const first = !state.messages.size;
  if (!first && !state.olderCursor) return;
  state.loadingOlder = true;
  const timeline = $("timeline");
  const params = new URLSearchParams({ order: "desc", limit: String(PAGE) });
  if (state.olderCursor) params.set("cursor", state.olderCursor);
  try {
    const page = await request("GET", `/threads/${state.threadId}/messages?${params}`);
    if (generation !== state.opening) return;
    state.olderCursor = page.next_cursor;
    const messages = page.items.reverse(); // oldest first
    const runIds = messages.filter((m) => m.role === "user" && m.run_id).map((m) => m.run_id);
    const steps = runIds.length
      ? (await request("GET", `/threads/${state.threadId}/events?runs=${runIds.join(",")}&deltas=false`)).runs
      : {};
    if (generation !== state.opening) return;
    const before = timeline.scrollHeight - timeline.scrollTop;
    const block = document.createDocumentFragment();
    const answers = new Map(messages.filter((m) => m.role === "assistant" && m.run_id).map((m) => [m.run_id, m]));
    for (const message of messages) {
      if (state.messages.has(message.id)) continue;
      if (message.role === "user") {
        block.append(userBubble(message.content, message.id));
        if (message.run_id) {
          const run = runView(message.run_id, { into: block });
          for (const event of steps[message.run_id] || []) applyEvent(event, { replay: true });
          const answer = answers.get(message.run_id);
          if (answer) showAnswer(run, answer);
          if (!run.done) { // still going: follow it from its first event
            resetRun(run);
            resume(run);
          }
        }
      } else if (!message.run_id || !state.runs.has(message.run_id)) {
        const run = runView(message.run_id || `answer-${message.id}`, { into: block });
        showAnswer(run, message);
        run.done = true;
      }
    }
    const marker = timeline.querySelector(".history-start");
    marker?.remove();
    timeline.prepend(block);
    if (!state.olderCursor && state.messages.size) {
      timeline.prepend(element("p", "history-start muted small", "This is the start of the thread."));
    }
    if (!first) timeline.scrollTop = timeline.scrollHeight - before; // keep what you were reading in place
    markLastRun();
  } catch (error) {
    if (generation === state.opening) {
      if (error instanceof ApiError && error.status === 404) threadGone(error);
      else showError($("chat-error"), error);
    }
  } finally {
    state.loadingOlder = false;
  }
}

// ---------------------------------------------------------------- rename / delete / export

function startRename() {
  const current = knownThread(state.threadId);
  if (!current) return;
  $("thread-title").classList.add("visually-hidden"); // still the page's heading
  $("rename-form").hidden = false;
  $("rename-input").value = current.title || "";
  $("rename-input").select();
  $("rename-input").focus();
}

function cancelRename() {
  $("rename-form").hidden = true;
  $("thread-title").classList.remove("visually-hidden");
}

async function saveRename(event) {
  event.preventDefault();
  const title = $("rename-input").value.trim();
  try {
    upsertThread(await request("PATCH", `/threads/${state.threadId}`, { title: title || null }));
    cancelRename();
    $("rename-thread").focus();
  } catch (error) { showError($("chat-error"), error); }
}

async function confirmDelete() {
  const threadId = state.threadId;
  $("confirm-delete").hidden = true;
  try {
    await request("DELETE", `/threads/${threadId}`);
    forgetThread(threadId);
    newThread();
  } catch (error) { showError($("chat-error"), error); }
}

function forgetThread(threadId) {
  state.threads = state.threads.filter((t) => t.id !== threadId);
  renderThreads();
}

async function exportThread(format) {
  try {
    const response = await request("GET", `/threads/${state.threadId}/export?format=${format}`, undefined, { raw: true });
    const blob = await response.blob();
    const link = element("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${(knownThread(state.threadId)?.title || state.threadId).slice(0, 60)}.${format === "json" ? "json" : "md"}`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (error) { showError($("chat-error"), error); }
}

// ---------------------------------------------------------------- timeline

function atBottom() {
  const timeline = $("timeline");
  return timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < NEAR_BOTTOM;
}

function scrollToBottom() {
  const timeline = $("timeline");
  timeline.scrollTop = timeline.scrollHeight;
  state.stickToBottom = true;
  $("jump").hidden = true;
}

/** After new content: follow it only if the reader was at the bottom. */
function followNew() {
  if (state.stickToBottom) scrollToBottom();
  else $("jump").hidden = false;
}

function onScroll() {
  state.stickToBottom = atBottom();
  if (state.stickToBottom) $("jump").hidden = true;
  if ($("timeline").scrollTop < 200) loadOlder();
}

function userBubble(text, messageId) {
  const bubble = element("div", "msg user");
  bubble.append(element("div", "text", text));
  if (messageId) {
    bubble.dataset.messageId = messageId;
    state.messages.add(messageId);
  }
  return bubble;
}

function runView(runId, { into = null, after = null } = {}) {
  let run = state.runs.get(runId);
  if (run) return run;
  const root = element("article", "run");
  root.dataset.runId = runId;
  const steps = element("details", "steps");
  const summary = element("summary", "summary", "Working…");
  const cards = element("div", "cards");
  steps.append(summary, cards);
  steps.hidden = true;
  const answer = element("div", "answer markdown");
  const foot = element("div", "run-foot");
  const badge = element("span", "state");
  foot.append(badge);
  root.append(steps, answer, foot);
  if (after) after.after(root);
  else (into || $("timeline")).append(root);
  run = {
    id: runId, root, steps, summary, cards, answer, foot, badge, text: "", lastSeq: 0, done: false,
    tools: new Map(), used: [], asked: [], started: null, ended: null, messageId: null, agent: null,
    renderPending: false,
  };
  state.runs.set(runId, run);
  return run;
}

function resetRun(run) {
  run.lastSeq = 0;
  run.text = "";
  run.tools.clear();
  run.used = [];
  run.asked = [];
  run.cards.replaceChildren();
  run.answer.replaceChildren();
  run.steps.hidden = true;
}

function pretty(value) {
  if (typeof value === "string") return value;
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const entries = Object.entries(value);
    if (entries.every(([, v]) => v === null || ["string", "number", "boolean"].includes(typeof v))) {
      return entries.map(([k, v]) => `${k}: ${v}`).join("\n");
    }
  }
  return JSON.stringify(value, null, 2);
}

function card(run, kind, title, body, event) {
  const node = element("div", `step-card ${kind}`);
  if (event?.parent_agent) node.classList.add("sub");
  node.append(element("div", "step-title", title));
  if (body) node.append(element("pre", "step-body", body));
  run.cards.append(node);
  run.steps.hidden = false;
  return node;
}

function seconds(run) {
  if (!run.started || !run.ended) return "";
  const ms = Date.parse(run.ended) - Date.parse(run.started);
  return Number.isFinite(ms) ? ` · ${(ms / 1000).toFixed(1)} s` : "";
}

function summarize(run) {
  const parts = [];
  if (run.used.length) parts.push(`Used ${[...new Set(run.used)].join(", ")}`);
  if (run.asked.length) parts.push(`asked ${[...new Set(run.asked)].join(", ")}`);
  if (!run.done) {
    run.summary.textContent = parts.length ? `${parts.join(", ")}…` : "Thinking…";
    return;
  }
  const text = parts.length ? parts.join(", ") : "Steps";
  run.summary.textContent = (text[0].toUpperCase() + text.slice(1)) + seconds(run);
}

function who(event) {
  return event.parent_agent ? `${event.agent} (asked by ${event.parent_agent})` : event.agent;
}

function applyEvent(event, { replay = false } = {}) {
  const run = runView(event.run_id);
  if (event.seq <= run.lastSeq) return; // already shown: never twice
  run.lastSeq = event.seq;
  const data = event.data || {};
  switch (event.type) {
    case "agent_started":
      if (event.parent_agent) {
        run.asked.push(event.agent);
        card(run, "step", `${who(event)} started`, "", event);
      } else {
        run.started = run.started || event.ts;
        run.agent = event.agent;
      }
      break;
    case "agent_thinking":
      card(run, "thinking", `${who(event)} is thinking`, data.text, event);
      break;
    case "tool_executing": {
      run.used.push(data.tool);
      const node = card(run, "tool", `${data.tool}`, pretty(data.args), event);
      node.append(element("pre", "step-result", "running…"));
      run.tools.set(data.call_id, node);
      break;
    }
    case "tool_completed": {
      const node = run.tools.get(data.call_id);
      if (node) {
        const result = node.querySelector(".step-result");
        const took = `${Math.round(data.duration_ms)} ms`;
        result.textContent = data.ok
          ? `${pretty(data.result)}\n(${took})`
          : `Failed: ${data.error?.message || data.error?.code} (${took})`;
        node.classList.toggle("failed", !data.ok);
      }
      break;
    }
    case "message_delta":
      if (!event.parent_agent) {
        run.text += data.delta;
        run.messageId = data.message_id || run.messageId;
        scheduleRender(run);
      }
      break;
    case "agent_completed":
      if (event.parent_agent) {
        card(run, "step", `${who(event)} finished`, "", event);
      } else {
        run.ended = event.ts;
        if (data.message) showAnswer(run, data.message);
        finish(run, "completed", "");
      }
      break;
    case "agent_error":
      if (event.parent_agent) card(run, "step failed", `${who(event)} failed: ${data.message}`, "", event);
      else { run.ended = event.ts; finish(run, data.state || "failed", failure(data)); }
      break;
    case "agent_cancelled":
      if (!event.parent_agent) { run.ended = event.ts; finish(run, "cancelled", cancelled(data.reason)); }
      break;
  }
  summarize(run);
  if (!replay) followNew();
}

function failure(data) {
  if (data.state === "timeout") return "This took too long and was stopped. Try again, or ask something smaller.";
  if (data.state === "dead") return "The server lost this run (it restarted or a worker stopped). Send your message again.";
  return `Something went wrong: ${data.message || "the run failed"}.`;
}

function cancelled(reason) {
  const words = {
    user: "Stopped.", interrupted: "Stopped: you sent a new message.",
    shutdown: "Stopped: the server restarted. Send your message again.",
  };
  return words[reason] || `Stopped (${reason}).`;
}

function scheduleRender(run) {
  if (run.renderPending) return;
  run.renderPending = true;
  requestAnimationFrame(() => {
    run.renderPending = false;
    if (run.done) return; // the end rendered it already, highlighted
    renderMarkdown(run.answer, run.text, { final: false });
    followNew();
  });
}

function showAnswer(run, message) {
  run.text = message.content;
  run.messageId = message.id;
  renderMarkdown(run.answer, run.text);
  if (message.feedback) {
    run.feedback = message.feedback;
    showRating(run);
  }
  if (message.id) state.messages.add(message.id);
}

function finish(run, stateName, text) {
  run.done = true;
  run.root.classList.add(`ended-${stateName}`);
  if (run.text && stateName === "completed") renderMarkdown(run.answer, run.text);
  run.badge.className = `state ${stateName}`;
  run.badge.textContent = text;
  addRunActions(run, stateName);
  markLastRun();
  updateComposer();
}

function addRunActions(run, stateName) {
  run.foot.querySelectorAll(".action").forEach((node) => node.remove());
  const actions = element("span", "actions action");
  if (run.text && stateName === "completed") actions.append(copyButton(() => run.text, "Copy answer"));
  if (run.messageId && stateName === "completed") actions.append(...feedbackButtons(run));
  actions.append(button("Regenerate", () => regenerate(run), "link small regenerate"));
  run.foot.append(actions);
}

function feedbackButtons(run) {
  const up = button("Good", () => rate(run, "up"), "link small rate");
  const down = button("Bad", () => rate(run, "down"), "link small rate");
  up.setAttribute("aria-label", "Good answer");
  down.setAttribute("aria-label", "Bad answer");
  run.rateButtons = { up, down };
  showRating(run);
  return [up, down];
}

function showRating(run) {
  if (!run.rateButtons) return;
  const rating = run.feedback?.rating;
  run.rateButtons.up.setAttribute("aria-pressed", String(rating === "up"));
  run.rateButtons.down.setAttribute("aria-pressed", String(rating === "down"));
}

async function rate(run, rating) {
  const path = `/messages/${run.messageId}/feedback`;
  try {
    if (run.feedback?.rating === rating) {
      await request("DELETE", path);
      run.feedback = null;
      run.foot.querySelector(".comment-form")?.remove();
    } else {
      run.feedback = await request("PUT", path, { rating });
      if (rating === "down") askComment(run);
    }
    showRating(run);
  } catch (error) { showError($("chat-error"), error); }
}

function askComment(run) {
  run.foot.querySelector(".comment-form")?.remove();
  const form = element("form", "comment-form");
  const label = element("label", "", "What was wrong? (optional)");
  const input = element("input");
  input.maxLength = 2000;
  label.append(input);
  const save = element("button", "small", "Send feedback");
  save.type = "submit";
  form.append(label, save);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      run.feedback = await request("PUT", `/messages/${run.messageId}/feedback`, { rating: "down", comment: input.value });
      form.replaceChildren(element("span", "muted small", "Thanks for the feedback."));
    } catch (error) { showError($("chat-error"), error); }
  });
  run.foot.append(form);
  input.focus();
}

/** Only the last run of the thread offers to regenerate; only the last question to edit. */
function markLastRun() {
  const runs = [...$("timeline").querySelectorAll("article.run")];
  runs.forEach((node, index) => node.classList.toggle("last", index === runs.length - 1));
  const bubbles = [...$("timeline").querySelectorAll(".msg.user:not(.failed)")];
  bubbles.forEach((bubble, index) => {
    bubble.querySelector(".edit")?.remove();
    if (index === bubbles.length - 1 && !aliveRun()) {
      const text = bubble.querySelector(".text").textContent;
      bubble.append(button("Edit and resend", () => editLast(text), "link small edit"));
    }
  });
}

function questionOf(run) {
  let node = run.root.previousElementSibling;
  while (node && !node.classList.contains("user")) node = node.previousElementSibling;
  return node?.querySelector(".text")?.textContent || "";
}

function regenerate(run) {
  const text = questionOf(run);
  if (text) sendText(text, { agent: run.agent || $("agent").value });
}

function editLast(text) {
  $("message").value = text;
  updateComposer();
  $("message").focus();
}

function aliveRun() {
  return [...state.runs.values()].find((run) => !run.done && !run.id.startsWith("answer-"));
}

// ---------------------------------------------------------------- WebSocket

function setConnection(kind, text = kind) {
  const badge = $("connection");
  badge.className = `connection ${kind}`;
  badge.textContent = text;
  $("reconnect-now").hidden = kind !== "reconnecting";
}

function closeSocket() {
  clearTimeout(state.reconnectTimer);
  clearInterval(state.countdown);
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
  const ws = new WebSocket(`${scheme}://${location.host}${API_WS}`);
  state.ws = ws;
  setConnection("connecting", "connecting…");
  ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token: session.access }));
  ws.onmessage = (message) => onFrame(JSON.parse(message.data));
  ws.onclose = async (close) => {
    state.connected = false;
    state.ws = null;
    if (close.code === 4401) {
      let refreshed = null; // null: offline, retried below
      try { refreshed = await refreshTokens(); } catch { /* offline */ }
      if (refreshed) { connect(); return; }
      if (refreshed === false || !session.refresh) {
        signOut(close.reason === "removed_from_org"
          ? "Your organisation removed you from Atoll. Ask its admin to restore you."
          : "Your session ended. Please log in again.");
        return;
      }
    }
    scheduleReconnect();
  };
}

function scheduleReconnect() {
  clearTimeout(state.reconnectTimer);
  clearInterval(state.countdown);
  const delay = state.backoff;
  state.backoff = Math.min(state.backoff * 2, 15000);
  state.reconnectAt = Date.now() + delay;
  const tick = () => {
    const left = Math.max(0, Math.ceil((state.reconnectAt - Date.now()) / 1000));
    setConnection("reconnecting", `offline · retrying in ${left} s`);
  };
  tick();
  state.countdown = setInterval(tick, 1000);
  state.reconnectTimer = setTimeout(connect, delay);
}

function reconnectNow() {
  state.backoff = 1000;
  connect();
}

function sendFrame(frame) {
  if (!state.connected) return false;
  state.ws.send(JSON.stringify(frame));
  return true;
}

function resume(run) {
  sendFrame({ type: "resume", run_id: run.id, after: run.lastSeq });
}

function onFrame(frame) {
  switch (frame.type) {
    case "connection_established":
      state.connected = true;
      state.backoff = 1000;
      clearInterval(state.countdown);
      setConnection("online");
      showError($("chat-error"), null);
      for (const run of state.runs.values()) if (!run.done && !run.id.startsWith("answer-")) resume(run);
      // A message whose ack was lost with the old socket: the resend (same client_id)
      // is acknowledged with the run it started, never a second run.
      for (const pending of state.pending.values()) if (pending.sent) sendFrame(pending.frame);
      loadThreads();
      break;
    case "ack":
      onAck(frame);
      break;
    case "error":
      if (frame.ref && state.pending.has(frame.ref)) failPending(frame.ref, new ApiError(0, frame));
      else showError($("chat-error"), new ApiError(0, frame));
      break;
    case "thread_created":
    case "thread_updated":
      upsertThread(frame.thread);
      break;
    case "thread_deleted":
      forgetThread(frame.thread_id);
      if (frame.thread_id === state.threadId) {
        newThread({ push: false });
        history.replaceState({}, "", "/");
        showNotice("This thread was deleted in another tab.");
      }
      break;
    case "message_created":
      upsertThread(frame.thread);
      // This tab's own message (acknowledged or not yet) is already shown.
      if (frame.message.thread_id === state.threadId && !state.messages.has(frame.message.id)
          && !state.pending.has(frame.client_id)) {
        placeForeignQuestion(frame.message);
      }
      break;
    case "pong":
      break;
    default:
      if (frame.run_id && state.runs.has(frame.run_id)) {
        applyEvent(frame);
        updateComposer();
      }
  }
}

/** A question asked in another tab, shown before its run (which may already be here). */
function placeForeignQuestion(message) {
  const bubble = userBubble(message.content, message.id);
  const run = message.run_id && state.runs.get(message.run_id);
  if (run) run.root.before(bubble);
  else $("timeline").append(bubble);
  $("timeline").querySelector(".welcome")?.remove();
  markLastRun();
  followNew();
}

function onAck(frame) {
  if (!frame.message_id) return; // a cancel's ack
  const pending = state.pending.get(frame.client_id);
  if (!pending) { // a run started elsewhere (another tab)
    if (frame.thread_id === state.threadId && !state.runs.has(frame.run_id)) {
      const question = $("timeline").querySelector(`[data-message-id="${frame.message_id}"]`);
      runView(frame.run_id, { after: question });
      markLastRun();
    }
    return;
  }
  acknowledged(pending, { threadId: frame.thread_id, runId: frame.run_id, messageId: frame.message_id });
}

function acknowledged(pending, { threadId, runId, messageId }) {
  state.pending.delete(pending.frame.client_id);
  clearTimeout(pending.timer);
  pending.messageId = messageId;
  state.messages.add(messageId);
  const bubble = pending.bubble;
  if (bubble) {
    bubble.classList.remove("pending");
    bubble.dataset.messageId = messageId;
    bubble.querySelector(".status")?.remove();
  }
  if (!pending.frame.thread_id && state.threadId === null && bubble?.isConnected) {
    state.threadId = threadId; // the first message made the thread: it is this view's now
    history.pushState({}, "", threadPath(threadId));
    if (!knownThread(threadId)) loadThreads();
  }
  if (threadId === state.threadId && bubble?.isConnected) {
    const run = runView(runId, { after: bubble });
    if (pending.frame.agent) run.agent = pending.frame.agent;
  }
  renderThreads();
  markLastRun();
  updateComposer();
  followNew();
}

// ---------------------------------------------------------------- composer

function updateComposer() {
  const text = $("message").value;
  const length = text.length;
  const counter = $("counter");
  counter.hidden = length < MAX_CHARS * 0.8;
  counter.textContent = `${length.toLocaleString()} / ${MAX_CHARS.toLocaleString()}`;
  counter.classList.toggle("over", length > MAX_CHARS);
  $("send").disabled = !text.trim() || length > MAX_CHARS;
  const alive = aliveRun();
  $("cancel").hidden = !alive;
  if (!alive) $("busy-choice").hidden = true;
}

function submitMessage(event) {
  event.preventDefault();
  const text = $("message").value;
  if (!text.trim() || text.length > MAX_CHARS) return;
  if (aliveRun() && state.threadId) {
    $("busy-choice").hidden = false; // ask: queue it, or stop the run and send
    $("send-queue").focus();
    return;
  }
  sendText(text);
}

function sendText(text, { multitask = "reject", agent = $("agent").value } = {}) {
  $("busy-choice").hidden = true;
  showError($("chat-error"), null);
  $("timeline").querySelector(".welcome")?.remove();
  $("notice").hidden = true;
  const frame = { type: "message", content: text, agent, client_id: crypto.randomUUID(), multitask };
  if (state.threadId) frame.thread_id = state.threadId;
  const bubble = userBubble(text);
  bubble.classList.add("pending");
  bubble.append(element("span", "status muted small", "Sending…"));
  $("timeline").append(bubble);
  const pending = { frame, bubble, sent: false, timer: null, messageId: null };
  state.pending.set(frame.client_id, pending);
  $("message").value = "";
  updateComposer();
  scrollToBottom();
  deliver(pending);
}

async function deliver(pending) {
  const frame = pending.frame;
  if (sendFrame(frame)) {
    pending.sent = true;
    pending.timer = setTimeout(() => {
      const status = pending.bubble?.querySelector(".status");
      if (status) status.textContent = "Waiting for the server… (it will be sent when the connection is back)";
    }, ACK_PATIENCE);
    return;
  }
  // No socket: send over HTTP; the socket follows the run when it is back.
  const body = { message: frame.content, agent: frame.agent, multitask: frame.multitask, client_id: frame.client_id };
  if (frame.thread_id) body.thread_id = frame.thread_id;
  try {
    const accepted = await request("POST", "/chat", body);
    if (!state.pending.has(frame.client_id)) return;
    acknowledged(pending, { threadId: accepted.thread_id, runId: accepted.run.id, messageId: accepted.message.id });
  } catch (error) {
    failPending(frame.client_id, error);
  }
}

/** The message was refused or could not be sent: it stays, with retry and edit. */
function failPending(clientId, error) {
  const pending = state.pending.get(clientId);
  if (!pending) return;
  state.pending.delete(clientId);
  clearTimeout(pending.timer);
  const bubble = pending.bubble;
  if (!bubble?.isConnected) { // sent from a view that is no longer shown
    showError($("chat-error"), new Error(`Not sent: ${explain(error)}`));
    if (!$("message").value) { $("message").value = pending.frame.content; updateComposer(); }
    return;
  }
  bubble.classList.remove("pending");
  bubble.classList.add("failed");
  bubble.querySelector(".status")?.remove();
  const status = element("div", "status");
  status.append(element("span", "error", `Not sent: ${explain(error)}`));
  const retry = () => {
    bubble.remove();
    if (error.code === "not_found") { state.threadId = null; history.replaceState({}, "", "/"); renderThreads(); }
    if (error.code === "thread_busy") { $("message").value = pending.frame.content; updateComposer(); submitMessage(new Event("submit")); return; }
    sendText(pending.frame.content, { agent: pending.frame.agent });
  };
  const edit = () => {
    bubble.remove();
    $("message").value = pending.frame.content;
    updateComposer();
    $("message").focus();
  };
  status.append(button("Retry", retry, "link small retry"), button("Edit", edit, "link small edit-failed"));
  bubble.append(status);
  markLastRun();
  if (!$("message").value) { // the text is never lost: it is back in the box too
    $("message").value = pending.frame.content;
    updateComposer();
  }
}

function cancelRun() {
  const run = aliveRun();
  if (!run) return;
  if (!sendFrame({ type: "cancel", run_id: run.id })) {
    request("POST", `/runs/${run.id}/cancel`).catch((error) => showError($("chat-error"), error));
  }
}

function onKey(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
}

// ---------------------------------------------------------------- drawer (phones)

function openDrawer() {
  document.querySelector(".app").classList.add("show-sidebar");
  $("backdrop").hidden = false;
  $("toggle-sidebar").setAttribute("aria-expanded", "true");
  $("new-thread").focus();
}

function closeDrawer() {
  const app = document.querySelector(".app");
  if (!app.classList.contains("show-sidebar")) return;
  app.classList.remove("show-sidebar");
  $("backdrop").hidden = true;
  $("toggle-sidebar").setAttribute("aria-expanded", "false");
}

// ---------------------------------------------------------------- start

async function loadAgents() {
  state.agents = await request("GET", "/agents");
  const saved = localStorage.getItem("atoll.agent");
  const chosen = state.agents.some((a) => a.name === saved) ? saved : "supervisor";
  $("agent").replaceChildren(...state.agents.map((agent) => {
    const option = element("option", "", agent.name);
    option.value = agent.name;
    option.title = agent.description;
    option.selected = agent.name === chosen;
    return option;
  }));
}

async function start() {
  try {
    state.user = await request("GET", "/me");
  } catch (error) {
    if (error instanceof NetworkError) { showAuth(explain(error)); return; }
    signOut();
    return;
  }
  $("auth-view").hidden = true;
  $("app-view").hidden = false;
  $("me").textContent = state.user.email;
  await Promise.all([loadAgents(), loadThreads()]);
  connect();
  const wanted = threadFromLocation();
  if (wanted) await openThread(wanted);
  else newThread({ push: false });
  $("message").focus();
}

let searchTimer = null;
function onSearch() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    state.search = $("thread-search").value.trim();
    state.threadsCursor = null;
    loadThreads();
  }, 250);
}

function wire() {
  $("auth-form").addEventListener("submit", submitAuth);
  $("auth-toggle").addEventListener("click", toggleSignUp);
  $("logout").addEventListener("click", logout);
  $("open-account").addEventListener("click", () => { closeDrawer(); openAccount(); });
  wireAccount(() => $("message").focus());
  $("new-thread").addEventListener("click", () => newThread());
  $("rename-thread").addEventListener("click", startRename);
  $("rename-form").addEventListener("submit", saveRename);
  $("rename-cancel").addEventListener("click", cancelRename);
  $("rename-input").addEventListener("keydown", (e) => { if (e.key === "Escape") cancelRename(); });
  $("delete-thread").addEventListener("click", () => { $("confirm-delete").hidden = false; $("confirm-delete-no").focus(); });
  $("confirm-delete-yes").addEventListener("click", confirmDelete);
  $("confirm-delete-no").addEventListener("click", () => { $("confirm-delete").hidden = true; });
  $("export-md").addEventListener("click", () => exportThread("markdown"));
  $("export-json").addEventListener("click", () => exportThread("json"));
  $("composer").addEventListener("submit", submitMessage);
  $("message").addEventListener("keydown", onKey);
  $("message").addEventListener("input", updateComposer);
  $("cancel").addEventListener("click", cancelRun);
  $("send-queue").addEventListener("click", () => sendText($("message").value, { multitask: "enqueue" }));
  $("send-interrupt").addEventListener("click", () => sendText($("message").value, { multitask: "interrupt" }));
  $("send-wait").addEventListener("click", () => { $("busy-choice").hidden = true; $("message").focus(); });
  $("agent").addEventListener("change", () => localStorage.setItem("atoll.agent", $("agent").value));
  $("timeline").addEventListener("scroll", onScroll, { passive: true });
  $("jump").addEventListener("click", () => { scrollToBottom(); $("message").focus(); });
  $("reconnect-now").addEventListener("click", reconnectNow);
  $("more-threads").addEventListener("click", () => loadThreads({ more: true }));
  $("thread-search").addEventListener("input", onSearch);
  $("toggle-sidebar").addEventListener("click", openDrawer);
  $("close-sidebar").addEventListener("click", closeDrawer);
  $("backdrop").addEventListener("click", closeDrawer);
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeDrawer(); });
  window.addEventListener("popstate", () => {
    if (!state.user) return;
    const wanted = threadFromLocation();
    if (wanted) openThread(wanted);
    else newThread({ push: false });
  });
  window.addEventListener("online", () => { if (state.user && !state.connected) reconnectNow(); });
  whenSignedOut((reason) => signedOut(reason));
  session.onChange((signedIn) => {
    if (!signedIn && state.user) signedOut("You logged out in another tab.");
    else if (signedIn && !state.user) start(); // logged in in another tab
  });
}

wire();
finishProviderSignIn().then((failure) => {
  if (failure) showAuth(failure);
  else if (session.access) start();
  else showAuth();
});
