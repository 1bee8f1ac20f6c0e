/* Security profiles page: behaviors in words, targets, things in alarm. */
"use strict";

(function () {
  const { el, clear, getJSON, thingLink, status } = DA;
  const box = document.getElementById("profiles");
  const statusBox = document.getElementById("status");

  function target(arn) {
    const tail = arn.split(":").slice(5).join(":");
    if (tail === "all/things") return "all things";
    if (tail === "all/registered-things") return "all registered things";
    if (tail.startsWith("thinggroup/")) return "thing group " + tail.slice("thinggroup/".length);
    return arn;
  }

  async function refresh() {
    try {
      const doc = await getJSON("/dashboard/api/profiles");
      clear(box);
      if (!doc.profiles.length) {
        box.appendChild(el("p", { class: "empty", id: "empty", text:
          "No security profile yet. Create one with the AWS CLI or boto3 against this service (aws iot create-security-profile --endpoint-url …)." }));
      }
      for (const p of doc.profiles) {
        const alarm = p.in_alarm.length
          ? el("p", { class: "alarm" }, ["In alarm: "].concat(p.in_alarm.flatMap((t, i) => (i ? [", ", thingLink(t)] : [thingLink(t)]))))
          : el("p", { class: "muted", text: "No thing in alarm." });
        box.appendChild(el("section", { class: "card", "data-profile": p.name }, [
          el("h2", { text: p.name }),
          el("p", { class: "muted", text: "Version " + p.version + " · attached to " +
            (p.targets.length ? p.targets.map(target).join(", ") : "nothing") }),
          el("ul", {}, p.behaviors.map((b) => el("li", {}, [el("strong", { text: b.name }), ": " + b.words]))),
          alarm,
        ]));
      }
      status(statusBox, doc.profiles.length + " profiles", false);
    } catch (e) {
      status(statusBox, "cannot load the profiles: " + e.message, true);
    }
  }
  refresh();
  setInterval(refresh, 15000);
})();
