// The "Plan and usage" view: what your plan allows and what you used this month; for an
// organisation's members its facts, and for its admins the members, their roles,
// removing and restoring them, and whether the identity provider is required.
import { request } from "./session.js";
import { button, element, showError } from "./ui.js";

const $ = (id) => document.getElementById(id);
const number = new Intl.NumberFormat();
const view = { org: null, cursor: null, me: null };

function facts(target, rows) {
  target.replaceChildren(...rows.flatMap(([term, value]) => [element("dt", "", term), element("dd", "", value)]));
}

function listed(names) {
  return names === null ? "all" : names.length ? names.join(", ") : "none";
}

function budget(used, cap) {
  return cap === null ? `${number.format(used)} (no limit)` : `${number.format(used)} of ${number.format(cap)}`;
}

function renewal(usage) {
  return new Date(usage.resets_at).toLocaleDateString(undefined, { timeZone: "UTC", dateStyle: "medium" });
}

export function closeAccount() {
  if ($("account").hidden) return;
  $("account").hidden = true;
  $("chat").hidden = false;
}

export async function openAccount() {
  $("chat").hidden = true;
  $("account").hidden = false;
  $("account-title").focus?.();
  showError($("account-error"), null);
  try {
    const me = await request("GET", "/me");
    view.me = me;
    const limits = me.limits;
    const rows = [
      ["Plan", limits.name],
      ["Runs at once", String(limits.runs_at_once)],
      ["Messages per minute", String(limits.messages_per_minute)],
      ["Agents", listed(limits.agents)],
      ["Tools", listed(limits.tools)],
      ["Your tokens this month", budget(me.usage.tokens, limits.monthly_tokens)],
    ];
    if (me.org) rows.push(["Organisation's tokens", budget(me.usage.org_tokens ?? 0, limits.org_monthly_tokens)]);
    rows.push(["Budgets renew", renewal(me.usage)]);
    facts($("plan-limits"), rows);
    $("org-section").hidden = !me.org;
    $("key-new").hidden = true;
    await loadKeys();
    if (me.org) await showOrg(me.org.id);
  } catch (error) {
    showError($("account-error"), error);
  }
}

async function showOrg(orgId) {
  const org = await request("GET", `/orgs/${encodeURIComponent(orgId)}`);
  view.org = org;
  $("org-title").textContent = org.name;
  facts($("org-facts"), [
    ["Your role", org.role === "admin" ? "admin" : "member"],
    ["Members", String(org.members)],
    ["Email domains", org.domains.join(", ") || "none"],
    ["Signing in", org.sso_required ? "identity provider only" : "identity provider or password"],
  ]);
  $("org-admin").hidden = org.role !== "admin";
  if (org.role !== "admin") return;
  $("org-sso").checked = org.sso_required;
  showError($("org-error"), null);
  await Promise.all([loadMembers(), loadRemoved()]);
}

async function loadMembers({ more = false } = {}) {
  const params = new URLSearchParams({ limit: "50" });
  if (more && view.cursor) params.set("cursor", view.cursor);
  const page = await request("GET", `/orgs/${encodeURIComponent(view.org.id)}/members?${params}`);
  const rows = page.items.map(memberRow);
  if (more) $("member-rows").append(...rows);
  else $("member-rows").replaceChildren(...rows);
  view.cursor = page.next_cursor;
  $("more-members").hidden = !page.next_cursor;
}

async function loadRemoved() {
  const page = await request("GET", `/orgs/${encodeURIComponent(view.org.id)}/members?removed=true&limit=100`);
  $("removed-members").replaceChildren(...page.items.map((member) => {
    const item = element("li", "", "");
    item.append(element("span", "", member.email), button("Restore", () => restore(member), "link small"));
    item.lastChild.setAttribute("aria-label", `Restore ${member.email}`);
    return item;
  }));
  $("removed-none").hidden = page.items.length > 0;
}

function memberRow(member) {
  const row = element("tr", "", "");
  row.dataset.user = member.user_id;
  const who = element("td", "", member.email);
  if (member.name) who.append(element("span", "muted small", ` · ${member.name}`));
  const role = element("select", "", "");
  role.setAttribute("aria-label", `Role of ${member.email}`);
  for (const value of ["member", "admin"]) {
    const option = element("option", "", value);
    option.value = value;
    option.selected = value === member.role;
    role.append(option);
  }
  role.addEventListener("change", () => changeRole(member, role));
  const roleCell = element("td", "", "");
  roleCell.append(role);
  const actions = element("td", "", "");
  actions.append(removeButton(member, actions));
  row.append(who, roleCell, element("td", "", number.format(member.tokens)), actions);
  return row;
}

function removeButton(member, cell) {
  const remove = button("Remove", () => confirmRemoval(member, cell), "link small danger");
  remove.setAttribute("aria-label", `Remove ${member.email}`);
  return remove;
}

function confirmRemoval(member, cell) {
  const box = element("div", "confirm", "");
  box.setAttribute("role", "group");
  box.setAttribute("aria-label", `Remove ${member.email}?`);
  const yes = button("Remove", () => removeMember(member), "danger small");
  const no = button("Keep", () => { cell.replaceChildren(removeButton(member, cell)); }, "link small");
  box.append(element("span", "small", "Their sessions end now."), yes, no);
  cell.replaceChildren(box);
  no.focus();
}

async function act(work) {
  showError($("org-error"), null);
  try {
    await work();
    await showOrg(view.org.id);
  } catch (error) {
    showError($("org-error"), error);
  }
}

async function changeRole(member, select) {
  try {
    showError($("org-error"), null);
    await request("PATCH", `/orgs/${encodeURIComponent(view.org.id)}/members/${encodeURIComponent(member.user_id)}`,
      { role: select.value });
    member.role = select.value;
    if (member.user_id === view.me.id && select.value !== "admin") await showOrg(view.org.id);
  } catch (error) {
    select.value = member.role; // as it still is on the server
    showError($("org-error"), error);
  }
}

function removeMember(member) {
  return act(() => request("DELETE",
    `/orgs/${encodeURIComponent(view.org.id)}/members/${encodeURIComponent(member.user_id)}`));
}

function restore(member) {
  return act(() => request("POST",
    `/orgs/${encodeURIComponent(view.org.id)}/members/${encodeURIComponent(member.user_id)}/restore`));
}

async function toggleSso() {
  const wanted = $("org-sso").checked;
  showError($("org-error"), null);
  try {
    await request("PATCH", `/orgs/${encodeURIComponent(view.org.id)}`, { sso_required: wanted });
    await showOrg(view.org.id);
  } catch (error) {
    $("org-sso").checked = !wanted;
    showError($("org-error"), error);
  }
}

async function loadKeys() {
  const keys = await request("GET", "/keys");
  $("key-list").replaceChildren(...keys.map((key) => {
    const item = element("li", "", "");
    const label = `${key.name} · ${key.prefix}… · ${key.scopes.join(", ")}`
      + (key.expires_at ? ` · expires ${new Date(key.expires_at).toLocaleDateString()}` : "");
    const revoke = button("Revoke", () => revokeKey(key), "link small danger");
    revoke.setAttribute("aria-label", `Revoke ${key.name}`);
    item.append(element("span", "", label), revoke);
    return item;
  }));
  $("key-none").hidden = keys.length > 0;
}

async function createKey(event) {
  event.preventDefault();
  showError($("key-error"), null);
  const scopes = [["read", $("key-read")], ["chat", $("key-chat")]]
    .filter(([, box]) => box.checked).map(([scope]) => scope);
  try {
    const made = await request("POST", "/keys", { name: $("key-name").value.trim(), scopes });
    $("key-value").textContent = made.key;
    $("key-new").hidden = false;
    $("key-name").value = "";
    await loadKeys();
  } catch (error) {
    showError($("key-error"), error);
  }
}

async function revokeKey(key) {
  showError($("key-error"), null);
  try {
    await request("DELETE", `/keys/${encodeURIComponent(key.id)}`);
    $("key-new").hidden = true;
    await loadKeys();
  } catch (error) {
    showError($("key-error"), error);
  }
}

export function wireAccount(onBack) {
  $("key-form").addEventListener("submit", createKey);
  $("account-back").addEventListener("click", () => { closeAccount(); onBack(); });
  $("more-members").addEventListener("click", () => loadMembers({ more: true }).catch((e) => showError($("org-error"), e)));
  $("org-sso").addEventListener("change", toggleSso);
}
