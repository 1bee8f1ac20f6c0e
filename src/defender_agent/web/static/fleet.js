/* Fleet page: every thing, counts at the top; refreshed every few seconds without reload. */
"use strict";

(function () {
  const { el, clear, getJSON, time, ago, thingLink, status, rejectedText } = DA;
  const REFRESH_MS = 5000;
  const PAGE = 200;
  const columns = [
    { key: "name", label: "Thing" },
    { key: "state", label: "State" },
    { key: "last_seen", label: "Last report" },
    { key: "reports", label: "Stored", cls: "hide-narrow" },
    { key: "accepted", label: "Accepted", cls: "hide-narrow" },
    { key: "rejected", label: "Rejected" },
    { key: "violations", label: "Violations" },
    { key: null, label: "Listening ports" },
  ];
  let sortKey = "name";
  let descending = false;
  let offset = 0;
  let last = null;
  let pending = null;

  const box = document.getElementById("fleet");
  const countsBox = document.getElementById("counts");
  const filter = document.getElementById("filter");
  const stateFilter = document.getElementById("state-filter");
  const statusBox = document.getElementById("status");

  function portsText(t) {
    const parts = [];
    if (t.tcp_ports.length) parts.push("TCP " + t.tcp_ports.join(", "));
    if (t.udp_ports.length) parts.push("UDP " + t.udp_ports.join(", "));
    return parts.join("; ") || "—";
  }

  function renderCounts(counts) {
    clear(countsBox);
    const items = [["things", "things"], ["reporting", "reporting"], ["late", "late"],
      ["silent", "silent"], ["in_alarm", "in alarm"]];
    for (const [key, label] of items) {
      countsBox.appendChild(el("div", { class: "count", id: "count-" + key }, [
        el("span", { class: "n", text: counts[key] }), el("span", { class: "label", text: label }),
      ]));
    }
  }

  function pager() {
    const shown = last.things.length;
    const info = el("span", { class: "muted", id: "range-info", text: shown
      ? (offset + 1) + "–" + (offset + shown) + " of " + last.matched : "" });
    const prev = el("button", { type: "button", id: "prev", text: "‹ previous" });
    const next = el("button", { type: "button", id: "next", text: "next ›" });
    prev.disabled = offset === 0;
    next.disabled = offset + shown >= last.matched;
    prev.addEventListener("click", () => { offset = Math.max(0, offset - PAGE); refresh(); });
    next.addEventListener("click", () => { offset += PAGE; refresh(); });
    return el("div", { class: "controls pager" }, [prev, " ", next, " ", info]);
  }

  function render() {
    if (!last) return;
    renderCounts(last.counts);
    clear(box);
    if (!last.counts.things) {
      box.appendChild(el("p", { class: "empty", id: "empty", text:
        "No thing has reported yet. Reports accepted by the service appear here within seconds." }));
      return;
    }
    const head = el("tr", {}, columns.map((c) => {
      const th = el("th", { class: (c.key ? "sortable " : "") + (c.cls || ""), "data-key": c.key, text: c.label });
      if (!c.key) return th;
      if (c.key === sortKey) th.classList.add(descending ? "sorted-desc" : "sorted-asc");
      th.addEventListener("click", () => {
        descending = sortKey === c.key ? !descending : false;
        sortKey = c.key;
        offset = 0;
        refresh();
      });
      return th;
    }));
    const rows = last.things.map((t) => el("tr", { "data-thing": t.name }, [
      el("td", {}, [thingLink(t.name)]),
      el("td", { class: "state state-" + t.state, text: t.state }),
      el("td", { title: time(t.last_seen), text: ago(t.last_seen, last.now) }),
      el("td", { class: "hide-narrow", text: t.reports }),
      el("td", { class: "hide-narrow", text: t.accepted === null ? "—" : t.accepted }),
      el("td", { text: rejectedText(t.rejected) }),
      el("td", { class: t.violations ? "alarm" : "", text: t.violations }),
      el("td", { text: portsText(t) }),
    ]));
    const table = el("table", { id: "fleet-table" }, [el("thead", {}, [head]), el("tbody", {}, rows)]);
    box.appendChild(el("div", { class: "table-wrap" }, [table]));
    if (!rows.length) box.appendChild(el("p", { class: "empty", text: "No thing matches the filter." }));
    if (last.matched > PAGE) box.appendChild(pager());
  }

  async function refresh() {
    const q = new URLSearchParams({ sort: sortKey, desc: descending ? "1" : "0",
      offset: String(offset), limit: String(PAGE) });
    if (filter.value.trim()) q.set("q", filter.value.trim());
    if (stateFilter.value) q.set("state", stateFilter.value);
    try {
      last = await getJSON("/dashboard/api/fleet?" + q.toString());
      render();
      status(statusBox, "updated " + time(last.now), false);
    } catch (e) {
      status(statusBox, "cannot load the fleet: " + e.message, true);
    }
  }

  filter.addEventListener("input", () => {
    clearTimeout(pending);
    pending = setTimeout(() => { offset = 0; refresh(); }, 250);
  });
  stateFilter.addEventListener("change", () => { offset = 0; refresh(); });
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
