// Small shared pieces of the page: building elements, and errors in words.
import { NetworkError } from "./session.js";

function capitalised(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function button(text, onClick, className = "link small") {
  const node = element("button", className, text);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

/** Words a person understands for what went wrong. */
export function explain(error) {
  if (error instanceof NetworkError) return error.message;
  const code = error.code || "";
  const words = {
    thread_busy: "The agent is still answering in this thread.",
    rate_limited: "You are sending messages too fast. Wait a moment and try again.",
    run_limit: "You already have the most runs allowed at once. Wait for one to finish.",
    too_large: "That message is too long.",
    not_found: "This thread no longer exists (it may have been deleted in another tab).",
    unknown_agent: "That agent is not available.",
    unavailable: "The server is busy or restarting. Try again in a moment.",
    too_many_streams: "Too many open streams. Close another tab and try again.",
    validation_error: error.message,
    internal_error: "Something went wrong on the server. Try again.",
    quota_exceeded: error.message ? `${capitalised(error.message)}.` : "Your monthly token budget is spent.",
    agent_forbidden: "Your plan does not include that agent.",
    org_admin_required: "Only an admin of your organisation can do that.",
    last_admin: "Your organisation needs at least one admin: make someone else an admin first.",
    last_sign_in: error.message ? `${capitalised(error.message)}.` : "That would leave no way to sign in.",
    removed_from_org: "Your organisation removed you from Atoll. Ask its admin to restore you.",
  };
  return words[code] || error.message || String(error);
}

export function showError(target, error) {
  target.textContent = error ? explain(error) : "";
  target.hidden = !error;
}

