/* defender-agent dashboard: helpers shared by every page.
 * Data from the service is only ever put in the page as text (textContent, attribute
 * values through setAttribute on safe attributes): never as HTML. */
"use strict";

const DA = (function () {
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [key, value] of Object.entries(attrs)) {
        if (value === undefined || value === null) continue;
        if (key === "text") node.textContent = String(value);
        else if (key === "class") node.className = String(value);
        else if (key === "href") node.setAttribute("href", String(value));
        else node.setAttribute(key, String(value));
      }
    }
    for (const child of children || []) {
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  async function getJSON(url) {
    const answer = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    let body = null;
    try { body = await answer.json(); } catch (e) { body = null; }
    if (!answer.ok) {
      const why = body && body.error ? body.error : answer.status + " " + answer.statusText;
      throw new Error(why);
    }
    return body;
  }

  async function postJSON(url, doc) {
    const answer = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(doc),
    });
    let body = null;
    try { body = await answer.json(); } catch (e) { body = null; }
    if (!answer.ok) throw new Error(body && body.error ? body.error : String(answer.status));
    return body;
  }

  function pad(n) { return String(n).padStart(2, "0"); }

  function time(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const d = new Date(seconds * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function ago(seconds, now) {
    const s = Math.max(0, Math.round(now - seconds));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }

  function thingLink(name) {
    return el("a", { href: "/dashboard/thing?name=" + encodeURIComponent(name), text: name });
  }

  function status(node, text, isError) {
    node.textContent = text;
    node.className = isError ? "status error" : "status";
  }

  function rejectedText(rejected) {
    const parts = Object.entries(rejected || {}).sort().map(([code, n]) => code + " " + n);
    return parts.length ? parts.join(", ") : "0";
  }

  return { el, clear, getJSON, postJSON, time, ago, thingLink, status, rejectedText };
})();
