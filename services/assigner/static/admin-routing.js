// The admin page's routing screens (SPEC §8): queues and operator profiles, created, edited and
// removed here, each list one page at a time; every queue with its depth, oldest wait and SLA today.
// It starts when the page shows its signed-in part (#board) and stops when it hides it, so it needs no
// hook in the page's sign-in code.
const AdminRouting = (() => {
  const S = Switchboard, $ = (id) => document.getElementById(id);
  const PAGE = 100;
  const STATUSES = ["available", "away", "offline"];
  let timer = null;

  function say(name, text, isError) {
    $(`${name}-status`).textContent = text || "";
    $(`${name}-status`).className = "status" + (isError ? " error" : "");
  }

  // A keyset pager over one list: limit + the server's opaque next_cursor; "Previous" replays the
  // cursors already followed.
  function pager(name, load) {
    const p = { name, cursors: [null], next: null, shown: "" };
    p.query = () => `limit=${PAGE}` + (p.cursor() ? `&cursor=${encodeURIComponent(p.cursor())}` : "");
    p.cursor = () => p.cursors[p.cursors.length - 1];
    p.update = (count, next) => {
      p.next = next || null;
      $(`${name}-next`).disabled = !p.next; $(`${name}-prev`).disabled = p.cursors.length === 1;
      $(`${name}-page`).textContent = `page ${p.cursors.length} · ${count} row(s)` + (p.next ? " · more on the next page" : "");
    };
    $(`${name}-next`).onclick = async () => { if (p.next) { p.cursors.push(p.next); await load(); } };
    $(`${name}-prev`).onclick = async () => { if (p.cursors.length > 1) { p.cursors.pop(); await load(); } };
    p.reset = () => { p.cursors = [null]; p.next = null; p.shown = ""; };
    return p;
  }

  // Redraw a table only when its rows changed, so the periodic refresh leaves an open control alone.
  function fill(p, body, rows, row) {
    const key = JSON.stringify(rows);
    if (key === p.shown) return;
    p.shown = key;
    $(body).replaceChildren(...rows.map(row));
  }

  function seconds(s) {
    if (s === null || s === undefined) return "—";
    s = Math.round(s);
    return s < 120 ? `${s} s` : s < 7200 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${Math.floor(s / 3600)} h ${Math.floor(s % 3600 / 60)} min`;
  }

  function numberOrNull(id) { const v = $(id).value.trim(); return v === "" ? null : Number(v); }
  function list(id) { return $(id).value.split(",").map((s) => s.trim()).filter(Boolean); }

  // ---- queues ----
  const queues = pager("queues", loadQueues);

  async function slaToday() {
    // Stats serves at most 1000 rows a page and there are at most 500 queues: one call covers them.
    try {
      const r = await S.call("GET", `${S.config.stats_url}/v1/stats/queues?limit=1000`);
      return Object.fromEntries((r.body.queues || []).map((q) => [q.queue_id, q]));
    } catch (e) { say("queues", "SLA today unavailable (stats): " + e.message, true); return null; }
  }

  function sla(q, s) {
    if (s === null) return "—";
    const day = s[q.queue_id];
    if (!day || !day.first_wait_count) return "no first assignment yet";
    return `${Math.round(100 * day.sla_met / day.first_wait_count)}% (${day.sla_met}/${day.first_wait_count} within ${q.sla_first_assignment_s} s)`;
  }

  function settings(q) {
    const parts = [`priority step ${q.priority_step_s} s`, `SLA ${q.sla_first_assignment_s} s`,
      `skills relax ${q.skills_relax_after_s === null ? "never" : q.skills_relax_after_s + " s"}`];
    if (q.idle_timeout_s !== null && q.idle_timeout_s !== undefined) parts.push(`idle ${q.idle_timeout_s} s`);
    if (q.repeat_cooldown_s !== null && q.repeat_cooldown_s !== undefined) parts.push(`cooldown ${q.repeat_cooldown_s} s`);
    return parts.join(" · ");
  }

  async function loadQueues() {
    const [page, stats] = await Promise.all([S.call("GET", `/v1/admin/queues?${queues.query()}`), slaToday()]);
    const rows = page.body.queues;
    queues.update(rows.length, page.body.next_cursor);
    fill(queues, "queues", rows.map((q) => [q, sla(q, stats)]), ([q, slaText]) => {
      const edit = S.el("button", { class: "secondary", onclick: () => editQueue(q) }, "Edit");
      const remove = S.el("button", { class: "danger", onclick: () => removeQueue(q.queue_id) }, "Remove");
      if (q.queue_id === "default") remove.disabled = true;  // always exists (409)
      return S.el("tr", { "data-queue": q.queue_id }, S.el("td", {}, q.queue_id), S.el("td", {}, q.name),
        S.el("td", { class: "waiting" }, String(q.waiting ?? "—")),
        S.el("td", { class: "oldest" }, seconds(q.oldest_waiting_s)),
        S.el("td", { class: "sla" }, slaText), S.el("td", { class: "settings" }, settings(q)),
        S.el("td", {}, S.el("span", { class: "row" }, edit, remove)));
    });
  }

  function editQueue(q) {
    $("queue-id").value = q.queue_id; $("queue-id").readOnly = true;
    $("queue-name").value = q.name;
    for (const k of ["priority_step_s", "sla_first_assignment_s", "skills_relax_after_s", "idle_timeout_s", "repeat_cooldown_s"]) {
      $(`queue-${k}`).value = q[k] ?? "";
    }
    $("queue-save").textContent = "Save queue";
    $("queue-form").scrollIntoView({ block: "nearest" }); $("queue-name").focus();
    say("queues", `Editing queue ${q.queue_id}.`);
  }

  function newQueue() {
    $("queue-form").reset(); $("queue-id").readOnly = false; $("queue-save").textContent = "Create queue";
  }

  async function saveQueue(ev) {
    ev.preventDefault();
    const id = $("queue-id").value.trim();
    const body = { name: $("queue-name").value.trim() || id };
    for (const k of ["priority_step_s", "sla_first_assignment_s"]) { const v = numberOrNull(`queue-${k}`); if (v !== null) body[k] = v; }
    for (const k of ["skills_relax_after_s", "idle_timeout_s", "repeat_cooldown_s"]) body[k] = numberOrNull(`queue-${k}`);
    try {
      await S.call("PUT", `/v1/admin/queues/${encodeURIComponent(id)}`, body);
      say("queues", `Queue ${id} saved.`); newQueue(); queues.shown = ""; await loadQueues();
    } catch (e) { say("queues", e.message, true); }
  }

  async function removeQueue(id) {
    if (!confirm(`Remove queue ${id}? Its waiting chats move to default.`)) return;
    try {
      await S.call("DELETE", `/v1/admin/queues/${encodeURIComponent(id)}`);
      say("queues", `Queue ${id} removed.`); await loadQueues();
    } catch (e) { say("queues", e.message, true); }
  }

  // ---- operator profiles ----
  const profiles = pager("profiles", loadProfiles);

  async function setStatus(id, status) {
    try {
      await S.call("PUT", `/v1/admin/operators/${encodeURIComponent(id)}/status`, { status });
      say("profiles", `${id} is ${status}.`); await loadProfiles();
    } catch (e) { say("profiles", e.message, true); profiles.shown = ""; await loadProfiles(); }
  }

  async function loadProfiles() {
    const page = (await S.call("GET", `/v1/admin/operators?${profiles.query()}`)).body;
    const rows = page.operators;
    profiles.update(rows.length, page.next_cursor);
    fill(profiles, "profiles", rows, (o) => {
      const status = S.el("select", { "aria-label": `status of ${o.operator_id}`, onchange: (ev) => setStatus(o.operator_id, ev.target.value) },
        ...STATUSES.map((s) => S.el("option", s === o.status ? { value: s, selected: "" } : { value: s }, s)));
      const edit = S.el("button", { class: "secondary", onclick: () => editProfile(o) }, "Edit");
      const remove = S.el("button", { class: "danger", onclick: () => removeProfile(o.operator_id) }, "Remove");
      return S.el("tr", { "data-profile": o.operator_id }, S.el("td", {}, o.operator_id), S.el("td", {}, o.display_name || ""),
        S.el("td", { class: "queues" }, (o.queues || []).join(", ")), S.el("td", { class: "skills" }, (o.skills || []).join(", ") || "—"),
        S.el("td", { class: "capacity" }, o.capacity === null || o.capacity === undefined ? "default" : String(o.capacity)),
        S.el("td", {}, status), S.el("td", {}, S.el("span", { class: "row" }, edit, remove)));
    });
  }

  function editProfile(o) {
    $("profile-id").value = o.operator_id; $("profile-id").readOnly = true;
    $("profile-name").value = o.display_name || "";
    $("profile-queues").value = (o.queues || []).join(", ");
    $("profile-skills").value = (o.skills || []).join(", ");
    $("profile-capacity").value = o.capacity ?? "";
    $("profile-save").textContent = "Save operator";
    $("profile-form").scrollIntoView({ block: "nearest" }); $("profile-name").focus();
    say("profiles", `Editing operator ${o.operator_id}.`);
  }

  function newProfile() {
    $("profile-form").reset(); $("profile-id").readOnly = false; $("profile-save").textContent = "Create operator";
  }

  async function saveProfile(ev) {
    ev.preventDefault();
    const id = $("profile-id").value.trim();
    const body = { display_name: $("profile-name").value.trim(), queues: list("profile-queues"),
      skills: list("profile-skills"), capacity: numberOrNull("profile-capacity") };
    if (!body.queues.length) body.queues = ["default"];
    try {
      await S.call("PUT", `/v1/admin/operators/${encodeURIComponent(id)}`, body);
      say("profiles", `Operator ${id} saved.`); newProfile(); profiles.shown = ""; await loadProfiles();
    } catch (e) { say("profiles", e.message, true); }
  }

  async function removeProfile(id) {
    if (!confirm(`Remove operator ${id}? Chats it holds go back to their queues.`)) return;
    try {
      await S.call("DELETE", `/v1/admin/operators/${encodeURIComponent(id)}`);
      say("profiles", `Operator ${id} removed.`); await loadProfiles();
    } catch (e) { say("profiles", e.message, true); }
  }

  async function refresh() {
    await Promise.all([
      loadQueues().catch((e) => say("queues", e.message, true)),
      loadProfiles().catch((e) => say("profiles", e.message, true)),
    ]);
  }

  $("queue-form").onsubmit = saveQueue; $("queue-new").onclick = newQueue;
  $("profile-form").onsubmit = saveProfile; $("profile-new").onclick = newProfile;

  async function start() {
    timer = setInterval(refresh, 3000);
    await S.loadConfig();  // where stats is: the page may not have read it yet
    await refresh();
  }

  function stop() {
    clearInterval(timer);
    timer = null; queues.reset(); profiles.reset(); newQueue(); newProfile();
    say("queues", ""); say("profiles", "");
    $("queues").replaceChildren(); $("profiles").replaceChildren();
  }

  // Follow the signed-in part's visibility, whichever code signs in and out.
  const follow = () => { if ($("board").hidden) { if (timer) stop(); } else if (!timer) start(); };
  new MutationObserver(follow).observe($("board"), { attributes: true, attributeFilter: ["hidden"] });
  follow();
  return { refresh };
})();
