// The demo chat widget: a user's side of one chat. It writes through ingest with a chat token and
// reads the chat's stream from delivery with EventSource, which resumes with Last-Event-ID by itself.
// Nothing is deduplicated here on purpose: the stream guarantees no gap and no duplicate.
(function () {
  "use strict";
  const params = new URLSearchParams(location.search);
  const chatId = params.get("chat") || localStorage.getItem("switchboard-widget-chat") ||
    "web-" + Math.random().toString(36).slice(2, 10);
  localStorage.setItem("switchboard-widget-chat", chatId);
  const base = location.pathname.replace(/\/widget\/.*$/, "");
  const $ = (id) => document.getElementById(id);
  let ingestUrl = null;
  let token = null;
  let lastId = null;
  let source = null;

  $("chat-id").textContent = chatId;

  function status(state, text) {
    $("status").dataset.state = state;
    $("status").textContent = text;
  }

  async function mint() {
    // Development only: a real site's backend calls POST /v1/chats/{id}/token with its frontend token.
    const r = await fetch(base + "/widget/token", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({chat_id: chatId}),
    });
    if (!r.ok) throw new Error("could not get a chat token (" + r.status + ")");
    token = (await r.json()).token;
  }

  function show(kind, data) {
    const li = document.createElement("li");
    if (kind === "message") {
      li.className = "msg " + data.sender;
      li.dataset.messageId = data.message_id;
      if (data.sender === "operator") {
        const who = document.createElement("span");
        who.className = "who";
        who.textContent = data.display_name || "operator";
        li.appendChild(who);
      }
      li.appendChild(document.createTextNode(data.text));
    } else {
      li.className = "note " + kind;
      li.textContent = kind === "operator_joined" ? (data.display_name + " joined the chat") : "Chat completed";
    }
    $("messages").appendChild(li);
    $("messages").scrollTop = $("messages").scrollHeight;
  }

  function connect() {
    let url = base + "/v1/chats/" + encodeURIComponent(chatId) + "/stream?access_token=" + encodeURIComponent(token);
    // A new EventSource (after a refused reconnect) carries the resume point itself.
    if (lastId !== null) url += "&last_event_id=" + encodeURIComponent(lastId);
    source = new EventSource(url);
    source.onopen = () => status("live", "live");
    for (const kind of ["message", "operator_joined", "chat_completed"]) {
      source.addEventListener(kind, (e) => {
        lastId = e.lastEventId;
        show(kind, JSON.parse(e.data));
      });
    }
    source.addEventListener("gap", () => {
      const li = document.createElement("li");
      li.className = "note gap";
      li.textContent = "Older messages are no longer available.";
      $("messages").appendChild(li);
    });
    source.onerror = async () => {
      if (source.readyState === EventSource.CONNECTING) {
        status("connecting", "reconnecting…");  // the browser retries with Last-Event-ID
        return;
      }
      // Refused (an expired token answers 401): get a fresh token and resume from the last id.
      status("connecting", "reconnecting…");
      source.close();
      setTimeout(async () => {
        try { await mint(); } catch (err) { $("error").textContent = err.message; }
        connect();
      }, 2000);
    };
  }

  $("send-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = $("text").value.trim();
    if (!text) return;
    $("error").textContent = "";
    // crypto.randomUUID exists only in secure contexts (https, localhost); a LAN address over http has none.
    const id = (crypto.randomUUID && crypto.randomUUID()) ||
      ("w-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 12));
    const body = {message_id: id, sender: "user", text: text};
    for (let attempt = 0; attempt < 2; attempt++) {
      const r = await fetch(ingestUrl + "/v1/chats/" + encodeURIComponent(chatId) + "/messages", {
        method: "POST", headers: {"Content-Type": "application/json", "Authorization": "Bearer " + token},
        body: JSON.stringify(body),
      });
      if (r.status === 401 && attempt === 0) { await mint(); continue; }
      if (r.status !== 202) {
        const err = await r.json().catch(() => ({}));
        $("error").textContent = (err.error && err.error.message) || ("not sent (" + r.status + ")");
        return;
      }
      $("text").value = "";  // it appears above when it comes back on the stream
      return;
    }
  });

  (async function start() {
    try {
      const config = await (await fetch(base + "/widget/config")).json();
      ingestUrl = config.ingest_url;
      await mint();
      connect();
    } catch (err) {
      $("error").textContent = err.message;
      status("connecting", "offline");
    }
  })();
})();
