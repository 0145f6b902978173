// The operator console's routing panel (SPEC §8): the operator's presence, shown and switched here,
// and the queues it serves, one page at a time. It starts when the page shows its signed-in part
// (#work) and stops when it hides it, so it needs no hook in the page's sign-in or stream code.
const ConsoleRouting = (() => {
  const S = Switchboard, $ = (id) => document.getElementById(id);
  const PAGE = 20;  // queue ids per page: a profile may name hundreds
  const STATUSES = ["available", "away", "offline"];
  const HINT = {
    available: "You get chats when you ask for one.",
    away: "Away: you keep your chats but get no new ones.",
    offline: "Offline: your chats went back to their queues and you get no new ones.",
  };
  let me = null, shown = "", page = 0, timer = null;

  function say(text, isError) {
    $("presence-status").textContent = text || "";
    $("presence-status").className = "status" + (isError ? " error" : "");
  }

  function render() {
    const key = JSON.stringify([me, page]);
    if (key === shown) return;  // the 5 s refresh redraws only what changed
    shown = key;
    $("presence").hidden = false;
    $("my-status").textContent = me.status;
    $("my-status").dataset.status = me.status;
    $("my-status-hint").textContent = HINT[me.status] || "";
    for (const b of document.querySelectorAll("#status-buttons button")) {
      const on = b.dataset.status === me.status;
      b.className = on ? "" : "secondary"; b.disabled = on; b.setAttribute("aria-pressed", String(on));
    }
    // A pull while away or offline is refused (409 operator_unavailable): say so before the click.
    $("next").disabled = me.status !== "available";
    const queues = me.queues || [];
    const last = Math.max(0, Math.ceil(queues.length / PAGE) - 1);
    page = Math.min(page, last);
    $("my-queues").replaceChildren(...queues.slice(page * PAGE, (page + 1) * PAGE)
      .map((q) => S.el("li", { "data-queue": q.queue_id || q }, q.name ? `${q.name} (${q.queue_id})` : q)));
    $("my-queues-page").textContent = queues.length <= PAGE ? `${queues.length} queue(s)`
      : `queues ${page * PAGE + 1}–${Math.min(queues.length, (page + 1) * PAGE)} of ${queues.length}`;
    $("my-queues-prev").hidden = $("my-queues-next").hidden = queues.length <= PAGE;
    $("my-queues-prev").disabled = page === 0; $("my-queues-next").disabled = page >= last;
  }

  async function load() {
    try { me = (await S.call("GET", "/v1/operators/me")).body; render(); }
    catch (e) { say("Status unavailable: " + e.message, true); }
  }

  async function setStatus(status) {
    try {
      await S.call("PUT", "/v1/operators/me/status", { status });
      say(`You are ${status}.`);
      await load();  // offline hands held chats back: the page's stream or poll shows the chat go
    } catch (e) { say(e.message, true); }
  }

  function start() {
    stop();
    $("status-buttons").replaceChildren(...STATUSES.map((s) =>
      S.el("button", { class: "secondary", "data-status": s, onclick: () => setStatus(s) }, s)));
    $("my-queues-prev").onclick = () => { page -= 1; render(); };
    $("my-queues-next").onclick = () => { page += 1; render(); };
    load();
    timer = setInterval(load, 5000);  // an admin may change the status or the queues meanwhile
  }

  function stop() {
    if (timer) clearInterval(timer);
    timer = null; me = null; shown = ""; page = 0;
    $("presence").hidden = true; say("");
    $("next").disabled = false;
  }

  // Follow the signed-in part's visibility, whichever code signs in and out.
  const follow = () => { if ($("work").hidden) { if (timer) stop(); } else if (!timer) start(); };
  new MutationObserver(follow).observe($("work"), { attributes: true, attributeFilter: ["hidden"] });
  follow();
  return { load };
})();
