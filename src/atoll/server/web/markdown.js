// Answers as Markdown (CommonMark + GFM tables and task lists), rendered safely:
// marked turns the text into HTML, DOMPurify removes everything that could run
// (scripts, event handlers, javascript: URLs, forms, styles), and only then does it
// reach the page. Code blocks are highlighted and get a copy button.
import { Marked } from "./vendor/marked.js";
import DOMPurify from "./vendor/purify.js";
import hljs from "./vendor/highlight.js";

const marked = new Marked({ gfm: true, breaks: false });
const purifier = DOMPurify(window);
const ALLOWED = {
  USE_PROFILE: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "img"],
  FORBID_ATTR: ["style", "id", "class"],
  ADD_ATTR: ["target"],
};
const TASK = /^\[( |x|X)\]\s+/;

purifier.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

/** The sanitised HTML of ``text`` as a fragment. */
function fragment(text) {
  // Task list items are rendered as marks, not checkboxes (inputs are not allowed).
  const html = marked.parse(text, { async: false });
  const clean = purifier.sanitize(html, { ...ALLOWED, RETURN_DOM_FRAGMENT: true });
  for (const item of clean.querySelectorAll("li")) {
    const host = item.firstChild?.nodeName === "P" ? item.firstChild : item; // a loose list
    const first = host.firstChild;
    if (first?.nodeType === Node.TEXT_NODE && TASK.test(first.textContent)) {
      const done = first.textContent[1].toLowerCase() === "x";
      first.textContent = first.textContent.replace(TASK, "");
      const mark = document.createElement("span");
      mark.className = done ? "task done" : "task";
      mark.textContent = done ? "☑ " : "☐ ";
      mark.setAttribute("aria-label", done ? "done: " : "to do: ");
      host.prepend(mark);
      item.parentElement?.classList.add("tasks");
    }
  }
  return clean;
}

// marked renders "- [x] a" as a disabled checkbox; with inputs forbidden the box
// would vanish, so the bracket text is kept for the pass above.
marked.use({
  renderer: {
    checkbox({ checked }) { return checked ? "[x] " : "[ ] "; },
  },
});

/** Replace ``element``'s content with ``text`` rendered; ``final`` adds highlighting. */
export function renderMarkdown(element, text, { final = true } = {}) {
  const content = fragment(text);
  for (const table of content.querySelectorAll("table")) {
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    wrap.tabIndex = 0;
    wrap.setAttribute("role", "region");
    wrap.setAttribute("aria-label", "Table");
    table.replaceWith(wrap);
    wrap.append(table);
  }
  for (const code of content.querySelectorAll("pre > code")) {
    const pre = code.parentElement;
    pre.tabIndex = 0;
    const language = [...code.classList].find((c) => c.startsWith("language-"))?.slice(9);
    if (final && code.textContent.length < 100_000) {
      if (language && hljs.getLanguage(language)) {
        code.innerHTML = hljs.highlight(code.textContent, { language, ignoreIllegals: true }).value;
      } else if (!language) {
        code.innerHTML = hljs.highlightAuto(code.textContent).value;
      }
      code.classList.add("hljs");
    }
    const box = document.createElement("div");
    box.className = "code";
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const label = document.createElement("span");
    label.textContent = language || "code";
    bar.append(label, copyButton(() => code.textContent, "Copy code"));
    pre.replaceWith(box);
    box.append(bar, pre);
  }
  element.replaceChildren(content);
}

/** A button that copies ``text()`` and says so. */
export function copyButton(text, label = "Copy") {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "link small copy";
  button.textContent = label;
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text());
      button.textContent = "Copied";
    } catch {
      button.textContent = "Copy failed";
    }
    setTimeout(() => { button.textContent = label; }, 1500);
  });
  return button;
}
