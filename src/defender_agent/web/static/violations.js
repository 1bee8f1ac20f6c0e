/* Violations page: active and past violations, filters, verification state. */
"use strict";

(function () {
  const { el, clear, getJSON, postJSON, time, thingLink, status } = DA;
  const STATES = ["UNKNOWN", "TRUE_POSITIVE", "BENIGN_POSITIVE", "FALSE_POSITIVE"];
  const form = document.getElementById("filters");
  const box = document.getElementById("list");
  const statusBox = document.getElementById("status");
  const fields = ["view", "days", "profile", "behavior", "thing", "state"];

  function query() {
    const q = new URLSearchParams();
    for (const f of fields) {
      const v = document.getElementById(f).value.trim();
      if (v) q.set(f, v);
    }
    return q;
  }

  function verificationCell(v) {
    const select = el("select", { "aria-label": "verification state" },
      STATES.map((s) => el("option", { value: s, text: s })));
    select.value = v.verificationState || "UNKNOWN";
    const note = el("input", { type: "text", placeholder: "description", value: v.verificationStateDescription || "" });
    const save = el("button", { type: "button", text: "Set" });
    const result = el("span", { class: "status" });
    save.addEventListener("click", async () => {
      try {
        await postJSON("/dashboard/api/verification", {
          violationId: v.violationId, verificationState: select.value, description: note.value || null,
        });
        status(result, "saved", false);
      } catch (e) {
        status(result, e.message, true);
      }
    });
    return el("td", { class: "verification" }, [select, " ", note, " ", save, " ", result]);
  }

  function render(doc, view) {
    clear(box);
    if (!doc.detect) {
      box.appendChild(el("p", { class: "empty", text: "Detect is not running in this service: no violations to show." }));
      return;
    }
    if (!doc.items.length) {
      box.appendChild(el("p", { class: "empty", id: "empty", text: view === "active"
        ? "No active violation matches. Things in alarm appear here as soon as Detect evaluates their reports."
        : "No violation event matches in this period." }));
      return;
    }
    const head = view === "active"
      ? ["Thing", "Profile", "Behavior", "Last value", "Since", "Verification"]
      : ["Thing", "Profile", "Behavior", "Event", "When", "Verification"];
    const rows = doc.items.slice().reverse().map((v) => el("tr", { "data-violation": v.violationId }, [
      el("td", {}, [thingLink(v.thingName)]),
      el("td", { text: v.securityProfileName }),
      el("td", { text: (v.behavior || {}).name }),
      view === "active"
        ? el("td", { text: JSON.stringify(v.lastViolationValue || null) })
        : el("td", { text: v.violationEventType }),
      el("td", { text: time(view === "active" ? v.violationStartTime : v.violationEventTime) }),
      view === "active" ? verificationCell(v) : el("td", { text: v.verificationState || "—" }),
    ]));
    box.appendChild(el("div", { class: "table-wrap" }, [el("table", { id: "violations-table" }, [
      el("thead", {}, [el("tr", {}, head.map((t) => el("th", { text: t })))]),
      el("tbody", {}, rows),
    ])]));
    if (doc.truncated) box.appendChild(el("p", { class: "muted", text: "Only the newest 2000 are shown: narrow the filters." }));
  }

  async function refresh() {
    const q = query();
    try {
      const doc = await getJSON("/dashboard/api/violations?" + q.toString());
      render(doc, q.get("view") || "active");
      status(statusBox, doc.items.length + " shown", false);
    } catch (e) {
      status(statusBox, "cannot load violations: " + e.message, true);
    }
  }

  const initial = new URLSearchParams(location.search);
  for (const f of fields) if (initial.get(f)) document.getElementById(f).value = initial.get(f);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    history.replaceState(null, "", "?" + query().toString());
    refresh();
  });
  refresh();
})();
